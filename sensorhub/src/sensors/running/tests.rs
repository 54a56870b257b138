//! Running sensors: the grid, triggers, and live replacement observed through the batches they
//! send. Time is paused where schedules are asserted, so the tests take no real seconds.

use super::*;
use crate::sensors::SensorKind;
use std::collections::HashMap;

/// Bound for every await that could hang.
const LIMIT: Duration = Duration::from_secs(30);

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f).await.expect("test step timed out")
}

fn cfg(kind: SensorKind, name: &str) -> SensorConfig {
    SensorConfig { name: Some(name.to_string()), ..SensorConfig::new(kind) }
}

/// A file sensor on `path` that samples every `secs` seconds.
fn file(path: &std::path::Path, name: &str, secs: u64) -> SensorConfig {
    SensorConfig {
        path: Some(path.to_path_buf()),
        interval: Some(Duration::from_secs(secs)),
        ..cfg(SensorKind::File, name)
    }
}

/// `file.a.age` → `file.a`.
fn sensor_of(sample: &Sample) -> String {
    sample.sensor.split('.').take(2).collect::<Vec<_>>().join(".")
}

#[tokio::test]
async fn spawned_sensors_sample_at_once_on_trigger_and_stop() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, b"x").unwrap();
    let file = SensorConfig {
        path: Some(path),
        interval: Some(Duration::from_secs(3600)),
        ..cfg(SensorKind::File, "f")
    };
    let set = SensorSet::build(&[file]).unwrap();
    assert_eq!(set.names(), ["file.f"]);
    // Capacity 1: the third batch finds the channel full and must wait for room, not vanish.
    let (tx, mut rx) = mpsc::channel(1);
    let shutdown = CancellationToken::new();
    let handle = set.spawn(tx, shutdown.clone());
    assert_eq!(handle.names(), ["file.f"]);
    assert!(!handle.trigger("nosuch"));

    let first = within(rx.recv()).await.expect("first batch at once").samples;
    assert_eq!(first[0].sensor, "file.f.age");
    assert!(handle.trigger("file.f"));
    // Let the triggered batch fill the channel, so the next one has to wait.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(handle.trigger("file.f"));
    let second = within(rx.recv()).await.expect("triggered batch").samples;
    assert_eq!(second.len(), 2);
    let third = within(rx.recv()).await.expect("a trigger while waiting is kept, not dropped").samples;
    assert_eq!(third.len(), 2);

    shutdown.cancel();
    within(handle.stopped()).await;
    assert!(within(rx.recv()).await.is_none(), "every sender is gone after stop");
}

#[tokio::test(start_paused = true)]
async fn sensors_fall_due_together_on_one_grid() {
    // A rate sensor (first sample after its ~1 s baseline) beside file sensors of 10, 20 and
    // 30 s: after their first samples, all of them sample at start + k·10 s, so readings that
    // fall due together leave the hub in one upload.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, b"x").unwrap();
    let file = |name: &str, secs: u64| SensorConfig {
        path: Some(path.clone()),
        interval: Some(Duration::from_secs(secs)),
        ..cfg(SensorKind::File, name)
    };
    let cpu = SensorConfig { interval: Some(Duration::from_secs(10)), ..SensorConfig::new(SensorKind::Cpu) };
    let set = SensorSet::build(&[cpu, file("a", 10), file("b", 20), file("c", 30)]).unwrap();
    let (tx, mut rx) = mpsc::channel(64);
    let shutdown = CancellationToken::new();
    let start = Instant::now();
    let handle = set.spawn(tx, shutdown.clone());

    let mut firsts = std::collections::HashSet::new();
    let mut on_grid = 0;
    while start.elapsed() < Duration::from_secs(95) {
        let batch = within(rx.recv()).await.expect("sensors keep sampling").samples;
        let sensor = batch[0].sensor.split('.').take(2).collect::<Vec<_>>().join(".");
        let at = start.elapsed();
        if firsts.insert(sensor.clone()) {
            continue; // the first sample comes at once (after any baseline), off the grid
        }
        let phase = at.as_millis() % 10_000;
        assert!(phase < 50, "{sensor} sampled at {at:?}, off the 10 s grid");
        on_grid += 1;
    }
    // 9 grid points for the 10 s sensors (×2), 4 for b, 3 for c: counted to show ticks happened.
    assert!(on_grid >= 20, "{on_grid} samples on the grid in 95 s");
    shutdown.cancel();
    within(handle.stopped()).await;
}

