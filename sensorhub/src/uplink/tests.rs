use super::*;
use outpost_shared::buffer::{MemoryBuffer, WhenFull};
use outpost_shared::model::State;
use std::sync::Mutex;

/// A receiver that records what it got and can be told to fail.
#[derive(Clone, Default)]
struct Fake {
    got: Arc<Mutex<Vec<Vec<u64>>>>,
    fail: Arc<Mutex<Option<SendError>>>,
    refuse_seq: Arc<Mutex<Option<u64>>>,
    /// Woken on every batch taken.
    took: Arc<tokio::sync::Notify>,
}

impl Transport for Fake {
    async fn send(&self, batch: &mut Batch) -> Result<BatchAck, SendError> {
        if let Some(e) = self.fail.lock().unwrap().as_ref() {
            return Err(match e {
                SendError::Unreachable(m) => SendError::Unreachable(m.clone()),
                SendError::Busy(d) => SendError::Busy(*d),
                _ => SendError::Unreachable("x".into()),
            });
        }
        if let Some(bad) = *self.refuse_seq.lock().unwrap() {
            if batch.readings.iter().any(|r| r.seq == bad) {
                return Err(SendError::Refused { status: 400, message: "bad reading".into() });
            }
        }
        self.got.lock().unwrap().push(batch.readings.iter().map(|r| r.seq).collect());
        self.took.notify_one();
        Ok(BatchAck { stored: batch.readings.len() as u64, duplicates: 0 })
    }
    fn path(&self) -> String {
        "direct".into()
    }
}

fn append(buffer: &MemoryBuffer, feed: &Feed, n: usize) -> std::ops::Range<u64> {
    let recs: Vec<Vec<u8>> = (0..n)
        .map(|i| serde_json::to_vec(&Sample::new(format!("s{i}"), i as f64, State::Ok)).unwrap())
        .collect();
    let r = buffer.append(&recs).unwrap();
    feed.newest_group.store(r.start, Ordering::Release);
    r
}

fn uplink(buffer: Arc<MemoryBuffer>, fake: Fake, batch_max: usize, feed: Arc<Feed>) -> Uplink<Fake> {
    let cfg = UplinkConfig { batch_max, live_max: batch_max.min(10), ..Default::default() };
    let id =
        Identity { machine_id: "m".into(), hostname: "h".into(), role: Role::Sensorhub, version: "t".into() };
    Uplink::new(buffer, fake, cfg, id, feed).0
}

#[tokio::test]
async fn after_an_outage_the_newest_readings_go_first_and_the_backlog_drains_oldest_first() {
    let buffer = Arc::new(MemoryBuffer::new(1 << 30, WhenFull::DropOldest));
    let feed = Arc::new(Feed::default());
    let fake = Fake::default();
    let mut up = uplink(buffer.clone(), fake.clone(), 100, feed.clone());
    *fake.fail.lock().unwrap() = Some(SendError::Unreachable("down".into()));
    for _ in 0..30 {
        append(&buffer, &feed, 10); // 300 readings taken during the outage
    }
    assert!(up.send_one(false).await.is_err());
    *fake.fail.lock().unwrap() = None;
    let live = append(&buffer, &feed, 5); // the newest sampling round
    up.send_one(true).await.ok().unwrap();
    let first = fake.got.lock().unwrap()[0].clone();
    assert_eq!(&first[..5], &live.clone().collect::<Vec<_>>()[..], "live readings lead the first batch");
    assert_eq!(first[5], 1, "backlog follows, oldest first");
    assert_eq!(first.len(), 100);
    while buffer.stats().len > 0 {
        up.send_one(false).await.ok().unwrap();
    }
    let all: Vec<u64> = fake.got.lock().unwrap().iter().flatten().copied().collect();
    let unique: HashSet<u64> = all.iter().copied().collect();
    assert_eq!(all.len(), 305, "nothing sent twice");
    assert_eq!(unique.len(), 305, "nothing lost");
}

#[tokio::test]
async fn nothing_is_deleted_while_the_receiver_is_down() {
    let buffer = Arc::new(MemoryBuffer::new(1 << 30, WhenFull::DropOldest));
    let feed = Arc::new(Feed::default());
    let fake = Fake::default();
    *fake.fail.lock().unwrap() = Some(SendError::Unreachable("down".into()));
    let mut up = uplink(buffer.clone(), fake.clone(), 50, feed.clone());
    append(&buffer, &feed, 20);
    for _ in 0..3 {
        assert!(up.send_one(true).await.is_err());
    }
    assert_eq!(buffer.stats().len, 20);
    assert_eq!(up.status.borrow().path, "offline");
}

#[tokio::test]
async fn a_reading_the_receiver_refuses_is_isolated_dropped_and_counted() {
    let buffer = Arc::new(MemoryBuffer::new(1 << 30, WhenFull::DropOldest));
    let feed = Arc::new(Feed::default());
    let fake = Fake::default();
    *fake.refuse_seq.lock().unwrap() = Some(7);
    let mut up = uplink(buffer.clone(), fake.clone(), 16, feed.clone());
    append(&buffer, &feed, 16);
    for _ in 0..20 {
        if buffer.stats().len == 0 {
            break;
        }
        let _ = up.send_one(false).await;
    }
    assert_eq!(buffer.stats().len, 0);
    let delivered: HashSet<u64> = fake.got.lock().unwrap().iter().flatten().copied().collect();
    assert_eq!(delivered.len(), 15, "everything but the refused reading arrived");
    assert!(!delivered.contains(&7));
    assert_eq!(up.rejected, 1);
    // The loss is reported upstream with the next batch.
    append(&buffer, &feed, 1);
    *fake.refuse_seq.lock().unwrap() = None;
    up.send_one(false).await.ok().unwrap();
}

#[tokio::test(start_paused = true)]
async fn news_leaves_at_once_while_ordinary_readings_linger_for_company() {
    let buffer = Arc::new(MemoryBuffer::new(1 << 30, WhenFull::DropOldest));
    let feed = Arc::new(Feed::default());
    let fake = Fake::default();
    let mut up = uplink(buffer.clone(), fake.clone(), 100, feed.clone());
    up.cfg.linger = Duration::from_secs(3600);
    let stop = CancellationToken::new();
    let running = tokio::spawn(up.run(stop.clone()));
    let sent = |n: usize| {
        let (got, took) = (fake.got.clone(), fake.took.clone());
        async move {
            while got.lock().unwrap().len() < n {
                took.notified().await;
            }
        }
    };
    sent(0).await;
    tokio::time::sleep(Duration::from_millis(10)).await; // the uplink is idle, waiting for readings

    append(&buffer, &feed, 3);
    feed.appended.notify_one();
    // Paused time jumps to the next timer: the hour of linger would pass, the minute comes first.
    assert!(
        tokio::time::timeout(Duration::from_secs(60), sent(1)).await.is_err(),
        "ordinary readings linger"
    );
    tokio::time::timeout(Duration::from_secs(3600), sent(1)).await.unwrap();

    append(&buffer, &feed, 1);
    feed.urgent.store(true, Ordering::Release);
    feed.appended.notify_one();
    tokio::time::timeout(Duration::from_secs(1), sent(2)).await.expect("news is sent without lingering");
    stop.cancel();
    running.await.unwrap();
}
