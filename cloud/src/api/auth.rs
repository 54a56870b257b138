//! Who is asking: the admin token of people, the signatures of machines.

use super::{err, AppState};
use crate::trust::Refusal;
use axum::extract::State;
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use outpost_shared::http_server::episode::Episode;
use outpost_shared::keys::{SignedHeaders, VerifyError};
use outpost_shared::model::{ApiError, RefusalCode, Verdict};

/// Constant-time comparison, so a token cannot be guessed byte by byte from response times.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token of a request: `Authorization: Bearer`, or the dashboard's cookie (browsers cannot
/// put headers on an `EventSource`).
fn presented_token(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        return v.strip_prefix("Bearer ").map(|t| t.trim().to_string());
    }
    let cookies = headers.get(header::COOKIE).and_then(|v| v.to_str().ok())?;
    cookies.split(';').find_map(|c| c.trim().strip_prefix("outpost_token=").map(str::to_string))
}

pub(super) async fn require_admin(
    State(st): State<AppState>,
    req: Request<axum::body::Body>,
    next: Next,
) -> Response {
    match presented_token(req.headers()) {
        Some(t) if same(&t, &st.admin_token) => next.run(req).await,
        Some(_) => err(
            StatusCode::UNAUTHORIZED,
            "wrong admin token; it is in the cloud's data directory, file admin-token",
        ),
        None => err(StatusCode::UNAUTHORIZED, "admin token required: send `Authorization: Bearer <token>`"),
    }
}

// The error side of these helpers is the finished HTTP response; it lives for one request.
#[allow(clippy::result_large_err)]
/// Checks a signed machine request against the signer's enrolled key. `skew` as in
/// [`Trust::verify`].
pub(super) async fn check_signed(
    st: &AppState,
    headers: &HeaderMap,
    method: &str,
    path: &str,
    body: &[u8],
    skew: Option<std::time::Duration>,
) -> Result<crate::trust::MachineKey, Response> {
    let sig = SignedHeaders::from_header_map(headers).map_err(|e| refused(Refusal::Unsigned(e)))?;
    st.trust.verify(&sig, method, path, body, skew).await.map_err(refused)
}

/// Refused machine requests are logged once per episode: anyone can send unsigned requests, or
/// claim a known machine's id, as fast as they like, and must not flood the log with them.
static REFUSED: Episode = Episode::new("refused machine requests");

pub(super) fn refused(r: Refusal) -> Response {
    if REFUSED.hit() {
        tracing::warn!(reason = %r, "machine request refused; more are counted until 10 s pass without one");
    }
    let (status, verdict, code) = verdict_of(&r);
    let mut response = (status, axum::Json(ApiError::verdict(r.to_string(), verdict, code))).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static(super::RETRY_AFTER));
    }
    response
}

/// What a failed signature check means for data the request carried (custody rule): a signature
/// that does not check is forged for good, but a signer the cloud does not know (yet, or any more:
/// enrolled after a restore, revoked by mistake) or a signing time off the cloud's clock can
/// change, so the sender keeps its data and retries.
pub(super) fn verdict_of(r: &Refusal) -> (StatusCode, Verdict, RefusalCode) {
    match r {
        Refusal::Enroll(_) => (StatusCode::FORBIDDEN, Verdict::Refused, RefusalCode::Other),
        Refusal::NotEnrolled(_) => (StatusCode::UNAUTHORIZED, Verdict::RetryLater, RefusalCode::NotEnrolled),
        Refusal::Revoked(..) => (StatusCode::UNAUTHORIZED, Verdict::RetryLater, RefusalCode::Revoked),
        Refusal::Bad(VerifyError::Stale { .. }) => {
            (StatusCode::UNAUTHORIZED, Verdict::RetryLater, RefusalCode::Other)
        }
        Refusal::Unsigned(_) | Refusal::Bad(_) => {
            (StatusCode::UNAUTHORIZED, Verdict::Refused, RefusalCode::Forged)
        }
        // Nothing was decided: the records could not be read now.
        Refusal::Storage(_) => (StatusCode::SERVICE_UNAVAILABLE, Verdict::RetryLater, RefusalCode::Storage),
    }
}

#[allow(clippy::result_large_err)]
/// The signer of a machine request, which must be an enrolled connector.
pub(super) async fn connector_signed(
    st: &AppState,
    headers: &HeaderMap,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<crate::trust::MachineKey, Response> {
    match check_signed(st, headers, method, path, body, Some(crate::trust::MAX_SKEW)).await? {
        m if m.role == outpost_shared::model::Role::Connector => Ok(m),
        m => Err(err(StatusCode::FORBIDDEN, format!("{} is not enrolled as a connector", m.machine_id))),
    }
}
