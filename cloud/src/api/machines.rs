//! Machines as people see them: the list, sensors, readings, revocation, unattached hubs, sealing
//! a secret to one machine's key.

use super::{access, err, internal, AppState};
use crate::config::CloudConfig;
use crate::people::Actor;
use crate::store::people::Role;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use outpost_shared::keys::PublicKey;
use outpost_shared::model::MachineInfo;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// A row of `GET /v1/machines`: what the store knows of a machine, plus what the dashboard needs
/// from enrollment to group and name it.
#[derive(Debug, Serialize)]
pub(super) struct MachineRow {
    #[serde(flatten)]
    info: MachineInfo,
    /// The network the machine is enrolled in; None once revoked.
    network: Option<String>,
    /// The customer holding that network; None once revoked.
    customer: Option<String>,
    /// Its enrollment was withdrawn. A machine reaches the store only through a signed batch, so
    /// it was enrolled then; the only way its key leaves the enrolled list is revocation.
    revoked: bool,
    /// When an admin archived the revoked machine (the dashboard leaves it out unless asked).
    #[serde(skip_serializing_if = "Option::is_none")]
    archived_at: Option<DateTime<Utc>>,
    /// The host name of the connector named in `uplink` (`connector:<id>`), when that connector
    /// is enrolled: people know machines by name, not by a 32-hex fingerprint.
    #[serde(skip_serializing_if = "Option::is_none")]
    uplink_name: Option<String>,
}

/// `GET /v1/machines`: the machines of the customers the actor may see, and no others.
pub(super) async fn list(State(st): State<AppState>, Extension(actor): Extension<Actor>) -> Response {
    let machines = match st.store.machines().await {
        Ok(list) => list,
        Err(e) => return internal(e),
    };
    let owners = match st.people.network_owners().await {
        Ok(o) => o,
        Err(e) => return internal(e),
    };
    match st.trust.networks().await {
        Ok(networks) => {
            let list = machines;
            let now = Utc::now();
            let enrolled: HashMap<&str, &crate::trust::MachineKey> =
                networks.values().flatten().map(|k| (k.machine_id.as_str(), k)).collect();
            let rows: Vec<MachineRow> = list
                .into_iter()
                .map(|m| {
                    // Named before liveness may replace the path with `offline`: the page then says
                    // which connector the machine was last heard through.
                    let uplink_name = m
                        .uplink
                        .strip_prefix("connector:")
                        .and_then(|c| enrolled.get(c))
                        .map(|c| c.hostname.clone());
                    let m = with_liveness(m, now, &st.config);
                    let key = enrolled.get(m.id.as_str());
                    MachineRow {
                        network: key.map(|k| k.network_id.clone()),
                        customer: key.map(|k| owners.customer_of(&k.network_id).to_string()),
                        revoked: key.is_none(),
                        archived_at: None,
                        uplink_name,
                        info: m,
                    }
                })
                .filter(|row| access::allows(&actor, Role::Viewer, row.customer.as_deref()))
                .collect();
            // Revoked machines are few: their records are read one by one.
            let mut rows = rows;
            for row in rows.iter_mut().filter(|r| r.revoked) {
                match st.trust.revocation(&row.info.id).await {
                    Ok(rec) => row.archived_at = rec.and_then(|r| r.archived_at),
                    Err(e) => return internal(e),
                }
            }
            Json(rows).into_response()
        }
        Err(e) => internal(e),
    }
}

/// `DELETE /v1/machines/{id}`: withdraws the machine's enrollment (a stolen or retired machine).
/// Its signed requests are refused from now on and hubs stop trusting it as a connector; its
/// readings stay. In the audit trail as `revoke` by the actor. Needs admin.
pub(super) async fn revoke(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = access::machine(&st, &actor, &id, Role::Admin, "revoke").await {
        return r;
    }
    match st.trust.revoke(&id, Utc::now()).await {
        Ok(Some(mk)) => {
            let detail =
                serde_json::json!({"role": mk.role, "network": mk.network_id, "hostname": mk.hostname});
            let entry = crate::commands::AuditEntry {
                ts: Utc::now(),
                command_id: String::new(),
                machine: mk.machine_id.clone(),
                action: "revoke".into(),
                parameters: serde_json::Value::Null,
                who: actor.label(),
                event: "done".into(),
                detail: detail.clone(),
            };
            if let Err(e) = st.commands.record(entry).await {
                tracing::error!(error = %e, machine = %id, "revoked, but the audit trail could not record it");
            }
            Json(serde_json::json!({"revoked": mk.machine_id, "role": mk.role, "network": mk.network_id}))
                .into_response()
        }
        Ok(None) => err(StatusCode::NOT_FOUND, access::NO_MACHINE),
        Err(e) => internal(e),
    }
}

