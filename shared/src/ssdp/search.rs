//! Searching: one multicast M-SEARCH, then the answers for a total deadline, collected under caps.
//!
//! The search is sent from one socket bound to 0.0.0.0, so the kernel picks one interface (the
//! route for 239.255.255.250, normally the default route), IPv4 only, as `ssdp-client` did; the
//! search target is still checked with its parser. The answers are read here with their source
//! address, because anyone on the LAN can answer, and answer ten thousand times: a search keeps at
//! most [`MAX_ANSWERS`] answers, at most [`MAX_PER_SOURCE`] from any one address, from at most
//! [`MAX_SOURCES`] addresses, deduplicated by USN, and ends as soon as it has its fill. A found
//! LOCATION is still only a candidate: the uplink trusts a connector only after checking its key
//! (see the architecture's Trust section), and asks the caller's filter first
//! ([`search_where`]) so that answers it would never use do not take the places of those it would.

use super::error::SsdpError;
use super::message::{search_request, Message, Response, MAX_MESSAGE};
use super::responder::{SSDP_GROUP, SSDP_PORT};
use serde::Serialize;
use ssdp_client::SearchTarget;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::net::UdpSocket;

/// Most answers one search keeps; the rest are ignored (a LAN has a handful of connectors).
pub const MAX_ANSWERS: usize = 32;
/// Most answers one source address contributes to one search (a machine may run a connector and a
/// hub, and answer on a couple of interfaces; more is a flood).
pub const MAX_PER_SOURCE: usize = 4;
/// Most distinct source addresses one search listens to.
pub const MAX_SOURCES: usize = 256;

/// Ignored answers in one search from which it is reported as a flood: duplicates over a few
/// interfaces and other services' answers stay far below.
const FLOOD_SIGN: u64 = 256;

/// Multicast TTL of the search: the LAN and one router hop, as the responder uses.
const TTL: u32 = 2;

/// One service that answered a search.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Found {
    /// LOCATION: an http(s) URL.
    pub location: String,
    /// USN, e.g. `uuid:...::urn:outpost-dev:service:connector:1`; unique per service instance.
    pub usn: String,
    /// SERVER as the service reported it.
    pub server: String,
    /// ST of the answer.
    pub st: String,
    /// The `uuid:` part of the USN, without the prefix, when present.
    pub uuid: Option<String>,
    /// Where the answer came from.
    pub source: Option<SocketAddr>,
}

/// Multicasts one M-SEARCH for `st` and collects answers for `wait` in total. MX is set to leave
/// about a second for the answers to travel (at least 1, at most 5). Returns the services found,
/// deduplicated by USN, in the order they answered; an empty list when none did.
pub async fn search(st: &str, wait: Duration) -> Result<Vec<Found>, SsdpError> {
    search_where(st, wait, |_| true).await
}

/// Like [`search`], keeping only the answers `wanted` accepts; the others take no place under the
/// caps. A hub passes the ids of the connectors its receipt authorises.
pub async fn search_where(
    st: &str,
    wait: Duration,
    wanted: impl Fn(&Found) -> bool,
) -> Result<Vec<Found>, SsdpError> {
    let target: SearchTarget = st.parse().map_err(|_| SsdpError::SearchTarget { st: st.to_string() })?;
    let mx = wait.as_secs().saturating_sub(1).clamp(1, 5) as u32;
    let any = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
    let socket = UdpSocket::bind(any).await.map_err(|source| SsdpError::Bind { addr: any, source })?;
    socket
        .set_multicast_ttl_v4(TTL)
        .map_err(|source| SsdpError::Socket { what: "IP_MULTICAST_TTL", source })?;
    let host = format!("{SSDP_GROUP}:{SSDP_PORT}");
    let request = search_request(st, mx, &host);
    socket
        .send_to(request.as_bytes(), (SSDP_GROUP, SSDP_PORT))
        .await
        .map_err(|source| SsdpError::Socket { what: "send M-SEARCH", source })?;
    Ok(collect(&socket, Collector::new(target, wanted), wait).await)
}

/// Reads answers from `socket` into `c` until `wait` has passed or `c` is full.
pub(crate) async fn collect<F: Fn(&Found) -> bool>(
    socket: &UdpSocket,
    mut c: Collector<F>,
    wait: Duration,
) -> Vec<Found> {
    let deadline = tokio::time::Instant::now() + wait;
    // One byte more than the limit, so an oversized datagram shows as such instead of cut short.
    let mut buf = vec![0u8; MAX_MESSAGE + 1];
    while !c.is_full() {
        match tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await {
            Err(_) => break,
            Ok(Ok((n, from))) => c.offer(from, &buf[..n]),
            // E.g. an ICMP error from an earlier send: nothing to read, the search goes on.
            Ok(Err(e)) => tracing::debug!(error = %e, "SSDP: receive error during a search"),
        }
    }
    if c.is_full() || c.ignored >= FLOOD_SIGN {
        // Worth an operator's attention: someone on the LAN answers far more than a LAN has.
        tracing::warn!(
            kept = c.found.len(),
            ignored = c.ignored,
            "SSDP search drew more answers than it keeps (a flood, or a very crowded LAN)"
        );
    } else if c.ignored > 0 {
        tracing::debug!(kept = c.found.len(), ignored = c.ignored, "SSDP search: answers ignored");
    }
    c.found
}

