//! Enrollment: the cloud's public key, one-time tokens, enrolling a machine, fresh receipts.

use super::auth::{check_signed, refused};
use super::{err, internal, AppState};
use crate::trust::EnrollRequest;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use serde::Deserialize;

pub(super) async fn cloud_key(State(st): State<AppState>) -> Json<serde_json::Value> {
    let k = st.trust.key();
    Json(serde_json::json!({"fingerprint": k.machine_id().to_string(), "public_key": k.public().to_pem()}))
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct TokenRequest {
    network: Option<String>,
    /// Validity, e.g. "1h" (default 24h).
    #[serde(default, with = "humantime_serde")]
    ttl: Option<std::time::Duration>,
}

pub(super) async fn new_token(State(st): State<AppState>, body: Option<Json<TokenRequest>>) -> Response {
    let req = body.map(|b| b.0).unwrap_or_default();
    let network = req.network.unwrap_or_else(|| "default".into());
    let ttl = req.ttl.unwrap_or(std::time::Duration::from_secs(86400));
    match st.trust.new_token(&network, ttl, Utc::now()) {
        Ok(t) => {
            Json(serde_json::json!({"token": t.encode(), "network": network, "expires_at": t.expires_at}))
                .into_response()
        }
        Err(e) => err(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

pub(super) async fn list_tokens(State(st): State<AppState>) -> Response {
    match st.trust.open_tokens(Utc::now()) {
        Ok(l) => Json(l).into_response(),
        Err(e) => internal(e),
    }
}

pub(super) async fn enroll(State(st): State<AppState>, Json(req): Json<EnrollRequest>) -> Response {
    let trust = st.trust.clone();
    match tokio::task::spawn_blocking(move || trust.enroll(&req, Utc::now())).await {
        Ok(Ok(r)) => Json(r).into_response(),
        Ok(Err(e)) => refused(e),
        Err(e) => internal(e),
    }
}

pub(super) async fn receipt(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let mk = match check_signed(&st, &headers, "POST", "/v1/receipt", &body, Some(crate::trust::MAX_SKEW)) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let trust = st.trust.clone();
    match tokio::task::spawn_blocking(move || trust.receipt(&mk, Utc::now())).await {
        Ok(Ok(r)) => Json(r).into_response(),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}
