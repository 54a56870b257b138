//! Token buckets for replies: one global, one per source address. SSDP answers are larger than the
//! requests and go to whatever source address a request claims, so an unlimited responder is an
//! amplifier. Time is passed in, so tests drive the clock.

use super::config::RateLimits;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

#[derive(Debug, Clone)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Self {
        Bucket { tokens: burst, last: now }
    }

    fn refill(&mut self, rate: f64, burst: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.last = self.last.max(now);
    }
}

/// Why a reply was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// This source used up its own budget.
    SourceLimited,
    /// All sources together used up the global budget.
    GlobalLimited,
}

/// Global plus per-source token buckets.
#[derive(Debug)]
pub struct Limiter {
    limits: RateLimits,
    global: Bucket,
    sources: HashMap<IpAddr, Bucket>,
}

impl Limiter {
    pub fn new(limits: RateLimits, now: Instant) -> Self {
        let global = Bucket::full(f64::from(limits.global_burst), now);
        Limiter { limits, global, sources: HashMap::new() }
    }

    /// Takes `cost` tokens (one per reply datagram) from both the source's and the global bucket,
    /// or from neither: a refused request must not eat into the budget of others.
    pub fn check(&mut self, source: IpAddr, cost: u32, now: Instant) -> Verdict {
        let cost = f64::from(cost);
        let l = self.limits;
        self.global.refill(f64::from(l.global_per_sec), f64::from(l.global_burst), now);
        if !self.sources.contains_key(&source) && self.sources.len() >= l.max_sources {
            self.evict(now);
        }
        let per_burst = f64::from(l.per_source_burst);
        let bucket = self.sources.entry(source).or_insert_with(|| Bucket::full(per_burst, now));
        bucket.refill(f64::from(l.per_source_per_sec), per_burst, now);
        if bucket.tokens < cost {
            return Verdict::SourceLimited;
        }
        if self.global.tokens < cost {
            return Verdict::GlobalLimited;
        }
        bucket.tokens -= cost;
        self.global.tokens -= cost;
        Verdict::Allowed
    }

    /// Makes room for a new source: first forget sources whose bucket has refilled completely
    /// (they are indistinguishable from new ones), else the one seen longest ago. A flood from many
    /// spoofed sources therefore cannot grow the map; it is still capped by the global bucket.
    fn evict(&mut self, now: Instant) {
        let l = self.limits;
        let (rate, burst) = (f64::from(l.per_source_per_sec), f64::from(l.per_source_burst));
        self.sources.retain(|_, b| {
            let mut b = b.clone();
            b.refill(rate, burst, now);
            b.tokens < burst
        });
        if self.sources.len() >= l.max_sources {
            if let Some(oldest) = self.sources.iter().min_by_key(|(_, b)| b.last).map(|(ip, _)| *ip) {
                self.sources.remove(&oldest);
            }
        }
    }

    /// Sources currently tracked.
    #[cfg(test)]
    pub fn tracked_sources(&self) -> usize {
        self.sources.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits(global_per_sec: u32, global_burst: u32, per_sec: u32, per_burst: u32) -> RateLimits {
        RateLimits {
            global_per_sec,
            global_burst,
            per_source_per_sec: per_sec,
            per_source_burst: per_burst,
            max_sources: 4,
        }
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([192, 168, 1, n])
    }

    #[test]
    fn a_flood_from_one_source_gets_burst_then_rate() {
        let t0 = Instant::now();
        let mut l = Limiter::new(limits(1000, 1000, 2, 5), t0);
        let allowed = (0..100).filter(|_| l.check(ip(1), 1, t0) == Verdict::Allowed).count();
        assert_eq!(allowed, 5, "the burst, and not one more");
        // Ten seconds of a steady flood (eight requests a second) earn exactly 2 replies a second.
        let mut allowed = 0;
        for i in 1..=80u64 {
            if l.check(ip(1), 1, t0 + Duration::from_millis(125 * i)) == Verdict::Allowed {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 20);
        // Another source is not affected by the first one's flood.
        assert_eq!(l.check(ip(2), 1, t0 + Duration::from_secs(10)), Verdict::Allowed);
    }

    #[test]
    fn the_global_bucket_caps_many_sources_together() {
        let t0 = Instant::now();
        let mut l = Limiter::new(limits(10, 10, 100, 100), t0);
        let mut verdicts = Vec::new();
        for n in 0..40 {
            verdicts.push(l.check(ip(n % 4), 1, t0));
        }
        assert_eq!(verdicts.iter().filter(|v| **v == Verdict::Allowed).count(), 10);
        assert!(verdicts[10..].iter().all(|v| *v == Verdict::GlobalLimited));
        let later = t0 + Duration::from_millis(500);
        let allowed = (0..40).filter(|n| l.check(ip(n % 4), 1, later) == Verdict::Allowed).count();
        assert_eq!(allowed, 5, "half a second at 10/s");
    }

    #[test]
    fn a_refused_request_costs_nothing_and_cost_counts_replies() {
        let t0 = Instant::now();
        let mut l = Limiter::new(limits(100, 3, 100, 100), t0);
        assert_eq!(l.check(ip(1), 2, t0), Verdict::Allowed);
        assert_eq!(l.check(ip(1), 2, t0), Verdict::GlobalLimited);
        assert_eq!(l.check(ip(1), 1, t0), Verdict::Allowed, "the refused request took no token");
    }

    #[test]
    fn the_source_map_stays_bounded() {
        let t0 = Instant::now();
        let mut l = Limiter::new(limits(1000, 1000, 1, 2), t0);
        for n in 0..200u8 {
            l.check(ip(n), 1, t0 + Duration::from_millis(u64::from(n)));
        }
        assert!(l.tracked_sources() <= 4);
        // A source evicted and seen again starts with a full bucket, like a new one.
        assert_eq!(l.check(ip(0), 2, t0 + Duration::from_secs(1)), Verdict::Allowed);
    }

    #[test]
    fn a_clock_going_backwards_does_not_mint_tokens() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut l = Limiter::new(limits(1000, 1000, 1, 1), t0);
        assert_eq!(l.check(ip(1), 1, t0), Verdict::Allowed);
        assert_eq!(l.check(ip(1), 1, t0 - Duration::from_secs(5)), Verdict::SourceLimited);
        assert_eq!(l.check(ip(1), 1, t0), Verdict::SourceLimited);
    }
}
