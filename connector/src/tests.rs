use super::*;
use outpost_shared::buffer::MemoryBuffer;
use outpost_shared::keys::KeyPair;
use outpost_shared::model::{
    ApiError, Batch, BatchAck, ForwardAck, ForwardEnvelope, ForwardResult, Reading, RefusalCode, Role,
    Sample, State, Verdict,
};
use std::path::Path;
use std::sync::OnceLock;

/// One key for every test here: RSA key generation is slow.
fn hub_key() -> Arc<KeyPair> {
    static KEY: OnceLock<Arc<KeyPair>> = OnceLock::new();
    KEY.get_or_init(|| Arc::new(KeyPair::generate().expect("key generation"))).clone()
}

fn shared(buffer: Arc<dyn Storage>, quota: u64, dir: &Path) -> Arc<Shared> {
    shared_with(buffer, quota, dir, crate::lan::IntakeGates::default())
}

fn shared_with(
    buffer: Arc<dyn Storage>,
    quota: u64,
    dir: &Path,
    intake: crate::lan::IntakeGates,
) -> Arc<Shared> {
    Arc::new(Shared {
        machine_id: "conn".into(),
        key: hub_key(),
        cloud: None,
        session: std::sync::OnceLock::new(),
        buffer,
        quota,
        retry_after: Duration::from_secs(1),
        per_hub: Mutex::new(HashMap::new()),
        attached: Mutex::new(HashMap::new()),
        forward_wake: tokio::sync::Notify::new(),
        unattached: Mutex::new(Vec::new()),
        watch: None,
        custody: tokio::sync::RwLock::new(()),
        pushing_back: AtomicBool::new(false),
        hub_keys: hub_keys::HubKeys::new(dir, hub_key().machine_id().clone(), Duration::from_secs(10)),
        quarantine: quarantine::Quarantine::open(dir, 1 << 20).unwrap(),
        ingest: config::IngestConfig::default(),
        polls: crate::polls::Polls::default(),
        intake,
    })
}

/// Appends one hub batch record and counts it in the hub's share. Plain JSON, as connectors
/// stored it before records were packed (they must still forward), so `pad` is its size.
fn put(sh: &Shared, hub: &str, readings: u32, fresh: bool, pad: usize) -> u64 {
    let json = format!("{{\"hub\":\"{hub}\",\"pad\":\"{}\"}}", "x".repeat(pad));
    let rec = record::encode(&record::Record {
        readings,
        fresh,
        machine_id: hub,
        timestamp: 0,
        signature: "c2ln",
        json: json.as_bytes(),
        packed: false,
    })
    .unwrap();
    *sh.per_hub.lock().unwrap().entry(hub.into()).or_default() += rec.len() as u64;
    sh.buffer.append(&[rec]).unwrap().start
}

/// A connector's shared state on an in-memory buffer (the quarantine in `dir`).
fn mem_shared_in(quota: u64, dir: &Path) -> Arc<Shared> {
    shared(Arc::new(MemoryBuffer::new(quota, WhenFull::Reject)), quota, dir)
}

fn mem_shared(quota: u64) -> (Arc<Shared>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (mem_shared_in(quota, dir.path()), dir)
}

#[tokio::test]
async fn forwarding_puts_the_newest_fresh_batches_ahead_of_the_backlog_and_respects_the_size() {
    let (sh, _dir) = mem_shared(1 << 30);
    let backlog: Vec<u64> = (0..10).map(|_| put(&sh, "b", 1000, false, 10)).collect();
    let live_a = put(&sh, "a", 10, true, 10);
    put(&sh, "b", 1000, false, 10);
    let live_c = put(&sh, "c", 10, true, 10);
    let (taken, env) = forward::collect(&sh, 3000, u64::MAX, 1000).await.unwrap();
    let env = env.expect("something to send");
    // Fresh ones newest first, then the backlog oldest first until the request is full.
    assert_eq!(taken.seqs, vec![live_c, live_a, backlog[0], backlog[1]]);
    assert_eq!(env.batches.len(), 4);
    assert!(env.batches[0].body.get().contains("\"hub\":\"c\""));
    assert_eq!(env.batches[0].sig.machine_id, "c", "each batch keeps its hub's signature");
    // What each hub gets back in its fair share once these are gone.
    let freed: Vec<&str> = taken.freed.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(freed, vec!["c", "a", "b", "b"]);
}