#[test]
fn the_next_grid_point_lies_after_now() {
    let start = Instant::now();
    let ten = Duration::from_secs(10);
    assert_eq!(next_on_grid(start, ten, start), start + ten);
    assert_eq!(next_on_grid(start, ten, start + Duration::from_millis(1300)), start + ten);
    assert_eq!(next_on_grid(start, ten, start + ten), start + 2 * ten);
    assert_eq!(next_on_grid(start, ten, start + Duration::from_secs(95)), start + 10 * ten);
}

/// When each sensor sent a batch, in ms since `start`, recorded by a task draining `rx`.
fn record(mut rx: mpsc::Receiver<Batch>, start: Instant) -> Arc<Mutex<HashMap<String, Vec<u128>>>> {
    let seen: Arc<Mutex<HashMap<String, Vec<u128>>>> = Arc::default();
    let s = seen.clone();
    tokio::spawn(async move {
        while let Some(batch) = rx.recv().await {
            let at = start.elapsed().as_millis();
            s.lock().unwrap().entry(sensor_of(&batch.samples[0])).or_default().push(at);
        }
    });
    seen
}

#[tokio::test(start_paused = true)]
async fn a_replacement_keeps_unchanged_sensors_on_schedule_restarts_changed_ones_and_stops_removed_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, b"x").unwrap();
    let set = SensorSet::build(&[file(&path, "a", 10), file(&path, "b", 10), file(&path, "d", 10)]).unwrap();
    let (tx, rx) = mpsc::channel(64);
    let shutdown = CancellationToken::new();
    let start = Instant::now();
    let handle = set.spawn(tx, shutdown.clone());
    let seen = record(rx, start);

    tokio::time::sleep_until(start + Duration::from_secs(25)).await;
    // a unchanged, b changed (20 s), c new, d gone.
    let changes = within(handle.replace(&[file(&path, "a", 10), file(&path, "b", 20), file(&path, "c", 10)]))
        .await
        .expect("the new set builds");
    let replaced_at = start.elapsed().as_millis();
    assert_eq!(
        changes,
        Changes {
            started: vec!["file.c".into()],
            restarted: vec!["file.b".into()],
            stopped: vec!["file.d".into()],
            kept: 1
        }
    );
    assert_eq!(handle.names(), ["file.a", "file.b", "file.c"]);
    assert!(!handle.trigger("file.d"), "a removed sensor can still be triggered");
    tokio::time::sleep_until(start + Duration::from_secs(65)).await;
    shutdown.cancel();
    within(handle.stopped()).await;

    let seen = seen.lock().unwrap().clone();
    let after = |s: &str| -> Vec<u128> {
        seen.get(s).map(|v| v.iter().copied().filter(|t| *t >= replaced_at).collect()).unwrap_or_default()
    };
    // Unchanged: on its 10 s grid only. A restart would have sampled at once, at 25 s.
    let a = after("file.a");
    assert_eq!(a.len(), 4, "file.a after the replacement: {a:?}");
    assert!(a.iter().all(|t| t % 10_000 < 50), "file.a left its grid (restarted?): {a:?}");
    // Changed: one sample at once, then on the 20 s grid of the hub's start (40 s, 60 s).
    let b = after("file.b");
    assert_eq!(b.len(), 3, "file.b after the replacement: {b:?}");
    assert!(b[0] < 26_000 && b[1..].iter().all(|t| t % 20_000 < 50), "file.b: {b:?}");
    // Added: at once, then on the same grid as the others.
    let c = after("file.c");
    assert_eq!(c.len(), 5, "file.c: {c:?}");
    assert!(c[0] < 26_000 && c[1..].iter().all(|t| t % 10_000 < 50), "file.c: {c:?}");
    // Removed: nothing after the replacement returned.
    assert_eq!(after("file.d"), Vec::<u128>::new(), "a removed sensor kept sampling");
    assert_eq!(seen["file.d"].len(), 3, "file.d before removal: {:?}", seen["file.d"]);
}

