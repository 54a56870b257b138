//! End-to-end: the real binary as separate processes (cloud, sensorhub, `outpost up`) over real
//! TLS on loopback. What a user would see: readings arrive, outages lose nothing, crashes store
//! nothing twice, bad input is refused clearly.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;

/// A hub sampling fast: many readings per second, so outages and crashes hit mid-stream.
const FAST: &str = "[[sensor]]\nkind = \"cpu\"\ninterval = \"100ms\"\n\n[[sensor]]\nkind = \"memory\"\ninterval = \"100ms\"\n";

#[test]
fn outpost_up_shows_this_machine_with_cpu_memory_and_disk_within_15_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let up = Proc::start(
        &[
            "up",
            "--data-dir",
            dir.path().join("d").to_str().unwrap(),
            "--port",
            &port.to_string(),
            "--connector-port",
            &free_port().to_string(),
        ],
        &dir.path().join("up.log"),
    );
    let started = std::time::Instant::now();
    let cloud = CloudProc { proc: None, dir: dir.path().join("d/cloud"), port, config: Default::default() };
    // The data dir layout of `up` is the cloud's data dir directly.
    let ca = dir.path().join("d/cloud/tls/ca.pem");
    let token_file = dir.path().join("d/cloud/admin-token");
    wait_until(
        Duration::from_secs(15),
        "the API lists this machine with cpu, memory and disk readings",
        || {
            if !ca.exists() || !token_file.exists() {
                return false;
            }
            let client = ca_client(&ca);
            let token = std::fs::read_to_string(&token_file).unwrap();
            let Ok(list) = get_json(&client, &format!("{}/v1/machines", cloud.url()), token.trim()) else {
                return false;
            };
            let Some(m) = list.as_array().and_then(|a| a.first()) else { return false };
            let id = m["id"].as_str().unwrap();
            let Ok(sensors) =
                get_json(&client, &format!("{}/v1/machines/{id}/sensors", cloud.url()), token.trim())
            else {
                return false;
            };
            let keys: Vec<String> = sensors
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["sensor"].as_str().unwrap().to_string())
                .collect();
            ["cpu.", "mem.", "disk."].iter().all(|p| keys.iter().any(|k| k.starts_with(p)))
        },
    );
    // The connector's own readings can be listed before `up` has printed its banner (that comes
    // after the sensorhub made its key): wait for the banner within the same budget.
    let banner = format!("https://127.0.0.1:{port}/#setup=");
    wait_until(Duration::from_secs(15), "the dashboard URL and first-owner link are printed", || {
        up.log_text().contains(&banner)
    });
    assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
    assert!(up.stop().success(), "outpost up stops cleanly on SIGTERM");
}

fn get_json(client: &reqwest::blocking::Client, url: &str, token: &str) -> Result<Value, String> {
    let r = client.get(url).bearer_auth(token).send().map_err(|e| e.to_string())?;
    if !r.status().is_success() {
        return Err(r.status().to_string());
    }
    r.json().map_err(|e| e.to_string())
}

#[test]
fn every_reading_taken_while_the_cloud_was_down_arrives_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut cloud = CloudProc::start(&dir.path().join("cloud"));
    let hub_dir = dir.path().join("hub");
    let hub = start_hub(&hub_dir, &hub_config(&hub_dir, &cloud, FAST));
    let id = machine_id(&hub_dir);
    wait_until(Duration::from_secs(20), "first readings arrive", || !machines(&cloud).is_empty());
    cloud.stop();
    std::thread::sleep(Duration::from_secs(4));
    cloud.restart();
    wait_until(Duration::from_secs(30), "the hub's backlog has drained", || {
        let m = machines(&cloud);
        m[0]["buffered"] == 0 && m[0]["uplink"] == "direct" && all_seqs(&cloud, &id).len() > 60
    });
    // Straight to the cloud the hub authenticates in a machine session (one X25519 login, then a MAC
    // per request); its tickets outlive the cloud's restart, the exactly-once check below holds.
    assert!(hub.log_text().contains("machine session with the cloud opened"), "{}", hub.log_text());
    assert!(hub.log_text().contains("login=\"x25519\""), "an X25519 login: {}", hub.log_text());
    assert!(hub.stop().success());
    let stats = buffer_stats(&hub_dir);
    assert_eq!(stats["len"], 0, "a clean stop hands everything over: {stats}");
    assert_exactly_once(&cloud, &id, stats["next_seq"].as_u64().unwrap());
}

