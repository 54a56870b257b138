//! The HTTP API: one router for machines (ingest) and people (JSON API, live events, dashboard).
//! Errors are JSON `{"error": "..."}` with a status that says whose fault it was.

use crate::config::CloudConfig;
use crate::store::Store;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use futures_util::Stream;
use outpost_shared::model::{
    ApiError, Batch, BatchAck, BatchProblem, ForwardAck, ForwardEnvelope, ForwardResult, MachineInfo,
    SensorLatest,
};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::StreamExt;

/// Live events buffered per slow dashboard before it starts missing some (it then reloads).
const EVENT_BACKLOG: usize = 1024;

#[derive(Clone)]
pub struct AppState {
    store: Store,
    admin_token: Arc<str>,
    ingest_token: Arc<str>,
    config: Arc<CloudConfig>,
    events: broadcast::Sender<LiveEvent>,
}

impl AppState {
    pub fn new(store: Store, admin_token: String, ingest_token: String, config: Arc<CloudConfig>) -> Self {
        let (events, _) = broadcast::channel(EVENT_BACKLOG);
        AppState { store, admin_token: admin_token.into(), ingest_token: ingest_token.into(), config, events }
    }
}

/// What the dashboard hears on `/v1/events`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LiveEvent {
    Machine(MachineInfo),
    Sensors { machine: String, sensors: Vec<SensorLatest> },
}

pub fn router(state: AppState) -> Router {
    let people = Router::new()
        .route("/v1/machines", get(machines))
        .route("/v1/machines/{id}/sensors", get(sensors))
        .route("/v1/machines/{id}/readings", get(readings))
        .route("/v1/events", get(events))
        .route("/v1/hubs/unattached", get(unattached))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));
    let machines = Router::new()
        .route("/v1/batches", post(ingest))
        .route("/v1/forward", post(forward))
        .layer(DefaultBodyLimit::max(state.config.ingest.max_body as usize));
    Router::new()
        .route("/", get(crate::dashboard::index))
        .route("/v1/health", get(|| async { Json(serde_json::json!({"ok": true})) }))
        .merge(people)
        .merge(machines)
        .fallback(|| async {
            err(StatusCode::NOT_FOUND, "no such endpoint; see the API section of README.md")
        })
        .with_state(state)
}

fn err(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(ApiError { error: msg.into() })).into_response()
}

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "request failed");
    err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// Constant-time comparison, so a token cannot be guessed byte by byte from response times.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token of a request: `Authorization: Bearer`, or the dashboard's cookie (browsers cannot
/// put headers on an `EventSource`).
fn presented_token(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        return v.strip_prefix("Bearer ").map(|t| t.trim().to_string());
    }
    let cookies = headers.get(header::COOKIE).and_then(|v| v.to_str().ok())?;
    cookies.split(';').find_map(|c| c.trim().strip_prefix("outpost_token=").map(str::to_string))
}

async fn require_admin(State(st): State<AppState>, req: Request<axum::body::Body>, next: Next) -> Response {
    match presented_token(req.headers()) {
        Some(t) if same(&t, &st.admin_token) => next.run(req).await,
        Some(_) => err(
            StatusCode::UNAUTHORIZED,
            "wrong admin token; it is in the cloud's data directory, file admin-token",
        ),
        None => err(StatusCode::UNAUTHORIZED, "admin token required: send `Authorization: Bearer <token>`"),
    }
}