/// The answers of one search, under the caps. Work per datagram is constant: a parse, two hash
/// lookups.
pub(crate) struct Collector<F> {
    target: SearchTarget,
    wanted: F,
    pub(crate) found: Vec<Found>,
    usns: HashSet<String>,
    per_source: HashMap<IpAddr, usize>,
    /// Datagrams not kept: malformed, other targets, duplicates, unwanted, or over a cap.
    pub(crate) ignored: u64,
}

impl<F: Fn(&Found) -> bool> Collector<F> {
    pub(crate) fn new(target: SearchTarget, wanted: F) -> Self {
        Collector {
            target,
            wanted,
            found: Vec::new(),
            usns: HashSet::new(),
            per_source: HashMap::new(),
            ignored: 0,
        }
    }

    pub(crate) fn is_full(&self) -> bool {
        self.found.len() >= MAX_ANSWERS
    }

    pub(crate) fn offer(&mut self, from: SocketAddr, datagram: &[u8]) {
        if !self.try_offer(from, datagram) {
            self.ignored += 1;
        }
    }

    fn try_offer(&mut self, from: SocketAddr, datagram: &[u8]) -> bool {
        if self.is_full() {
            return false;
        }
        let known = self.per_source.get(&from.ip()).copied();
        if known.is_some_and(|n| n >= MAX_PER_SOURCE)
            || (known.is_none() && self.per_source.len() >= MAX_SOURCES)
        {
            return false;
        }
        let Ok(m) = Message::parse(datagram) else { return false };
        let Ok(r) = Response::from_message(&m) else { return false };
        let answer = Found {
            location: r.location.to_string(),
            usn: r.usn.to_string(),
            server: r.server.unwrap_or_default().to_string(),
            st: r.st.to_string(),
            uuid: None,
            source: Some(from),
        };
        let Some(f) = accept(&self.target, answer, &self.usns) else { return false };
        if !(self.wanted)(&f) {
            tracing::debug!(usn = %f.usn, location = %f.location, "SSDP: answer not wanted by the searcher");
            return false;
        }
        *self.per_source.entry(from.ip()).or_insert(0) += 1;
        self.usns.insert(f.usn.clone());
        self.found.push(f);
        true
    }
}

