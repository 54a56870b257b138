use super::*;
use chrono::Duration as CDuration;
use outpost_shared::model::{Reading, Role, Sample};

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

#[test]
fn a_resent_reading_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let now = Utc::now();
    let b = batch("m1", vec![(1, "cpu", 1.0, now), (2, "cpu", 2.0, now), (3, "mem", 3.0, now)]);
    let first = store.ingest(&b, now).unwrap();
    assert_eq!((first.stored, first.duplicates), (3, 0));
    let again = store.ingest(&b, now).unwrap();
    assert_eq!((again.stored, again.duplicates), (0, 3));
    assert_eq!(store.readings("m1", "cpu", None, 100).unwrap().len(), 2);
    assert_eq!(store.raw_count(), 3);
}

#[test]
fn a_duplicate_never_replaces_stored_history() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let now = Utc::now();
    store.ingest(&batch("m1", vec![(1, "cpu", 1.0, now)]), now).unwrap();
    // The same (machine, sensor, seq) with other content: counted as a duplicate, not stored.
    let later = now + CDuration::seconds(5);
    let again = store.ingest(&batch("m1", vec![(1, "cpu", 99.0, later)]), later).unwrap();
    assert_eq!((again.stored, again.duplicates), (0, 1));
    let held = store.readings("m1", "cpu", None, 100).unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].value, Value::Number(1.0), "the first stored value stays");
    assert_eq!(held[0].ts.timestamp_millis(), now.timestamp_millis());
}

#[test]
fn latest_is_the_newest_by_time_not_by_arrival() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let now = Utc::now();
    store.ingest(&batch("m1", vec![(10, "cpu", 50.0, now)]), now).unwrap();
    // A backlog reading from an hour ago arrives later; it must not replace the live value.
    store.ingest(&batch("m1", vec![(3, "cpu", 7.0, now - CDuration::hours(1))]), now).unwrap();
    let s = store.sensors("m1").unwrap();
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].value, Value::Number(50.0));
    let pts = store.readings("m1", "cpu", Some(now - CDuration::minutes(5)), 100).unwrap();
    assert_eq!(pts.iter().map(|p| p.seq).collect::<Vec<_>>(), vec![10]);
}

#[test]
fn machines_do_not_bleed_into_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let now = Utc::now();
    store.ingest(&batch("m1", vec![(1, "cpu", 1.0, now)]), now).unwrap();
    store.ingest(&batch("m10", vec![(1, "cpu", 9.0, now)]), now).unwrap();
    assert_eq!(store.readings("m1", "cpu", None, 10).unwrap().len(), 1);
    assert_eq!(store.sensors("m1").unwrap()[0].value, Value::Number(1.0));
    assert_eq!(store.machines().unwrap().len(), 2);
}

#[test]
fn retention_folds_old_raw_readings_into_hourly_min_avg_max() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
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
    store.ingest(&b, now).unwrap();
    let out = store.compact(now, Duration::from_secs(7 * 86400), Duration::from_secs(400 * 86400)).unwrap();
    assert_eq!(out.folded, 3);
    let raw = store.readings("m1", "cpu", None, 100).unwrap();
    assert_eq!(raw.iter().map(|p| p.seq).collect::<Vec<_>>(), vec![4]);
    let h = store.hourly("m1", "cpu", None, 100).unwrap();
    assert_eq!(h.len(), 1);
    assert_eq!((h[0].min, h[0].avg, h[0].max, h[0].count), (10.0, 30.0, 60.0, 3));
    assert_eq!(h[0].ts, hour_start);
    // Aggregates past their own retention go too.
    let later = now + CDuration::days(500);
    let out = store.compact(later, Duration::from_secs(7 * 86400), Duration::from_secs(400 * 86400)).unwrap();
    assert_eq!(out.hourly_expired, 1 + 1, "both the old hour and the folded live reading's hour expire");
}

#[test]
fn retention_works_in_bounded_steps_and_forgets_silent_sensors_and_old_sightings() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let now = Utc::now();
    let old = now - CDuration::days(8);
    // More rows than one step reads, over two sensors: every old one is folded, none twice.
    let n = super::COMPACT_STEP as u64 + 1234;
    for chunk in (1..=n).collect::<Vec<_>>().chunks(10_000) {
        let readings = chunk
            .iter()
            .map(|&seq| (seq, if seq % 2 == 0 { "cpu" } else { "veth1a2b.rx" }, 1.0, old))
            .collect();
        store.ingest(&batch("m1", readings), now).unwrap();
    }
    store.ingest(&batch("m1", vec![(n + 1, "cpu", 2.0, now)]), now).unwrap();
    store
        .note_unattached(&[outpost_shared::model::UnattachedHub {
            machine_id: "gone".into(),
            location: "http://10.0.0.9:1900/".into(),
            server: String::new(),
            connector: "c".into(),
            seen_at: now - CDuration::days(2),
        }])
        .unwrap();
    let out = store.compact(now, Duration::from_secs(7 * 86400), Duration::from_secs(400 * 86400)).unwrap();
    assert_eq!(out.folded, n, "every old reading folded across the steps");
    assert_eq!(store.raw_count(), 1, "the live reading stays");
    let h = store.hourly("m1", "cpu", None, 100).unwrap();
    assert_eq!(h.iter().map(|p| p.count).sum::<u64>(), n / 2, "each reading folded exactly once");
    // The interface that went away leaves the latest values; the live sensor stays.
    assert_eq!(out.latest_expired, 1);
    let latest: Vec<String> = store.sensors("m1").unwrap().into_iter().map(|l| l.sensor).collect();
    assert_eq!(latest, vec!["cpu".to_string()]);
    assert_eq!(out.unattached_expired, 1);
}

