//! The responder: answers M-SEARCH and sends NOTIFY for a set of [`Advertisement`]s.
//!
//! Sockets: one receiving socket bound to `0.0.0.0:1900` with `SO_REUSEADDR` and `SO_REUSEPORT`
//! (so several responders and other UPnP programs share the port; each gets every multicast
//! datagram) that joins 239.255.255.250 on each LAN interface; and one sending socket per
//! interface, bound to that interface's address, with `IP_MULTICAST_IF` set to it and TTL 2 for
//! multicast and unicast alike (a requester on our own subnet is one hop away).
//!
//! Sharing the port has one limit: the kernel gives every bound socket a copy of each multicast
//! datagram, but hands a unicast datagram to port 1900 to only one of them. A unicast M-SEARCH
//! (rare: UPnP 1.1 control points use it to re-check a known device) therefore reaches only one of
//! several responders on a machine; a process that advertises several services should run one
//! responder with several [`Advertisement`]s.
//!
//! Every datagram goes through [`Core`], which holds no sockets and takes the time as an argument,
//! so its decisions are unit-tested with a fake clock: size, source (IPv4, on a served subnet,
//! port >= 1024), syntax, search target, queue space, rate limit; then a reply is scheduled after
//! a random delay in `[0, min(MX, 5)]` s for multicast searches, or at once for unicast ones.

use super::advertisement::{Advertisement, Announce, ReplyKind};
use super::config::{Interfaces, ResponderConfig};
use super::error::SsdpError;
use super::iface::{host_addresses, select, LanInterface};
use super::limiter::{Limiter, Verdict};
use super::message::{Message, Search, StartLine, MAX_MESSAGE};
use crate::backoff::Backoff;
use serde::Serialize;
use socket2::{Domain, Protocol, Socket, Type};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

/// The SSDP multicast group.
pub const SSDP_GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 255, 250);
/// The SSDP port.
pub const SSDP_PORT: u16 = 1900;
/// Largest MX honoured; UPnP says a larger MX counts as 5.
const MX_CAP: u32 = 5;
/// TTL of everything sent: UPnP's default, and enough for a requester on our subnet.
const TTL: u32 = 2;
/// UDP alone may lose the first `ssdp:alive`; it is repeated once this long (random in the range)
/// after the start instead of waiting a whole `notify_interval`.
const INITIAL_REPEAT_MS: (u64, u64) = (1000, 3000);

/// Live counters, readable while the responder runs through [`StatsHandle`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    received: AtomicU64,
    answered: AtomicU64,
    dropped_rate_limited: AtomicU64,
    dropped_foreign: AtomicU64,
    dropped_malformed: AtomicU64,
    dropped_oversized: AtomicU64,
    dropped_queue_full: AtomicU64,
    ignored: AtomicU64,
    notifies_sent: AtomicU64,
    send_errors: AtomicU64,
    interfaces: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// What the responder has done. Every datagram received ends up in exactly one of `ignored`, the
/// `dropped_*` counters, or (as one or more replies) `answered`/`send_errors`, except those still
/// waiting for their delay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ResponderStats {
    /// Datagrams read from port 1900.
    pub received: u64,
    /// Replies sent.
    pub answered: u64,
    /// Searches refused by the global or the per-source budget.
    pub dropped_rate_limited: u64,
    /// Datagrams from outside the served subnets, from ports below 1024, or not IPv4.
    pub dropped_foreign: u64,
    /// Datagrams that are not valid SSDP, or multicast searches without MX.
    pub dropped_malformed: u64,
    /// Datagrams over [`MAX_MESSAGE`] bytes.
    pub dropped_oversized: u64,
    /// Searches refused because `max_pending` replies were already waiting.
    pub dropped_queue_full: u64,
    /// Valid traffic not for us: other search targets, NOTIFYs and answers of other devices.
    pub ignored: u64,
    /// NOTIFY datagrams sent (alive and byebye).
    pub notifies_sent: u64,
    /// Replies and NOTIFYs the network refused.
    pub send_errors: u64,
    /// Interfaces currently served.
    pub interfaces: u64,
}

