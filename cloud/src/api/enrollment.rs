//! Enrollment: the cloud's public key, one-time tokens, enrolling a machine, fresh receipts.

use super::auth::{check_signed, refused};
use super::{access, err, internal, AppState};
use crate::people::Actor;
use crate::store::people::Role as Access;
use crate::trust::EnrollRequest;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use outpost_shared::model::Role;
use serde::Deserialize;

pub(super) async fn cloud_key(State(st): State<AppState>) -> Json<serde_json::Value> {
    let k = st.trust.key();
    Json(serde_json::json!({"fingerprint": k.machine_id().to_string(), "public_key": k.public().to_pem()}))
}

/// A certificate file larger than this is not a CA certificate (or chain) anyone should paste.
const MAX_CA_BYTES: u64 = 64 * 1024;

/// The authority machines must trust to reach this cloud, as PEM, and its SHA-256 (hex) as
/// `sha256sum` prints it. Read on each call: a certificate of one's own is renewed in place.
pub(super) fn read_ca(st: &AppState) -> Result<(Vec<u8>, String), String> {
    let path = st.config.ca_file();
    let size = std::fs::metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?.len();
    if size > MAX_CA_BYTES {
        return Err(format!("{} is {size} bytes, more than a certificate chain", path.display()));
    }
    let pem = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    use sha2::Digest;
    let digest = hex::encode(sha2::Sha256::digest(&pem));
    Ok((pem, digest))
}