#[tokio::test]
async fn a_set_that_does_not_build_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, b"x").unwrap();
    let bad_ca = dir.path().join("ca.pem");
    std::fs::write(&bad_ca, b"not a certificate").unwrap();
    let set = SensorSet::build(&[file(&path, "a", 3600)]).unwrap();
    let (tx, mut rx) = mpsc::channel(16);
    let shutdown = CancellationToken::new();
    let handle = set.spawn(tx, shutdown.clone());
    within(rx.recv()).await.expect("first sample");

    let invalid = within(handle.replace(&[SensorConfig::new(SensorKind::Tcp)])).await.expect_err("refused");
    assert!(invalid.to_string().contains("sensor[0].name"), "{invalid}");
    // Valid on paper, but its CA file does not load: found while building, before any change.
    let https = SensorConfig {
        url: Some("https://127.0.0.1:1/".into()),
        ca_file: Some(bad_ca),
        ..cfg(SensorKind::Http, "web")
    };
    let unbuildable = within(handle.replace(&[https])).await.expect_err("refused");
    assert!(unbuildable.to_string().contains("http.web"), "{unbuildable}");

    assert_eq!(handle.names(), ["file.a"]);
    assert!(handle.trigger("file.a"));
    let again = within(rx.recv()).await.expect("the old sensor still runs").samples;
    assert_eq!(sensor_of(&again[0]), "file.a");

    shutdown.cancel();
    within(handle.stopped()).await;
    assert!(
        matches!(handle.replace(&[file(&path, "a", 60)]).await, Err(SensorError::Stopping)),
        "a stopped hub started sensors again"
    );
}

#[tokio::test]
async fn sample_now_answers_with_the_readings_of_that_sample() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, b"hello").unwrap();
    let set = SensorSet::build(&[file(&path, "a", 3600)]).unwrap();
    let (tx, mut rx) = mpsc::channel(16);
    let shutdown = CancellationToken::new();
    let handle = set.spawn(tx, shutdown.clone());
    within(rx.recv()).await.expect("first sample");
    assert!(handle.sample_now("file.nosuch").is_none());

    let answer = within(handle.sample_now("file.a").unwrap()).await.expect("sampled");
    let size = answer.iter().find(|s| s.sensor == "file.a.size").expect("size reading");
    assert_eq!(size.value.as_f64(), Some(5.0));
    // The same readings also went to the buffer's channel.
    let batch = within(rx.recv()).await.unwrap().samples;
    assert_eq!(batch, answer);

    // A sensor added by a replacement answers too.
    within(handle.replace(&[file(&path, "a", 3600), file(&path, "b", 3600)])).await.unwrap();
    let b = within(handle.sample_now("file.b").unwrap()).await.expect("the added sensor sampled");
    assert!(b.iter().any(|s| s.sensor == "file.b.size"), "{b:?}");
    shutdown.cancel();
    within(handle.stopped()).await;
}

/// Through the real writer into a buffer: seqs are given at append, so sensors coming and going
/// leave them without a gap or a repeat, and every sensor's readings are there.
#[tokio::test]
async fn seqs_continue_without_gap_or_repeat_across_replacements() {
    use outpost_shared::buffer::{MemoryBuffer, Storage, WhenFull};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, b"x").unwrap();
    let fast =
        |name: &str| SensorConfig { interval: Some(Duration::from_millis(100)), ..file(&path, name, 1) };
    let buffer: Arc<dyn Storage> = Arc::new(MemoryBuffer::new(16 << 20, WhenFull::DropOldest));
    let (tx, rx) = mpsc::channel(4);
    let stop = CancellationToken::new();
    let writer = tokio::spawn(crate::writer::run(
        buffer.clone(),
        rx,
        Arc::new(crate::uplink::Feed::default()),
        CancellationToken::new(),
        Arc::new(std::sync::OnceLock::new()),
    ));
    let handle = SensorSet::build(&[fast("a"), fast("b")]).unwrap().spawn(tx, stop.clone());
    for set in [vec![fast("a"), fast("b"), fast("c")], vec![fast("b"), fast("c")], vec![fast("c"), fast("d")]]
    {
        tokio::time::sleep(Duration::from_millis(300)).await;
        within(handle.replace(&set)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    within(handle.stopped()).await;
    within(writer).await.unwrap();

    let records = buffer.oldest(100_000).unwrap();
    let seqs: Vec<u64> = records.iter().map(|(s, _)| *s).collect();
    let first = seqs[0];
    assert_eq!(seqs, (first..first + seqs.len() as u64).collect::<Vec<_>>(), "a gap or a repeat");
    let sensors: std::collections::HashSet<String> =
        records.iter().map(|(_, r)| sensor_of(&serde_json::from_slice::<Sample>(r).unwrap())).collect();
    assert_eq!(sensors.len(), 4, "{sensors:?}");
}
