//! One suite, every engine: each case is an `async fn(Store)`, and [`every_engine!`] runs it
//! once on sled (in a temp dir) and once on PostgreSQL (a fresh database on a throwaway server,
//! shared by the cases of this process). A missing PostgreSQL fails the run; it never skips.

use super::*;
use chrono::{Duration as CDuration, TimeZone};
use outpost_shared::model::{Reading, Role, Sample};
use std::sync::atomic::{AtomicU32, Ordering};

/// What keeps an engine's storage alive during one case.
enum Keep {
    Dir(#[allow(dead_code)] tempfile::TempDir),
    Nothing,
}

fn sled_store() -> (Store, Keep) {
    let dir = tempfile::tempdir().unwrap();
    let store = sled::SledStore::open(dir.path()).unwrap();
    (Arc::new(store), Keep::Dir(dir))
}

/// One server per test process; each case gets its own database on it.
pub(crate) fn server() -> &'static postgres::throwaway::Throwaway {
    static SERVER: std::sync::OnceLock<postgres::throwaway::Throwaway> = std::sync::OnceLock::new();
    SERVER.get_or_init(|| postgres::throwaway::Throwaway::start().unwrap_or_else(|e| panic!("{e}")))
}

/// A fresh database on the shared server, migrated.
pub(crate) async fn fresh_database() -> postgres::PostgresUrl {
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!("t{}_{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
    let server = tokio::task::spawn_blocking(server).await.unwrap();
    postgres::PostgresUrl::new(postgres::throwaway::create_database(server, &name).await.unwrap())
}

async fn pg_store() -> (Store, Keep) {
    let url = fresh_database().await;
    let store = postgres::PgStore::open(&url, &postgres::PostgresOptions::default()).await.unwrap();
    (Arc::new(store), Keep::Nothing)
}

macro_rules! every_engine {
    ($($case:ident),* $(,)?) => {
        mod on_sled {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let (store, _keep) = super::sled_store();
                    super::$case(store).await
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let (store, _keep) = super::pg_store().await;
                    super::$case(store).await
                }
            )*
        }
    };
}

every_engine!(
    a_resent_reading_is_stored_once,
    a_duplicate_never_replaces_stored_history,
    a_seq_reused_on_another_day_is_still_a_duplicate,
    a_batch_repeating_a_reading_stores_it_once,
    latest_is_the_newest_by_time_not_by_arrival,
    machines_do_not_bleed_into_each_other,
    retention_folds_old_raw_readings_into_hourly_min_avg_max,
    retention_works_in_bounded_steps_and_forgets_silent_sensors_and_old_sightings,
    retention_cuts_exactly_inside_a_day,
    a_period_holds_every_sensor_of_one_machine_within_its_bounds,
    a_hub_is_unattached_until_it_sends_through_a_connector_even_if_it_sends_directly,
    a_latest_value_from_a_clock_far_ahead_does_not_freeze_the_sensor,
    what_connectors_put_aside_is_added_to_the_hubs_own_count,
    a_batch_larger_than_any_bind_parameter_limit_is_stored_exactly,
    two_hundred_simultaneous_acknowledgements_all_complete,
    the_latest_value_carries_the_limits_it_was_judged_against,
);

fn batch(machine: &str, readings: Vec<(u64, &str, f64, DateTime<Utc>)>) -> Batch {
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
        readings: readings
            .into_iter()
            .map(|(seq, sensor, v, ts)| Reading {
                machine_id: machine.into(),
                seq,
                sample: Sample::new(sensor, v, State::Ok).at(ts),
            })
            .collect(),
    }
}

async fn a_resent_reading_is_stored_once(store: Store) {
    let now = Utc::now();
    let b = batch("m1", vec![(1, "cpu", 1.0, now), (2, "cpu", 2.0, now), (3, "mem", 3.0, now)]);
    let first = store.ingest(b.clone(), now).await.unwrap();
    assert_eq!((first.stored, first.duplicates), (3, 0));
    let again = store.ingest(b.clone(), now).await.unwrap();
    assert_eq!((again.stored, again.duplicates), (0, 3));
    assert_eq!(store.readings("m1", "cpu", None, 100).await.unwrap().len(), 2);
    assert_eq!(store.raw_count().await.unwrap(), 3);
}

