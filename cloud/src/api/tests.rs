//! The ingest gates, in process: what an unauthenticated or oversized request may cost.

use super::*;
use crate::store::testing::Keep;
use crate::store::Engines;
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
}

crate::both_engines!(
    unsigned_and_unknown_senders_get_401_without_their_body_being_read_or_inflated,
    a_stale_timestamp_is_refused_before_the_body,
    oversized_bodies_get_413,
    ingest_beyond_its_slots_gets_503_retry_later_busy,
    ingest_beyond_its_slots_waits_in_a_bounded_queue_for_a_bounded_time,
    one_claimed_machine_cannot_take_every_place_in_the_queue,
    a_batch_waiting_for_its_flush_holds_no_admission_slot,
    the_machine_list_says_network_connector_name_and_revocation,
    a_batch_is_acknowledged_once_and_then_as_duplicates,
    poll_many_serves_a_connector_only_its_own_networks_hubs,
    enrollment_tokens_are_one_time_bound_to_a_role_and_audited,
    a_command_goes_out_signed_comes_back_signed_and_is_audited,
    commands_are_signed_with_the_command_key_only_for_machines_that_check_it,
    mail_commands_need_the_clouds_grant,
    a_series_joins_hourly_aggregates_to_raw_readings_without_gap_or_overlap,
    a_session_carries_batches_once_and_refuses_replays_and_forgeries,
    a_revoked_machines_live_session_is_refused_at_once,
    session_opening_needs_a_fresh_challenge_and_this_clouds_key,
    an_expired_session_is_reopened_and_the_batch_stored_exactly_once,
    a_result_travels_bare_only_in_a_session_and_only_unaltered,
    logins_beyond_the_limit_are_told_to_retry_later_and_signed_requests_go_on,
    an_rsa_oaep_login_of_an_earlier_hub_still_opens_a_session,
    an_x25519_login_beyond_its_permits_is_told_to_retry_later,
    a_login_that_proves_nothing_costs_nothing,
    an_x25519_login_is_bound_to_the_machine_key_and_the_exchange,
);

/// The API on `engines` (keys in `keep`'s directory), with one hub enrolled in network `net`.
async fn setup(engines: Engines, keep: &Keep, ingest: crate::config::IngestLimits) -> Setup {
    setup_lived(engines, keep, ingest, outpost_shared::keys::session::DEFAULT_LIFETIME).await
}

/// [`setup`] with machine sessions that live `lifetime`.
async fn setup_lived(
    engines: Engines,
    keep: &Keep,
    ingest: crate::config::IngestLimits,
    lifetime: Duration,
) -> Setup {
    setup_trust(engines, keep, ingest, |t| t.with_session_lifetime(lifetime)).await
}

