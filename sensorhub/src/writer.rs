//! The writer: the one task that appends sensor samples to the durable buffer. It drains whatever
//! the sensors produced since the last append into one group commit (one flush for many readings),
//! then wakes the uplink.

use crate::uplink::Feed;
use outpost_shared::backoff::Backoff;
use outpost_shared::buffer::Storage;
use outpost_shared::model::Sample;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Most samples in one group commit.
const GROUP_MAX: usize = 10_000;
/// Samples held in memory while the disk refuses writes (full disk, I/O error). Past this the
/// oldest held samples are dropped and counted: memory must stay bounded too.
const HOLD_MAX: usize = 100_000;

/// Runs until every sender of `rx` is gone (the sensors stopped), then appends what is left.
pub async fn run(buffer: Arc<dyn Storage>, mut rx: mpsc::Receiver<Vec<Sample>>, feed: Arc<Feed>) {
    let mut held: Vec<Sample> = Vec::new();
    let mut lost = 0u64;
    let mut backoff =
        Backoff::new(Duration::from_millis(200), Duration::from_secs(30), 0.5).expect("constant settings");
    loop {
        if held.is_empty() {
            match rx.recv().await {
                Some(s) => held = s,
                None => return,
            }
        }
        while held.len() < GROUP_MAX {
            match rx.try_recv() {
                Ok(more) => held.extend(more),
                Err(_) => break,
            }
        }
        let records: Vec<Vec<u8>> =
            held.iter().map(|s| serde_json::to_vec(s).expect("a sample always serialises")).collect();
        let b = buffer.clone();
        match tokio::task::spawn_blocking(move || b.append(&records)).await.expect("append does not panic") {
            Ok(range) => {
                feed.newest_group.store(range.start, Ordering::Release);
                feed.appended.notify_one();
                held.clear();
                backoff.reset();
            }
            Err(e) => {
                if held.len() > HOLD_MAX {
                    let excess = held.len() - HOLD_MAX;
                    held.drain(..excess);
                    lost += excess as u64;
                }
                tracing::error!(error = %e, held = held.len(), lost, "cannot write readings to the buffer; holding them in memory and retrying");
                let delay = backoff.next_delay();
                // Keep receiving meanwhile so sensors are not blocked behind a full disk.
                let sleep = tokio::time::sleep(delay);
                tokio::pin!(sleep);
                let mut closed = false;
                while !closed {
                    tokio::select! {
                        _ = &mut sleep => break,
                        more = rx.recv() => match more {
                            Some(m) => held.extend(m),
                            None => closed = true,
                        },
                    }
                }
                if closed {
                    // Shutting down with a disk that refuses writes: nothing more can be done.
                    tracing::error!(lost = held.len(), "stopping with readings the buffer could not take");
                    return;
                }
            }
        }
    }
}