#[tokio::test]
async fn a_single_batch_over_the_request_size_still_goes_alone() {
    let (sh, _dir) = mem_shared(1 << 30);
    let big = put(&sh, "a", 40_000, false, 10);
    put(&sh, "a", 10, false, 10);
    let (taken, _) = forward::collect(&sh, 20_000, u64::MAX, 1000).await.unwrap();
    assert_eq!(taken.seqs, vec![big], "one oversized batch at a time, never none");
}

#[test]
fn a_hub_over_its_fair_share_of_a_filling_buffer_waits_while_the_others_do_not() {
    let (sh, _dir) = mem_shared(10_000);
    put(&sh, "a", 10, false, 3_900);
    // Below half the quota nobody is limited.
    assert!(lan::over_fair_share(&sh, "a", 1_000).is_none());
    put(&sh, "b", 10, false, 1_900);
    // Two hubs hold data: each may hold half.
    let msg = lan::over_fair_share(&sh, "a", 1_500).expect("a is over its share");
    assert!(msg.contains("fair share is 5000"), "{msg}");
    assert!(lan::over_fair_share(&sh, "b", 1_500).is_none());
    // A hub new here counts itself: three shares.
    assert!(lan::over_fair_share(&sh, "c", 3_000).is_none());
    assert!(lan::over_fair_share(&sh, "c", 3_400).is_some());
    // A hub whose data has all been forwarded does not count against the others, and a hub
    // known here with nothing held counts once.
    sh.per_hub.lock().unwrap().insert("b".into(), 0);
    assert!(lan::over_fair_share(&sh, "a", 1_500).is_none());
    assert!(lan::over_fair_share(&sh, "b", 4_000).is_none());
}

fn batch_json(machine: &str, n: usize, first_seq: u64) -> Vec<u8> {
    let readings = (0..n as u64)
        .map(|i| Reading {
            machine_id: machine.into(),
            seq: first_seq + i,
            sample: Sample::new(format!("s.{}", i % 7), i as f64, State::Ok),
        })
        .collect();
    let b = Batch {
        machine_id: machine.into(),
        hostname: machine.into(),
        role: Role::Sensorhub,
        uplink: "connector:x".into(),
        buffered: 0,
        dropped: 0,
        version: "t".into(),
        quarantined: 0,
        clock_problem: None,
        features: Vec::new(),
        readings,
    };
    serde_json::to_vec(&b).unwrap()
}

fn batch_json_at(machine: &str, n: usize, first_seq: u64, ts: chrono::DateTime<chrono::Utc>) -> Vec<u8> {
    let mut b: Batch = serde_json::from_slice(&batch_json(machine, n, first_seq)).unwrap();
    for r in &mut b.readings {
        r.sample.ts = ts;
    }
    serde_json::to_vec(&b).unwrap()
}

/// The cloud key of these tests (never a real cloud: it signs the documents a connector keeps).
fn cloud_key() -> Arc<KeyPair> {
    static KEY: OnceLock<Arc<KeyPair>> = OnceLock::new();
    KEY.get_or_init(|| Arc::new(KeyPair::generate().expect("key generation"))).clone()
}

/// Makes `dir` what a connector enrolled with [`cloud_key`] leaves on disk: its key, the signed
/// receipt, and a signed key list naming `listed`, as kept from an earlier run.
fn seed_enrolled(dir: &Path, listed: &[&KeyPair]) {
    use outpost_shared::keys::{EnrollmentReceipt, IngestLimits, NetworkKeys, NetworkMachine, Signed};
    std::fs::create_dir_all(dir).unwrap();
    let me = outpost_sensorhub::trust::machine_key(&dir.join(outpost_sensorhub::trust::KEY_FILE)).unwrap();
    let cloud = cloud_key();
    let now = chrono::Utc::now();
    let receipt = EnrollmentReceipt {
        machine_id: me.machine_id().clone(),
        network_id: "n".into(),
        connectors: vec![],
        cloud_key: cloud.machine_id().clone(),
        issued_at: now,
        role: Some(outpost_shared::model::Role::Connector),
    };
    let stored = serde_json::json!({"receipt": Signed::sign(&cloud, &receipt).unwrap(),
        "cloud_key": cloud.public().to_pem()});
    std::fs::write(dir.join(outpost_sensorhub::trust::ENROLLMENT_FILE), stored.to_string()).unwrap();
    let doc = NetworkKeys {
        connector: me.machine_id().clone(),
        network_id: "n".into(),
        issued_at: now,
        machines: listed
            .iter()
            .map(|k| NetworkMachine { machine_id: k.machine_id().clone(), public_key: k.public().to_pem() })
            .collect(),
        limits: IngestLimits { max_body: 8 << 20, max_decompressed: 64 << 20, max_readings: 50_000 },
    };
    std::fs::write(
        dir.join(hub_keys::FILE),
        serde_json::to_vec(&Signed::sign(&cloud, &doc).unwrap()).unwrap(),
    )
    .unwrap();
}

