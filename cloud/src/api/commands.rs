//! Commands: made by people, signed by the cloud, polled by machines, answered with signed results.

use super::auth::{check_machine, connector_machine};
use super::{access, err, internal, AppState};
use crate::commands::DEFAULT_TTL;
use crate::people::Actor;
use crate::store::people::Role as Access;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use outpost_shared::keys::{CommandResult, PollManyAnswer, Signed};
use outpost_shared::model::Role;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CommandRequest {
    action: String,
    #[serde(default)]
    parameters: serde_json::Value,
    #[serde(default, with = "humantime_serde")]
    ttl: Option<std::time::Duration>,
}

/// Actions a hub understands; anything else is refused here, before it is signed.
const ACTIONS: &[&str] =
    &["ping", "sample-now", "reload-config", "relay.set", "relay.toggle", "relay.set_port"];

pub(super) async fn create_command(
    st: &AppState,
    machine: &str,
    action: &str,
    parameters: serde_json::Value,
    ttl: Option<std::time::Duration>,
    actor: &Actor,
) -> Response {
    // Commands are an operator's: switching relays, sampling now, reloading config.
    if let Err(r) = access::machine(st, actor, machine, Access::Operator, action).await {
        return r;
    }
    if !ACTIONS.contains(&action) {
        return err(
            StatusCode::BAD_REQUEST,
            format!("unknown action `{action}`; known: {}", ACTIONS.join(", ")),
        );
    }
    match st.trust.machine_key(machine).await {
        Ok(Some(_)) => {}
        Ok(None) => return err(StatusCode::NOT_FOUND, access::NO_MACHINE),
        Err(e) => return internal(e),
    }
    let who = actor.label();
    let signer = match command_signer(st, machine).await {
        Ok(s) => s,
        Err(e) => return internal(e),
    };
    match st.commands.create(signer, machine, action, parameters, ttl.unwrap_or(DEFAULT_TTL), &who).await {
        Ok(rec) => (StatusCode::CREATED, Json(serde_json::json!({"command_id": rec.id}))).into_response(),
        Err(e) => internal(e),
    }
}

/// The key that signs `machine`'s commands: the cloud's Ed25519 command key when the machine's
/// latest batch says it checks those, else the cloud's RSA key.
pub(super) async fn command_signer<'a>(
    st: &'a AppState,
    machine: &str,
) -> Result<&'a dyn outpost_shared::keys::SignsCommands, crate::CloudError> {
    let features = st.store.machine(machine).await?.map(|m| m.features).unwrap_or_default();
    Ok(st.trust.command_signer(&features))
}

