//! The LAN side: the machine-facing part of the one API (`POST /v1/batches`), served over TLS to
//! the hubs of this network. A batch is checked (signature by a listed key, form, timestamps)
//! before anything else happens to it, and acknowledged only once it is durable in the
//! connector's buffer; a full buffer, or a hub over its fair share of a filling one, gets
//! 503 + Retry-After. Every refusal carries a verdict (see `ApiError`).

use crate::hub_keys::Lookup;
use crate::{record, Shared};
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use outpost_shared::buffer::BufferError;
use outpost_shared::http_server::{rate, ServerLimits};
use outpost_shared::keys::{
    PublicKey, SignedHeaders, VerifyError, HEADER_MACHINE, HEADER_SIGNATURE, HEADER_TIMESTAMP,
};
use outpost_shared::model::{ApiError, Batch, BatchAck, BatchProblem, RefusalCode, TimeWindow, Verdict};
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
    let (enroll_limit, public_limit) =
        limits.source_limits("LAN enrollments per source", "LAN unauthenticated requests per source");
    let public = Router::new()
        .route("/v1/health", get(|| async { Json(serde_json::json!({"ok": true})) }))
        .route("/v1/connector", get(identity))
        .route("/v1/cloud-key", get(proxy))
        .route_layer(middleware::from_fn_with_state(public_limit, rate::limit));
    // Passed through to the cloud unchanged: the hub's signature and the cloud's answer (itself
    // signed) travel end to end, so the connector is only a pipe for these.
    let enrollment = Router::new()
        .route("/v1/enroll", post(enroll))
        .route_layer(middleware::from_fn_with_state(enroll_limit.clone(), rate::limit));
    // A hub's login to its machine session with the cloud, relayed: the hub signs its half, and
    // the cloud signs its own (an X25519 exchange; with earlier hubs the session key is sealed to
    // the cloud's key), so the connector can neither read nor make a session. An opening costs
    // the cloud a signature check and more (an RSA private-key operation for earlier hubs), hence
    // the enrollment's limit per source.
    let sessions = Router::new()
        .route("/v1/machine-session/challenge", get(proxy))
        .route("/v1/machine-session", post(proxy))
        .route_layer(middleware::from_fn_with_state(enroll_limit, rate::limit));
    let app = Router::new()
        .merge(public)
        .merge(enrollment)
        .merge(sessions)
        // Unsigned batches are turned away on their headers alone, before a byte of the body is
        // read or inflated.
        .route("/v1/batches", post(intake).route_layer(middleware::from_fn(signature_headers_first)))
        .route("/v1/receipt", post(proxy))
        .route("/v1/commands/poll", get(hub_poll))
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
        // Unsigned data can never become valid by waiting: refused for good, like the intake would.
        return verdict(
            StatusCode::UNAUTHORIZED,
            Verdict::Refused,
            RefusalCode::Forged,
            format!("unsigned batch ({e}); hubs sign every batch"),
        );
    }
    next.run(req).await
}

fn err(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(ApiError::new(msg))).into_response()
}

async fn identity(State(sh): State<Arc<Shared>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({"machine_id": sh.machine_id, "version": env!("CARGO_PKG_VERSION")}))
}

/// The intake's gates, as in the cloud's ingest: hub batches being read, inflated, checked and
/// taken at once (when all are taken, a batch is answered 503 "retry later" at once and the hub
/// keeps it), and inflations at once among those (CPU and up to the inflation cap of memory
/// each; a request waits for one). Without them a thousand hubs catching up after an outage
/// each had a batch inflated and parsed in memory at once, and a flood of requests claiming a
/// listed hub could make the connector inflate as many bodies as it had connections.
pub(crate) struct IntakeGates {
    slots: Arc<tokio::sync::Semaphore>,
    inflating: tokio::sync::Semaphore,
}

impl IntakeGates {
    pub(crate) fn new(slots: usize, inflating: usize) -> IntakeGates {
        IntakeGates {
            slots: Arc::new(tokio::sync::Semaphore::new(slots)),
            inflating: tokio::sync::Semaphore::new(inflating.max(1)),
        }
    }

    /// A place for one batch, held until it is answered; `None` when every place is taken.
    pub(crate) fn admit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }
}

impl Default for IntakeGates {
    /// 64 batches at once, 2 inflating: the cloud's ingest defaults.
    fn default() -> IntakeGates {
        IntakeGates::new(64, 2)
    }
}

fn busy(sh: &Shared, msg: String) -> Response {
    let mut r = verdict(StatusCode::SERVICE_UNAVAILABLE, Verdict::RetryLater, RefusalCode::Busy, msg);
    let secs = sh.retry_after.as_secs().max(1).to_string();
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_str(&secs).expect("digits"));
    r
}