async fn a_duplicate_never_replaces_stored_history(store: Store) {
    let now = Utc::now();
    store.ingest(batch("m1", vec![(1, "cpu", 1.0, now)]), now).await.unwrap();
    // The same (machine, sensor, seq) with other content: counted as a duplicate, not stored.
    let later = now + CDuration::seconds(5);
    let again = store.ingest(batch("m1", vec![(1, "cpu", 99.0, later)]), later).await.unwrap();
    assert_eq!((again.stored, again.duplicates), (0, 1));
    let held = store.readings("m1", "cpu", None, 100).await.unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].value, Value::Number(1.0), "the first stored value stays");
    assert_eq!(held[0].ts.timestamp_millis(), now.timestamp_millis());
}

async fn latest_is_the_newest_by_time_not_by_arrival(store: Store) {
    let now = Utc::now();
    store.ingest(batch("m1", vec![(10, "cpu", 50.0, now)]), now).await.unwrap();
    // A backlog reading from an hour ago arrives later; it must not replace the live value.
    store.ingest(batch("m1", vec![(3, "cpu", 7.0, now - CDuration::hours(1))]), now).await.unwrap();
    let s = store.sensors("m1").await.unwrap();
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].value, Value::Number(50.0));
    let pts = store.readings("m1", "cpu", Some(now - CDuration::minutes(5)), 100).await.unwrap();
    assert_eq!(pts.iter().map(|p| p.seq).collect::<Vec<_>>(), vec![10]);
}

async fn machines_do_not_bleed_into_each_other(store: Store) {
    let now = Utc::now();
    store.ingest(batch("m1", vec![(1, "cpu", 1.0, now)]), now).await.unwrap();
    store.ingest(batch("m10", vec![(1, "cpu", 9.0, now)]), now).await.unwrap();
    assert_eq!(store.readings("m1", "cpu", None, 10).await.unwrap().len(), 1);
    assert_eq!(store.sensors("m1").await.unwrap()[0].value, Value::Number(1.0));
    assert_eq!(store.machines().await.unwrap().len(), 2);
}

async fn retention_folds_old_raw_readings_into_hourly_min_avg_max(store: Store) {
    let now = Utc::now();
    let old = now - CDuration::days(8);
    let hour_start =
        Utc.timestamp_millis_opt(old.timestamp_millis() - old.timestamp_millis() % 3_600_000).unwrap();
    let b = batch(
        "m1",
        vec![
            (1, "cpu", 10.0, hour_start + CDuration::minutes(1)),
            (2, "cpu", 20.0, hour_start + CDuration::minutes(2)),
            (3, "cpu", 60.0, hour_start + CDuration::minutes(3)),
            (4, "cpu", 5.0, now),
        ],
    );
    store.ingest(b.clone(), now).await.unwrap();
    let out =
        store.compact(now, Duration::from_secs(7 * 86400), Duration::from_secs(400 * 86400)).await.unwrap();
    assert_eq!(out.folded, 3);
    let raw = store.readings("m1", "cpu", None, 100).await.unwrap();
    assert_eq!(raw.iter().map(|p| p.seq).collect::<Vec<_>>(), vec![4]);
    let h = store.hourly("m1", "cpu", None, 100).await.unwrap();
    assert_eq!(h.len(), 1);
    assert_eq!((h[0].min, h[0].avg, h[0].max, h[0].count), (10.0, 30.0, 60.0, 3));
    assert_eq!(h[0].ts, hour_start);
    // Aggregates past their own retention go too.
    let later = now + CDuration::days(500);
    let out =
        store.compact(later, Duration::from_secs(7 * 86400), Duration::from_secs(400 * 86400)).await.unwrap();
    assert_eq!(out.hourly_expired, 1 + 1, "both the old hour and the folded live reading's hour expire");
}