/// `GET /v1/ca.pem`: the certificate of the authority machines must trust, to download. Public:
/// it is no secret, and a machine being set up has nothing to sign in with. Whoever fetches it
/// over a connection they cannot verify yet checks it against the SHA-256 the dashboard shows
/// beside the enrollment command (the command does so itself).
pub(super) async fn ca_pem(State(st): State<AppState>) -> Response {
    match read_ca(&st) {
        Ok((pem, _)) => (
            [
                (axum::http::header::CONTENT_TYPE, "application/x-pem-file"),
                (axum::http::header::CONTENT_DISPOSITION, "attachment; filename=\"outpost-cloud-ca.pem\""),
            ],
            pem,
        )
            .into_response(),
        Err(e) => internal(format!("the cloud's CA certificate cannot be read: {e}")),
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct TokenRequest {
    network: Option<String>,
    /// `sensorhub` (default) or `connector`: a connector token must be asked for by name.
    #[serde(default)]
    role: Option<Role>,
    /// Validity, e.g. "1h" (default 24h, at most 30 days).
    #[serde(default, with = "humantime_serde")]
    ttl: Option<std::time::Duration>,
    /// A name to tell it apart on the dashboard.
    #[serde(default)]
    label: Option<String>,
    /// The customer a network no customer holds yet is claimed for (the machine then belongs to
    /// it). Without it, an unclaimed network stays the default customer's.
    #[serde(default)]
    customer: Option<String>,
}

/// `POST /v1/enrollment-tokens`: an admin's decision to let one machine of a network join in a
/// role. Needs admin of the network's customer; a network no customer holds is claimed for the
/// `customer` the request names.
pub(super) async fn new_token(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    body: Option<Json<TokenRequest>>,
) -> Response {
    let req = body.map(|b| b.0).unwrap_or_default();
    let network = req.network.unwrap_or_else(|| "default".into());
    let role = req.role.unwrap_or_default();
    let ttl = req.ttl.unwrap_or(std::time::Duration::from_secs(86400));
    let label = req.label.unwrap_or_default();
    let owners = match st.people.network_owners().await {
        Ok(o) => o,
        Err(e) => return internal(e),
    };
    let claimed = owners.is_claimed(&network);
    let customer = match &req.customer {
        Some(c) if !claimed => c.clone(),
        _ => owners.customer_of(&network).to_string(),
    };
    if !actor.can(Access::Viewer, &customer) {
        // Another customer's network or customer is not named to someone who cannot see it.
        return err(
            StatusCode::NOT_FOUND,
            format!(
                "no network `{network}` among your customers; name your `customer` to start a new network"
            ),
        );
    }
    if let Some(c) = req.customer.as_ref().filter(|c| claimed && **c != customer) {
        return err(
            StatusCode::CONFLICT,
            format!("network `{network}` belongs to customer `{customer}`, not `{c}`"),
        );
    }
    if !actor.can(Access::Admin, &customer) {
        return err(
            StatusCode::FORBIDDEN,
            format!("enrollment tokens for customer `{customer}` need its admin role"),
        );
    }
    if req.customer.is_some() && !owners.is_claimed(&network) {
        if let Err(e) = super::customers::claim_network(&st, &owners, &customer, &network).await {
            return e;
        }
    }
    match st.trust.new_token(&network, role, ttl, &label, &actor.label(), Utc::now()).await {
        Ok((t, info)) => {
            audit_token(&st, "token-created", &info, &actor).await;
            // What the enrollment command needs besides the token: where machines reach this
            // cloud (None: the page uses its own address) and the fingerprint of its CA.
            let ca_sha256 = match read_ca(&st) {
                Ok((_, digest)) => Some(digest),
                Err(e) => {
                    tracing::error!(error = %e, "the cloud's CA certificate cannot be read");
                    None
                }
            };
            Json(serde_json::json!({
                "token": t.encode(), "id": info.id, "network": network, "role": role,
                "label": info.label, "expires_at": t.expires_at,
                "cloud_url": st.config.public_url(), "ca_sha256": ca_sha256,
            }))
            .into_response()
        }
        Err(crate::CloudError::Invalid(m)) => err(StatusCode::BAD_REQUEST, m),
        Err(e) => internal(e),
    }
}

/// The open tokens of customers the actor is admin of.
async fn open_tokens_of(
    st: &AppState,
    actor: &Actor,
) -> Result<Vec<crate::trust::TokenInfo>, crate::CloudError> {
    let owners = st.people.network_owners().await?;
    Ok(st
        .trust
        .open_tokens(Utc::now())
        .await?
        .into_iter()
        .filter(|t| actor.can(Access::Admin, owners.customer_of(&t.network)))
        .collect())
}

/// `DELETE /v1/enrollment-tokens/{id}`: cancels an open token (id as the list shows it); another
/// customer's token is not found.
pub(super) async fn cancel_token(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> Response {
    match open_tokens_of(&st, &actor).await {
        Ok(list) if list.iter().any(|t| t.id == id) => {}
        Ok(_) => return err(StatusCode::NOT_FOUND, format!("no open token {id}")),
        Err(e) => return internal(e),
    }
    match st.trust.cancel_token(&id).await {
        Ok(Some(info)) => {
            audit_token(&st, "token-cancelled", &info, &actor).await;
            Json(serde_json::json!({"cancelled": info.id})).into_response()
        }
        Ok(None) => err(StatusCode::NOT_FOUND, format!("no open token {id}")),
        Err(e) => internal(e),
    }
}

async fn audit_token(st: &AppState, event: &str, info: &crate::trust::TokenInfo, actor: &Actor) {
    let entry = crate::commands::AuditEntry {
        ts: Utc::now(),
        command_id: info.id.clone(),
        machine: String::new(),
        action: event.into(),
        parameters: serde_json::json!({"network": info.network, "role": info.role, "label": info.label, "expires_at": info.expires_at}),
        who: actor.label(),
        event: "done".into(),
        detail: serde_json::Value::Null,
    };
    access::audit(st, entry).await;
}

pub(super) async fn list_tokens(State(st): State<AppState>, Extension(actor): Extension<Actor>) -> Response {
    match open_tokens_of(&st, &actor).await {
        Ok(l) => Json(l).into_response(),
        Err(e) => internal(e),
    }
}

pub(super) async fn enroll(State(st): State<AppState>, Json(req): Json<EnrollRequest>) -> Response {
    let now = Utc::now();
    match st.trust.enroll(&req, now).await {
        Ok(r) => {
            if let Ok(receipt) = r.receipt.peek_unverified() {
                // Recorded once, when the enrollment is new (a repeat answers the same receipt).
                if let Ok(Some(mk)) = st.trust.machine_key(receipt.machine_id.as_str()).await {
                    if mk.enrolled_at == now {
                        let entry = crate::commands::AuditEntry {
                            ts: now,
                            command_id: String::new(),
                            machine: mk.machine_id.clone(),
                            action: "enroll".into(),
                            parameters: serde_json::json!({"network": mk.network_id, "role": mk.role, "hostname": mk.hostname}),
                            who: format!("machine {}", mk.machine_id),
                            event: "done".into(),
                            detail: serde_json::Value::Null,
                        };
                        if let Err(e) = st.commands.record(entry).await {
                            tracing::error!(error = %e, "audit trail could not record an enrollment");
                        }
                    }
                }
            }
            Json(r).into_response()
        }
        Err(e) => refused(e),
    }
}

pub(super) async fn receipt(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let mk =
        match check_signed(&st, &headers, "POST", "/v1/receipt", &body, Some(crate::trust::MAX_SKEW)).await {
            Ok(m) => m,
            Err(r) => return r,
        };
    match st.trust.receipt(&mk, Utc::now()).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => internal(e),
    }
}