async fn machines(State(st): State<AppState>) -> Response {
    let store = st.store.clone();
    match tokio::task::spawn_blocking(move || store.machines()).await {
        Ok(Ok(list)) => {
            let now = Utc::now();
            let list: Vec<MachineInfo> =
                list.into_iter().map(|m| with_liveness(m, now, &st.config)).collect();
            Json(list).into_response()
        }
        Ok(Err(e)) => internal(e),
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

async fn sensors(State(st): State<AppState>, Path(id): Path<String>) -> Response {
    let store = st.store.clone();
    match tokio::task::spawn_blocking(move || {
        Ok::<_, crate::CloudError>((store.machine(&id)?, store.sensors(&id)?))
    })
    .await
    {
        Ok(Ok((None, _))) => err(StatusCode::NOT_FOUND, "no such machine"),
        Ok(Ok((Some(_), list))) => Json(list).into_response(),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadingsQuery {
    sensor: String,
    since: Option<String>,
    limit: Option<usize>,
    /// `raw` (default) or `hourly`.
    resolution: Option<String>,
}

/// Most rows one request may ask for.
const MAX_LIMIT: usize = 100_000;

async fn readings(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<ReadingsQuery>,
) -> Response {
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
    let r = tokio::task::spawn_blocking(move || -> Result<Response, crate::CloudError> {
        if store.machine(&id)?.is_none() {
            return Ok(err(StatusCode::NOT_FOUND, "no such machine"));
        }
        Ok(if hourly {
            Json(store.hourly(&id, &q.sensor, since, limit)?).into_response()
        } else {
            Json(store.readings(&id, &q.sensor, since, limit)?).into_response()
        })
    })
    .await;
    match r {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

async fn events(
    State(st): State<AppState>,
) -> Sse<impl Stream<Item = Result<Event, std::convert::Infallible>>> {
    let stream = BroadcastStream::new(st.events.subscribe()).filter_map(|ev| {
        // A lagging dashboard skips what it missed; the next event brings it current again.
        let ev = ev.ok()?;
        let name = match &ev {
            LiveEvent::Machine(_) => "machine",
            LiveEvent::Sensors { .. } => "sensors",
        };
        Event::default().event(name).json_data(&ev).ok().map(Ok)
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

// The error side of these helpers is the finished HTTP response; it lives for one request.
#[allow(clippy::result_large_err)]
/// The ingest token check shared by `/v1/batches` and `/v1/forward`.
fn check_ingest_token(st: &AppState, headers: &HeaderMap) -> Result<(), Response> {
    match presented_token(headers) {
        Some(t) if same(&t, &st.ingest_token) => Ok(()),
        _ => Err(err(
            StatusCode::UNAUTHORIZED,
            "ingest token missing or wrong; give the hub the cloud's ingest-token",
        )),
    }
}

#[allow(clippy::result_large_err)]
/// The decompressed body, or the error response.
fn body_json(st: &AppState, headers: &HeaderMap, body: &[u8]) -> Result<Vec<u8>, Response> {
    let gz = headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok())
        == Some(outpost_shared::wire::GZIP);
    outpost_shared::wire::decompress(body, gz, st.config.ingest.max_decompressed as usize).map_err(
        |e| match e {
            outpost_shared::wire::WireError::TooLarge { .. } => {
                err(StatusCode::PAYLOAD_TOO_LARGE, e.to_string())
            }
            e => err(StatusCode::BAD_REQUEST, e.to_string()),
        },
    )
}

/// Parses, validates, stores and flushes one hub batch. Every path into storage goes through here.
async fn take_batch(st: &AppState, json: &[u8], peer: &str) -> Result<BatchAck, (StatusCode, String)> {
    let batch: Batch = serde_json::from_slice(json)
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("body is not a valid batch: {e}")))?;
    if let Err(p) = batch.validate(st.config.ingest.max_readings) {
        tracing::warn!(%peer, machine = %batch.machine_id, reason = %p, "batch refused");
        let status = match p {
            BatchProblem::TooMany { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            BatchProblem::Invalid(_) => StatusCode::BAD_REQUEST,
        };
        return Err((status, p.to_string()));
    }
    let store = st.store.clone();
    let outcome = match tokio::task::spawn_blocking(move || store.ingest(&batch, Utc::now())).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => return Err((StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
        Err(e) => return Err((StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    };
    // Custody: acknowledge only what is on disk.
    st.store.flush().await.map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    if let Some(m) = outcome.machine {
        let id = m.id.clone();
        let _ = st.events.send(LiveEvent::Machine(m));
        if !outcome.changed.is_empty() {
            let _ = st.events.send(LiveEvent::Sensors { machine: id, sensors: outcome.changed });
        }
    }
    Ok(BatchAck { stored: outcome.stored, duplicates: outcome.duplicates })
}

async fn ingest(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = check_ingest_token(&st, &headers) {
        return r;
    }
    let json = match body_json(&st, &headers, &body) {
        Ok(j) => j,
        Err(r) => return r,
    };
    match take_batch(&st, &json, &peer.to_string()).await {
        Ok(ack) => Json(ack).into_response(),
        Err((status, msg)) if status.is_server_error() => internal(msg),
        Err((status, msg)) => err(status, msg),
    }
}

/// A connector's forward: many hubs' batches in one request, each taken as if the hub had sent it
/// directly. A batch refused for good gets its own result and does not hold up the others.
async fn forward(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = check_ingest_token(&st, &headers) {
        return r;
    }
    let json = match body_json(&st, &headers, &body) {
        Ok(j) => j,
        Err(r) => return r,
    };
    let env: ForwardEnvelope = match serde_json::from_slice(&json) {
        Ok(e) => e,
        Err(e) => return err(StatusCode::BAD_REQUEST, format!("body is not a valid forward envelope: {e}")),
    };
    let via = format!("{peer} via connector {}", env.connector);
    let mut results = Vec::with_capacity(env.batches.len());
    for raw in &env.batches {
        match take_batch(&st, raw.get().as_bytes(), &via).await {
            Ok(ack) => results.push(ForwardResult::Stored(ack)),
            Err((status, msg)) if status.is_server_error() => return internal(msg),
            Err((status, msg)) => {
                results.push(ForwardResult::Refused { status: status.as_u16(), error: msg })
            }
        }
    }
    if !env.unattached.is_empty() {
        let store = st.store.clone();
        let mut hubs = env.unattached;
        for h in &mut hubs {
            h.connector = env.connector.clone();
        }
        if let Err(e) = tokio::task::spawn_blocking(move || store.note_unattached(&hubs))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
        {
            return internal(e);
        }
    }
    Json(ForwardAck { results }).into_response()
}

async fn unattached(State(st): State<AppState>) -> Response {
    let store = st.store.clone();
    match tokio::task::spawn_blocking(move || store.unattached(Utc::now())).await {
        Ok(Ok(list)) => Json(list).into_response(),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}
