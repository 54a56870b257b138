//! Acknowledgements and maintenance windows (the rules are in `crate::silences`): an operator
//! acknowledges a sensor's problem with a comment, or withdraws that; an operator opens
//! maintenance windows over a machine or a network (one-off or weekly) and removes them. Each
//! change is in the audit trail; what a person may see follows their customers, like machines.

use super::{access, err, internal, AppState};
use crate::commands::AuditEntry;
use crate::people::{Actor, NetworkOwners};
use crate::silences::Silences;
use crate::store::people::Role;
use crate::store::silences::{Ack, Schedule, Scope, Window, MAX_COMMENT};
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use outpost_shared::model::State as SensorState;
use serde::{Deserialize, Serialize};

#[allow(clippy::result_large_err)]
fn silences(st: &AppState) -> Result<&Silences, Response> {
    st.silences.as_ref().ok_or_else(|| {
        err(
            StatusCode::SERVICE_UNAVAILABLE,
            "acknowledgements and maintenance windows are not available on this cloud",
        )
    })
}

fn entry(actor: &Actor, machine: &str, action: &str, parameters: serde_json::Value) -> AuditEntry {
    AuditEntry::action(machine, action, actor.label(), parameters)
}

#[allow(clippy::result_large_err)]
fn comment(c: Option<String>) -> Result<String, Response> {
    let c = c.unwrap_or_default().trim().to_string();
    if c.chars().count() > MAX_COMMENT {
        return Err(err(StatusCode::BAD_REQUEST, format!("comment: at most {MAX_COMMENT} characters")));
    }
    if c.chars().any(|ch| ch.is_control()) {
        return Err(err(StatusCode::BAD_REQUEST, "comment: no control characters (one line of text)"));
    }
    Ok(c)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AckRequest {
    #[serde(default)]
    comment: Option<String>,
}

/// `POST /v1/machines/{id}/sensors/{sensor}/ack` (body optional: `{"comment": "…"}`): an
/// operator acknowledges the sensor's current problem. Alerts about it stop until the sensor
/// changes or recovers.
pub(super) async fn acknowledge(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path((id, sensor)): Path<(String, String)>,
    body: Option<Json<AckRequest>>,
) -> Response {
    if let Err(r) = access::machine(&st, &actor, &id, Role::Operator, "ack").await {
        return r;
    }
    let s = match silences(&st) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let comment = match comment(body.map(|Json(b)| b).unwrap_or_default().comment) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let latest = match st.store.sensors(&id).await {
        Ok(list) => list.into_iter().find(|s| s.sensor == sensor),
        Err(e) => return internal(e),
    };
    let Some(latest) = latest else { return err(StatusCode::NOT_FOUND, "no such sensor on this machine") };
    if latest.state == SensorState::Ok {
        return err(StatusCode::CONFLICT, format!("{sensor} is ok: there is no problem to acknowledge"));
    }
    let ack = Ack {
        machine: id.clone(),
        sensor: sensor.clone(),
        state: latest.state,
        reading_ts: latest.ts,
        comment,
        by: actor.label(),
        at: Utc::now(),
    };
    if let Err(e) = s.acknowledge(ack.clone()).await {
        return internal(e);
    }
    let params = serde_json::json!({"sensor": sensor, "state": ack.state, "reading_ts": ack.reading_ts, "comment": ack.comment});
    access::audit(&st, entry(&actor, &id, "ack", params)).await;
    Json(serde_json::json!({"acknowledged": sensor, "state": ack.state, "by": ack.by, "ack": ack}))
        .into_response()
}

/// `DELETE /v1/machines/{id}/sensors/{sensor}/ack`: withdraws the acknowledgement; alerts about
/// the problem resume.
pub(super) async fn withdraw(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path((id, sensor)): Path<(String, String)>,
) -> Response {
    if let Err(r) = access::machine(&st, &actor, &id, Role::Operator, "ack-withdrawn").await {
        return r;
    }
    let s = match silences(&st) {
        Ok(s) => s,
        Err(r) => return r,
    };
    match s.withdraw(&id, &sensor).await {
        Ok(Some(ack)) => {
            let params = serde_json::json!({"sensor": sensor, "state": ack.state, "acknowledged_by": ack.by});
            access::audit(&st, entry(&actor, &id, "ack-withdrawn", params)).await;
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(None) => err(StatusCode::NOT_FOUND, "this sensor has no acknowledgement"),
        Err(e) => internal(e),
    }
}

/// A maintenance window as the API shows it.
#[derive(Debug, Serialize)]
pub(super) struct WindowRow {
    #[serde(flatten)]
    window: Window,
    /// When it closes, if it is open now.
    open_until: Option<DateTime<Utc>>,
}

/// `GET /v1/silences`: the acknowledgements and maintenance windows the actor may see.
pub(super) async fn list(State(st): State<AppState>, Extension(actor): Extension<Actor>) -> Response {
    let s = match silences(&st) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let (acks, windows, owners) = match (s.acks().await, s.windows().await, st.people.network_owners().await)
    {
        (Ok(a), Ok(w), Ok(o)) => (a, w, o),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return internal(e),
    };
    let mut visible_acks = Vec::new();
    for a in acks {
        match access::machine_customer(&st, &owners, &a.machine).await {
            Ok(c) if access::allows(&actor, Role::Viewer, c.as_deref()) => visible_acks.push(a),
            Ok(_) => {}
            Err(e) => return internal(e),
        }
    }
    let now = Utc::now();
    let mut rows = Vec::new();
    for w in windows {
        match scope_customer(&st, &owners, &w.scope).await {
            Ok(c) if access::allows(&actor, Role::Viewer, c.as_deref()) => {
                rows.push(WindowRow { open_until: w.schedule.open_until(now), window: w })
            }
            Ok(_) => {}
            Err(e) => return internal(e),
        }
    }
    rows.sort_by_key(|r| r.window.created);
    Json(serde_json::json!({"acks": visible_acks, "maintenance": rows})).into_response()
}

async fn scope_customer(
    st: &AppState,
    owners: &NetworkOwners,
    scope: &Scope,
) -> Result<Option<String>, crate::CloudError> {
    match scope {
        Scope::Machine(m) => access::machine_customer(st, owners, m).await,
        Scope::Network(n) => Ok(Some(owners.customer_of(n).to_string())),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewWindow {
    #[serde(default)]
    machine: Option<String>,
    #[serde(default)]
    network: Option<String>,
    #[serde(flatten)]
    schedule: Schedule,
    #[serde(default)]
    comment: Option<String>,
}

/// `POST /v1/maintenance`: `{"machine": id | "network": id, "once": {"start", "end"} |
/// "weekly": {"days": ["sun"], "start": "02:00", "minutes": 120}, "comment": "…"}` (times UTC).
pub(super) async fn add_window(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Json(req): Json<NewWindow>,
) -> Response {
    let s = match silences(&st) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let scope = match (req.machine, req.network) {
        (Some(m), None) => Scope::Machine(m),
        (None, Some(n)) => Scope::Network(n),
        _ => return err(StatusCode::BAD_REQUEST, "name exactly one of `machine` or `network`"),
    };
    let audit_machine = match &scope {
        Scope::Machine(m) => {
            if let Err(r) = access::machine(&st, &actor, m, Role::Operator, "maintenance").await {
                return r;
            }
            m.clone()
        }
        Scope::Network(n) => {
            let owners = match st.people.network_owners().await {
                Ok(o) => o,
                Err(e) => return internal(e),
            };
            let known = match st.trust.networks().await {
                Ok(n) => n,
                Err(e) => return internal(e),
            };
            let customer = owners.customer_of(n).to_string();
            if (!known.contains_key(n) && !owners.is_claimed(n)) || !actor.can(Role::Viewer, &customer) {
                return err(StatusCode::NOT_FOUND, "no such network");
            }
            if !actor.can(Role::Operator, &customer) {
                return err(
                    StatusCode::FORBIDDEN,
                    "maintenance needs the operator role for this network's customer",
                );
            }
            String::new()
        }
    };
    let now = Utc::now();
    if let Err(m) = req.schedule.check(now) {
        return err(StatusCode::BAD_REQUEST, m);
    }
    let comment = match comment(req.comment) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let mut raw = [0u8; 8];
    if let Err(e) = getrandom::fill(&mut raw) {
        return internal(format!("randomness: {e}"));
    }
    let w = Window {
        id: hex::encode(raw),
        scope,
        schedule: req.schedule,
        comment,
        by: actor.label(),
        created: now,
    };
    if let Err(e) = s.add_window(w.clone()).await {
        return internal(e);
    }
    let mut params = serde_json::to_value(&w).unwrap_or_default();
    if let Scope::Network(n) = &w.scope {
        params["network"] = serde_json::Value::String(n.clone());
    }
    access::audit(&st, entry(&actor, &audit_machine, "maintenance", params)).await;
    let open_until = w.schedule.open_until(now);
    (StatusCode::CREATED, Json(WindowRow { window: w, open_until })).into_response()
}

/// `DELETE /v1/maintenance/{id}`.
pub(super) async fn remove_window(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> Response {
    let s = match silences(&st) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let windows = match s.windows().await {
        Ok(w) => w,
        Err(e) => return internal(e),
    };
    let owners = match st.people.network_owners().await {
        Ok(o) => o,
        Err(e) => return internal(e),
    };
    let Some(w) = windows.into_iter().find(|w| w.id == id) else {
        return err(StatusCode::NOT_FOUND, "no such maintenance window");
    };
    let customer = match scope_customer(&st, &owners, &w.scope).await {
        Ok(c) => c,
        Err(e) => return internal(e),
    };
    if !access::allows(&actor, Role::Viewer, customer.as_deref()) {
        return err(StatusCode::NOT_FOUND, "no such maintenance window");
    }
    if !access::allows(&actor, Role::Operator, customer.as_deref()) {
        return err(StatusCode::FORBIDDEN, "removing maintenance needs the operator role for its customer");
    }
    match s.remove_window(&id).await {
        Ok(_) => {
            let (machine, mut params) = match &w.scope {
                Scope::Machine(m) => (m.clone(), serde_json::json!({"id": id})),
                Scope::Network(n) => (String::new(), serde_json::json!({"id": id, "network": n})),
            };
            params["comment"] = serde_json::Value::String(w.comment);
            access::audit(&st, entry(&actor, &machine, "maintenance-removed", params)).await;
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => internal(e),
    }
}