/// Reads the counters of a running responder.
#[derive(Debug, Clone)]
pub struct StatsHandle(Arc<Counters>);

impl StatsHandle {
    pub fn snapshot(&self) -> ResponderStats {
        let c = &self.0;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ResponderStats {
            received: g(&c.received),
            answered: g(&c.answered),
            dropped_rate_limited: g(&c.dropped_rate_limited),
            dropped_foreign: g(&c.dropped_foreign),
            dropped_malformed: g(&c.dropped_malformed),
            dropped_oversized: g(&c.dropped_oversized),
            dropped_queue_full: g(&c.dropped_queue_full),
            ignored: g(&c.ignored),
            notifies_sent: g(&c.notifies_sent),
            send_errors: g(&c.send_errors),
            interfaces: g(&c.interfaces),
        }
    }
}

/// What became of one datagram (for tests and debug logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Disposition {
    Oversized,
    Foreign,
    Malformed,
    Ignored,
    QueueFull,
    RateLimited,
    /// This many replies were scheduled, the first due at the given delay.
    Scheduled(usize, Duration),
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Pending {
    due: Instant,
    seq: u64,
    iface: Ipv4Addr,
    dest: SocketAddrV4,
    ad: usize,
    kind: ReplyKind,
}

/// A datagram ready to go: from the socket of interface `iface` to `dest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Outgoing {
    pub iface: Ipv4Addr,
    pub dest: SocketAddr,
    pub payload: String,
}

/// Decisions without sockets: which datagram gets which reply when.
pub(crate) struct Core {
    cfg: ResponderConfig,
    ads: Vec<Advertisement>,
    ifaces: Vec<LanInterface>,
    limiter: Limiter,
    pending: BinaryHeap<Reverse<Pending>>,
    seq: u64,
    rng: fastrand::Rng,
    stats: Arc<Counters>,
}

impl Core {
    pub(crate) fn new(
        cfg: ResponderConfig,
        ads: Vec<Advertisement>,
        rng: fastrand::Rng,
        now: Instant,
    ) -> Self {
        let limiter = Limiter::new(cfg.rate_limit, now);
        Core {
            cfg,
            ads,
            ifaces: Vec::new(),
            limiter,
            pending: BinaryHeap::new(),
            seq: 0,
            rng,
            stats: Arc::new(Counters::default()),
        }
    }

    pub(crate) fn stats_handle(&self) -> StatsHandle {
        StatsHandle(self.stats.clone())
    }

    pub(crate) fn set_interfaces(&mut self, ifaces: Vec<LanInterface>) {
        self.stats.interfaces.store(ifaces.len() as u64, Ordering::Relaxed);
        self.ifaces = ifaces;
    }

    fn max_age(&self) -> u32 {
        u32::try_from(self.cfg.max_age.as_secs()).unwrap_or(u32::MAX)
    }

    /// Decides about one datagram from `src`, scheduling replies if it earns any.
    pub(crate) fn on_datagram(&mut self, data: &[u8], src: SocketAddr, now: Instant) -> Disposition {
        bump(&self.stats.received);
        let d = self.decide(data, src, now);
        let c = &self.stats;
        match d {
            Disposition::Oversized => bump(&c.dropped_oversized),
            Disposition::Foreign => bump(&c.dropped_foreign),
            Disposition::Malformed => bump(&c.dropped_malformed),
            Disposition::Ignored => bump(&c.ignored),
            Disposition::QueueFull => bump(&c.dropped_queue_full),
            Disposition::RateLimited => bump(&c.dropped_rate_limited),
            Disposition::Scheduled(..) => {}
        }
        d
    }

