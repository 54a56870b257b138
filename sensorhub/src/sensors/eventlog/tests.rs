use super::record::{encode, parse_records, ParseError, Record};
use super::*;
use crate::sensors::config::SensorKind;
use std::sync::{Arc, Mutex};

/// An event log in memory: records per log, numbered as Windows numbers them, with the faults
/// a real log has (cleared, overwritten, failing reads). Clones share the log, so a "restarted"
/// sensor sees what the first one saw.
#[derive(Clone, Default)]
struct FakeLog {
    inner: Arc<Mutex<Fake>>,
}

#[derive(Default)]
struct Fake {
    logs: BTreeMap<String, Vec<Record>>,
    /// Most records one read returns (a real read returns what fits its buffer).
    per_read: usize,
    /// The next reads fail.
    fail_reads: bool,
}

impl FakeLog {
    fn write(&self, log: &str, level: EventLevel, source: &str, text: &str) -> u32 {
        let mut f = self.inner.lock().unwrap();
        let records = f.logs.entry(log.into()).or_default();
        let number = records.last().map_or(1, |r| r.number + 1);
        records.push(Record {
            number,
            time: 1_700_000_000 + number,
            event_id: 7000,
            level,
            source: source.into(),
            strings: vec![text.into()],
        });
        number
    }

    /// Drops the oldest records, as a full log overwrites them.
    fn overwrite_oldest(&self, log: &str, n: usize) {
        let mut f = self.inner.lock().unwrap();
        f.logs.get_mut(log).unwrap().drain(..n);
    }

    /// Empties the log; Windows starts numbering at 1 again.
    fn clear(&self, log: &str) {
        self.inner.lock().unwrap().logs.insert(log.into(), Vec::new());
    }

    fn fail_reads(&self, fail: bool) {
        self.inner.lock().unwrap().fail_reads = fail;
    }
}

impl Source for FakeLog {
    fn extent(&mut self, log: &str) -> Result<(u32, u32), String> {
        let f = self.inner.lock().unwrap();
        let records = f.logs.get(log).map(Vec::as_slice).unwrap_or_default();
        Ok((records.first().map_or(0, |r| r.number), records.len() as u32))
    }

    fn read(&mut self, log: &str, from: u32, out: &mut Vec<Record>) -> Result<(), String> {
        let f = self.inner.lock().unwrap();
        if f.fail_reads {
            return Err("the event log service is not running".into());
        }
        let per_read = if f.per_read == 0 { 3 } else { f.per_read };
        // Through the byte layout, as the real source hands records over.
        let bytes: Vec<u8> =
            f.logs[log].iter().filter(|r| r.number >= from).take(per_read).flat_map(encode).collect();
        out.extend(parse_records(&bytes).map_err(|e| e.to_string())?);
        Ok(())
    }
}

fn config(logs: &[&str]) -> SensorConfig {
    SensorConfig {
        logs: Some(logs.iter().map(|s| s.to_string()).collect()),
        ..SensorConfig::new(SensorKind::Eventlog)
    }
}

fn sensor(cfg: &SensorConfig, dir: &Path, log: &FakeLog) -> EventLog {
    EventLog::with_source(cfg, Some(dir.join("eventlog-eventlog.json")), Box::new(log.clone()))
}

/// One sample whose readings are then stored (or not) by the buffer.
fn sample(s: &mut EventLog, stored: bool) -> Vec<Sample> {
    let mut out = Vec::new();
    s.sample(&mut out);
    s.durable(stored);
    out
}

fn count(s: &Sample) -> f64 {
    match s.value {
        outpost_shared::model::Value::Number(n) => n,
        ref other => panic!("not a count: {other:?} ({s:?})"),
    }
}

#[test]
fn new_errors_are_reported_once_and_not_again_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let log = FakeLog::default();
    log.write("System", EventLevel::Error, "Disk", "old news");
    let cfg = config(&["System", "Application"]);
    let mut s = sensor(&cfg, dir.path(), &log);

    // First start: the past is not reported.
    let first = sample(&mut s, true);
    assert_eq!(first.len(), 2);
    assert_eq!(first[0].sensor, "eventlog.System");
    assert_eq!((count(&first[0]), first[0].state), (0.0, State::Ok));
    assert!(first[0].message.as_deref().unwrap().contains("after record 1"), "{first:?}");

    log.write("System", EventLevel::Information, "Kernel", "just information");
    log.write("System", EventLevel::Warning, "Time", "clock drift");
    log.write("System", EventLevel::Error, "Service Control Manager", "the spooler terminated");
    let second = sample(&mut s, true);
    assert_eq!((count(&second[0]), second[0].state), (2.0, State::Error), "{second:?}");
    let msg = second[0].message.as_deref().unwrap();
    assert!(msg.contains("Service Control Manager 7000: the spooler terminated"), "{msg}");
    assert!(msg.contains("clock drift") && !msg.contains("just information"), "{msg}");
    // Newest first.
    assert!(msg.find("spooler").unwrap() < msg.find("clock drift").unwrap(), "{msg}");
    assert_eq!(count(&second[1]), 0.0);

    assert_eq!(count(&sample(&mut s, true)[0]), 0.0, "nothing new, nothing reported");

    // A restart reads the bookmark: what was reported stays reported; what is new is new.
    drop(s);
    log.write("System", EventLevel::Warning, "Time", "drift again");
    let mut s = sensor(&cfg, dir.path(), &log);
    let after = sample(&mut s, true);
    assert_eq!((count(&after[0]), after[0].state), (1.0, State::Warn), "{after:?}");
    assert!(after[0].message.as_deref().unwrap().contains("drift again"), "{after:?}");
}

