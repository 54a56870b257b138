//! One event as the text an operator reads in the event log: `[role] message key=value …`, the way
//! the stderr log shows it, cut to a length the event log accepts.

use std::fmt::{self, Write};
use tracing::field::{Field, Visit};

/// The longest text written (in characters). `ReportEventW` refuses an insertion string over
/// 31,839 characters; a log line that long is a bug somewhere, and the start says what it was.
pub const MAX_CHARS: usize = 8_000;

/// Collects an event's fields: the `message` first, then the others as `key=value` in the order
/// the event gives them.
#[derive(Default)]
pub struct EventText {
    message: String,
    fields: String,
}

impl Visit for EventText {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else if value.contains([' ', '"', '=']) || value.is_empty() {
            // Quoted, but Windows paths keep single backslashes (Debug would double them).
            let _ = write!(self.fields, " {}=\"{}\"", field.name(), value.replace('"', "\\\""));
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}

impl EventText {
    /// The text: `[prefix] message key=value …`, at most [`MAX_CHARS`] characters (a cut text ends
    /// with `…`), without NUL characters (the API takes NUL-terminated strings: one inside would
    /// cut the text silently).
    pub fn finish(self, prefix: &str) -> String {
        let mut text = String::with_capacity(prefix.len() + 3 + self.message.len() + self.fields.len());
        if !prefix.is_empty() {
            let _ = write!(text, "[{prefix}] ");
        }
        text.push_str(self.message.trim_end());
        text.push_str(&self.fields);
        let mut text = text.replace('\0', "\u{FFFD}");
        if let Some((cut, _)) = text.char_indices().nth(MAX_CHARS - 1) {
            text.truncate(cut);
            text.push('…');
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing::subscriber::with_default;
    use tracing::{Event, Subscriber};

    /// The text of every event logged inside `f`, as the event log layer would write it.
    fn texts(f: impl FnOnce()) -> Vec<String> {
        struct Collect(Arc<Mutex<Vec<String>>>);
        impl Subscriber for Collect {
            fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
                true
            }
            fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
                tracing::span::Id::from_u64(1)
            }
            fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
            fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
            fn event(&self, event: &Event<'_>) {
                let mut t = EventText::default();
                event.record(&mut t);
                self.0.lock().unwrap().push(t.finish("sensorhub"));
            }
            fn enter(&self, _: &tracing::span::Id) {}
            fn exit(&self, _: &tracing::span::Id) {}
        }
        let seen = Arc::new(Mutex::new(Vec::new()));
        with_default(Collect(seen.clone()), f);
        let v = seen.lock().unwrap().clone();
        v
    }

    #[test]
    fn message_comes_first_then_the_fields() {
        let got = texts(|| {
            let error = "connection refused";
            tracing::warn!(url = "https://cloud.example", path = "C:\\Program Files", %error, attempt = 3, "upload failed");
        });
        // Strings with spaces quoted (backslashes kept single), Display values (`%`) as they are.
        assert_eq!(
            got,
            [
                r#"[sensorhub] upload failed url=https://cloud.example path="C:\Program Files" error=connection refused attempt=3"#
            ]
        );
    }

    #[test]
    fn long_text_is_cut_and_nul_replaced() {
        let got = texts(|| {
            let long = "x".repeat(MAX_CHARS * 2);
            tracing::error!(detail = %long, "a\0b");
        });
        let text = &got[0];
        assert_eq!(text.chars().count(), MAX_CHARS);
        assert!(text.ends_with('…'));
        assert!(text.starts_with("[sensorhub] a\u{FFFD}b detail="), "{text}");
        assert!(!text.contains('\0'));
    }
}