    fn decide(&mut self, data: &[u8], src: SocketAddr, now: Instant) -> Disposition {
        if data.len() > MAX_MESSAGE {
            return Disposition::Oversized;
        }
        let SocketAddr::V4(src) = src else { return Disposition::Foreign };
        // Ports below 1024 belong to services (DNS, chargen, NTP...): a search "from" one is a
        // reflection attempt with a spoofed source, never a real control point.
        if src.port() < 1024 {
            return Disposition::Foreign;
        }
        let Some(iface) = self.ifaces.iter().find(|i| i.contains(*src.ip())).map(|i| i.addr) else {
            return Disposition::Foreign;
        };
        let Ok(msg) = Message::parse(data) else { return Disposition::Malformed };
        if msg.start != StartLine::Search {
            return Disposition::Ignored;
        }
        let Ok(search) = Search::from_message(&msg) else { return Disposition::Malformed };
        let multicast = search.is_multicast();
        if multicast && search.mx.is_none() {
            // UPnP: a multicast M-SEARCH without MX shall be dropped.
            return Disposition::Malformed;
        }
        let replies: Vec<(usize, ReplyKind)> = self
            .ads
            .iter()
            .enumerate()
            .filter_map(|(i, ad)| {
                if search.st == ad.st || search.st == "ssdp:all" {
                    Some((i, ReplyKind::Service))
                } else if search.st.strip_prefix("uuid:") == Some(ad.uuid.as_str()) {
                    Some((i, ReplyKind::Uuid))
                } else {
                    None
                }
            })
            .collect();
        if replies.is_empty() {
            return Disposition::Ignored;
        }
        if self.pending.len() + replies.len() > self.cfg.max_pending {
            return Disposition::QueueFull;
        }
        let cost = u32::try_from(replies.len()).unwrap_or(u32::MAX);
        if self.limiter.check(IpAddr::V4(*src.ip()), cost, now) != Verdict::Allowed {
            return Disposition::RateLimited;
        }
        let delay = if multicast {
            let mx_ms = u64::from(search.mx.unwrap_or(0).min(MX_CAP)) * 1000;
            Duration::from_millis(self.rng.u64(0..=mx_ms))
        } else {
            // Unicast searches are answered within a second, UPnP says; at once is simplest.
            Duration::ZERO
        };
        for (ad, kind) in &replies {
            self.seq += 1;
            self.pending.push(Reverse(Pending {
                due: now + delay,
                seq: self.seq,
                iface,
                dest: src,
                ad: *ad,
                kind: *kind,
            }));
        }
        Disposition::Scheduled(replies.len(), delay)
    }

    /// When the next reply is due.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.pending.peek().map(|Reverse(p)| p.due)
    }

    /// Replies due at `now`, rendered. Replies for an interface that went away are dropped.
    pub(crate) fn take_due(&mut self, now: Instant) -> Vec<Outgoing> {
        let date = chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S GMT").to_string();
        let max_age = self.max_age();
        let mut out = Vec::new();
        while let Some(Reverse(p)) = self.pending.peek() {
            if p.due > now {
                break;
            }
            let Some(Reverse(p)) = self.pending.pop() else { break };
            if !self.ifaces.iter().any(|i| i.addr == p.iface) {
                bump(&self.stats.send_errors);
                continue;
            }
            let payload = self.ads[p.ad].response(p.kind, p.iface, max_age, &date);
            out.push(Outgoing { iface: p.iface, dest: SocketAddr::V4(p.dest), payload });
        }
        out
    }

    /// One NOTIFY per advertisement for each of `ifaces`, addressed to `group`.
    pub(crate) fn notifies(
        &self,
        announce: Announce,
        ifaces: &[LanInterface],
        group: SocketAddr,
    ) -> Vec<Outgoing> {
        let max_age = self.max_age();
        let mut out = Vec::new();
        for iface in ifaces {
            for ad in &self.ads {
                out.push(Outgoing {
                    iface: iface.addr,
                    dest: group,
                    payload: ad.notify(announce, iface.addr, max_age),
                });
            }
        }
        out
    }

    fn jitter(&mut self, base: Duration, low: f64) -> Duration {
        base.mul_f64(low + (1.0 - low) * self.rng.f64())
    }
}