/// The LAN API of a real connector (TLS on loopback) whose cloud never answers: it checks every
/// batch against the key list it kept on disk (a restart during an outage), and pushes back when
/// full.
#[tokio::test]
async fn the_lan_api_takes_only_verified_batches_refuses_oversized_ones_and_pushes_back_when_full() {
    let dir = tempfile::tempdir().unwrap();
    let key = hub_key();
    seed_enrolled(dir.path(), &[&key]);
    let mut cfg = ConnectorConfig {
        data_dir: dir.path().to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        monitor_self: false,
        ..Default::default()
    };
    // Nothing listens there: everything taken stays buffered.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    cfg.cloud.url = Some(format!("https://{dead}"));
    cfg.buffer.quota = 64 << 10;
    cfg.buffer.retry_after = Duration::from_secs(7);
    cfg.ssdp.advertise = false;
    cfg.ssdp.search_hubs = false;
    let conn = start(cfg).await.unwrap();
    let client = outpost_shared::tls::https_client(Some(&conn.ca_file), Duration::from_secs(10)).unwrap();
    let url = format!("{}/v1/batches", conn.loopback_url());
    let hub = key.machine_id().to_string();
    let post_by = |signer: &KeyPair, json: Vec<u8>, signed: bool, signature: Option<String>| {
        let mut req = client.post(&url).header("content-encoding", "gzip");
        if signed {
            let mut sig =
                outpost_shared::keys::sign_request(signer, "POST", "/v1/batches", &json, chrono::Utc::now())
                    .unwrap();
            if let Some(s) = signature {
                sig.signature_b64 = s;
            }
            for (name, value) in sig.to_pairs() {
                req = req.header(name, value);
            }
        }
        req.body(outpost_shared::wire::gzip(&json)).send()
    };
    let post = |json: Vec<u8>, signed: bool| post_by(&key, json, signed, None);
    let body = |r: reqwest::Response| async move { r.json::<serde_json::Value>().await.unwrap() };

    // The key list from disk is in use once the forwarder has read the enrollment: a batch from
    // 2100 is then refused for its clock (and before that for the missing list).
    let y2100 = chrono::DateTime::parse_from_rfc3339("2100-01-01T00:00:00Z").unwrap().to_utc();
    let clock = loop {
        let r = post(batch_json_at(&hub, 3, 1, y2100), true).await.unwrap();
        if r.status() != 503 {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(clock.status(), 422);
    let v = body(clock).await;
    assert_eq!((v["verdict"].as_str(), v["code"].as_str()), (Some("refused"), Some("clock")), "{v}");
    let until = chrono::DateTime::parse_from_rfc3339(v["accept"]["until"].as_str().unwrap()).unwrap();
    assert!(until.to_utc() < chrono::Utc::now() + chrono::Duration::minutes(6), "{v}");
    let y2000 = chrono::DateTime::parse_from_rfc3339("2000-01-01T00:00:00Z").unwrap().to_utc();
    assert_eq!(post(batch_json_at(&hub, 3, 1, y2000), true).await.unwrap().status(), 422, "from 2000");

    let unsigned = post(batch_json(&hub, 10, 1), false).await.unwrap();
    assert_eq!(unsigned.status(), 401, "unsigned");
    assert_eq!(body(unsigned).await["code"], "forged");
    let other = "0123456789abcdef0123456789abcdef";
    assert_eq!(post(batch_json(other, 10, 1), true).await.unwrap().status(), 401, "signed by another");
    // Well-formed headers naming a listed hub, but a signature that is not its.
    let bogus = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [7u8; 384]);
    let r = post_by(&key, batch_json(&hub, 10, 1), true, Some(bogus)).await.unwrap();
    assert_eq!(r.status(), 401, "bogus signature");
    // A real signature by a machine the list does not name (nor can the dead cloud).
    let stranger = cloud_key();
    let r = post_by(&stranger, batch_json(stranger.machine_id().as_str(), 10, 1), true, None).await.unwrap();
    assert_eq!(r.status(), 401, "unknown signer");
    assert_eq!(body(r).await["code"], "not_enrolled");
    // Correctly signed, but invalid UTF-8 inside a field nobody reads.
    let mut json = batch_json(&hub, 10, 1);
    json.splice(1..1, b"\"x\":\"\xff\xfe\",".iter().copied());
    let r = post(json, true).await.unwrap();
    assert_eq!(r.status(), 400, "invalid UTF-8");
    assert_eq!(body(r).await["code"], "malformed");
    // A signature header longer than any signature: 431, or over HTTP/2 (which hubs speak) the
    // connection refused by the protocol layer before any handler runs. Either way nothing is taken.
    match post_by(&key, batch_json(&hub, 10, 1), true, Some("A".repeat(70_000))).await {
        Ok(r) => assert_eq!(r.status(), 431, "oversized header"),
        Err(e) => assert!(format!("{e:?}").contains("header_list"), "oversized header refused: {e:?}"),
    }
    // More than half the quota in one batch (as stored, packed) could never fit beside other
    // hubs' data: 413, so the hub splits it instead of retrying it forever.
    let r = post(batch_json(&hub, 20_000, 1), true).await.unwrap();
    assert_eq!(r.status(), 413);
    assert!(r.text().await.unwrap().contains("send smaller batches"));
    assert_eq!(conn.buffered().len, 0, "nothing refused is kept");

    // Small batches are taken until the buffer is full, then 503 + Retry-After.
    let mut seq = 1;
    let refused = loop {
        let r = post(batch_json(&hub, 50, seq), true).await.unwrap();
        if r.status() != 200 {
            break r;
        }
        seq += 50;
        assert!(seq < 100_000, "the buffer never filled");
    };
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "7");
    let held = conn.buffered();
    assert!(held.bytes <= 64 << 10 && held.len > 5, "{held:?}");
    conn.stop().await;
}

