//! What a large backlog costs a buffer in memory: fills a fresh `SledBuffer` with 1,000,000
//! readings (appends of 1,000, as a hub's group commits during an outage), then drains it as the
//! uplink does (oldest 5,000, removed), printing the process's resident memory after each.
//!
//! Run: `cargo run --release -p outpost-shared --example backlog_memory`

use outpost_shared::buffer::{SledBuffer, Storage, WhenFull};

/// (VmRSS, VmHWM) of this process in MB.
fn resident() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .unwrap_or(0)
            / 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn main() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (buffer, _) =
        SledBuffer::open(&dir.path().join("buf"), u64::MAX, WhenFull::Reject).expect("buffer opens");
    let reading = |i: u64| {
        format!(
            r#"{{"sensor":"cpu.total","ts":"2026-12-04T10:00:00.000Z","v":{i},"state":"ok","unit":"pct"}}"#
        )
        .into_bytes()
    };
    let (before, _) = resident();
    let mut n = 0;
    for _ in 0..1000 {
        let group: Vec<Vec<u8>> = (0..1000)
            .map(|_| {
                n += 1;
                reading(n)
            })
            .collect();
        buffer.append(&group).expect("append");
    }
    let (rss, peak) = resident();
    println!("before: {before} MB resident; 1,000,000 readings buffered: {rss} MB resident, peak {peak} MB");
    loop {
        let oldest = buffer.oldest(5000).expect("read");
        if oldest.is_empty() {
            break;
        }
        let seqs: Vec<u64> = oldest.iter().map(|(s, _)| *s).collect();
        buffer.remove(&seqs).expect("remove");
    }
    let (rss, peak) = resident();
    println!("drained: {rss} MB resident, peak {peak} MB");
}
