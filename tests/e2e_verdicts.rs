//! End-to-end: what a connector and the cloud refuse, and that refusing it stops nobody. The real
//! binary as processes (cloud, connector, a hub), real TLS on loopback. A connector takes only
//! batches it verified itself (signature by a key the cloud lists for its network, UTF-8, sane
//! headers, timestamps inside the window); the cloud refuses readings from 2100 or 2000 with the
//! `clock` verdict and the window it accepts; and a real hub's data keeps flowing meanwhile.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

/// One fast sensor, so "keeps advancing" shows within seconds.
const FAST: &str = "[[sensor]]\nkind = \"memory\"\ninterval = \"200ms\"\n";

fn parse_ts(v: &Value) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap().to_utc()
}

/// A batch of `machine` with one reading of `sensor` per timestamp, seqs from `first_seq`.
fn batch(machine: &str, sensor: &str, first_seq: u64, stamps: &[chrono::DateTime<chrono::Utc>]) -> Vec<u8> {
    let readings: Vec<Value> = stamps
        .iter()
        .enumerate()
        .map(|(i, ts)| {
            json!({"machine_id": machine, "seq": first_seq + i as u64, "sensor": sensor, "ts": ts,
                "value": 40.0 + i as f64, "state": "ok"})
        })
        .collect();
    serde_json::to_vec(&json!({"machine_id": machine, "hostname": "test", "uplink": "direct", "buffered": 0,
        "readings": readings}))
    .unwrap()
}

fn year(y: i32) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(&format!("{y}-01-01T00:00:00Z")).unwrap().to_utc()
}

