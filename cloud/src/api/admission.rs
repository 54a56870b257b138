//! How a machine's data request gets in: nothing unauthenticated is expensive.
//!
//! In this order, each step cheap before the next costly one: the signature headers (or a machine
//! session's ticket) must parse and name an enrolled, unrevoked machine (and, for `/v1/forward`, a connector) with a timestamp
//! inside the window (a table lookup, no RSA, body unread); then an admission slot (503 + a
//! retry-later verdict when ingest is saturated); then the body is read against its cap and a
//! deadline; then it is inflated against its cap on a blocking thread, with only a few
//! inflations at once. The caller then verifies the signature over the inflated JSON (what the
//! sender signed) before trusting a byte of it.

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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What a saturated ingest tells senders to wait.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// The ingest gates, shared by all requests.
pub(super) struct Admission {
    /// Ingest requests being read, inflated, stored or flushed at once. Policy when full: refuse
    /// at once with 503 + Retry-After and a retry-later verdict; the sender keeps its data.
    slots: Arc<Semaphore>,
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
            inflating: Arc::new(Semaphore::new(limits.max_inflating)),
            busy: Episode::new("ingest requests in flight"),
            inflated: AtomicU64::new(0),
        }
    }
}

/// An admitted request's JSON, its signature not verified yet. Holds the admission slot until
/// dropped, i.e. until the request is answered.
pub(super) struct Intake {
    pub(super) json: Vec<u8>,
    _slot: OwnedSemaphorePermit,
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
    let slot = match gate.slots.clone().try_acquire_owned() {
        Ok(s) => {
            gate.busy.clear();
            s
        }
        Err(_) => {
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
    Ok(Intake { json, _slot: slot })
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
