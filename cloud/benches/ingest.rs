//! Cloud ingest throughput over real HTTPS on loopback: concurrent senders post gzip batches of
//! 5,000 readings each, every batch stored and flushed before its acknowledgement.
//! Run: `cargo bench -p outpost-cloud --bench ingest`

use outpost_shared::model::{Batch, Reading, Role, Sample, State};
use std::time::{Duration, Instant};

const BATCH: usize = 5_000;
const SENDERS: usize = 8;
const BATCHES_PER_SENDER: usize = 25;

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = outpost_cloud::CloudConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    };
    let cloud = outpost_cloud::start(cfg).await.unwrap();
    let url = format!("{}/v1/batches", cloud.url());
    let client = outpost_shared::tls::https_client(Some(&cloud.ca_file), Duration::from_secs(60)).unwrap();
    // Pre-encode and pre-sign every body so the figure is the cloud's, not the sender's.
    let mut bodies = Vec::new();
    for _ in 0..SENDERS {
        let key = outpost_shared::keys::KeyPair::generate().unwrap();
        let token = cloud.trust.new_token("bench", Duration::from_secs(600), chrono::Utc::now()).unwrap();
        let req = outpost_cloud::trust::EnrollRequest {
            token: Some(token.encode()),
            sealed_token: None,
            public_key: key.public().to_pem(),
            role: Role::Sensorhub,
            hostname: "bench".into(),
            lan_cert: None,
        };
        cloud.trust.enroll(&req, chrono::Utc::now()).unwrap();
        let machine = key.machine_id().to_string();
        let mut mine = Vec::new();
        for b in 0..BATCHES_PER_SENDER {
            let readings = (0..BATCH)
                .map(|i| Reading {
                    machine_id: machine.clone(),
                    seq: (b * BATCH + i + 1) as u64,
                    sample: Sample::new(format!("sensor.{}", i % 50), i as f64 * 0.5, State::Ok).unit("%"),
                })
                .collect();
            let batch = Batch {
                machine_id: machine.clone(),
                hostname: machine.clone(),
                role: Role::Sensorhub,
                uplink: "direct".into(),
                buffered: 0,
                dropped: 0,
                version: "bench".into(),
                readings,
            };
            let json = serde_json::to_vec(&batch).unwrap();
            let sig =
                outpost_shared::keys::sign_request(&key, "POST", "/v1/batches", &json, chrono::Utc::now())
                    .unwrap();
            mine.push((outpost_shared::wire::gzip(&json), sig));
        }
        bodies.push(mine);
    }
    let t = Instant::now();
    let mut tasks = Vec::new();
    for mine in bodies {
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            for (body, sig) in mine {
                let mut req = client.post(&url).header("content-encoding", "gzip");
                for (name, value) in sig.to_pairs() {
                    req = req.header(name, value);
                }
                let r = req.body(body).send().await.unwrap();
                assert!(r.status().is_success(), "{}", r.status());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    let total = SENDERS * BATCHES_PER_SENDER * BATCH;
    println!(
        "cloud ingest: {:.0} readings/s ({total} readings, {SENDERS} senders, batches of {BATCH}, {:.2} s, HTTPS + gzip + RSA-PSS check + sled flush per batch)",
        total as f64 / secs,
        secs
    );
    cloud.stop().await.unwrap();
}
