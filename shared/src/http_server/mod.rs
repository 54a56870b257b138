//! The server setup every Outpost listener shares (the cloud's API, a connector's LAN API), so a
//! limit added here protects both. Nothing unauthenticated may be expensive:
//!
//! - hyper gets a timer, so its header-read timeout works (axum-server builds hyper without one,
//!   which leaves a slow client holding a connection forever) and HTTP/2 pings find dead peers;
//! - TLS handshakes have a deadline; connections over [`ServerLimits::max_connections`] are
//!   closed before any work is done for them ([`accept`]);
//! - every router is wrapped in [`protect`]: requests over [`ServerLimits::max_requests`] are shed
//!   with 503 + Retry-After, each request has a deadline and its body a read deadline;
//! - [`rate::PerSource`] limits what one address may ask of routes that need no credentials.
//!
//! Overload is logged once per episode ([`episode`]), not per request.

pub mod accept;
pub mod episode;
mod limits;
pub mod rate;
#[cfg(test)]
mod tests;

pub use limits::ServerLimits;
pub use rate::PerSource;

use crate::model::{ApiError, RefusalCode, Verdict};
use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::ServiceBuilder;
use tower_http::timeout::{RequestBodyTimeoutLayer, TimeoutLayer};

/// Descriptors kept free beside the connection cap (database files, logs, outgoing connections).
#[cfg(unix)]
const SPARE_FDS: u64 = 256;

/// "Not now": `status` (503, 429) with Retry-After and a [`Verdict::RetryLater`] body, so a
/// sender keeps its data and comes back.
pub fn retry_later(status: StatusCode, after: Duration, msg: impl Into<String>) -> Response {
    let secs = after.as_secs_f64().ceil().max(1.0) as u64;
    let body = ApiError::verdict(msg, Verdict::RetryLater, RefusalCode::Busy);
    let mut r = (status, Json(body)).into_response();
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    r
}

/// Wraps `router` in the per-request limits: load shedding above `max_requests` requests in
/// progress, a deadline per request (408) and per request body. Apply it last, so it covers
/// every route and the fallback.
pub fn protect(router: Router, limits: &ServerLimits) -> Router {
    let shed = Arc::new(episode::Episode::new("requests in progress"));
    let busy = shed.clone();
    router.layer(
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(move |e: tower::BoxError| {
                let busy = busy.clone();
                async move {
                    if e.is::<tower::load_shed::error::Overloaded>() {
                        busy.hit();
                        retry_later(
                            StatusCode::SERVICE_UNAVAILABLE,
                            Duration::from_secs(2),
                            "server busy; retry later",
                        )
                    } else {
                        (StatusCode::INTERNAL_SERVER_ERROR, Json(ApiError::new(e.to_string())))
                            .into_response()
                    }
                }
            }))
            .load_shed()
            .layer(GlobalConcurrencyLimitLayer::new(limits.max_requests))
            .map_request(move |r: Request<Body>| {
                shed.clear();
                r
            })
            .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, limits.request_timeout))
            .layer(RequestBodyTimeoutLayer::new(limits.body_timeout))
            .map_request(|r: Request<tower_http::timeout::TimeoutBody<Body>>| r.map(Body::new)),
    )
}

/// Serves `app` (wrapped in [`protect`]) over TLS on `listener` with `limits`, until `handle`
/// shuts it down. Handlers see the peer as `ConnectInfo<SocketAddr>`.
pub async fn serve_tls(
    listener: std::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    limits: &ServerLimits,
    handle: axum_server::Handle,
) -> std::io::Result<()> {
    let cap = connection_cap(limits.max_connections);
    let handshake = limits.tls_handshake_timeout;
    let first_byte = limits.header_read_timeout;
    let mut server =
        axum_server::from_tcp_rustls(listener, axum_server::tls_rustls::RustlsConfig::from_config(tls))
            .handle(handle)
            // No Nagle: HTTP/2 writes a response as several small frames, and a frame held back
            // for the peer's delayed ACK cost a command 40 ms on its way to the hub.
            .map(|tls| {
                let tls =
                    tls.handshake_timeout(handshake).acceptor(axum_server::accept::NoDelayAcceptor::new());
                accept::Capped::new(tls, cap, first_byte)
            });
    let builder = server.http_builder();
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Some(limits.header_read_timeout))
        .keep_alive_timeout(limits.header_read_timeout)
        .max_concurrent_streams(64);
    server.serve(protect(app, limits).into_make_service_with_connect_info::<SocketAddr>()).await
}

/// Windows has no descriptor limit of this kind (a process may hold as many sockets as memory
/// allows): the configured cap stands.
#[cfg(not(unix))]
fn connection_cap(wanted: usize) -> usize {
    wanted
}

/// Raises the process' descriptor limit so `wanted` connections fit (plus spares), as far as the
/// hard limit allows; returns the connection cap that does fit.
#[cfg(unix)]
fn connection_cap(wanted: usize) -> usize {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let need = wanted as u64 + SPARE_FDS;
    let mut lim = getrlimit(Resource::Nofile);
    let hard = lim.maximum.unwrap_or(u64::MAX);
    if lim.current.is_some_and(|soft| soft < need.min(hard)) {
        lim.current = Some(need.min(hard));
        if let Err(e) = setrlimit(Resource::Nofile, lim) {
            tracing::warn!(error = %e, "cannot raise the descriptor limit");
        }
    }
    let soft = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    if soft >= need {
        return wanted;
    }
    let fits = soft.saturating_sub(SPARE_FDS).max(16) as usize;
    tracing::warn!(
        wanted,
        fits,
        soft_limit = soft,
        "descriptor limit too low for server.max_connections; capping connections lower"
    );
    fits
}