/// Where the sockets go; the real responder uses [`Setup::real`], unit tests a loopback variant.
pub(crate) struct Setup {
    /// Re-enumerate interfaces with this spec; `None` keeps `fixed` for good.
    pub spec: Option<Interfaces>,
    pub fixed: Vec<LanInterface>,
    pub recv_addr: SocketAddrV4,
    /// Join the SSDP group on each interface (off for loopback tests, which use no multicast).
    pub join: bool,
    /// Where NOTIFYs go.
    pub group: SocketAddr,
}

impl Setup {
    fn real(spec: Interfaces) -> Self {
        Setup {
            spec: Some(spec),
            fixed: Vec::new(),
            recv_addr: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, SSDP_PORT),
            join: true,
            group: SocketAddr::V4(SocketAddrV4::new(SSDP_GROUP, SSDP_PORT)),
        }
    }
}

/// A bound responder; [`Responder::run`] serves until shutdown.
pub struct Responder {
    core: Core,
    spec: Option<Interfaces>,
    fixed: Vec<LanInterface>,
    recv: UdpSocket,
    join: bool,
    group: SocketAddr,
    senders: HashMap<Ipv4Addr, UdpSocket>,
}

impl Responder {
    /// Validates `cfg` and `ads` and binds port 1900. Interfaces are joined when [`Self::run`]
    /// starts; having none yet is not an error (the responder waits for one, rescanning every
    /// `rescan_interval`), but a port it cannot bind is.
    pub async fn bind(cfg: ResponderConfig, ads: Vec<Advertisement>) -> Result<Self, SsdpError> {
        let setup = Setup::real(cfg.interfaces.clone());
        Self::bind_with(cfg, ads, setup, fastrand::Rng::new())
    }

    pub(crate) fn bind_with(
        cfg: ResponderConfig,
        ads: Vec<Advertisement>,
        setup: Setup,
        rng: fastrand::Rng,
    ) -> Result<Self, SsdpError> {
        let mut problems = Vec::new();
        cfg.check("ssdp", &mut problems);
        if !problems.is_empty() {
            let lines: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
            return Err(SsdpError::Config(lines.join("\n")));
        }
        if ads.is_empty() {
            return Err(SsdpError::Advertisement { field: "st", reason: "nothing to advertise".into() });
        }
        for ad in &ads {
            ad.validate()?;
        }
        let most = u32::try_from(ads.len()).unwrap_or(u32::MAX);
        if cfg.rate_limit.per_source_burst < most || cfg.rate_limit.global_burst < most {
            return Err(SsdpError::Config(format!(
                "rate_limit bursts must be at least {most}, the replies one `ssdp:all` search earns"
            )));
        }
        let recv = bind_receiver(setup.recv_addr)?;
        let core = Core::new(cfg, ads, rng, Instant::now());
        Ok(Responder {
            core,
            spec: setup.spec,
            fixed: setup.fixed,
            recv,
            join: setup.join,
            group: setup.group,
            senders: HashMap::new(),
        })
    }

    /// Counters, readable while [`Self::run`] runs.
    pub fn stats(&self) -> StatsHandle {
        self.core.stats_handle()
    }

    /// The address port 1900 was bound to.
    pub fn local_addr(&self) -> Result<SocketAddr, SsdpError> {
        self.recv.local_addr().map_err(|source| SsdpError::Socket { what: "local address", source })
    }