/// Longest value taken for each signature header. A 4096-bit RSA signature is 684 base64
/// characters; anything longer is not a signature, and a record keeps its length in 16 bits.
const MAX_SIG_HEADER: usize = 4096;

/// An answer on a hub batch with the connector's verdict (custody rule: only `Refused` lets the
/// hub put the data aside; `RetryLater` and no verdict mean it keeps it and sends it again).
fn verdict(status: StatusCode, v: Verdict, code: RefusalCode, msg: impl Into<String>) -> Response {
    (status, Json(ApiError::verdict(msg, v, code))).into_response()
}

fn malformed(status: StatusCode, msg: impl Into<String>) -> Response {
    verdict(status, Verdict::Refused, RefusalCode::Malformed, msg)
}

/// The key of the hub that signed a request: listed for this network by the cloud (the list is
/// fetched again, rate-limited, for a signer it does not name yet).
// The error side is the finished HTTP response; it lives for one request.
#[allow(clippy::result_large_err)]
async fn signer_key(sh: &Shared, sig: &SignedHeaders, peer: SocketAddr) -> Result<PublicKey, Response> {
    Ok(match sh.hub_keys.lookup(&sig.machine_id) {
        Lookup::Known(k) => k,
        Lookup::NoList => {
            return Err(verdict(
                StatusCode::SERVICE_UNAVAILABLE,
                Verdict::RetryLater,
                RefusalCode::Busy,
                "this connector has no list of the network's machine keys yet (not enrolled, or the cloud not reached); keep the data and retry later",
            ))
        }
        Lookup::Unknown => {
            // Enrolled since the last list? Ask (rate-limited), then look again.
            let again = match &sh.cloud {
                Some((client, base)) => {
                    Some(sh.hub_keys.refresh_for_unknown(client, base, &sh.key, &sig.machine_id).await)
                }
                None => None,
            };
            match again {
                Some(Lookup::Known(k)) => k,
                _ => {
                    tracing::warn!(%peer, machine = %sig.machine_id, "hub request refused: signer not enrolled in this network");
                    return Err(verdict(
                        StatusCode::UNAUTHORIZED,
                        Verdict::RetryLater,
                        RefusalCode::NotEnrolled,
                        format!("machine {} is not enrolled in this connector's network", sig.machine_id),
                    ));
                }
            }
        }
    })
}

