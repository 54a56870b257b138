//! The HTTP API: one router for machines (ingest) and people (JSON API, live events, dashboard).
//! Errors are JSON `{"error": "..."}` with a status that says whose fault it was.
//!
//! One file per resource; this one holds the shared state, builds the router and the error helpers.
//! People: `sessions` (sign-in, setup, me, second factor), `users`, `customers`, `api_tokens`,
//! with what they share in `people`.
//! `auth` checks who is asking (people: session cookie, API token, the CLI's admin token; machines:
//! signatures) for all of them, and `access` what a person may see and do.

mod access;
mod admission;
mod api_tokens;
mod audit;
mod auth;
mod commands;
mod customers;
mod enrollment;
mod events;
mod ingest;
mod machine_sessions;
mod machines;
mod mail;
mod managed;
#[cfg(all(test, unix))]
mod managed_tests;
mod network;
mod people;
#[cfg(all(test, unix))]
mod people_tests;
mod series;
mod sessions;
mod silences;
#[cfg(all(test, unix))]
mod tests;
mod users;

use crate::commands::Commands;
use crate::config::CloudConfig;
use crate::people::People;
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

/// Largest body of a sign-in: far above any real one, and refused before anything is hashed.
const SIGN_IN_BODY: usize = 64 << 10;
/// Largest body of a request people send once signed in (commands, users, a template of managed
/// sensors): far above any real one.
const PEOPLE_BODY: usize = 256 << 10;
/// Largest machine-session login body taken (see the route).
const LOGIN_BODY: usize = 4 << 10;

/// Live events buffered per slow dashboard before it starts missing some (it then reloads).
const EVENT_BACKLOG: usize = 1024;

#[derive(Clone)]
pub struct AppState {
    store: Store,
    admin_token: Arc<str>,
    trust: Trust,
    commands: Commands,
    /// Users, sessions, customers, grants and API tokens.
    people: People,
    config: Arc<CloudConfig>,
    events: broadcast::Sender<LiveEvent>,
    /// The gates of ingest: admission slots and the inflation limit.
    admission: Arc<admission::Admission>,
    /// State changes for the alert mailer, when mail is configured. Never waited on: ingest
    /// must not slow down because a mail server is slow.
    alerts: Option<tokio::sync::mpsc::Sender<outpost_shared::mail::AlertEvent>>,
    /// Sensors managed from the cloud; its routes answer 503 without it.
    managed: Option<crate::managed::ManagedSensors>,
    /// The other cloud nodes on the same database, told of every stored batch; None on sled.
    nodes: Option<crate::nodes::Nodes>,
    /// Acknowledgements and maintenance windows; their routes answer 503 without it.
    silences: Option<crate::silences::Silences>,
}

impl AppState {
    pub fn new(
        store: Store,
        admin_token: String,
        trust: Trust,
        commands: Commands,
        people: People,
        config: Arc<CloudConfig>,
    ) -> Self {
        let (events, _) = broadcast::channel(EVENT_BACKLOG);
        let admission = Arc::new(admission::Admission::new(&config.ingest));
        AppState {
            store,
            admin_token: admin_token.into(),
            trust,
            commands,
            people,
            config,
            events,
            admission,
            alerts: None,
            managed: None,
            nodes: None,
            silences: None,
        }
    }

    pub fn with_silences(mut self, silences: crate::silences::Silences) -> Self {
        self.silences = Some(silences);
        self
    }

    pub fn with_managed(mut self, managed: crate::managed::ManagedSensors) -> Self {
        self.managed = Some(managed);
        self
    }

    /// Tells `nodes` of every stored batch, for their live events.
    pub fn with_nodes(mut self, nodes: crate::nodes::Nodes) -> Self {
        self.nodes = Some(nodes);
        self
    }

