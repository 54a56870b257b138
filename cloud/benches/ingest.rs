//! Cloud ingest throughput over real HTTPS on loopback: concurrent senders post gzip batches of
//! 5,000 readings each, every batch stored and flushed before its acknowledgement.
//! Run: `cargo bench -p outpost-cloud --bench ingest`

mod common;

use common::BATCH;
use std::time::{Duration, Instant};

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
    let bodies = common::hub_batches(&cloud, SENDERS, BATCHES_PER_SENDER, "direct").await;
    let t = Instant::now();
    common::post_all(&client, &url, bodies).await;
    let secs = t.elapsed().as_secs_f64();
    let total = SENDERS * BATCHES_PER_SENDER * BATCH;
    println!(
        "cloud ingest: {:.0} readings/s ({total} readings, {SENDERS} senders, batches of {BATCH}, {:.2} s, HTTPS + gzip + RSA-PSS check + sled flush per batch)",
        total as f64 / secs,
        secs
    );
    cloud.stop().await.unwrap();
}
