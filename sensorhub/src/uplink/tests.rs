use super::*;
use outpost_shared::buffer::{MemoryBuffer, SledBuffer, WhenFull};
use outpost_shared::model::State;
use std::sync::Mutex;

/// What the fake receiver answers for one batch: `None` takes it.
type Policy = Box<dyn Fn(&Batch) -> Option<SendError> + Send + Sync>;

/// One batch as offered: its seqs, its quarantined count and its clock problem.
type Offered = (Vec<u64>, u64, Option<String>);

/// A receiver that records what it got and answers as its policy says.
#[derive(Clone)]
struct Fake {
    got: Arc<Mutex<Vec<Vec<u64>>>>,
    /// Every batch offered, taken or not: `(seqs, quarantined, clock_problem)`.
    offered: Arc<Mutex<Vec<Offered>>>,
    policy: Arc<Mutex<Policy>>,
    /// Woken on every batch taken.
    took: Arc<tokio::sync::Notify>,
}

impl Default for Fake {
    fn default() -> Self {
        Fake {
            got: Default::default(),
            offered: Default::default(),
            policy: Arc::new(Mutex::new(Box::new(|_| None))),
            took: Default::default(),
        }
    }
}

impl Fake {
    fn answer(&self, p: impl Fn(&Batch) -> Option<SendError> + Send + Sync + 'static) {
        *self.policy.lock().unwrap() = Box::new(p);
    }
    fn delivered(&self) -> Vec<u64> {
        self.got.lock().unwrap().iter().flatten().copied().collect()
    }
}

impl Transport for Fake {
    async fn send(&self, batch: &mut Batch) -> Result<BatchAck, SendError> {
        let seqs: Vec<u64> = batch.readings.iter().map(|r| r.seq).collect();
        self.offered.lock().unwrap().push((seqs.clone(), batch.quarantined, batch.clock_problem.clone()));
        if let Some(e) = (self.policy.lock().unwrap())(batch) {
            return Err(e);
        }
        self.got.lock().unwrap().push(seqs);
        self.took.notify_one();
        Ok(BatchAck { stored: batch.readings.len() as u64, duplicates: 0 })
    }
    fn path(&self) -> String {
        "direct".into()
    }
}

fn refused(code: RefusalCode) -> SendError {
    SendError::Refused { status: 400, message: "no".into(), code: Some(code), accept: None }
}

fn samples(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| serde_json::to_vec(&Sample::new(format!("s{i}"), i as f64, State::Ok)).unwrap()).collect()
}

fn append(buffer: &dyn Storage, feed: &Feed, n: usize) -> std::ops::Range<u64> {
    append_records(buffer, feed, &samples(n))
}

fn append_records(buffer: &dyn Storage, feed: &Feed, recs: &[Vec<u8>]) -> std::ops::Range<u64> {
    let r = buffer.append(recs).unwrap();
    feed.newest_group.store(r.start, Ordering::Release);
    r
}

fn uplink<T: Transport>(buffer: Arc<dyn Storage>, t: T, batch_max: usize, feed: Arc<Feed>) -> Uplink<T> {
    let cfg = UplinkConfig { batch_max, live_max: batch_max.min(10), ..Default::default() };
    let id =
        Identity { machine_id: "m".into(), hostname: "h".into(), role: Role::Sensorhub, version: "t".into() };
    Uplink::new(buffer, t, cfg, id, feed).0
}

fn memory() -> Arc<MemoryBuffer> {
    Arc::new(MemoryBuffer::new(1 << 30, WhenFull::DropOldest))
}

/// Sends until the buffer is empty (or `tries` run out), ignoring the errors the policy makes.
async fn drain<T: Transport>(up: &mut Uplink<T>, tries: usize) {
    for _ in 0..tries {
        if up.buffer.stats().len == 0 {
            return;
        }
        let _ = up.send_one(false).await;
    }
    panic!("buffer not drained after {tries} tries: {:?}", up.buffer.stats());
}

fn exactly_once(delivered: &[u64], expected: impl IntoIterator<Item = u64>) {
    let mut sorted = delivered.to_vec();
    sorted.sort_unstable();
    let expected: Vec<u64> = expected.into_iter().collect();
    assert_eq!(sorted, expected, "every seq exactly once");
}

#[tokio::test]
async fn after_an_outage_the_newest_readings_go_first_and_the_backlog_drains_oldest_first() {
    let buffer = memory();
    let feed = Arc::new(Feed::default());
    let fake = Fake::default();
    let mut up = uplink(buffer.clone(), fake.clone(), 100, feed.clone());
    fake.answer(|_| Some(SendError::Unreachable("down".into())));
    for _ in 0..30 {
        append(&*buffer, &feed, 10); // 300 readings taken during the outage
    }
    assert!(up.send_one(false).await.is_err());
    fake.answer(|_| None);
    let live = append(&*buffer, &feed, 5); // the newest sampling round
    up.send_one(true).await.ok().unwrap();
    let first = fake.got.lock().unwrap()[0].clone();
    assert_eq!(&first[..5], &live.clone().collect::<Vec<_>>()[..], "live readings lead the first batch");
    assert_eq!(first[5], 1, "backlog follows, oldest first");
    assert_eq!(first.len(), 100);
    drain(&mut up, 10).await;
    exactly_once(&fake.delivered(), 1..=305);
}

#[tokio::test]
async fn nothing_is_deleted_while_the_receiver_is_down() {
    let buffer = memory();
    let feed = Arc::new(Feed::default());
    let fake = Fake::default();
    fake.answer(|_| Some(SendError::Unreachable("down".into())));
    let mut up = uplink(buffer.clone(), fake.clone(), 50, feed.clone());
    append(&*buffer, &feed, 20);
    for _ in 0..3 {
        assert!(up.send_one(true).await.is_err());
    }
    assert_eq!(buffer.stats().len, 20);
    assert_eq!(up.status.borrow().path, "offline");
}

