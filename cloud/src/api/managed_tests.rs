//! The managed-sensor API in process: validation names the field, passwords are found in no
//! answer, file or log, templates reach every machine using them, roll-back, status from the
//! hubs' signed reports, redelivery, and who may ask.

use super::*;
use crate::store::testing::Keep;
use crate::store::Engines;
use axum::body::Body;
use axum::http::{header, Request};
use outpost_shared::keys::{CommandEnvelope, CommandResult, CommandStatus, KeyPair, Signed};
use outpost_shared::managed::{ApplyReport, SensorDocument, APPLY_ACTION};
use serde_json::{json, Value};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;
use tower::ServiceExt;

crate::both_engines!(
    validation_errors_name_the_field_and_nothing_is_saved,
    a_password_is_sealed_to_the_machine_and_found_in_no_answer_file_or_log,
    a_template_edit_issues_a_new_version_to_every_machine_using_it,
    roll_back_issues_the_old_content_as_a_new_version,
    status_follows_the_hubs_signed_reports_and_a_missed_version_is_sent_again,
    unknown_machines_are_404_and_no_token_is_401,
    a_version_whose_command_expired_unanswered_is_sent_again_once,
    relay_settings_travel_in_the_signed_document_survive_sensor_edits_and_roll_back,
);

struct Setup {
    app: Router,
    state: AppState,
    hubs: Vec<KeyPair>,
    /// The managed store itself, to set up what the API cannot (a version never delivered).
    store: crate::store::managed::Managed,
    /// Where the engine writes its records (see `Keep::stored_in`).
    stored_in: Vec<std::path::PathBuf>,
}

/// Hub keys made once per test run (RSA key generation is the slow part).
fn hub_keys() -> &'static [KeyPair] {
    static KEYS: OnceLock<Vec<KeyPair>> = OnceLock::new();
    KEYS.get_or_init(|| (0..3).map(|_| KeyPair::generate().unwrap()).collect())
}

/// Most log bytes kept: far more than the tests here write.
const LOG_CAP: usize = 64 << 20;

/// Everything the cloud logs during this test binary, to look for passwords in.
///
/// Captured by [`Capture`] rather than `tracing_subscriber::fmt`: the fmt layer formats into a
/// thread-local buffer, and an event logged while a runtime thread ends (its thread-locals being
/// destroyed) then panics inside a destructor, which aborts the whole test binary.
fn log_output() -> &'static Mutex<Vec<u8>> {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        use tracing_subscriber::layer::SubscriberExt;
        let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry().with(Capture));
    });
    &LOG_SINK
}

/// What [`Capture`] wrote; read through [`log_output`], which installs it first.
static LOG_SINK: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// Writes every event's and span's target and fields (messages included) to [`log_output`];
/// never panics and keeps no thread-local state.
struct Capture;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut line = Line::new(event.metadata());
        event.record(&mut line);
        line.keep();
    }

    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _: &tracing::span::Id,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut line = Line::new(attrs.metadata());
        attrs.record(&mut line);
        line.keep();
    }
}

/// One captured line: level, target, name, then each field.
struct Line(String);

impl Line {
    fn new(meta: &tracing::Metadata<'_>) -> Self {
        Line(format!("{} {} {}", meta.level(), meta.target(), meta.name()))
    }

    fn keep(mut self) {
        self.0.push('\n');
        if let Ok(mut log) = LOG_SINK.lock() {
            if log.len() < LOG_CAP {
                log.extend_from_slice(self.0.as_bytes());
            }
        }
    }
}

impl tracing::field::Visit for Line {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        let _ = write!(self.0, " {}={value:?}", field.name());
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        // As written, not escaped: a password must be found byte for byte.
        self.0.push(' ');
        self.0.push_str(field.name());
        self.0.push('=');
        self.0.push_str(value);
    }
}

async fn setup(engines: Engines, keep: &Keep) -> Setup {
    setup_with_ttl(engines, keep, crate::managed::APPLY_TTL).await
}

