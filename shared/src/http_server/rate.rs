//! Per-source rate limits: a token bucket per client address, in a bounded table.

use super::episode::Episode;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Sources tracked at most. When the table is full, idle sources (full buckets) are forgotten; if
/// it is still full, new sources share one overflow bucket: memory stays bounded under a flood
/// from many addresses, and the flood then limits only those new sources, not known ones.
const MAX_SOURCES: usize = 65_536;

/// The source a limit is kept for: the address, or for IPv6 its /64 (one subscriber usually
/// holds a whole /64, and could otherwise pick a fresh address for every request).
fn source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

struct Inner {
    /// Tokens added per second.
    rate: f64,
    burst: f64,
    table: Mutex<HashMap<IpAddr, Bucket>>,
    overflow: Mutex<Bucket>,
    episode: Episode,
}

/// A rate limit per source address. Cheap to clone.
#[derive(Clone)]
pub struct PerSource {
    inner: Arc<Inner>,
}

impl PerSource {
    /// `per_second` requests per second on average, `burst` at once.
    pub fn new(what: &'static str, per_second: f64, burst: u32) -> PerSource {
        let burst = f64::from(burst.max(1));
        let full = Bucket { tokens: burst, at: Instant::now() };
        PerSource {
            inner: Arc::new(Inner {
                rate: per_second,
                burst,
                table: Mutex::new(HashMap::new()),
                overflow: Mutex::new(full),
                episode: Episode::new(what),
            }),
        }
    }

    /// Takes a token for `ip`, or says how long until one is there.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let inner = &*self.inner;
        let take = |b: &mut Bucket| {
            let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
            b.tokens = (b.tokens + elapsed * inner.rate).min(inner.burst);
            b.at = now;
            if b.tokens >= 1.0 {
                b.tokens -= 1.0;
                Ok(())
            } else {
                Err(Duration::from_secs_f64((1.0 - b.tokens) / inner.rate))
            }
        };
        let key = source(ip);
        let mut table = inner.table.lock().unwrap_or_else(|p| p.into_inner());
        let outcome = if let Some(b) = table.get_mut(&key) {
            take(b)
        } else {
            if table.len() >= MAX_SOURCES {
                let (rate, burst) = (inner.rate, inner.burst);
                table.retain(|_, b| {
                    b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst
                });
            }
            if table.len() >= MAX_SOURCES {
                drop(table);
                let mut b = inner.overflow.lock().unwrap_or_else(|p| p.into_inner());
                take(&mut b)
            } else {
                let b = table.entry(key).or_insert(Bucket { tokens: inner.burst, at: now });
                take(b)
            }
        };
        match outcome {
            Ok(()) => inner.episode.clear(),
            Err(_) => {
                inner.episode.hit();
            }
        }
        outcome
    }
}

/// Middleware: 429 + Retry-After for a source over its limit. Requests without a peer address
/// (in-process tests) pass.
pub async fn limit(State(limit): State<PerSource>, req: Request, next: Next) -> Response {
    if let Some(ConnectInfo(peer)) = req.extensions().get::<ConnectInfo<SocketAddr>>() {
        if let Err(wait) = limit.check(peer.ip()) {
            return super::retry_later(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                wait,
                "too many requests from this address; retry after the time in Retry-After",
            );
        }
    }
    next.run(req).await
}
