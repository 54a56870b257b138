//! The writer: the one task that appends sensor samples to the durable buffer. It drains whatever
//! the sensors produced since the last append into one group commit (one flush for many readings),
//! then wakes the uplink, telling it when the append carries news that should not wait.

use crate::uplink::Feed;
use outpost_shared::backoff::Backoff;
use outpost_shared::buffer::{BufferError, Storage};
use outpost_shared::model::{Sample, State, Value};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Samples on their way from a producer (a sensor, the relay poller) to the buffer.
#[derive(Debug)]
pub struct Batch {
    pub samples: Vec<Sample>,
    /// Told `()` once the samples are durable in the buffer; dropped unsent when they never will
    /// be (dropped under a full disk, or the hub failed first). A producer that keeps its own
    /// position on disk (the event log sensor's bookmark) moves it only after this.
    pub durable: Option<tokio::sync::oneshot::Sender<()>>,
}

impl From<Vec<Sample>> for Batch {
    fn from(samples: Vec<Sample>) -> Self {
        Batch { samples, durable: None }
    }
}

/// Most samples in one group commit.
const GROUP_MAX: usize = 10_000;
/// How long the writer waits after the first sample of a group for the rest of its round: the
/// sensors due at one tick each finish their read a few milliseconds apart, and without the wait
/// they were split over several appends, each a flush, a blocking thread and a wake of sled's
/// seven I/O threads (two a tick with the default sensors, counted with strace). News does not
/// wait.
const LINGER: Duration = Duration::from_millis(50);
/// How long the buffer may refuse every write before the hub stops to be restarted.
const FAILING_FATAL: Duration = Duration::from_secs(60);
/// How long a write may fail while the buffer's disk has [`ROOM_AGAIN`] free before the failure
/// counts as sled's own: after one failed write sled returns that error for every later one until
/// the process restarts, so waiting out [`FAILING_FATAL`] would only hold samples in memory longer.
const STUCK_AFTER: Duration = Duration::from_secs(5);
/// Free bytes that make a full disk an unlikely cause: sled grows its file by segments of 512 KiB.
const ROOM_AGAIN: u64 = 16 << 20;
/// Samples held in memory while the disk refuses writes (full disk, I/O error). Past this the
/// oldest held samples are dropped and counted: memory must stay bounded too.
const HOLD_MAX: usize = 100_000;