/// POSTs `json` to `{base}/v1/batches`: signed by `signer` unless `None`, with the signature
/// header replaced by `signature` when given. Returns the status and the JSON answer.
fn post_batch(
    client: &reqwest::blocking::Client,
    base: &str,
    signer: Option<&outpost_shared::keys::KeyPair>,
    json: Vec<u8>,
    signature: Option<String>,
) -> (u16, Value) {
    let mut req = client.post(format!("{base}/v1/batches")).header("content-type", "application/json");
    if let Some(key) = signer {
        let mut sig =
            outpost_shared::keys::sign_request(key, "POST", "/v1/batches", &json, chrono::Utc::now())
                .unwrap();
        if let Some(s) = signature {
            sig.signature_b64 = s;
        }
        for (name, value) in sig.to_pairs() {
            req = req.header(name, value);
        }
    }
    let r = req.body(json).send().unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

/// The cloud's latest value of one sensor of one machine: (ts, value).
fn latest(cloud: &CloudProc, machine: &str, sensor: &str) -> Option<(chrono::DateTime<chrono::Utc>, Value)> {
    let (status, v) = cloud.request("GET", &format!("/v1/machines/{machine}/sensors"), None);
    if status != 200 {
        return None;
    }
    v.as_array()?.iter().find(|s| s["sensor"] == sensor).map(|s| (parse_ts(&s["ts"]), s["value"].clone()))
}

/// The newest reading time the cloud holds of any sensor of `machine`.
fn newest(cloud: &CloudProc, machine: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let (status, v) = cloud.request("GET", &format!("/v1/machines/{machine}/sensors"), None);
    if status != 200 {
        return None;
    }
    v.as_array()?.iter().map(|s| parse_ts(&s["ts"])).max()
}

#[test]
fn a_connector_takes_only_batches_it_verified_and_a_real_hub_keeps_flowing() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = CloudProc::start(&dir.path().join("cloud"));
    // Short refresh gap, so a machine enrolled just now is found within the test's patience.
    let conn = ConnectorProc::start(&dir.path().join("conn"), &cloud, "cloud.keys_refresh_min = \"1s\"\n");
    let hub_dir = dir.path().join("hub");
    let cfg =
        hub_config_with(&hub_dir, &cloud, FAST, &format!("{}allow_direct = false\n", conn.hub_uplink()));
    let _hub = start_hub(&hub_dir, &cfg);
    let hub = machine_id(&hub_dir);
    wait_until(Duration::from_secs(60), "the hub's readings arrive through the connector", || {
        machine(&cloud, &hub).is_some_and(|m| m["uplink"] == conn.path())
    });

    // A machine of the test's own, enrolled in the same network, to sign exactly what it needs.
    let own = TestMachine::enroll(&cloud, "sensorhub");
    let own_id = own.id();
    let to_conn = ca_client(&conn.dir.join("data/tls/ca.pem"));
    let base = conn.url();

    // Unsigned.
    let (status, v) = post_batch(&to_conn, &base, None, batch(&hub, "evil", 1, &[chrono::Utc::now()]), None);
    assert_eq!(status, 401, "unsigned: {v}");
    // Valid headers naming the real hub, but a signature that is not its.
    let bogus = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [9u8; 384]);
    let forged = batch(&hub, "evil", 1_000_000, &[chrono::Utc::now()]);
    let sig =
        outpost_shared::keys::sign_request(&own.key, "POST", "/v1/batches", &forged, chrono::Utc::now())
            .unwrap();
    let mut req = to_conn.post(format!("{base}/v1/batches"));
    for (name, value) in sig.to_pairs() {
        let value = match name {
            outpost_shared::keys::HEADER_MACHINE => hub.clone(),
            outpost_shared::keys::HEADER_SIGNATURE => bogus.clone(),
            _ => value,
        };
        req = req.header(name, value);
    }
    let r = req.body(forged).send().unwrap();
    assert_eq!(r.status().as_u16(), 401, "wrongly signed with an enrolled hub's id");
    // Correctly signed by an enrolled machine, with invalid UTF-8 in a field nobody reads. The
    // connector may first need to fetch the key list again for this new machine (at most once a
    // second here): until then it says 401 "not enrolled", retry later.
    let mut bad_utf8 = batch(&own_id, "cpu", 1, &[chrono::Utc::now()]);
    bad_utf8.splice(1..1, b"\"note\":\"\xff\xfe\",".iter().copied());
    let mut answer = (0, Value::Null);
    wait_until(Duration::from_secs(30), "the connector knows the new machine", || {
        answer = post_batch(&to_conn, &base, Some(&own.key), bad_utf8.clone(), None);
        answer.0 != 401
    });
    assert_eq!(answer.0, 400, "invalid UTF-8: {}", answer.1);
    assert_eq!(answer.1["code"], "malformed");
    // A signature header far over any real signature (4 KiB is the cap; a 3072-bit signature is
    // 512 base64 characters). Much larger header lists HTTP/2 itself turns away before any handler.
    let (status, _) = post_batch(
        &to_conn,
        &base,
        Some(&own.key),
        batch(&own_id, "cpu", 1, &[chrono::Utc::now()]),
        Some("A".repeat(5_000)),
    );
    assert_eq!(status, 431, "oversized signature header");
    // Clocks: 2100 and 2000 are refused for good, with the window the connector accepts.
    for y in [2100, 2000] {
        let (status, v) =
            post_batch(&to_conn, &base, Some(&own.key), batch(&own_id, "cpu", 1, &[year(y)]), None);
        assert_eq!(status, 422, "{y} at the connector: {v}");
        assert_eq!((v["verdict"].as_str(), v["code"].as_str()), (Some("refused"), Some("clock")), "{v}");
        assert!(parse_ts(&v["accept"]["until"]) < year(2100) && parse_ts(&v["accept"]["from"]) > year(2000));
    }
    // And a good batch of the same machine goes through the same connector.
    let (status, v) =
        post_batch(&to_conn, &base, Some(&own.key), batch(&own_id, "cpu", 1, &[chrono::Utc::now()]), None);
    assert_eq!(status, 200, "{v}");
    wait_until(Duration::from_secs(30), "the good batch reaches the cloud", || {
        latest(&cloud, &own_id, "cpu").is_some()
    });
    assert!(latest(&cloud, &hub, "evil").is_none(), "nothing of the refused batches reached the cloud");

    // The real hub's newest reading keeps advancing after all of that.
    let before = newest(&cloud, &hub).unwrap();
    wait_until(Duration::from_secs(30), "the real hub's newest reading advances", || {
        newest(&cloud, &hub).is_some_and(|t| t > before + chrono::Duration::seconds(2))
    });
    let log = conn.log_text();
    assert!(!log.contains("quarantine"), "nothing the connector acknowledged was put aside:\n{log}");
}