#[test]
fn events_whose_readings_were_not_stored_are_read_again() {
    let dir = tempfile::tempdir().unwrap();
    let log = FakeLog::default();
    let cfg = config(&["Application"]);
    let mut s = sensor(&cfg, dir.path(), &log);
    sample(&mut s, true);
    log.write("Application", EventLevel::Error, "App", "first failure");

    // The writer dropped the readings (a full disk): the bookmark must not move past them.
    let lost = sample(&mut s, false);
    assert_eq!(count(&lost[0]), 1.0);
    let again = sample(&mut s, true);
    assert_eq!(count(&again[0]), 1.0, "read again in the same process: {again:?}");

    // Reported and stored, but the process dies before the bookmark is written: read again
    // after the restart (at least once), never lost.
    log.write("Application", EventLevel::Error, "App", "second failure");
    let mut out = Vec::new();
    s.sample(&mut out);
    assert_eq!(count(&out[0]), 1.0);
    drop(s); // crash: `durable` never called
    let mut s = sensor(&cfg, dir.path(), &log);
    let after = sample(&mut s, true);
    assert_eq!(count(&after[0]), 1.0, "{after:?}");
    assert!(after[0].message.as_deref().unwrap().contains("second failure"));
    assert_eq!(count(&sample(&mut s, true)[0]), 0.0);
}

#[test]
fn a_flood_is_read_in_bounded_steps_and_messages_stay_small() {
    let dir = tempfile::tempdir().unwrap();
    let log = FakeLog::default();
    log.inner.lock().unwrap().per_read = 1000;
    let cfg = SensorConfig { max_messages: Some(2), ..config(&["System"]) };
    let mut s = sensor(&cfg, dir.path(), &log);
    sample(&mut s, true);
    // The newest of the first read carry huge texts: the message must stay small anyway.
    let long = "x".repeat(10_000);
    for i in 0..(READ_MAX + 5) {
        let text = if (READ_MAX - 3..READ_MAX).contains(&i) { long.as_str() } else { "short" };
        log.write("System", EventLevel::Error, "Flood", text);
    }
    let first = sample(&mut s, true);
    assert_eq!(count(&first[0]), READ_MAX as f64);
    let msg = first[0].message.as_deref().unwrap();
    assert!(msg.len() < 2 * 4 * EVENT_CHARS + 400, "bounded message, {} bytes", msg.len());
    assert!(msg.contains("the rest follow"), "{msg}");
    let rest = sample(&mut s, true);
    assert_eq!(count(&rest[0]), 5.0, "the remainder, none twice, none skipped");
}

#[test]
fn sources_and_levels_filter() {
    let dir = tempfile::tempdir().unwrap();
    let log = FakeLog::default();
    let cfg = SensorConfig {
        sources: Some(vec!["MSSQLSERVER".into()]),
        levels: Some(vec![EventLevel::Error, EventLevel::Information]),
        name: Some("sql".into()),
        ..config(&["Application"])
    };
    let mut s = sensor(&cfg, dir.path(), &log);
    sample(&mut s, true);
    log.write("Application", EventLevel::Error, "Other", "not ours");
    log.write("Application", EventLevel::Warning, "mssqlserver", "a warning, not asked for");
    log.write("Application", EventLevel::Information, "MSSQLSERVER", "backup done");
    let out = sample(&mut s, true);
    assert_eq!(out[0].sensor, "eventlog.sql.Application");
    assert_eq!((count(&out[0]), out[0].state), (1.0, State::Ok), "{out:?}");
    assert!(out[0].message.as_deref().unwrap().contains("backup done"));
}

