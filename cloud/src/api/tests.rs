//! The ingest gates, in process: what an unauthenticated or oversized request may cost.

use super::*;
use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{header, Request};
use outpost_shared::model::{RefusalCode, Verdict};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tower::ServiceExt;

struct Setup {
    app: Router,
    state: AppState,
    /// An enrolled hub's key.
    hub: outpost_shared::keys::KeyPair,
    _dir: tempfile::TempDir,
}

fn setup(ingest: crate::config::IngestLimits) -> Setup {
    setup_on(ingest, None)
}

/// With `readings`, readings go to that engine (keys and commands stay in the temp dir's sled).
fn setup_on(ingest: crate::config::IngestLimits, readings: Option<Store>) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let sled = crate::store::sled::SledStore::open(&dir.path().join("db")).unwrap();
    let trust = Trust::open(dir.path(), sled.db(), sled.flusher()).unwrap();
    let commands = Commands::open(sled.db(), sled.flusher()).unwrap();
    let store: Store = readings.unwrap_or_else(|| Arc::new(sled.clone()));
    let config = CloudConfig { ingest, ..Default::default() };
    let hub = outpost_shared::keys::KeyPair::generate().unwrap();
    let now = chrono::Utc::now();
    let (token, _) = trust
        .new_token("net", outpost_shared::model::Role::Sensorhub, Duration::from_secs(60), "", "test", now)
        .unwrap();
    let req = crate::trust::EnrollRequest {
        token: Some(token.encode()),
        sealed_token: None,
        public_key: hub.public().to_pem(),
        role: outpost_shared::model::Role::Sensorhub,
        hostname: "h".into(),
        lan_cert: None,
    };
    trust.enroll(&req, now).unwrap();
    let state = AppState::new(store, "admin".into(), trust, commands, Arc::new(config));
    Setup { app: router(state.clone()), state, hub, _dir: dir }
}

/// 64 KiB of gzip that inflates to 64 MiB of zeros.
fn bomb() -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..64 {
        enc.write_all(&zeros).unwrap();
    }
    enc.finish().unwrap()
}

/// A body that records whether anyone read it.
fn watched(bytes: Vec<u8>) -> (Body, Arc<AtomicBool>) {
    let read = Arc::new(AtomicBool::new(false));
    let flag = read.clone();
    let mut once = Some(Bytes::from(bytes));
    let stream = futures_util::stream::poll_fn(move |_| {
        flag.store(true, Ordering::SeqCst);
        std::task::Poll::Ready(once.take().map(Ok::<_, std::io::Error>))
    });
    (Body::from_stream(stream), read)
}

fn post(path: &str, body: Body, headers: &[(&str, String)]) -> Request<Body> {
    let mut r = Request::post(path).header(header::CONTENT_ENCODING, "gzip");
    for (k, v) in headers {
        r = r.header(*k, v);
    }
    let mut r = r.body(body).unwrap();
    r.extensions_mut().insert(ConnectInfo(std::net::SocketAddr::from(([127, 0, 0, 1], 4000))));
    r
}

fn signed(key: &outpost_shared::keys::KeyPair, path: &str) -> Vec<(&'static str, String)> {
    let sig = outpost_shared::keys::sign_request(key, "POST", path, b"{}", chrono::Utc::now()).unwrap();
    sig.to_pairs().to_vec()
}

async fn answer(app: &Router, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, ApiError) {
    let r = tokio::time::timeout(Duration::from_secs(10), app.clone().oneshot(req)).await.unwrap().unwrap();
    let (parts, body) = r.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    (parts.status, parts.headers, serde_json::from_slice(&bytes).unwrap_or_else(|_| ApiError::new("")))
}

#[tokio::test]
async fn unsigned_and_unknown_senders_get_401_without_their_body_being_read_or_inflated() {
    let s = setup(Default::default());
    for path in ["/v1/batches", "/v1/forward"] {
        let (body, read) = watched(bomb());
        let (status, _, _) = answer(&s.app, post(path, body, &[])).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path} unsigned");
        assert!(!read.load(Ordering::SeqCst), "{path}: unsigned body was read");

        let stranger = outpost_shared::keys::KeyPair::generate().unwrap();
        let (body, read) = watched(bomb());
        let (status, _, e) = answer(&s.app, post(path, body, &signed(&stranger, path))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path} unknown signer: {}", e.error);
        assert!(e.error.contains("not enrolled"), "{}", e.error);
        assert!(!read.load(Ordering::SeqCst), "{path}: an unknown signer's body was read");
    }
    // A hub may not use the connectors' route, and is told so before its body is read.
    let (body, read) = watched(bomb());
    let (status, _, _) = answer(&s.app, post("/v1/forward", body, &signed(&s.hub, "/v1/forward"))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(!read.load(Ordering::SeqCst));
    assert_eq!(s.state.admission.inflated.load(Ordering::SeqCst), 0, "something was inflated");
}