#[test]
fn readings_from_2100_or_2000_are_refused_by_the_cloud_and_the_latest_value_keeps_moving() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = CloudProc::start(&dir.path().join("cloud"));
    let own = TestMachine::enroll(&cloud, "sensorhub");
    let id = own.id();
    let to_cloud = cloud.client();
    let now = chrono::Utc::now();
    let (status, v) = post_batch(&to_cloud, &cloud.url(), Some(&own.key), batch(&id, "cpu", 1, &[now]), None);
    assert_eq!(status, 200, "{v}");
    for (seq, y) in [(2, 2100), (3, 2000)] {
        // One good reading beside the bad one: the batch is refused whole, and the window tells
        // the sender which readings to put aside and which to send again.
        let (status, v) = post_batch(
            &to_cloud,
            &cloud.url(),
            Some(&own.key),
            batch(&id, "cpu", seq, &[now, year(y)]),
            None,
        );
        assert_eq!(status, 422, "{y}: {v}");
        assert_eq!((v["verdict"].as_str(), v["code"].as_str()), (Some("refused"), Some("clock")), "{v}");
        let (from, until) = (parse_ts(&v["accept"]["from"]), parse_ts(&v["accept"]["until"]));
        assert!(from < now && now < until && until < now + chrono::Duration::minutes(6), "{v}");
        assert!(from > now - chrono::Duration::days(8), "{v}: the window starts at the raw retention");
    }
    assert_eq!(cloud.seqs(&id, "cpu"), vec![1], "nothing of the refused batches was stored");
    // The latest value moves with every newer reading.
    for seq in 10..13u64 {
        let ts = chrono::Utc::now();
        let (status, v) =
            post_batch(&to_cloud, &cloud.url(), Some(&own.key), batch(&id, "cpu", seq, &[ts]), None);
        assert_eq!(status, 200, "{v}");
        let (at, _) = latest(&cloud, &id, "cpu").unwrap();
        assert_eq!(at.timestamp_millis(), ts.timestamp_millis(), "latest follows reading {seq}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // An unsigned batch and a forged one carry verdicts too: forged is refused for good.
    let (status, v) = post_batch(&to_cloud, &cloud.url(), None, batch(&id, "cpu", 20, &[now]), None);
    assert_eq!(
        (status, v["verdict"].as_str(), v["code"].as_str()),
        (401, Some("refused"), Some("forged")),
        "{v}"
    );
}

#[test]
fn the_cloud_answers_each_forwarded_batch_with_a_verdict_and_counts_what_connectors_put_aside() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = CloudProc::start(&dir.path().join("cloud"));
    let hub = TestMachine::enroll(&cloud, "sensorhub");
    let conn = TestMachine::enroll(&cloud, "connector");
    let stranger = outpost_shared::keys::KeyPair::generate().unwrap();
    let forwarded = |key: &outpost_shared::keys::KeyPair, body: &[u8]| {
        let sig =
            outpost_shared::keys::sign_request(key, "POST", "/v1/batches", body, chrono::Utc::now()).unwrap();
        json!({"sig": {"machine_id": sig.machine_id.to_string(), "timestamp": sig.timestamp,
            "signature": sig.signature_b64}, "body": serde_json::from_slice::<Value>(body).unwrap()})
    };
    let good = batch(&hub.id(), "cpu", 1, &[chrono::Utc::now()]);
    let future = batch(&hub.id(), "cpu", 2, &[year(2100)]);
    let unknown = batch(&stranger.machine_id().to_string(), "cpu", 1, &[chrono::Utc::now()]);
    let mut altered = forwarded(&hub.key, &good);
    altered["body"]["readings"][0]["value"] = json!(1e9);
    let env = serde_json::to_vec(&json!({"connector": conn.id(), "batches": [
        forwarded(&hub.key, &good), forwarded(&hub.key, &future), forwarded(&stranger, &unknown), altered],
        "quarantined": {hub.id(): 7, stranger.machine_id().to_string(): 100}}))
    .unwrap();
    let (status, ack) = conn.post(&cloud, "/v1/forward", env.clone(), &env, false);
    assert_eq!(status, 200, "{ack}");
    let r = &ack["results"];
    assert_eq!(r[0], json!({"stored": 1, "duplicates": 0}), "{ack}");
    assert_eq!((r[1]["verdict"].as_str(), r[1]["code"].as_str()), (Some("refused"), Some("clock")), "{ack}");
    assert!(r[1]["accept"]["until"].is_string(), "{ack}");
    // Not enrolled (yet): the connector keeps it and retries.
    assert_eq!(
        (r[2]["verdict"].as_str(), r[2]["code"].as_str()),
        (Some("retry_later"), Some("not_enrolled")),
        "{ack}"
    );
    assert_eq!((r[3]["verdict"].as_str(), r[3]["code"].as_str()), (Some("refused"), Some("forged")), "{ack}");
    // The connector's count for its hub is shown with the hub; one for a machine outside its
    // network is not taken.
    let m = machine(&cloud, &hub.id()).unwrap();
    assert_eq!(m["quarantined"], 7, "{m}");
    assert!(machine(&cloud, &stranger.machine_id().to_string()).is_none());
}

