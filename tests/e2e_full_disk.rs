//! A hub whose disk is full: it must either work (buffering what fits, counting what it drops) or
//! stop with a clear error for its service manager to restart it, within a bounded time, and never
//! sit there hung. Once space is back, a restarted hub uploads again. Two cases: the disk is full
//! when the hub starts, and it fills (and stays full) under a hub that was restarted onto it.
//! Needs root (for a small tmpfs); without it each test says why and is skipped, unless
//! `OUTPOST_NETNS_REQUIRED=1` (set where CI runs as root) makes that a failure.

mod common;

use common::small_disk::SmallDisk;
use common::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Longest a hub may take to give up on a full disk: the buffer's open deadline (120 s) is the
/// longest deadline on that path; a stalled append or a minute of refused writes come sooner.
const GIVE_UP: Duration = Duration::from_secs(150);

const SENSORS: &str = "[[sensor]]\nkind = \"memory\"\ninterval = \"100ms\"\n";

/// A cloud and a hub whose data directory is a 16 MiB tmpfs (its log and config stay outside, so
/// the log can say what happened). None where mounting is impossible.
struct Setup {
    cloud: CloudProc,
    hub_dir: PathBuf,
    config: PathBuf,
    disk: SmallDisk,
    id: String,
    _dir: tempfile::TempDir,
}

fn setup() -> Option<Setup> {
    let dir = tempfile::tempdir().unwrap();
    let hub_dir = dir.path().join("hub");
    let disk = match SmallDisk::mount(&hub_dir.join("data"), "16m") {
        Ok(d) => d,
        Err(why) => {
            if std::env::var("OUTPOST_NETNS_REQUIRED").as_deref() == Ok("1") {
                panic!("OUTPOST_NETNS_REQUIRED=1 but {why}");
            }
            eprintln!("SKIPPED: {why}");
            return None;
        }
    };
    let cloud = CloudProc::start(&dir.path().join("cloud"));
    let config = hub_config(&hub_dir, &cloud, SENSORS);
    // A first start makes the key, enrolls and creates the buffer's files.
    let hub = start_hub(&hub_dir, &config);
    let id = machine_id(&hub_dir);
    wait_until(Duration::from_secs(60), "the hub uploads", || machine(&cloud, &id).is_some());
    assert!(hub.stop().success());
    Some(Setup { cloud, hub_dir, config, disk, id, _dir: dir })
}