#[test]
fn cleared_and_overwritten_logs_are_said_and_nothing_is_missed_after() {
    let dir = tempfile::tempdir().unwrap();
    let log = FakeLog::default();
    let cfg = config(&["System"]);
    let mut s = sensor(&cfg, dir.path(), &log);
    for _ in 0..5 {
        log.write("System", EventLevel::Error, "A", "before");
    }
    sample(&mut s, true);

    // Seven new records, of which the log overwrote the first four before the next read.
    for i in 0..7 {
        log.write("System", EventLevel::Error, "A", &format!("new {i}"));
    }
    log.overwrite_oldest("System", 9);
    let out = sample(&mut s, true);
    assert_eq!(count(&out[0]), 3.0, "{out:?}");
    assert!(out[0].message.as_deref().unwrap().contains("4 events were overwritten"), "{out:?}");

    // Cleared: numbering restarts at 1, below the bookmark; the new events are still reported.
    log.clear("System");
    let out = sample(&mut s, true);
    assert_eq!(count(&out[0]), 0.0);
    assert!(out[0].message.as_deref().unwrap().contains("cleared"), "{out:?}");
    log.write("System", EventLevel::Warning, "B", "after the clear");
    log.write("System", EventLevel::Warning, "B", "after the clear, 2");
    let out = sample(&mut s, true);
    assert_eq!((count(&out[0]), out[0].state), (2.0, State::Warn), "{out:?}");

    // Cleared and refilled between two reads (numbers below the bookmark again).
    log.clear("System");
    log.write("System", EventLevel::Error, "C", "refilled");
    let out = sample(&mut s, true);
    assert_eq!(count(&out[0]), 1.0, "{out:?}");
    assert!(out[0].message.as_deref().unwrap().contains("refilled"), "{out:?}");
}

#[test]
fn a_failing_read_reports_unknown_or_partial_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = FakeLog::default();
    let cfg = config(&["System"]);
    let mut s = sensor(&cfg, dir.path(), &log);
    sample(&mut s, true);
    log.write("System", EventLevel::Error, "A", "during the outage");
    log.fail_reads(true);
    let out = sample(&mut s, true);
    assert_eq!(count(&out[0]), 0.0);
    assert!(out[0].message.as_deref().unwrap().contains("not running"), "{out:?}");
    log.fail_reads(false);
    let out = sample(&mut s, true);
    assert_eq!(count(&out[0]), 1.0, "{out:?}");
}

#[test]
fn an_unreadable_bookmark_is_moved_aside_and_said() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("eventlog-eventlog.json");
    std::fs::write(&path, b"{\"logs\": {\"System\": -3}}").unwrap();
    let log = FakeLog::default();
    log.write("System", EventLevel::Error, "A", "x");
    let mut s = sensor(&config(&["System"]), dir.path(), &log);
    let out = sample(&mut s, true);
    let msg = out[0].message.as_deref().unwrap();
    assert!(msg.contains("unreadable") && msg.contains("json.unreadable"), "{msg}");
    assert!(dir.path().join("eventlog-eventlog.json.unreadable").exists());
    // It starts afresh and writes a good bookmark.
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text, r#"{"logs":{"System":1}}"#);
}

#[test]
fn malformed_record_bytes_are_refused_not_read_past() {
    let r = Record {
        number: 42,
        time: 1_700_000_000,
        event_id: 7036,
        level: EventLevel::Warning,
        source: "Service Control Manager".into(),
        strings: vec!["Print Spooler".into(), "stopped".into()],
    };
    let good = encode(&r);
    assert_eq!(parse_records(&good).unwrap(), vec![r.clone()]);
    let two: Vec<u8> = [good.clone(), good.clone()].concat();
    assert_eq!(parse_records(&two).unwrap().len(), 2);

    let malformed = |mutate: &dyn Fn(&mut Vec<u8>)| {
        let mut b = good.clone();
        mutate(&mut b);
        parse_records(&b)
    };
    let is_err = |r: Result<Vec<Record>, ParseError>| r.is_err();
    assert!(is_err(malformed(&|b| b.truncate(40))), "shorter than a header");
    assert!(is_err(malformed(&|b| b[0..4].copy_from_slice(&10_000u32.to_le_bytes()))), "length past the end");
    assert!(is_err(malformed(&|b| b[0..4].copy_from_slice(&3u32.to_le_bytes()))), "length below a header");
    assert!(is_err(malformed(&|b| b[4] = b'X')), "no signature");
    assert!(
        is_err(malformed(&|b| {
            let n = b.len();
            b[n - 4] ^= 0xff;
        })),
        "closing length differs"
    );
    assert!(is_err(malformed(&|b| b[36..40].copy_from_slice(&u32::MAX.to_le_bytes()))), "strings outside");
    // A string without its NUL ends at the record's end; the count of strings is capped.
    let unterminated = malformed(&|b| {
        let n = b.len();
        for x in &mut b[n - 8..n - 4] {
            *x = b'a';
        }
        b[26..28].copy_from_slice(&u16::MAX.to_le_bytes());
    })
    .unwrap();
    assert!(unterminated[0].strings.len() <= 16);
    // Random damage never panics.
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..2000 {
        let mut b = two.clone();
        for _ in 0..rng.usize(1..6) {
            let i = rng.usize(..b.len());
            b[i] = rng.u8(..);
        }
        let _ = parse_records(&b);
    }
}
