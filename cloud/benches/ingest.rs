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
    // Pre-encode every body so the figure is the cloud's, not the sender's.
    let mut bodies = Vec::new();
    for s in 0..SENDERS {
        let machine = format!("bench-machine-{s}");
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
            mine.push(outpost_shared::wire::encode_gzip_json(&batch).unwrap());
        }
        bodies.push(mine);
    }
    let t = Instant::now();
    let mut tasks = Vec::new();
    for mine in bodies {
        let (client, url, token) = (client.clone(), url.clone(), cloud.ingest_token.clone());
        tasks.push(tokio::spawn(async move {
            for body in mine {
                let r = client
                    .post(&url)
                    .bearer_auth(&token)
                    .header("content-encoding", "gzip")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
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
        "cloud ingest: {:.0} readings/s ({total} readings, {SENDERS} senders, batches of {BATCH}, {:.2} s, HTTPS + gzip + sled flush per batch)",
        total as f64 / secs,
        secs
    );
    cloud.stop().await.unwrap();
}
