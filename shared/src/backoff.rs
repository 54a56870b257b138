//! The one retry policy: jittered exponential backoff, used for HTTP, SSDP and serial reconnects.

use std::time::Duration;

/// Invalid backoff settings, caught at construction rather than at the first failure.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BackoffError {
    #[error("backoff minimum must be above zero")]
    ZeroMin,
    #[error("backoff maximum ({max:?}) must not be below the minimum ({min:?})")]
    MaxBelowMin { min: Duration, max: Duration },
    #[error("backoff jitter must be between 0 and 1, got {0}")]
    Jitter(String),
}

/// Exponential backoff with "full-ish" jitter: the n-th delay is drawn from
/// `[d * (1 - jitter), d]` where `d = min(max, min * 2^n)`. Jitter keeps a fleet of hubs that lost
/// the cloud at the same moment from all coming back at the same moment.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    jitter: f64,
    attempt: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration, jitter: f64) -> Result<Self, BackoffError> {
        if min.is_zero() {
            return Err(BackoffError::ZeroMin);
        }
        if max < min {
            return Err(BackoffError::MaxBelowMin { min, max });
        }
        if !(0.0..=1.0).contains(&jitter) {
            return Err(BackoffError::Jitter(jitter.to_string()));
        }
        Ok(Backoff { min, max, jitter, attempt: 0 })
    }

    /// The delay before the next try; each call doubles the base up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let factor = 2f64.powi(self.attempt.min(30) as i32);
        let base = (self.min.as_secs_f64() * factor).min(self.max.as_secs_f64());
        self.attempt = self.attempt.saturating_add(1);
        let lower = base * (1.0 - self.jitter);
        Duration::from_secs_f64(lower + fastrand::f64() * (base - lower))
    }

    /// Back to the shortest delay, after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Failures since the last success.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

/// The longest wait another side may ask for (Retry-After); more is taken as this. An answer
/// asking for days is broken or hostile (error answers carry no MAC), and must not silence a
/// machine's uplink until its buffer overflows.
pub const MAX_ASKED_WAIT: Duration = Duration::from_secs(3600);

/// A wait the other side asked for (Retry-After), at most [`MAX_ASKED_WAIT`], lengthened by up to
/// half at random: a fleet turned away at the same moment with the same wait would otherwise come
/// back at the same moment, and be turned away together again.
pub fn spread(asked: Duration) -> Duration {
    asked.min(MAX_ASKED_WAIT).mul_f64(1.0 + fastrand::f64() * 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_asked_wait_is_kept_and_spread() {
        let asked = Duration::from_secs(5);
        let waits: Vec<Duration> = (0..200).map(|_| spread(asked)).collect();
        assert!(waits.iter().all(|w| *w >= asked && *w <= asked.mul_f64(1.5)), "{waits:?}");
        let (lo, hi) = (waits.iter().min().unwrap(), waits.iter().max().unwrap());
        assert!(*hi - *lo > Duration::from_secs(1), "not spread: {lo:?}..{hi:?}");
        // An absurd wait is capped, not a panic or a silence of years.
        let absurd = spread(Duration::from_secs(u64::MAX));
        assert!(absurd >= MAX_ASKED_WAIT && absurd <= MAX_ASKED_WAIT.mul_f64(1.5), "{absurd:?}");
    }

    #[test]
    fn delays_grow_stay_bounded_and_reset() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2), 0.5).unwrap();
        let d: Vec<Duration> = (0..10).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(50) && d[0] <= Duration::from_millis(100));
        assert!(d[3] >= Duration::from_millis(400) && d[3] <= Duration::from_millis(800));
        assert!(d.iter().all(|x| *x <= Duration::from_secs(2)));
        assert!(d[9] >= Duration::from_secs(1));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn bad_settings_are_refused() {
        assert_eq!(
            Backoff::new(Duration::ZERO, Duration::from_secs(1), 0.1).unwrap_err(),
            BackoffError::ZeroMin
        );
        assert!(Backoff::new(Duration::from_secs(2), Duration::from_secs(1), 0.1).is_err());
        assert!(Backoff::new(Duration::from_secs(1), Duration::from_secs(1), 1.5).is_err());
    }
}
