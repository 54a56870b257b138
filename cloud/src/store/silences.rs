//! What silences alerts: acknowledgements of a sensor's problem and maintenance windows over a
//! machine or a network ([`SilenceStore`], on sled and on PostgreSQL). The rules that use them
//! are in `crate::silences`; this is only what is kept.
//!
//! **Durability.** Every write is durable when it returns `Ok`: on sled after the database's
//! group-commit flush, on PostgreSQL after COMMIT.

use crate::error::CloudError;
use chrono::{DateTime, Datelike, Duration, NaiveTime, TimeZone, Utc, Weekday};
use outpost_shared::model::State;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Someone is on a sensor's problem: alerts about it stop until the sensor changes or recovers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub machine: String,
    pub sensor: String,
    /// The state acknowledged.
    pub state: State,
    /// When the reading on screen was taken: a change after it ends the acknowledgement.
    pub reading_ts: DateTime<Utc>,
    pub comment: String,
    /// Who (`user:…`, `token:…`, `local-admin`).
    pub by: String,
    pub at: DateTime<Utc>,
}

/// What a maintenance window covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Machine(String),
    Network(String),
}

/// When a maintenance window is open. Times of day and weekdays are UTC (the dashboard converts
/// from the browser's time zone when the window is made).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// Once, from `start` until `end`.
    Once { start: DateTime<Utc>, end: DateTime<Utc> },
    /// Every week on `days`, from `start` (`HH:MM`) for `minutes`.
    Weekly { days: Vec<Weekday>, start: String, minutes: u32 },
}

/// Longest weekly window: a whole week (longer would overlap itself).
pub const MAX_WEEKLY_MINUTES: u32 = 7 * 24 * 60;
/// Longest one-off window.
pub const MAX_ONCE_DAYS: i64 = 400;
/// Longest comment kept.
pub const MAX_COMMENT: usize = 500;

impl Schedule {
    /// Checks the fields; the error names the one to fix.
    pub fn check(&self, now: DateTime<Utc>) -> Result<(), String> {
        match self {
            Schedule::Once { start, end } => {
                if end <= start {
                    return Err("once.end must be after once.start".into());
                }
                if *end <= now {
                    return Err("once.end is in the past: the window would never be open".into());
                }
                if *end - *start > Duration::days(MAX_ONCE_DAYS) {
                    return Err(format!("a one-off window lasts at most {MAX_ONCE_DAYS} days"));
                }
            }
            Schedule::Weekly { days, start, minutes } => {
                if days.is_empty() {
                    return Err("weekly.days must name at least one day (\"mon\" … \"sun\")".into());
                }
                if days.len() > 7 {
                    return Err("weekly.days names a day twice".into());
                }
                parse_time(start)?;
                if *minutes == 0 || *minutes > MAX_WEEKLY_MINUTES {
                    return Err(format!("weekly.minutes must be 1 to {MAX_WEEKLY_MINUTES}"));
                }
            }
        }
        Ok(())
    }

    /// When the window that is open at `now` closes, or None when it is not open.
    pub fn open_until(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Once { start, end } => (*start <= now && now < *end).then_some(*end),
            Schedule::Weekly { days, start, minutes } => {
                let at = parse_time(start).ok()?;
                let length = Duration::minutes(i64::from(*minutes));
                // A window opened up to a week ago may still be open; the one that closes last wins.
                (0..=7)
                    .filter_map(|back| {
                        let day = (now - Duration::days(back)).date_naive();
                        if !days.contains(&day.weekday()) {
                            return None;
                        }
                        let opens = Utc.from_utc_datetime(&day.and_time(at));
                        (opens <= now && now < opens + length).then_some(opens + length)
                    })
                    .max()
            }
        }
    }
}

fn parse_time(s: &str) -> Result<NaiveTime, String> {
    NaiveTime::parse_from_str(s.trim(), "%H:%M")
        .map_err(|_| format!("weekly.start must be HH:MM (UTC), got {s:?}"))
}

/// A maintenance window: problems in it are shown as such and raise no alert mail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub id: String,
    pub scope: Scope,
    pub schedule: Schedule,
    pub comment: String,
    pub by: String,
    pub created: DateTime<Utc>,
}