    /// Where live events go; the cross-node listener feeds what other nodes stored in here.
    pub fn events(&self) -> broadcast::Sender<LiveEvent> {
        self.events.clone()
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
        .route("/v1/machine-session/challenge", get(machine_sessions::challenge))
        .route_layer(middleware::from_fn_with_state(public_limit, rate::limit));
    let enroll = Router::new()
        .route("/v1/enroll", post(enrollment::enroll))
        .route_layer(middleware::from_fn_with_state(enroll_limit.clone(), rate::limit))
        .layer(DefaultBodyLimit::max(state.config.ingest.max_body as usize));
    // Password guessing pays the enrollment limit per source, besides the per-account lockout.
    let sign_in = Router::new()
        .route("/v1/session", post(sessions::sign_in))
        .route("/v1/setup", post(sessions::setup))
        .route_layer(middleware::from_fn_with_state(enroll_limit, rate::limit))
        .layer(DefaultBodyLimit::max(SIGN_IN_BODY));
    let people = Router::new()
        .route("/v1/me", get(sessions::whoami))
        .route("/v1/me/password", put(sessions::change_password))
        .route("/v1/me/totp", post(sessions::totp_begin).put(sessions::totp_confirm))
        .route("/v1/users/{name}/totp", delete(sessions::totp_reset))
        .route("/v1/session", delete(sessions::sign_out))
        .route("/v1/sessions", delete(sessions::sign_out_everywhere))
        .route("/v1/users", get(users::list_users).post(users::add_user))
        .route("/v1/users/{name}", delete(users::delete_user))
        .route("/v1/users/{name}/grants/{customer}", put(users::set_grant))
        .route("/v1/customers", get(customers::list_customers).post(customers::add_customer))
        .route("/v1/customers/{id}/networks", post(customers::add_network))
        .route("/v1/api-tokens", get(api_tokens::list_api_tokens).post(api_tokens::new_api_token))
        .route("/v1/api-tokens/{id}", delete(api_tokens::revoke_api_token))
        .route("/v1/machines", get(machines::list))
        .route("/v1/machines/{id}", delete(machines::revoke))
        .route("/v1/machines/{id}/archive", post(machines::archive).delete(machines::archive))
        .route("/v1/machines/{id}/sensors", get(machines::sensors))
        .route(
            "/v1/machines/{id}/sensors/{sensor}/ack",
            post(silences::acknowledge).delete(silences::withdraw),
        )
        .route("/v1/silences", get(silences::list))
        .route("/v1/maintenance", post(silences::add_window))
        .route("/v1/maintenance/{id}", delete(silences::remove_window))
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
        .route("/v1/machines/{id}/managed/relays", put(managed::relays))
        .route("/v1/machines/{id}/managed/history", get(managed::history))
        .route("/v1/machines/{id}/managed/rollback", post(managed::roll_back))
        .route("/v1/templates", get(managed::templates).post(managed::create_template))
        .route(
            "/v1/templates/{name}",
            get(managed::template).put(managed::edit_template).delete(managed::delete_template),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::authenticate))
        .layer(DefaultBodyLimit::max(PEOPLE_BODY));
    // A login is a few hundred bytes of JSON (about 1.5 KB with 4096-bit keys).
    let login = Router::new()
        .route("/v1/machine-session", post(machine_sessions::open))
        .layer(DefaultBodyLimit::max(LOGIN_BODY));
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
        .merge(sign_in)
        .merge(people)
        .merge(machines)
        .merge(login)
        .fallback(|| async {
            err(StatusCode::NOT_FOUND, "no such endpoint; see the API section of README.md")
        })
        .with_state(state)
}

pub(super) fn err(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(ApiError::new(msg))).into_response()
}

/// Seconds a client is told to wait when storage cannot be reached.
pub(super) const RETRY_AFTER: &str = "5";

/// A failure of the cloud's own: 503 + Retry-After when storage is unreachable now (a database
/// restarting: the request can simply be sent again), else 500.
pub(super) fn internal<E: std::fmt::Display + 'static>(e: E) -> Response {
    let unavailable = matches!(
        (&e as &dyn std::any::Any).downcast_ref::<crate::CloudError>(),
        Some(crate::CloudError::Unavailable(_))
    );
    if unavailable {
        tracing::warn!(error = %e, "request answered retry-later: storage unavailable");
        let mut r = (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(outpost_shared::model::ApiError::verdict(
                e.to_string(),
                outpost_shared::model::Verdict::RetryLater,
                outpost_shared::model::RefusalCode::Storage,
            )),
        )
            .into_response();
        r.headers_mut()
            .insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static(RETRY_AFTER));
        return r;
    }
    tracing::error!(error = %e, "request failed");
    err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}
