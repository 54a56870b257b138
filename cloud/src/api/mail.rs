//! Commands by mail: a connector asks, for a sender it authenticated, that a relay be switched.

use super::auth::connector_signed;
use super::{access, err, internal, AppState};
use crate::commands::DEFAULT_TTL;
use crate::people::Actor;
use crate::store::people::Role;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MailCommandRequest {
    /// Machine id or host name, within the connector's network.
    machine: String,
    card: u8,
    relay: u8,
    on: bool,
    /// The authenticated mail sender, for the audit trail.
    sender: String,
    #[serde(default)]
    message_id: Option<String>,
}

/// `who` of a command a connector asked for on behalf of a mail sender.
fn mail_who(sender: &str, connector: &str) -> String {
    format!("mail:{sender} via connector {connector}")
}

/// A connector asks, for a mail sender it authenticated, that a relay be switched. The cloud signs
/// the command as for the dashboard; only machines of the connector's own network can be named.
pub(super) async fn create(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let connector = match connector_signed(&st, &headers, "POST", "/v1/mail-commands", &body).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    let req: MailCommandRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return err(StatusCode::BAD_REQUEST, format!("not a mail command request: {e}")),
    };
    // Mail commands are the cloud's decision, not the connector's: an admin grants them per
    // connector and names the senders it may act for.
    let refusal = match st.trust.mail_grant(&connector.machine_id).await {
        Ok(Some(g)) if g.allows(&req.sender) => None,
        Ok(Some(_)) => Some(format!(
            "sender {} is not among those this connector may act for; an admin adds them with PUT /v1/machines/{}/mail-commands",
            req.sender, connector.machine_id
        )),
        Ok(None) => Some(format!(
            "mail commands are not enabled for connector {}; an admin enables them with PUT /v1/machines/{}/mail-commands",
            connector.machine_id, connector.machine_id
        )),
        Err(e) => return internal(e),
    };
    if let Some(why) = refusal {
        tracing::warn!(connector = %connector.machine_id, sender = %req.sender, reason = %why, "mail command refused");
        let entry = crate::commands::AuditEntry {
            ts: Utc::now(),
            command_id: String::new(),
            machine: req.machine.chars().take(64).collect(),
            action: "relay.set".into(),
            parameters: serde_json::json!({"card": req.card, "relay": req.relay, "on": req.on}),
            who: mail_who(&req.sender, &connector.machine_id),
            event: "refused".into(),
            detail: serde_json::json!({"error": why}),
        };
        if let Err(e) = st.commands.record(entry).await {
            tracing::error!(error = %e, "audit trail could not record a refused mail command");
        }
        return err(StatusCode::FORBIDDEN, why);
    }
    if req.card == 0 || !(1..=8).contains(&req.relay) {
        return err(StatusCode::BAD_REQUEST, "cards are numbered from 1, relays 1 to 8");
    }
    let (store, trust, net, name) =
        (st.store.clone(), st.trust.clone(), connector.network_id.clone(), req.machine.clone());
    let found = async move {
        let keys = trust.network_keys(&net).await?;
        let mut hits = Vec::new();
        for k in keys {
            let hostname = store.machine(&k.machine_id).await?.map(|m| m.hostname).unwrap_or(k.hostname);
            if k.machine_id == name || hostname.eq_ignore_ascii_case(&name) {
                hits.push((k.machine_id, hostname));
            }
        }
        Ok::<_, crate::CloudError>(hits)
    }
    .await;
    let (machine, hostname) = match found {
        Ok(hits) => match hits.as_slice() {
            [one] => one.clone(),
            [] => {
                return err(
                    StatusCode::NOT_FOUND,
                    format!("no machine `{}` in this connector's network", req.machine),
                )
            }
            _ => {
                return err(
                    StatusCode::CONFLICT,
                    format!("`{}` names several machines; use the machine id", req.machine),
                )
            }
        },
        Err(e) => return internal(e),
    };
    let who = mail_who(&req.sender, &connector.machine_id);
    let params = serde_json::json!({"card": req.card, "relay": req.relay, "on": req.on});
    let signer = match super::commands::command_signer(&st, &machine).await {
        Ok(s) => s,
        Err(e) => return internal(e),
    };
    match st.commands.create(signer, &machine, "relay.set", params, DEFAULT_TTL, &who).await {
        Ok(rec) => {
            tracing::info!(%who, %machine, command = %rec.id, message_id = ?req.message_id, "mail command issued");
            (
                StatusCode::CREATED,
                Json(serde_json::json!({"command_id": rec.id, "machine": machine, "hostname": hostname})),
            )
                .into_response()
        }
        Err(e) => internal(e),
    }
}

