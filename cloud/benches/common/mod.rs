//! Enrolled hub keys and signed hub batches for the ingest benches: the cloud's, and the
//! connector's (whose `benches/common` includes this file).
#![allow(dead_code)]

use outpost_shared::keys::KeyPair;
use outpost_shared::model::{Batch, Reading, Role, Sample, State};
use std::time::Duration;

/// Readings per batch, as a hub sends them at most by default.
pub const BATCH: usize = 5_000;

/// The signature headers a hub sends with a batch.
pub type Headers = [(&'static str, String); 3];

/// Batch number `b` of `key`'s machine (seqs `b * BATCH + 1` onwards), gzip-encoded, with the
/// headers that sign it: pre-made, so a bench measures the receiver and not the sender.
pub fn signed_batch(key: &KeyPair, b: usize, uplink: &str) -> (Vec<u8>, Headers) {
    let machine = key.machine_id().to_string();
    let readings = (0..BATCH)
        .map(|i| Reading {
            machine_id: machine.clone(),
            seq: (b * BATCH + i + 1) as u64,
            sample: Sample::new(format!("sensor.{}", i % 50), i as f64 * 0.5, State::Ok).unit("%"),
        })
        .collect();
    let batch = Batch {
        machine_id: machine.clone(),
        hostname: machine,
        role: Role::Sensorhub,
        uplink: uplink.to_string(),
        buffered: 0,
        dropped: 0,
        version: "bench".into(),
        quarantined: 0,
        clock_problem: None,
        features: Vec::new(),
        readings,
    };
    let json = serde_json::to_vec(&batch).unwrap();
    let sig =
        outpost_shared::keys::sign_request(key, "POST", "/v1/batches", &json, chrono::Utc::now()).unwrap();
    (outpost_shared::wire::gzip(&json), sig.to_pairs())
}

/// A one-time enrollment token for a hub, all in one network.
pub async fn token(cloud: &outpost_cloud::Cloud) -> String {
    role_token(cloud, Role::Sensorhub).await
}

/// A one-time enrollment token for `role`, all in one network.
pub async fn role_token(cloud: &outpost_cloud::Cloud, role: Role) -> String {
    let (t, _) = cloud
        .trust
        .new_token("bench", role, Duration::from_secs(3600), "bench", "bench", chrono::Utc::now())
        .await
        .unwrap();
    t.encode()
}

/// A machine key enrolled with the cloud as a hub, as `outpost install` would leave it.
pub async fn enrolled_hub_key(cloud: &outpost_cloud::Cloud) -> KeyPair {
    let key = KeyPair::generate().unwrap();
    let req = outpost_cloud::trust::EnrollRequest {
        token: Some(token(cloud).await),
        sealed_token: None,
        public_key: key.public().to_pem(),
        role: Role::Sensorhub,
        hostname: "bench".into(),
        lan_cert: None,
    };
    cloud.trust.enroll(&req, chrono::Utc::now()).await.unwrap();
    key
}

/// Batches `0..per_hub` of `hubs` newly enrolled hubs, one list a hub.
pub async fn hub_batches(
    cloud: &outpost_cloud::Cloud,
    hubs: usize,
    per_hub: usize,
    uplink: &str,
) -> Vec<Vec<(Vec<u8>, Headers)>> {
    let mut out = Vec::with_capacity(hubs);
    for _ in 0..hubs {
        let key = enrolled_hub_key(cloud).await;
        out.push((0..per_hub).map(|b| signed_batch(&key, b, uplink)).collect());
    }
    out
}

/// Posts each hub's batches in order to `url`, all hubs at once, and returns when every batch
/// was taken. A busy receiver (503) is asked again after 100 ms with the same batch, as a hub
/// would; any other refusal fails the bench.
pub async fn post_all(client: &reqwest::Client, url: &str, hubs: Vec<Vec<(Vec<u8>, Headers)>>) {
    let mut tasks = Vec::new();
    for mine in hubs {
        let (client, url) = (client.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            for (body, headers) in mine {
                loop {
                    let mut req = client.post(&url).header("content-encoding", "gzip");
                    for (name, value) in &headers {
                        req = req.header(*name, value);
                    }
                    let r = req.body(body.clone()).send().await.unwrap();
                    if r.status().is_success() {
                        break;
                    }
                    assert_eq!(r.status().as_u16(), 503, "{}", r.text().await.unwrap_or_default());
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}