pub(super) async fn create(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    Json(req): Json<CommandRequest>,
) -> Response {
    create_command(&st, &id, &req.action, req.parameters, req.ttl, &actor).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RelaySwitch {
    on: bool,
}

pub(super) async fn switch_relay(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path((id, card, relay)): Path<(String, u8, u8)>,
    Json(req): Json<RelaySwitch>,
) -> Response {
    if card == 0 || !(1..=8).contains(&relay) {
        return err(StatusCode::BAD_REQUEST, "cards are numbered from 1, relays 1 to 8");
    }
    let params = serde_json::json!({"card": card, "relay": relay, "on": req.on});
    create_command(&st, &id, "relay.set", params, None, &actor).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StatusQuery {
    /// Seconds to wait for the command to end (result or expiry) before answering (at most 30).
    wait: Option<u64>,
}

/// Longest `wait` of a status request.
const STATUS_WAIT_MAX: u64 = 30;

/// `GET /v1/commands/{id}[?wait=S]`: a command of a machine the actor may see; 404 otherwise.
/// With `wait`, answered when the command ends or after S seconds, whichever comes first.
pub(super) async fn status(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    Query(q): Query<StatusQuery>,
) -> Response {
    let found = match st.commands.get(&id).await {
        Ok(Some(rec)) => {
            let visible = async {
                let owners = st.people.network_owners().await?;
                let customer = access::machine_customer(&st, &owners, &rec.machine).await?;
                Ok::<_, crate::CloudError>(access::allows(&actor, Access::Viewer, customer.as_deref()))
            };
            match visible.await {
                Ok(true) => Ok(Some(rec)),
                Ok(false) => Ok(None),
                Err(e) => Err(e),
            }
        }
        other => other,
    };
    // Waited for only once the actor may see it: no one holds a request open on another's command.
    let found = match (found, q.wait.unwrap_or(0).min(STATUS_WAIT_MAX)) {
        (Ok(Some(rec)), wait) if wait > 0 && rec.ended(Utc::now()).is_none() => {
            st.commands.get_when_ended(&id, std::time::Duration::from_secs(wait)).await
        }
        (found, _) => found,
    };
    match found {
        Ok(Some(rec)) => {
            let status = rec.effective_status(Utc::now()).to_string();
            Json(serde_json::json!({
                "id": rec.id, "machine": rec.machine, "action": rec.action,
                "parameters": crate::managed::secrets::shown_parameters(&rec.action, &rec.parameters),
                "status": status, "result": rec.result, "created_by": rec.created_by, "created_at": rec.created_at,
                "delivered_at": rec.delivered_at, "finished_at": rec.finished_at, "expires_at": rec.expires_at,
            }))
            .into_response()
        }
        Ok(None) => err(StatusCode::NOT_FOUND, "no such command"),
        Err(e) => internal(e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PollQuery {
    /// Seconds to hold the request open when nothing is waiting (at most 30).
    wait: Option<u64>,
}

pub(super) async fn poll(
    State(st): State<AppState>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    Query(q): Query<PollQuery>,
) -> Response {
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/v1/commands/poll");
    let signer = match check_machine(&st, &headers, "GET", path, b"", Some(crate::trust::MAX_SKEW)).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    let wait = std::time::Duration::from_secs(q.wait.unwrap_or(25).min(30));
    let answer = match st.commands.poll(&signer.key.machine_id, wait).await {
        Ok(list) => Json(list).into_response(),
        Err(e) => internal(e),
    };
    signer.seal(answer).await
}

/// Most machines one connector poll may name: a connector serves about a thousand hubs.
const MAX_POLLED: usize = 10_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PollManyRequest {
    /// The hubs long-polling the connector right now.
    machines: Vec<String>,
    /// Seconds to hold the request open when nothing is waiting (at most 30).
    #[serde(default)]
    wait: Option<u64>,
}

/// `POST /v1/commands/poll-many`: a connector's one long-poll for all the hubs that long-poll it,
/// instead of one upstream request per hub. Only hubs enrolled in the connector's own network are
/// served; the others come back in `refused`, so the connector can tell those hubs. The envelopes
/// are the cloud's signed ones, which the connector can neither forge nor alter.
pub(super) async fn poll_many(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let signer = match connector_machine(&st, &headers, "POST", "/v1/commands/poll-many", &body).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    let answer = poll_many_answer(&st, &signer.key, &body).await;
    signer.seal(answer).await
}

async fn poll_many_answer(st: &AppState, connector: &crate::trust::MachineKey, body: &[u8]) -> Response {
    let req: PollManyRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return err(StatusCode::BAD_REQUEST, format!("not a poll request: {e}")),
    };
    if req.machines.len() > MAX_POLLED {
        return err(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{} machines in one poll; at most {MAX_POLLED}", req.machines.len()),
        );
    }
    // One read for all the polled machines rather than one each.
    let polled = match st.trust.machine_keys_of(&req.machines).await {
        Ok(keys) => keys,
        Err(e) => return internal(e),
    };
    let ours: std::collections::HashSet<&str> = polled
        .iter()
        // Its network's hubs, and the connector's own embedded hub (same key, connector role).
        .filter(|mk| {
            mk.network_id == connector.network_id
                && (mk.role == Role::Sensorhub || mk.machine_id == connector.machine_id)
        })
        .map(|mk| mk.machine_id.as_str())
        .collect();
    let mut allowed = Vec::new();
    let mut refused = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for id in req.machines {
        if !seen.insert(id.clone()) {
            continue;
        }
        if ours.contains(id.as_str()) {
            allowed.push(id)
        } else {
            refused.push(id)
        }
    }
    let wait = std::time::Duration::from_secs(req.wait.unwrap_or(25).min(30));
    let commands = if allowed.is_empty() {
        Default::default()
    } else {
        match st.commands.poll_many(&allowed, wait).await {
            Ok(c) => c,
            Err(e) => return internal(e),
        }
    };
    Json(PollManyAnswer { commands, refused }).into_response()
}

pub(super) async fn result(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let signer = match check_machine(
        &st,
        &headers,
        "POST",
        "/v1/commands/result",
        &body,
        Some(crate::trust::MAX_SKEW),
    )
    .await
    {
        Ok(m) => m,
        Err(r) => return r,
    };
    let answer = result_answer(&st, &signer, &body).await;
    signer.seal(answer).await
}

/// A result as a hub sends it: signed with its machine key, or, inside its machine session, the
/// bare document (the session MAC over the request already proves who sent it, and costs the
/// hub microseconds instead of an RSA signature on every command's way back).
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum ResultBody {
    Signed(Signed<CommandResult>),
    Bare(CommandResult),
}

async fn result_answer(st: &AppState, signer: &super::auth::Signer, body: &[u8]) -> Response {
    let mk = &signer.key;
    let finished = match serde_json::from_slice(body) {
        Ok(ResultBody::Signed(signed)) => {
            let key = match st.trust.parsed_key(mk) {
                Ok(k) => k,
                Err(e) => return internal(e),
            };
            st.commands.finish(&mk.machine_id, &key, &signed).await
        }
        Ok(ResultBody::Bare(result)) if signer.in_session() => {
            st.commands.finish_authenticated(&mk.machine_id, &result).await
        }
        Ok(ResultBody::Bare(_)) => return err(
            StatusCode::BAD_REQUEST,
            "an unsigned command result is taken only inside a machine session; sign it with the machine key",
        ),
        Err(e) => return err(StatusCode::BAD_REQUEST, format!("not a command result: {e}")),
    };
    match finished {
        Ok(rec) => Json(serde_json::json!({"status": rec.status})).into_response(),
        Err(crate::commands::ResultRefused::Storage(e)) => internal(e),
        Err(e) => err(StatusCode::BAD_REQUEST, e.to_string()),
    }
}