/// Acknowledgements and maintenance windows. See the module docs for durability.
#[async_trait::async_trait]
pub trait SilenceStore: Send + Sync + 'static {
    /// Every acknowledgement.
    async fn acks(&self) -> Result<Vec<Ack>, CloudError>;
    /// Keeps `ack`, replacing the sensor's earlier one.
    async fn put_ack(&self, ack: &Ack) -> Result<(), CloudError>;
    /// Removes the sensor's acknowledgement if it acknowledged a reading taken before `before`
    /// (any, with None). Returns the one removed.
    async fn remove_ack(
        &self,
        machine: &str,
        sensor: &str,
        before: Option<DateTime<Utc>>,
    ) -> Result<Option<Ack>, CloudError>;
    /// Every maintenance window.
    async fn windows(&self) -> Result<Vec<Window>, CloudError>;
    async fn put_window(&self, window: &Window) -> Result<(), CloudError>;
    /// Removes a window; returns it.
    async fn remove_window(&self, id: &str) -> Result<Option<Window>, CloudError>;
}

/// Either engine.
pub type SilenceDb = Arc<dyn SilenceStore>;

#[cfg(test)]
mod tests {
    use super::*;

    fn at(d: u32, h: u32, m: u32) -> DateTime<Utc> {
        // 2026-11-30 is a Monday.
        Utc.with_ymd_and_hms(2026, 11, 30, 0, 0, 0).unwrap()
            + Duration::days(i64::from(d) - 30)
            + Duration::hours(h.into())
            + Duration::minutes(m.into())
    }

    #[test]
    fn a_weekly_window_opens_on_its_days_and_may_run_past_midnight() {
        let w = Schedule::Weekly { days: vec![Weekday::Sun], start: "23:00".into(), minutes: 120 };
        let sunday = 36; // 2026-12-06
        assert_eq!(w.open_until(at(sunday, 22, 59)), None);
        assert_eq!(w.open_until(at(sunday, 23, 0)), Some(at(sunday + 1, 1, 0)));
        assert_eq!(w.open_until(at(sunday + 1, 0, 59)), Some(at(sunday + 1, 1, 0)), "past midnight, Monday");
        assert_eq!(w.open_until(at(sunday + 1, 1, 0)), None);
        assert_eq!(w.open_until(at(sunday - 1, 23, 30)), None, "not on Saturday");
        let week =
            Schedule::Weekly { days: vec![Weekday::Mon], start: "00:00".into(), minutes: MAX_WEEKLY_MINUTES };
        assert!(week.open_until(at(35, 12, 0)).is_some(), "a whole-week window is always open");
    }

    #[test]
    fn a_one_off_window_is_open_from_start_until_end() {
        let w = Schedule::Once { start: at(31, 8, 0), end: at(31, 9, 0) };
        assert_eq!(w.open_until(at(31, 7, 59)), None);
        assert_eq!(w.open_until(at(31, 8, 0)), Some(at(31, 9, 0)));
        assert_eq!(w.open_until(at(31, 9, 0)), None);
    }

    #[test]
    fn bad_schedules_name_the_field() {
        let now = at(31, 0, 0);
        let check = |s: Schedule| s.check(now).unwrap_err();
        assert!(check(Schedule::Once { start: at(32, 0, 0), end: at(31, 0, 0) }).contains("once.end"));
        assert!(check(Schedule::Once { start: at(20, 0, 0), end: at(30, 0, 0) }).contains("past"));
        assert!(check(Schedule::Weekly { days: vec![], start: "01:00".into(), minutes: 5 })
            .contains("weekly.days"));
        assert!(check(Schedule::Weekly { days: vec![Weekday::Mon], start: "25:00".into(), minutes: 5 })
            .contains("weekly.start"));
        assert!(check(Schedule::Weekly { days: vec![Weekday::Mon], start: "01:00".into(), minutes: 0 })
            .contains("weekly.minutes"));
        assert!(Schedule::Weekly { days: vec![Weekday::Mon], start: "01:00".into(), minutes: 60 }
            .check(now)
            .is_ok());
    }
}
