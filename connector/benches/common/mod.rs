//! What the connector benches share: a cloud and an enrolled connector in this process, on
//! 127.0.0.1 with real HTTPS, no SSDP (nothing may leave this machine), no embedded hub.
#![allow(dead_code)]

#[path = "../../../cloud/benches/common/mod.rs"]
mod cloud_bench;

pub use cloud_bench::*;
use std::time::{Duration, Instant};

pub async fn start_cloud(dir: &std::path::Path) -> outpost_cloud::Cloud {
    outpost_cloud::start(outpost_cloud::CloudConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.join("cloud"),
        ..Default::default()
    })
    .await
    .unwrap()
}

/// Starts a connector and waits until it is enrolled (it forwards nothing before).
pub async fn start_connector(
    dir: &std::path::Path,
    cloud: &outpost_cloud::Cloud,
) -> outpost_connector::Connector {
    let mut cfg = outpost_connector::ConnectorConfig {
        data_dir: dir.join("connector"),
        listen: "127.0.0.1:0".parse().unwrap(),
        monitor_self: false,
        ..Default::default()
    };
    cfg.cloud.url = Some(cloud.url());
    cfg.cloud.ca_file = Some(cloud.ca_file.clone());
    cfg.cloud.enroll_token = Some(role_token(cloud, outpost_shared::model::Role::Connector).await);
    cfg.cloud.retry_min = Duration::from_millis(100);
    cfg.cloud.retry_max = Duration::from_secs(1);
    cfg.ssdp.advertise = false;
    cfg.ssdp.search_hubs = false;
    let enrolled = cfg.data_dir.join(outpost_sensorhub::trust::ENROLLMENT_FILE);
    let conn = outpost_connector::start(cfg).await.unwrap();
    let t = Instant::now();
    while !enrolled.exists() {
        assert!(t.elapsed() < Duration::from_secs(60), "the connector did not enroll");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    conn
}