#[test]
fn a_period_holds_every_sensor_of_one_machine_within_its_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let now = Utc::now();
    let ago = |m: i64| now - CDuration::minutes(m);
    store
        .ingest(
            &batch("m1", vec![(1, "cpu", 1.0, ago(90)), (2, "cpu", 2.0, ago(30)), (3, "mem", 3.0, ago(10))]),
            now,
        )
        .unwrap();
    store.ingest(&batch("m10", vec![(1, "cpu", 9.0, ago(10))]), now).unwrap();
    let p = store.period("m1", ago(60), now, 100).unwrap();
    let got: Vec<(&str, f64)> = p.iter().map(|r| (r.sensor.as_str(), r.value.as_f64().unwrap())).collect();
    assert_eq!(got, vec![("cpu", 2.0), ("mem", 3.0)]);
    assert_eq!(store.period("m1", ago(60), ago(20), 100).unwrap().len(), 1, "the end is exclusive");
    assert_eq!(store.period("m1", ago(120), now, 2).unwrap().len(), 2, "limit");
}

#[test]
fn a_hub_is_unattached_until_it_sends_through_a_connector_even_if_it_sends_directly() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let now = Utc::now();
    let seen = |id: &str| UnattachedHub {
        machine_id: id.into(),
        location: format!("https://10.0.0.2:1/outpost/hub/{id}"),
        server: "s".into(),
        connector: "c1".into(),
        seen_at: now,
    };
    store.note_unattached(&[seen("silent"), seen("direct"), seen("attached")]).unwrap();
    store.ingest(&batch("direct", vec![(1, "cpu", 1.0, now)]), now).unwrap();
    let mut via = batch("attached", vec![(1, "cpu", 1.0, now)]);
    via.uplink = "connector:c1".into();
    store.ingest(&via, now).unwrap();
    let mut listed: Vec<String> = store.unattached(now).unwrap().into_iter().map(|h| h.machine_id).collect();
    listed.sort();
    assert_eq!(listed, vec!["direct", "silent"]);
}

#[test]
fn a_latest_value_from_a_clock_far_ahead_does_not_freeze_the_sensor() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let now = Utc::now();
    let y2100 = DateTime::parse_from_rfc3339("2100-01-01T00:00:00Z").unwrap().to_utc();
    // Stored before any window check existed (or through a wider one).
    store.ingest(&batch("m1", vec![(1, "cpu", 99.0, y2100)]), now).unwrap();
    store.ingest(&batch("m1", vec![(2, "cpu", 5.0, now)]), now).unwrap();
    assert_eq!(
        store.sensors("m1").unwrap()[0].value,
        Value::Number(5.0),
        "the live value replaces the 2100 one"
    );
    // Within the allowed skew, a newer-stamped value still wins over a replayed older one.
    let ahead = now + CDuration::minutes(2);
    store.ingest(&batch("m1", vec![(3, "cpu", 6.0, ahead)]), now).unwrap();
    store.ingest(&batch("m1", vec![(4, "cpu", 7.0, now - CDuration::minutes(1))]), now).unwrap();
    assert_eq!(store.sensors("m1").unwrap()[0].value, Value::Number(6.0));
}

#[test]
fn what_connectors_put_aside_is_added_to_the_hubs_own_count() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let now = Utc::now();
    let mut b = batch("hub", vec![(1, "cpu", 1.0, now)]);
    b.quarantined = 3;
    store.ingest(&b, now).unwrap();
    store.note_relay_quarantine("conn-a", &[("hub".into(), 10)]).unwrap();
    store.note_relay_quarantine("conn-b", &[("hub".into(), 5)]).unwrap();
    // A total replaces that connector's previous total: resent reports do not add up.
    store.note_relay_quarantine("conn-a", &[("hub".into(), 12)]).unwrap();
    assert_eq!(store.machine("hub").unwrap().unwrap().quarantined, 3 + 12 + 5);
    assert_eq!(store.machines().unwrap()[0].quarantined, 20);
    // Another hub whose id starts the same is not counted in.
    store.note_relay_quarantine("conn-a", &[("hu".into(), 100)]).unwrap();
    assert_eq!(store.machine("hub").unwrap().unwrap().quarantined, 20);
}