/// Takes a hub batch into custody, but only one this connector has checked itself: signed by a
/// machine the cloud lists for this network, over exactly these bytes, well-formed, with readings
/// stamped inside the accepted window. Cheap checks come first (header sizes, a known signer),
/// the body is read and inflated only after them, and nothing refused touches the buffer, the
/// fair shares, the per-hub maps or the outage alerts.
pub(crate) async fn intake(
    State(sh): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    for name in [HEADER_MACHINE, HEADER_TIMESTAMP, HEADER_SIGNATURE] {
        let len: usize = headers.get_all(name).iter().map(|v| v.len()).sum();
        if len > MAX_SIG_HEADER {
            tracing::warn!(%peer, header = name, bytes = len, "hub batch refused: oversized signature header");
            return malformed(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!("{name} of {len} bytes; at most {MAX_SIG_HEADER}"),
            );
        }
    }
    let sig = match SignedHeaders::from_header_map(&headers) {
        Ok(s) => s,
        Err(e) => {
            return verdict(
                StatusCode::UNAUTHORIZED,
                Verdict::Refused,
                RefusalCode::Forged,
                format!("unsigned batch ({e}); hubs sign every batch"),
            )
        }
    };
    let key = match signer_key(&sh, &sig, peer).await {
        Ok(k) => k,
        Err(r) => return r,
    };
    let Some(_slot) = sh.intake.admit() else {
        return busy(&sh, "the connector is taking in as many batches as it can; send again later".into());
    };
    let limits = sh.hub_keys.limits();
    let max_decompressed =
        limits.map_or(MAX_DECOMPRESSED, |l| (l.max_decompressed as usize).min(MAX_DECOMPRESSED));
    let max_readings = limits.map_or(MAX_READINGS, |l| (l.max_readings as usize).min(MAX_READINGS));
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(e) => {
            return verdict(
                StatusCode::PAYLOAD_TOO_LARGE,
                Verdict::RetryLater,
                RefusalCode::TooLarge,
                format!("body unreadable or over {MAX_BODY} bytes ({e}); send smaller batches"),
            )
        }
    };
    let gz = headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok())
        == Some(outpost_shared::wire::GZIP);
    // Inflating and the RSA check are CPU work: off the async workers, a few at once.
    let Ok(inflating) = sh.intake.inflating.acquire().await else {
        return busy(&sh, "the connector is stopping".into());
    };
    let sig_check = sig.clone();
    let checked = tokio::task::spawn_blocking(move || {
        let json = outpost_shared::wire::decompress(&body, gz, max_decompressed)?;
        let verified = outpost_shared::keys::verify_request(
            &key,
            &sig_check,
            "POST",
            "/v1/batches",
            &json,
            chrono::Utc::now(),
            outpost_shared::keys::DEFAULT_MAX_SKEW,
        );
        // Packed for the buffer (see `record`) here, off the workers; only what checks out.
        let packed = if verified.is_ok() { record::pack(&json) } else { Vec::new() };
        Ok::<_, outpost_shared::wire::WireError>(((json, packed), verified))
    })
    .await
    .expect("inflating, verifying and packing do not panic");
    drop(inflating);
    let (json, packed) = match checked {
        Ok((x, Ok(()))) => x,
        Ok((_, Err(e @ VerifyError::Stale { .. }))) => {
            return verdict(StatusCode::UNAUTHORIZED, Verdict::RetryLater, RefusalCode::Other, e.to_string())
        }
        Ok((_, Err(e))) => {
            tracing::warn!(%peer, machine = %sig.machine_id, reason = %e, "hub batch refused: signature does not check");
            return verdict(StatusCode::UNAUTHORIZED, Verdict::Refused, RefusalCode::Forged, e.to_string());
        }
        Err(e @ outpost_shared::wire::WireError::TooLarge { .. }) => {
            return verdict(
                StatusCode::PAYLOAD_TOO_LARGE,
                Verdict::RetryLater,
                RefusalCode::TooLarge,
                e.to_string(),
            )
        }
        Err(e) => return malformed(StatusCode::BAD_REQUEST, e.to_string()),
    };
    // serde_json does not check UTF-8 inside strings it skips; the cloud's parser (and the
    // forward envelope) would refuse such bytes later, for good, after this acknowledged them.
    if let Err(e) = std::str::from_utf8(&json) {
        return malformed(StatusCode::BAD_REQUEST, format!("body is not UTF-8: {e}"));
    }
    let batch: Batch = match serde_json::from_slice(&json) {
        Ok(b) => b,
        Err(e) => return malformed(StatusCode::BAD_REQUEST, format!("body is not a valid batch: {e}")),
    };
    if sig.machine_id.as_str() != batch.machine_id {
        return verdict(
            StatusCode::UNAUTHORIZED,
            Verdict::Refused,
            RefusalCode::Forged,
            "batch signed by another machine than its own",
        );
    }
    // Refuse here what the cloud would refuse, so it never occupies the buffer.
    if let Err(p) = batch.validate(max_readings) {
        tracing::warn!(%peer, machine = %batch.machine_id, reason = %p, "hub batch refused");
        return match p {
            BatchProblem::TooMany { .. } => verdict(
                StatusCode::PAYLOAD_TOO_LARGE,
                Verdict::RetryLater,
                RefusalCode::TooLarge,
                p.to_string(),
            ),
            BatchProblem::Invalid(_) => malformed(StatusCode::BAD_REQUEST, p.to_string()),
        };
    }
    let window = TimeWindow::around(chrono::Utc::now(), sh.ingest.max_future, sh.ingest.max_age);
    let outside = batch.outside(&window);
    if let Some(&first) = outside.first() {
        let ts = batch.readings[first].sample.ts;
        tracing::warn!(%peer, machine = %batch.machine_id, readings = outside.len(), example = %ts,
            "hub batch refused: readings stamped outside the accepted window (hub clock wrong?)");
        let mut body = ApiError::verdict(
            format!(
                "{} readings stamped outside {} .. {} (e.g. {ts}); is the machine's clock right?",
                outside.len(),
                window.from,
                window.until
            ),
            Verdict::Refused,
            RefusalCode::Clock,
        );
        body.accept = Some(window);
        return (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response();
    }
    let newest = batch.readings.iter().map(|r| r.sample.ts).max();
    let rec = match record::encode(&record::Record {
        readings: batch.readings.len() as u32,
        fresh: newest.is_some_and(|ts| chrono::Utc::now() - ts < FRESH_WITHIN),
        machine_id: &batch.machine_id,
        timestamp: sig.timestamp,
        signature: &sig.signature_b64,
        json: &packed,
        packed: true,
    }) {
        Ok(r) => r,
        Err(e) => return malformed(StatusCode::BAD_REQUEST, e.to_string()),
    };
    // Quotas count what the buffer holds; a forward request carries the batch inflated.
    let cost = rec.len() as u64;
    let forward_cost = (rec.len() - packed.len() + json.len()) as u64;
    // A batch that could never fit beside other hubs' data (or into one forward) would be
    // refused forever; 413 makes the hub split it (its uplink halves a refused batch) instead of
    // retrying it unchanged.
    let forwardable = crate::forward::max_record_bytes(limits);
    if cost > sh.quota / 2 || forward_cost > forwardable {
        tracing::warn!(machine = %batch.machine_id, bytes = cost, quota = sh.quota, forwardable,
            "hub batch larger than this connector takes at once; hub told to send smaller batches");
        return verdict(
            StatusCode::PAYLOAD_TOO_LARGE,
            Verdict::RetryLater,
            RefusalCode::TooLarge,
            format!(
                "a batch of {cost} bytes is more than this connector takes at once (buffer quota {} bytes, {forwardable} bytes per forward); send smaller batches",
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
    // The hub's credentials go through as they are: its signature, or its session ticket,
    // sequence number and MAC, which only the cloud can check.
    for name in [
        outpost_shared::keys::HEADER_MACHINE,
        outpost_shared::keys::HEADER_TIMESTAMP,
        outpost_shared::keys::HEADER_SIGNATURE,
        outpost_shared::keys::session::HEADER_SESSION,
        outpost_shared::keys::session::HEADER_SEQ,
        outpost_shared::keys::session::HEADER_MAC,
        header::CONTENT_TYPE.as_str(),
    ] {
        if let Some(v) = headers.get(name) {
            req = req.header(name, v.as_bytes());
        }
    }
    match req.body(body).send().await {
        Ok(r) => {
            let status = StatusCode::from_u16(r.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            // And the cloud's MAC over its answer back, so the hub can tell the cloud's word.
            let answer_mac = r.headers().get(outpost_shared::keys::session::HEADER_ANSWER_MAC).cloned();
            let bytes = r.bytes().await.unwrap_or_default();
            let mut resp = (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response();
            if let Some(mac) = answer_mac {
                resp.headers_mut().insert(outpost_shared::keys::session::HEADER_ANSWER_MAC, mac);
            }
            resp
        }
        Err(e) => err(StatusCode::BAD_GATEWAY, format!("cloud unreachable from the connector: {e}")),
    }
}

#[derive(serde::Deserialize)]
struct PollQuery {
    /// Seconds to hold the poll open when nothing is waiting (at most 30), as on the cloud.
    wait: Option<u64>,
}

/// A hub's command long-poll: checked here (signed by a hub this network lists, over this exact
/// request, recently), then answered from the connector's one upstream poll for all its hubs
/// (see [`crate::polls`]). The answer is what the cloud would give: its signed envelopes.
async fn hub_poll(
    State(sh): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    axum::extract::Query(q): axum::extract::Query<PollQuery>,
) -> Response {
    if sh.cloud.is_none() {
        return err(StatusCode::SERVICE_UNAVAILABLE, "this connector has no cloud configured");
    }
    let sig = match SignedHeaders::from_header_map(&headers) {
        Ok(s) => s,
        Err(e) => {
            return err(
                StatusCode::UNAUTHORIZED,
                format!("unsigned command poll ({e}); hubs sign every request"),
            )
        }
    };
    let key = match signer_key(&sh, &sig, peer).await {
        Ok(k) => k,
        Err(r) => return r,
    };
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/v1/commands/poll");
    if let Err(e) = outpost_shared::keys::verify_request(
        &key,
        &sig,
        "GET",
        path,
        b"",
        chrono::Utc::now(),
        outpost_shared::keys::DEFAULT_MAX_SKEW,
    ) {
        tracing::warn!(%peer, machine = %sig.machine_id, reason = %e, "command poll refused: signature does not check");
        return err(StatusCode::UNAUTHORIZED, e.to_string());
    }
    let wait = Duration::from_secs(q.wait.unwrap_or(25).min(30));
    let rx = sh.polls.wait(sig.machine_id.as_str());
    match tokio::time::timeout(wait, rx).await {
        Ok(Ok(crate::polls::Delivery::Commands(list))) => Json(list).into_response(),
        Ok(Ok(crate::polls::Delivery::Refused)) => err(
            StatusCode::FORBIDDEN,
            format!("the cloud does not serve machine {} through this connector", sig.machine_id),
        ),
        // Timed out (or the connector is stopping): nothing for this hub now.
        _ => Json(Vec::<serde_json::Value>::new()).into_response(),
    }
}