/// Runs until every sender of `rx` is gone (the sensors stopped), then appends what is left.
///
/// A stalled disk ([`BufferError::Stalled`]: sled cannot write again in this process), or a
/// buffer that has refused every write for [`FAILING_FATAL`], or for [`STUCK_AFTER`] while its disk
/// has room again (sled keeps returning an I/O error once it had one, even after space was freed),
/// is fatal:
/// the writer records why in `failed`, cancels `fatal` so the whole hub stops, and returns; the
/// hub exits with an error and its service manager restarts it, which reopens the buffer. The
/// samples held then were never durable and are lost with the process, and logged as such.
pub async fn run(
    buffer: Arc<dyn Storage>,
    mut rx: mpsc::Receiver<Batch>,
    feed: Arc<Feed>,
    fatal: tokio_util::sync::CancellationToken,
    failed: Arc<std::sync::OnceLock<String>>,
) {
    let mut held: Vec<Sample> = Vec::new();
    // Whom to tell once `held` is durable.
    let mut waiting: Vec<tokio::sync::oneshot::Sender<()>> = Vec::new();
    let mut lost = 0u64;
    let mut backoff =
        Backoff::new(Duration::from_millis(200), Duration::from_secs(30), 0.5).expect("constant settings");
    let mut news = News::default();
    let mut failing_since: Option<std::time::Instant> = None;
    // Whether `held` carries news (judged once per sample, as it arrives), told with its append.
    let mut urgent = false;
    loop {
        if held.is_empty() {
            match rx.recv().await {
                Some(b) => take(b, &mut held, &mut waiting, &mut news, &mut urgent),
                None => return,
            }
            // The rest of this round, unless the group is already news or full. A closed channel
            // ends the wait; the loop's next `recv` then sees it.
            let round = tokio::time::sleep(LINGER);
            tokio::pin!(round);
            while !urgent && held.len() < GROUP_MAX {
                tokio::select! {
                    _ = &mut round => break,
                    more = rx.recv() => match more {
                        Some(m) => take(m, &mut held, &mut waiting, &mut news, &mut urgent),
                        None => break,
                    },
                }
            }
        }
        while held.len() < GROUP_MAX {
            match rx.try_recv() {
                Ok(more) => take(more, &mut held, &mut waiting, &mut news, &mut urgent),
                Err(_) => break,
            }
        }
        let records: Vec<Vec<u8>> = held.iter().map(encode).collect();
        let b = buffer.clone();
        // sled can also block inside the write itself on a full disk, before any flush: the whole
        // append is bounded, and one that never returns counts as a stalled disk.
        let appended =
            tokio::time::timeout(FAILING_FATAL, tokio::task::spawn_blocking(move || b.append(&records)))
                .await
                .map(|j| j.expect("append does not panic"))
                .unwrap_or_else(|_| {
                    Err(BufferError::Stalled(format!(
                        "an append did not return in {} s",
                        FAILING_FATAL.as_secs()
                    )))
                });
        match appended {
            Ok(range) => {
                feed.newest_group.store(range.start, Ordering::Release);
                if std::mem::take(&mut urgent) {
                    feed.urgent.store(true, Ordering::Release);
                }
                feed.appended.notify_one();
                held.clear();
                for w in waiting.drain(..) {
                    let _ = w.send(());
                }
                backoff.reset();
                failing_since = None;
                feed.storage_error.send_if_modified(|s| s.take().is_some());
            }
            Err(e)
                if matches!(e, BufferError::Stalled(_))
                    || failing_since.is_some_and(|t| t.elapsed() >= FAILING_FATAL) =>
            {
                tracing::error!(error = %e, not_written = held.len(), "the buffer's disk stalled; stopping the hub so that it is restarted");
                let _ = failed.set(e.to_string());
                fatal.cancel();
                return;
            }
            Err(e) => {
                let since = *failing_since.get_or_insert_with(std::time::Instant::now);
                let message = e.to_string();
                feed.storage_error.send_if_modified(|s| {
                    let changed = s.as_deref() != Some(message.as_str());
                    *s = Some(message);
                    changed
                });
                if since.elapsed() >= STUCK_AFTER {
                    let b = buffer.clone();
                    let free = tokio::task::spawn_blocking(move || b.free_space()).await.ok().flatten();
                    if let Some(free) = free.filter(|f| *f >= ROOM_AGAIN) {
                        let why = format!(
                            "{e}, still after {} s although its disk has {} MiB free again",
                            since.elapsed().as_secs(),
                            free >> 20
                        );
                        tracing::error!(error = %why, not_written = held.len(), "the buffer cannot write again in this process; stopping the hub so that it is restarted");
                        let _ = failed.set(why);
                        fatal.cancel();
                        return;
                    }
                }
                if held.len() > HOLD_MAX {
                    let excess = held.len() - HOLD_MAX;
                    held.drain(..excess);
                    lost += excess as u64;
                    // Which batches lost samples is not tracked: none of the waiting producers
                    // hears "durable", so none moves a position past what may be lost.
                    waiting.clear();
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
                            Some(m) => take(m, &mut held, &mut waiting, &mut news, &mut urgent),
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

fn take(
    batch: Batch,
    held: &mut Vec<Sample>,
    waiting: &mut Vec<tokio::sync::oneshot::Sender<()>>,
    news: &mut News,
    urgent: &mut bool,
) {
    *urgent |= news.any_in(&batch.samples);
    held.extend(batch.samples);
    waiting.extend(batch.durable);
}

/// A sample as the buffer stores it. JSON has no infinity or NaN (serde_json writes `null`, which
/// no longer reads back as a value): such a number is kept as its text, with a message, so the
/// reading still arrives instead of becoming an unreadable record.
fn encode(s: &Sample) -> Vec<u8> {
    match s.value {
        Value::Number(n) if !n.is_finite() => {
            let mut s = s.clone();
            s.value = Value::Text(n.to_string());
            s.message.get_or_insert_with(|| "value is not a finite number".to_string());
            serde_json::to_vec(&s)
        }
        _ => serde_json::to_vec(s),
    }
    .expect("a sample always serialises")
}

/// What counts as news: a sensor whose state changed (an alert or a recovery), or whose on/off
/// value changed (a relay switched, a service went down). Changing numbers are not news; the
/// uplink may let them gather into bigger batches.
#[derive(Default)]
struct News {
    /// Per sensor: its last state, and its last value when that value is on/off.
    last: HashMap<String, (State, Option<bool>)>,
}

impl News {
    fn any_in(&mut self, samples: &[Sample]) -> bool {
        let mut any = false;
        for s in samples {
            let now = (
                s.state,
                match s.value {
                    Value::Bool(b) => Some(b),
                    _ => None,
                },
            );
            // A sensor's first reading is not a change: a starting hub has no news to rush.
            if let Some(before) = self.last.insert(s.sensor.clone(), now) {
                any |= before != now;
            }
        }
        any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faulty_buffer::FaultyBuffer;

    /// The sensors of one tick finish their reads milliseconds apart: their samples go to disk in
    /// one append. A state change does not wait for company.
    #[tokio::test(start_paused = true)]
    async fn one_round_of_samples_is_one_append_and_news_is_written_at_once() {
        let buffer = Arc::new(FaultyBuffer::new());
        let feed = Arc::new(Feed::default());
        let (tx, rx) = mpsc::channel(16);
        let writer = tokio::spawn(run(
            buffer.clone(),
            rx,
            feed.clone(),
            tokio_util::sync::CancellationToken::new(),
            Arc::new(std::sync::OnceLock::new()),
        ));
        for (i, after) in [0u64, 3, 5, 9, 20].into_iter().enumerate() {
            tokio::time::sleep(Duration::from_millis(after)).await;
            tx.send(vec![Sample::new(format!("s{i}"), i as f64, State::Ok)].into()).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(buffer.sizes(), vec![5], "one append for the round");
        assert!(!feed.urgent.load(Ordering::Acquire), "first readings are no news");

        // The next round: s0 goes to warn. It is written without the round's wait.
        let (durable, written) = tokio::sync::oneshot::channel();
        tx.send(Batch { samples: vec![Sample::new("s0", 99.0, State::Warn)], durable: Some(durable) })
            .await
            .unwrap();
        let started = tokio::time::Instant::now();
        written.await.unwrap();
        assert!(started.elapsed() < LINGER, "news waited {:?}", started.elapsed());
        assert_eq!(buffer.sizes(), vec![5, 1]);
        assert!(feed.urgent.load(Ordering::Acquire), "the uplink is told not to linger");

        // A lone sample with nothing after it is written once the round's wait is over.
        tx.send(vec![Sample::new("s1", 7.0, State::Ok)].into()).await.unwrap();
        tokio::time::sleep(LINGER + Duration::from_millis(1)).await;
        assert_eq!(buffer.sizes(), vec![5, 1, 1]);
        drop(tx);
        writer.await.unwrap();
    }

    /// Starts a writer on `buffer` and feeds it one sample every 100 ms until `stop` is cancelled.
    fn write_steadily(
        buffer: Arc<FaultyBuffer>,
    ) -> (Arc<Feed>, tokio_util::sync::CancellationToken, Arc<std::sync::OnceLock<String>>) {
        let feed = Arc::new(Feed::default());
        let (fatal, failed) =
            (tokio_util::sync::CancellationToken::new(), Arc::new(std::sync::OnceLock::new()));
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(run(buffer, rx, feed.clone(), fatal.clone(), failed.clone()));
        let stop = fatal.clone();
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let _ = tx.send(vec![Sample::new("s", 1.0, State::Ok)].into()).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        (feed, fatal, failed)
    }

    /// sled answers every write with the error of its first failed one until the process
    /// restarts: once the disk has room again and writes still fail, the hub stops (to be
    /// restarted) within seconds, not after the full minute a full disk is given. Real time: the
    /// failure is timed with the system clock.
    #[tokio::test]
    async fn a_buffer_that_keeps_failing_with_room_on_its_disk_stops_the_hub_within_seconds() {
        let buffer = Arc::new(FaultyBuffer::new());
        buffer.fail_appends.store(true, Ordering::Release);
        *buffer.free.lock().unwrap() = Some(1 << 30);
        let started = std::time::Instant::now();
        let (feed, fatal, failed) = write_steadily(buffer.clone());
        tokio::time::sleep(Duration::from_millis(500)).await;
        let shown = feed.storage_error.borrow().clone().expect("the status shows the failing buffer");
        assert!(shown.contains("no storage space"), "{shown}");
        tokio::time::timeout(STUCK_AFTER * 3, fatal.cancelled()).await.expect("the hub stops itself");
        assert!(started.elapsed() >= STUCK_AFTER, "not before the failure lasted {STUCK_AFTER:?}");
        assert!(started.elapsed() < FAILING_FATAL, "well before the full-disk limit");
        let why = failed.get().expect("says why");
        assert!(why.contains("1024 MiB free"), "{why}");
    }

    /// A full disk is waited out: samples are held, the status says why, and once there is room
    /// they are written and the complaint is gone.
    #[tokio::test]
    async fn a_full_disk_is_waited_out_and_the_status_clears_once_writes_go_through() {
        let buffer = Arc::new(FaultyBuffer::new());
        buffer.fail_appends.store(true, Ordering::Release);
        *buffer.free.lock().unwrap() = Some(4096);
        let (feed, fatal, failed) = write_steadily(buffer.clone());
        tokio::time::sleep(STUCK_AFTER + Duration::from_secs(3)).await;
        assert!(!fatal.is_cancelled(), "stopped on a full disk: {:?}", failed.get());
        assert!(feed.storage_error.borrow().is_some());
        assert_eq!(buffer.stats().len, 0);
        buffer.fail_appends.store(false, Ordering::Release);
        let mut status = feed.storage_error.subscribe();
        tokio::time::timeout(Duration::from_secs(40), status.wait_for(|e| e.is_none()))
            .await
            .expect("the complaint clears")
            .unwrap();
        assert!(buffer.stats().len >= 60, "what was held is written: {:?}", buffer.stats());
        fatal.cancel();
    }

    #[test]
    fn a_value_that_is_not_a_finite_number_is_stored_readably() {
        for n in [f64::INFINITY, f64::NEG_INFINITY, f64::NAN] {
            let s = Sample::new("perf.load", n, State::Warn);
            let back: Sample = serde_json::from_slice(&encode(&s)).expect("reads back");
            assert_eq!(back.value, Value::Text(n.to_string()));
            assert_eq!(back.state, State::Warn);
            assert!(back.message.is_some());
        }
        let fine = Sample::new("cpu.total", 12.5, State::Ok);
        assert_eq!(serde_json::from_slice::<Sample>(&encode(&fine)).unwrap(), fine);
    }

    #[test]
    fn a_state_change_or_a_switch_is_news_a_changing_number_is_not() {
        let mut news = News::default();
        let first = [Sample::new("cpu.total", 10.0, State::Ok), Sample::new("relay.1.k1", false, State::Ok)];
        assert!(!news.any_in(&first), "first readings are not changes");
        assert!(!news.any_in(&[Sample::new("cpu.total", 55.0, State::Ok)]));
        assert!(news.any_in(&[Sample::new("cpu.total", 95.0, State::Warn)]), "ok -> warn");
        assert!(!news.any_in(&[Sample::new("cpu.total", 96.0, State::Warn)]));
        assert!(news.any_in(&[Sample::new("relay.1.k1", true, State::Ok)]), "relay switched on");
        assert!(!news.any_in(&[Sample::new("relay.1.k1", true, State::Ok)]), "re-read, unchanged");
    }
}