/// With apply commands that expire after `ttl`.
async fn setup_with_ttl(engines: Engines, keep: &Keep, ttl: Duration) -> Setup {
    log_output();
    let dir = keep.dir.path().to_path_buf();
    let trust = Trust::open(&dir, engines.trust.clone()).unwrap();
    let commands = Commands::new(engines.commands.clone());
    let managed_store = engines.managed.clone();
    let managed = crate::managed::ManagedSensors::new(managed_store.clone(), trust.clone(), commands.clone())
        .with_apply_ttl(ttl);
    let now = chrono::Utc::now();
    for (i, hub) in hub_keys().iter().enumerate() {
        let (token, _) = trust
            .new_token("net", outpost_shared::model::Role::Sensorhub, Duration::from_secs(60), "", "t", now)
            .await
            .unwrap();
        let req = crate::trust::EnrollRequest {
            token: Some(token.encode()),
            sealed_token: None,
            public_key: hub.public().to_pem(),
            role: outpost_shared::model::Role::Sensorhub,
            hostname: format!("hub{i}"),
            lan_cert: None,
        };
        trust.enroll(&req, now).await.unwrap();
    }
    let config = CloudConfig::default();
    let people = crate::people::People::new(engines.people.clone(), config.people.clone()).unwrap();
    let silences = crate::silences::Silences::open(engines.silences.clone(), trust.clone()).await.unwrap();
    let state =
        AppState::new(engines.readings.clone(), "admin".into(), trust, commands, people, Arc::new(config))
            .with_managed(managed)
            .with_silences(silences);
    Setup {
        app: router(state.clone()),
        state,
        hubs: hub_keys().to_vec(),
        store: managed_store,
        stored_in: keep.stored_in.clone(),
    }
}

impl Setup {
    fn hub(&self, i: usize) -> String {
        self.hubs[i].machine_id().to_string()
    }

    /// One admin request; the status and the JSON answer (its text, too, to search in).
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value, String) {
        // The admin token is the host-side credential: it counts only from the cloud's own host.
        let mut r = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, "Bearer admin")
            .extension(axum::extract::ConnectInfo(std::net::SocketAddr::from(([127, 0, 0, 1], 4000))));
        let body = match body {
            Some(b) => {
                r = r.header(header::CONTENT_TYPE, "application/json");
                Body::from(b.to_string())
            }
            None => Body::empty(),
        };
        let resp =
            tokio::time::timeout(Duration::from_secs(20), self.app.clone().oneshot(r.body(body).unwrap()))
                .await
                .unwrap()
                .unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 4 << 20).await.unwrap();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null), text)
    }

    async fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, v, _) = self.call(method, path, body).await;
        assert!(status.is_success(), "{method} {path}: {status} {v}");
        v
    }

    /// The commands waiting for hub `i`, as it would receive them.
    async fn poll(&self, i: usize) -> Vec<Signed<CommandEnvelope>> {
        self.state.commands.poll(&self.hub(i), Duration::from_millis(10)).await.unwrap()
    }

    /// The newest apply document waiting for hub `i` (and its command), verified as the hub would.
    async fn delivered(&self, i: usize) -> (Signed<CommandEnvelope>, SensorDocument) {
        let cloud = self.state.trust.key().public();
        let mut docs = Vec::new();
        for env in self.poll(i).await {
            let cmd = env.verify(cloud).unwrap();
            if cmd.action != APPLY_ACTION {
                continue;
            }
            let doc: Signed<SensorDocument> =
                serde_json::from_value(cmd.parameters["document"].clone()).unwrap();
            let doc = doc.verify(cloud).expect("signed by the cloud key");
            assert_eq!(doc.machine.as_str(), self.hub(i), "addressed to its machine");
            docs.push((env, doc));
        }
        docs.into_iter().max_by_key(|(_, d)| d.version).expect("an apply command is waiting")
    }

    /// Hub `i` answers a command with a signed result.
    async fn answer(&self, i: usize, env: &Signed<CommandEnvelope>, status: CommandStatus, output: Value) {
        let result = CommandResult {
            command_id: env.peek_unverified().unwrap().id,
            machine_id: self.hubs[i].machine_id().clone(),
            status,
            output,
            finished_at: chrono::Utc::now(),
            envelope: Some(env.digest()),
        };
        let signed = Signed::sign(&self.hubs[i], &result).unwrap();
        self.state.commands.finish(&self.hub(i), self.hubs[i].public(), &signed).await.unwrap();
    }
}

