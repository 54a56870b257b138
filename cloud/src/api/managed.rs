//! Sensors managed from the cloud: the catalogue, a machine's own sensors, its templates, status,
//! history, roll-back and "test now"; templates. The decisions are in [`crate::managed`]; this
//! file maps requests and errors. A password is taken in plaintext on input only and answered as
//! `{"set": true}`; no error message quotes it.

use super::{err, internal, AppState};
use crate::managed::{catalogue, ManagedError, ManagedSensors};
use crate::CloudError;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

/// Who the audit trail names for changes made with the admin token (API and dashboard alike).
const WHO: &str = "admin";

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
pub(super) async fn show(State(st): State<AppState>, Path(id): Path<String>) -> Response {
    let m: &ManagedSensors = service!(st);
    answer(StatusCode::OK, m.machine(&id).await)
}

/// `POST /v1/machines/{id}/managed/sensors`: adds one sensor; answers the new version.
pub(super) async fn add(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Json(body): Json<serde_json::Value>,
) -> Response {
    let m: &ManagedSensors = service!(st);
    answer(StatusCode::CREATED, m.put_sensor(&id, None, body, WHO).await.map(version))
}

/// `PUT /v1/machines/{id}/managed/sensors/{sensor}`: replaces one sensor (its id may change).
pub(super) async fn edit(
    State(st): State<AppState>,
    Path((id, sensor)): Path<(String, String)>,
    Json(body): Json<serde_json::Value>,
) -> Response {
    let m: &ManagedSensors = service!(st);
    answer(StatusCode::OK, m.put_sensor(&id, Some(&sensor), body, WHO).await.map(version))
}

/// `DELETE /v1/machines/{id}/managed/sensors/{sensor}`.
pub(super) async fn remove(
    State(st): State<AppState>,
    Path((id, sensor)): Path<(String, String)>,
) -> Response {
    let m: &ManagedSensors = service!(st);
    answer(StatusCode::OK, m.remove_sensor(&id, &sensor, WHO).await.map(version))
}

/// `POST /v1/machines/{id}/managed/sensors/{sensor}/test`: a `sample-now` command; its result
/// (`GET /v1/commands/{command_id}`) carries the readings.
pub(super) async fn test_now(
    State(st): State<AppState>,
    Path((id, sensor)): Path<(String, String)>,
) -> Response {
    let m: &ManagedSensors = service!(st);
    answer(
        StatusCode::CREATED,
        m.test_now(&id, &sensor, WHO).await.map(|c| serde_json::json!({"command_id": c})),
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
    Path(id): Path<String>,
    Json(body): Json<Assign>,
) -> Response {
    let m: &ManagedSensors = service!(st);
    answer(StatusCode::OK, m.set_templates(&id, body.templates, WHO).await.map(version))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HistoryQuery {
    limit: Option<usize>,
}

/// `GET /v1/machines/{id}/managed/history`: versions, newest first: who, when, what changed.
pub(super) async fn history(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Response {
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
    Path(id): Path<String>,
    Json(body): Json<RollBack>,
) -> Response {
    let m: &ManagedSensors = service!(st);
    answer(StatusCode::CREATED, m.roll_back(&id, body.version, WHO).await.map(version))
}

/// `GET /v1/templates`.
pub(super) async fn templates(State(st): State<AppState>) -> Response {
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
pub(super) async fn create_template(State(st): State<AppState>, Json(body): Json<NewTemplate>) -> Response {
    let m: &ManagedSensors = service!(st);
    answer(
        StatusCode::CREATED,
        m.put_template(&body.name, body.sensors, true, WHO).await.map(|v| serde_json::json!({"versions": v})),
    )
}

/// `GET /v1/templates/{name}`.
pub(super) async fn template(State(st): State<AppState>, Path(name): Path<String>) -> Response {
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
    Path(name): Path<String>,
    Json(body): Json<TemplateSensors>,
) -> Response {
    let m: &ManagedSensors = service!(st);
    answer(
        StatusCode::OK,
        m.put_template(&name, body.sensors, false, WHO).await.map(|v| serde_json::json!({"versions": v})),
    )
}

/// `DELETE /v1/templates/{name}`: only a template no machine uses.
pub(super) async fn delete_template(State(st): State<AppState>, Path(name): Path<String>) -> Response {
    let m: &ManagedSensors = service!(st);
    answer(StatusCode::OK, m.delete_template(&name, WHO).await.map(|()| serde_json::json!({"deleted": name})))
}
