//! Turning a value into a state, and saying why in words.

use crate::model::{Limits, State};

/// Units of readings, as the reading model spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Percent,
    Bytes,
    BytesPerSec,
    Millis,
    Secs,
    Days,
    None,
}

impl Unit {
    /// The unit string a [`outpost_shared::model::Sample`] carries.
    pub fn as_str(self) -> Option<&'static str> {
        match self {
            Unit::Percent => Some("%"),
            Unit::Bytes => Some("B"),
            Unit::BytesPerSec => Some("B/s"),
            Unit::Millis => Some("ms"),
            Unit::Secs => Some("s"),
            Unit::Days => Some("d"),
            Unit::None => None,
        }
    }

    /// A value in this unit the way a person reads it: `93.1%`, `1.5 GiB`, `230 ms`, `2h 5m`.
    pub fn show(self, v: f64) -> String {
        match self {
            Unit::Percent => format!("{v:.1}%"),
            Unit::Bytes => human_bytes(v),
            Unit::BytesPerSec => format!("{}/s", human_bytes(v)),
            Unit::Millis => format!("{v:.0} ms"),
            Unit::Secs if v.is_finite() && v >= 0.0 => {
                humantime::format_duration(std::time::Duration::from_secs(v.round() as u64)).to_string()
            }
            Unit::Secs => format!("{v:.0}s"),
            Unit::Days => format!("{v:.1} days"),
            Unit::None => format!("{}", (v * 100.0).round() / 100.0),
        }
    }
}

fn human_bytes(v: f64) -> String {
    const STEPS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut x = v;
    let mut i = 0;
    while x.abs() >= 1024.0 && i + 1 < STEPS.len() {
        x /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{x:.0} B")
    } else {
        format!("{x:.1} {}", STEPS[i])
    }
}

/// `warn` and `error` limits on one value. Upwards by default (high is bad); `below` for values
/// where low is bad, such as free bytes or certificate days left. A value equal to a limit counts
/// as having reached it.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Thresholds {
    pub warn: Option<f64>,
    pub error: Option<f64>,
    pub below: bool,
}

impl Thresholds {
    pub const NONE: Thresholds = Thresholds { warn: None, error: None, below: false };

    /// What readings judged by these thresholds carry for the dashboard's threshold lines; None
    /// when there is no limit to draw.
    pub fn limits(&self) -> Option<Limits> {
        (self.warn.is_some() || self.error.is_some()).then_some(Limits {
            warn: self.warn,
            error: self.error,
            below: self.below,
        })
    }

    fn reached(&self, v: f64, limit: Option<f64>) -> bool {
        match limit {
            Some(l) if self.below => v <= l,
            Some(l) => v >= l,
            None => false,
        }
    }

    pub fn state(&self, v: f64) -> State {
        if self.reached(v, self.error) {
            State::Error
        } else if self.reached(v, self.warn) {
            State::Warn
        } else {
            State::Ok
        }
    }

    /// The state of `v`, and `what` with the reason appended when a limit is reached:
    /// `disk / 93.1% used (error above 90.0%)`.
    pub fn judge(&self, v: f64, unit: Unit, what: String) -> (State, String) {
        let state = self.state(v);
        let limit = match state {
            State::Error => self.error,
            State::Warn => self.warn,
            _ => None,
        };
        match limit {
            Some(l) => {
                let dir = if self.below { "below" } else { "above" };
                (state, format!("{what} ({state} {dir} {})", unit.show(l)))
            }
            None => (state, what),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upward_thresholds() {
        let t = Thresholds { warn: Some(80.0), error: Some(90.0), below: false };
        assert_eq!(t.state(10.0), State::Ok);
        assert_eq!(t.state(80.0), State::Warn);
        assert_eq!(t.state(90.0), State::Error);
        let (s, m) = t.judge(93.1, Unit::Percent, "disk / 93.1% used".into());
        assert_eq!(s, State::Error);
        assert_eq!(m, "disk / 93.1% used (error above 90.0%)");
        assert_eq!(t.judge(50.0, Unit::Percent, "fine".into()), (State::Ok, "fine".to_string()));
    }

    #[test]
    fn downward_thresholds() {
        let t = Thresholds { warn: Some(14.0), error: Some(7.0), below: true };
        assert_eq!(t.state(3650.0), State::Ok);
        assert_eq!(t.state(10.0), State::Warn);
        assert_eq!(t.state(7.0), State::Error);
        let (s, m) = t.judge(10.0, Unit::Days, "certificate".into());
        assert_eq!(s, State::Warn);
        assert_eq!(m, "certificate (warn below 14.0 days)");
    }

    #[test]
    fn only_one_limit_and_none() {
        let t = Thresholds { warn: None, error: Some(5.0), below: false };
        assert_eq!(t.state(4.9), State::Ok);
        assert_eq!(t.state(5.0), State::Error);
        assert_eq!(Thresholds::NONE.state(1e12), State::Ok);
    }

    #[test]
    fn units_print_for_people() {
        assert_eq!(Unit::Bytes.show(1536.0), "1.5 KiB");
        assert_eq!(Unit::Bytes.show(12.0), "12 B");
        assert_eq!(Unit::BytesPerSec.show(3.0 * 1024.0 * 1024.0), "3.0 MiB/s");
        assert_eq!(Unit::Secs.show(7500.0), "2h 5m");
        assert_eq!(Unit::Millis.show(12.4), "12 ms");
    }
}