/// `POST /v1/machines/{id}/archive` (and `DELETE` to bring it back): puts a revoked machine out
/// of the dashboard's list; its readings and revocation stay. Revoked machines belong to no
/// customer any more, so this needs admin over every customer. 409 for an enrolled machine.
pub(super) async fn archive(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    method: axum::http::Method,
    Path(id): Path<String>,
) -> Response {
    let back = method == axum::http::Method::DELETE;
    let action = if back { "unarchive" } else { "archive" };
    if let Err(r) = access::machine(&st, &actor, &id, Role::Admin, action).await {
        return r;
    }
    let at = (!back).then(Utc::now);
    match st.trust.archive(&id, at).await {
        Ok(true) => {
            let entry =
                crate::commands::AuditEntry::action(&id, action, actor.label(), serde_json::Value::Null);
            access::audit(&st, entry).await;
            Json(serde_json::json!({"machine": id, "archived_at": at})).into_response()
        }
        Ok(false) => err(StatusCode::CONFLICT, "only a revoked machine can be archived; revoke it first"),
        Err(e) => internal(e),
    }
}

/// A machine that has been silent longer than `offline_after` is shown `offline`, whatever path
/// it last reported.
fn with_liveness(mut m: MachineInfo, now: DateTime<Utc>, config: &CloudConfig) -> MachineInfo {
    let silent = (now - m.last_seen).to_std().unwrap_or_default();
    if silent > config.offline_after {
        m.uplink = "offline".into();
    }
    m
}

pub(super) async fn sensors(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = access::machine(&st, &actor, &id, Role::Viewer, "sensors").await {
        return r;
    }
    let found =
        async { Ok::<_, crate::CloudError>((st.store.machine(&id).await?, st.store.sensors(&id).await?)) };
    match found.await {
        Ok((None, _)) => err(StatusCode::NOT_FOUND, "no such machine"),
        Ok((Some(_), list)) => Json(list).into_response(),
        Err(e) => internal(e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReadingsQuery {
    sensor: String,
    since: Option<String>,
    limit: Option<usize>,
    /// `raw` (default) or `hourly`.
    resolution: Option<String>,
}

/// Most rows one request may ask for.
const MAX_LIMIT: usize = 100_000;

pub(super) async fn readings(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    Query(q): Query<ReadingsQuery>,
) -> Response {
    if let Err(r) = access::machine(&st, &actor, &id, Role::Viewer, "readings").await {
        return r;
    }
    let since = match q.since.as_deref().map(DateTime::parse_from_rfc3339) {
        None => None,
        Some(Ok(t)) => Some(t.with_timezone(&Utc)),
        Some(Err(e)) => {
            return err(
                StatusCode::BAD_REQUEST,
                format!("`since` must be RFC 3339, e.g. 2026-01-31T12:00:00Z ({e})"),
            )
        }
    };
    let limit = q.limit.unwrap_or(1000);
    if limit == 0 || limit > MAX_LIMIT {
        return err(StatusCode::BAD_REQUEST, format!("`limit` must be between 1 and {MAX_LIMIT}"));
    }
    let store = st.store.clone();
    let hourly = match q.resolution.as_deref() {
        None | Some("raw") => false,
        Some("hourly") => true,
        Some(other) => {
            return err(StatusCode::BAD_REQUEST, format!("unknown resolution `{other}`; use raw or hourly"))
        }
    };
    let r = async move {
        if store.machine(&id).await?.is_none() {
            return Ok::<_, crate::CloudError>(err(StatusCode::NOT_FOUND, "no such machine"));
        }
        Ok(if hourly {
            Json(store.hourly(&id, &q.sensor, since, limit).await?).into_response()
        } else {
            Json(store.readings(&id, &q.sensor, since, limit).await?).into_response()
        })
    };
    match r.await {
        Ok(resp) => resp,
        Err(e) => internal(e),
    }
}

/// Hubs connectors saw but that are not enrolled: each shown to whoever may see the connector
/// that saw it.
pub(super) async fn unattached(State(st): State<AppState>, Extension(actor): Extension<Actor>) -> Response {
    let r = async {
        let list = st.store.unattached(Utc::now()).await?;
        let owners = st.people.network_owners().await?;
        let mut out = Vec::new();
        for hub in list {
            let customer = access::machine_customer(&st, &owners, &hub.connector).await?;
            if access::allows(&actor, Role::Viewer, customer.as_deref()) {
                out.push(hub);
            }
        }
        Ok::<_, crate::CloudError>(out)
    };
    match r.await {
        Ok(list) => Json(list).into_response(),
        Err(e) => internal(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SealRequest {
    secret: String,
}

/// Seals a secret to one machine's key and returns only the sealed form; the plaintext is
/// never stored or logged here.
pub(super) async fn seal_secret(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    Json(req): Json<SealRequest>,
) -> Response {
    if let Err(r) = access::machine(&st, &actor, &id, Role::Admin, "seal").await {
        return r;
    }
    let mk = match st.trust.machine_key(&id).await {
        Ok(Some(m)) => m,
        Ok(None) => return err(StatusCode::NOT_FOUND, "no such enrolled machine"),
        Err(e) => return internal(e),
    };
    let sealed = PublicKey::from_pem(&mk.public_key)
        .map_err(|e| e.to_string())
        .and_then(|k| outpost_shared::keys::seal(&k, &req.secret).map_err(|e| e.to_string()));
    match sealed {
        Ok(s) => Json(serde_json::json!({"sealed": s})).into_response(),
        Err(e) => internal(e),
    }
}
