//! Sensors managed from the cloud: the catalogue, a machine's own sensors, its templates, status,
//! history, roll-back and "test now"; templates. The decisions are in [`crate::managed`]; this
//! file maps requests and errors. A password is taken in plaintext on input only and answered as
//! `{"set": true}`; no error message quotes it.

use super::{access, err, internal, AppState};
use crate::managed::{catalogue, ManagedError, ManagedSensors};
use crate::people::Actor;
use crate::store::people::Role;
use crate::CloudError;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

/// A machine's managed sensors: seen by its customer's viewers, changed by its admins (SECURITY.md's
/// role table); another customer's machine is not found.
macro_rules! machine {
    ($st:expr, $actor:expr, $id:expr, $role:expr, $what:expr) => {
        if let Err(r) = access::machine(&$st, &$actor, &$id, $role, $what).await {
            return r;
        }
    };
}

/// Templates are site-wide: they change machines of every customer that uses them, so only an
/// admin over every customer edits them; an admin of any customer reads them, to choose one.
fn may_read_templates(actor: &Actor) -> bool {
    actor.can_all(Role::Viewer) || actor.grants().iter().any(|g| g.role >= Role::Admin) || actor.is_owner()
}

fn templates_refused(actor: &Actor, edit: bool) -> Option<Response> {
    if edit && !actor.can_all(Role::Admin) {
        return Some(err(
            StatusCode::FORBIDDEN,
            "templates apply across customers: editing one needs the admin role for every customer",
        ));
    }
    if !may_read_templates(actor) {
        return Some(err(StatusCode::FORBIDDEN, "templates are for admins"));
    }
    None
}

/// The service, or the handler answers 503.
macro_rules! service {
    ($st:expr) => {
        match $st.managed.as_ref() {
            Some(m) => m,
            None => {
                return err(StatusCode::SERVICE_UNAVAILABLE, "managed sensors are not set up on this cloud")
            }
        }
    };
}

fn fail(e: ManagedError) -> Response {
    match e {
        ManagedError::NotFound(m) => err(StatusCode::NOT_FOUND, m),
        ManagedError::Conflict(m) => err(StatusCode::CONFLICT, m),
        ManagedError::Invalid(problems) => {
            let text = ManagedError::Invalid(problems.clone()).to_string();
            (StatusCode::BAD_REQUEST, Json(serde_json::json!({"error": text, "problems": problems})))
                .into_response()
        }
        ManagedError::Cloud(CloudError::Unavailable(m)) => err(StatusCode::SERVICE_UNAVAILABLE, m),
        ManagedError::Cloud(CloudError::Conflict(m)) => err(StatusCode::CONFLICT, m),
        ManagedError::Cloud(e) => internal(e),
    }
}

fn answer<T: serde::Serialize>(status: StatusCode, r: Result<T, ManagedError>) -> Response {
    match r {
        Ok(v) => (status, Json(v)).into_response(),
        Err(e) => fail(e),
    }
}

fn version(v: u64) -> serde_json::Value {
    serde_json::json!({"version": v})
}

/// `GET /v1/sensor-catalogue`: every kind with its fields, types, defaults and help.
pub(super) async fn catalogue() -> Response {
    Json(catalogue::catalogue()).into_response()
}