    /// Serves until `shutdown` completes, then sends `ssdp:byebye` on every interface and returns
    /// the final counters.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<ResponderStats, SsdpError> {
        let wanted = match &self.spec {
            Some(spec) => scan(spec),
            None => self.fixed.clone(),
        };
        self.apply_interfaces(wanted, true).await;
        let stats = self.stats();
        let (lo, hi) = INITIAL_REPEAT_MS;
        let mut next_notify = Instant::now() + Duration::from_millis(self.core.rng.u64(lo..hi));
        let mut next_rescan = Instant::now() + self.core.cfg.rescan_interval;
        let mut recv_backoff = Backoff::new(Duration::from_millis(10), Duration::from_secs(1), 0.5)
            .expect("constant backoff settings are valid");
        let mut buf = vec![0u8; MAX_MESSAGE + 1];
        tokio::pin!(shutdown);
        // Biased, with the socket last: a flood keeps the socket always readable, and must not
        // starve the replies, the NOTIFY timer or the rescan.
        loop {
            let due = self.core.next_due();
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                _ = sleep_until(due.unwrap_or(next_notify)), if due.is_some() => {
                    for out in self.core.take_due(Instant::now()) {
                        self.send(out, false).await;
                    }
                }
                _ = sleep_until(next_notify) => {
                    let ifaces = self.core.ifaces.clone();
                    self.announce(Announce::Alive, &ifaces).await;
                    next_notify = Instant::now() + self.core.jitter(self.core.cfg.notify_interval, 0.8);
                }
                _ = sleep_until(next_rescan), if self.spec.is_some() => {
                    if let Some(spec) = &self.spec {
                        let wanted = scan(spec);
                        self.apply_interfaces(wanted, false).await;
                    }
                    next_rescan = Instant::now() + self.core.cfg.rescan_interval;
                }
                r = self.recv.recv_from(&mut buf) => match r {
                    Ok((n, src)) => {
                        recv_backoff.reset();
                        let d = self.core.on_datagram(&buf[..n], src, Instant::now());
                        tracing::trace!(%src, bytes = n, disposition = ?d, "ssdp datagram");
                    }
                    Err(e) if is_truncation(&e) => {
                        self.core.on_datagram(&buf, SocketAddr::from(([0, 0, 0, 0], 0)), Instant::now());
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reading SSDP socket failed");
                        tokio::time::sleep(recv_backoff.next_delay()).await;
                    }
                },
            }
        }
        let ifaces = self.core.ifaces.clone();
        self.announce(Announce::ByeBye, &ifaces).await;
        let final_stats = stats.snapshot();
        tracing::info!(?final_stats, "SSDP responder stopped");
        Ok(final_stats)
    }

    async fn announce(&mut self, announce: Announce, ifaces: &[LanInterface]) {
        for out in self.core.notifies(announce, ifaces, self.group) {
            self.send(out, true).await;
        }
    }

    async fn send(&self, out: Outgoing, notify: bool) {
        let c = &self.core.stats;
        let Some(sock) = self.senders.get(&out.iface) else {
            bump(&c.send_errors);
            return;
        };
        match sock.send_to(out.payload.as_bytes(), out.dest).await {
            Ok(_) if notify => bump(&c.notifies_sent),
            Ok(_) => bump(&c.answered),
            Err(e) => {
                bump(&c.send_errors);
                tracing::debug!(error = %e, iface = %out.iface, dest = %out.dest, "SSDP send failed");
            }
        }
    }

    /// Serves exactly `wanted` from now on: leaves and closes what went away, opens and joins what
    /// is new (and announces it at once). An interface that cannot be set up is left out and
    /// tried again at the next rescan.
    async fn apply_interfaces(&mut self, wanted: Vec<LanInterface>, first: bool) {
        let old = std::mem::take(&mut self.core.ifaces);
        let mut kept = Vec::new();
        for iface in &old {
            if wanted.contains(iface) {
                kept.push(iface.clone());
            } else {
                if self.join {
                    let _ = socket2::SockRef::from(&self.recv).leave_multicast_v4(&SSDP_GROUP, &iface.addr);
                }
                self.senders.remove(&iface.addr);
                tracing::info!(%iface, "SSDP: no longer answering on interface");
            }
        }
        let mut added = Vec::new();
        for iface in wanted {
            if kept.contains(&iface) || added.contains(&iface) {
                continue;
            }
            match self.open(&iface) {
                Ok(sender) => {
                    self.senders.insert(iface.addr, sender);
                    tracing::info!(%iface, "SSDP: answering on interface");
                    added.push(iface);
                }
                Err(e) => tracing::warn!(%iface, error = %e, "SSDP: cannot serve interface; will retry"),
            }
        }
        kept.extend(added.iter().cloned());
        if kept.is_empty() && (first || !old.is_empty()) {
            tracing::warn!(
                "SSDP: no private or link-local IPv4 interface to answer on; waiting for one \
                 (set ssdp.interfaces to choose explicitly)"
            );
        }
        self.core.set_interfaces(kept);
        self.announce(Announce::Alive, &added).await;
    }

    fn open(&self, iface: &LanInterface) -> Result<UdpSocket, SsdpError> {
        if self.join {
            match socket2::SockRef::from(&self.recv).join_multicast_v4(&SSDP_GROUP, &iface.addr) {
                Ok(()) => {}
                // Joined already (e.g. the same address listed twice): fine.
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {}
                Err(source) => return Err(SsdpError::Socket { what: "join 239.255.255.250", source }),
            }
        }
        bind_sender(iface.addr)
    }
}

