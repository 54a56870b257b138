//! Connections that scale. The hubs' command long-polls through a connector are carried to the
//! cloud together, in a bounded number of upstream requests and connections, not one per hub;
//! commands still reach exactly their hub at once, and a poll the connector cannot check goes
//! nowhere. A hub's uploads and its long-poll share one HTTP/2 connection.

mod common;

use common::*;
use outpost_shared::keys::{CommandEnvelope, KeyPair, PublicKey, Signed};
use serde_json::json;
use std::sync::mpsc;
use std::time::{Duration, Instant};

const HUBS: usize = 16;
/// Connections the connector may hold to the cloud whatever the number of hubs: a few upstream
/// polls (more only while hubs join), the forwarder's, and one for the network's key list.
const UPSTREAM_BOUND: usize = 6;

/// A signed `GET /v1/commands/poll` through the connector, as a hub sends it: the status and the
/// envelopes.
fn poll(
    client: &reqwest::blocking::Client,
    base: &str,
    key: &KeyPair,
    wait: u64,
) -> (u16, Vec<Signed<CommandEnvelope>>) {
    let path = format!("/v1/commands/poll?wait={wait}");
    let sig = outpost_shared::keys::sign_request(key, "GET", &path, b"", chrono::Utc::now()).unwrap();
    let mut req = client.get(format!("{base}{path}")).timeout(Duration::from_secs(wait + 15));
    for (name, value) in sig.to_pairs() {
        req = req.header(name, value);
    }
    let resp = req.send().expect("the connector answers");
    let status = resp.status().as_u16();
    (status, if status == 200 { resp.json().unwrap() } else { Vec::new() })
}

#[test]
fn sixteen_hubs_polling_through_a_connector_share_its_few_upstream_requests_and_get_their_commands() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = CloudProc::start(&dir.path().join("cloud"));
    let conn = ConnectorProc::start(&dir.path().join("conn"), &cloud, "");
    let lan = ca_client(&conn.dir.join("data/tls/ca.pem"));
    let hubs: Vec<TestMachine> = (0..HUBS).map(|_| TestMachine::enroll(&cloud, "sensorhub")).collect();
    let cloud_key = PublicKey::from_pem(cloud.api("/v1/cloud-key")["public_key"].as_str().unwrap()).unwrap();

    // Every hub holds a long-poll open through the connector, again and again, and reports what
    // it gets: (hub index, envelope, when).
    let (tx, rx) = mpsc::channel::<(usize, Signed<CommandEnvelope>, Instant)>();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut threads = Vec::new();
    for (i, hub) in hubs.iter().enumerate() {
        let (tx, stop, lan, base) = (tx.clone(), stop.clone(), lan.clone(), conn.url());
        let key = KeyPair::from_pkcs8_pem(&hub.key.to_pkcs8_pem()).unwrap();
        threads.push(std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (status, list) = poll(&lan, &base, &key, 5);
                assert_eq!(status, 200, "hub {i}'s poll through the connector");
                for env in list {
                    let _ = tx.send((i, env, Instant::now()));
                }
            }
        }));
    }
    std::thread::sleep(Duration::from_secs(3));
    let conn_pid = conn.proc.as_ref().unwrap().child.id();
    let upstream = connections_to(conn_pid, cloud.port);
    assert!(
        upstream <= UPSTREAM_BOUND,
        "{upstream} connections to the cloud for {HUBS} polling hubs; expected a few, not one per hub"
    );

    // A command for each hub reaches that hub, and only it, within seconds, signed by the cloud.
    let mut sent = std::collections::HashMap::new();
    for (i, hub) in hubs.iter().enumerate() {
        let (status, created) =
            cloud.api_post(&format!("/v1/machines/{}/commands", hub.id()), json!({"action": "ping"}));
        assert_eq!(status, 201, "{created}");
        sent.insert(created["command_id"].as_str().unwrap().to_string(), (i, Instant::now()));
    }
    let mut slowest = Duration::ZERO;
    while !sent.is_empty() {
        let (i, env, at) = rx.recv_timeout(Duration::from_secs(15)).expect("every hub gets its command");
        let doc = env.verify(&cloud_key).expect("the envelope is the cloud's, unaltered");
        assert_eq!(doc.target.to_string(), hubs[i].id(), "a command reaches only its own hub");
        if let Some((want, issued)) = sent.remove(&doc.id) {
            assert_eq!(want, i);
            slowest = slowest.max(at - issued);
        }
    }
    assert!(slowest < Duration::from_secs(5), "a command took {slowest:?} to reach its hub");
    assert!(connections_to(conn_pid, cloud.port) <= UPSTREAM_BOUND, "still a few upstream connections");

    // A poll the connector cannot check never reaches the cloud: signed by a key the network does
    // not list, or claiming a listed hub's id with another key.
    let stranger = KeyPair::generate().unwrap();
    assert_eq!(poll(&lan, &conn.url(), &stranger, 1).0, 401, "an unknown machine's poll is refused");
    let path = "/v1/commands/poll?wait=1";
    let forged = outpost_shared::keys::sign_request(&stranger, "GET", path, b"", chrono::Utc::now()).unwrap();
    let mut req = lan.get(format!("{}{path}", conn.url()));
    for (name, value) in forged.to_pairs() {
        let value = if name == outpost_shared::keys::HEADER_MACHINE { hubs[0].id() } else { value };
        req = req.header(name, value);
    }
    assert_eq!(req.send().unwrap().status().as_u16(), 401, "a poll in another hub's name is refused");

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn a_hub_uploads_and_long_polls_over_one_connection() {
    // HTTP/2: the uploads and the held command long-poll share one connection to the cloud,
    // instead of one connection each (HTTP/1.1 allows one request in flight per connection).
    let dir = tempfile::tempdir().unwrap();
    let cloud = CloudProc::start(&dir.path().join("cloud"));
    let hub_dir = dir.path().join("hub");
    let hub = start_hub(&hub_dir, &hub_config(&hub_dir, &cloud, ""));
    let id = machine_id(&hub_dir);
    wait_until(Duration::from_secs(30), "the hub's readings arrive", || {
        machine(&cloud, &id).is_some_and(|m| m["uplink"] == "direct")
    });
    // Let a few uploads happen while the long-poll is held.
    std::thread::sleep(Duration::from_secs(3));
    let (status, created) = cloud.api_post(&format!("/v1/machines/{id}/commands"), json!({"action": "ping"}));
    assert_eq!(status, 201, "{created}");
    let cmd = created["command_id"].as_str().unwrap().to_string();
    wait_until(Duration::from_secs(20), "the ping is answered", || {
        cloud.api(&format!("/v1/commands/{cmd}"))["status"] == "done"
    });
    assert_eq!(connections_to(hub.child.id(), cloud.port), 1, "one connection carries uploads and polls");
}
