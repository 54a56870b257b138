//! How a machine's data request gets in: nothing unauthenticated is expensive.
//!
//! In this order, each step cheap before the next costly one: the signature headers (or a
//! machine session's ticket) must parse and name an enrolled, unrevoked machine (and, for
//! `/v1/forward`, a connector) with a timestamp inside the window (a table lookup, no RSA, body
//! unread); then an admission slot, after a bounded wait in a queue when all are taken (503 + a
//! retry-later verdict when the queue is full or the wait is over); then the body is read against
//! its cap and a deadline; then it is inflated against its cap on a blocking thread, with only a
//! few inflations at once. The caller then verifies the signature over the inflated JSON (what
//! the sender signed) before trusting a byte of it, and gives the slot back once the data is
//! written: waiting for the flush that makes it durable holds no body and no CPU, so no slot.

use super::auth::refused;
use super::{err, AppState};
use crate::trust::Refusal;
use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use futures_util::StreamExt;
use outpost_shared::http_server::episode::Episode;
use outpost_shared::keys::{SignedHeaders, VerifyError};
use outpost_shared::wire::WireError;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Ingest requests one machine may have in the queue or in slots at once. A hub sends one batch
/// at a time and a connector one forward; a few more cover a resend that overtakes a request the
/// server has not noticed was abandoned.
const PER_MACHINE: usize = 4;

/// Places for requests waiting for their flush, per admission slot.
const COMMITTING_PER_SLOT: usize = 4;

/// Requests on their way in, by the machine they claim to come from.
type Claims = Arc<std::sync::Mutex<HashMap<String, usize>>>;

/// What a saturated ingest tells senders to wait.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// The ingest gates, shared by all requests.
pub(super) struct Admission {
    /// Ingest requests being read, inflated, parsed or written at once (not those that only wait
    /// for their flush, see `committing`). Policy when full: wait in `queue`.
    slots: Arc<Semaphore>,
    /// Places to wait for a slot in, first come first served, at most `queue_wait` (the body is
    /// not read meanwhile). Policy when full or when the wait is over: refuse with 503 +
    /// Retry-After and a retry-later verdict; the sender keeps its data. Without the queue a
    /// thousand hubs catching up after an outage were turned away in waves: each refused one
    /// waits its Retry-After, and between waves the 64 slots stood empty (a five-million-reading
    /// backlog drained in 88 s, with the queue in 59 s; BENCHMARKS.md).
    queue: Arc<Semaphore>,
    queue_wait: Duration,
    /// Requests per claimed machine in the queue or in a slot, at most [`PER_MACHINE`]. A claim
    /// is not proof (a signature is checked once the body is read), so without this whoever
    /// knows one enrolled machine's id could hold every slot and every place in the queue.
    claims: Claims,
    /// Requests whose data is written and that wait only for the flush that makes it durable:
    /// four times `slots`. What such a request holds is its outcome (the latest values it changed),
    /// not its body, but that is still memory: when these are all taken, a written request keeps
    /// its slot while it waits, and the intake refuses new work.
    committing: Arc<Semaphore>,
    /// Inflations running at once (each is CPU work of up to `max_decompressed` bytes). Policy
    /// when full: wait (an admitted request holds a slot, so the waiting is bounded by `slots`).
    inflating: Arc<Semaphore>,
    busy: Episode,
    /// Bodies inflated so far: lets tests prove that unauthenticated bodies cost nothing.
    pub(super) inflated: AtomicU64,
}

impl Admission {
    pub(super) fn new(limits: &crate::config::IngestLimits) -> Admission {
        Admission {
            slots: Arc::new(Semaphore::new(limits.max_in_flight)),
            queue: Arc::new(Semaphore::new(limits.max_queued)),
            queue_wait: limits.queue_wait,
            claims: Arc::default(),
            committing: Arc::new(Semaphore::new(limits.max_in_flight.saturating_mul(COMMITTING_PER_SLOT))),
            inflating: Arc::new(Semaphore::new(limits.max_inflating)),
            busy: Episode::new("ingest requests in flight"),
            inflated: AtomicU64::new(0),
        }
    }

    /// A slot now, or after a wait in the queue; None when the queue is full or the wait is over.
    async fn admit(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(slot) = self.slots.clone().try_acquire_owned() {
            return Some(slot);
        }
        let _place = self.queue.clone().try_acquire_owned().ok()?;
        let waiting = self.slots.clone().acquire_owned();
        match tokio::time::timeout(self.queue_wait, waiting).await {
            Ok(slot) => Some(slot.expect("the semaphore is never closed")),
            Err(_) => None,
        }
    }
}

/// An admitted request's JSON, its signature not verified yet. Holds the admission slot until
/// dropped, or until [`Intake::into_parts`] hands it to the caller.
pub(super) struct Intake {
    pub(super) json: Vec<u8>,
    slot: Slot,
}

impl Intake {
    /// The body and the admission slot apart, for a caller that gives the slot back as soon as
    /// the body's memory and CPU are spent (the batch written), not only with the answer.
    pub(super) fn into_parts(self) -> (Vec<u8>, Slot) {
        (self.json, self.slot)
    }
}

/// An admitted request's place in the intake.
pub(super) struct Slot {
    slot: OwnedSemaphorePermit,
    claim: Claim,
    committing: Arc<Semaphore>,
}

/// One of a claimed machine's requests in the queue or in a slot; counts one less when dropped.
struct Claim {
    claims: Claims,
    machine: String,
}