/// `GET /v1/machines/{id}/managed`: own sensors, templates, what the machine is sent, status.
pub(super) async fn show(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> Response {
    machine!(st, actor, id, Role::Viewer, "managed sensors");
    let m: &ManagedSensors = service!(st);
    answer(StatusCode::OK, m.machine(&id).await)
}

/// `POST /v1/machines/{id}/managed/sensors`: adds one sensor; answers the new version.
pub(super) async fn add(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    Json(body): Json<serde_json::Value>,
) -> Response {
    machine!(st, actor, id, Role::Admin, "managed sensors: add");
    let m: &ManagedSensors = service!(st);
    answer(StatusCode::CREATED, m.put_sensor(&id, None, body, &actor.label()).await.map(version))
}

/// `PUT /v1/machines/{id}/managed/sensors/{sensor}`: replaces one sensor (its id may change).
pub(super) async fn edit(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path((id, sensor)): Path<(String, String)>,
    Json(body): Json<serde_json::Value>,
) -> Response {
    machine!(st, actor, id, Role::Admin, "managed sensors: edit");
    let m: &ManagedSensors = service!(st);
    answer(StatusCode::OK, m.put_sensor(&id, Some(&sensor), body, &actor.label()).await.map(version))
}

/// `DELETE /v1/machines/{id}/managed/sensors/{sensor}`.
pub(super) async fn remove(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path((id, sensor)): Path<(String, String)>,
) -> Response {
    machine!(st, actor, id, Role::Admin, "managed sensors: remove");
    let m: &ManagedSensors = service!(st);
    answer(StatusCode::OK, m.remove_sensor(&id, &sensor, &actor.label()).await.map(version))
}

/// `POST /v1/machines/{id}/managed/sensors/{sensor}/test`: a `sample-now` command; its result
/// (`GET /v1/commands/{command_id}`) carries the readings.
pub(super) async fn test_now(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path((id, sensor)): Path<(String, String)>,
) -> Response {
    machine!(st, actor, id, Role::Operator, "managed sensors: test now");
    let m: &ManagedSensors = service!(st);
    answer(
        StatusCode::CREATED,
        m.test_now(&id, &sensor, &actor.label()).await.map(|c| serde_json::json!({"command_id": c})),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Assign {
    templates: Vec<String>,
}

/// `PUT /v1/machines/{id}/managed/templates` `{"templates": [...]}`, in the order they apply.
pub(super) async fn assign(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    Json(body): Json<Assign>,
) -> Response {
    machine!(st, actor, id, Role::Admin, "managed sensors: templates");
    let m: &ManagedSensors = service!(st);
    answer(StatusCode::OK, m.set_templates(&id, body.templates, &actor.label()).await.map(version))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RelayList {
    relays: Vec<outpost_shared::relay_settings::RelaySettings>,
}

/// `PUT /v1/machines/{id}/managed/relays` `{"relays": [{"card", "relay", "name", "locked",
/// "restore"}]}`: the names, locks and restore rules the machine's relay cards get, in place of
/// the ones before. Admins only: lifting a lock lets remote commands switch that relay.
pub(super) async fn relays(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    Json(body): Json<RelayList>,
) -> Response {
    machine!(st, actor, id, Role::Admin, "managed sensors: relays");
    let m: &ManagedSensors = service!(st);
    answer(StatusCode::OK, m.set_relays(&id, body.relays, &actor.label()).await.map(version))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HistoryQuery {
    limit: Option<usize>,
}

/// `GET /v1/machines/{id}/managed/history`: versions, newest first: who, when, what changed.
pub(super) async fn history(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Response {
    machine!(st, actor, id, Role::Viewer, "managed sensors: history");
    let m: &ManagedSensors = service!(st);
    let limit = q.limit.unwrap_or(50).clamp(1, crate::store::managed::HISTORY_KEPT as usize);
    answer(StatusCode::OK, m.history(&id, limit).await)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RollBack {
    version: u64,
}

/// `POST /v1/machines/{id}/managed/rollback` `{"version": N}`: a new version with N's content.
pub(super) async fn roll_back(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    Json(body): Json<RollBack>,
) -> Response {
    machine!(st, actor, id, Role::Admin, "managed sensors: roll back");
    let m: &ManagedSensors = service!(st);
    answer(StatusCode::CREATED, m.roll_back(&id, body.version, &actor.label()).await.map(version))
}

/// `GET /v1/templates`.
pub(super) async fn templates(State(st): State<AppState>, Extension(actor): Extension<Actor>) -> Response {
    if let Some(r) = templates_refused(&actor, false) {
        return r;
    }
    let m: &ManagedSensors = service!(st);
    answer(StatusCode::OK, m.templates().await)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewTemplate {
    name: String,
    #[serde(default)]
    sensors: Vec<serde_json::Value>,
}

/// `POST /v1/templates` `{"name": …, "sensors": [...]}`.
pub(super) async fn create_template(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Json(body): Json<NewTemplate>,
) -> Response {
    if let Some(r) = templates_refused(&actor, true) {
        return r;
    }
    let m: &ManagedSensors = service!(st);
    answer(
        StatusCode::CREATED,
        m.put_template(&body.name, body.sensors, true, &actor.label())
            .await
            .map(|v| serde_json::json!({"versions": v})),
    )
}

/// `GET /v1/templates/{name}`.
pub(super) async fn template(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
) -> Response {
    if let Some(r) = templates_refused(&actor, false) {
        return r;
    }
    let m: &ManagedSensors = service!(st);
    answer(StatusCode::OK, m.template(&name).await)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TemplateSensors {
    sensors: Vec<serde_json::Value>,
}

/// `PUT /v1/templates/{name}` `{"sensors": [...]}`: every machine using it gets a new version.
pub(super) async fn edit_template(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
    Json(body): Json<TemplateSensors>,
) -> Response {
    if let Some(r) = templates_refused(&actor, true) {
        return r;
    }
    let m: &ManagedSensors = service!(st);
    answer(
        StatusCode::OK,
        m.put_template(&name, body.sensors, false, &actor.label())
            .await
            .map(|v| serde_json::json!({"versions": v})),
    )
}

/// `DELETE /v1/templates/{name}`: only a template no machine uses.
pub(super) async fn delete_template(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
) -> Response {
    if let Some(r) = templates_refused(&actor, true) {
        return r;
    }
    let m: &ManagedSensors = service!(st);
    answer(
        StatusCode::OK,
        m.delete_template(&name, &actor.label()).await.map(|()| serde_json::json!({"deleted": name})),
    )
}
