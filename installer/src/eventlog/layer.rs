//! The `tracing_subscriber` layer that writes to the Application event log with
//! `RegisterEventSourceW`/`ReportEventW` (windows-sys). This file holds the crate's only unsafe
//! code outside `define_windows_service!`.
//!
//! A logging failure never stops the service: if the source cannot be opened the layer writes
//! nothing (and says so once on stderr), and an event the log refuses is dropped.
#![allow(unsafe_code)]

use super::limit::{Budget, Verdict};
use super::text::EventText;
use super::{EVENT_ID, SERVICE_TARGET, SOURCE};
use std::sync::Mutex;
use std::time::Instant;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::{Context, Layer};
use windows_sys::Win32::Foundation::HANDLE;
use windows_sys::Win32::System::EventLog::{
    DeregisterEventSource, RegisterEventSourceW, ReportEventW, EVENTLOG_ERROR_TYPE,
    EVENTLOG_INFORMATION_TYPE, EVENTLOG_WARNING_TYPE, REPORT_EVENT_TYPE,
};

/// A handle from `RegisterEventSourceW`.
struct Source(HANDLE);

// SAFETY: an event source handle is a plain token that advapi32 lets any thread use: `ReportEventW`
// is documented as callable concurrently, and the handle is only closed in `Drop`.
unsafe impl Send for Source {}
// SAFETY: as above; `&Source` only ever reaches `ReportEventW`.
unsafe impl Sync for Source {}

impl Drop for Source {
    fn drop(&mut self) {
        // SAFETY: the handle came from RegisterEventSourceW and is closed once, here.
        unsafe { DeregisterEventSource(self.0) };
    }
}

/// Writes WARN and ERROR events, and the service's own INFO events (target [`SERVICE_TARGET`]),
/// to the Application log under the source [`SOURCE`].
pub struct EventLogLayer {
    source: Option<Source>,
    /// Put before each text, so the roles sharing the source are told apart.
    prefix: String,
    budget: Mutex<Budget>,
}

impl EventLogLayer {
    /// Opens the source. `prefix` (the role) starts every text. Never fails: without a source the
    /// layer writes nothing, after saying why on stderr.
    pub fn new(prefix: &str) -> EventLogLayer {
        let name = wide(SOURCE);
        // SAFETY: `name` is a NUL-terminated UTF-16 string that outlives the call; a null server
        // name means this machine.
        let h = unsafe { RegisterEventSourceW(std::ptr::null(), name.as_ptr()) };
        let source = if h.is_null() {
            eprintln!(
                "outpost: cannot open the event log source {SOURCE} ({}); logging to stderr only",
                std::io::Error::last_os_error()
            );
            None
        } else {
            Some(Source(h))
        };
        EventLogLayer { source, prefix: prefix.to_string(), budget: Mutex::new(Budget::default()) }
    }

    /// The filter this layer wants, independent of `RUST_LOG` (which is for the stderr log).
    pub fn filter() -> Targets {
        Targets::new().with_default(Level::WARN).with_target(SERVICE_TARGET, Level::INFO)
    }

    fn report(&self, kind: REPORT_EVENT_TYPE, text: &str) {
        let Some(source) = &self.source else { return };
        let text = wide(text);
        let strings = [text.as_ptr()];
        // SAFETY: one insertion string, NUL-terminated (EventText takes NULs out) and alive for the
        // call; no user SID and no raw data.
        let ok = unsafe {
            ReportEventW(
                source.0,
                kind,
                0,
                EVENT_ID,
                std::ptr::null_mut(),
                1,
                0,
                strings.as_ptr(),
                std::ptr::null(),
            )
        };
        // A full or unavailable log: the event is lost to it, and stderr still has it.
        let _ = ok;
    }
}

impl<S: Subscriber> Layer<S> for EventLogLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if self.source.is_none() {
            return;
        }
        let meta = event.metadata();
        let lifecycle = meta.target() == SERVICE_TARGET;
        let kind = match *meta.level() {
            Level::ERROR => EVENTLOG_ERROR_TYPE,
            Level::WARN => EVENTLOG_WARNING_TYPE,
            _ if lifecycle => EVENTLOG_INFORMATION_TYPE,
            _ => return,
        };
        let skipped = {
            let mut budget = self.budget.lock().unwrap_or_else(|e| e.into_inner());
            match budget.check(Instant::now(), lifecycle) {
                Verdict::Skip => return,
                Verdict::Write { skipped } => skipped,
            }
        };
        if skipped > 0 {
            self.report(
                EVENTLOG_WARNING_TYPE,
                &format!(
                    "[{}] {skipped} log events were not written to the event log: more than {} a minute",
                    self.prefix,
                    super::limit::PER_MINUTE
                ),
            );
        }
        let mut text = EventText::default();
        event.record(&mut text);
        self.report(kind, &text.finish(&self.prefix));
    }
}

fn wide(s: &str) -> Vec<u16> {
    s.encode_utf16().chain(std::iter::once(0)).collect()
}
