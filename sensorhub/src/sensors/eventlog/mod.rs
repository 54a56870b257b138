//! Event log sensor (Windows): per chosen log, the errors and warnings (or other chosen event
//! types, optionally of chosen sources only) written since the last read. One reading per log,
//! `eventlog.<Log>` (`eventlog.<name>.<Log>` for a named sensor): the count of new matching events
//! as value, error when one of them is an error (or audit failure), warning when one is a
//! warning, and the newest few events as message, bounded in size.
//!
//! What was read is remembered per log as a record number in a bookmark file in the hub's data
//! directory ([`bookmark`]), moved only once the readings are durable in the hub's buffer (the
//! writer says so, see [`crate::writer::Batch`]). On its very first start a sensor reports nothing
//! of the past: it starts after the newest record.
//!
//! The logs are read with the classic event log API (`OpenEventLogW`, `ReadEventLogW`), not the
//! newer `EvtQuery` one: record numbers are its native position (the bookmark is one number per
//! log), it is in every Windows, and Wine implements it as a working stub (opens, reports an empty
//! log) where `EvtQuery` fails outright, so the sensor runs under Wine and says it found nothing.
//! What it cannot read: the "Applications and Services Logs" channels (e.g.
//! `Microsoft-Windows-…/Operational`), which only the newer API serves.

mod bookmark;
pub(crate) mod record;
#[cfg(windows)]
mod win;

#[cfg(test)]
mod tests;

use super::config::{EventLevel, SensorConfig, DEFAULT_EVENT_LOGS, DEFAULT_MAX_MESSAGES};
use super::BlockingSensor;
use bookmark::Bookmarks;
use outpost_shared::model::{Sample, State};
use record::{truncate, Record};
use std::collections::BTreeMap;
use std::path::Path;

/// Most records read from one log in one sample; the rest wait for the next sample (the bookmark
/// marks how far this one got), so a flood cannot hold the sensor or memory.
const READ_MAX: usize = 10_000;
/// Characters of one event in a reading's message.
const EVENT_CHARS: usize = 300;

/// Where events come from: the Windows event log, or a fake in tests.
pub(crate) trait Source: Send {
    /// The oldest record number of `log` and how many records it holds.
    fn extent(&mut self, log: &str) -> Result<(u32, u32), String>;
    /// Appends records of `log` from record number `from` on, oldest first: at least one when
    /// `from` exists, as many as one read returns.
    fn read(&mut self, log: &str, from: u32, out: &mut Vec<Record>) -> Result<(), String>;
}

/// The platform's event log.
fn system_source() -> Box<dyn Source> {
    #[cfg(windows)]
    {
        Box::new(win::EventLogApi::default())
    }
    #[cfg(not(windows))]
    {
        Box::new(NotWindows)
    }
}

#[cfg(not(windows))]
struct NotWindows;

#[cfg(not(windows))]
impl Source for NotWindows {
    fn extent(&mut self, _log: &str) -> Result<(u32, u32), String> {
        Err("the event log exists on Windows only".into())
    }
    fn read(&mut self, _log: &str, _from: u32, _out: &mut Vec<Record>) -> Result<(), String> {
        Err("the event log exists on Windows only".into())
    }
}

pub(crate) struct EventLog {
    /// Reading keys are `<prefix>.<Log>`.
    prefix: String,
    logs: Vec<String>,
    /// Lower-cased source names to keep; None keeps every source.
    sources: Option<Vec<String>>,
    levels: Vec<EventLevel>,
    max_messages: usize,
    source: Box<dyn Source>,
    /// Per log, the last record reported in this process (ahead of the durable bookmark while the
    /// readings are on their way to the buffer).
    position: BTreeMap<String, u64>,
    /// The position of the last sample, waiting for its readings to be durable.
    pending: Option<BTreeMap<String, u64>>,
    store: Bookmarks,
    /// Said once, in the next readings: an unreadable bookmark, a failed bookmark write.
    note: Option<String>,
}

impl EventLog {
    /// `state_dir`: where the bookmark lives (the hub's data directory); None keeps it in memory.
    pub fn new(cfg: &SensorConfig, state_dir: Option<&Path>) -> Self {
        let id = cfg.id();
        let file = state_dir.map(|d| d.join(format!("eventlog-{id}.json")));
        EventLog::with_source(cfg, file, system_source())
    }

    pub(crate) fn with_source(
        cfg: &SensorConfig,
        bookmark: Option<std::path::PathBuf>,
        source: Box<dyn Source>,
    ) -> Self {
        let (store, note) = Bookmarks::load(bookmark);
        let prefix = match &cfg.name {
            Some(n) => format!("eventlog.{n}"),
            None => "eventlog".into(),
        };
        EventLog {
            prefix,
            logs: cfg.logs.clone().unwrap_or_else(|| DEFAULT_EVENT_LOGS.map(String::from).to_vec()),
            sources: cfg.sources.as_ref().map(|s| s.iter().map(|x| x.trim().to_lowercase()).collect()),
            levels: cfg.levels.clone().unwrap_or_else(|| vec![EventLevel::Error, EventLevel::Warning]),
            max_messages: cfg.max_messages.unwrap_or(DEFAULT_MAX_MESSAGES) as usize,
            source,
            position: store.durable.clone(),
            pending: None,
            store,
            note,
        }
    }

    fn wanted(&self, r: &Record) -> bool {
        self.levels.contains(&r.level)
            && self.sources.as_ref().is_none_or(|s| s.contains(&r.source.trim().to_lowercase()))
    }

