//! API tokens of people, for scripts and integrations: shown once, kept as a hash, revocable.

use super::people::{audit, not_a_token, person};
use super::{err, internal, AppState};
use crate::people::Actor;
use crate::store::people::{Role, ALL_CUSTOMERS};
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewToken {
    #[serde(default)]
    label: String,
    role: Role,
    /// A customer id, or `*` for every customer the user has a role in.
    customer: String,
    /// Validity, e.g. "30days" (the default).
    #[serde(default, with = "humantime_serde")]
    ttl: Option<std::time::Duration>,
}

/// A token as lists show it: never its secret or hash.
fn token_view(t: &crate::store::people::ApiToken) -> serde_json::Value {
    serde_json::json!({
        "id": t.id, "user": t.user, "label": t.label, "role": t.role, "customer": t.customer,
        "created_at": t.created_at, "expires_at": t.expires_at, "last_used": t.last_used,
    })
}

/// `POST /v1/api-tokens`: a token for the signed-in user's scripts; the answer holds the token,
/// shown this once.
pub(super) async fn new_api_token(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Json(req): Json<NewToken>,
) -> Response {
    let user = match person(&st, &actor).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let ttl = req.ttl.unwrap_or(std::time::Duration::from_secs(30 * 86400));
    match st.people.new_api_token(&user, &req.label, req.role, &req.customer, ttl, Utc::now()).await {
        Ok((token, t)) => {
            let customer = (t.customer != ALL_CUSTOMERS).then(|| t.customer.clone());
            audit(
                &st,
                &actor.label(),
                "api-token-created",
                "done",
                serde_json::json!({"token": t.id, "role": t.role, "customer": customer, "scope": t.customer, "expires_at": t.expires_at}),
            ).await;
            let mut v = token_view(&t);
            v["token"] = serde_json::Value::String(token);
            (StatusCode::CREATED, Json(v)).into_response()
        }
        Err(crate::CloudError::Invalid(m)) => err(StatusCode::FORBIDDEN, m),
        Err(e) => internal(e),
    }
}

/// `GET /v1/api-tokens`: the user's own tokens (an owner sees everyone's), with their last use.
pub(super) async fn list_api_tokens(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
) -> Response {
    if let Err(r) = not_a_token(&actor) {
        return r;
    }
    match st.people.db().api_tokens().await {
        Ok(list) => Json(
            list.iter()
                .filter(|t| actor.is_owner() || actor.user_name() == Some(t.user.as_str()))
                .map(token_view)
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(e) => internal(e),
    }
}

/// `DELETE /v1/api-tokens/{id}`: revokes a token at once (one's own; an owner any).
pub(super) async fn revoke_api_token(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = not_a_token(&actor) {
        return r;
    }
    match st.people.db().api_token(&id).await {
        Ok(Some(t)) if actor.is_owner() || actor.user_name() == Some(t.user.as_str()) => {}
        Ok(_) => return err(StatusCode::NOT_FOUND, "no such API token"),
        Err(e) => return internal(e),
    }
    match st.people.db().delete_api_token(&id).await {
        Ok(_) => {
            audit(&st, &actor.label(), "api-token-revoked", "done", serde_json::json!({"token": id})).await;
            Json(serde_json::json!({"revoked": id})).into_response()
        }
        Err(e) => internal(e),
    }
}