impl Claim {
    /// None when `machine` already has [`PER_MACHINE`] requests on their way in.
    fn take(claims: &Claims, machine: &str) -> Option<Claim> {
        let mut map = claims.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(machine.to_string()).or_default();
        if *n >= PER_MACHINE {
            return None;
        }
        *n += 1;
        Some(Claim { claims: claims.clone(), machine: machine.to_string() })
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut map = self.claims.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.machine) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.machine);
            }
        }
    }
}

impl Slot {
    /// The request's data is written and it waits only for its flush: its slot is traded for a
    /// place among those waiting, which the caller holds until it answers. While there is none,
    /// the slot is kept meanwhile.
    pub(super) async fn written(self) -> OwnedSemaphorePermit {
        let waiting = self.committing.acquire_owned().await.expect("the semaphore is never closed");
        drop(self.slot);
        drop(self.claim);
        waiting
    }
}

/// Checks who claims to send, then admits, reads and inflates the body (see the module doc).
pub(super) async fn read_signed(
    st: &AppState,
    headers: &HeaderMap,
    body: Body,
    path: &str,
    connector_only: bool,
) -> Result<Intake, Response> {
    let claimed = match outpost_shared::keys::SessionHeaders::from_header_map(headers) {
        // A session: the ticket opens and is live, its machine enrolled, the time inside the
        // window (AES and a table lookup; the MAC is checked over the inflated body after).
        Ok(Some(h)) => st.trust.claimed_session(&h).await.map_err(refused)?.0,
        Ok(None) => signed_claim(st, headers, path).await?,
        Err(e) => return Err(refused(Refusal::Session(e))),
    };
    if connector_only && claimed.role != outpost_shared::model::Role::Connector {
        return Err(err(
            StatusCode::FORBIDDEN,
            format!("{} is not enrolled as a connector", claimed.machine_id),
        ));
    }

    let gate = &st.admission;
    let Some(claim) = Claim::take(&gate.claims, &claimed.machine_id) else {
        return Err(outpost_shared::http_server::retry_later(
            StatusCode::SERVICE_UNAVAILABLE,
            RETRY_AFTER,
            "this machine already has as many batches on their way in as it may; retry later",
        ));
    };
    let slot = match gate.admit().await {
        Some(s) => {
            gate.busy.clear();
            s
        }
        None => {
            gate.busy.hit();
            return Err(outpost_shared::http_server::retry_later(
                StatusCode::SERVICE_UNAVAILABLE,
                RETRY_AFTER,
                "the cloud is taking as much data as it can right now; keep this batch and retry later",
            ));
        }
    };

    let limits = &st.config.ingest;
    let max_body = limits.max_body as usize;
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body) {
        return Err(too_large(max_body));
    }
    let reading = read_capped(body, max_body, declared.unwrap_or(0) as usize);
    let raw = match tokio::time::timeout(st.config.server.body_timeout, reading).await {
        Err(_) => return Err(err(StatusCode::REQUEST_TIMEOUT, "request body too slow; send it again")),
        Ok(r) => r?,
    };

    let gz = headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok())
        == Some(outpost_shared::wire::GZIP);
    let cap = limits.max_decompressed as usize;
    let inflating = gate.inflating.clone().acquire_owned().await.expect("the semaphore is never closed");
    gate.inflated.fetch_add(1, Ordering::Relaxed);
    let inflated = tokio::task::spawn_blocking(move || {
        let _inflating = inflating;
        outpost_shared::wire::decompress(&raw, gz, cap)
    })
    .await
    .map_err(super::internal)?;
    let json = inflated.map_err(|e| match e {
        WireError::TooLarge { .. } => err(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
        e => err(StatusCode::BAD_REQUEST, e.to_string()),
    })?;
    Ok(Intake { json, slot: Slot { slot, claim, committing: gate.committing.clone() } })
}

/// The signer a signed request claims: enrolled, not revoked, signing time inside the window.
async fn signed_claim(
    st: &AppState,
    headers: &HeaderMap,
    path: &str,
) -> Result<crate::trust::MachineKey, Response> {
    let sig = SignedHeaders::from_header_map(headers).map_err(|e| refused(Refusal::Unsigned(e)))?;
    let claimed = match st.trust.machine_key(sig.machine_id.as_str()).await {
        Ok(Some(k)) => k,
        Err(e) => return Err(refused(Refusal::Storage(e))),
        // Not enrolled or revoked: `verify` says which from its tables alone, before any RSA
        // (there is no key to check with) and without the body.
        Ok(None) => {
            return Err(match st.trust.verify(&sig, "POST", path, b"", None).await {
                Err(r) => refused(r),
                Ok(_) => refused(Refusal::NotEnrolled(sig.machine_id.to_string())),
            })
        }
    };
    let allowed = crate::trust::MAX_SKEW.as_secs();
    let off_by = chrono::Utc::now().timestamp().saturating_sub(sig.timestamp).saturating_abs();
    if off_by as u64 > allowed {
        return Err(refused(Refusal::Bad(VerifyError::Stale {
            timestamp: sig.timestamp,
            off_by_secs: off_by,
            allowed_secs: allowed,
        })));
    }
    Ok(claimed)
}

fn too_large(max_body: usize) -> Response {
    err(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body larger than {max_body} bytes (ingest.max_body); send smaller batches"),
    )
}

/// Reads the body, refusing it as soon as it passes `max` bytes.
#[allow(clippy::result_large_err)]
async fn read_capped(body: Body, max: usize, declared: usize) -> Result<Vec<u8>, Response> {
    let mut out = Vec::with_capacity(declared.min(max));
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| err(StatusCode::BAD_REQUEST, format!("cannot read the request body: {e}")))?;
        if out.len() + chunk.len() > max {
            return Err(too_large(max));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}