/// The outcome of a command this connector asked for by mail.
pub(super) async fn status(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let path = format!("/v1/mail-commands/{id}");
    let connector = match connector_signed(&st, &headers, "GET", &path, b"").await {
        Ok(m) => m,
        Err(r) => return r,
    };
    match st.commands.get(&id).await {
        Ok(Some(rec)) if rec.created_by.ends_with(&format!(" via connector {}", connector.machine_id)) => {
            Json(serde_json::json!({"status": rec.effective_status(Utc::now()), "result": rec.result}))
                .into_response()
        }
        Ok(_) => err(StatusCode::NOT_FOUND, "no such command of this connector"),
        Err(e) => internal(e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GrantRequest {
    /// The mail addresses the connector may ask for commands for.
    senders: Vec<String>,
}

/// `PUT /v1/machines/{id}/mail-commands`: lets a connector ask for relay commands by mail on
/// behalf of the listed senders.
pub(super) async fn grant(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    Json(req): Json<GrantRequest>,
) -> Response {
    if let Err(r) = access::machine(&st, &actor, &id, Role::Admin, "mail-commands-grant").await {
        return r;
    }
    match st.trust.grant_mail_commands(&id, &req.senders, &actor.label(), Utc::now()).await {
        Ok(g) => {
            audit_grant(&st, &id, "mail-commands-granted", serde_json::json!({"senders": g.senders}), &actor)
                .await;
            Json(g).into_response()
        }
        Err(crate::CloudError::Invalid(m)) => err(StatusCode::BAD_REQUEST, m),
        Err(e) => internal(e),
    }
}

/// `DELETE /v1/machines/{id}/mail-commands`: withdraws the grant.
pub(super) async fn withdraw(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = access::machine(&st, &actor, &id, Role::Admin, "mail-commands-withdraw").await {
        return r;
    }
    match st.trust.withdraw_mail_commands(&id).await {
        Ok(true) => {
            audit_grant(&st, &id, "mail-commands-withdrawn", serde_json::Value::Null, &actor).await;
            Json(serde_json::json!({"withdrawn": id})).into_response()
        }
        Ok(false) => err(StatusCode::NOT_FOUND, format!("connector {id} has no mail-command grant")),
        Err(e) => internal(e),
    }
}

/// `GET /v1/machines/{id}/mail-commands`: the grant, if any.
pub(super) async fn show(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = access::machine(&st, &actor, &id, Role::Viewer, "mail-commands").await {
        return r;
    }
    match st.trust.mail_grant(&id).await {
        Ok(Some(g)) => Json(g).into_response(),
        Ok(None) => err(StatusCode::NOT_FOUND, format!("connector {id} has no mail-command grant")),
        Err(e) => internal(e),
    }
}

async fn audit_grant(
    st: &AppState,
    connector: &str,
    action: &str,
    parameters: serde_json::Value,
    actor: &Actor,
) {
    let entry = crate::commands::AuditEntry {
        ts: Utc::now(),
        command_id: String::new(),
        machine: connector.into(),
        action: action.into(),
        parameters,
        who: actor.label(),
        event: "done".into(),
        detail: serde_json::Value::Null,
    };
    access::audit(st, entry).await;
}