fn tcp(name: &str, port: u16) -> Value {
    json!({"kind": "tcp", "name": name, "host": "db.example", "port": port, "interval": "30s"})
}

fn ids(doc: &SensorDocument) -> Vec<String> {
    doc.sensors.iter().map(|s| s.id()).collect()
}

async fn validation_errors_name_the_field_and_nothing_is_saved(engines: Engines, keep: &Keep) {
    let s = setup(engines, keep).await;
    let path = format!("/v1/machines/{}/managed/sensors", s.hub(0));
    let mut bad = tcp("db", 5432);
    bad["warn"] = json!(900);
    bad["error"] = json!(100);
    let (status, v, _) = s.call("POST", &path, Some(bad)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["problems"][0]["field"], "sensor[tcp.db].warn", "{v}");
    assert!(v["error"].as_str().unwrap().contains("warn"), "{v}");

    let (status, v, _) = s.call("POST", &path, Some(json!({"kind": "teapot", "name": "x"}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().contains("teapot"), "{v}");
    let (status, v, _) = s.call("POST", &path, Some(json!({"kind": "cpu", "port": 80}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(v["problems"][0]["field"], "sensor[cpu].port", "a key of another kind is named: {v}");
    let (status, v, _) = s.call("POST", &path, Some(json!({"kind": "http", "name": "w"}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(v["problems"][0]["field"], "sensor[http.w].url", "{v}");

    let m = s.ok("GET", &format!("/v1/machines/{}/managed", s.hub(0)), None).await;
    assert_eq!(m["sensors"], json!([]), "nothing was saved");
    assert_eq!(m["status"]["state"], "none");
    assert!(s.poll(0).await.is_empty(), "nothing was sent");

    // A valid one is saved as version 1; the same name again is a conflict.
    assert_eq!(s.ok("POST", &path, Some(tcp("db", 5432))).await["version"], 1);
    let (status, _, _) = s.call("POST", &path, Some(tcp("db", 1))).await;
    assert_eq!(status, StatusCode::CONFLICT);
}

async fn a_password_is_sealed_to_the_machine_and_found_in_no_answer_file_or_log(
    engines: Engines,
    keep: &Keep,
) {
    let s = setup(engines, keep).await;
    let password = format!("pw-{}", hex::encode(rand_bytes()));
    let user = format!("user-{}", hex::encode(rand_bytes()));
    let http = json!({"kind": "http", "name": "intranet", "url": "https://intranet.example/",
                      "username": user, "password": password});
    let mut answers = String::new();
    let (status, _, text) =
        s.call("POST", &format!("/v1/machines/{}/managed/sensors", s.hub(0)), Some(http.clone())).await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    answers += &text;
    // The same in a template, for another machine.
    let (status, _, text) =
        s.call("POST", "/v1/templates", Some(json!({"name": "web server", "sensors": [http]}))).await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    answers += &text;
    s.ok(
        "PUT",
        &format!("/v1/machines/{}/managed/templates", s.hub(1)),
        Some(json!({"templates": ["web server"]})),
    )
    .await;

    // Each machine gets its password sealed to its own key, and can open it.
    for i in [0, 1] {
        let (env, doc) = s.delivered(i).await;
        let sealed = doc.sensors[0].password.as_ref().unwrap().expose().to_string();
        assert!(sealed.starts_with(&format!("sealed:v1:{}:", s.hub(i))), "sealed to hub {i}");
        assert_eq!(outpost_shared::keys::unseal(&s.hubs[i], &sealed).unwrap().expose(), password);
        let other = outpost_shared::keys::unseal(&s.hubs[2], &sealed);
        assert!(other.is_err(), "another machine cannot open it");
        let cmd = env.peek_unverified().unwrap().id;
        let (_, _, text) = s.call("GET", &format!("/v1/commands/{cmd}"), None).await;
        answers += &text;
    }
    for path in [
        format!("/v1/machines/{}/managed", s.hub(0)),
        format!("/v1/machines/{}/managed", s.hub(1)),
        format!("/v1/machines/{}/managed/history", s.hub(0)),
        "/v1/templates".to_string(),
        "/v1/templates/web%20server".to_string(),
        "/v1/audit".to_string(),
    ] {
        let (status, v, text) = s.call("GET", &path, None).await;
        assert_eq!(status, StatusCode::OK, "{path}: {v}");
        answers += &text;
    }
    assert!(answers.contains(&user), "the answers were read (the user name is in them)");
    assert!(answers.contains(r#""password":{"set":true}"#), "answers say a password is set");
    assert!(!answers.contains(&password), "an answer holds the password");
    assert!(!answers.contains("sealed:v1:"), "an answer holds even the sealed password");
    assert!(answers.contains(r#""sensors":["http.intranet"]"#), "the apply command is summed up: {answers}");

    // The data directory: the user name is there in clear (so the files are searchable), the
    // password is not.
    let mut user_seen = false;
    for file in s.stored_in.iter().flat_map(|d| files(d)) {
        // The database server's files change under other tests: one gone meanwhile is skipped.
        let Ok(bytes) = std::fs::read(&file) else { continue };
        assert!(!contains(&bytes, password.as_bytes()), "{} holds the password", file.display());
        user_seen |= contains(&bytes, user.as_bytes());
    }
    assert!(user_seen, "the stored sensors were found in the data directory");
    let log = log_output().lock().unwrap().clone();
    assert!(!log.is_empty(), "the cloud logged something");
    assert!(!contains(&log, password.as_bytes()), "the log holds the password");
}

fn rand_bytes() -> [u8; 8] {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap();
    b
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

async fn a_template_edit_issues_a_new_version_to_every_machine_using_it(engines: Engines, keep: &Keep) {
    let s = setup(engines, keep).await;
    s.ok(
        "POST",
        "/v1/templates",
        Some(json!({"name": "db", "sensors": [tcp("a", 1), tcp("b", 2), tcp("c", 3)]})),
    )
    .await;
    for i in 0..3 {
        let v = s
            .ok(
                "PUT",
                &format!("/v1/machines/{}/managed/templates", s.hub(i)),
                Some(json!({"templates": ["db"]})),
            )
            .await;
        assert_eq!(v["version"], 1);
        let (_, doc) = s.delivered(i).await;
        assert_eq!(ids(&doc), ["tcp.a", "tcp.b", "tcp.c"]);
    }
    // The machine's own setting wins over the template's.
    s.ok("POST", &format!("/v1/machines/{}/managed/sensors", s.hub(2)), Some(tcp("b", 99))).await;
    let (_, doc) = s.delivered(2).await;
    assert_eq!(doc.version, 2);
    assert_eq!(doc.sensors[1].port, Some(99));

    // Edit: b's port changes, c goes. Every machine gets a new version at once.
    let v = s.ok("PUT", "/v1/templates/db", Some(json!({"sensors": [tcp("a", 1), tcp("b", 20)]}))).await;
    let expected: serde_json::Map<String, Value> =
        (0..3).map(|i| (s.hub(i), json!(if i == 2 { 3 } else { 2 }))).collect();
    assert_eq!(v["versions"], Value::Object(expected), "{v}");
    for i in 0..3 {
        let (_, doc) = s.delivered(i).await;
        assert_eq!(ids(&doc), ["tcp.a", "tcp.b"], "c is gone on hub {i}");
        assert_eq!(doc.sensors[1].port, Some(if i == 2 { 99 } else { 20 }));
    }
    let history = s.ok("GET", &format!("/v1/machines/{}/managed/history", s.hub(0)), None).await;
    assert_eq!(history[0]["change"], "template `db`: edited tcp.b, removed tcp.c", "{history}");
    assert_eq!(history[0]["who"], "local-admin");

    // An edit that breaks one machine's document is refused for all, naming the machine.
    let (status, v, _) =
        s.call("POST", "/v1/templates", Some(json!({"name": "other", "sensors": [tcp("a", 5)]}))).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let (status, v, _) = s
        .call(
            "PUT",
            &format!("/v1/machines/{}/managed/templates", s.hub(0)),
            Some(json!({"templates": ["db", "other"]})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "two templates define tcp.a: {v}");
    let e = v["error"].as_str().unwrap();
    assert!(e.contains("`db`") && e.contains("`other`"), "{e}");
    let (status, _, _) = s.call("DELETE", "/v1/templates/db", None).await;
    assert_eq!(status, StatusCode::CONFLICT, "a template in use is not deleted");
    let (status, _, _) = s.call("DELETE", "/v1/templates/other", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = s
        .call(
            "PUT",
            &format!("/v1/machines/{}/managed/templates", s.hub(0)),
            Some(json!({"templates": ["gone"]})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "an unknown template is named");
}

async fn roll_back_issues_the_old_content_as_a_new_version(engines: Engines, keep: &Keep) {
    let s = setup(engines, keep).await;
    let base = format!("/v1/machines/{}/managed", s.hub(0));
    s.ok("POST", &format!("{base}/sensors"), Some(tcp("a", 1))).await;
    s.ok("POST", &format!("{base}/sensors"), Some(tcp("b", 2))).await;
    s.ok("PUT", &format!("{base}/sensors/tcp.a"), Some(tcp("a", 10))).await;
    let v = s.ok("POST", &format!("{base}/rollback"), Some(json!({"version": 1}))).await;
    assert_eq!(v["version"], 4);
    let (_, doc) = s.delivered(0).await;
    assert_eq!(doc.version, 4);
    assert_eq!(ids(&doc), ["tcp.a"]);
    assert_eq!(doc.sensors[0].port, Some(1));
    let history = s.ok("GET", &format!("{base}/history"), None).await;
    let changes: Vec<&str> =
        history.as_array().unwrap().iter().map(|h| h["change"].as_str().unwrap()).collect();
    assert_eq!(changes, ["rolled back to v1", "edited tcp.a", "added tcp.b", "added tcp.a"]);
    // Later edits build on the rolled-back content.
    s.ok("POST", &format!("{base}/sensors"), Some(tcp("c", 3))).await;
    let (_, doc) = s.delivered(0).await;
    assert_eq!(ids(&doc), ["tcp.a", "tcp.c"]);
    let (status, _, _) = s.call("POST", &format!("{base}/rollback"), Some(json!({"version": 99}))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = s.call("DELETE", &format!("{base}/sensors/tcp.zzz"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let v = s.ok("DELETE", &format!("{base}/sensors/tcp.c"), None).await;
    assert_eq!(v["version"], 6);
    // The audit trail names who changed what.
    let audit = s.ok("GET", "/v1/audit", None).await;
    let saved: Vec<&Value> =
        audit.as_array().unwrap().iter().filter(|e| e["action"] == "sensors.saved").collect();
    assert_eq!(saved.len(), 6);
    assert_eq!(saved[0]["who"], "local-admin");
    assert_eq!(saved[0]["parameters"]["change"], "removed tcp.c");
}

async fn status_follows_the_hubs_signed_reports_and_a_missed_version_is_sent_again(
    engines: Engines,
    keep: &Keep,
) {
    let s = setup(engines, keep).await;
    let base = format!("/v1/machines/{}/managed", s.hub(0));
    s.ok("POST", &format!("{base}/sensors"), Some(tcp("a", 1))).await;
    assert_eq!(s.ok("GET", &base, None).await["status"]["text"], "pending v1");
    let (env, _) = s.delivered(0).await;
    let report = ApplyReport { running: Some(1), delivered: 1, problems: vec![] };
    s.answer(0, &env, CommandStatus::Done, serde_json::to_value(report).unwrap()).await;
    assert_eq!(s.ok("GET", &base, None).await["status"]["text"], "applied v1");

    // The hub refuses version 2 and keeps running 1: its reason shows.
    s.ok("POST", &format!("{base}/sensors"), Some(tcp("b", 2))).await;
    let (env, _) = s.delivered(0).await;
    let report =
        ApplyReport { running: Some(1), delivered: 2, problems: vec!["sensor[1].host: no such host".into()] };
    s.answer(0, &env, CommandStatus::Refused, serde_json::to_value(report).unwrap()).await;
    let st = s.ok("GET", &base, None).await["status"].clone();
    assert_eq!(st["state"], "refused", "{st}");
    assert_eq!(st["running"], 1);
    assert!(st["text"].as_str().unwrap().contains("no such host"), "{st}");
    assert_eq!(
        s.state.managed.as_ref().unwrap().redeliver_due().await.unwrap(),
        0,
        "a refusal is not resent"
    );

    // A version saved whose command never went out (the cloud stopped, or it expired while the
    // hub was away) is sent again by the redelivery task, once.
    let latest = s.store.latest_version(&s.hub(0)).await.unwrap().unwrap();
    let mut doc = latest.document.peek_unverified().unwrap();
    doc.version = 3;
    let record = crate::store::managed::VersionRecord {
        version: 3,
        document: Signed::sign(s.state.trust.key(), &doc).unwrap(),
        ..latest
    };
    s.store
        .save(crate::store::managed::ManagedChange { versions: vec![record], ..Default::default() })
        .await
        .unwrap();
    assert_eq!(s.ok("GET", &base, None).await["status"]["text"], "pending v3 (runs v1)");
    let m = s.state.managed.as_ref().unwrap();
    assert_eq!(m.redeliver_due().await.unwrap(), 1);
    assert_eq!(m.redeliver_due().await.unwrap(), 0, "not again while that command can still arrive");
    let (_, doc) = s.delivered(0).await;
    assert_eq!(doc.version, 3);
}

async fn unknown_machines_are_404_and_no_token_is_401(engines: Engines, keep: &Keep) {
    let s = setup(engines, keep).await;
    let stranger = "0123456789abcdef0123456789abcdef";
    for (method, path, body) in [
        ("GET", format!("/v1/machines/{stranger}/managed"), None),
        ("POST", format!("/v1/machines/{stranger}/managed/sensors"), Some(tcp("a", 1))),
        ("PUT", format!("/v1/machines/{stranger}/managed/templates"), Some(json!({"templates": []}))),
        ("POST", format!("/v1/machines/{stranger}/managed/sensors/tcp.a/test"), None),
        ("GET", "/v1/templates/none".to_string(), None),
    ] {
        let (status, v, _) = s.call(method, &path, body).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {v}");
    }
    for path in ["/v1/sensor-catalogue", "/v1/templates", &format!("/v1/machines/{}/managed", s.hub(0))] {
        let r = Request::get(path).body(Body::empty()).unwrap();
        let resp = s.app.clone().oneshot(r).await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{path}");
        let r = Request::get(path).header(header::AUTHORIZATION, "Bearer wrong").body(Body::empty()).unwrap();
        assert_eq!(s.app.clone().oneshot(r).await.unwrap().status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    // Test now: a sample-now command for that sensor.
    let v = s.ok("POST", &format!("/v1/machines/{}/managed/sensors/tcp.a/test", s.hub(0)), None).await;
    let env = s.poll(0).await.pop().unwrap().peek_unverified().unwrap();
    assert_eq!(env.id, v["command_id"].as_str().unwrap());
    assert_eq!((env.action.as_str(), &env.parameters), ("sample-now", &json!({"sensor": "tcp.a"})));
    let cat = s.ok("GET", "/v1/sensor-catalogue", None).await;
    assert_eq!(cat.as_array().unwrap().len(), outpost_shared::sensor_config::SensorKind::ALL.len());
}

async fn a_version_whose_command_expired_unanswered_is_sent_again_once(engines: Engines, keep: &Keep) {
    let s = setup_with_ttl(engines, keep, Duration::from_secs(1)).await;
    let base = format!("/v1/machines/{}/managed", s.hub(0));
    s.ok("POST", &format!("{base}/sensors"), Some(tcp("a", 1))).await;
    let m = s.state.managed.as_ref().unwrap();
    assert_eq!(m.redeliver_due().await.unwrap(), 0, "its command can still reach the hub");
    // The hub is away past the command's expiry: nothing answered, nothing handed out.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(s.ok("GET", &base, None).await["status"]["text"], "pending v1");
    assert_eq!(m.redeliver_due().await.unwrap(), 1, "the newest version is sent again");
    assert_eq!(m.redeliver_due().await.unwrap(), 0, "once");
    let (env, doc) = s.delivered(0).await;
    assert_eq!(doc.version, 1);
    let report = ApplyReport { running: Some(1), delivered: 1, problems: vec![] };
    s.answer(0, &env, CommandStatus::Done, serde_json::to_value(report).unwrap()).await;
    assert_eq!(s.ok("GET", &base, None).await["status"]["text"], "applied v1");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(m.redeliver_due().await.unwrap(), 0, "an applied version is not sent again");
}

async fn relay_settings_travel_in_the_signed_document_survive_sensor_edits_and_roll_back(
    engines: Engines,
    keep: &Keep,
) {
    let s = setup(engines, keep).await;
    let base = format!("/v1/machines/{}/managed", s.hub(0));
    let pump = json!({"card": 1, "relay": 1, "name": "pump", "locked": true, "restore": "on"});
    let v = s.ok("PUT", &format!("{base}/relays"), Some(json!({"relays": [pump]}))).await;
    assert_eq!(v["version"], 1);
    let (_, doc) = s.delivered(0).await;
    assert_eq!(doc.relays.len(), 1);
    assert_eq!(doc.relays[0].name.as_deref(), Some("pump"));
    assert!(doc.relays[0].locked);
    assert_eq!(s.ok("GET", &base, None).await["relays"][0]["name"], "pump");

    // A sensor edit keeps the relay settings; the history says what changed.
    s.ok("POST", &format!("{base}/sensors"), Some(tcp("a", 1))).await;
    let (_, doc) = s.delivered(0).await;
    assert_eq!((doc.version, doc.relays.len(), ids(&doc).len()), (2, 1, 1));

    // Refused as a whole, each problem naming its entry and field; nothing saved.
    for (bad, field) in [
        (json!({"relays": [{"card": 1, "relay": 9}]}), "relays[0].relay"),
        (json!({"relays": [{"card": 0, "relay": 1}]}), "relays[0].card"),
        (json!({"relays": [{"relay": 2, "name": "a"}, {"card": 1, "relay": 2}]}), "relays[1].relay"),
        (json!({"relays": [{"relay": 2, "name": "x".repeat(65)}]}), "relays[0].name"),
    ] {
        let (status, body, _) = s.call("PUT", &format!("{base}/relays"), Some(bad.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(body.to_string().contains(field), "{bad}: {body}");
    }
    for bad in [
        json!({"relays": [{"relay": 2, "port": "/dev/ttyS0"}]}),
        json!({"relays": [{"relay": 2, "restore": "sometimes"}]}),
        json!({"relays": [{"relay": 300}]}),
    ] {
        let (status, body, _) = s.call("PUT", &format!("{base}/relays"), Some(bad.clone())).await;
        assert!(status.is_client_error(), "{bad}: {status} {body}");
    }
    assert_eq!(s.ok("GET", &base, None).await["relays"].as_array().unwrap().len(), 1);

    // Clearing them is a version too, and a roll-back brings them back.
    s.ok("PUT", &format!("{base}/relays"), Some(json!({"relays": []}))).await;
    let (_, doc) = s.delivered(0).await;
    assert!(doc.relays.is_empty());
    s.ok("POST", &format!("{base}/rollback"), Some(json!({"version": 2}))).await;
    let (_, doc) = s.delivered(0).await;
    assert_eq!((doc.version, doc.relays.len()), (4, 1));
    let history = s.ok("GET", &format!("{base}/history"), None).await;
    let changes: Vec<&str> =
        history.as_array().unwrap().iter().map(|h| h["change"].as_str().unwrap()).collect();
    assert_eq!(changes, ["rolled back to v2", "relays: cleared 1/1", "added tcp.a", "relays: set 1/1"]);
    let relays_of = |i: usize| history[i]["relays"].as_array().unwrap().len();
    assert_eq!((relays_of(0), relays_of(1), relays_of(3)), (1, 0, 1), "each version shows its relays");
}