/// [`setup`] with the trust service changed by `adjust`.
async fn setup_trust(
    engines: Engines,
    keep: &Keep,
    ingest: crate::config::IngestLimits,
    adjust: impl FnOnce(Trust) -> Trust,
) -> Setup {
    let trust = adjust(Trust::open(keep.dir.path(), engines.trust.clone()).unwrap());
    let commands = Commands::new(engines.commands.clone());
    let config = CloudConfig { ingest, ..Default::default() };
    let hub = outpost_shared::keys::KeyPair::generate().unwrap();
    let now = chrono::Utc::now();
    let (token, _) = trust
        .new_token("net", outpost_shared::model::Role::Sensorhub, Duration::from_secs(60), "", "test", now)
        .await
        .unwrap();
    let req = crate::trust::EnrollRequest {
        token: Some(token.encode()),
        sealed_token: None,
        public_key: hub.public().to_pem(),
        role: outpost_shared::model::Role::Sensorhub,
        hostname: "h".into(),
        lan_cert: None,
    };
    trust.enroll(&req, now).await.unwrap();
    let people = crate::people::People::new(engines.people.clone(), config.people.clone()).unwrap();
    let silences = crate::silences::Silences::open(engines.silences.clone(), trust.clone()).await.unwrap();
    let state =
        AppState::new(engines.readings.clone(), "admin".into(), trust, commands, people, Arc::new(config))
            .with_silences(silences);
    Setup { app: router(state.clone()), state, hub }
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

async fn unsigned_and_unknown_senders_get_401_without_their_body_being_read_or_inflated(
    e: Engines,
    k: &Keep,
) {
    let s = setup(e, k, Default::default()).await;
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

async fn a_stale_timestamp_is_refused_before_the_body(e: Engines, k: &Keep) {
    let s = setup(e, k, Default::default()).await;
    let old = chrono::Utc::now() - chrono::Duration::hours(1);
    let sig = outpost_shared::keys::sign_request(&s.hub, "POST", "/v1/batches", b"{}", old).unwrap();
    let (body, read) = watched(bomb());
    let (status, _, e) = answer(&s.app, post("/v1/batches", body, &sig.to_pairs())).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(e.error.contains("clock"), "{}", e.error);
    assert!(!read.load(Ordering::SeqCst));
}

async fn oversized_bodies_get_413(e: Engines, k: &Keep) {
    let limits =
        crate::config::IngestLimits { max_body: 128 << 10, max_decompressed: 1 << 20, ..Default::default() };
    let s = setup(e, k, limits).await;
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

/// An upload by `key` whose body does not end until the sender is dropped: it holds an ingest
/// slot (or waits for one) meanwhile.
#[allow(clippy::type_complexity)]
fn held_upload(
    s: &Setup,
    key: &outpost_shared::keys::KeyPair,
) -> (
    tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    tokio::task::JoinHandle<Result<axum::response::Response, std::convert::Infallible>>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    let slow = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    (tx, tokio::spawn(s.app.clone().oneshot(post("/v1/batches", slow, &signed(key, "/v1/batches")))))
}

/// A busy intake's answer: retry later, and when.
fn assert_busy(headers: &axum::http::HeaderMap, e: &ApiError) {
    assert!(headers.get(header::RETRY_AFTER).is_some(), "{}", e.error);
    assert_eq!((e.verdict, e.code), (Some(Verdict::RetryLater), Some(RefusalCode::Busy)), "{}", e.error);
}

async fn ingest_beyond_its_slots_gets_503_retry_later_busy(e: Engines, k: &Keep) {
    let limits = crate::config::IngestLimits {
        max_in_flight: 1,
        max_inflating: 1,
        max_queued: 0,
        ..Default::default()
    };
    let s = setup(e, k, limits).await;
    // The first request holds the only slot with a body that never ends.
    let (tx, first) = held_upload(&s, &s.hub);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (body, _) = watched(b"{}".to_vec());
    let (status, headers, e) =
        answer(&s.app, post("/v1/batches", body, &signed(&s.hub, "/v1/batches"))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_busy(&headers, &e);
    drop(tx);
    let _ = first.await;
    // The slot is free again: the next request gets past admission (and fails later, as `{}`
    // is no gzip).
    let (body, _) = watched(b"{}".to_vec());
    let (status, _, _) = answer(&s.app, post("/v1/batches", body, &signed(&s.hub, "/v1/batches"))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

/// With every slot taken, a request waits its turn in the queue (its body unread) rather than
/// being turned away, first come first served; beyond the queue's places, or once its wait is
/// over, the answer is 503 + Retry-After, busy.
async fn ingest_beyond_its_slots_waits_in_a_bounded_queue_for_a_bounded_time(e: Engines, k: &Keep) {
    let limits = crate::config::IngestLimits {
        max_in_flight: 1,
        max_inflating: 1,
        max_queued: 1,
        queue_wait: Duration::from_secs(2),
        ..Default::default()
    };
    let s = setup(e, k, limits).await;
    // The first request holds the only slot with a body that does not end until told.
    let (tx, first) = held_upload(&s, &s.hub);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The second waits in the queue, its body not read.
    let (body, read) = watched(b"{}".to_vec());
    let (app, req) = (s.app.clone(), post("/v1/batches", body, &signed(&s.hub, "/v1/batches")));
    let second = tokio::spawn(async move { answer(&app, req).await.0 });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!second.is_finished(), "the queued request was answered at once");
    assert!(!read.load(Ordering::SeqCst), "a queued request's body was read");
    // The third finds the queue full: refused at once.
    let (body, _) = watched(b"{}".to_vec());
    let asked = std::time::Instant::now();
    let (status, headers, e) =
        answer(&s.app, post("/v1/batches", body, &signed(&s.hub, "/v1/batches"))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{}", e.error);
    assert!(asked.elapsed() < Duration::from_secs(1), "a request beyond the queue waited");
    assert_busy(&headers, &e);
    // The slot frees: the queued one gets it and past admission (400, as `{}` is no gzip).
    drop(tx);
    let _ = first.await;
    assert_eq!(second.await.unwrap(), StatusCode::BAD_REQUEST);

    // A queued request whose wait runs out is told to retry later.
    let (tx, first) = held_upload(&s, &s.hub);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (body, read) = watched(b"{}".to_vec());
    let asked = std::time::Instant::now();
    let (status, _, e) = answer(&s.app, post("/v1/batches", body, &signed(&s.hub, "/v1/batches"))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{}", e.error);
    assert_eq!(e.code, Some(RefusalCode::Busy));
    assert!(asked.elapsed() >= Duration::from_secs(2), "gave up before its wait was over");
    assert!(!read.load(Ordering::SeqCst), "the refused request's body was read");
    drop(tx);
    let _ = first.await;
}

/// Whoever names an enrolled machine gets as far as the queue before anything proves the claim:
/// one machine's requests beyond a few are refused at once, and another machine still finds
/// its place.
async fn one_claimed_machine_cannot_take_every_place_in_the_queue(e: Engines, k: &Keep) {
    let limits = crate::config::IngestLimits {
        max_in_flight: 1,
        max_inflating: 1,
        max_queued: 16,
        queue_wait: Duration::from_secs(5),
        ..Default::default()
    };
    let s = setup(e, k, limits).await;
    let other = enroll_in(&s, "net", outpost_shared::model::Role::Sensorhub, "other").await;
    // One request of the claimed machine holds the slot, its body never ending; three wait.
    let mut held = Vec::new();
    let mut waiting = Vec::new();
    for i in 0..4 {
        let (tx, task) = held_upload(&s, &s.hub);
        held.push(tx);
        waiting.push(task);
        if i == 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(waiting.iter().all(|t| !t.is_finished()), "a request within the machine's share was answered");
    // The fifth of the same machine: refused at once, though the queue has room.
    let (body, read) = watched(b"{}".to_vec());
    let asked = std::time::Instant::now();
    let (status, headers, e) =
        answer(&s.app, post("/v1/batches", body, &signed(&s.hub, "/v1/batches"))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{}", e.error);
    assert!(asked.elapsed() < Duration::from_secs(1), "the machine's fifth request waited");
    assert_busy(&headers, &e);
    assert!(!read.load(Ordering::SeqCst));
    // Another machine waits its turn in the queue and gets in once the slot frees.
    let (body, _) = watched(b"{}".to_vec());
    let (app, req) = (s.app.clone(), post("/v1/batches", body, &signed(&other, "/v1/batches")));
    let theirs = tokio::spawn(async move { answer(&app, req).await.0 });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!theirs.is_finished(), "the other machine was turned away");
    drop(held);
    assert_eq!(theirs.await.unwrap(), StatusCode::BAD_REQUEST, "past admission (`{{}}` is no gzip)");
    for t in waiting {
        let _ = t.await;
    }
    // Its requests answered, the machine has its whole share again.
    let (body, _) = watched(b"{}".to_vec());
    let (status, _, _) = answer(&s.app, post("/v1/batches", body, &signed(&s.hub, "/v1/batches"))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

/// A [`crate::store::ReadingStore`] whose commits wait until the test opens them: batches
/// written and waiting for their flush, as on a slow disk.
struct HeldCommits {
    inner: crate::store::Store,
    open: tokio::sync::watch::Receiver<bool>,
    waiting: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl crate::store::ReadingStore for HeldCommits {
    async fn ingest(
        &self,
        batch: outpost_shared::model::Batch,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<crate::store::IngestOutcome, crate::error::CloudError> {
        self.inner.ingest(batch, now).await
    }
    async fn commit(&self) -> Result<(), crate::error::CloudError> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _ = self.open.clone().wait_for(|open| *open).await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        self.inner.commit().await
    }
    async fn note_relay_quarantine(
        &self,
        connector: &str,
        counts: &[(String, u64)],
    ) -> Result<(), crate::error::CloudError> {
        self.inner.note_relay_quarantine(connector, counts).await
    }
    async fn machines(&self) -> Result<Vec<outpost_shared::model::MachineInfo>, crate::error::CloudError> {
        self.inner.machines().await
    }
    async fn machine(
        &self,
        id: &str,
    ) -> Result<Option<outpost_shared::model::MachineInfo>, crate::error::CloudError> {
        self.inner.machine(id).await
    }
    async fn sensors(
        &self,
        machine: &str,
    ) -> Result<Vec<outpost_shared::model::SensorLatest>, crate::error::CloudError> {
        self.inner.sensors(machine).await
    }
    async fn readings(
        &self,
        machine: &str,
        sensor: &str,
        since: Option<chrono::DateTime<chrono::Utc>>,
        limit: usize,
    ) -> Result<Vec<outpost_shared::model::ReadingPoint>, crate::error::CloudError> {
        self.inner.readings(machine, sensor, since, limit).await
    }
    async fn period(
        &self,
        machine: &str,
        from: chrono::DateTime<chrono::Utc>,
        until: chrono::DateTime<chrono::Utc>,
        limit: usize,
    ) -> Result<Vec<crate::store::PeriodReading>, crate::error::CloudError> {
        self.inner.period(machine, from, until, limit).await
    }
    async fn hourly(
        &self,
        machine: &str,
        sensor: &str,
        since: Option<chrono::DateTime<chrono::Utc>>,
        limit: usize,
    ) -> Result<Vec<outpost_shared::model::HourlyPoint>, crate::error::CloudError> {
        self.inner.hourly(machine, sensor, since, limit).await
    }
    async fn compact(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        raw: Duration,
        hourly: Duration,
    ) -> Result<crate::store::CompactOutcome, crate::error::CloudError> {
        self.inner.compact(now, raw, hourly).await
    }
    async fn note_unattached(
        &self,
        hubs: &[outpost_shared::model::UnattachedHub],
    ) -> Result<(), crate::error::CloudError> {
        self.inner.note_unattached(hubs).await
    }
    async fn unattached(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<outpost_shared::model::UnattachedHub>, crate::error::CloudError> {
        self.inner.unattached(now).await
    }
    async fn raw_count(&self) -> Result<u64, crate::error::CloudError> {
        self.inner.raw_count().await
    }
}

/// A batch that is written and only waits for its flush gives its admission slot back, so a slow
/// flush does not turn the next sender away; four times the slots may wait so, and beyond that a
/// written batch keeps its slot and the intake says "retry later". Nothing is answered before
/// its flush, and every batch is then acknowledged.
async fn a_batch_waiting_for_its_flush_holds_no_admission_slot(mut e: Engines, k: &Keep) {
    let (open, closed) = tokio::sync::watch::channel(false);
    let held = Arc::new(HeldCommits { inner: e.readings.clone(), open: closed, waiting: Default::default() });
    e.readings = held.clone();
    let limits = crate::config::IngestLimits {
        max_in_flight: 1,
        max_inflating: 1,
        max_queued: 0,
        ..Default::default()
    };
    let s = setup(e, k, limits).await;
    // Batch n carries seqs 1..=n, so the n-th written one makes n readings stored.
    let mut sent = Vec::new();
    for n in 1..=5u64 {
        let app = s.app.clone();
        let req = batch_request(&s.hub, n);
        let task = tokio::spawn(async move { ack(&app, req).await });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while held.inner.raw_count().await.unwrap() < n {
            if task.is_finished() {
                let (status, _, body) = task.await.unwrap();
                panic!("batch {n} was answered {status} while the others waited for their flush: {body}");
            }
            assert!(tokio::time::Instant::now() < deadline, "batch {n} was never written");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        sent.push(task);
    }
    // Four wait for their flush; the fifth, written, still holds the only slot.
    assert_eq!(held.waiting.load(Ordering::SeqCst), 4);
    let (status, headers, body) = ack(&s.app, batch_request(&s.hub, 6)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(headers.get(header::RETRY_AFTER).is_some());
    assert_eq!(body["code"], "busy", "{body}");
    assert!(sent.iter().all(|t| !t.is_finished()), "acknowledged before the flush");

    open.send(true).unwrap();
    for (n, task) in sent.into_iter().enumerate() {
        let (status, _, body) = task.await.unwrap();
        assert_eq!(status, StatusCode::OK, "batch {}: {body}", n + 1);
        assert_eq!(body["stored"].as_u64(), Some(1), "batch {}: {body}", n + 1);
    }
    let (status, _, body) = ack(&s.app, batch_request(&s.hub, 6)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["stored"].as_u64(), Some(1), "{body}");
}

/// `GET /v1/machines` names the network a machine is enrolled in and the connector it reports
/// through, and marks a revoked machine, so the dashboard can group, name and flag them.
async fn the_machine_list_says_network_connector_name_and_revocation(e: Engines, k: &Keep) {
    let s = setup(e, k, Default::default()).await;
    let now = chrono::Utc::now();
    // A connector of the same network, enrolled by name.
    let connector = enroll_in(&s, "net", outpost_shared::model::Role::Connector, "gateway-7").await;
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
        features: Vec::new(),
        readings: vec![],
    };
    s.state.store.ingest(batch, now).await.unwrap();

    let row = machine_row(&s.app, &hub).await;
    assert_eq!(row["network"], "net");
    assert_eq!(row["revoked"], false);
    assert_eq!(row["uplink_name"], "gateway-7");
    assert_eq!(row["hostname"], "h", "the stored fields are still there");

    s.state.trust.revoke(&hub, now).await.unwrap();
    let row = machine_row(&s.app, &hub).await;
    assert_eq!(row["revoked"], true);
    assert!(row["network"].is_null());
}

/// The row of machine `id` in `GET /v1/machines`, as the admin sees it.
async fn machine_row(app: &Router, id: &str) -> serde_json::Value {
    let req = Request::get("/v1/machines")
        .header(header::AUTHORIZATION, "Bearer admin")
        .extension(ConnectInfo(std::net::SocketAddr::from(([127, 0, 0, 1], 4000))))
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
    batch_request_with(hub, n, &[])
}

/// As [`batch_request`], from an agent that lists `features`.
fn batch_request_with(hub: &outpost_shared::keys::KeyPair, n: u64, features: &[&str]) -> Request<Body> {
    let now = chrono::Utc::now();
    let json = batch_json_with(hub, n, features);
    // The signature covers what the batch says, not its encoding on the wire.
    let sig = outpost_shared::keys::sign_request(hub, "POST", "/v1/batches", &json, now).unwrap();
    post("/v1/batches", Body::from(gzip(&json)), &sig.to_pairs())
}

fn gzip(json: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(json).unwrap();
    enc.finish().unwrap()
}

/// A batch of readings 1..=n of `hub`, as JSON.
fn batch_json(hub: &outpost_shared::keys::KeyPair, n: u64) -> Vec<u8> {
    batch_json_with(hub, n, &[])
}

fn batch_json_with(hub: &outpost_shared::keys::KeyPair, n: u64, features: &[&str]) -> Vec<u8> {
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
        features: features.iter().map(|f| f.to_string()).collect(),
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
    serde_json::to_vec(&batch).unwrap()
}

async fn ack(app: &Router, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
    let r = tokio::time::timeout(Duration::from_secs(30), app.clone().oneshot(req)).await.unwrap().unwrap();
    let (parts, body) = r.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    (parts.status, parts.headers, serde_json::from_slice(&bytes).unwrap_or_default())
}

/// Stored, then a duplicate on resend, then readable: the same answers from every engine.
async fn a_batch_is_acknowledged_once_and_then_as_duplicates(e: Engines, k: &Keep) {
    let s = setup(e, k, Default::default()).await;
    let (status, _, body) = ack(&s.app, batch_request(&s.hub, 50)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((body["stored"].as_u64(), body["duplicates"].as_u64()), (Some(50), Some(0)), "{body}");
    let (status, _, body) = ack(&s.app, batch_request(&s.hub, 60)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((body["stored"].as_u64(), body["duplicates"].as_u64()), (Some(10), Some(50)), "{body}");
    let id = s.hub.machine_id().to_string();
    let r = Request::get(format!("/v1/machines/{id}/readings?sensor=cpu&limit=1000"))
        .header(header::AUTHORIZATION, "Bearer admin")
        .extension(ConnectInfo(std::net::SocketAddr::from(([127, 0, 0, 1], 4000))))
        .body(Body::empty())
        .unwrap();
    let (status, _, body) = ack(&s.app, r).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body.as_array().map(|a| a.len()), Some(60), "{body}");
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
    let keep = Keep { dir: tempfile::tempdir().unwrap(), stored_in: Vec::new() };
    let s = setup(Engines::on_postgres(pg), &keep, Default::default()).await;
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
    // Everything else the cloud keeps is on the database too: people and machines alike are
    // told to retry later, never that they are unknown or that something is gone.
    let token = Request::post("/v1/enrollment-tokens")
        .header(header::AUTHORIZATION, "Bearer admin")
        .extension(ConnectInfo(std::net::SocketAddr::from(([127, 0, 0, 1], 4000))))
        .body(Body::empty())
        .unwrap();
    let (status, headers, body) = ack(&s.app, token).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(headers.get(header::RETRY_AFTER).is_some());
    let sig = outpost_shared::keys::sign_request(
        &s.hub,
        "GET",
        "/v1/commands/poll?wait=0",
        b"",
        chrono::Utc::now(),
    )
    .unwrap();
    let mut poll = Request::get("/v1/commands/poll?wait=0");
    for (k, v) in sig.to_pairs() {
        poll = poll.header(k, v);
    }
    let (status, headers, body) = ack(&s.app, poll.body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "a known hub is not told it is unknown: {body}");
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
async fn enroll_in(
    s: &Setup,
    network: &str,
    role: outpost_shared::model::Role,
    hostname: &str,
) -> outpost_shared::keys::KeyPair {
    let key = outpost_shared::keys::KeyPair::generate().unwrap();
    let now = chrono::Utc::now();
    let (token, _) =
        s.state.trust.new_token(network, role, Duration::from_secs(60), "", "test", now).await.unwrap();
    let lan_cert = (role == outpost_shared::model::Role::Connector).then(|| "0".repeat(64));
    let req = crate::trust::EnrollRequest {
        token: Some(token.encode()),
        sealed_token: None,
        public_key: key.public().to_pem(),
        role,
        hostname: hostname.into(),
        lan_cert,
    };
    s.state.trust.enroll(&req, now).await.unwrap();
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
async fn poll_many_serves_a_connector_only_its_own_networks_hubs(e: Engines, k: &Keep) {
    use outpost_shared::model::Role;
    let s = setup(e, k, Default::default()).await;
    let connector = enroll_in(&s, "net", Role::Connector, "gw").await;
    let foreign = enroll_in(&s, "other", Role::Sensorhub, "far").await;
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

/// An admin request with a JSON body (or none), answered as JSON.
async fn admin(
    s: &Setup,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (StatusCode, serde_json::Value) {
    let r = Request::builder()
        .method(method)
        .uri(path)
        .header(header::AUTHORIZATION, "Bearer admin")
        .header(header::CONTENT_TYPE, "application/json")
        .extension(ConnectInfo(std::net::SocketAddr::from(([127, 0, 0, 1], 4000))));
    let r = match body {
        Some(b) => r.body(Body::from(serde_json::to_vec(&b).unwrap())).unwrap(),
        None => r.body(Body::empty()).unwrap(),
    };
    let (status, _, v) = ack(&s.app, r).await;
    (status, v)
}

/// A machine request signed by `key` (POST with `body`, or GET), answered as JSON.
async fn machine(
    s: &Setup,
    key: &outpost_shared::keys::KeyPair,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> (StatusCode, serde_json::Value) {
    let sig = outpost_shared::keys::sign_request(key, method, path, &body, chrono::Utc::now()).unwrap();
    let mut r = Request::builder().method(method).uri(path).header(header::CONTENT_TYPE, "application/json");
    for (k, v) in sig.to_pairs() {
        r = r.header(k, v);
    }
    let mut r = r.body(Body::from(body)).unwrap();
    r.extensions_mut().insert(ConnectInfo(std::net::SocketAddr::from(([127, 0, 0, 1], 4000))));
    let (status, _, v) = ack(&s.app, r).await;
    (status, v)
}

/// A token enrolls one machine in its role once; the same machine asking again gets its receipt;
/// another machine, a wrong role, a forged key or a cancelled token get nothing; all of it is in
/// the audit trail.
async fn enrollment_tokens_are_one_time_bound_to_a_role_and_audited(e: Engines, k: &Keep) {
    let s = setup(e, k, Default::default()).await;
    let (status, t) = admin(
        &s,
        "POST",
        "/v1/enrollment-tokens",
        Some(serde_json::json!({"network": "plant", "label": "pump"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{t}");
    let token = t["token"].as_str().unwrap().to_string();
    let enroll = |key: &outpost_shared::keys::KeyPair, role: &str| serde_json::json!({"token": token, "public_key": key.public().to_pem(), "role": role, "hostname": "pump-3"});
    let post_enroll = |body: serde_json::Value| {
        let mut r = Request::post("/v1/enroll")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap();
        r.extensions_mut().insert(ConnectInfo(std::net::SocketAddr::from(([127, 0, 0, 1], 4001))));
        r
    };
    let key = outpost_shared::keys::KeyPair::generate().unwrap();
    let (status, _, v) = ack(&s.app, post_enroll(enroll(&key, "connector"))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a hub token makes no connector: {v}");
    let (status, _, v) = ack(&s.app, post_enroll(enroll(&key, "sensorhub"))).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (status, _, again) = ack(&s.app, post_enroll(enroll(&key, "sensorhub"))).await;
    assert_eq!(status, StatusCode::OK, "the same machine gets its receipt again: {again}");
    let other = outpost_shared::keys::KeyPair::generate().unwrap();
    let (status, _, v) = ack(&s.app, post_enroll(enroll(&other, "sensorhub"))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "used: {v}");
    assert!(v["error"].as_str().unwrap().contains("already used"), "{v}");
    let (status, _, v) = ack(&s.app, post_enroll(serde_json::json!({"token": token, "public_key": "not a key", "role": "sensorhub", "hostname": "x"}))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    // Cancel an open one: it leaves the list and enrolls nobody.
    let (_, t2) =
        admin(&s, "POST", "/v1/enrollment-tokens", Some(serde_json::json!({"network": "plant"}))).await;
    let (_, list) = admin(&s, "GET", "/v1/enrollment-tokens", None).await;
    assert_eq!(list.as_array().unwrap().len(), 1, "only the open one: {list}");
    let id = t2["id"].as_str().unwrap();
    assert_eq!(admin(&s, "DELETE", &format!("/v1/enrollment-tokens/{id}"), None).await.0, StatusCode::OK);
    assert_eq!(
        admin(&s, "DELETE", &format!("/v1/enrollment-tokens/{id}"), None).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        admin(&s, "DELETE", "/v1/enrollment-tokens/zz%27%3B%20DROP%20TABLE%20x", None).await.0,
        StatusCode::NOT_FOUND
    );
    let (_, audit) = admin(&s, "GET", "/v1/audit", None).await;
    let actions: Vec<&str> =
        audit.as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, vec!["token-cancelled", "token-created", "enroll", "token-created"], "{audit}");
    // Without the admin token: nothing.
    let r = Request::get("/v1/audit").body(Body::empty()).unwrap();
    assert_eq!(ack(&s.app, r).await.0, StatusCode::UNAUTHORIZED);
}

/// A command is signed by the cloud, handed to its machine only, answered with a signed result
/// bound to its envelope, and every step is audited; a revoked machine gets nothing more.
async fn a_command_goes_out_signed_comes_back_signed_and_is_audited(e: Engines, k: &Keep) {
    use outpost_shared::keys::{CommandEnvelope, CommandResult, CommandStatus, Signed};
    let s = setup(e, k, Default::default()).await;
    let id = s.hub.machine_id().to_string();
    let (status, v) = admin(
        &s,
        "POST",
        &format!("/v1/machines/{id}/commands"),
        Some(serde_json::json!({"action": "format-disk"})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "unknown actions are not signed: {v}");
    let (status, v) = admin(
        &s,
        "POST",
        &format!("/v1/machines/{}/commands", "0".repeat(32)),
        Some(serde_json::json!({"action": "ping"})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    let (status, v) =
        admin(&s, "POST", &format!("/v1/machines/{id}/relays/1/2"), Some(serde_json::json!({"on": true})))
            .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let command_id = v["command_id"].as_str().unwrap().to_string();
    // Another machine polling gets nothing of it.
    let stranger = enroll_in(&s, "net", outpost_shared::model::Role::Sensorhub, "other").await;
    let (status, v) = machine(&s, &stranger, "GET", "/v1/commands/poll?wait=0", vec![]).await;
    assert_eq!((status, v.as_array().map(|a| a.len())), (StatusCode::OK, Some(0)), "{v}");
    let (status, v) = machine(&s, &s.hub, "GET", "/v1/commands/poll?wait=0", vec![]).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let envelopes: Vec<Signed<CommandEnvelope>> = serde_json::from_value(v).unwrap();
    assert_eq!(envelopes.len(), 1);
    let env = envelopes[0].verify(s.state.trust.key().public()).expect("signed by the cloud key");
    assert_eq!((env.id.as_str(), env.action.as_str()), (command_id.as_str(), "relay.set"));
    let result = CommandResult {
        command_id: command_id.clone(),
        machine_id: s.hub.machine_id().clone(),
        status: CommandStatus::Done,
        output: serde_json::json!({"state": 2}),
        finished_at: chrono::Utc::now(),
        envelope: Some(envelopes[0].digest()),
    };
    // The stranger cannot answer for the hub.
    let forged = serde_json::to_vec(&Signed::sign(&stranger, &result).unwrap()).unwrap();
    assert_eq!(
        machine(&s, &stranger, "POST", "/v1/commands/result", forged).await.0,
        StatusCode::BAD_REQUEST
    );
    // Someone waiting for the outcome: told when the wait is over, then at once when it ends.
    let status_path = format!("/v1/commands/{command_id}");
    let (_, v) = admin(&s, "GET", &format!("{status_path}?wait=1"), None).await;
    assert_eq!(v["status"], "delivered", "{v}");
    let body = serde_json::to_vec(&Signed::sign(&s.hub, &result).unwrap()).unwrap();
    let long_wait = format!("{status_path}?wait=30");
    let waited = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::join!(admin(&s, "GET", &long_wait, None), async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            machine(&s, &s.hub, "POST", "/v1/commands/result", body).await
        })
    })
    .await
    .expect("the wait ends when the result arrives, not after its 30 s");
    let ((_, v), (status, answered)) = waited;
    assert_eq!((status, answered["status"].as_str()), (StatusCode::OK, Some("done")), "{answered}");
    assert_eq!(v["status"], "done", "{v}");
    let (status, v) = admin(&s, "GET", &format!("{status_path}?wait=31&then=1"), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "unknown parameters are refused: {v}");
    let (_, audit) = admin(&s, "GET", &format!("/v1/audit?machine={id}"), None).await;
    let events: Vec<&str> = audit.as_array().unwrap().iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(events, vec!["done", "delivered", "created"], "{audit}");
    // Revoked: refused, and said so.
    assert_eq!(admin(&s, "DELETE", &format!("/v1/machines/{id}"), None).await.0, StatusCode::OK);
    let (status, v) = machine(&s, &s.hub, "GET", "/v1/commands/poll?wait=0", vec![]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{v}");
    assert!(v["error"].as_str().unwrap().contains("revoked"), "{v}");
}

/// Issues a `ping` to the set-up hub and polls as that hub: the command's id and its envelope.
async fn issue_ping_and_poll(
    s: &Setup,
) -> (String, outpost_shared::keys::Signed<outpost_shared::keys::CommandEnvelope>) {
    let id = s.hub.machine_id().to_string();
    let (status, v) =
        admin(s, "POST", &format!("/v1/machines/{id}/commands"), Some(serde_json::json!({"action": "ping"})))
            .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let command_id = v["command_id"].as_str().unwrap().to_string();
    let (status, v) = machine(s, &s.hub, "GET", "/v1/commands/poll?wait=0", vec![]).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let envelopes: Vec<outpost_shared::keys::Signed<outpost_shared::keys::CommandEnvelope>> =
        serde_json::from_value(v).unwrap();
    let envelope =
        envelopes.into_iter().find(|e| e.peek_unverified().unwrap().id == command_id).expect("handed out");
    (command_id, envelope)
}

/// A hub whose latest batch lists the feature gets commands signed with the cloud's certified
/// Ed25519 key; one that does not (an earlier agent, or the same hub downgraded) gets RSA ones.
async fn commands_are_signed_with_the_command_key_only_for_machines_that_check_it(e: Engines, k: &Keep) {
    use outpost_shared::keys::{command_key, CommandVerifier, DocumentError};
    let s = setup(e, k, Default::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let hub_side = CommandVerifier::open(
        s.state.trust.key().public().clone(),
        s.hub.machine_id().clone(),
        &dir.path().join("commands.log"),
        chrono::Utc::now(),
    )
    .unwrap();
    let (status, _, body) =
        ack(&s.app, batch_request_with(&s.hub, 1, &[command_key::FEATURE, "later-thing"])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let fast = issue_ping_and_poll(&s).await.1;
    assert!(fast.signing_key.is_some(), "signed with the command key");
    assert!(matches!(fast.verify(s.state.trust.key().public()), Err(DocumentError::Malformed(_))));
    assert_eq!(hub_side.verify(&fast, chrono::Utc::now()).unwrap().action, "ping");

    let (status, _, body) = ack(&s.app, batch_request(&s.hub, 2)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let rsa = issue_ping_and_poll(&s).await.1;
    assert!(rsa.signing_key.is_none());
    rsa.verify(s.state.trust.key().public()).expect("signed by the cloud's RSA key");
    assert_eq!(hub_side.verify(&rsa, chrono::Utc::now()).unwrap().action, "ping");

    // A batch naming more features than the cloud keeps is refused whole, and says why.
    let many: Vec<String> = (0..17).map(|i| format!("f{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let (status, _, body) = ack(&s.app, batch_request_with(&s.hub, 3, &many)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.to_string().contains("features"), "{body}");
}

/// A connector asks for a relay command by mail only for senders the cloud granted it, and only
/// for machines of its own network.
async fn mail_commands_need_the_clouds_grant(e: Engines, k: &Keep) {
    use outpost_shared::model::Role;
    let s = setup(e, k, Default::default()).await;
    let connector = enroll_in(&s, "net", Role::Connector, "gw").await;
    let far = enroll_in(&s, "other", Role::Sensorhub, "far").await;
    let cid = connector.machine_id().to_string();
    let ask = |machine_id: String, sender: &str| {
        serde_json::to_vec(
            &serde_json::json!({"machine": machine_id, "card": 1, "relay": 1, "on": true, "sender": sender}),
        )
        .unwrap()
    };
    let hub = s.hub.machine_id().to_string();
    let (status, v) =
        machine(&s, &connector, "POST", "/v1/mail-commands", ask(hub.clone(), "ops@example.org")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "no grant yet: {v}");
    let hub_id = hub.clone();
    let (status, v) = admin(
        &s,
        "PUT",
        &format!("/v1/machines/{hub_id}/mail-commands"),
        Some(serde_json::json!({"senders": ["ops@example.org"]})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a hub gets no grant: {v}");
    let (status, v) = admin(
        &s,
        "PUT",
        &format!("/v1/machines/{cid}/mail-commands"),
        Some(serde_json::json!({"senders": ["Ops@Example.org"]})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (status, v) =
        machine(&s, &connector, "POST", "/v1/mail-commands", ask(hub.clone(), "eve@example.org")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "not a granted sender: {v}");
    let (status, v) = machine(
        &s,
        &connector,
        "POST",
        "/v1/mail-commands",
        ask(far.machine_id().to_string(), "ops@example.org"),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "another network's machine: {v}");
    let (status, v) =
        machine(&s, &connector, "POST", "/v1/mail-commands", ask(hub.clone(), "ops@example.org")).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let path = format!("/v1/mail-commands/{}", v["command_id"].as_str().unwrap());
    let (status, v) = machine(&s, &connector, "GET", &path, vec![]).await;
    assert_eq!((status, v["status"].as_str()), (StatusCode::OK, Some("pending")), "{v}");
    assert_eq!(
        admin(&s, "DELETE", &format!("/v1/machines/{cid}/mail-commands"), None).await.0,
        StatusCode::OK
    );
    let (status, _) = machine(&s, &connector, "POST", "/v1/mail-commands", ask(hub, "ops@example.org")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "withdrawn");
    let (_, audit) = admin(&s, "GET", "/v1/audit", None).await;
    let refused = audit.as_array().unwrap().iter().filter(|e| e["event"] == "refused").count();
    assert_eq!(refused, 3, "every refusal is audited: {audit}");
}

/// An admin GET of `path`, its status and JSON body.
async fn admin_get(app: &Router, path: &str) -> (StatusCode, serde_json::Value) {
    let req = Request::get(path)
        .header(header::AUTHORIZATION, "Bearer admin")
        .extension(ConnectInfo(std::net::SocketAddr::from(([127, 0, 0, 1], 4000))))
        .body(Body::empty())
        .unwrap();
    let (status, _, body) = ack(app, req).await;
    (status, body)
}

/// The chart's series over the retention boundary: what retention folded comes as hourly points,
/// what it left as raw readings, one continuous series with no reading shown twice; points
/// outside the range are not sent.
async fn a_series_joins_hourly_aggregates_to_raw_readings_without_gap_or_overlap(e: Engines, k: &Keep) {
    let s = setup(e, k, Default::default()).await;
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
        features: Vec::new(),
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
    // An hour's point sits at the hour's start; the first raw reading after it may come one
    // reading interval (10 min here) after the hour's end.
    assert!(ts.windows(2).all(|w| w[1] - w[0] <= 3600 + 600), "no gap at the boundary: {ts:?}");
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

// ---- machine sessions ----

use outpost_shared::keys::session::{self as msession, OpenAnswer, SessionKey};

/// The challenge answer of the API, and the Ed25519 key its certificate, checked against `cloud`,
/// names.
async fn session_challenge(
    app: &Router,
    cloud: &outpost_shared::keys::PublicKey,
) -> (msession::ChallengeAnswer, [u8; 32]) {
    let r = Request::get("/v1/machine-session/challenge")
        .extension(ConnectInfo(std::net::SocketAddr::from(([127, 0, 0, 1], 4000))))
        .body(Body::empty())
        .unwrap();
    let (status, _, body) = ack(app, r).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let answer: msession::ChallengeAnswer = serde_json::from_value(body).unwrap();
    let cert = answer.exchange_key.as_ref().expect("the cloud offers an X25519 login");
    let key = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        cert.verify(cloud).unwrap().ed25519,
    )
    .unwrap();
    (answer, key.try_into().unwrap())
}

/// Opens a session for `hub` over the API, as a machine does (an X25519 login).
async fn open_session(
    app: &Router,
    hub: &outpost_shared::keys::KeyPair,
    cloud: &outpost_shared::keys::PublicKey,
) -> (OpenAnswer, SessionKey) {
    let (challenge, exchange_key) = session_challenge(app, cloud).await;
    let (req, pending) = msession::open_request_x25519(hub, &challenge.challenge).unwrap();
    let (status, _, body) = ack(app, open_post(&req)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let answer: OpenAnswer = serde_json::from_value(body).unwrap();
    let key = msession::finish_open_x25519(pending, &answer, &exchange_key).unwrap();
    (answer, key)
}

fn open_post(req: &msession::OpenRequest) -> Request<Body> {
    let mut r = Request::post("/v1/machine-session")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(serde_json::to_vec(req).unwrap()))
        .unwrap();
    r.extensions_mut().insert(ConnectInfo(std::net::SocketAddr::from(([127, 0, 0, 1], 4000))));
    r
}

/// The session headers of a `POST path` with `json` in `hub`'s session `t`, sequence `seq`.
fn session_post_headers(
    hub: &outpost_shared::keys::KeyPair,
    t: &OpenAnswer,
    key: &SessionKey,
    seq: u64,
    path: &str,
    json: &[u8],
) -> msession::SessionHeaders {
    msession::mac_request(
        key,
        hub.machine_id(),
        &t.ticket,
        seq,
        "POST",
        path,
        json,
        chrono::Utc::now().timestamp(),
    )
}

/// A batch request in a session, with sequence number `seq`.
fn session_batch(
    hub: &outpost_shared::keys::KeyPair,
    t: &OpenAnswer,
    key: &SessionKey,
    seq: u64,
    json: &[u8],
) -> Request<Body> {
    let h = session_post_headers(hub, t, key, seq, "/v1/batches", json);
    post("/v1/batches", Body::from(gzip(json)), &h.to_pairs())
}

async fn raw(app: &Router, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let r = tokio::time::timeout(Duration::from_secs(30), app.clone().oneshot(req)).await.unwrap().unwrap();
    let (parts, body) = r.into_parts();
    (parts.status, parts.headers, axum::body::to_bytes(body, 1 << 20).await.unwrap().to_vec())
}

fn verdict(body: &[u8]) -> (Option<Verdict>, Option<RefusalCode>) {
    let e: ApiError = serde_json::from_slice(body).unwrap();
    (e.verdict, e.code)
}

async fn readings_stored(app: &Router, id: &str) -> usize {
    let r = Request::get(format!("/v1/machines/{id}/readings?sensor=cpu&limit=1000"))
        .header(header::AUTHORIZATION, "Bearer admin")
        .extension(ConnectInfo(std::net::SocketAddr::from(([127, 0, 0, 1], 4000))))
        .body(Body::empty())
        .unwrap();
    let (status, _, body) = ack(app, r).await;
    if status == StatusCode::NOT_FOUND {
        return 0; // never sent anything
    }
    assert_eq!(status, StatusCode::OK, "{body}");
    body.as_array().map(|a| a.len()).unwrap()
}

async fn a_session_carries_batches_once_and_refuses_replays_and_forgeries(e: Engines, k: &Keep) {
    let s = setup(e, k, Default::default()).await;
    let cloud = s.state.trust.key().public().clone();
    let (t, key) = open_session(&s.app, &s.hub, &cloud).await;
    let json = batch_json(&s.hub, 20);

    // A batch with a MAC is stored, and the acknowledgement carries the cloud's MAC over it.
    let (status, headers, body) = raw(&s.app, session_batch(&s.hub, &t, &key, 1, &json)).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let mac = headers.get(msession::HEADER_ANSWER_MAC).and_then(|v| v.to_str().ok());
    assert!(msession::check_answer(&key, 1, 200, &body, mac), "the acknowledgement is authenticated");
    assert!(!msession::check_answer(&key, 2, 200, &body, mac), "and bound to its request");

    // The same request again: a replay, refused with a verdict that keeps data.
    let (status, _, body) = raw(&s.app, session_batch(&s.hub, &t, &key, 1, &json)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{}", String::from_utf8_lossy(&body));
    assert_eq!(verdict(&body).0, Some(Verdict::RetryLater));

    // Without a MAC, or with a MAC under another key: forged.
    let mut no_mac = msession::mac_request(
        &key,
        s.hub.machine_id(),
        &t.ticket,
        2,
        "POST",
        "/v1/batches",
        &json,
        chrono::Utc::now().timestamp(),
    )
    .to_pairs()
    .to_vec();
    no_mac.retain(|(n, _)| *n != msession::HEADER_MAC);
    let (status, _, body) = raw(&s.app, post("/v1/batches", Body::from(gzip(&json)), &no_mac)).await;
    assert_eq!(
        (status, verdict(&body)),
        (StatusCode::UNAUTHORIZED, (Some(Verdict::Refused), Some(RefusalCode::Forged)))
    );
    let stranger = SessionKey::generate().unwrap();
    let (status, _, body) = raw(&s.app, session_batch(&s.hub, &t, &stranger, 3, &json)).await;
    assert_eq!(
        (status, verdict(&body)),
        (StatusCode::UNAUTHORIZED, (Some(Verdict::Refused), Some(RefusalCode::Forged)))
    );
    // Someone else's batch in this hub's session: the MAC checks, the batch does not.
    let other = outpost_shared::keys::KeyPair::generate().unwrap();
    let (status, _, body) = raw(&s.app, session_batch(&s.hub, &t, &key, 4, &batch_json(&other, 1))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{}", String::from_utf8_lossy(&body));
    // A forged MAC did not move the replay window: seq 3 is still new for the real key.
    let (status, _, body) = raw(&s.app, session_batch(&s.hub, &t, &key, 3, &batch_json(&s.hub, 25))).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let ackd: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((ackd["stored"].as_u64(), ackd["duplicates"].as_u64()), (Some(5), Some(20)));
    // Reordered within the window: taken once.
    let (status, _, _) = raw(&s.app, session_batch(&s.hub, &t, &key, 2, &json)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = raw(&s.app, session_batch(&s.hub, &t, &key, 2, &json)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    // Far behind the window: refused.
    let (status, _, _) = raw(&s.app, session_batch(&s.hub, &t, &key, 100, &json)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = raw(&s.app, session_batch(&s.hub, &t, &key, 5, &json)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(readings_stored(&s.app, s.hub.machine_id().as_str()).await, 25);

    // The command poll takes a session too, and its answer is authenticated.
    let h = msession::mac_request(
        &key,
        s.hub.machine_id(),
        &t.ticket,
        101,
        "GET",
        "/v1/commands/poll?wait=0",
        b"",
        chrono::Utc::now().timestamp(),
    );
    let mut r = Request::get("/v1/commands/poll?wait=0");
    for (n, v) in h.to_pairs() {
        r = r.header(n, v);
    }
    let (status, headers, body) = raw(&s.app, r.body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let mac = headers.get(msession::HEADER_ANSWER_MAC).and_then(|v| v.to_str().ok());
    assert!(msession::check_answer(&key, 101, 200, &body, mac));
}

/// A command result request in `hub`'s session `t`, sequence `seq`, with `json` as its body.
fn session_result(
    hub: &outpost_shared::keys::KeyPair,
    t: &OpenAnswer,
    key: &SessionKey,
    seq: u64,
    json: &[u8],
) -> Request<Body> {
    let h = session_post_headers(hub, t, key, seq, "/v1/commands/result", json);
    let mut r = Request::post("/v1/commands/result").header(header::CONTENT_TYPE, "application/json");
    for (n, v) in h.to_pairs() {
        r = r.header(n, v);
    }
    let mut r = r.body(Body::from(json.to_vec())).unwrap();
    r.extensions_mut().insert(ConnectInfo(std::net::SocketAddr::from(([127, 0, 0, 1], 4000))));
    r
}

/// In its session a hub answers a command with the bare result (no RSA signature): the MAC is
/// the proof. Outside a session a bare result is refused; a result altered on the way (what a
/// connector relaying it could try), replayed, or naming another machine changes nothing.
async fn a_result_travels_bare_only_in_a_session_and_only_unaltered(e: Engines, k: &Keep) {
    use outpost_shared::keys::{CommandResult, CommandStatus};
    let s = setup(e, k, Default::default()).await;
    let (command_id, envelope) = issue_ping_and_poll(&s).await;
    let result = CommandResult {
        command_id: command_id.clone(),
        machine_id: s.hub.machine_id().clone(),
        status: CommandStatus::Done,
        output: serde_json::json!({"pong": true}),
        finished_at: chrono::Utc::now(),
        envelope: Some(envelope.digest()),
    };
    let bare = serde_json::to_vec(&result).unwrap();
    // Signed with the machine key but not in a session: a bare result is not enough.
    let (status, v) = machine(&s, &s.hub, "POST", "/v1/commands/result", bare.clone()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["error"].as_str().unwrap().contains("only inside a machine session"), "{v}");
    let status_path = format!("/v1/commands/{command_id}");
    assert_eq!(admin(&s, "GET", &status_path, None).await.1["status"], "delivered");

    let cloud = s.state.trust.key().public().clone();
    let (t, key) = open_session(&s.app, &s.hub, &cloud).await;
    // Altered on the way: MAC over the hub's bytes, "failed" in its place.
    let mut altered = result.clone();
    altered.status = CommandStatus::Failed;
    let mut req = session_result(&s.hub, &t, &key, 1, &bare);
    *req.body_mut() = Body::from(serde_json::to_vec(&altered).unwrap());
    let (status, _, body) = raw(&s.app, req).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        admin(&s, "GET", &status_path, None).await.1["status"],
        "delivered",
        "a forged result changed nothing"
    );
    // Naming another machine, in this hub's session: refused.
    let mut elsewhere = result.clone();
    elsewhere.machine_id = outpost_shared::keys::KeyPair::generate().unwrap().machine_id().clone();
    let (status, _, _) =
        raw(&s.app, session_result(&s.hub, &t, &key, 2, &serde_json::to_vec(&elsewhere).unwrap())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // The real one: taken, with an authenticated answer.
    let (status, headers, body) = raw(&s.app, session_result(&s.hub, &t, &key, 3, &bare)).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let mac = headers.get(msession::HEADER_ANSWER_MAC).and_then(|v| v.to_str().ok());
    assert!(msession::check_answer(&key, 3, 200, &body, mac));
    assert_eq!(admin(&s, "GET", &status_path, None).await.1["status"], "done");
    // Replayed: refused by the session's window.
    let (status, _, _) = raw(&s.app, session_result(&s.hub, &t, &key, 3, &bare)).await;
    assert_eq!(status, StatusCode::CONFLICT);
}

/// A login storm (thousands of hubs after an outage) must not take every core from ingest:
/// beyond the logins opened at once the cloud answers 503 + Retry-After, and the machine's signed
/// requests are served meanwhile.
async fn logins_beyond_the_limit_are_told_to_retry_later_and_signed_requests_go_on(e: Engines, k: &Keep) {
    let s = setup_trust(e, k, Default::default(), |t| t.with_logins_at_once(0)).await;
    let tk = outpost_shared::keys::TicketKeys::derive(s.state.trust.key());
    let cloud = s.state.trust.key().public().clone();
    let (req, _) =
        msession::open_request(&s.hub, &cloud, &tk.challenge(chrono::Utc::now().timestamp()).unwrap())
            .unwrap();
    let (status, headers, body) = raw(&s.app, open_post(&req)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{}", String::from_utf8_lossy(&body));
    assert!(headers.contains_key(header::RETRY_AFTER));
    assert_eq!(verdict(&body), (Some(Verdict::RetryLater), Some(RefusalCode::Busy)));
    let (status, _, body) = ack(&s.app, batch_request(&s.hub, 7)).await;
    assert_eq!((status, body["stored"].as_u64()), (StatusCode::OK, Some(7)), "{body}");
    // An X25519 login costs the cloud no RSA private-key operation and takes no login place.
    let (t, key) = open_session(&s.app, &s.hub, &cloud).await;
    let (status, _, _) = raw(&s.app, session_batch(&s.hub, &t, &key, 1, &batch_json(&s.hub, 2))).await;
    assert_eq!(status, StatusCode::OK);
}

/// X25519 logins cost little but are not free: beyond their permits (here none) a login waits a
/// moment, then is told to retry later, and the machine's signed requests go on meanwhile.
async fn an_x25519_login_beyond_its_permits_is_told_to_retry_later(e: Engines, k: &Keep) {
    let s = setup_trust(e, k, Default::default(), |t| t.with_exchanges_at_once(0)).await;
    let cloud = s.state.trust.key().public().clone();
    let (challenge, _) = session_challenge(&s.app, &cloud).await;
    let (req, _) = msession::open_request_x25519(&s.hub, &challenge.challenge).unwrap();
    let (status, headers, body) = raw(&s.app, open_post(&req)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{}", String::from_utf8_lossy(&body));
    assert!(headers.contains_key(header::RETRY_AFTER));
    assert_eq!(verdict(&body), (Some(Verdict::RetryLater), Some(RefusalCode::Busy)));
    let (status, _, body) = ack(&s.app, batch_request(&s.hub, 3)).await;
    assert_eq!((status, body["stored"].as_u64()), (StatusCode::OK, Some(3)), "{body}");
}

/// What a login costs before it proves anything: a body far larger than any login is refused
/// unread, and a login without a fresh challenge of this cloud is refused before the machine is
/// looked up (an unknown machine with a stale challenge hears about the challenge).
async fn a_login_that_proves_nothing_costs_nothing(e: Engines, k: &Keep) {
    let s = setup(e, k, Default::default()).await;
    let cloud = s.state.trust.key().public().clone();
    let (challenge, _) = session_challenge(&s.app, &cloud).await;
    let (mut big, _) = msession::open_request_x25519(&s.hub, &challenge.challenge).unwrap();
    big.signature = "A".repeat(8 << 10);
    let (status, _, _) = raw(&s.app, open_post(&big)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let stranger = outpost_shared::keys::KeyPair::generate().unwrap();
    let tk = outpost_shared::keys::TicketKeys::derive(s.state.trust.key());
    let stale = tk.challenge(chrono::Utc::now().timestamp() - 61).unwrap();
    let (req, _) = msession::open_request_x25519(&stranger, &stale).unwrap();
    let (status, _, body) = raw(&s.app, open_post(&req)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        verdict(&body),
        (Some(Verdict::RetryLater), Some(RefusalCode::Other)),
        "the challenge, not the machine"
    );
    let (req, _) = msession::open_request_x25519(&stranger, &challenge.challenge).unwrap();
    let (_, _, body) = raw(&s.app, open_post(&req)).await;
    assert_eq!(verdict(&body).1, Some(RefusalCode::NotEnrolled), "with a fresh challenge, the machine");
}

/// Hubs of earlier versions log in with RSA-OAEP; the cloud still takes that.
async fn an_rsa_oaep_login_of_an_earlier_hub_still_opens_a_session(e: Engines, k: &Keep) {
    let s = setup(e, k, Default::default()).await;
    let cloud = s.state.trust.key().public().clone();
    let (challenge, _) = session_challenge(&s.app, &cloud).await;
    let (req, key) = msession::open_request(&s.hub, &cloud, &challenge.challenge).unwrap();
    let (status, _, body) = ack(&s.app, open_post(&req)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let answer: OpenAnswer = serde_json::from_value(body).unwrap();
    assert!(msession::check_opened(&key, &answer));
    assert_eq!((answer.x25519.as_ref(), answer.exchange_signature.as_ref()), (None, None));
    let (status, _, _) = raw(&s.app, session_batch(&s.hub, &answer, &key, 1, &batch_json(&s.hub, 4))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(readings_stored(&s.app, s.hub.machine_id().as_str()).await, 4);
}

/// An X25519 login as an attacker would try it: with someone else's key, a swapped key half, both
/// kinds of login in one request, a low-order point; and an answer replayed to another login.
async fn an_x25519_login_is_bound_to_the_machine_key_and_the_exchange(e: Engines, k: &Keep) {
    let s = setup(e, k, Default::default()).await;
    let cloud = s.state.trust.key().public().clone();
    let (challenge, exchange_key) = session_challenge(&s.app, &cloud).await;
    let c = challenge.challenge.as_str();
    // Signed by an enrolled machine but carrying another ephemeral key than it signed.
    let (mut swapped, _) = msession::open_request_x25519(&s.hub, c).unwrap();
    let (other, _) = msession::open_request_x25519(&s.hub, c).unwrap();
    swapped.x25519 = other.x25519.clone();
    let (status, _, body) = raw(&s.app, open_post(&swapped)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{}", String::from_utf8_lossy(&body));
    // Signed by a key that is not the claimed machine's.
    let stranger = outpost_shared::keys::KeyPair::generate().unwrap();
    let (mut forged, _) = msession::open_request_x25519(&stranger, c).unwrap();
    forged.machine_id = s.hub.machine_id().to_string();
    let (status, _, _) = raw(&s.app, open_post(&forged)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Both a sealed key and an X25519 key: which one would count? Neither.
    let (sealed, _) = msession::open_request(&s.hub, &cloud, c).unwrap();
    let mut both = other.clone();
    both.sealed = sealed.sealed;
    let (status, _, body) = raw(&s.app, open_post(&both)).await;
    assert!(status.is_client_error(), "{status} {}", String::from_utf8_lossy(&body));
    // A low-order point (all zeros) would make the shared secret known to anyone: refused, even
    // though the machine signed it.
    let (mut zero, _) = msession::open_request_x25519(&s.hub, c).unwrap();
    zero.x25519 = Some(base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [0u8; 32]));
    let zero = resigned_x25519(&s.hub, zero);
    let (status, _, body) = raw(&s.app, open_post(&zero)).await;
    assert!(status.is_client_error(), "{status} {}", String::from_utf8_lossy(&body));
    // The cloud's answer to one login is no answer to another: its signature covers the
    // machine's ephemeral key, so a replayed answer is not believed.
    let (first, _) = msession::open_request_x25519(&s.hub, c).unwrap();
    let (status, _, body) = ack(&s.app, open_post(&first)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let answer: OpenAnswer = serde_json::from_value(body).unwrap();
    let (_, second) = msession::open_request_x25519(&s.hub, c).unwrap();
    assert_eq!(
        msession::finish_open_x25519(second, &answer, &exchange_key).unwrap_err(),
        msession::SessionError::BadSignature
    );
    assert_eq!(readings_stored(&s.app, s.hub.machine_id().as_str()).await, 0);
}

/// `req` signed again by `hub` over its (altered) X25519 key, as a machine would sign it.
fn resigned_x25519(hub: &outpost_shared::keys::KeyPair, req: msession::OpenRequest) -> msession::OpenRequest {
    let signature = msession::sign_open_x25519(hub, &req.challenge, req.x25519.as_deref().unwrap()).unwrap();
    msession::OpenRequest { signature, ..req }
}

async fn a_revoked_machines_live_session_is_refused_at_once(e: Engines, k: &Keep) {
    let s = setup(e, k, Default::default()).await;
    let cloud = s.state.trust.key().public().clone();
    let (t, key) = open_session(&s.app, &s.hub, &cloud).await;
    let json = batch_json(&s.hub, 3);
    let (status, _, _) = raw(&s.app, session_batch(&s.hub, &t, &key, 1, &json)).await;
    assert_eq!(status, StatusCode::OK);
    s.state.trust.revoke(s.hub.machine_id().as_str(), chrono::Utc::now()).await.unwrap();
    let (status, _, body) = raw(&s.app, session_batch(&s.hub, &t, &key, 2, &json)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(verdict(&body).1, Some(RefusalCode::Revoked), "{}", String::from_utf8_lossy(&body));
    // And it cannot open a new one.
    let tk = outpost_shared::keys::TicketKeys::derive(s.state.trust.key());
    let (req, _) =
        msession::open_request(&s.hub, &cloud, &tk.challenge(chrono::Utc::now().timestamp()).unwrap())
            .unwrap();
    let (status, _, body) = raw(&s.app, open_post(&req)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(verdict(&body).1, Some(RefusalCode::Revoked));
}

async fn session_opening_needs_a_fresh_challenge_and_this_clouds_key(e: Engines, k: &Keep) {
    let s = setup(e, k, Default::default()).await;
    let cloud = s.state.trust.key().public().clone();
    let now = chrono::Utc::now().timestamp();
    let tk = outpost_shared::keys::TicketKeys::derive(s.state.trust.key());
    // A challenge older than 60 s.
    let (req, _) = msession::open_request(&s.hub, &cloud, &tk.challenge(now - 61).unwrap()).unwrap();
    let (status, _, body) = raw(&s.app, open_post(&req)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{}", String::from_utf8_lossy(&body));
    // A challenge made with another cloud's key.
    let other = outpost_shared::keys::KeyPair::generate().unwrap();
    let foreign = outpost_shared::keys::TicketKeys::derive(&other);
    let (req, _) = msession::open_request(&s.hub, &cloud, &foreign.challenge(now).unwrap()).unwrap();
    let (status, _, _) = raw(&s.app, open_post(&req)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // An unknown machine.
    let (req, _) = msession::open_request(&other, &cloud, &tk.challenge(now).unwrap()).unwrap();
    let (status, _, body) = raw(&s.app, open_post(&req)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(verdict(&body).1, Some(RefusalCode::NotEnrolled));
    // A ticket from another cloud key: the client is told to open a new session, data kept.
    let (_, key) = open_session(&s.app, &s.hub, &cloud).await;
    let ticket = msession::Ticket {
        machine_id: s.hub.machine_id().clone(),
        session_id: [7; 16],
        expires_at: now + 3600,
        key: key.clone(),
    };
    let forged = OpenAnswer {
        ticket: foreign.issue(&ticket).unwrap(),
        expires_at: now + 3600,
        lifetime_secs: 3600,
        mac: String::new(),
        x25519: None,
        exchange_signature: None,
    };
    let (status, _, body) =
        raw(&s.app, session_batch(&s.hub, &forged, &key, 1, &batch_json(&s.hub, 1))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(verdict(&body), (Some(Verdict::RetryLater), Some(RefusalCode::SessionExpired)));
    assert_eq!(readings_stored(&s.app, s.hub.machine_id().as_str()).await, 0);
}

/// The real client against the API over HTTP: a session that expired at the cloud between two
/// uploads is opened again and the batch sent once more, stored exactly once.
async fn an_expired_session_is_reopened_and_the_batch_stored_exactly_once(e: Engines, k: &Keep) {
    let s = setup_lived(e, k, Default::default(), Duration::from_secs(1)).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = s.app.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>())
            .await
            .unwrap();
    });
    let base = format!("http://{addr}");
    let hub = Arc::new(s.hub.clone());
    // Never renewed early: the session is used until the cloud says it ended.
    let client = outpost_shared::keys::SessionClient::new(hub.clone(), s.state.trust.key().public().clone())
        .renew_at(100.0);
    let http = reqwest::Client::new();
    let send = |json: Vec<u8>| {
        let (client, http, base) = (&client, http.clone(), base.clone());
        async move {
            client
                .send(&http, &base, reqwest::Method::POST, "/v1/batches", &json, gzip(&json), |r| {
                    r.header(header::CONTENT_ENCODING, "gzip")
                })
                .await
                .unwrap()
        }
    };
    let a = send(batch_json(&hub, 5)).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.authentic, Some(true));
    assert_eq!(client.opened(), 1);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let a = send(batch_json(&hub, 9)).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.authentic, Some(true));
    assert_eq!(client.opened(), 2, "the expired session was replaced");
    let ackd: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!((ackd["stored"].as_u64(), ackd["duplicates"].as_u64()), (Some(4), Some(5)));
    assert_eq!(readings_stored(&s.app, hub.machine_id().as_str()).await, 9);
    server.abort();
}
