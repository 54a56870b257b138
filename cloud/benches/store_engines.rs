//! The storage engines alone, side by side: concurrent writers store batches of readings and
//! wait for each to be durable (sled: the group-commit flush; PostgreSQL: COMMIT), as ingest does
//! before acknowledging. PostgreSQL is a throwaway server on a unix socket in a temp dir, started
//! here (`fsync=off` there, so the figure is the engine's work, not this machine's disk).
//! Run: `cargo bench -p outpost-cloud --bench store_engines`

use chrono::Utc;
use outpost_cloud::store::{sled::SledStore, Store};
use outpost_shared::model::{Batch, Reading, Role, Sample, State};
use std::sync::Arc;
use std::time::Instant;

const WRITERS: u64 = 8;
const BATCHES_PER_WRITER: u64 = 25;
const BATCH: u64 = 5_000;

fn batch(machine: &str, first: u64) -> Batch {
    let now = Utc::now();
    Batch {
        machine_id: machine.into(),
        hostname: "bench".into(),
        role: Role::Sensorhub,
        uplink: "direct".into(),
        buffered: 0,
        dropped: 0,
        version: "bench".into(),
        quarantined: 0,
        clock_problem: None,
        features: Vec::new(),
        readings: (first..first + BATCH)
            .map(|seq| Reading {
                machine_id: machine.into(),
                seq,
                sample: Sample::new(format!("s{}", seq % 50), seq as f64, State::Ok).at(now),
            })
            .collect(),
    }
}

async fn run(name: &str, store: Store) {
    let t = Instant::now();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for b in 0..BATCHES_PER_WRITER {
                    let out = store.ingest(batch(&format!("m{w}"), b * BATCH + 1), Utc::now()).await.unwrap();
                    store.commit().await.unwrap();
                    assert_eq!(out.stored, BATCH);
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    let total = WRITERS * BATCHES_PER_WRITER * BATCH;
    assert_eq!(store.raw_count().await.unwrap(), total);
    println!(
        "store {name}: {:.0} readings/s ({total} readings, {WRITERS} writers, batches of {BATCH}, {secs:.2} s, durable before each acknowledgement)",
        total as f64 / secs
    );
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    run("sled", Arc::new(SledStore::open(dir.path()).unwrap())).await;
    #[cfg(unix)]
    postgres_side().await;
    #[cfg(not(unix))]
    println!("store postgres: not measured here (the throwaway server runs on unix only)");
}

#[cfg(unix)]
async fn postgres_side() {
    use outpost_cloud::store::postgres;
    let server = tokio::task::spawn_blocking(|| {
        postgres::throwaway::Throwaway::start().unwrap_or_else(|e| panic!("{e}"))
    })
    .await
    .unwrap();
    let url =
        postgres::PostgresUrl::new(postgres::throwaway::create_database(&server, "bench").await.unwrap());
    let pg = postgres::PgStore::open(&url, &postgres::PostgresOptions::default()).await.unwrap();
    run("postgres", Arc::new(pg)).await;
    drop(server);
}