async fn retention_works_in_bounded_steps_and_forgets_silent_sensors_and_old_sightings(store: Store) {
    let now = Utc::now();
    let old = now - CDuration::days(8);
    // More rows than one step reads, over two sensors: every old one is folded, none twice.
    let n = super::COMPACT_STEP as u64 + 1234;
    for chunk in (1..=n).collect::<Vec<_>>().chunks(10_000) {
        let readings = chunk
            .iter()
            .map(|&seq| (seq, if seq % 2 == 0 { "cpu" } else { "veth1a2b.rx" }, 1.0, old))
            .collect();
        store.ingest(batch("m1", readings), now).await.unwrap();
    }
    store.ingest(batch("m1", vec![(n + 1, "cpu", 2.0, now)]), now).await.unwrap();
    store
        .note_unattached(&[outpost_shared::model::UnattachedHub {
            machine_id: "gone".into(),
            location: "http://10.0.0.9:1900/".into(),
            server: String::new(),
            connector: "c".into(),
            seen_at: now - CDuration::days(2),
        }])
        .await
        .unwrap();
    let out =
        store.compact(now, Duration::from_secs(7 * 86400), Duration::from_secs(400 * 86400)).await.unwrap();
    assert_eq!(out.folded, n, "every old reading folded across the steps");
    assert_eq!(store.raw_count().await.unwrap(), 1, "the live reading stays");
    let h = store.hourly("m1", "cpu", None, 100).await.unwrap();
    assert_eq!(h.iter().map(|p| p.count).sum::<u64>(), n / 2, "each reading folded exactly once");
    // The interface that went away leaves the latest values; the live sensor stays.
    assert_eq!(out.latest_expired, 1);
    let latest: Vec<String> = store.sensors("m1").await.unwrap().into_iter().map(|l| l.sensor).collect();
    assert_eq!(latest, vec!["cpu".to_string()]);
    assert_eq!(out.unattached_expired, 1);
}

async fn a_period_holds_every_sensor_of_one_machine_within_its_bounds(store: Store) {
    let now = Utc::now();
    let ago = |m: i64| now - CDuration::minutes(m);
    store
        .ingest(
            batch("m1", vec![(1, "cpu", 1.0, ago(90)), (2, "cpu", 2.0, ago(30)), (3, "mem", 3.0, ago(10))]),
            now,
        )
        .await
        .unwrap();
    store.ingest(batch("m10", vec![(1, "cpu", 9.0, ago(10))]), now).await.unwrap();
    let p = store.period("m1", ago(60), now, 100).await.unwrap();
    let got: Vec<(&str, f64)> = p.iter().map(|r| (r.sensor.as_str(), r.value.as_f64().unwrap())).collect();
    assert_eq!(got, vec![("cpu", 2.0), ("mem", 3.0)]);
    assert_eq!(store.period("m1", ago(60), ago(20), 100).await.unwrap().len(), 1, "the end is exclusive");
    assert_eq!(store.period("m1", ago(120), now, 2).await.unwrap().len(), 2, "limit");
}

async fn a_hub_is_unattached_until_it_sends_through_a_connector_even_if_it_sends_directly(store: Store) {
    let now = Utc::now();
    let seen = |id: &str| UnattachedHub {
        machine_id: id.into(),
        location: format!("https://10.0.0.2:1/outpost/hub/{id}"),
        server: "s".into(),
        connector: "c1".into(),
        seen_at: now,
    };
    store.note_unattached(&[seen("silent"), seen("direct"), seen("attached")]).await.unwrap();
    store.ingest(batch("direct", vec![(1, "cpu", 1.0, now)]), now).await.unwrap();
    let mut via = batch("attached", vec![(1, "cpu", 1.0, now)]);
    via.uplink = "connector:c1".into();
    store.ingest(via.clone(), now).await.unwrap();
    let mut listed: Vec<String> =
        store.unattached(now).await.unwrap().into_iter().map(|h| h.machine_id).collect();
    listed.sort();
    assert_eq!(listed, vec!["direct", "silent"]);
}

