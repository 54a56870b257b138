//! The HTTP API: one router for machines (ingest) and people (JSON API, live events, dashboard).
//! Errors are JSON `{"error": "..."}` with a status that says whose fault it was.

use crate::commands::{Commands, DEFAULT_TTL};
use crate::config::CloudConfig;
use crate::store::Store;
use crate::trust::{EnrollRequest, Refusal, Trust};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use futures_util::Stream;
use outpost_shared::keys::{CommandResult, PublicKey, Signed, SignedHeaders};
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
    trust: Trust,
    commands: Commands,
    config: Arc<CloudConfig>,
    events: broadcast::Sender<LiveEvent>,
    /// State changes for the alert mailer, when mail is configured. Never waited on: ingest
    /// must not slow down because a mail server is slow.
    alerts: Option<tokio::sync::mpsc::Sender<outpost_shared::mail::AlertEvent>>,
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
        AppState { store, admin_token: admin_token.into(), trust, commands, config, events, alerts: None }
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

pub fn router(state: AppState) -> Router {
    let people = Router::new()
        .route("/v1/machines", get(machines))
        .route("/v1/machines/{id}", delete(revoke_machine))
        .route("/v1/machines/{id}/sensors", get(sensors))
        .route("/v1/machines/{id}/readings", get(readings))
        .route("/v1/events", get(events))
        .route("/v1/hubs/unattached", get(unattached))
        .route("/v1/enrollment-tokens", post(new_token).get(list_tokens))
        .route("/v1/machines/{id}/commands", post(new_command))
        .route("/v1/machines/{id}/relays/{card}/{relay}", post(switch_relay))
        .route("/v1/machines/{id}/seal", post(seal_secret))
        .route("/v1/commands/{id}", get(command_status))
        .route("/v1/audit", get(audit))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));
    let machines = Router::new()
        .route("/v1/batches", post(ingest))
        .route("/v1/forward", post(forward))
        .route("/v1/enroll", post(enroll))
        .route("/v1/receipt", post(receipt))
        .route("/v1/commands/poll", get(poll_commands))
        .route("/v1/commands/result", post(command_result))
        .route("/v1/mail-commands", post(mail_command))
        .route("/v1/mail-commands/{id}", get(mail_command_status))
        .layer(DefaultBodyLimit::max(state.config.ingest.max_body as usize));
    Router::new()
        .route("/", get(crate::dashboard::index))
        .route("/v1/health", get(|| async { Json(serde_json::json!({"ok": true})) }))
        .route("/v1/cloud-key", get(cloud_key))
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