/// Keeps an answer if it matches the search, has an http(s) LOCATION and a USN not seen yet.
fn accept(target: &SearchTarget, mut answer: Found, seen: &HashSet<String>) -> Option<Found> {
    let st_ok = match target {
        SearchTarget::All => true,
        other => answer.st == other.to_string(),
    };
    let location_ok = reqwest::Url::parse(&answer.location)
        .map(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .unwrap_or(false);
    if !st_ok || !location_ok || answer.usn.is_empty() || seen.contains(&answer.usn) {
        tracing::debug!(?answer, "SSDP: answer ignored (other target, bad LOCATION or duplicate)");
        return None;
    }
    answer.uuid = answer
        .usn
        .strip_prefix("uuid:")
        .map(|rest| rest.split("::").next().unwrap_or(rest).to_string())
        .filter(|u| !u.is_empty());
    Some(answer)
}

#[cfg(test)]
mod tests {
    use super::super::{ST_CONNECTOR, ST_SENSORHUB};
    use super::*;

    fn answer(st: &str, usn: &str, location: &str) -> Found {
        Found {
            location: location.into(),
            usn: usn.into(),
            server: "s".into(),
            st: st.into(),
            uuid: None,
            source: None,
        }
    }

    #[test]
    fn search_targets_parse_for_ssdp_client_and_print_back() {
        for st in [ST_CONNECTOR, ST_SENSORHUB] {
            let t: SearchTarget = st.parse().unwrap();
            assert!(matches!(t, SearchTarget::URN(_)));
            assert_eq!(t.to_string(), st);
        }
    }

    #[test]
    fn answers_are_filtered_and_deduplicated() {
        let target: SearchTarget = ST_CONNECTOR.parse().unwrap();
        let usn = format!("uuid:abc::{ST_CONNECTOR}");
        let mut seen = Vec::new();
        let mut usns = HashSet::new();
        let inputs = [
            answer(ST_CONNECTOR, &usn, "https://10.0.0.1:8443/"),
            answer(ST_CONNECTOR, &usn, "https://10.0.0.1:8443/"),
            answer(ST_SENSORHUB, "uuid:def::x", "https://10.0.0.2/"),
            answer(ST_CONNECTOR, "uuid:ghi", "file:///etc/passwd"),
            answer(ST_CONNECTOR, "uuid:jkl", "http://10.0.0.3/"),
        ];
        for a in inputs {
            if let Some(f) = accept(&target, a, &usns) {
                usns.insert(f.usn.clone());
                seen.push(f);
            }
        }
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].uuid.as_deref(), Some("abc"));
        assert_eq!(seen[1].uuid.as_deref(), Some("jkl"));
        let all = accept(&SearchTarget::All, answer(ST_SENSORHUB, "uuid:z::y", "http://h/"), &HashSet::new());
        assert!(all.is_some());
    }

    fn response(usn: &str, location: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=1800\r\nEXT:\r\nLOCATION: {location}\r\nSERVER: x\r\nST: {ST_CONNECTOR}\r\nUSN: {usn}\r\n\r\n"
        )
        .into_bytes()
    }

    fn src(last: u8) -> SocketAddr {
        SocketAddr::from(([192, 168, 1, last], 1900))
    }

    /// A flood of 10,000 fake answers, from one address and from many: the collector keeps at most
    /// its caps, does constant work each, and the real connector's answer still gets in.
    #[test]
    fn ten_thousand_fake_answers_are_capped_per_source_and_per_search() {
        let target: SearchTarget = ST_CONNECTOR.parse().unwrap();
        let real_uuid = "6b1d3a0e-2c4f-8a5b-9c7d-0e1f2a3b4c5d";
        let mut c = Collector::new(target.clone(), |_: &Found| true);
        let t0 = std::time::Instant::now();
        for i in 0..10_000u32 {
            c.offer(src(66), &response(&format!("uuid:fake-{i}::{ST_CONNECTOR}"), "https://192.168.1.66:1/"));
        }
        c.offer(
            src(10),
            &response(&format!("uuid:{real_uuid}::{ST_CONNECTOR}"), "https://192.168.1.10:8443/"),
        );
        assert_eq!(c.found.len(), MAX_PER_SOURCE + 1, "one flooding address gets {MAX_PER_SOURCE} places");
        assert_eq!(c.found.last().unwrap().uuid.as_deref(), Some(real_uuid));
        assert_eq!(c.ignored, 10_000 - MAX_PER_SOURCE as u64);
        // Spread over many addresses the flood fills the search, which then stops listening.
        for i in 0..10_000u32 {
            let from = SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 1900));
            c.offer(from, &response(&format!("uuid:spread-{i}::{ST_CONNECTOR}"), "https://10.0.0.1:1/"));
        }
        assert_eq!(c.found.len(), MAX_ANSWERS);
        assert!(c.is_full());
        assert!(t0.elapsed() < Duration::from_secs(2), "constant work per answer: {:?}", t0.elapsed());

        // With the searcher's filter (a hub: only the connectors its receipt authorises), a
        // flood of other ids takes no place at all and the authorised connector is found.
        let mut c = Collector::new(target, |f: &Found| f.uuid.as_deref() == Some(real_uuid));
        for i in 0..10_000u32 {
            let from = SocketAddr::from(([10, 1, (i >> 8) as u8, i as u8], 1900));
            c.offer(from, &response(&format!("uuid:fake-{i}::{ST_CONNECTOR}"), "https://10.0.0.1:1/"));
        }
        c.offer(
            src(10),
            &response(&format!("uuid:{real_uuid}::{ST_CONNECTOR}"), "https://192.168.1.10:8443/"),
        );
        assert_eq!(c.found.len(), 1);
        assert_eq!(c.found[0].source, Some(src(10)));
    }

    /// The same through a real socket on loopback (unicast; nothing is multicast): a flood of
    /// answers while a search listens ends with the caps, not with a pile.
    #[tokio::test]
    async fn a_flood_on_the_socket_is_capped() {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = socket.local_addr().unwrap();
        let flooder = tokio::spawn(async move {
            let out = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            for i in 0..10_000u32 {
                let d = response(&format!("uuid:f{i}::{ST_CONNECTOR}"), "https://127.0.0.1:1/");
                let _ = out.send_to(&d, to).await;
                if i % 64 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        });
        let target: SearchTarget = ST_CONNECTOR.parse().unwrap();
        let found = collect(&socket, Collector::new(target, |_: &Found| true), Duration::from_secs(2)).await;
        flooder.await.unwrap();
        assert_eq!(found.len(), MAX_PER_SOURCE, "one source, {MAX_PER_SOURCE} places");
    }

    #[tokio::test]
    async fn a_bad_search_target_is_refused_before_anything_is_sent() {
        let err = search("connector", Duration::from_millis(10)).await.unwrap_err();
        assert!(matches!(err, SsdpError::SearchTarget { .. }), "{err}");
    }
}