/// Binds port 1900 (or `addr` in tests) so that other responders can bind it too.
fn bind_receiver(addr: SocketAddrV4) -> Result<UdpSocket, SsdpError> {
    let sock = |what, source| SsdpError::Socket { what, source };
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(|e| sock("create", e))?;
    s.set_reuse_address(true).map_err(|e| sock("SO_REUSEADDR", e))?;
    #[cfg(all(unix, not(any(target_os = "solaris", target_os = "illumos"))))]
    s.set_reuse_port(true).map_err(|e| sock("SO_REUSEPORT", e))?;
    // Without this, Linux delivers group traffic from every interface any socket on the machine
    // joined, including ones we decided not to serve.
    #[cfg(target_os = "linux")]
    s.set_multicast_all_v4(false).map_err(|e| sock("IP_MULTICAST_ALL", e))?;
    s.set_nonblocking(true).map_err(|e| sock("non-blocking", e))?;
    s.bind(&addr.into()).map_err(|source| SsdpError::Bind { addr: addr.into(), source })?;
    UdpSocket::from_std(s.into()).map_err(|e| sock("register with tokio", e))
}

/// A socket that sends from interface address `addr` only.
fn bind_sender(addr: Ipv4Addr) -> Result<UdpSocket, SsdpError> {
    let sock = |what, source| SsdpError::Socket { what, source };
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(|e| sock("create", e))?;
    s.set_multicast_if_v4(&addr).map_err(|e| sock("IP_MULTICAST_IF", e))?;
    s.set_multicast_ttl_v4(TTL).map_err(|e| sock("IP_MULTICAST_TTL", e))?;
    // Searchers and other responders on this machine hear our NOTIFYs too.
    s.set_multicast_loop_v4(true).map_err(|e| sock("IP_MULTICAST_LOOP", e))?;
    s.set_ttl(TTL).map_err(|e| sock("IP_TTL", e))?;
    s.set_nonblocking(true).map_err(|e| sock("non-blocking", e))?;
    let local = SocketAddrV4::new(addr, 0);
    s.bind(&local.into()).map_err(|source| SsdpError::Bind { addr: local.into(), source })?;
    UdpSocket::from_std(s.into()).map_err(|e| sock("register with tokio", e))
}

fn scan(spec: &Interfaces) -> Vec<LanInterface> {
    let (chosen, skipped) = select(spec, &host_addresses());
    for s in &skipped {
        tracing::debug!(reason = %s, "SSDP: interface address not served");
    }
    chosen
}

/// Windows reports a datagram larger than the buffer as an error (WSAEMSGSIZE) instead of
/// truncating it; it is an oversized datagram, not a socket failure.
fn is_truncation(e: &std::io::Error) -> bool {
    cfg!(windows) && e.raw_os_error() == Some(10040)
}

async fn sleep_until(t: Instant) {
    tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await
}

/// Binds and runs a responder until `shutdown` completes; see [`Responder`].
pub async fn run_responder(
    cfg: ResponderConfig,
    ads: Vec<Advertisement>,
    shutdown: impl Future<Output = ()>,
) -> Result<ResponderStats, SsdpError> {
    Responder::bind(cfg, ads).await?.run(shutdown).await
}