#[test]
fn kill_9_while_sampling_fast_with_the_cloud_down_loses_nothing_and_stores_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let mut cloud = CloudProc::start(&dir.path().join("cloud"));
    let hub_dir = dir.path().join("hub");
    let config = hub_config(&hub_dir, &cloud, FAST);
    let hub = start_hub(&hub_dir, &config);
    wait_until(Duration::from_secs(20), "first readings arrive", || !machines(&cloud).is_empty());
    let id = machine_id(&hub_dir);
    cloud.stop();
    std::thread::sleep(Duration::from_secs(2));
    hub.kill9();
    // What the buffer had accepted when the hub died.
    let before = buffer_stats(&hub_dir);
    assert!(before["len"].as_u64().unwrap() > 10, "the outage left a backlog: {before}");

    cloud.restart();
    let hub = start_hub(&hub_dir, &config);
    wait_until(Duration::from_secs(30), "the backlog has drained", || {
        let m = machines(&cloud);
        m[0]["buffered"] == 0 && all_seqs(&cloud, &id).len() as u64 >= before["next_seq"].as_u64().unwrap()
    });
    hub.kill9();
    let after = buffer_stats(&hub_dir);
    let stored: BTreeSet<u64> = all_seqs(&cloud, &id).into_iter().collect();
    // Everything the first buffer held arrived; and whatever the second run took is either in
    // the cloud or still in the buffer, never both lost.
    for seq in 1..before["next_seq"].as_u64().unwrap() {
        assert!(stored.contains(&seq), "seq {seq} was accepted by the buffer before kill -9 and is lost");
    }
    let all = all_seqs(&cloud, &id);
    assert_eq!(all.len(), stored.len(), "some reading is stored twice");
    assert!(after["next_seq"].as_u64() >= before["next_seq"].as_u64(), "seq never goes back");
}