/// The seqs the cloud holds of one sensor; none while it does not know the machine.
fn seqs(cloud: &CloudProc, machine: &str, sensor: &str) -> Vec<u64> {
    let (status, v) = cloud.request("GET", &format!("/v1/machines/{machine}/readings?sensor={sensor}"), None);
    if status != 200 {
        return Vec::new();
    }
    v.as_array().unwrap().iter().map(|r| r["seq"].as_u64().unwrap()).collect()
}

/// The one place this file makes enrollment tokens (besides the common helpers it calls).
fn enrollment_token(cloud: &CloudProc) -> String {
    cloud.enroll_token()
}

#[test]
fn a_connector_keeps_what_it_took_from_a_hub_revoked_by_mistake_and_delivers_it_once_enrolled_again() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = CloudProc::start(&dir.path().join("cloud"));
    let conn = ConnectorProc::start(&dir.path().join("conn"), &cloud, "cloud.keys_refresh_min = \"1s\"\n");
    let own = TestMachine::enroll(&cloud, "sensorhub");
    let id = own.id();
    let to_conn = ca_client(&conn.dir.join("data/tls/ca.pem"));
    let mut answer = (0, Value::Null);
    wait_until(Duration::from_secs(30), "the connector takes the new machine's batch", || {
        answer = post_batch(
            &to_conn,
            &conn.url(),
            Some(&own.key),
            batch(&id, "cpu", 1, &[chrono::Utc::now()]),
            None,
        );
        answer.0 != 401
    });
    assert_eq!(answer.0, 200, "{}", answer.1);
    wait_until(Duration::from_secs(30), "the first batch reaches the cloud", || {
        seqs(&cloud, &id, "cpu") == vec![1]
    });

    // Revoked by mistake; the connector's key list (refreshed every minute) still names it, so it
    // takes the next batch into custody, and the cloud answers "revoked: retry later".
    let (status, v) = cloud.request("DELETE", &format!("/v1/machines/{id}"), None);
    assert_eq!(status, 200, "{v}");
    let (status, v) =
        post_batch(&to_conn, &conn.url(), Some(&own.key), batch(&id, "cpu", 2, &[chrono::Utc::now()]), None);
    assert_eq!(status, 200, "{v}");
    wait_until(Duration::from_secs(30), "the connector hears the cloud's verdict", || {
        conn.log_text().contains("did not take a hub batch now")
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(seqs(&cloud, &id, "cpu"), vec![1], "not stored while revoked");
    assert!(!conn.log_text().contains("quarantine"), "kept, not put aside");

    // The operator takes it back with a new token for the same key: the held batch arrives.
    let body = json!({"token": enrollment_token(&cloud), "public_key": own.key.public().to_pem(),
        "role": "sensorhub", "hostname": "test", "lan_cert": Value::Null});
    let r = cloud.client().post(format!("{}/v1/enroll", cloud.url())).json(&body).send().unwrap();
    assert!(r.status().is_success(), "enroll again: {}", r.status());
    wait_until(Duration::from_secs(30), "the held batch reaches the cloud", || {
        seqs(&cloud, &id, "cpu") == vec![1, 2]
    });
}