#[tokio::test]
async fn a_malformed_reading_is_isolated_quarantined_counted_and_the_count_travels() {
    let buffer = memory();
    let feed = Arc::new(Feed::default());
    let fake = Fake::default();
    fake.answer(|b| b.readings.iter().any(|r| r.seq == 7).then(|| refused(RefusalCode::Malformed)));
    let mut up = uplink(buffer.clone(), fake.clone(), 16, feed.clone());
    append(&*buffer, &feed, 16);
    drain(&mut up, 20).await;
    let delivered = fake.delivered();
    exactly_once(&delivered, (1..=16).filter(|s| *s != 7));
    let st = buffer.stats();
    assert_eq!((st.quarantined, st.quarantine_len), (1, 1), "the refused reading is kept aside, not dropped");
    assert_eq!(buffer.quarantined(10).unwrap()[0].seq, 7);
    assert_eq!(up.status.borrow().quarantined, 1);
    // The loss is reported upstream with the next batch.
    append(&*buffer, &feed, 1);
    up.send_one(false).await.ok().unwrap();
    assert_eq!(fake.offered.lock().unwrap().last().unwrap().1, 1);
}

#[tokio::test]
async fn a_refused_sender_puts_the_whole_batch_aside_at_once_without_halving() {
    let buffer = memory();
    let feed = Arc::new(Feed::default());
    let fake = Fake::default();
    fake.answer(|_| Some(refused(RefusalCode::Revoked)));
    let mut up = uplink(buffer.clone(), fake.clone(), 100, feed.clone());
    append(&*buffer, &feed, 40);
    assert!(matches!(up.send_one(false).await, Err(SendError::Refused { .. })));
    assert_eq!(fake.offered.lock().unwrap().len(), 1);
    let st = buffer.stats();
    assert_eq!((st.len, st.quarantined, st.quarantine_len), (0, 40, 40));
}

#[tokio::test]
async fn any_error_without_a_verdict_keeps_every_reading() {
    let buffer = memory();
    let feed = Arc::new(Feed::default());
    let fake = Fake::default();
    let mut up = uplink(buffer.clone(), fake.clone(), 8, feed.clone());
    append(&*buffer, &feed, 20);
    for e in [
        SendError::Unreachable("404 without a verdict".into()),
        SendError::Unauthorised { status: 403, message: "proxy".into() },
        SendError::Busy(Duration::from_secs(1)),
    ] {
        let msg = e.to_string();
        fake.answer(move |_| Some(SendError::Unreachable(msg.clone())));
        for _ in 0..5 {
            assert!(up.send_one(true).await.is_err());
        }
        assert_eq!(buffer.stats().len, 20, "{e}");
        assert_eq!(up.cap, 8, "{e}: no halving without a verdict");
    }
    assert_eq!(buffer.stats().quarantined, 0);
}

#[tokio::test]
async fn too_large_splits_and_resends_never_drops() {
    let buffer = memory();
    let feed = Arc::new(Feed::default());
    let fake = Fake::default();
    fake.answer(|b| (b.readings.len() > 10).then(|| SendError::TooLarge("413".into())));
    let mut up = uplink(buffer.clone(), fake.clone(), 100, feed.clone());
    append(&*buffer, &feed, 95);
    drain(&mut up, 40).await;
    exactly_once(&fake.delivered(), 1..=95);
    assert_eq!(buffer.stats().quarantined, 0);
    // Even a single reading that is too large stays: it waits and is offered again.
    fake.answer(|_| Some(SendError::TooLarge("413".into())));
    append(&*buffer, &feed, 1);
    for _ in 0..8 {
        let _ = up.send_one(false).await;
    }
    assert_eq!(buffer.stats().len, 1);
    assert_eq!(buffer.stats().quarantined, 0);
}

#[tokio::test]
async fn a_clock_verdict_quarantines_exactly_the_readings_outside_the_window() {
    let buffer = memory();
    let feed = Arc::new(Feed::default());
    let fake = Fake::default();
    let now = Utc::now();
    let window =
        TimeWindow { from: now - chrono::TimeDelta::days(7), until: now + chrono::TimeDelta::minutes(5) };
    fake.answer(move |b| {
        b.readings.iter().any(|r| r.sample.ts < window.from || r.sample.ts > window.until).then(|| {
            SendError::Refused {
                status: 422,
                message: "timestamps outside the accepted window".into(),
                code: Some(RefusalCode::Clock),
                accept: Some(window),
            }
        })
    });
    let mut up = uplink(buffer.clone(), fake.clone(), 100, feed.clone());
    // A clock two hours fast for a while, then 8 days slow, between good readings.
    let recs: Vec<Vec<u8>> = (0..30)
        .map(|i| {
            let ts = match i {
                5..=9 => now + chrono::TimeDelta::hours(2),
                20 | 21 => now - chrono::TimeDelta::days(8),
                _ => now,
            };
            serde_json::to_vec(&Sample::new(format!("s{i}"), 1.0, State::Ok).at(ts)).unwrap()
        })
        .collect();
    append_records(&*buffer, &feed, &recs);
    drain(&mut up, 5).await;
    let outside: Vec<u64> = [6, 7, 8, 9, 10, 21, 22].into();
    exactly_once(&fake.delivered(), (1..=30).filter(|s| !outside.contains(s)));
    let q: Vec<u64> = buffer.quarantined(100).unwrap().iter().map(|q| q.seq).collect();
    assert_eq!(q, outside, "exactly the readings outside the window");
    // The dashboard hears of it with the batch that carries the rest.
    let words = fake.got.lock().unwrap().len();
    assert_eq!(words, 1);
    let (_, quarantined, problem) = fake.offered.lock().unwrap().last().unwrap().clone();
    assert_eq!(quarantined, 7);
    let problem = problem.expect("clock problem reported");
    assert!(problem.contains("ahead") || problem.contains("behind"), "{problem}");
    // Readings taken after the verdict are accepted again: the problem clears.
    append(&*buffer, &feed, 2);
    up.send_one(false).await.ok().unwrap();
    assert!(up.clock_problem.is_none());
    append(&*buffer, &feed, 1);
    up.send_one(false).await.ok().unwrap();
    assert_eq!(fake.offered.lock().unwrap().last().unwrap().2, None);
}