async fn a_latest_value_from_a_clock_far_ahead_does_not_freeze_the_sensor(store: Store) {
    let now = Utc::now();
    let y2100 = DateTime::parse_from_rfc3339("2100-01-01T00:00:00Z").unwrap().to_utc();
    // Stored before any window check existed (or through a wider one).
    store.ingest(batch("m1", vec![(1, "cpu", 99.0, y2100)]), now).await.unwrap();
    store.ingest(batch("m1", vec![(2, "cpu", 5.0, now)]), now).await.unwrap();
    assert_eq!(
        store.sensors("m1").await.unwrap()[0].value,
        Value::Number(5.0),
        "the live value replaces the 2100 one"
    );
    // Within the allowed skew, a newer-stamped value still wins over a replayed older one.
    let ahead = now + CDuration::minutes(2);
    store.ingest(batch("m1", vec![(3, "cpu", 6.0, ahead)]), now).await.unwrap();
    store.ingest(batch("m1", vec![(4, "cpu", 7.0, now - CDuration::minutes(1))]), now).await.unwrap();
    assert_eq!(store.sensors("m1").await.unwrap()[0].value, Value::Number(6.0));
}

async fn what_connectors_put_aside_is_added_to_the_hubs_own_count(store: Store) {
    let now = Utc::now();
    let mut b = batch("hub", vec![(1, "cpu", 1.0, now)]);
    b.quarantined = 3;
    store.ingest(b.clone(), now).await.unwrap();
    store.note_relay_quarantine("conn-a", &[("hub".into(), 10)]).await.unwrap();
    store.note_relay_quarantine("conn-b", &[("hub".into(), 5)]).await.unwrap();
    // A total replaces that connector's previous total: resent reports do not add up.
    store.note_relay_quarantine("conn-a", &[("hub".into(), 12)]).await.unwrap();
    assert_eq!(store.machine("hub").await.unwrap().unwrap().quarantined, 3 + 12 + 5);
    assert_eq!(store.machines().await.unwrap()[0].quarantined, 20);
    // Another hub whose id starts the same is not counted in.
    store.note_relay_quarantine("conn-a", &[("hu".into(), 100)]).await.unwrap();
    assert_eq!(store.machine("hub").await.unwrap().unwrap().quarantined, 20);
}

async fn a_seq_reused_on_another_day_is_still_a_duplicate(store: Store) {
    let now = Utc::now();
    let before = now - CDuration::days(2);
    store.ingest(batch("m1", vec![(7, "cpu", 1.0, before)]), now).await.unwrap();
    let again = store.ingest(batch("m1", vec![(7, "cpu", 2.0, now)]), now).await.unwrap();
    assert_eq!((again.stored, again.duplicates), (0, 1), "one (machine, sensor, seq), one reading");
    assert_eq!(store.raw_count().await.unwrap(), 1);
}

async fn a_batch_repeating_a_reading_stores_it_once(store: Store) {
    let now = Utc::now();
    let b = batch(
        "m1",
        vec![(1, "cpu", 1.0, now), (1, "cpu", 1.0, now), (1, "cpu", 5.0, now + CDuration::seconds(1))],
    );
    let out = store.ingest(b, now).await.unwrap();
    assert_eq!((out.stored, out.duplicates), (1, 2));
    let held = store.readings("m1", "cpu", None, 10).await.unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].value, Value::Number(1.0), "the first of the batch stays");
}

async fn retention_cuts_exactly_inside_a_day(store: Store) {
    // Readings a minute either side of the cut, whatever the time of day: the older one is
    // folded, the newer one stays raw.
    let now = Utc::now();
    let cut = now - CDuration::days(7);
    let b = batch(
        "m1",
        vec![(1, "cpu", 4.0, cut - CDuration::minutes(1)), (2, "cpu", 8.0, cut + CDuration::minutes(1))],
    );
    store.ingest(b, now).await.unwrap();
    let out =
        store.compact(now, Duration::from_secs(7 * 86400), Duration::from_secs(400 * 86400)).await.unwrap();
    assert_eq!(out.folded, 1);
    let raw: Vec<u64> = store.readings("m1", "cpu", None, 10).await.unwrap().iter().map(|p| p.seq).collect();
    assert_eq!(raw, vec![2]);
    let h = store.hourly("m1", "cpu", None, 10).await.unwrap();
    assert_eq!(h.iter().map(|p| (p.count, p.min)).collect::<Vec<_>>(), vec![(1, 4.0)]);
}

