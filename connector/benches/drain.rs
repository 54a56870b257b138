//! Draining a backlog of 1,000,000 readings after an outage, hub → connector → cloud over real
//! HTTPS on loopback, while the hub keeps sampling. The hub's durable buffer is filled first (as an
//! outage would leave it) and its key made (as `outpost install` does), then cloud, connector and
//! hub start; the hub enrolls and sends. Prints how long until the whole backlog is durable in the
//! cloud, and how old the newest live reading in the cloud gets meanwhile (sampled every 100 ms;
//! the sampling interval itself is part of that age).
//! Run: `cargo bench -p outpost-connector --bench drain` (`DRAIN_TRACE=1` for the timeline).

mod common;

use outpost_shared::buffer::{SledBuffer, Storage, WhenFull};
use outpost_shared::model::{Sample, SensorLatest, State};
use std::time::{Duration, Instant};

const BACKLOG: usize = 1_000_000;
const BACKLOG_SENSORS: usize = 20;
/// The hub's live sensor samples this often during the drain.
const LIVE_EVERY: &str = "200ms";

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let hub_dir = dir.path().join("hub");
    let mut hub_cfg = outpost_sensorhub::HubConfig { data_dir: hub_dir.clone(), ..Default::default() };
    fill_backlog(&hub_dir, hub_cfg.buffer.quota);
    outpost_shared::keys::KeyPair::generate()
        .unwrap()
        .save_new(&hub_dir.join(outpost_sensorhub::trust::KEY_FILE))
        .unwrap();

    let cloud = common::start_cloud(dir.path()).await;
    let conn = common::start_connector(dir.path(), &cloud).await;
    let api = outpost_shared::tls::https_client(Some(&cloud.ca_file), Duration::from_secs(30)).unwrap();

    hub_cfg.hostname = Some("bench-hub".into());
    hub_cfg.sensors =
        vec![serde_json::from_value(serde_json::json!({"kind": "memory", "interval": LIVE_EVERY})).unwrap()];
    hub_cfg.uplink.connector = Some(conn.loopback_url());
    hub_cfg.uplink.cloud = Some(cloud.url());
    hub_cfg.uplink.ca_file = Some(cloud.ca_file.clone());
    hub_cfg.uplink.enroll_token = Some(common::token(&cloud).await);
    hub_cfg.uplink.discover = false;
    hub_cfg.uplink.advertise = false;
    hub_cfg.uplink.allow_direct = false;
    let stop = tokio_util::sync::CancellationToken::new();
    let t = Instant::now();
    let hub = outpost_sensorhub::start(hub_cfg, stop.clone()).await.unwrap();
    let id = hub.machine_id.clone();

    let last_sensor = format!("backlog.{}", (BACKLOG - 1) % BACKLOG_SENSORS);
    // DRAIN_TRACE=1 prints every sample: how old the newest live reading is, what each hop holds.
    let trace = std::env::var_os("DRAIN_TRACE").is_some();
    let mut first_live: Option<Duration> = None;
    let mut worst_live_age = Duration::ZERO;
    let drained = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let url = format!("{}/v1/machines/{id}/sensors", cloud.url());
        let Ok(r) = api.get(&url).bearer_auth(&cloud.admin_token).send().await else { continue };
        let Ok(latest) = r.json::<Vec<SensorLatest>>().await else { continue };
        let now = chrono::Utc::now();
        if let Some(newest_live) = latest.iter().filter(|s| s.sensor.starts_with("mem.")).map(|s| s.ts).max()
        {
            first_live.get_or_insert(t.elapsed());
            let age = (now - newest_live).to_std().unwrap_or_default();
            worst_live_age = worst_live_age.max(age);
            if trace {
                let (conn_held, hub_held) = (conn.buffered().len, hub.status.borrow().buffered);
                eprintln!(
                    "{:>6.2} s: live age {age:.2?}, connector holds {conn_held} batches, hub {hub_held} readings",
                    t.elapsed().as_secs_f64()
                );
            }
        }
        // The backlog drains oldest first: once its last reading is in the cloud and the connector
        // holds nothing more, all of it is durable there.
        let last_in =
            latest.iter().any(|s| s.sensor == last_sensor && s.value.as_f64() == Some((BACKLOG - 1) as f64));
        if last_in && conn.buffered().len == 0 {
            break t.elapsed();
        }
        assert!(t.elapsed() < Duration::from_secs(600), "the backlog did not drain in 10 minutes");
    };
    println!(
        "drain of {BACKLOG} readings hub -> connector -> cloud: {:.2} s ({:.0} readings/s); \
         first live reading in the cloud after {:.2} s; newest live reading at most {:.2} s old during the drain \
         (sampled every {LIVE_EVERY})",
        drained.as_secs_f64(),
        BACKLOG as f64 / drained.as_secs_f64(),
        first_live.unwrap_or_default().as_secs_f64(),
        worst_live_age.as_secs_f64()
    );

    // Not timed: every backlog reading is there, once.
    let mut stored = 0;
    for k in 0..BACKLOG_SENSORS {
        let url = format!("{}/v1/machines/{id}/readings?sensor=backlog.{k}&limit=100000", cloud.url());
        let rows: Vec<serde_json::Value> =
            api.get(&url).bearer_auth(&cloud.admin_token).send().await.unwrap().json().await.unwrap();
        stored += rows.len();
    }
    assert_eq!(stored, BACKLOG, "every backlog reading is stored once");
    stop.cancel();
    hub.join().await;
    conn.stop().await;
    cloud.stop().await.unwrap();
}

/// What an outage leaves: the hub's buffer holding a backlog of old readings.
fn fill_backlog(hub_dir: &std::path::Path, quota: u64) {
    let t = Instant::now();
    let (buffer, _) = SledBuffer::open(&hub_dir.join("buffer"), quota, WhenFull::DropOldest).unwrap();
    let start = chrono::Utc::now() - chrono::Duration::hours(2);
    for group in 0..BACKLOG / 10_000 {
        let records: Vec<Vec<u8>> = (group * 10_000..(group + 1) * 10_000)
            .map(|i| {
                let s = Sample::new(format!("backlog.{}", i % BACKLOG_SENSORS), i as f64, State::Ok)
                    .at(start + chrono::Duration::milliseconds(i as i64));
                serde_json::to_vec(&s).unwrap()
            })
            .collect();
        buffer.append(&records).unwrap();
    }
    assert_eq!(buffer.stats().len, BACKLOG as u64);
    eprintln!("hub buffer filled with {BACKLOG} readings in {:.1} s", t.elapsed().as_secs_f64());
}