#[tokio::test]
async fn a_stale_timestamp_is_refused_before_the_body() {
    let s = setup(Default::default());
    let old = chrono::Utc::now() - chrono::Duration::hours(1);
    let sig = outpost_shared::keys::sign_request(&s.hub, "POST", "/v1/batches", b"{}", old).unwrap();
    let (body, read) = watched(bomb());
    let (status, _, e) = answer(&s.app, post("/v1/batches", body, &sig.to_pairs())).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(e.error.contains("clock"), "{}", e.error);
    assert!(!read.load(Ordering::SeqCst));
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let limits =
        crate::config::IngestLimits { max_body: 128 << 10, max_decompressed: 1 << 20, ..Default::default() };
    let s = setup(limits);
    let sig = signed(&s.hub, "/v1/batches");

    // Declared too large: refused before reading.
    let (body, read) = watched(vec![0; 100]);
    let mut h = sig.clone();
    h.push(("content-length", (1u64 << 30).to_string()));
    let (status, _, _) = answer(&s.app, post("/v1/batches", body, &h)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(!read.load(Ordering::SeqCst));

    // Streamed without a length, past the cap.
    let (body, _) = watched(vec![0; 200 << 10]);
    let (status, _, e) = answer(&s.app, post("/v1/batches", body, &sig)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{}", e.error);

    // Small on the wire, too large inflated: the bomb stops at the cap.
    let (body, _) = watched(bomb());
    let (status, _, e) = answer(&s.app, post("/v1/batches", body, &sig)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{}", e.error);
    assert!(e.error.contains("decompressed"), "{}", e.error);
    assert_eq!(s.state.admission.inflated.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn ingest_beyond_its_slots_gets_503_retry_later_busy() {
    let limits = crate::config::IngestLimits { max_in_flight: 1, max_inflating: 1, ..Default::default() };
    let s = setup(limits);
    // The first request holds the only slot with a body that never ends.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    let slow = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let first =
        tokio::spawn(s.app.clone().oneshot(post("/v1/batches", slow, &signed(&s.hub, "/v1/batches"))));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (body, _) = watched(b"{}".to_vec());
    let (status, headers, e) =
        answer(&s.app, post("/v1/batches", body, &signed(&s.hub, "/v1/batches"))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(headers.get(header::RETRY_AFTER).is_some());
    assert_eq!((e.verdict, e.code), (Some(Verdict::RetryLater), Some(RefusalCode::Busy)));
    drop(tx);
    let _ = first.await;
    // The slot is free again: the next request gets past admission (and fails later, as `{}`
    // is no gzip).
    let (body, _) = watched(b"{}".to_vec());
    let (status, _, _) = answer(&s.app, post("/v1/batches", body, &signed(&s.hub, "/v1/batches"))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

/// `GET /v1/machines` names the network a machine is enrolled in and the connector it reports
/// through, and marks a revoked machine, so the dashboard can group, name and flag them.
#[tokio::test]
async fn the_machine_list_says_network_connector_name_and_revocation() {
    let s = setup(Default::default());
    let now = chrono::Utc::now();
    // A connector of the same network, enrolled by name.
    let connector = enroll_in(&s, "net", outpost_shared::model::Role::Connector, "gateway-7");
    let hub = s.hub.machine_id().to_string();
    let batch = outpost_shared::model::Batch {
        machine_id: hub.clone(),
        hostname: "h".into(),
        role: Default::default(),
        uplink: format!("connector:{}", connector.machine_id()),
        buffered: 0,
        dropped: 0,
        version: String::new(),
        quarantined: 0,
        clock_problem: None,
        readings: vec![],
    };
    s.state.store.ingest(batch, now).await.unwrap();

    let row = machine_row(&s.app, &hub).await;
    assert_eq!(row["network"], "net");
    assert_eq!(row["revoked"], false);
    assert_eq!(row["uplink_name"], "gateway-7");
    assert_eq!(row["hostname"], "h", "the stored fields are still there");

    s.state.trust.revoke(&hub, now).unwrap();
    let row = machine_row(&s.app, &hub).await;
    assert_eq!(row["revoked"], true);
    assert!(row["network"].is_null());
}

/// The row of machine `id` in `GET /v1/machines`, as the admin sees it.
async fn machine_row(app: &Router, id: &str) -> serde_json::Value {
    let req = Request::get("/v1/machines")
        .header(header::AUTHORIZATION, "Bearer admin")
        .body(Body::empty())
        .unwrap();
    let r = app.clone().oneshot(req).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    v.as_array().unwrap().iter().find(|m| m["id"] == id).cloned().unwrap()
}

/// A gzip batch of `n` readings from `hub`, signed, for `/v1/batches`.
fn batch_request(hub: &outpost_shared::keys::KeyPair, n: u64) -> Request<Body> {
    use std::io::Write;
    let now = chrono::Utc::now();
    let id = hub.machine_id().to_string();
    let batch = outpost_shared::model::Batch {
        machine_id: id.clone(),
        hostname: "h".into(),
        role: outpost_shared::model::Role::Sensorhub,
        uplink: "direct".into(),
        buffered: 0,
        dropped: 0,
        version: "t".into(),
        quarantined: 0,
        clock_problem: None,
        readings: (1..=n)
            .map(|seq| outpost_shared::model::Reading {
                machine_id: id.clone(),
                seq,
                sample: outpost_shared::model::Sample::new(
                    "cpu",
                    seq as f64,
                    outpost_shared::model::State::Ok,
                )
                .at(now),
            })
            .collect(),
    };
    let json = serde_json::to_vec(&batch).unwrap();
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&json).unwrap();
    let gz = enc.finish().unwrap();
    // The signature covers what the batch says, not its encoding on the wire.
    let sig = outpost_shared::keys::sign_request(hub, "POST", "/v1/batches", &json, now).unwrap();
    post("/v1/batches", Body::from(gz), &sig.to_pairs())
}

async fn ack(app: &Router, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
    let r = tokio::time::timeout(Duration::from_secs(30), app.clone().oneshot(req)).await.unwrap().unwrap();
    let (parts, body) = r.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    (parts.status, parts.headers, serde_json::from_slice(&bytes).unwrap_or_default())
}

/// Stored, then a duplicate on resend, then readable: the same answers from every engine.
async fn a_batch_is_acknowledged_once_and_then_as_duplicates(s: Setup) {
    let (status, _, body) = ack(&s.app, batch_request(&s.hub, 50)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((body["stored"].as_u64(), body["duplicates"].as_u64()), (Some(50), Some(0)), "{body}");
    let (status, _, body) = ack(&s.app, batch_request(&s.hub, 60)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((body["stored"].as_u64(), body["duplicates"].as_u64()), (Some(10), Some(50)), "{body}");
    let id = s.hub.machine_id().to_string();
    let r = Request::get(format!("/v1/machines/{id}/readings?sensor=cpu&limit=1000"))
        .header(header::AUTHORIZATION, "Bearer admin")
        .body(Body::empty())
        .unwrap();
    let (status, _, body) = ack(&s.app, r).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body.as_array().map(|a| a.len()), Some(60), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sled_a_batch_is_acknowledged_once_and_then_as_duplicates() {
    a_batch_is_acknowledged_once_and_then_as_duplicates(setup(Default::default())).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_batch_is_acknowledged_once_and_then_as_duplicates() {
    let url = crate::store::tests::fresh_database().await;
    let pg = crate::store::postgres::PgStore::open(&url, &Default::default()).await.unwrap();
    a_batch_is_acknowledged_once_and_then_as_duplicates(setup_on(Default::default(), Some(Arc::new(pg))))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_is_down_means_503_retry_later_and_nothing_is_acknowledged() {
    use crate::store::postgres::{throwaway, PgStore, PostgresOptions, PostgresUrl};
    let mut server =
        tokio::task::spawn_blocking(|| throwaway::Throwaway::start().unwrap_or_else(|e| panic!("{e}")))
            .await
            .unwrap();
    let url = PostgresUrl::new(throwaway::create_database(&server, "down").await.unwrap());
    let options = PostgresOptions { timeout: Duration::from_secs(1), ..Default::default() };
    let pg = PgStore::open(&url, &options).await.unwrap();
    let s = setup_on(Default::default(), Some(Arc::new(pg)));
    let mut server = tokio::task::spawn_blocking(move || {
        server.stop();
        server
    })
    .await
    .unwrap();
    let (status, headers, body) = ack(&s.app, batch_request(&s.hub, 5)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(headers.get(header::RETRY_AFTER).is_some());
    assert_eq!(body["verdict"], "retry_later", "{body}");
    let mut server = tokio::task::spawn_blocking(move || {
        server.resume().unwrap();
        server
    })
    .await
    .unwrap();
    let (status, _, body) = ack(&s.app, batch_request(&s.hub, 5)).await;
    assert_eq!(status, StatusCode::OK, "back up, the same batch is taken: {body}");
    assert_eq!(body["stored"].as_u64(), Some(5), "nothing of it was kept while down: {body}");
    tokio::task::spawn_blocking(move || server.stop()).await.unwrap();
}

/// Enrolls a new machine of `role` in `network` and returns its key.
fn enroll_in(
    s: &Setup,
    network: &str,
    role: outpost_shared::model::Role,
    hostname: &str,
) -> outpost_shared::keys::KeyPair {
    let key = outpost_shared::keys::KeyPair::generate().unwrap();
    let now = chrono::Utc::now();
    let (token, _) =
        s.state.trust.new_token(network, role, Duration::from_secs(60), "", "test", now).unwrap();
    let lan_cert = (role == outpost_shared::model::Role::Connector).then(|| "0".repeat(64));
    let req = crate::trust::EnrollRequest {
        token: Some(token.encode()),
        sealed_token: None,
        public_key: key.public().to_pem(),
        role,
        hostname: hostname.into(),
        lan_cert,
    };
    s.state.trust.enroll(&req, now).unwrap();
    key
}

/// `POST /v1/commands/poll-many`, signed by `signer`, over `machines`.
async fn poll_many(
    s: &Setup,
    signer: &outpost_shared::keys::KeyPair,
    machines: &[String],
) -> (StatusCode, serde_json::Value) {
    let body = serde_json::to_vec(&serde_json::json!({"machines": machines, "wait": 0})).unwrap();
    let sig = outpost_shared::keys::sign_request(
        signer,
        "POST",
        "/v1/commands/poll-many",
        &body,
        chrono::Utc::now(),
    )
    .unwrap();
    let mut r = Request::post("/v1/commands/poll-many").header(header::CONTENT_TYPE, "application/json");
    for (k, v) in sig.to_pairs() {
        r = r.header(k, v);
    }
    let mut r = r.body(Body::from(body)).unwrap();
    r.extensions_mut().insert(ConnectInfo(std::net::SocketAddr::from(([127, 0, 0, 1], 4000))));
    let (status, _, v) = ack(&s.app, r).await;
    (status, v)
}

/// A connector polls only for hubs of its own network; a hub cannot poll for others; a list
/// beyond the cap is refused before anything waits.
#[tokio::test]
async fn poll_many_serves_a_connector_only_its_own_networks_hubs() {
    use outpost_shared::model::Role;
    let s = setup(Default::default());
    let connector = enroll_in(&s, "net", Role::Connector, "gw");
    let foreign = enroll_in(&s, "other", Role::Sensorhub, "far");
    let ours = s.hub.machine_id().to_string();
    let theirs = foreign.machine_id().to_string();
    for id in [&ours, &theirs] {
        s.state
            .commands
            .create(s.state.trust.key(), id, "ping", serde_json::Value::Null, Duration::from_secs(60), "t")
            .await
            .unwrap();
    }
    let (status, v) = poll_many(&s, &connector, &[ours.clone(), theirs.clone(), "0".repeat(32)]).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["commands"].as_object().unwrap().keys().collect::<Vec<_>>(), vec![&ours], "{v}");
    let mut refused: Vec<&str> =
        v["refused"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
    refused.sort();
    let mut want = vec![theirs.as_str(), "00000000000000000000000000000000"];
    want.sort();
    assert_eq!(refused, want, "another network's hub and an unknown id are refused");

    // A hub is no connector: it may not poll for anybody.
    let (status, _) = poll_many(&s, &s.hub, std::slice::from_ref(&ours)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Nor may a key the cloud does not know, or an oversized list.
    let stranger = outpost_shared::keys::KeyPair::generate().unwrap();
    assert_eq!(poll_many(&s, &stranger, std::slice::from_ref(&ours)).await.0, StatusCode::UNAUTHORIZED);
    let many: Vec<String> = (0..10_001).map(|i| format!("{i:032x}")).collect();
    assert_eq!(poll_many(&s, &connector, &many).await.0, StatusCode::PAYLOAD_TOO_LARGE);
}

/// An admin GET of `path`, its status and JSON body.
async fn admin_get(app: &Router, path: &str) -> (StatusCode, serde_json::Value) {
    let req = Request::get(path).header(header::AUTHORIZATION, "Bearer admin").body(Body::empty()).unwrap();
    let (status, _, body) = ack(app, req).await;
    (status, body)
}

/// The chart's series over the retention boundary: what retention folded comes as hourly points,
/// what it left as raw readings, one continuous series with no reading shown twice; points
/// outside the range are not sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_series_joins_hourly_aggregates_to_raw_readings_without_gap_or_overlap() {
    let s = setup(Default::default());
    let id = s.hub.machine_id().to_string();
    let now = chrono::Utc::now();
    // One reading every 10 minutes for 3 days; retention keeps 1 day raw.
    let readings: Vec<_> = (0..432u64)
        .map(|i| outpost_shared::model::Reading {
            machine_id: id.clone(),
            seq: i + 1,
            sample: outpost_shared::model::Sample::new("t", i as f64, outpost_shared::model::State::Ok)
                .at(now - chrono::Duration::minutes(10 * (432 - i as i64))),
        })
        .collect();
    let batch = outpost_shared::model::Batch {
        machine_id: id.clone(),
        hostname: "h".into(),
        role: outpost_shared::model::Role::Sensorhub,
        uplink: "direct".into(),
        buffered: 0,
        dropped: 0,
        version: "t".into(),
        quarantined: 0,
        clock_problem: None,
        readings,
    };
    s.state.store.ingest(batch, now).await.unwrap();
    let folded =
        s.state.store.compact(now, Duration::from_secs(86400), Duration::from_secs(400 * 86400)).await;
    assert!(folded.unwrap().folded > 250);

    let from = (now - chrono::Duration::days(4)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let enc = |t: &str| t.replace('+', "%2B");
    let (status, body) =
        admin_get(&s.app, &format!("/v1/machines/{id}/series?sensor=t&from={}", enc(&from))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let points = body["points"].as_array().unwrap();
    let ts: Vec<i64> = points
        .iter()
        .map(|p| chrono::DateTime::parse_from_rfc3339(p["ts"].as_str().unwrap()).unwrap().timestamp())
        .collect();
    assert!(ts.windows(2).all(|w| w[0] < w[1]), "one series in time order, nothing twice");
    let hourly = points.iter().take_while(|p| p["hourly"] == true).count();
    assert!(hourly >= 47, "two days of hours: {hourly}");
    assert!(points[hourly..].iter().all(|p| p["hourly"] == false), "raw after the last hour");
    assert!(ts.windows(2).all(|w| w[1] - w[0] <= 3600), "no gap at the boundary");
    let counted: u64 = points.iter().map(|p| p["count"].as_u64().unwrap_or(1)).sum();
    assert_eq!(counted, 432, "every reading in exactly one point");

    // The last hour only: every raw reading of it, nothing before.
    let from = (now - chrono::Duration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let (_, body) =
        admin_get(&s.app, &format!("/v1/machines/{id}/series?sensor=t&from={}", enc(&from))).await;
    assert_eq!(body["points"].as_array().unwrap().len(), 6, "{body}");

    for bad in [
        format!("/v1/machines/{id}/series?sensor=t&from=yesterday"),
        format!("/v1/machines/{id}/series?sensor=t&from=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z"),
        format!("/v1/machines/{id}/series?sensor=t&from=2020-01-01T00:00:00Z&until=2026-01-01T00:00:00Z"),
        format!("/v1/machines/{id}/series?sensor=t&from=2026-01-01T00:00:00Z&limit=5"),
    ] {
        assert_eq!(admin_get(&s.app, &bad).await.0, StatusCode::BAD_REQUEST, "{bad}");
    }
    let (status, _) =
        admin_get(&s.app, "/v1/machines/nobody/series?sensor=t&from=2026-01-01T00:00:00Z").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let req = Request::get(format!("/v1/machines/{id}/series?sensor=t&from={}", enc(&from)))
        .body(Body::empty())
        .unwrap();
    assert_eq!(ack(&s.app, req).await.0, StatusCode::UNAUTHORIZED, "the admin's data only");
}