#[tokio::test]
async fn a_clock_problem_reaches_the_dashboard_even_when_every_reading_is_refused() {
    let buffer = memory();
    let feed = Arc::new(Feed::default());
    let fake = Fake::default();
    let now = Utc::now();
    let window = TimeWindow { from: now - chrono::TimeDelta::days(1), until: now };
    fake.answer(move |b| {
        (!b.readings.is_empty()).then(|| SendError::Refused {
            status: 422,
            message: "clock".into(),
            code: Some(RefusalCode::Clock),
            accept: Some(window),
        })
    });
    let mut up = uplink(buffer.clone(), fake.clone(), 100, feed.clone());
    let ahead = now + chrono::TimeDelta::hours(3);
    let recs: Vec<Vec<u8>> =
        (0..4).map(|_| serde_json::to_vec(&Sample::new("s", 1.0, State::Ok).at(ahead)).unwrap()).collect();
    append_records(&*buffer, &feed, &recs);
    assert!(up.send_one(false).await.is_err());
    assert_eq!(buffer.stats().quarantine_len, 4);
    // Nothing left to carry the news: a batch without readings carries it, once.
    assert!(matches!(up.send_one(false).await, Ok(Sent::Some(0))));
    let (seqs, quarantined, problem) = fake.offered.lock().unwrap().last().unwrap().clone();
    assert!(seqs.is_empty());
    assert_eq!(quarantined, 4);
    assert!(problem.unwrap().contains("ahead"));
    assert!(matches!(up.send_one(false).await, Ok(Sent::Nothing)));
}

#[test]
fn clock_words_say_which_way_and_how_far() {
    let now = Utc::now();
    let window = TimeWindow { from: now - chrono::TimeDelta::days(7), until: now };
    let r = |ts| Reading { machine_id: "m".into(), seq: 1, sample: Sample::new("s", 1.0, State::Ok).at(ts) };
    let ahead = r(now + chrono::TimeDelta::minutes(125));
    assert_eq!(clock_words(&[&ahead], &window), "clock at least 2h 5m ahead of the cloud");
    let behind = r(now - chrono::TimeDelta::days(8));
    assert_eq!(clock_words(&[&behind], &window), "clock at least 1day behind the cloud");
}

#[tokio::test]
async fn refused_readings_stay_quarantined_across_a_restart_and_can_be_requeued() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buffer");
    let feed = Arc::new(Feed::default());
    let fake = Fake::default();
    {
        let (b, _) = SledBuffer::open(&path, 1 << 24, WhenFull::DropOldest).unwrap();
        let buffer: Arc<dyn Storage> = Arc::new(b);
        fake.answer(|_| Some(refused(RefusalCode::Forged)));
        let mut up = uplink(buffer.clone(), fake.clone(), 100, feed.clone());
        append(&*buffer, &feed, 12);
        let _ = up.send_one(false).await;
        assert_eq!(buffer.stats().quarantine_len, 12);
    }
    let (b, _) = SledBuffer::open(&path, 1 << 24, WhenFull::DropOldest).unwrap();
    let buffer: Arc<dyn Storage> = Arc::new(b);
    let st = buffer.stats();
    assert_eq!((st.len, st.quarantined, st.quarantine_len), (0, 12, 12));
    assert!(buffer.quarantined(1).unwrap()[0].reason.contains("Forged"));
    // The operator fixed the cause and requeues: the readings go out under their own seqs.
    fake.answer(|_| None);
    assert_eq!(buffer.requeue().unwrap(), 12);
    let mut up = uplink(buffer.clone(), fake.clone(), 100, feed.clone());
    drain(&mut up, 3).await;
    exactly_once(&fake.delivered(), 1..=12);
    assert_eq!(buffer.stats().quarantined, 12, "the count of what was refused stays");
}

#[tokio::test]
async fn an_unreadable_record_is_quarantined_and_counted_not_silently_removed() {
    let buffer = memory();
    let feed = Arc::new(Feed::default());
    let fake = Fake::default();
    let mut up = uplink(buffer.clone(), fake.clone(), 100, feed.clone());
    let mut recs = samples(3);
    // What serde_json makes of a sample whose value was infinite: `null`, which reads back as nothing.
    recs[1] = br#"{"sensor":"perf.x","ts":"2026-01-01T00:00:00Z","value":null,"state":"ok"}"#.to_vec();
    append_records(&*buffer, &feed, &recs);
    drain(&mut up, 3).await;
    exactly_once(&fake.delivered(), [1, 3]);
    let q = buffer.quarantined(10).unwrap();
    assert_eq!((q.len(), q[0].seq), (1, 2));
    assert!(q[0].reason.starts_with("unreadable"), "{}", q[0].reason);
    assert_eq!(fake.offered.lock().unwrap().last().unwrap().1, 1, "counted in the batch");
}

