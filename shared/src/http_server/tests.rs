use super::*;
use axum::routing::get;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

struct Running {
    addr: SocketAddr,
    ca: std::path::PathBuf,
    handle: axum_server::Handle,
    _dir: tempfile::TempDir,
}

async fn start(app: Router, limits: ServerLimits) -> Running {
    crate::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let paths = crate::tls::ensure_self_signed(dir.path(), &["127.0.0.1".to_string()], "test").unwrap();
    let tls = crate::tls::server_config(&paths.cert, &paths.key).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = axum_server::Handle::new();
    let h = handle.clone();
    tokio::spawn(async move { serve_tls(listener, tls, app, &limits, h).await });
    handle.listening().await.expect("server listens");
    Running { addr, ca: paths.ca, handle, _dir: dir }
}

async fn tls_connect(r: &Running) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let roots = crate::tls::root_store(Some(&r.ca)).unwrap();
    let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(r.addr).await.unwrap();
    connector.connect("127.0.0.1".try_into().unwrap(), tcp).await.unwrap()
}

/// Reads until the peer closes; how long that took.
async fn closed_after(mut s: impl tokio::io::AsyncRead + Unpin, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at((t + limit).into(), s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(t.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

fn app() -> Router {
    Router::new().route("/v1/health", get(|| async { "ok" }))
}

/// A slowloris that trickles header bytes is cut off at the header-read timeout, whatever it
/// keeps sending; without hyper's timer it would hold the connection forever.
#[tokio::test]
async fn a_client_trickling_headers_is_disconnected_at_the_header_timeout() {
    let limits = ServerLimits { header_read_timeout: Duration::from_millis(800), ..Default::default() };
    let r = start(app(), limits).await;
    let mut s = tls_connect(&r).await;
    s.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let (mut rd, mut wr) = tokio::io::split(s);
    let trickle = tokio::spawn(async move {
        for _ in 0..100 {
            if wr.write_all(b"X-a: b\r\n").await.is_err() || wr.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut buf = Vec::new();
    let took = tokio::time::timeout(Duration::from_secs(5), rd.read_to_end(&mut buf)).await;
    trickle.abort();
    assert!(took.is_ok(), "slow client still connected after 5 s with an 800 ms header timeout");
    // hyper may answer 408 before closing; it must never have served the request.
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));
    r.handle.shutdown();
}

/// A client that completes TLS and then says nothing is closed too (idle connections hold a
/// descriptor each).
#[tokio::test]
async fn a_silent_connection_is_closed() {
    let limits = ServerLimits { header_read_timeout: Duration::from_millis(500), ..Default::default() };
    let r = start(app(), limits).await;
    let s = tls_connect(&r).await;
    let took = closed_after(s, Duration::from_secs(5)).await;
    assert!(took.is_some(), "silent TLS connection still open after 5 s");
    r.handle.shutdown();
}

/// Over the connection cap, a new connection is closed at once, even before TLS; a freed slot
/// is usable again.
#[tokio::test]
async fn connections_over_the_cap_are_closed_at_once() {
    let limits = ServerLimits { max_connections: 4, ..Default::default() };
    let r = start(app(), limits).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(tokio::net::TcpStream::connect(r.addr).await.unwrap());
    }
    // Give the server time to accept the four.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let extra = tokio::net::TcpStream::connect(r.addr).await.unwrap();
    let took = closed_after(extra, Duration::from_secs(3)).await.expect("fifth connection not closed");
    assert!(took < Duration::from_secs(1), "fifth connection closed only after {took:?}");
    held.pop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut s = tls_connect(&r).await;
    s.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"), "a freed slot was not reusable");
    r.handle.shutdown();
}

/// Above `max_requests` requests in progress the server answers 503 + Retry-After at once, with a
/// retry-later verdict, instead of queueing.
#[tokio::test]
async fn requests_over_the_limit_are_shed_with_retry_later() {
    let gate = Arc::new(tokio::sync::Notify::new());
    let g = gate.clone();
    let router = Router::new().route(
        "/slow",
        get(move || {
            let g = g.clone();
            async move {
                g.notified().await;
                "done"
            }
        }),
    );
    let app = protect(router, &ServerLimits { max_requests: 1, ..Default::default() });
    let first = tokio::spawn(app.clone().oneshot(Request::get("/slow").body(Body::empty()).unwrap()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = app.clone().oneshot(Request::get("/slow").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(second.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(second.headers().get(header::RETRY_AFTER).is_some());
    let body = axum::body::to_bytes(second.into_body(), 4096).await.unwrap();
    let e: ApiError = serde_json::from_slice(&body).unwrap();
    assert_eq!((e.verdict, e.code), (Some(Verdict::RetryLater), Some(RefusalCode::Busy)));
    gate.notify_one();
    assert_eq!(first.await.unwrap().unwrap().status(), StatusCode::OK);
}

/// One source gets its burst, then 429s with a Retry-After that matches its rate; another source
/// is not affected.
#[test]
fn per_source_limit_counts_each_source_alone() {
    let l = PerSource::new("test", 2.0, 3);
    let a: std::net::IpAddr = "10.0.0.1".parse().unwrap();
    let b: std::net::IpAddr = "10.0.0.2".parse().unwrap();
    for _ in 0..3 {
        assert!(l.check(a).is_ok());
    }
    let wait = l.check(a).expect_err("fourth request within the burst window passed");
    assert!(wait <= Duration::from_millis(500) && wait > Duration::ZERO, "{wait:?}");
    assert!(l.check(b).is_ok(), "another source was limited by the first one's use");
    // Addresses of one IPv6 /64 count as one source.
    let v6a: std::net::IpAddr = "2001:db8:1:2::1".parse().unwrap();
    let v6b: std::net::IpAddr = "2001:db8:1:2::ffff".parse().unwrap();
    for _ in 0..3 {
        assert!(l.check(v6a).is_ok());
    }
    assert!(l.check(v6b).is_err(), "a fresh address in the same /64 escaped the limit");
}