/// `DELETE /v1/machines/{id}`: withdraws the machine's enrollment (a stolen or retired machine).
/// Its signed requests are refused from now on and hubs stop trusting it as a connector; its
/// readings stay. In the audit trail as `revoke` by `admin`.
async fn revoke_machine(State(st): State<AppState>, Path(id): Path<String>) -> Response {
    let trust = st.trust.clone();
    let target = id.clone();
    match tokio::task::spawn_blocking(move || trust.revoke(&target, Utc::now())).await {
        Ok(Ok(Some(mk))) => {
            let detail =
                serde_json::json!({"role": mk.role, "network": mk.network_id, "hostname": mk.hostname});
            let entry = crate::commands::AuditEntry {
                ts: Utc::now(),
                command_id: String::new(),
                machine: mk.machine_id.clone(),
                action: "revoke".into(),
                parameters: serde_json::Value::Null,
                who: "admin".into(),
                event: "done".into(),
                detail: detail.clone(),
            };
            if let Err(e) = st.commands.record(entry) {
                tracing::error!(error = %e, machine = %id, "revoked, but the audit trail could not record it");
            }
            Json(serde_json::json!({"revoked": mk.machine_id, "role": mk.role, "network": mk.network_id}))
                .into_response()
        }
        Ok(Ok(None)) => err(StatusCode::NOT_FOUND, format!("no enrolled machine {id}")),
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
/// Checks a signed machine request against the signer's enrolled key. `skew` as in
/// [`Trust::verify`].
fn check_signed(
    st: &AppState,
    headers: &HeaderMap,
    method: &str,
    path: &str,
    body: &[u8],
    skew: Option<std::time::Duration>,
) -> Result<crate::trust::MachineKey, Response> {
    let sig = SignedHeaders::from_header_map(headers).map_err(|e| refused(Refusal::Unsigned(e)))?;
    st.trust.verify(&sig, method, path, body, skew).map_err(refused)
}

fn refused(r: Refusal) -> Response {
    tracing::warn!(reason = %r, "machine request refused");
    let status = match r {
        Refusal::Enroll(_) => StatusCode::FORBIDDEN,
        _ => StatusCode::UNAUTHORIZED,
    };
    err(status, r.to_string())
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

/// Parses, validates, stores and flushes one hub batch.
async fn take_batch(
    st: &AppState,
    json: &[u8],
    signer: &str,
    peer: &str,
) -> Result<BatchAck, (StatusCode, String)> {
    let outcome = store_batch(st, json, signer, peer).await?;
    let ack = BatchAck { stored: outcome.stored, duplicates: outcome.duplicates };
    commit(st, vec![outcome]).await?;
    Ok(ack)
}

/// Parses, validates and stores one hub batch, not yet durable: the caller must [`commit`] before
/// it acknowledges. Every path into storage goes through here.
async fn store_batch(
    st: &AppState,
    json: &[u8],
    signer: &str,
    peer: &str,
) -> Result<crate::store::IngestOutcome, (StatusCode, String)> {
    let batch: Batch = serde_json::from_slice(json)
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("body is not a valid batch: {e}")))?;
    if batch.machine_id != signer {
        return Err((
            StatusCode::UNAUTHORIZED,
            format!("batch of machine {} signed by {signer}", batch.machine_id),
        ));
    }
    if let Err(p) = batch.validate(st.config.ingest.max_readings) {
        tracing::warn!(%peer, machine = %batch.machine_id, reason = %p, "batch refused");
        let status = match p {
            BatchProblem::TooMany { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            BatchProblem::Invalid(_) => StatusCode::BAD_REQUEST,
        };
        return Err((status, p.to_string()));
    }
    let store = st.store.clone();
    match tokio::task::spawn_blocking(move || store.ingest(&batch, Utc::now())).await {
        Ok(Ok(o)) => Ok(o),
        Ok(Err(e)) => Err((StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
        Err(e) => Err((StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

/// Makes everything stored so far durable (one flush for any number of batches: group commit),
/// then raises alerts and tells live dashboards what changed.
async fn commit(
    st: &AppState,
    outcomes: Vec<crate::store::IngestOutcome>,
) -> Result<(), (StatusCode, String)> {
    // Custody: acknowledge only what is on disk.
    st.store.flush().await.map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    for outcome in outcomes {
        if let (Some(tx), Some(m)) = (&st.alerts, &outcome.machine) {
            for (old, l) in &outcome.transitions {
                let change = outpost_shared::mail::StateChange {
                    machine_id: m.id.clone(),
                    hostname: m.hostname.clone(),
                    sensor: l.sensor.clone(),
                    old: *old,
                    new: l.state,
                    value: Some(l.value.clone()),
                    unit: l.unit.clone(),
                    message: l.message.clone(),
                    ts: l.ts,
                };
                if tx.try_send(outpost_shared::mail::AlertEvent::Change(change)).is_err() {
                    tracing::warn!(machine = %m.id, sensor = %l.sensor, "alert queue full; state change not mailed");
                }
            }
        }
        if let Some(m) = outcome.machine {
            let id = m.id.clone();
            let _ = st.events.send(LiveEvent::Machine(m));
            if !outcome.changed.is_empty() {
                let _ = st.events.send(LiveEvent::Sensors { machine: id, sensors: outcome.changed });
            }
        }
    }
    Ok(())
}

async fn ingest(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let json = match body_json(&st, &headers, &body) {
        Ok(j) => j,
        Err(r) => return r,
    };
    let signer = match check_signed(&st, &headers, "POST", "/v1/batches", &json, Some(crate::trust::MAX_SKEW))
    {
        Ok(m) => m,
        Err(r) => return r,
    };
    match take_batch(&st, &json, &signer.machine_id, &peer.to_string()).await {
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
    let json = match body_json(&st, &headers, &body) {
        Ok(j) => j,
        Err(r) => return r,
    };
    let connector =
        match check_signed(&st, &headers, "POST", "/v1/forward", &json, Some(crate::trust::MAX_SKEW)) {
            Ok(m) if m.role == outpost_shared::model::Role::Connector => m,
            Ok(m) => {
                return err(StatusCode::FORBIDDEN, format!("{} is not enrolled as a connector", m.machine_id))
            }
            Err(r) => return r,
        };
    let env: ForwardEnvelope = match serde_json::from_slice(&json) {
        Ok(e) => e,
        Err(e) => return err(StatusCode::BAD_REQUEST, format!("body is not a valid forward envelope: {e}")),
    };
    // Changes the connector mailed about during an outage are taken as told before its batches
    // bring them, so they are not mailed a second time.
    if let Some(tx) = &st.alerts {
        for m in env.mailed {
            match st.trust.machine_key(&m.machine_id) {
                Ok(Some(k)) if k.network_id == connector.network_id => {
                    if tx.try_send(outpost_shared::mail::AlertEvent::Told(m)).is_err() {
                        tracing::warn!("alert queue full; a connector's outage note is lost");
                    }
                }
                _ => tracing::warn!(connector = %connector.machine_id, machine = %m.machine_id,
                    "outage note about a machine outside the connector's network ignored"),
            }
        }
    }
    let via = format!("{peer} via connector {}", connector.machine_id);
    let mut results = Vec::with_capacity(env.batches.len());
    let mut outcomes = Vec::with_capacity(env.batches.len());
    for fb in &env.batches {
        let body = fb.body.get().as_bytes();
        // Each batch must carry its hub's own signature over exactly these bytes: a connector
        // cannot alter or invent readings. Held batches are old, so no time window here.
        let sig = SignedHeaders::from_values(
            Some(&fb.sig.machine_id),
            Some(&fb.sig.timestamp.to_string()),
            Some(&fb.sig.signature),
        );
        let hub = match sig
            .map_err(Refusal::Unsigned)
            .and_then(|s| st.trust.verify(&s, "POST", "/v1/batches", body, None))
        {
            Ok(h) if h.network_id == connector.network_id => h,
            Ok(h) => {
                results.push(ForwardResult::Refused {
                    status: 403,
                    error: format!("hub {} is not in this connector's network", h.machine_id),
                });
                continue;
            }
            Err(e) => {
                tracing::warn!(connector = %connector.machine_id, reason = %e, "forwarded batch refused");
                results.push(ForwardResult::Refused { status: 401, error: e.to_string() });
                continue;
            }
        };
        match store_batch(&st, body, &hub.machine_id, &via).await {
            Ok(o) => {
                results.push(ForwardResult::Stored(BatchAck { stored: o.stored, duplicates: o.duplicates }));
                outcomes.push(o);
            }
            Err((status, msg)) if status.is_server_error() => return internal(msg),
            Err((status, msg)) => {
                results.push(ForwardResult::Refused { status: status.as_u16(), error: msg })
            }
        }
    }
    // One flush for the whole forward, before any of it is acknowledged.
    if let Err((_, msg)) = commit(&st, outcomes).await {
        return internal(msg);
    }
    if !env.unattached.is_empty() {
        let store = st.store.clone();
        let mut hubs = env.unattached;
        for h in &mut hubs {
            h.connector = connector.machine_id.clone();
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

async fn cloud_key(State(st): State<AppState>) -> Json<serde_json::Value> {
    let k = st.trust.key();
    Json(serde_json::json!({"fingerprint": k.machine_id().to_string(), "public_key": k.public().to_pem()}))
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    network: Option<String>,
    /// Validity, e.g. "1h" (default 24h).
    #[serde(default, with = "humantime_serde")]
    ttl: Option<std::time::Duration>,
}

async fn new_token(State(st): State<AppState>, body: Option<Json<TokenRequest>>) -> Response {
    let req = body.map(|b| b.0).unwrap_or_default();
    let network = req.network.unwrap_or_else(|| "default".into());
    let ttl = req.ttl.unwrap_or(std::time::Duration::from_secs(86400));
    match st.trust.new_token(&network, ttl, Utc::now()) {
        Ok(t) => {
            Json(serde_json::json!({"token": t.encode(), "network": network, "expires_at": t.expires_at}))
                .into_response()
        }
        Err(e) => err(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

async fn list_tokens(State(st): State<AppState>) -> Response {
    match st.trust.open_tokens(Utc::now()) {
        Ok(l) => Json(l).into_response(),
        Err(e) => internal(e),
    }
}

async fn enroll(State(st): State<AppState>, Json(req): Json<EnrollRequest>) -> Response {
    let trust = st.trust.clone();
    match tokio::task::spawn_blocking(move || trust.enroll(&req, Utc::now())).await {
        Ok(Ok(r)) => Json(r).into_response(),
        Ok(Err(e)) => refused(e),
        Err(e) => internal(e),
    }
}

async fn receipt(State(st): State<AppState>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let mk = match check_signed(&st, &headers, "POST", "/v1/receipt", &body, Some(crate::trust::MAX_SKEW)) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let trust = st.trust.clone();
    match tokio::task::spawn_blocking(move || trust.receipt(&mk, Utc::now())).await {
        Ok(Ok(r)) => Json(r).into_response(),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandRequest {
    action: String,
    #[serde(default)]
    parameters: serde_json::Value,
    #[serde(default, with = "humantime_serde")]
    ttl: Option<std::time::Duration>,
}

/// Actions a hub understands; anything else is refused here, before it is signed.
const ACTIONS: &[&str] =
    &["ping", "sample-now", "reload-config", "relay.set", "relay.toggle", "relay.set_port"];

async fn create_command(
    st: &AppState,
    machine: &str,
    action: &str,
    parameters: serde_json::Value,
    ttl: Option<std::time::Duration>,
    who: &str,
) -> Response {
    if !ACTIONS.contains(&action) {
        return err(
            StatusCode::BAD_REQUEST,
            format!("unknown action `{action}`; known: {}", ACTIONS.join(", ")),
        );
    }
    match st.trust.machine_key(machine) {
        Ok(Some(_)) => {}
        Ok(None) => return err(StatusCode::NOT_FOUND, "no such enrolled machine"),
        Err(e) => return internal(e),
    }
    match st
        .commands
        .create(st.trust.key(), machine, action, parameters, ttl.unwrap_or(DEFAULT_TTL), who)
        .await
    {
        Ok(rec) => (StatusCode::CREATED, Json(serde_json::json!({"command_id": rec.id}))).into_response(),
        Err(e) => internal(e),
    }
}

async fn new_command(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Json(req): Json<CommandRequest>,
) -> Response {
    create_command(&st, &id, &req.action, req.parameters, req.ttl, "admin").await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RelaySwitch {
    on: bool,
}

async fn switch_relay(
    State(st): State<AppState>,
    Path((id, card, relay)): Path<(String, u8, u8)>,
    Json(req): Json<RelaySwitch>,
) -> Response {
    if card == 0 || !(1..=8).contains(&relay) {
        return err(StatusCode::BAD_REQUEST, "cards are numbered from 1, relays 1 to 8");
    }
    let params = serde_json::json!({"card": card, "relay": relay, "on": req.on});
    create_command(&st, &id, "relay.set", params, None, "admin").await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MailCommandRequest {
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

#[allow(clippy::result_large_err)]
/// The signer of a machine request, which must be an enrolled connector.
fn connector_signed(
    st: &AppState,
    headers: &HeaderMap,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<crate::trust::MachineKey, Response> {
    match check_signed(st, headers, method, path, body, Some(crate::trust::MAX_SKEW))? {
        m if m.role == outpost_shared::model::Role::Connector => Ok(m),
        m => Err(err(StatusCode::FORBIDDEN, format!("{} is not enrolled as a connector", m.machine_id))),
    }
}

/// `who` of a command a connector asked for on behalf of a mail sender.
fn mail_who(sender: &str, connector: &str) -> String {
    format!("mail:{sender} via connector {connector}")
}

/// A connector asks, for a mail sender it authenticated, that a relay be switched. The cloud signs
/// the command as for the dashboard; only machines of the connector's own network can be named.
async fn mail_command(State(st): State<AppState>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let connector = match connector_signed(&st, &headers, "POST", "/v1/mail-commands", &body) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let req: MailCommandRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return err(StatusCode::BAD_REQUEST, format!("not a mail command request: {e}")),
    };
    if req.card == 0 || !(1..=8).contains(&req.relay) {
        return err(StatusCode::BAD_REQUEST, "cards are numbered from 1, relays 1 to 8");
    }
    let (store, trust, net, name) =
        (st.store.clone(), st.trust.clone(), connector.network_id.clone(), req.machine.clone());
    let found = tokio::task::spawn_blocking(move || -> Result<Vec<(String, String)>, crate::CloudError> {
        let keys = trust.networks()?.remove(&net).unwrap_or_default();
        let mut hits = Vec::new();
        for k in keys {
            let hostname = store.machine(&k.machine_id)?.map(|m| m.hostname).unwrap_or(k.hostname);
            if k.machine_id == name || hostname.eq_ignore_ascii_case(&name) {
                hits.push((k.machine_id, hostname));
            }
        }
        Ok(hits)
    })
    .await;
    let (machine, hostname) = match found {
        Ok(Ok(hits)) => match hits.as_slice() {
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
        Ok(Err(e)) => return internal(e),
        Err(e) => return internal(e),
    };
    let who = mail_who(&req.sender, &connector.machine_id);
    let params = serde_json::json!({"card": req.card, "relay": req.relay, "on": req.on});
    match st.commands.create(st.trust.key(), &machine, "relay.set", params, DEFAULT_TTL, &who).await {
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
async fn mail_command_status(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let path = format!("/v1/mail-commands/{id}");
    let connector = match connector_signed(&st, &headers, "GET", &path, b"") {
        Ok(m) => m,
        Err(r) => return r,
    };
    match st.commands.get(&id) {
        Ok(Some(rec)) if rec.created_by.ends_with(&format!(" via connector {}", connector.machine_id)) => {
            Json(serde_json::json!({"status": rec.effective_status(Utc::now()), "result": rec.result}))
                .into_response()
        }
        Ok(_) => err(StatusCode::NOT_FOUND, "no such command of this connector"),
        Err(e) => internal(e),
    }
}

async fn command_status(State(st): State<AppState>, Path(id): Path<String>) -> Response {
    match st.commands.get(&id) {
        Ok(Some(rec)) => {
            let status = rec.effective_status(Utc::now()).to_string();
            Json(serde_json::json!({
                "id": rec.id, "machine": rec.machine, "action": rec.action, "parameters": rec.parameters,
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
struct AuditQuery {
    machine: Option<String>,
    limit: Option<usize>,
}

async fn audit(State(st): State<AppState>, Query(q): Query<AuditQuery>) -> Response {
    match st.commands.audit(q.machine.as_deref(), q.limit.unwrap_or(200).min(10_000)) {
        Ok(l) => Json(l).into_response(),
        Err(e) => internal(e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PollQuery {
    /// Seconds to hold the request open when nothing is waiting (at most 30).
    wait: Option<u64>,
}

async fn poll_commands(
    State(st): State<AppState>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    Query(q): Query<PollQuery>,
) -> Response {
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/v1/commands/poll");
    let mk = match check_signed(&st, &headers, "GET", path, b"", Some(crate::trust::MAX_SKEW)) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let wait = std::time::Duration::from_secs(q.wait.unwrap_or(25).min(30));
    match st.commands.poll(&mk.machine_id, wait).await {
        Ok(list) => Json(list).into_response(),
        Err(e) => internal(e),
    }
}

async fn command_result(State(st): State<AppState>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let mk =
        match check_signed(&st, &headers, "POST", "/v1/commands/result", &body, Some(crate::trust::MAX_SKEW))
        {
            Ok(m) => m,
            Err(r) => return r,
        };
    let signed: Signed<CommandResult> = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => return err(StatusCode::BAD_REQUEST, format!("not a signed command result: {e}")),
    };
    let key = match PublicKey::from_pem(&mk.public_key) {
        Ok(k) => k,
        Err(e) => return internal(e),
    };
    match st.commands.finish(&mk.machine_id, &key, &signed).await {
        Ok(rec) => Json(serde_json::json!({"status": rec.status})).into_response(),
        Err(e) => err(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SealRequest {
    secret: String,
}

/// Seals a secret to one machine's key and returns only the sealed form; the plaintext is
/// never stored or logged here.
async fn seal_secret(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Json(req): Json<SealRequest>,
) -> Response {
    let mk = match st.trust.machine_key(&id) {
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
