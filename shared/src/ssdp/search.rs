//! Searching, through the `ssdp-client` crate, with its traps covered: its timeout restarts with
//! every packet (so the whole search runs under one `tokio::time::timeout`), it yields an error
//! for every odd answer of unrelated devices (skipped here), and it may return the same service
//! several times (deduplicated by USN).
//!
//! What it cannot do, and so neither can [`search`]: it sends from one socket bound to 0.0.0.0,
//! so the kernel picks one interface (the route for 239.255.255.250, normally the default route);
//! it speaks IPv4 only; and it does not expose the address an answer came from, so answers cannot
//! be checked against the sender. A found LOCATION is therefore only a candidate: the uplink
//! trusts a connector only after checking its key (see the architecture's Trust section).

use super::error::SsdpError;
use futures_util::StreamExt;
use serde::Serialize;
use ssdp_client::SearchTarget;
use std::time::Duration;

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
}

/// Multicasts one M-SEARCH for `st` and collects answers for `wait` in total. MX is set to leave
/// about a second for the answers to travel (at least 1, at most 5). Returns the services found,
/// deduplicated by USN, in the order they answered; an empty list when none did.
pub async fn search(st: &str, wait: Duration) -> Result<Vec<Found>, SsdpError> {
    let target: SearchTarget = st.parse().map_err(|_| SsdpError::SearchTarget { st: st.to_string() })?;
    let mx = wait.as_secs().saturating_sub(1).clamp(1, 5) as usize;
    let mut found = Vec::new();
    let collect = async {
        let stream = ssdp_client::search(&target, wait, mx, None).await.map_err(SsdpError::Search)?;
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            match item {
                Ok(r) => {
                    let answer = Found {
                        location: r.location().to_string(),
                        usn: r.usn().to_string(),
                        server: r.server().to_string(),
                        st: r.search_target().to_string(),
                        uuid: None,
                    };
                    if let Some(f) = accept(&target, answer, &found) {
                        found.push(f);
                    }
                }
                Err(e) => tracing::debug!(error = %e, "SSDP: unusable answer skipped"),
            }
        }
        Ok::<(), SsdpError>(())
    };
    let outcome = tokio::time::timeout(wait, collect).await;
    match outcome {
        Ok(Err(e)) => Err(e),
        // Both the stream running dry and the deadline end a search normally.
        Ok(Ok(())) | Err(_) => Ok(found),
    }
}

/// Keeps an answer if it matches the search, has an http(s) LOCATION and a USN not seen yet.
fn accept(target: &SearchTarget, mut answer: Found, seen: &[Found]) -> Option<Found> {
    let st_ok = match target {
        SearchTarget::All => true,
        other => answer.st == other.to_string(),
    };
    let location_ok = reqwest::Url::parse(&answer.location)
        .map(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .unwrap_or(false);
    if !st_ok || !location_ok || answer.usn.is_empty() || seen.iter().any(|f| f.usn == answer.usn) {
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
        Found { location: location.into(), usn: usn.into(), server: "s".into(), st: st.into(), uuid: None }
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
        let inputs = [
            answer(ST_CONNECTOR, &usn, "https://10.0.0.1:8443/"),
            answer(ST_CONNECTOR, &usn, "https://10.0.0.1:8443/"),
            answer(ST_SENSORHUB, "uuid:def::x", "https://10.0.0.2/"),
            answer(ST_CONNECTOR, "uuid:ghi", "file:///etc/passwd"),
            answer(ST_CONNECTOR, "uuid:jkl", "http://10.0.0.3/"),
        ];
        for a in inputs {
            if let Some(f) = accept(&target, a, &seen) {
                seen.push(f);
            }
        }
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].uuid.as_deref(), Some("abc"));
        assert_eq!(seen[1].uuid.as_deref(), Some("jkl"));
        let all = accept(&SearchTarget::All, answer(ST_SENSORHUB, "uuid:z::y", "http://h/"), &[]);
        assert!(all.is_some());
    }

    #[tokio::test]
    async fn a_bad_search_target_is_refused_before_anything_is_sent() {
        let err = search("connector", Duration::from_millis(10)).await.unwrap_err();
        assert!(matches!(err, SsdpError::SearchTarget { .. }), "{err}");
    }
}