async fn a_batch_larger_than_any_bind_parameter_limit_is_stored_exactly(store: Store) {
    // 20,000 readings: as multi-row VALUES that would be 120,000 parameters, above PostgreSQL's
    // 65,535; the engines must take it whole and count exactly.
    let now = Utc::now();
    let n = 20_000u64;
    let readings = (1..=n).map(|seq| (seq, if seq % 2 == 0 { "a" } else { "b" }, seq as f64, now)).collect();
    let out = store.ingest(batch("big", readings), now).await.unwrap();
    store.commit().await.unwrap();
    assert_eq!((out.stored, out.duplicates), (n, 0));
    // Half of it again plus new ones: exact counts both ways.
    let readings =
        (n / 2 + 1..=n + 100).map(|seq| (seq, if seq % 2 == 0 { "a" } else { "b" }, 0.0, now)).collect();
    let out = store.ingest(batch("big", readings), now).await.unwrap();
    assert_eq!((out.stored, out.duplicates), (100, n / 2));
    assert_eq!(store.raw_count().await.unwrap(), n + 100);
}

async fn two_hundred_simultaneous_acknowledgements_all_complete(store: Store) {
    // Each acknowledgement waits for durability; 200 at once must all get through (sled's
    // concurrent flushes once deadlocked here, issue #1308): the timeout fails the test if
    // acknowledgements stop.
    let now = Utc::now();
    let mut tasks = Vec::new();
    for i in 0..200u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let b = batch(&format!("m{i}"), (1..=20).map(|s| (s, "cpu", s as f64, now)).collect());
            let out = store.ingest(b, now).await.unwrap();
            store.commit().await.unwrap();
            out.stored
        }));
    }
    let all = async {
        let mut stored = 0;
        for t in tasks {
            stored += t.await.unwrap();
        }
        stored
    };
    let stored = tokio::time::timeout(std::time::Duration::from_secs(120), all)
        .await
        .expect("acknowledgements stopped: 200 concurrent commits did not all complete");
    assert_eq!(stored, 200 * 20);
    assert_eq!(store.machines().await.unwrap().len(), 200);
}

/// What the chart draws its threshold lines from: the limits of the newest reading, kept by both
/// engines; a reading without limits (an older hub) leaves none, and an unusable one is dropped.
async fn the_latest_value_carries_the_limits_it_was_judged_against(store: Store) {
    use outpost_shared::model::Limits;
    let now = Utc::now();
    let limits = Limits { warn: Some(80.0), error: Some(90.0), below: false };
    let mut b = batch("m1", vec![(1, "cpu", 50.0, now), (2, "mem", 1.0, now), (3, "disk", 2.0, now)]);
    b.readings[0].sample.limits = Some(limits);
    b.readings[2].sample.limits = Some(Limits { warn: Some(f64::INFINITY), error: None, below: true });
    store.ingest(b, now).await.unwrap();
    store.commit().await.unwrap();
    let latest = store.sensors("m1").await.unwrap();
    let of = |s: &str| latest.iter().find(|l| l.sensor == s).unwrap().limits;
    assert_eq!(of("cpu"), Some(limits));
    assert_eq!(of("mem"), None);
    assert_eq!(of("disk"), None, "a limit at infinity is no line to draw");
}

/// sled only: an outage's catch-up (many hubs' backlogs at once) is written one batch per core at
/// a time, not all side by side (sled held more memory the more writers overlapped).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sled_store_writes_at_most_one_batch_per_core_at_once() {
    use crate::store::ReadingStore;
    let dir = tempfile::tempdir().unwrap();
    let store = super::sled::SledStore::open(&dir.path().join("db")).unwrap();
    store.writes.hold_ms.store(50, Ordering::SeqCst);
    let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
    let now = Utc::now();
    let uploads: Vec<_> = (0..6 * cores)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let b = batch(&format!("m{i}"), vec![(1, "cpu", i as f64, now)]);
                ReadingStore::ingest(&store, b, now).await.unwrap().stored
            })
        })
        .collect();
    for u in uploads {
        assert_eq!(u.await.unwrap(), 1, "every upload is stored");
    }
    let peak = store.writes.peak.load(Ordering::SeqCst);
    assert!(peak <= cores, "{peak} batches were written at once on {cores} cores");
    assert_eq!(peak, cores, "uploads are still written side by side, one per core");
}