/// What the fake cloud answers for each batch (by hub), or for the whole request.
#[derive(Clone, Copy)]
enum Answer {
    Store,
    RetryLater(RefusalCode),
    Refuse(RefusalCode),
    /// The whole request, with no verdict (a proxy's error page, an old cloud).
    Status(u16),
    /// The whole request: 413 with the cloud's own `too_large` verdict.
    TooLarge,
}

type Script = Box<dyn Fn(&str, usize) -> Answer + Send + Sync>;
/// One forward as the fake cloud saw it: the hubs of its batches, the quarantine counts.
type Seen = (Vec<String>, std::collections::BTreeMap<String, u64>);

/// A cloud on 127.0.0.1 (plain HTTP) that answers `/v1/forward` as its script says, and
/// remembers what it was sent.
struct FakeCloud {
    script: Mutex<Script>,
    /// Per request: the hubs of its batches, and the quarantine counts it carried.
    seen: Mutex<Vec<Seen>>,
    url: String,
}

impl FakeCloud {
    async fn start(script: Script) -> Arc<FakeCloud> {
        use axum::extract::State;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/forward", listener.local_addr().unwrap());
        let fake = Arc::new(FakeCloud { script: Mutex::new(script), seen: Mutex::new(Vec::new()), url });
        let app = axum::Router::new()
            .route(
                "/v1/forward",
                axum::routing::post(|State(f): State<Arc<FakeCloud>>, body: axum::body::Bytes| async move {
                    use axum::response::IntoResponse;
                    let json = outpost_shared::wire::decompress(&body, true, 64 << 20).unwrap();
                    let env: ForwardEnvelope = serde_json::from_slice(&json).unwrap();
                    let hubs: Vec<String> = env.batches.iter().map(|b| b.sig.machine_id.clone()).collect();
                    let mut results = Vec::new();
                    for hub in &hubs {
                        let refused = |verdict, code| ForwardResult::Refused {
                            status: 422,
                            error: "scripted".into(),
                            verdict: Some(verdict),
                            code: Some(code),
                            accept: None,
                        };
                        results.push(match (f.script.lock().unwrap())(hub, hubs.len()) {
                            Answer::Store => ForwardResult::Stored(BatchAck { stored: 1, duplicates: 0 }),
                            Answer::RetryLater(c) => refused(Verdict::RetryLater, c),
                            Answer::Refuse(c) => refused(Verdict::Refused, c),
                            Answer::Status(s) => {
                                let status = axum::http::StatusCode::from_u16(s).unwrap();
                                return (status, axum::Json(ApiError::new("scripted"))).into_response();
                            }
                            Answer::TooLarge => {
                                let body = ApiError::verdict(
                                    "too large",
                                    Verdict::RetryLater,
                                    RefusalCode::TooLarge,
                                );
                                return (axum::http::StatusCode::PAYLOAD_TOO_LARGE, axum::Json(body))
                                    .into_response();
                            }
                        });
                    }
                    f.seen.lock().unwrap().push((hubs, env.quarantined));
                    axum::Json(ForwardAck { results }).into_response()
                }),
            )
            .with_state(fake.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        fake
    }

    fn answer(&self, script: Script) {
        *self.script.lock().unwrap() = script;
    }

    fn stored_hubs(&self) -> Vec<String> {
        self.seen.lock().unwrap().iter().flat_map(|(h, _)| h.clone()).collect()
    }
}

async fn round(sh: &Arc<Shared>, fake: &FakeCloud, cap: &mut usize) -> forward::Round {
    forward::round(sh, &reqwest::Client::new(), &fake.url, 20_000, cap).await
}

#[tokio::test]
async fn batches_the_cloud_cannot_take_now_are_kept_and_delivered_once_the_cause_is_gone() {
    // A storage error, a hub not enrolled (yet, or again after a restore), a batch over a lower
    // `ingest.max_readings`: each is "retry later", never a reason to drop what hubs were told
    // is safe here.
    for code in [RefusalCode::Storage, RefusalCode::NotEnrolled, RefusalCode::Revoked, RefusalCode::TooLarge]
    {
        let (sh, _dir) = mem_shared(1 << 30);
        let fake = FakeCloud::start(Box::new(move |_, _| Answer::RetryLater(code))).await;
        put(&sh, "a", 10, true, 10);
        put(&sh, "a", 10, false, 10);
        let mut cap = 1000;
        assert!(matches!(round(&sh, &fake, &mut cap).await, forward::Round::Held), "{code:?}");
        assert!(matches!(round(&sh, &fake, &mut cap).await, forward::Round::Held), "{code:?}");
        assert_eq!(sh.buffer.stats().len, 2, "{code:?}: kept");
        assert!(sh.quarantine.counts().is_empty(), "{code:?}: nothing put aside");
        // No verdict at all (a proxy's 500) keeps it too.
        fake.answer(Box::new(|_, _| Answer::Status(500)));
        assert!(matches!(round(&sh, &fake, &mut cap).await, forward::Round::Failed(_)));
        assert_eq!(sh.buffer.stats().len, 2, "{code:?}: kept on a 500");
        // The cause is gone.
        fake.answer(Box::new(|_, _| Answer::Store));
        assert!(matches!(round(&sh, &fake, &mut cap).await, forward::Round::Progress));
        assert_eq!(sh.buffer.stats().len, 0, "{code:?}: delivered");
        assert_eq!(fake.stored_hubs().len(), 2 * 3, "{code:?}: each batch sent in each answered round");
        assert_eq!(sh.per_hub.lock().unwrap()["a"], 0, "the fair share is given back");
    }
}

#[tokio::test]
async fn one_hubs_held_batches_do_not_block_the_others() {
    let (sh, _dir) = mem_shared(1 << 30);
    let fake = FakeCloud::start(Box::new(|hub, _| {
        if hub == "a" {
            Answer::RetryLater(RefusalCode::NotEnrolled)
        } else {
            Answer::Store
        }
    }))
    .await;
    // Hub a's batches are the oldest, and one batch goes per request: the worst case.
    put(&sh, "a", 10, false, 10);
    put(&sh, "a", 10, false, 10);
    for _ in 0..3 {
        put(&sh, "b", 10, false, 10);
    }
    for _ in 0..10 {
        let mut cap = 1;
        round(&sh, &fake, &mut cap).await;
    }
    let sent_b = fake.stored_hubs().iter().filter(|h| *h == "b").count();
    assert_eq!(sent_b, 3, "every batch of b got through behind a's");
    assert_eq!(sh.buffer.stats().len, 2, "a's batches are still held");
    assert_eq!(sh.per_hub.lock().unwrap()["b"], 0);
}

#[tokio::test]
async fn refused_for_good_goes_to_the_counted_quarantine_and_the_count_to_the_cloud() {
    let (sh, _dir) = mem_shared(1 << 30);
    let fake = FakeCloud::start(Box::new(|hub, _| {
        if hub == "a" {
            Answer::Refuse(RefusalCode::Clock)
        } else {
            Answer::Store
        }
    }))
    .await;
    put(&sh, "a", 10, false, 10);
    put(&sh, "b", 4, false, 10);
    let mut cap = 1000;
    assert!(matches!(round(&sh, &fake, &mut cap).await, forward::Round::Progress));
    assert_eq!(sh.buffer.stats().len, 0);
    assert_eq!(sh.quarantine.counts(), [("a".to_string(), 10)].into());
    // The next forward tells the cloud, once.
    put(&sh, "b", 4, false, 10);
    round(&sh, &fake, &mut cap).await;
    put(&sh, "b", 4, false, 10);
    round(&sh, &fake, &mut cap).await;
    let seen = fake.seen.lock().unwrap();
    assert!(seen[0].1.is_empty() || seen[0].1.get("a") == Some(&0));
    assert_eq!(seen[1].1.get("a"), Some(&10));
    assert!(seen[2].1.is_empty(), "reported once");
}

#[tokio::test]
async fn a_413_halves_the_request_and_a_batch_too_large_alone_is_put_aside() {
    let (sh, _dir) = mem_shared(1 << 30);
    let fake = FakeCloud::start(Box::new(|_, n| if n > 1 { Answer::TooLarge } else { Answer::Store })).await;
    for _ in 0..4 {
        put(&sh, "a", 10, false, 10);
    }
    let mut cap = 1000;
    for _ in 0..10 {
        round(&sh, &fake, &mut cap).await;
    }
    assert_eq!(sh.buffer.stats().len, 0, "all delivered, one at a time");
    assert_eq!(fake.stored_hubs().len(), 4);
    assert!(sh.quarantine.counts().is_empty());
    // A proxy in front of the cloud answers 413 without the cloud's verdict: nothing is split
    // or put aside, everything is kept for later.
    fake.answer(Box::new(|_, _| Answer::Status(413)));
    put(&sh, "a", 7, false, 10);
    put(&sh, "b", 3, false, 10);
    for _ in 0..5 {
        round(&sh, &fake, &mut cap).await;
    }
    assert_eq!(sh.buffer.stats().len, 2, "a verdict-less 413 keeps the batches");
    assert!(sh.quarantine.counts().is_empty());
    // The cloud itself takes no request at all now: the lone batch cannot be split (its hub
    // signed it whole), so it is put aside, counted, instead of wedging the queue.
    fake.answer(Box::new(|_, _| Answer::TooLarge));
    for _ in 0..10 {
        round(&sh, &fake, &mut cap).await;
    }
    assert_eq!(sh.buffer.stats().len, 0);
    assert_eq!(sh.quarantine.counts(), [("a".to_string(), 7), ("b".to_string(), 3)].into());
}

#[tokio::test]
async fn a_record_that_cannot_be_forwarded_is_put_aside_and_the_rest_goes_on() {
    let (sh, _dir) = mem_shared(1 << 30);
    let fake = FakeCloud::start(Box::new(|_, _| Answer::Store)).await;
    let bad = record::encode(&record::Record {
        readings: 5,
        fresh: false,
        machine_id: "a",
        timestamp: 0,
        signature: "c2ln",
        json: b"{\"x\":\"\xff\"}",
        packed: false,
    })
    .unwrap();
    sh.buffer.append(&[bad]).unwrap();
    sh.buffer.append(&[b"\x00".to_vec()]).unwrap();
    put(&sh, "b", 4, false, 10);
    let mut cap = 1000;
    assert!(matches!(round(&sh, &fake, &mut cap).await, forward::Round::Progress));
    assert_eq!(sh.buffer.stats().len, 0);
    assert_eq!(fake.stored_hubs(), vec!["b".to_string()]);
    assert_eq!(
        sh.quarantine.counts(),
        [("a".to_string(), 5), (quarantine::UNKNOWN_HUB.to_string(), 0)].into()
    );
}

/// A cloud on 127.0.0.1 (plain HTTP) answering `/v1/network-keys` with whatever document it is
/// given, counting the requests.
async fn fake_key_cloud(
    doc: Arc<Mutex<serde_json::Value>>,
    hits: Arc<std::sync::atomic::AtomicUsize>,
) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/v1/network-keys",
        axum::routing::post(move || {
            let (doc, hits) = (doc.clone(), hits.clone());
            async move {
                hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                // Slow enough that a burst of unknown signers finds the fetch in flight.
                tokio::time::sleep(Duration::from_millis(200)).await;
                axum::Json(doc.lock().unwrap().clone())
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

fn key_list(
    connector: &outpost_shared::keys::MachineId,
    listed: &[&KeyPair],
    issued_at: chrono::DateTime<chrono::Utc>,
) -> serde_json::Value {
    use outpost_shared::keys::{IngestLimits, NetworkKeys, NetworkMachine, Signed};
    let doc = NetworkKeys {
        connector: connector.clone(),
        network_id: "n".into(),
        issued_at,
        machines: listed
            .iter()
            .map(|k| NetworkMachine { machine_id: k.machine_id().clone(), public_key: k.public().to_pem() })
            .collect(),
        limits: IngestLimits { max_body: 1 << 20, max_decompressed: 8 << 20, max_readings: 1000 },
    };
    serde_json::to_value(Signed::sign(&cloud_key(), &doc).unwrap()).unwrap()
}

#[tokio::test]
async fn the_key_list_is_fetched_once_for_a_burst_of_unknown_signers_checked_and_kept_on_disk() {
    use hub_keys::{HubKeys, Lookup};
    let dir = tempfile::tempdir().unwrap();
    // The connector's own id: any id but the listed hub's.
    let me = cloud_key().machine_id().clone();
    let hub = hub_key();
    let now = chrono::Utc::now();
    let doc = Arc::new(Mutex::new(key_list(&me, &[&hub], now)));
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let base = fake_key_cloud(doc.clone(), hits.clone()).await;
    let keys = Arc::new(HubKeys::new(dir.path(), me.clone(), Duration::from_secs(3600)));
    keys.set_cloud_key(cloud_key().public().clone());
    let client = reqwest::Client::new();
    let signer = cloud_key();
    // Twenty batches from machines nobody listed, at once: one fetch, not twenty.
    let stranger = outpost_shared::keys::MachineId::parse("0123456789abcdef0123456789abcdef").unwrap();
    let burst: Vec<_> = (0..20)
        .map(|_| {
            let (keys, client, base, signer, id) =
                (keys.clone(), client.clone(), base.clone(), signer.clone(), stranger.clone());
            tokio::spawn(async move { keys.refresh_for_unknown(&client, &base, &signer, &id).await })
        })
        .collect();
    for b in burst {
        assert!(matches!(b.await.unwrap(), Lookup::Unknown));
    }
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1, "one fetch for the burst");
    assert!(matches!(keys.lookup(hub.machine_id()), Lookup::Known(_)));
    assert_eq!(keys.limits().unwrap().max_readings, 1000, "the cloud's limits come with the list");
    // Within refresh_min, more unknown signers fetch nothing.
    keys.refresh_for_unknown(&client, &base, &signer, &stranger).await;
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);

    // A list made for another connector, or older than the one held, is not taken.
    *doc.lock().unwrap() = key_list(hub.machine_id(), &[], now + chrono::Duration::seconds(5));
    assert!(matches!(keys.fetch(&client, &base, &signer).await, Err(hub_keys::KeysError::OtherConnector(_))));
    *doc.lock().unwrap() = key_list(&me, &[], now - chrono::Duration::seconds(5));
    assert!(matches!(keys.fetch(&client, &base, &signer).await, Err(hub_keys::KeysError::Older { .. })));
    // One not signed by the pinned cloud key neither.
    let mut forged = key_list(&me, &[], now + chrono::Duration::seconds(5));
    forged["signature"] =
        serde_json::json!(base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [1u8; 384]));
    *doc.lock().unwrap() = forged;
    assert!(keys.fetch(&client, &base, &signer).await.is_err());
    assert!(matches!(keys.lookup(hub.machine_id()), Lookup::Known(_)), "the held list stays");

    // A restart during an outage: the list on disk is checked and used.
    let again = HubKeys::new(dir.path(), me.clone(), Duration::from_secs(3600));
    assert!(matches!(again.lookup(hub.machine_id()), Lookup::NoList));
    again.set_cloud_key(cloud_key().public().clone());
    assert!(matches!(again.lookup(hub.machine_id()), Lookup::Known(_)));
    // A newer list without the hub (revoked) replaces it.
    *doc.lock().unwrap() = key_list(&me, &[], now + chrono::Duration::seconds(10));
    again.fetch(&client, &base, &signer).await.unwrap();
    assert!(matches!(again.lookup(hub.machine_id()), Lookup::Unknown));
}

#[test]
fn the_embedded_hub_takes_its_managed_rules_from_the_connectors_config() {
    let base = "[cloud]\nurl = \"https://cloud.example:443\"\n";
    let cfg: ConnectorConfig = outpost_shared::config::parse(
        &format!("{base}[managed]\nenabled = false\nprotected = [\"cpu\"]\n"),
        std::path::Path::new("connector.toml"),
    )
    .unwrap();
    assert!(!cfg.managed.enabled);
    assert!(cfg.managed.is_protected("cpu"));
    let defaults: ConnectorConfig =
        outpost_shared::config::parse(base, std::path::Path::new("connector.toml")).unwrap();
    assert!(defaults.managed.enabled && !defaults.managed.allow_commands, "as on a hub: managed, no plugins");
    let bad = outpost_shared::config::parse::<ConnectorConfig>(
        &format!("{base}[managed]\nprotected = [\"cpu; rm -rf /\"]\n"),
        std::path::Path::new("connector.toml"),
    )
    .unwrap_err();
    assert!(bad.problems().iter().any(|p| p.key == "managed.protected[0]"), "{bad}");
}

/// A connector taking in as many batches as it may answers the next "retry later" at once (the
/// hub keeps it) and stores nothing of it; with a place free again the same batch is taken, and
/// held packed, reading back as exactly the JSON the hub signed.
#[tokio::test]
async fn a_full_intake_answers_retry_later_and_a_taken_batch_is_kept_packed() {
    let dir = tempfile::tempdir().unwrap();
    let key = hub_key();
    // The connector of `shared` has the key of these tests (its key list must name it).
    key.save_new(&dir.path().join(outpost_sensorhub::trust::KEY_FILE)).unwrap();
    seed_enrolled(dir.path(), &[&key]);
    let sh = shared_with(
        Arc::new(MemoryBuffer::new(1 << 30, WhenFull::Reject)),
        1 << 30,
        dir.path(),
        crate::lan::IntakeGates::new(1, 1),
    );
    sh.hub_keys.set_cloud_key(cloud_key().public().clone());
    let hub = key.machine_id().to_string();
    let json = batch_json(&hub, 200, 1);
    let send = || {
        let sig = outpost_shared::keys::sign_request(&key, "POST", "/v1/batches", &json, chrono::Utc::now())
            .unwrap();
        let mut headers = axum::http::HeaderMap::new();
        for (name, value) in sig.to_pairs() {
            headers.insert(name, value.parse().unwrap());
        }
        headers.insert(axum::http::header::CONTENT_ENCODING, "gzip".parse().unwrap());
        let peer: std::net::SocketAddr = "127.0.0.1:40000".parse().unwrap();
        crate::lan::intake(
            axum::extract::State(sh.clone()),
            axum::extract::ConnectInfo(peer),
            headers,
            axum::body::Body::from(outpost_shared::wire::gzip(&json)),
        )
    };

    let held = sh.intake.admit().expect("the one place is free");
    let r = send().await;
    let (parts, body) = r.into_parts();
    let v: serde_json::Value =
        serde_json::from_slice(&axum::body::to_bytes(body, 1 << 20).await.unwrap()).unwrap();
    assert_eq!(parts.status, 503, "{v}");
    assert_eq!(
        parts.headers.get(axum::http::header::RETRY_AFTER).map(|h| h.to_str().unwrap()),
        Some("1"),
        "{v}"
    );
    assert_eq!((v["verdict"].as_str(), v["code"].as_str()), (Some("retry_later"), Some("busy")), "{v}");
    assert_eq!(sh.buffer.stats().len, 0, "nothing of a batch turned away is kept");

    drop(held);
    let r = send().await;
    assert_eq!(r.status(), 200);
    let stored = sh.buffer.oldest(10).unwrap();
    assert_eq!(stored.len(), 1);
    let rec = record::decode(&stored[0].1).unwrap();
    assert!(
        rec.packed && rec.json.len() * 3 < json.len(),
        "{} bytes held for {}",
        rec.json.len(),
        json.len()
    );
    assert_eq!(&rec.json().unwrap()[..], &json[..], "the JSON the hub signed, byte for byte");
    assert!(sh.intake.admit().is_some(), "the place is given back once the batch is answered");
}

/// A packed record (as the intake stores it) goes out inflated, byte for byte what the hub signed,
/// and a plain one written before packing goes out beside it unchanged.
#[tokio::test]
async fn packed_and_plain_records_are_forwarded_as_the_json_the_hubs_signed() {
    let (sh, _dir) = mem_shared(1 << 30);
    let json = format!("{{\"hub\":\"a\",\"pad\":\"{}\"}}", "y".repeat(5_000));
    let packed = record::pack(json.as_bytes());
    let rec = record::encode(&record::Record {
        readings: 3,
        fresh: false,
        machine_id: "a",
        timestamp: 0,
        signature: "c2ln",
        json: &packed,
        packed: true,
    })
    .unwrap();
    let first = sh.buffer.append(&[rec]).unwrap().start;
    let plain = put(&sh, "b", 3, false, 10);
    let (taken, env) = forward::collect(&sh, 3000, u64::MAX, 1000).await.unwrap();
    let env = env.expect("something to send");
    assert_eq!(taken.seqs, vec![first, plain]);
    assert_eq!(env.batches[0].body.get(), json, "inflated, exactly as signed");
    assert!(env.batches[1].body.get().contains("\"hub\":\"b\""));
}