    /// Reads one log from its position on; returns its reading.
    fn sample_log(&mut self, log: &str) -> Sample {
        let key = format!("{}.{log}", self.prefix);
        let unknown = |why: String| {
            Sample::new(key.clone(), "unknown".to_string(), State::Unknown)
                .message(format!("{log}: cannot read the event log: {why}"))
        };
        let (oldest, count) = match self.source.extent(log) {
            Ok(e) => e,
            Err(why) => return unknown(why),
        };
        let oldest = u64::from(oldest);
        // Record numbers of the log now: oldest..=newest; none when it is empty.
        let newest = (count > 0).then(|| oldest + u64::from(count) - 1);
        let Some(&last) = self.position.get(log) else {
            // First contact: the past is not news. Made durable at once (nothing is reported, so
            // nothing waits on the buffer): a restart must not move the starting point.
            let start = newest.unwrap_or(0);
            self.position.insert(log.to_string(), start);
            let mut marks = self.store.durable.clone();
            marks.insert(log.to_string(), start);
            if let Err(e) = self.store.save(&marks) {
                self.note = Some(e);
            }
            return Sample::new(key, 0.0, State::Ok)
                .message(format!("{log}: watching for new events after record {start}"));
        };
        let mut notes = Vec::new();
        let mut from = last + 1;
        match newest {
            Some(newest) if last > newest => {
                notes.push(format!(
                    "the log was cleared (it ends at record {newest}, {last} was read): reading it from the start"
                ));
                from = oldest;
            }
            Some(_) if from < oldest && last > 0 => {
                notes.push(format!(
                    "{} events were overwritten before they could be read (the log is full or small)",
                    oldest - from
                ));
                from = oldest;
            }
            Some(_) if from < oldest => from = oldest,
            None if last > 0 => {
                notes.push("the log was cleared".into());
                self.position.insert(log.to_string(), 0);
            }
            _ => {}
        }
        let mut matched: Vec<Record> = Vec::new();
        let mut total = 0usize;
        let mut state = State::Ok;
        let mut read = 0usize;
        let mut batch = Vec::new();
        if let Some(newest) = newest {
            while from <= newest && read < READ_MAX {
                batch.clear();
                let Ok(start) = u32::try_from(from) else { break };
                if let Err(why) = self.source.read(log, start, &mut batch) {
                    // What was read so far counts; the rest is read again next time.
                    notes.push(format!("reading stopped at record {from}: {why}"));
                    break;
                }
                let before = from;
                for r in batch.drain(..) {
                    let n = u64::from(r.number);
                    // Only what moves forward and exists now: a source that repeats or jumps
                    // back cannot make the sensor report an event twice.
                    if n < from || n > newest {
                        continue;
                    }
                    from = n + 1;
                    read += 1;
                    if self.wanted(&r) {
                        total += 1;
                        state = state.max(severity(r.level));
                        matched.push(r);
                        // Only the newest few are shown; keep the list short.
                        if matched.len() > self.max_messages {
                            matched.remove(0);
                        }
                    }
                }
                if from == before {
                    break;
                }
            }
            self.position.insert(log.to_string(), from.saturating_sub(1));
        }
        if read >= READ_MAX && newest.is_some_and(|n| from <= n) {
            notes.push(format!("more than {READ_MAX} new records: the rest follow in the next readings"));
        }
        let mut msg = format!("{log}: {total} new {}", self.levels_text());
        if total > 0 {
            let shown: Vec<String> = matched.iter().rev().map(describe).collect();
            msg.push_str(&format!("; newest: {}", shown.join(" | ")));
        }
        for n in notes {
            msg.push_str("; ");
            msg.push_str(&n);
        }
        Sample::new(key, total as f64, state).message(msg)
    }

    fn levels_text(&self) -> String {
        let names: Vec<&str> = self.levels.iter().map(|l| l.as_str()).collect();
        let mut t = names.join("/");
        if let Some(s) = &self.sources {
            t.push_str(&format!(" events of {}", s.join(", ")));
        } else {
            t.push_str(" events");
        }
        t
    }
}

/// What one new event of this level makes of the reading: any new error is an error.
fn severity(level: EventLevel) -> State {
    match level {
        EventLevel::Error | EventLevel::AuditFailure => State::Error,
        EventLevel::Warning => State::Warn,
        EventLevel::Information | EventLevel::AuditSuccess => State::Ok,
    }
}

/// One event in a reading's message: `error 2026-01-02T03:04:05Z Service Control Manager 7000: …`.
fn describe(r: &Record) -> String {
    let when = chrono::DateTime::from_timestamp(i64::from(r.time), 0)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default();
    let text = format!("{} {when} {} {}: {}", r.level.as_str(), r.source, r.event_id, r.strings.join("; "));
    truncate(text, EVENT_CHARS)
}

impl BlockingSensor for EventLog {
    fn sample(&mut self, out: &mut Vec<Sample>) {
        let logs = self.logs.clone();
        for log in &logs {
            out.push(self.sample_log(log));
        }
        if let Some(note) = self.note.take() {
            for s in out.iter_mut() {
                let m = s.message.get_or_insert_with(String::new);
                m.push_str("; ");
                m.push_str(&note);
            }
        }
        self.pending = Some(self.position.clone());
    }

    fn wants_durable(&self) -> bool {
        true
    }

    fn durable(&mut self, stored: bool) {
        let Some(pending) = self.pending.take() else { return };
        if stored {
            if let Err(e) = self.store.save(&pending) {
                tracing::error!(error = %e, "event log bookmark not saved: events may be reported again after a restart");
                self.note = Some(format!("{e}: events may be reported again after a restart"));
            }
        } else {
            // The readings never reached the buffer: read those events again.
            self.position = self.store.durable.clone();
        }
    }
}
