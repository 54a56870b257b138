//! The last line of defence against a hub that hangs instead of stopping: an OS thread, outside
//! the async runtime, that watches a heartbeat the runtime ticks (every tenth of the limit, at
//! most every 10 s: an idle hub should hardly wake up for it). When every runtime
//! worker is stuck in a call that waits for a stalled disk (or a device), no deadline inside the
//! runtime can fire any more: timers need a free worker. The watchdog then says so and calls
//! `on_stall`, which in the binary exits, so that the service manager restarts the hub.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Starts the heartbeat on `runtime` and the thread that watches it; `on_stall` runs (once, on
/// that thread) after the heartbeat has not moved for `limit`.
pub fn spawn(runtime: &tokio::runtime::Handle, limit: Duration, on_stall: impl FnOnce() + Send + 'static) {
    let beat = (limit / 10).clamp(Duration::from_millis(10), Duration::from_secs(10));
    let beats = Arc::new(AtomicU64::new(0));
    let ticker = beats.clone();
    runtime.spawn(async move {
        let mut every = tokio::time::interval(beat);
        loop {
            every.tick().await;
            ticker.fetch_add(1, Ordering::Relaxed);
        }
    });
    std::thread::Builder::new()
        .name("runtime-watchdog".into())
        .spawn(move || {
            let (mut last, mut since) = (beats.load(Ordering::Relaxed), Instant::now());
            loop {
                std::thread::sleep(beat);
                let now = beats.load(Ordering::Relaxed);
                if now != last {
                    (last, since) = (now, Instant::now());
                } else if since.elapsed() >= limit {
                    tracing::error!(
                        stalled_secs = since.elapsed().as_secs(),
                        "the hub's runtime has made no progress (every worker waits, e.g. for a full or \
                         failing disk); stopping so that the service manager restarts it"
                    );
                    on_stall();
                    return;
                }
            }
        })
        .expect("the OS can start a thread");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runtime_whose_workers_all_block_is_reported_and_a_running_one_is_not() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        spawn(rt.handle(), Duration::from_millis(1500), move || tx.send(()).unwrap());
        // Working normally: timers fire, the beat goes on.
        rt.spawn(async {
            loop {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        assert!(rx.recv_timeout(Duration::from_secs(3)).is_err(), "no alarm while the runtime runs");
        // Every worker held by a lock that is never released: the alarm comes.
        let lock = Arc::new(std::sync::Mutex::new(()));
        let held = lock.lock().unwrap();
        for _ in 0..4 {
            let l = lock.clone();
            rt.spawn(async move {
                let _g = l.lock();
            });
        }
        rx.recv_timeout(Duration::from_secs(10)).expect("the stalled runtime is reported");
        drop(held);
        rt.shutdown_background();
    }
}
