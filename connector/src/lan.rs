//! The LAN side: the machine-facing part of the one API (`POST /v1/batches`), served over TLS to
//! the hubs of this network. A batch is acknowledged only once it is durable in the connector's
//! buffer; a full buffer, or a hub over its fair share of a filling one, gets 503 + Retry-After.

use crate::{record, Shared};
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use outpost_shared::buffer::BufferError;
use outpost_shared::http_server::{rate, PerSource, ServerLimits};
use outpost_shared::model::{ApiError, Batch, BatchAck, BatchProblem};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Limits for one hub request: the same as the cloud's defaults.
const MAX_BODY: usize = 8 << 20;
const MAX_DECOMPRESSED: usize = 64 << 20;
const MAX_READINGS: usize = 50_000;
/// A batch whose newest reading was taken this recently (by the hub's clock) carries live data
/// and is forwarded ahead of any backlog. A hub with a skewed clock loses only that priority.
const FRESH_WITHIN: chrono::Duration = chrono::Duration::seconds(30);

pub(crate) fn serve(
    listener: std::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    // The same server setup as the cloud's (timeouts, connection cap, load shedding), with the
    // defaults: hubs on a LAN are few and known. What needs no credentials is limited per source;
    // an enrollment passed on costs the cloud an RSA private-key operation.
    let limits = ServerLimits::default();
    let enroll_limit = PerSource::new(
        "LAN enrollments per source",
        f64::from(limits.enroll_per_minute) / 60.0,
        limits.enroll_burst,
    );
    let public_limit = PerSource::new(
        "LAN unauthenticated requests per source",
        f64::from(limits.per_source_per_second),
        limits.per_source_burst,
    );
    let public = Router::new()
        .route("/v1/health", get(|| async { Json(serde_json::json!({"ok": true})) }))
        .route("/v1/connector", get(identity))
        .route("/v1/cloud-key", get(proxy))
        .route_layer(middleware::from_fn_with_state(public_limit, rate::limit));
    // Passed through to the cloud unchanged: the hub's signature and the cloud's answer (itself
    // signed) travel end to end, so the connector is only a pipe for these.
    let enrollment = Router::new()
        .route("/v1/enroll", post(enroll))
        .route_layer(middleware::from_fn_with_state(enroll_limit, rate::limit));
    let app = Router::new()
        .merge(public)
        .merge(enrollment)
        // Unsigned batches are turned away on their headers alone, before a byte of the body is
        // read or inflated.
        .route("/v1/batches", post(intake).route_layer(middleware::from_fn(signature_headers_first)))
        .route("/v1/receipt", post(proxy))
        .route("/v1/commands/poll", get(proxy))
        .route("/v1/commands/result", post(proxy))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(shared);
    let handle = axum_server::Handle::new();
    let h = handle.clone();
    let server = async move { outpost_shared::http_server::serve_tls(listener, tls, app, &limits, h).await };
    tokio::spawn(async move {
        let h = handle.clone();
        let watcher = tokio::spawn(async move {
            shutdown.cancelled().await;
            h.graceful_shutdown(Some(Duration::from_secs(5)));
        });
        if let Err(e) = server.await {
            tracing::error!(error = %e, "LAN API stopped");
        }
        watcher.abort();
    })
}

/// 401 for a request without parseable signature headers, before its body is read.
async fn signature_headers_first(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if let Err(e) = outpost_shared::keys::SignedHeaders::from_header_map(req.headers()) {
        return err(StatusCode::UNAUTHORIZED, format!("unsigned batch ({e}); hubs sign every batch"));
    }
    next.run(req).await
}

fn err(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(ApiError::new(msg))).into_response()
}

async fn identity(State(sh): State<Arc<Shared>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({"machine_id": sh.machine_id, "version": env!("CARGO_PKG_VERSION")}))
}

fn busy(sh: &Shared, msg: String) -> Response {
    let mut r = err(StatusCode::SERVICE_UNAVAILABLE, msg);
    let secs = sh.retry_after.as_secs().max(1).to_string();
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_str(&secs).expect("digits"));
    r
}

