//! A budget of events per minute. The event log is the machine's, shared with every other program:
//! a warning that repeats every second (an unreachable cloud, a failing sensor) must not push the
//! other programs' events out of it. What is over the budget is counted and said in the next event
//! that is written.

use std::time::{Duration, Instant};

/// Events written per window at most; a service's start, stop and real problems fit easily.
pub const PER_MINUTE: u32 = 30;
const WINDOW: Duration = Duration::from_secs(60);

/// What to do with one event.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Write it; the number is how many were left out since the last one written (say so).
    Write { skipped: u64 },
    /// Over the budget: leave it out (it is counted).
    Skip,
}

/// A fixed window of [`PER_MINUTE`] events, starting with the first event after the last window.
#[derive(Default)]
pub struct Budget {
    window_start: Option<Instant>,
    written: u32,
    skipped: u64,
}

impl Budget {
    /// Whether the event at `now` may be written. `always` (the service's start and stop) is
    /// written even over the budget: it is rare and says whether the service runs at all.
    pub fn check(&mut self, now: Instant, always: bool) -> Verdict {
        let expired = self.window_start.is_none_or(|s| now.saturating_duration_since(s) >= WINDOW);
        if expired {
            self.window_start = Some(now);
            self.written = 0;
        }
        if self.written >= PER_MINUTE && !always {
            self.skipped = self.skipped.saturating_add(1);
            return Verdict::Skip;
        }
        self.written = self.written.saturating_add(1);
        Verdict::Write { skipped: std::mem::take(&mut self.skipped) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_cut_to_the_budget_and_the_loss_is_said() {
        let t0 = Instant::now();
        let mut b = Budget::default();
        for i in 0..PER_MINUTE {
            assert_eq!(b.check(t0 + Duration::from_millis(i.into()), false), Verdict::Write { skipped: 0 });
        }
        for _ in 0..5 {
            assert_eq!(b.check(t0 + Duration::from_secs(10), false), Verdict::Skip);
        }
        // The service's stop goes through even now, and carries the count.
        assert_eq!(b.check(t0 + Duration::from_secs(20), true), Verdict::Write { skipped: 5 });
        assert_eq!(b.check(t0 + Duration::from_secs(30), false), Verdict::Skip);
        // A new minute: written again, saying what was left out.
        assert_eq!(b.check(t0 + Duration::from_secs(61), false), Verdict::Write { skipped: 1 });
        assert_eq!(b.check(t0 + Duration::from_secs(62), false), Verdict::Write { skipped: 0 });
    }
}
