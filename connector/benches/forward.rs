//! Readings forwarded hub → connector → cloud over real HTTPS on loopback: concurrent enrolled
//! "hubs" post pre-encoded, pre-signed gzip batches of 5,000 readings to the connector's LAN API
//! (each acknowledged only once durable in the connector's buffer), and the figure counts until
//! the connector's buffer is empty again, i.e. every reading is durable in the cloud, each batch's
//! hub signature checked there.
//! Run: `cargo bench -p outpost-connector --bench forward`

mod common;

use common::BATCH;
use std::time::{Duration, Instant};

const HUBS: usize = 8;
const BATCHES_PER_HUB: usize = 25;

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = common::start_cloud(dir.path()).await;
    let conn = common::start_connector(dir.path(), &cloud).await;
    let url = format!("{}/v1/batches", conn.loopback_url());
    let client = outpost_shared::tls::https_client(Some(&conn.ca_file), Duration::from_secs(60)).unwrap();
    let via = format!("connector:{}", conn.machine_id);
    // Pre-encode and pre-sign every body so the figure is the connector's and the cloud's, not
    // the senders'.
    let bodies = common::hub_batches(&cloud, HUBS, BATCHES_PER_HUB, &via).await;
    let t = Instant::now();
    common::post_all(&client, &url, bodies).await;
    let accepted = t.elapsed().as_secs_f64();
    while conn.buffered().len > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(t.elapsed() < Duration::from_secs(300), "not forwarded in 5 minutes: {:?}", conn.buffered());
    }
    let secs = t.elapsed().as_secs_f64();
    let total = HUBS * BATCHES_PER_HUB * BATCH;
    println!(
        "hub -> connector -> cloud: {:.0} readings/s ({total} readings from {HUBS} hubs in batches of {BATCH}; \
         all taken by the connector after {accepted:.2} s, all durable in the cloud after {secs:.2} s)",
        total as f64 / secs
    );
    conn.stop().await;
    cloud.stop().await.unwrap();
}