async fn intake(
    State(sh): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    // The connector cannot check a hub's signature (it holds no hub keys): the cloud does. It
    // insists on one being there, and on the signer being the batch's machine, and keeps it.
    let sig = match outpost_shared::keys::SignedHeaders::from_header_map(&headers) {
        Ok(s) => s,
        Err(e) => {
            return err(StatusCode::UNAUTHORIZED, format!("unsigned batch ({e}); hubs sign every batch"))
        }
    };
    let gz = headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok())
        == Some(outpost_shared::wire::GZIP);
    let json = match outpost_shared::wire::decompress(&body, gz, MAX_DECOMPRESSED) {
        Ok(j) => j,
        Err(e @ outpost_shared::wire::WireError::TooLarge { .. }) => {
            return err(StatusCode::PAYLOAD_TOO_LARGE, e.to_string())
        }
        Err(e) => return err(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let batch: Batch = match serde_json::from_slice(&json) {
        Ok(b) => b,
        Err(e) => return err(StatusCode::BAD_REQUEST, format!("body is not a valid batch: {e}")),
    };
    // Refuse here what the cloud would refuse, so it never occupies the buffer.
    if let Err(p) = batch.validate(MAX_READINGS) {
        let status = match p {
            BatchProblem::TooMany { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            BatchProblem::Invalid(_) => StatusCode::BAD_REQUEST,
        };
        tracing::warn!(%peer, machine = %batch.machine_id, reason = %p, "hub batch refused");
        return err(status, p.to_string());
    }
    if sig.machine_id.as_str() != batch.machine_id {
        return err(StatusCode::UNAUTHORIZED, "batch signed by another machine than its own");
    }
    let newest = batch.readings.iter().map(|r| r.sample.ts).max();
    let rec = record::encode(&record::Record {
        readings: batch.readings.len() as u32,
        fresh: newest.is_some_and(|ts| chrono::Utc::now() - ts < FRESH_WITHIN),
        machine_id: &batch.machine_id,
        timestamp: sig.timestamp,
        signature: &sig.signature_b64,
        json: &json,
    });
    let cost = rec.len() as u64;
    // A batch that could never fit beside other hubs' data would be refused forever; 413 makes
    // the hub split it (its uplink halves a refused batch) instead of retrying it unchanged.
    if cost > sh.quota / 2 {
        tracing::warn!(machine = %batch.machine_id, bytes = cost, quota = sh.quota,
            "hub batch larger than half the buffer quota; hub told to send smaller batches");
        return err(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "a batch of {cost} bytes is more than this connector takes at once (buffer quota {} bytes); send smaller batches",
                sh.quota
            ),
        );
    }
    if let Some(msg) = over_fair_share(&sh, &batch.machine_id, cost) {
        return push_back(&sh, &batch.machine_id, msg);
    }
    let buffer = sh.buffer.clone();
    let custody = sh.custody.read().await;
    match tokio::task::spawn_blocking(move || buffer.append(&[rec])).await.expect("append does not panic") {
        Ok(_) => {}
        Err(BufferError::Full { bytes, quota, .. }) => {
            return push_back(
                &sh,
                &batch.machine_id,
                format!("connector buffer full ({bytes} of {quota} bytes); keep the data and retry later"),
            );
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot store hub batch");
            return busy(&sh, format!("connector cannot store right now: {e}"));
        }
    }
    if let Some(w) = &sh.watch {
        w.took(&batch).await;
    }
    drop(custody);
    if sh.pushing_back.swap(false, Ordering::Relaxed) {
        tracing::info!(
            buffered_bytes = sh.buffer.stats().bytes,
            "connector buffer has room again; taking hub batches"
        );
    }
    *sh.per_hub.lock().unwrap().entry(batch.machine_id.clone()).or_default() += cost;
    sh.attached.lock().unwrap().insert(batch.machine_id.clone(), chrono::Utc::now());
    sh.forward_wake.notify_one();
    Json(BatchAck { stored: batch.readings.len() as u64, duplicates: 0 }).into_response()
}

/// 503 + Retry-After for a hub while the buffer is full (or the hub over its share). Logged once
/// when the connector starts pushing back, not for every refused request.
fn push_back(sh: &Shared, machine: &str, msg: String) -> Response {
    if !sh.pushing_back.swap(true, Ordering::Relaxed) {
        let bytes = sh.buffer.stats().bytes;
        tracing::warn!(%machine, bytes, quota = sh.quota, reason = %msg, "connector buffer full; hubs told to hold their data");
    }
    busy(sh, msg)
}

/// Once the buffer is half full, a hub may hold at most an equal share of the quota: one chatty
/// or long-cut-off hub cannot crowd out the others.
pub(crate) fn over_fair_share(sh: &Shared, machine: &str, cost: u64) -> Option<String> {
    let used = sh.buffer.stats().bytes;
    if used + cost <= sh.quota / 2 {
        return None;
    }
    let per_hub = sh.per_hub.lock().unwrap();
    // The hubs holding data here, and this one, which asks to. (A hub whose data has all been
    // forwarded is no longer counted, nor is the asking one twice.)
    let holding = per_hub.iter().filter(|(m, b)| **b > 0 && m.as_str() != machine).count() as u64;
    let share = sh.quota / (holding + 1);
    let mine = per_hub.get(machine).copied().unwrap_or(0);
    (mine + cost > share)
        .then(|| format!("this hub holds {mine} bytes here, its fair share is {share}; retry later"))
}

/// Forwards a machine request to the cloud as it came (method, path and query, signature
/// headers, body) and relays the answer.
/// Enrollment of a hub that reaches the cloud only through this connector. Passed on only with
/// the token sealed to the cloud key: a token in the clear on the LAN is refused here, so nobody
/// learns a habit that would hand tokens to whoever answers SSDP.
async fn enroll(
    sh: State<Arc<Shared>>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let clear = serde_json::from_slice::<serde_json::Value>(&body).map(|v| v.get("token").is_some());
    match clear {
        Err(e) => err(StatusCode::BAD_REQUEST, format!("enrollment request is not JSON: {e}")),
        Ok(true) => err(
            StatusCode::BAD_REQUEST,
            "enrollment through a connector takes the token sealed to the cloud key (`sealed_token`), \
             never in the clear",
        ),
        Ok(false) => proxy(sh, method, uri, headers, body).await,
    }
}

async fn proxy(
    State(sh): State<Arc<Shared>>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Some((client, base)) = sh.cloud.clone() else {
        return err(StatusCode::SERVICE_UNAVAILABLE, "this connector has no cloud configured");
    };
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut req = client.request(method, format!("{base}{path}")).timeout(Duration::from_secs(40));
    for name in [
        outpost_shared::keys::HEADER_MACHINE,
        outpost_shared::keys::HEADER_TIMESTAMP,
        outpost_shared::keys::HEADER_SIGNATURE,
        header::CONTENT_TYPE.as_str(),
    ] {
        if let Some(v) = headers.get(name) {
            req = req.header(name, v.as_bytes());
        }
    }
    match req.body(body).send().await {
        Ok(r) => {
            let status = StatusCode::from_u16(r.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            let bytes = r.bytes().await.unwrap_or_default();
            (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response()
        }
        Err(e) => err(StatusCode::BAD_GATEWAY, format!("cloud unreachable from the connector: {e}")),
    }
}