/// Waits up to [`GIVE_UP`] for `hub` on a full disk to exit with a clear error, or proves that it
/// is still working (readings keep reaching the cloud); panics if it does neither. Says which.
fn exits_or_works(s: &Setup, hub: &mut Proc, since: Instant) -> String {
    let before = all_seqs(&s.cloud, &s.id).len();
    while since.elapsed() < GIVE_UP {
        if let Some(status) = hub.child.try_wait().unwrap() {
            let log = hub.log_text();
            let said = log.lines().rev().find(|l| l.starts_with("outpost sensorhub:")).map(str::to_string);
            assert!(!status.success(), "a hub that cannot write its buffer does not exit as if all was well");
            assert!(
                log.contains("No space left on device") || (log.contains("disk") && log.contains("stalled")),
                "the hub says why it stopped:\n{log}"
            );
            return format!("exited ({status}) after {:.1?}, saying {said:?}", since.elapsed());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let now = all_seqs(&s.cloud, &s.id).len();
    std::thread::sleep(Duration::from_secs(5));
    let later = all_seqs(&s.cloud, &s.id).len();
    assert!(
        later > now && now > before,
        "after {GIVE_UP:?} on a full disk the hub neither exited nor uploads ({before} -> {now} -> {later} \
         readings):\n{}",
        hub.log_text()
    );
    format!("kept working ({} readings stored meanwhile)", later - before)
}

/// Frees the disk, restarts the hub if it stopped (as its service manager would), and waits until
/// its readings reach the cloud again; then stops it.
fn recovers(s: &Setup, mut hub: Proc) {
    s.disk.free();
    if hub.child.try_wait().unwrap().is_some() {
        hub = start_hub(&s.hub_dir, &s.config);
    }
    let stored = all_seqs(&s.cloud, &s.id).len();
    wait_until(Duration::from_secs(60), "the hub uploads again once space is back", || {
        all_seqs(&s.cloud, &s.id).len() > stored + 10
    });
    assert!(hub.stop().success(), "the hub stops cleanly");
}

fn full(disk: &SmallDisk, data: &Path) {
    disk.fill();
    assert!(disk.available() < 64 * 1024, "{} is full: {} bytes free", data.display(), disk.available());
}

#[test]
fn a_hub_started_on_a_full_disk_exits_or_works_and_never_hangs() {
    let Some(s) = setup() else { return };
    full(&s.disk, &s.hub_dir.join("data"));
    let started = Instant::now();
    let mut hub = start_hub(&s.hub_dir, &s.config);
    let outcome = exits_or_works(&s, &mut hub, started);
    eprintln!("full disk at start: the hub {outcome}");
    recovers(&s, hub);
}

/// The case that once hung: a hub restarted onto the disk, which then fills and stays full.
#[test]
fn a_disk_that_fills_under_a_restarted_hub_makes_it_exit_or_work_and_never_hang() {
    let Some(s) = setup() else { return };
    let mut hub = start_hub(&s.hub_dir, &s.config);
    let stored = all_seqs(&s.cloud, &s.id).len();
    wait_until(Duration::from_secs(60), "the restarted hub uploads", || {
        all_seqs(&s.cloud, &s.id).len() > stored + 10
    });
    full(&s.disk, &s.hub_dir.join("data"));
    let filled = Instant::now();
    let outcome = exits_or_works(&s, &mut hub, filled);
    eprintln!("disk filled under a running hub: the hub {outcome}");
    recovers(&s, hub);
}

/// A disk full for a few seconds under a running hub. sled answers every write after a failed one
/// with that failure until the process restarts; the hub once went on uploading from such a
/// buffer, which could neither take new readings nor forget delivered ones, and looked healthy.
/// Once space is back the hub must, within seconds, either write and upload new readings with a
/// clean status, or exit saying why (its service manager restarts it).
#[test]
fn a_disk_full_for_a_moment_leaves_a_hub_that_writes_again_or_restarts_within_seconds() {
    let Some(s) = setup() else { return };
    let mut hub = start_hub(&s.hub_dir, &s.config);
    let stored = all_seqs(&s.cloud, &s.id).len();
    wait_until(Duration::from_secs(60), "the restarted hub uploads", || {
        all_seqs(&s.cloud, &s.id).len() > stored + 10
    });
    full(&s.disk, &s.hub_dir.join("data"));
    std::thread::sleep(Duration::from_secs(3));
    s.disk.free();
    let freed = Instant::now();
    let outcome = loop {
        if let Some(status) = hub.child.try_wait().unwrap() {
            let log = hub.log_text();
            assert!(!status.success(), "a hub that cannot write its buffer does not exit as if all was well");
            assert!(
                log.contains("cannot write again") || log.contains("stalled"),
                "the hub says why:\n{log}"
            );
            // Not the minute a full disk is given: sled's stuck error is told apart by the room.
            assert!(freed.elapsed() < Duration::from_secs(30), "exited only after {:.1?}", freed.elapsed());
            break format!("exited ({status}) {:.1?} after space came back", freed.elapsed());
        }
        let before = all_seqs(&s.cloud, &s.id).len();
        std::thread::sleep(Duration::from_secs(2));
        let clean = hub_status(&s.hub_dir)
            .is_some_and(|st| st["storage_error"].is_null() && st["last_error"].is_null());
        if clean && all_seqs(&s.cloud, &s.id).len() > before + 5 {
            break format!("writes and uploads again {:.1?} after space came back", freed.elapsed());
        }
        assert!(
            freed.elapsed() < Duration::from_secs(30),
            "30 s after space came back the hub neither writes and uploads cleanly nor exited; status {:?}:\n{}",
            hub_status(&s.hub_dir),
            hub.log_text()
        );
    };
    eprintln!("disk full for 3 s under a running hub: the hub {outcome}");
    recovers(&s, hub);
}
