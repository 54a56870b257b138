//! What only the PostgreSQL engine has: migrations, partitions, and a server that goes away.
//! The behaviour both engines share is tested once for both in `store/tests.rs`.

use super::throwaway::{create_database, Throwaway};
use super::*;
use crate::store::Store;
use outpost_shared::model::{Reading, Role, Sample};
use std::time::Duration;

fn batch(machine: &str, seqs: std::ops::Range<u64>, ts: DateTime<Utc>) -> Batch {
    Batch {
        machine_id: machine.into(),
        hostname: "h".into(),
        role: Role::Sensorhub,
        uplink: "direct".into(),
        buffered: 0,
        dropped: 0,
        version: "t".into(),
        quarantined: 0,
        clock_problem: None,
        features: Vec::new(),
        readings: seqs
            .map(|seq| Reading {
                machine_id: machine.into(),
                seq,
                sample: Sample::new("cpu", seq as f64, State::Ok).at(ts),
            })
            .collect(),
    }
}

fn options() -> PostgresOptions {
    PostgresOptions { pool_size: 4, timeout: Duration::from_secs(2), ca_file: None }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_clouds_starting_at_once_migrate_once_and_a_newer_schema_is_refused() {
    let url = crate::store::tests::fresh_database().await;
    let options = options();
    let opens: Vec<_> = (0..4).map(|_| PgStore::open(&url, &options)).collect();
    for r in futures_util::future::join_all(opens).await {
        r.expect("each start succeeds while others migrate");
    }
    let (client, conn) = url.parse().unwrap().connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let applied: i64 = client.query_one("SELECT count(*) FROM outpost_schema", &[]).await.unwrap().get(0);
    assert_eq!(applied, schema::MIGRATIONS.len() as i64, "each migration recorded once");
    // A migration of a lower block that arrives after a higher one was applied still runs.
    client
        .batch_execute("DROP TABLE commands, audit; DELETE FROM outpost_schema WHERE version = 3")
        .await
        .unwrap();
    PgStore::open(&url, &options).await.expect("migration 3 applied after 4");
    let applied: i64 = client.query_one("SELECT count(*) FROM outpost_schema", &[]).await.unwrap().get(0);
    assert_eq!(applied, schema::MIGRATIONS.len() as i64);
    client.execute("SELECT count(*) FROM audit", &[]).await.expect("its table is back");
    // A database a newer outpost migrated: this one must not touch it.
    client
        .execute("INSERT INTO outpost_schema (version, description) VALUES (999, 'future')", &[])
        .await
        .unwrap();
    let refused = PgStore::open(&url, &options).await.err().expect("refused");
    assert!(refused.to_string().contains("version 999"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_drops_whole_day_partitions_after_folding_them() {
    let url = crate::store::tests::fresh_database().await;
    let store = PgStore::open(&url, &options()).await.unwrap();
    let now = Utc::now();
    let old = now - chrono::Duration::days(10);
    store.ingest(batch("m1", 1..101, old), now).await.unwrap();
    let client = store.client().await.unwrap();
    let day = old.date_naive();
    let names = |p: Vec<(String, NaiveDate)>| p.into_iter().map(|(n, _)| n).collect::<Vec<_>>();
    assert!(names(schema::partitions(&client).await.unwrap()).contains(&schema::partition_name(day)));
    let out =
        store.compact(now, Duration::from_secs(7 * 86400), Duration::from_secs(400 * 86400)).await.unwrap();
    assert_eq!(out.folded, 100);
    let left = names(schema::partitions(&client).await.unwrap());
    assert!(!left.contains(&schema::partition_name(day)), "the old day's partition is gone: {left:?}");
    let today = schema::partition_name(now.date_naive());
    assert!(left.contains(&today), "today's partition is there ahead of need: {left:?}");
    let h = store.hourly("m1", "cpu", None, 10).await.unwrap();
    assert_eq!(h.iter().map(|p| p.count).sum::<u64>(), 100);
    // The partition is made again when a reading of that day shows up after all.
    store.ingest(batch("m1", 200..201, old), now).await.unwrap();
    assert_eq!(store.raw_count().await.unwrap(), 1);
}

/// A sender that keeps a batch until it is acknowledged, as hubs and connectors do: it resends
/// on "retry later" and gives up on nothing else.
async fn send_until_acknowledged(store: &Store, b: Batch, retries: &mut u32) -> (u64, u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let attempt = async {
            let out = store.ingest(b.clone(), Utc::now()).await?;
            store.commit().await?;
            Ok::<_, CloudError>(out)
        };
        match attempt.await {
            Ok(out) => return (out.stored, out.duplicates),
            Err(CloudError::Unavailable(_)) => {
                *retries += 1;
                assert!(tokio::time::Instant::now() < deadline, "the database never came back");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(other) => panic!("a restart must read as retry later, got: {other}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restarted_mid_ingest_means_retry_later_and_loses_nothing() {
    let mut server =
        tokio::task::spawn_blocking(|| Throwaway::start().unwrap_or_else(|e| panic!("{e}"))).await.unwrap();
    let url = PostgresUrl::new(create_database(&server, "restart").await.unwrap());
    let store: Store = std::sync::Arc::new(PgStore::open(&url, &options()).await.unwrap());
    let now = Utc::now();
    let (machines, batches, per) = (4u64, 30u64, 50u64);
    let sender = |m: u64| {
        let store = store.clone();
        tokio::spawn(async move {
            let (mut stored, mut retries) = (0, 0);
            for b in 0..batches {
                let seqs = b * per + 1..(b + 1) * per + 1;
                let (s, _dup) =
                    send_until_acknowledged(&store, batch(&format!("m{m}"), seqs, now), &mut retries).await;
                stored += s;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (stored, retries)
        })
    };
    let senders: Vec<_> = (0..machines).map(sender).collect();
    // Let ingest run, then crash the server (no checkpoint) and keep it down a while.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut server = tokio::task::spawn_blocking(move || {
        server.crash();
        std::thread::sleep(Duration::from_secs(2));
        server.resume().unwrap();
        server
    })
    .await
    .unwrap();
    let mut retries = 0;
    let mut stored = 0;
    for s in senders {
        let (n, r) = s.await.unwrap();
        stored += n;
        retries += r;
    }
    assert!(retries > 0, "the outage was seen as retry later");
    // Every reading once: what was acknowledged before the crash survived it, and a batch
    // whose acknowledgement was lost in the crash counted as duplicates when resent.
    let total = machines * batches * per;
    assert_eq!(store.raw_count().await.unwrap(), total);
    assert!(stored <= total);
    for m in 0..machines {
        let got = store.readings(&format!("m{m}"), "cpu", None, 100_000).await.unwrap();
        let seqs: Vec<u64> = got.iter().map(|p| p.seq).collect();
        assert_eq!(
            seqs,
            (1..=batches * per).collect::<Vec<_>>(),
            "machine m{m}: each seq once, none missing"
        );
    }
    // Everything again: all duplicates.
    let mut r = 0;
    let (s, d) = send_until_acknowledged(&store, batch("m0", 1..batches * per + 1, now), &mut r).await;
    assert_eq!((s, d), (0, batches * per));
    tokio::task::spawn_blocking(move || server.stop()).await.unwrap();
}

/// Node A read a command to hand it out again while node B recorded its result: A's write,
/// made from the older read, must not bring the finished command back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_command_is_not_brought_back_by_a_stale_hand_out() {
    use crate::store::commands::{CommandChange, CommandRecord, CommandStore};
    let url = crate::store::tests::fresh_database().await;
    let pg = PgStore::open(&url, &options()).await.unwrap();
    let store: std::sync::Arc<dyn CommandStore> = std::sync::Arc::new(commands::PgCommands::new(pg.pool()));
    let cmds = crate::commands::Commands::new(store.clone());
    let cloud = outpost_shared::keys::KeyPair::generate().unwrap();
    let machine = "0123456789abcdef0123456789abcdef";
    let rec = cmds
        .create(&cloud, machine, "ping", serde_json::Value::Null, Duration::from_secs(60), "t")
        .await
        .unwrap();
    let stale = CommandRecord { status: "delivered".into(), delivered_at: Some(Utc::now()), ..rec.clone() };
    let done = CommandRecord { status: "done".into(), finished_at: Some(Utc::now()), ..rec.clone() };
    store.save(&[CommandChange { rec: done, waiting: false, audit: None }]).await.unwrap();
    store.save(&[CommandChange { rec: stale, waiting: true, audit: None }]).await.unwrap();
    assert_eq!(store.get(&rec.id).await.unwrap().unwrap().status, "done");
    assert!(store.waiting(&[machine.to_string()]).await.unwrap().is_empty());
}