/// Ten minutes of a disk that takes no removal (virtual time): the receiver acknowledges every
/// batch, but the buffer cannot forget them. The uplink does not send the same readings again at
/// once (it did, every few milliseconds, answered "duplicates" each time): it backs off, says why
/// in the status, and drains once the disk writes again.
#[tokio::test(start_paused = true)]
async fn acknowledged_readings_the_buffer_cannot_forget_are_not_sent_again_in_a_loop() {
    let buffer = Arc::new(crate::faulty_buffer::FaultyBuffer::new());
    buffer.fail_removes.store(true, Ordering::Release);
    let feed = Arc::new(Feed::default());
    let fake = Fake::default();
    let mut up = uplink(buffer.clone(), fake.clone(), 100, feed.clone());
    up.cfg.linger = Duration::from_millis(20);
    let status = up.status.subscribe();
    let stop = CancellationToken::new();
    let running = tokio::spawn(up.run(stop.clone()));
    let mut appended = 0u64;
    let t0 = tokio::time::Instant::now();
    while t0.elapsed() < Duration::from_secs(600) {
        append(&*buffer, &feed, 3);
        appended += 3;
        feed.appended.notify_one();
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    let tries = fake.offered.lock().unwrap().len();
    assert!((5..=25).contains(&tries), "{tries} batches in ten minutes");
    assert_eq!(buffer.stats().len, appended, "nothing forgotten that could not be");
    let shown = feed.storage_error.borrow().clone().expect("the status says the buffer fails");
    assert!(shown.starts_with("cannot remove acknowledged readings"), "{shown}");
    assert!(status.borrow().last_upload.is_some(), "the uploads themselves went through");

    buffer.fail_removes.store(false, Ordering::Release);
    tokio::time::timeout(Duration::from_secs(120), async {
        while buffer.stats().len > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("drained once the disk writes again");
    assert_eq!(*feed.storage_error.borrow(), None, "the complaint is gone");
    stop.cancel();
    running.await.unwrap();
    let mut delivered = fake.delivered();
    delivered.sort_unstable();
    delivered.dedup();
    assert_eq!(delivered, (1..=appended).collect::<Vec<_>>(), "every reading reached the receiver");
}

/// Ten minutes of a reverse proxy answering 404 (virtual time): the uplink backs off instead of
/// hammering, keeps every reading, and delivers each exactly once when the receiver is back.
#[tokio::test(start_paused = true)]
async fn ten_minutes_of_errors_without_a_verdict_cost_nothing_and_are_backed_off() {
    let buffer = memory();
    let feed = Arc::new(Feed::default());
    let fake = Fake::default();
    fake.answer(|_| Some(SendError::Unreachable("404 Not Found without a verdict".into())));
    let mut up = uplink(buffer.clone(), fake.clone(), 100, feed.clone());
    up.cfg.linger = Duration::from_millis(20);
    let stop = CancellationToken::new();
    let running = tokio::spawn(up.run(stop.clone()));
    let mut appended = 0u64;
    let t0 = tokio::time::Instant::now();
    // Sensors keep sampling every 10 s through the outage.
    while t0.elapsed() < Duration::from_secs(600) {
        append(&*buffer, &feed, 3);
        appended += 3;
        feed.appended.notify_one();
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    let tries = fake.offered.lock().unwrap().len();
    // Backoff from 1 s doubling to 60 s: about 15 tries in ten minutes, where one per linger
    // would be 30,000 and the old halving-and-deleting would have emptied the buffer at once.
    assert!((5..=25).contains(&tries), "{tries} tries in ten minutes");
    eprintln!("{tries} tries in ten minutes of errors without a verdict");
    assert_eq!(buffer.stats().len, appended, "nothing deleted");
    fake.answer(|_| None);
    tokio::time::timeout(Duration::from_secs(120), async {
        while buffer.stats().len > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("delivered once the receiver is back");
    stop.cancel();
    running.await.unwrap();
    exactly_once(&fake.delivered(), 1..=appended);
    assert_eq!(buffer.stats().quarantined, 0);
}

#[tokio::test(start_paused = true)]
async fn news_leaves_at_once_while_ordinary_readings_linger_for_company() {
    let buffer = memory();
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

    append(&*buffer, &feed, 3);
    feed.appended.notify_one();
    // Paused time jumps to the next timer: the hour of linger would pass, the minute comes first.
    assert!(
        tokio::time::timeout(Duration::from_secs(60), sent(1)).await.is_err(),
        "ordinary readings linger"
    );
    tokio::time::timeout(Duration::from_secs(3600), sent(1)).await.unwrap();

    append(&*buffer, &feed, 1);
    feed.urgent.store(true, Ordering::Release);
    feed.appended.notify_one();
    tokio::time::timeout(Duration::from_secs(1), sent(2)).await.expect("news is sent without lingering");
    stop.cancel();
    running.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_stopping_hub_hands_over_without_sitting_out_a_long_wait() {
    let buffer = memory();
    let feed = Arc::new(Feed::default());
    let fake = Fake::default();
    let mut up = uplink(buffer.clone(), fake.clone(), 100, feed.clone());
    up.cfg.linger = Duration::from_secs(3600);
    // The receiver is busy and asks for a minute's patience.
    fake.answer(|_| Some(SendError::Busy(Duration::from_secs(60))));
    append(&*buffer, &feed, 4);
    feed.appended.notify_one();
    let stop = CancellationToken::new();
    let running = tokio::spawn(up.run(stop.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(fake.offered.lock().unwrap().len(), 1, "tried once, then waits as asked");

    // The receiver is fine again, and the hub begins to stop: its last readings are written.
    fake.answer(|_| None);
    append(&*buffer, &feed, 2);
    feed.appended.notify_one();
    feed.stopping.cancel();
    tokio::time::sleep(Duration::from_secs(2)).await;
    exactly_once(&fake.delivered(), 1..=6);
    assert_eq!(buffer.stats().len, 0, "everything handed over within the stop's grace");
    stop.cancel();
    running.await.unwrap();
}

// ---- Against a real HTTP receiver on 127.0.0.1: the answers of proxies and clouds, as sent. ----

/// What the receiver answers for one batch: `None` stores it, else `(status, body)`.
type Answer = Box<dyn Fn(&Batch) -> Option<(u16, String)> + Send + Sync>;

struct Receiver {
    answer: Mutex<Answer>,
    requests: std::sync::atomic::AtomicUsize,
    stored: Mutex<Vec<u64>>,
}

impl Receiver {
    fn set(&self, a: impl Fn(&Batch) -> Option<(u16, String)> + Send + Sync + 'static) {
        *self.answer.lock().unwrap() = Box::new(a);
    }
}

async fn receiver() -> (HttpTransport, Arc<Receiver>) {
    use axum::body::Bytes;
    use axum::extract::State as Shared;
    use axum::http::StatusCode;
    let rx = Arc::new(Receiver {
        answer: Mutex::new(Box::new(|_| None)),
        requests: Default::default(),
        stored: Default::default(),
    });
    let app = axum::Router::new()
        .route(
            "/v1/batches",
            axum::routing::post(|Shared(rx): Shared<Arc<Receiver>>, body: Bytes| async move {
                rx.requests.fetch_add(1, Ordering::SeqCst);
                let json = outpost_shared::wire::decompress(&body, true, 64 << 20).unwrap();
                let batch: Batch = serde_json::from_slice(&json).unwrap();
                if let Some((status, body)) = (rx.answer.lock().unwrap())(&batch) {
                    return (StatusCode::from_u16(status).unwrap(), body);
                }
                rx.stored.lock().unwrap().extend(batch.readings.iter().map(|r| r.seq));
                let ack = BatchAck { stored: batch.readings.len() as u64, duplicates: 0 };
                (StatusCode::OK, serde_json::to_string(&ack).unwrap())
            }),
        )
        .with_state(rx.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let t = HttpTransport::new(client, &format!("http://{addr}"), test_key(), "direct".into());
    (t, rx)
}

fn test_key() -> Arc<outpost_shared::keys::KeyPair> {
    static KEY: std::sync::OnceLock<Arc<outpost_shared::keys::KeyPair>> = std::sync::OnceLock::new();
    KEY.get_or_init(|| Arc::new(outpost_shared::keys::KeyPair::generate().unwrap())).clone()
}

fn verdict_body(v: outpost_shared::model::Verdict, code: RefusalCode, accept: Option<TimeWindow>) -> String {
    let mut e = outpost_shared::model::ApiError::verdict("refused by the test receiver", v, code);
    e.accept = accept;
    serde_json::to_string(&e).unwrap()
}

#[tokio::test]
async fn http_answers_without_a_verdict_mean_retry_later_and_only_verdicts_decide() {
    use outpost_shared::model::Verdict;
    let (t, rx) = receiver().await;
    let mut batch = Batch {
        machine_id: "m".into(),
        hostname: "h".into(),
        role: Role::Sensorhub,
        uplink: String::new(),
        buffered: 0,
        dropped: 0,
        version: "t".into(),
        quarantined: 0,
        clock_problem: None,
        features: Vec::new(),
        readings: vec![Reading { machine_id: "m".into(), seq: 1, sample: Sample::new("s", 1.0, State::Ok) }],
    };
    let proxy_page = "<html><body><h1>404 Not Found</h1>nginx</body></html>".to_string();
    for status in [400, 404, 405, 408, 409, 410, 422, 500, 502, 504] {
        let page = proxy_page.clone();
        rx.set(move |_| Some((status, page.clone())));
        let e = t.send(&mut batch).await.unwrap_err();
        assert!(matches!(e, SendError::Unreachable(_)), "{status}: {e:?}");
        // An API error body without a verdict (an older peer) is no verdict either.
        rx.set(move |_| Some((status, r#"{"error":"old peer"}"#.into())));
        let e = t.send(&mut batch).await.unwrap_err();
        assert!(matches!(e, SendError::Unreachable(_)), "{status} with a plain error body: {e:?}");
    }
    rx.set(|_| Some((413, "too big".into())));
    assert!(matches!(t.send(&mut batch).await, Err(SendError::TooLarge(_))));
    rx.set(|_| Some((400, verdict_body(Verdict::Refused, RefusalCode::TooLarge, None))));
    assert!(matches!(t.send(&mut batch).await, Err(SendError::TooLarge(_))), "TooLarge is never a refusal");
    rx.set(|_| Some((503, verdict_body(Verdict::RetryLater, RefusalCode::Storage, None))));
    assert!(matches!(t.send(&mut batch).await, Err(SendError::Busy(_))));
    rx.set(|_| Some((400, verdict_body(Verdict::RetryLater, RefusalCode::NotEnrolled, None))));
    assert!(matches!(t.send(&mut batch).await, Err(SendError::Unreachable(_))));
    rx.set(|_| Some((403, verdict_body(Verdict::Refused, RefusalCode::Forged, None))));
    let e = t.send(&mut batch).await.unwrap_err();
    assert!(
        matches!(e, SendError::Refused { status: 403, code: Some(RefusalCode::Forged), accept: None, .. }),
        "{e:?}"
    );
    let now = Utc::now();
    let w = TimeWindow { from: now, until: now };
    rx.set(move |_| Some((422, verdict_body(Verdict::Refused, RefusalCode::Clock, Some(w)))));
    let e = t.send(&mut batch).await.unwrap_err();
    assert!(
        matches!(e, SendError::Refused { code: Some(RefusalCode::Clock), accept: Some(a), .. } if a == w)
    );
    // Not JSON at all, but a success status: not an acknowledgement.
    rx.set(|_| None);
    assert!(t.send(&mut batch).await.is_ok());
}

/// A reverse proxy answers 404, 405, 408 and 500 for a stretch (real time, short), then the
/// receiver is back: every seq arrives exactly once, nothing is quarantined, and the uplink
/// backed off instead of trying once per linger.
#[tokio::test]
async fn a_reverse_proxy_in_maintenance_costs_a_hub_no_reading() {
    let (t, rx) = receiver().await;
    let statuses = [404u16, 405, 408, 500];
    let n = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let k = n.clone();
    rx.set(move |_| {
        Some((statuses[k.fetch_add(1, Ordering::SeqCst) % 4], "<html>maintenance</html>".into()))
    });
    let buffer = memory();
    let feed = Arc::new(Feed::default());
    let mut up = uplink(buffer.clone(), t, 50, feed.clone());
    up.cfg.linger = Duration::from_millis(10);
    up.cfg.retry_min = Duration::from_millis(20);
    up.cfg.retry_max = Duration::from_millis(400);
    let stop = CancellationToken::new();
    let running = tokio::spawn(up.run(stop.clone()));
    let mut appended = 0u64;
    let stretch = Duration::from_millis(2500);
    let t0 = std::time::Instant::now();
    while t0.elapsed() < stretch {
        append(&*buffer, &feed, 7);
        appended += 7;
        feed.appended.notify_one();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let during = rx.requests.load(Ordering::SeqCst);
    assert_eq!(buffer.stats().len, appended, "nothing deleted during the outage");
    let lingers = (stretch.as_millis() / 10) as usize;
    assert!(during >= 3 && during * 10 < lingers, "{during} requests in {stretch:?} ({lingers} lingers)");
    rx.set(|_| None);
    tokio::time::timeout(Duration::from_secs(10), async {
        while buffer.stats().len > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("delivered once the proxy lets requests through");
    stop.cancel();
    running.await.unwrap();
    exactly_once(&rx.stored.lock().unwrap(), 1..=appended);
    assert_eq!(buffer.stats().quarantined, 0);
    eprintln!("{during} requests during a {stretch:?} outage, {appended} readings, all delivered once");
}

#[tokio::test]
async fn verdicts_from_a_real_http_receiver_are_obeyed() {
    use outpost_shared::model::Verdict;
    let (t, rx) = receiver().await;
    let buffer = memory();
    let feed = Arc::new(Feed::default());
    let mut up = uplink(buffer.clone(), t, 100, feed.clone());
    // 413 for anything over 16 readings: split down, all delivered.
    rx.set(|b| (b.readings.len() > 16).then(|| (413, "payload too large".to_string())));
    append(&*buffer, &feed, 60);
    drain(&mut up, 30).await;
    exactly_once(&rx.stored.lock().unwrap(), 1..=60);
    // A forged verdict: the batch goes to the quarantine, counted, and the count travels.
    rx.set(|_| Some((403, verdict_body(Verdict::Refused, RefusalCode::Forged, None))));
    append(&*buffer, &feed, 5);
    let _ = up.send_one(false).await;
    assert_eq!((buffer.stats().len, buffer.stats().quarantine_len), (0, 5));
    // A clock verdict: exactly the readings outside the window go aside.
    let now = Utc::now();
    let w = TimeWindow { from: now - chrono::TimeDelta::hours(1), until: now + chrono::TimeDelta::hours(1) };
    rx.set(move |b| {
        b.readings
            .iter()
            .any(|r| r.sample.ts > w.until)
            .then(|| (422, verdict_body(Verdict::Refused, RefusalCode::Clock, Some(w))))
    });
    let recs: Vec<Vec<u8>> = (0..6)
        .map(|i| {
            let ts = if i % 3 == 0 { now + chrono::TimeDelta::hours(3) } else { now };
            serde_json::to_vec(&Sample::new("s", 1.0, State::Ok).at(ts)).unwrap()
        })
        .collect();
    let r = append_records(&*buffer, &feed, &recs);
    drain(&mut up, 3).await;
    let q: Vec<u64> = buffer.quarantined(100).unwrap().iter().map(|q| q.seq).collect();
    assert_eq!(&q[5..], &[r.start, r.start + 3]);
    let stored = rx.stored.lock().unwrap().clone();
    assert_eq!(&stored[60..], &[r.start + 1, r.start + 2, r.start + 4, r.start + 5]);
    assert_eq!(buffer.stats().quarantined, 7);
}

// ---- The path: which connectors are probed, and that command polls never wait behind a probe. ----

fn authorised(name: &str) -> outpost_shared::keys::AuthorizedConnector {
    outpost_shared::keys::AuthorizedConnector {
        machine_id: outpost_shared::keys::MachineId::of_spki_der(name.as_bytes()),
        lan_cert: outpost_shared::keys::CertFingerprint::of_der(name.as_bytes()),
    }
}

fn found(uuid: Option<String>, location: &str) -> outpost_shared::ssdp::Found {
    outpost_shared::ssdp::Found {
        location: location.into(),
        usn: format!("uuid:{}", uuid.clone().unwrap_or_default()),
        server: String::new(),
        st: outpost_shared::ssdp::ST_CONNECTOR.into(),
        uuid,
        source: None,
    }
}

#[test]
fn only_connectors_the_receipt_authorises_are_probed_and_few_per_search() {
    let ours = [authorised("a"), authorised("b")];
    let map = path::by_uuid(&ours);
    let uuid = |c: &outpost_shared::keys::AuthorizedConnector| {
        outpost_shared::ssdp::uuid_for_machine(c.machine_id.as_str())
    };
    let mut answers: Vec<_> = (0..1000)
        .map(|i| found(Some(format!("rogue-{i}")), &format!("https://10.0.0.{}/", i % 250)))
        .collect();
    answers.insert(500, found(None, "https://10.0.1.1/"));
    answers.push(found(Some(uuid(&ours[1])), "https://10.0.2.2:8444/"));
    assert!(!path::wanted(&answers[0], &map), "an id the receipt does not list takes no place");
    let probe = path::to_probe(answers, &map);
    assert_eq!(probe.len(), 2, "{probe:?}");
    assert_eq!(probe[0].url, "https://10.0.2.2:8444/");
    assert_eq!(probe[0].claims.as_ref(), Some(&ours[1]), "probed with that connector's certificate only");
    assert_eq!(probe[1].claims, None);
    let many: Vec<_> = (0..50).map(|i| found(None, &format!("https://10.0.3.{i}/"))).collect();
    assert_eq!(path::to_probe(many, &map).len(), path::MAX_PROBES_PER_SEARCH);
}

#[tokio::test]
async fn command_polls_do_not_wait_while_a_connector_candidate_is_probed() {
    // A candidate that accepts connections and never answers: each probe waits for its timeout.
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang_addr = hang.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hang.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(s);
        }
    });
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let cfg = UplinkConfig {
        connector: Some(format!("https://{hang_addr}")),
        discover: false,
        ..Default::default()
    };
    let key = test_key();
    let enrollment = crate::trust::Enrollment {
        receipt: outpost_shared::keys::EnrollmentReceipt {
            machine_id: key.machine_id().clone(),
            network_id: "n".into(),
            connectors: vec![authorised("c")],
            cloud_key: key.machine_id().clone(),
            issued_at: Utc::now(),
            role: Some(outpost_shared::model::Role::Sensorhub),
        },
        cloud_key: key.public().clone(),
    };
    let direct =
        HttpTransport::new(reqwest::Client::new(), &format!("http://{closed}"), key.clone(), "direct".into());
    let dir = tempfile::tempdir().unwrap();
    let path = PathTransport::new(cfg, key, enrollment, Some(direct), dir.path().to_path_buf());
    let sender = path.clone();
    let sending = tokio::spawn(async move {
        let mut b = Batch {
            machine_id: "m".into(),
            hostname: "h".into(),
            role: Role::Sensorhub,
            uplink: String::new(),
            buffered: 0,
            dropped: 0,
            version: "t".into(),
            quarantined: 0,
            clock_problem: None,
            features: Vec::new(),
            readings: Vec::new(),
        };
        sender.send(&mut b).await
    });
    tokio::time::timeout(Duration::from_secs(5), async {
        while accepted.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the probe reached the candidate");
    assert!(!sending.is_finished(), "the probe is still waiting");
    let t0 = std::time::Instant::now();
    let cur = tokio::time::timeout(Duration::from_millis(200), path.current())
        .await
        .expect("a command poll gets the path while the probe runs");
    assert!(cur.is_some());
    assert!(t0.elapsed() < Duration::from_millis(200));
    let r = tokio::time::timeout(Duration::from_secs(15), sending).await.unwrap().unwrap();
    assert!(matches!(r, Err(SendError::Unreachable(_))), "{r:?}");
}

/// A listener that accepts connections and never answers; counts them.
async fn tarpit() -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = hang.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hang.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(s);
        }
    });
    (addr, accepted)
}

fn empty_batch() -> Batch {
    Batch {
        machine_id: "m".into(),
        hostname: "h".into(),
        role: Role::Sensorhub,
        uplink: String::new(),
        buffered: 0,
        dropped: 0,
        version: "t".into(),
        quarantined: 0,
        clock_problem: None,
        features: Vec::new(),
        readings: Vec::new(),
    }
}

#[tokio::test]
async fn on_the_direct_path_uploads_do_not_wait_for_a_reprobe_that_hangs() {
    let (hang_addr, accepted) = tarpit().await;
    let (direct, rx) = receiver().await;
    // Left for the cloud at once, and looking for the connector again at every send.
    let cfg = UplinkConfig {
        connector: Some(format!("https://{hang_addr}")),
        discover: false,
        fallback_after: Duration::ZERO,
        reprobe_every: Duration::ZERO,
        ..Default::default()
    };
    let key = test_key();
    let enrollment = crate::trust::Enrollment {
        receipt: outpost_shared::keys::EnrollmentReceipt {
            machine_id: key.machine_id().clone(),
            network_id: "n".into(),
            connectors: vec![authorised("c")],
            cloud_key: key.machine_id().clone(),
            issued_at: Utc::now(),
            role: Some(outpost_shared::model::Role::Sensorhub),
        },
        cloud_key: key.public().clone(),
    };
    let dir = tempfile::tempdir().unwrap();
    let path = PathTransport::new(cfg, key, enrollment, Some(direct), dir.path().to_path_buf());
    // The first send waits for the connector (there is nowhere else before the fallback).
    let first = tokio::time::timeout(Duration::from_secs(15), path.send(&mut empty_batch())).await.unwrap();
    assert!(first.is_ok(), "{first:?}");
    assert_eq!(path.path(), "direct");
    let probes_before = accepted.load(Ordering::SeqCst);
    // Each later send starts a re-probe, which hangs on the candidate; the uploads do not wait.
    for _ in 0..5 {
        let t0 = std::time::Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(2), path.send(&mut empty_batch()))
            .await
            .expect("an upload on the direct path does not wait behind a re-probe");
        assert!(r.is_ok(), "{r:?}");
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    }
    tokio::time::timeout(Duration::from_secs(5), async {
        while accepted.load(Ordering::SeqCst) == probes_before {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the re-probe reached the candidate");
    assert_eq!(rx.requests.load(Ordering::SeqCst), 6);
}

// ---- Direct to the cloud in a machine session ----

/// How the fake cloud signs its acknowledgements.
#[derive(Clone, Copy, PartialEq)]
enum AckMac {
    Right,
    Missing,
    Wrong,
}

struct FakeCloud {
    key: outpost_shared::keys::KeyPair,
    tickets: outpost_shared::keys::TicketKeys,
    mac: Mutex<AckMac>,
    signed_requests: std::sync::atomic::AtomicUsize,
}

/// A cloud that opens sessions like the real one and acknowledges every batch, with the answer
/// MAC `FakeCloud::mac` says.
async fn fake_cloud() -> (HttpTransport, Arc<FakeCloud>) {
    use axum::body::Bytes;
    use axum::extract::State as Shared;
    use axum::http::{HeaderMap, StatusCode};
    use outpost_shared::keys::session;
    let key = outpost_shared::keys::KeyPair::generate().unwrap();
    let cloud = Arc::new(FakeCloud {
        tickets: outpost_shared::keys::TicketKeys::derive(&key),
        key,
        mac: Mutex::new(AckMac::Right),
        signed_requests: Default::default(),
    });
    let app = axum::Router::new()
        .route(
            "/v1/machine-session/challenge",
            axum::routing::get(|Shared(c): Shared<Arc<FakeCloud>>| async move {
                // Offers no X25519 login, as clouds before it did: the hub logs in with RSA-OAEP.
                axum::Json(session::ChallengeAnswer {
                    challenge: c.tickets.challenge(chrono::Utc::now().timestamp()).unwrap(),
                    exchange_key: None,
                })
            }),
        )
        .route(
            "/v1/machine-session",
            axum::routing::post(
                |Shared(c): Shared<Arc<FakeCloud>>, axum::Json(req): axum::Json<session::OpenRequest>| async move {
                    let (answer, _) = session::accept_open(
                        &c.key,
                        &c.tickets,
                        &req,
                        test_key().public(),
                        chrono::Utc::now().timestamp(),
                        Duration::from_secs(3600),
                    )
                    .unwrap();
                    axum::Json(answer)
                },
            ),
        )
        .route(
            "/v1/batches",
            axum::routing::post(|Shared(c): Shared<Arc<FakeCloud>>, headers: HeaderMap, body: Bytes| async move {
                let json = outpost_shared::wire::decompress(&body, true, 64 << 20).unwrap();
                let batch: Batch = serde_json::from_slice(&json).unwrap();
                let ack = serde_json::to_vec(&BatchAck { stored: batch.readings.len() as u64, duplicates: 0 }).unwrap();
                let Some(h) = outpost_shared::keys::SessionHeaders::from_header_map(&headers).unwrap() else {
                    c.signed_requests.fetch_add(1, Ordering::SeqCst);
                    return (StatusCode::OK, HeaderMap::new(), ack);
                };
                let ticket = c.tickets.open(&h.ticket, chrono::Utc::now().timestamp()).unwrap();
                session::verify_mac(&ticket, &h, "POST", "/v1/batches", &json, chrono::Utc::now().timestamp(), Duration::from_secs(300)).unwrap();
                let mut out = HeaderMap::new();
                let mac = match *c.mac.lock().unwrap() {
                    AckMac::Right => Some(session::answer_mac(&ticket.key, h.seq, 200, &ack)),
                    AckMac::Wrong => Some(session::answer_mac(&ticket.key, h.seq + 1, 200, &ack)),
                    AckMac::Missing => None,
                };
                if let Some(m) = mac {
                    out.insert(session::HEADER_ANSWER_MAC, m.parse().unwrap());
                }
                (StatusCode::OK, out, ack)
            }),
        )
        .with_state(cloud.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let session = Arc::new(outpost_shared::keys::SessionClient::new(test_key(), cloud.key.public().clone()));
    let t = HttpTransport::new(client, &format!("http://{addr}"), test_key(), "direct".into())
        .with_session(session);
    (t, cloud)
}

#[tokio::test]
async fn in_a_session_only_an_acknowledgement_with_the_clouds_mac_lets_readings_go() {
    let (t, cloud) = fake_cloud().await;
    let mut b = empty_batch();
    b.readings = (1..=5)
        .map(|seq| Reading { machine_id: "m".into(), seq, sample: Sample::new("s", 1.0, State::Ok) })
        .collect();
    let ack = t.send(&mut b).await.expect("acknowledged with the cloud's MAC");
    assert_eq!(ack.stored, 5);
    t.send(&mut b).await.unwrap();
    assert_eq!(t.session().unwrap().opened(), 1, "one login for many requests");
    assert_eq!(cloud.signed_requests.load(Ordering::SeqCst), 0, "no RSA signature per request");
    for mode in [AckMac::Wrong, AckMac::Missing] {
        *cloud.mac.lock().unwrap() = mode;
        let r = t.send(&mut b).await;
        assert!(matches!(r, Err(SendError::Unreachable(_))), "not acknowledged, kept: {r:?}");
    }
    // No MAC at all: something on the way drops the header (a proxy that passes only what it
    // knows), so no session answer could ever be believed. The hub does not resend the batch for
    // good: it signs its requests again, as before sessions, and the batch goes.
    assert_eq!(cloud.signed_requests.load(Ordering::SeqCst), 0);
    let ack = t.send(&mut b).await.expect("acknowledged on the signed path");
    assert_eq!(ack.stored, 5);
    assert_eq!(cloud.signed_requests.load(Ordering::SeqCst), 1, "signed, no longer in a session");
    assert_eq!(t.session().unwrap().opened(), 1, "no new session in a loop");
}