#[test]
fn bad_config_exits_64_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.toml");
    std::fs::write(&path, "data_dir = \"x\"\n\n[uplink]\nbatch_max = 10\nclod = \"https://x\"\n").unwrap();
    for args in [vec!["sensorhub", "--config"], vec!["config", "check"]] {
        let out = std::process::Command::new(BIN).args(&args).arg(&path).output().unwrap();
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("{}:5: key `uplink.clod`", path.display())), "{args:?}: {err}");
    }
    // Validation problems are all reported together.
    std::fs::write(&path, "[uplink]\nbatch_max = 0\nretry_min = \"0s\"\n").unwrap();
    let out = std::process::Command::new(BIN).args(["config", "check"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(":2: key `uplink.batch_max`") && err.contains("uplink.retry_max"), "{err}");
    // The embedded default is valid.
    let out = std::process::Command::new(BIN).args(["config", "default"]).output().unwrap();
    std::fs::write(&path, &out.stdout).unwrap();
    let out = std::process::Command::new(BIN).args(["config", "check"]).arg(&path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_cloud_whose_database_cannot_be_reached_says_so_and_never_shows_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cloud.toml");
    let data = dir.path().join("data");
    std::fs::write(
        &path,
        format!(
            "data_dir = {:?}\nlisten = \"127.0.0.1:0\"\n[storage]\npostgres = \"postgresql://outpost:s3cret@127.0.0.1:1/outpost\"\n",
            data
        ),
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["config", "check", "--role", "cloud"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "a valid URL passes the check: {}", String::from_utf8_lossy(&out.stderr));
    let out = std::process::Command::new(BIN).args(["cloud", "--config"]).arg(&path).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach") && err.contains("[storage]"), "{err}");
    assert!(!err.contains("s3cret"), "the password leaked: {err}");
    assert!(!data.exists(), "stopped before anything was created");
    // A URL that is no URL is a config error (64), named by key, password not echoed.
    std::fs::write(&path, "[storage]\npostgres = \"postgresql://outpost:s3cret@db/x?nonsense=1\"\n").unwrap();
    let out = std::process::Command::new(BIN)
        .args(["config", "check", "--role", "cloud"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("storage.postgres") && !err.contains("s3cret"), "{err}");
}

#[test]
fn oversized_or_malformed_ingest_is_refused_and_nothing_is_stored() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let cloud = CloudProc::start(&dir.path().join("cloud"));
    let m = TestMachine::enroll(&cloud, "sensorhub");
    let id = m.id();
    let post = |body: Vec<u8>, gzip: bool| {
        let signed = if gzip { Vec::new() } else { body.clone() };
        m.post(&cloud, "/v1/batches", body, &signed, gzip)
    };
    // Stamped now: readings older than the cloud's raw retention are refused for their clock.
    let now = chrono::Utc::now();
    let reading = |machine: &str, seq: u64| serde_json::json!({"machine_id": machine, "seq": seq, "sensor": "cpu.total", "ts": now, "value": 1.0, "state": "ok"});
    let batch = |readings: Vec<Value>| {
        serde_json::to_vec(&serde_json::json!({"machine_id": id, "hostname": "h", "uplink": "direct", "buffered": 0, "readings": readings})).unwrap()
    };
    let (s, b) = post(b"{not json".to_vec(), false);
    assert_eq!(s, 400);
    assert!(b["error"].as_str().unwrap().contains("not a valid batch"), "{b}");
    assert_eq!(post(b"garbage".to_vec(), true).0, 400, "bad gzip");
    // A reading claiming to be from another machine spoils the whole batch.
    assert_eq!(
        post(batch(vec![reading(&id, 1), reading("0123456789abcdef0123456789abcdef", 2)]), false).0,
        400
    );
    // Too many readings.
    assert_eq!(post(batch((1..=50_001).map(|i| reading(&id, i)).collect()), false).0, 413);
    // Larger than the body limit on the wire.
    assert_eq!(post(vec![b' '; 9 << 20], false).0, 413);
    // A gzip bomb: small on the wire, over the decompression cap.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    for _ in 0..80 {
        enc.write_all(&vec![b' '; 1 << 20]).unwrap();
    }
    let bomb = enc.finish().unwrap();
    assert!(bomb.len() < 1 << 20);
    assert_eq!(post(bomb, true).0, 413);
    // Unsigned: 401, and the reason says so.
    let r = cloud
        .client()
        .post(format!("{}/v1/batches", cloud.url()))
        .body(batch(vec![reading(&id, 1)]))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert!(r.text().unwrap().contains("not signed"));
    assert!(machines(&cloud).is_empty(), "nothing of a refused batch is stored");
    // And the API needs the admin token.
    let r = cloud.client().get(format!("{}/v1/machines", cloud.url())).send().unwrap();
    assert_eq!(r.status().as_u16(), 401);
    // A good one is stored, once, even when sent twice.
    assert_eq!(
        post(batch(vec![reading(&id, 1)]), false),
        (200, serde_json::json!({"stored": 1, "duplicates": 0}))
    );
    assert_eq!(
        post(batch(vec![reading(&id, 1)]), false),
        (200, serde_json::json!({"stored": 0, "duplicates": 1}))
    );
    assert_eq!(cloud.seqs(&id, "cpu.total"), vec![1]);
}

#[test]
fn a_full_buffer_drops_the_oldest_and_the_drop_count_reaches_the_cloud() {
    let dir = tempfile::tempdir().unwrap();
    let mut cloud = CloudProc::start(&dir.path().join("cloud"));
    let hub_dir = dir.path().join("hub");
    let config = hub_config(&hub_dir, &cloud, &format!("{FAST}\n[buffer]\nquota = \"16KiB\"\n"));
    // The hub starts while the cloud is away: it cannot even enroll yet, and buffers.
    cloud.stop();
    let hub = start_hub(&hub_dir, &config);
    // Wait until the quota has forced drops.
    wait_until(Duration::from_secs(60), "the hub log reports dropped readings", || {
        std::fs::read_to_string(hub_dir.join("hub.log"))
            .unwrap_or_default()
            .contains("dropped oldest readings")
    });
    cloud.restart();
    wait_until(Duration::from_secs(30), "the drop count reaches the cloud", || {
        machines(&cloud).first().is_some_and(|m| m["dropped"].as_u64().unwrap_or(0) > 0)
    });
    let id = machine_id(&hub_dir);
    let seqs = all_seqs(&cloud, &id);
    assert!(seqs[0] > 1, "the oldest readings were the ones dropped, not the newest");
    drop(hub);
}
