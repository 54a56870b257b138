use super::*;
use outpost_shared::buffer::MemoryBuffer;
use outpost_shared::keys::KeyPair;
use outpost_shared::model::{Batch, Reading, Role, Sample, State};
use std::sync::OnceLock;

/// One key for every test here: RSA key generation is slow.
fn hub_key() -> Arc<KeyPair> {
    static KEY: OnceLock<Arc<KeyPair>> = OnceLock::new();
    KEY.get_or_init(|| Arc::new(KeyPair::generate().expect("key generation"))).clone()
}

fn shared(buffer: Arc<dyn Storage>, quota: u64) -> Arc<Shared> {
    Arc::new(Shared {
        machine_id: "conn".into(),
        key: hub_key(),
        cloud: None,
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
    })
}

/// Appends one hub batch record the way the intake does, and counts it in the hub's share.
fn put(sh: &Shared, hub: &str, readings: u32, fresh: bool, pad: usize) -> u64 {
    let json = format!("{{\"hub\":\"{hub}\",\"pad\":\"{}\"}}", "x".repeat(pad));
    let rec = record::encode(&record::Record {
        readings,
        fresh,
        machine_id: hub,
        timestamp: 0,
        signature: "c2ln",
        json: json.as_bytes(),
    });
    *sh.per_hub.lock().unwrap().entry(hub.into()).or_default() += rec.len() as u64;
    sh.buffer.append(&[rec]).unwrap().start
}

fn mem_shared(quota: u64) -> Arc<Shared> {
    shared(Arc::new(MemoryBuffer::new(quota, WhenFull::Reject)), quota)
}

#[tokio::test]
async fn forwarding_puts_the_newest_fresh_batches_ahead_of_the_backlog_and_respects_the_size() {
    let sh = mem_shared(1 << 30);
    let backlog: Vec<u64> = (0..10).map(|_| put(&sh, "b", 1000, false, 10)).collect();
    let live_a = put(&sh, "a", 10, true, 10);
    put(&sh, "b", 1000, false, 10);
    let live_c = put(&sh, "c", 10, true, 10);
    let (taken, env) = forward::collect(&sh, 3000).await.unwrap();
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
    let sh = mem_shared(1 << 30);
    let big = put(&sh, "a", 40_000, false, 10);
    put(&sh, "a", 10, false, 10);
    let (taken, _) = forward::collect(&sh, 20_000).await.unwrap();
    assert_eq!(taken.seqs, vec![big], "one oversized batch at a time, never none");
}

#[test]
fn a_hub_over_its_fair_share_of_a_filling_buffer_waits_while_the_others_do_not() {
    let sh = mem_shared(10_000);
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
        readings,
    };
    serde_json::to_vec(&b).unwrap()
}

/// The LAN API of a real connector (TLS on loopback) whose cloud never answers.
#[tokio::test]
async fn the_lan_api_wants_signed_batches_refuses_oversized_ones_and_pushes_back_when_full() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ConnectorConfig {
        data_dir: dir.path().to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        monitor_self: false,
        ..Default::default()
    };
    // Nothing listens there: the connector never enrolls, and everything taken stays buffered.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    cfg.cloud.url = Some(format!("https://{dead}"));
    cfg.buffer.quota = 64 << 10;
    cfg.buffer.retry_after = Duration::from_secs(7);
    cfg.ssdp.advertise = false;
    cfg.ssdp.search_hubs = false;
    let conn = start(cfg).await.unwrap();
    let client = outpost_shared::tls::https_client(Some(&conn.ca_file), Duration::from_secs(10)).unwrap();
    let url = format!("{}/v1/batches", conn.loopback_url());
    let key = hub_key();
    let hub = key.machine_id().to_string();
    let post = |json: Vec<u8>, signed: bool| {
        let mut req = client.post(&url).header("content-encoding", "gzip");
        if signed {
            let sig =
                outpost_shared::keys::sign_request(&key, "POST", "/v1/batches", &json, chrono::Utc::now())
                    .unwrap();
            for (name, value) in sig.to_pairs() {
                req = req.header(name, value);
            }
        }
        req.body(outpost_shared::wire::gzip(&json)).send()
    };

    assert_eq!(post(batch_json(&hub, 10, 1), false).await.unwrap().status(), 401, "unsigned");
    let other = "0123456789abcdef0123456789abcdef";
    assert_eq!(post(batch_json(other, 10, 1), true).await.unwrap().status(), 401, "signed by another");
    // More than half the quota in one batch could never fit beside other hubs' data: 413, so the
    // hub splits it instead of retrying it forever.
    let r = post(batch_json(&hub, 2_000, 1), true).await.unwrap();
    assert_eq!(r.status(), 413);
    assert!(r.text().await.unwrap().contains("send smaller batches"));
    assert_eq!(conn.buffered().len, 0);

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
