//! The HTTP API: one router for machines (ingest) and people (JSON API, live events, dashboard).
//! Errors are JSON `{"error": "..."}` with a status that says whose fault it was.
//!
//! One file per resource; this one holds the shared state, builds the router and the error helpers.
//! `auth` checks who is asking (admin token, machine signatures) for all of them.

mod admission;
mod audit;
mod auth;
mod commands;
mod enrollment;
mod events;
mod ingest;
mod machines;
mod mail;
mod managed;
#[cfg(test)]
mod managed_tests;
mod network;
mod series;
#[cfg(test)]
mod tests;

use crate::commands::Commands;
use crate::config::CloudConfig;
use crate::store::Store;
use crate::trust::Trust;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use outpost_shared::http_server::rate;
use outpost_shared::model::{ApiError, MachineInfo, SensorLatest};
use serde::Serialize;
use std::sync::Arc;
use tokio::sync::broadcast;

/// Live events buffered per slow dashboard before it starts missing some (it then reloads).
const EVENT_BACKLOG: usize = 1024;

#[derive(Clone)]
pub struct AppState {
    store: Store,
    admin_token: Arc<str>,
    trust: Trust,
    commands: Commands,
    config: Arc<CloudConfig>,
    events: broadcast::Sender<LiveEvent>,
    /// The gates of ingest: admission slots and the inflation limit.
    admission: Arc<admission::Admission>,
    /// State changes for the alert mailer, when mail is configured. Never waited on: ingest
    /// must not slow down because a mail server is slow.
    alerts: Option<tokio::sync::mpsc::Sender<outpost_shared::mail::AlertEvent>>,
    /// Sensors managed from the cloud; its routes answer 503 without it.
    managed: Option<crate::managed::ManagedSensors>,
}

impl AppState {
    pub fn new(
        store: Store,
        admin_token: String,
        trust: Trust,
        commands: Commands,
        config: Arc<CloudConfig>,
    ) -> Self {
        let (events, _) = broadcast::channel(EVENT_BACKLOG);
        let admission = Arc::new(admission::Admission::new(&config.ingest));
        AppState {
            store,
            admin_token: admin_token.into(),
            trust,
            commands,
            config,
            events,
            admission,
            alerts: None,
            managed: None,
        }
    }

    pub fn with_managed(mut self, managed: crate::managed::ManagedSensors) -> Self {
        self.managed = Some(managed);
        self
    }

    pub fn with_alerts(mut self, tx: tokio::sync::mpsc::Sender<outpost_shared::mail::AlertEvent>) -> Self {
        self.alerts = Some(tx);
        self
    }
}

/// What the dashboard hears on `/v1/events`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LiveEvent {
    Machine(MachineInfo),
    Sensors { machine: String, sensors: Vec<SensorLatest> },
}

/// The routes and the limits in front of them that only the cloud has (per-source limits on what
/// needs no credentials, the ingest gates in [`admission`]). The limits every listener has are
/// added where it is served ([`outpost_shared::http_server::serve_tls`]).
pub fn router(state: AppState) -> Router {
    let limits = &state.config.server;
    let (enroll_limit, public_limit) =
        limits.source_limits("enrollments per source", "unauthenticated requests per source");
    let public = Router::new()
        .route("/", get(crate::dashboard::index))
        .route("/ui/{file}", get(crate::dashboard::asset))
        .route("/v1/health", get(|| async { Json(serde_json::json!({"ok": true})) }))
        .route("/v1/cloud-key", get(enrollment::cloud_key))
        .route("/v1/ca.pem", get(enrollment::ca_pem))
        .route_layer(middleware::from_fn_with_state(public_limit, rate::limit));
    let enroll = Router::new()
        .route("/v1/enroll", post(enrollment::enroll))
        .route_layer(middleware::from_fn_with_state(enroll_limit, rate::limit))
        .layer(DefaultBodyLimit::max(state.config.ingest.max_body as usize));
    let people = Router::new()
        .route("/v1/machines", get(machines::list))
        .route("/v1/machines/{id}", delete(machines::revoke))
        .route("/v1/machines/{id}/sensors", get(machines::sensors))
        .route("/v1/machines/{id}/readings", get(machines::readings))
        .route("/v1/machines/{id}/series", get(series::series))
        .route("/v1/events", get(events::stream))
        .route("/v1/hubs/unattached", get(machines::unattached))
        .route("/v1/enrollment-tokens", post(enrollment::new_token).get(enrollment::list_tokens))
        .route("/v1/enrollment-tokens/{id}", delete(enrollment::cancel_token))
        .route("/v1/machines/{id}/commands", post(commands::create))
        .route("/v1/machines/{id}/relays/{card}/{relay}", post(commands::switch_relay))
        .route("/v1/machines/{id}/seal", post(machines::seal_secret))
        .route("/v1/machines/{id}/mail-commands", get(mail::show).put(mail::grant).delete(mail::withdraw))
        .route("/v1/commands/{id}", get(commands::status))
        .route("/v1/audit", get(audit::list))
        .route("/v1/audit/rows", get(audit::rows))
        .route("/v1/sensor-catalogue", get(managed::catalogue))
        .route("/v1/machines/{id}/managed", get(managed::show))
        .route("/v1/machines/{id}/managed/sensors", post(managed::add))
        .route("/v1/machines/{id}/managed/sensors/{sensor}", put(managed::edit).delete(managed::remove))
        .route("/v1/machines/{id}/managed/sensors/{sensor}/test", post(managed::test_now))
        .route("/v1/machines/{id}/managed/templates", put(managed::assign))
        .route("/v1/machines/{id}/managed/history", get(managed::history))
        .route("/v1/machines/{id}/managed/rollback", post(managed::roll_back))
        .route("/v1/templates", get(managed::templates).post(managed::create_template))
        .route(
            "/v1/templates/{name}",
            get(managed::template).put(managed::edit_template).delete(managed::delete_template),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::require_admin));
    let machines = Router::new()
        .route("/v1/batches", post(ingest::batches))
        .route("/v1/forward", post(ingest::forward))
        .route("/v1/network-keys", post(network::keys))
        .route("/v1/receipt", post(enrollment::receipt))
        .route("/v1/commands/poll", get(commands::poll))
        .route("/v1/commands/poll-many", post(commands::poll_many))
        .route("/v1/commands/result", post(commands::result))
        .route("/v1/mail-commands", post(mail::create))
        .route("/v1/mail-commands/{id}", get(mail::status))
        .layer(DefaultBodyLimit::max(state.config.ingest.max_body as usize));
    Router::new()
        .merge(public)
        .merge(enroll)
        .merge(people)
        .merge(machines)
        .fallback(|| async {
            err(StatusCode::NOT_FOUND, "no such endpoint; see the API section of README.md")
        })
        .with_state(state)
}

pub(super) fn err(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(ApiError::new(msg))).into_response()
}

pub(super) fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "request failed");
    err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}
