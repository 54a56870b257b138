//! sled's I/O threads, started by opening the buffer, wait with a long timer slack so that an idle
//! hub's pool does not wake nine times a second (see `shared/src/buffer/sled_threads.rs`). Its own
//! test binary: sled starts its pool once per process, so no other test may open sled first.
//!
//! Reading another thread's slack needs root (CAP_SYS_NICE), as CI runs the tests; without it
//! that part is skipped with a message and only the opening thread is checked.

#![cfg(target_os = "linux")]

use outpost_shared::buffer::{SledBuffer, WhenFull};

fn slack_of(tid: &str) -> std::io::Result<u64> {
    let raw = std::fs::read_to_string(format!("/proc/{tid}/timerslack_ns"))?;
    Ok(raw.trim().parse().expect("the kernel writes a number"))
}

/// (name, thread id) of this process's threads named `sled-io-*`.
fn sled_threads() -> Vec<(String, String)> {
    let mut pool = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.starts_with("sled-io-") {
            pool.push((comm.trim().to_string(), task.file_name().to_string_lossy().into_owned()));
        }
    }
    pool
}

#[test]
fn opening_the_buffer_starts_sleds_threads_with_a_long_slack_and_leaves_the_opener_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buffer");
    // A thread of its own, with the default slack, as a runtime's blocking thread would have.
    let (before, after, buffer) = std::thread::spawn(move || {
        let before = rustix::thread::current_timer_slack().unwrap();
        let (buffer, _) = SledBuffer::open(&path, 1 << 20, WhenFull::DropOldest).unwrap();
        (before, rustix::thread::current_timer_slack().unwrap(), buffer)
    })
    .join()
    .unwrap();
    assert_eq!(after, before, "the opening thread keeps the slack it had");
    assert!(before < 1_000_000, "a new thread starts with a short slack, {before} ns here");

    // A new thread names itself once it runs, which on a loaded machine can take a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let pool = loop {
        let pool = sled_threads();
        if pool.len() >= 7 || std::time::Instant::now() > deadline {
            break pool;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(pool.len() >= 7, "sled 0.34 starts seven I/O threads when a database opens: {pool:?}");
    for (name, tid) in &pool {
        match slack_of(tid) {
            Ok(ns) => assert!(
                ns >= 1_000_000_000,
                "{name} waits with a slack of {ns} ns: it wakes every second on an idle machine"
            ),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                eprintln!("SKIPPED (reading another thread's timer slack needs root): {e}");
                break;
            }
            Err(e) => panic!("cannot read the timer slack of {name}: {e}"),
        }
    }
    drop(buffer);
}
