//! `sensors.apply` through the command executor, with real keys, real signed documents, a real
//! sensor set and the data directory on disk: what is applied runs, what is refused changes
//! nothing (sensors, disk), and the stored document runs again after a restart without a cloud.

use super::*;
use crate::commands::{Answered, Executor};
use crate::relay::RelaySettings;
#[cfg(unix)]
use crate::relay::Restore;
use crate::writer::Batch;
use chrono::Utc;
use outpost_shared::keys::{CommandEnvelope, CommandStatus, CommandVerifier, SignedKind};
use outpost_shared::managed::APPLY_ACTION;
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(30);

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f).await.expect("test step timed out")
}

struct Keys {
    cloud: KeyPair,
    impostor: KeyPair,
    hub: Arc<KeyPair>,
    other_hub: KeyPair,
}

/// Keys are slow to make: one set for every test here.
fn keys() -> &'static Keys {
    static K: OnceLock<Keys> = OnceLock::new();
    K.get_or_init(|| Keys {
        cloud: KeyPair::generate().unwrap(),
        impostor: KeyPair::generate().unwrap(),
        hub: Arc::new(KeyPair::generate().unwrap()),
        other_hub: KeyPair::generate().unwrap(),
    })
}

/// A file sensor that samples every 100 ms, so "still running" shows within a moment.
fn file(dir: &std::path::Path, name: &str) -> SensorConfig {
    let path = dir.join("watched");
    if !path.exists() {
        std::fs::write(&path, b"x").unwrap();
    }
    SensorConfig {
        name: Some(name.into()),
        path: Some(path),
        interval: Some(Duration::from_millis(100)),
        ..SensorConfig::new(SensorKind::File)
    }
}

fn document(machine: &KeyPair, version: u64, sensors: Vec<SensorConfig>) -> SensorDocument {
    SensorDocument {
        machine: machine.machine_id().clone(),
        version,
        issued_at: Utc::now(),
        issued_by: "user:alice".into(),
        sensors,
        relays: vec![],
    }
}

fn signed(version: u64, sensors: Vec<SensorConfig>) -> Signed<SensorDocument> {
    let k = keys();
    Signed::sign(&k.cloud, &document(&k.hub, version, sensors)).unwrap()
}

/// A document with a sensor of a kind no hub knows: signed as raw JSON, as a newer cloud might.
fn signed_raw(value: serde_json::Value) -> Signed<SensorDocument> {
    #[derive(serde::Serialize, serde::Deserialize)]
    #[serde(transparent)]
    struct Raw(serde_json::Value);
    impl SignedKind for Raw {
        const KIND: &'static str = SensorDocument::KIND;
    }
    let s = Signed::sign(&keys().cloud, &Raw(value)).unwrap();
    serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap()
}

/// A hub's command executor with managed sensors, one local sensor `file.local`, and a record of
/// how many batches each sensor sent.
struct Hub {
    exec: Executor,
    managed: Arc<Managed>,
    sensors: SensorHandle,
    seen: Arc<Mutex<HashMap<String, usize>>>,
    stop: CancellationToken,
}

impl Hub {
    fn start(dir: &std::path::Path, policy: ManagedConfig) -> Hub {
        let local = Local { policy, sensors: vec![file(dir, "local")], defaults: false, relay: None };
        let loaded = load(dir, &keys().hub, Some(keys().cloud.public()), &local);
        Hub::start_with(dir, local, loaded)
    }

    fn start_with(dir: &std::path::Path, local: Local, loaded: Loaded) -> Hub {
        Hub::start_with_relays(dir, local, loaded, None)
    }

    fn start_with_relays(dir: &std::path::Path, local: Local, loaded: Loaded, relays: Option<Relays>) -> Hub {
        let k = keys();
        let managed_sensors = loaded.accepted.as_ref().map(|a| a.sensors.clone()).unwrap_or_default();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Batch>(256);
        let stop = CancellationToken::new();
        let sensors = crate::sensors::SensorSet::build_in(&local.combined(&managed_sensors), Some(dir))
            .unwrap()
            .spawn(tx, stop.clone());
        let seen: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let s = seen.clone();
        tokio::spawn(async move {
            while let Some(b) = rx.recv().await {
                let id = b.samples[0].sensor.split('.').take(2).collect::<Vec<_>>().join(".");
                *s.lock().unwrap().entry(id).or_default() += 1;
            }
        });
        let managed = Arc::new(Managed::new(
            dir.to_path_buf(),
            k.hub.clone(),
            local,
            sensors.clone(),
            relays.clone(),
            loaded,
        ));
        let verifier = CommandVerifier::open(
            k.cloud.public().clone(),
            k.hub.machine_id().clone(),
            &dir.join("replay.log"),
            Utc::now(),
        )
        .unwrap();
        let exec = Executor {
            key: k.hub.clone(),
            verifier,
            sensors: sensors.clone(),
            relays,
            config_path: None,
            managed: Some(managed.clone()),
            answered: Answered::default(),
        };
        Hub { exec, managed, sensors, seen, stop }
    }

    /// Sends `document` as a `sensors.apply` command the cloud signed; the result's status and
    /// its report.
    async fn apply(&self, document: &Signed<SensorDocument>) -> (CommandStatus, ApplyReport) {
        self.apply_params(json!({ "document": document })).await
    }

    async fn apply_params(&self, parameters: serde_json::Value) -> (CommandStatus, ApplyReport) {
        let result = self.command(APPLY_ACTION, parameters).await;
        let report = serde_json::from_value(result.output.clone())
            .unwrap_or_else(|e| panic!("output is no report ({e}): {}", result.output));
        (result.status, report)
    }

    /// Runs one command the cloud signed; its result.
    async fn command(
        &self,
        action: &str,
        parameters: serde_json::Value,
    ) -> outpost_shared::keys::CommandResult {
        let k = keys();
        let env = CommandEnvelope::new(
            k.hub.machine_id().clone(),
            action,
            parameters,
            Utc::now(),
            Duration::from_secs(60),
        )
        .unwrap();
        within(self.exec.handle(&Signed::sign(&k.cloud, &env).unwrap())).await.unwrap()
    }

    fn count(&self, id: &str) -> usize {
        self.seen.lock().unwrap().get(id).copied().unwrap_or(0)
    }

    /// Whether `id` sends batches now (a few within half a second).
    async fn samples(&self, id: &str) -> bool {
        let before = self.count(id);
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.count(id) >= before + 2
    }

    async fn stop(self) {
        self.stop.cancel();
        within(self.sensors.stopped()).await;
    }
}

fn stored(dir: &std::path::Path) -> Option<Vec<u8>> {
    std::fs::read(store::path(dir)).ok()
}

#[tokio::test]
async fn a_document_applies_live_adds_changes_and_removes_and_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hub = Hub::start(d, ManagedConfig::default());
    assert_eq!(hub.sensors.names(), ["file.local"]);

    let mut web = SensorConfig {
        name: Some("web".into()),
        url: Some("http://127.0.0.1:9/health".into()),
        username: Some("monitor".into()),
        ..SensorConfig::new(SensorKind::Http)
    };
    web.password = Some(outpost_shared::keys::Secret::new(
        outpost_shared::keys::seal(keys().hub.public(), "hunter2").unwrap(),
    ));
    let v1 = signed(1, vec![file(d, "a"), file(d, "b"), web]);
    let (status, report) = within(hub.apply(&v1)).await;
    assert_eq!(status, CommandStatus::Done, "{report:?}");
    assert_eq!(report, ApplyReport { running: Some(1), delivered: 1, problems: vec![] });
    assert_eq!(hub.sensors.names(), ["file.local", "file.a", "file.b", "http.web"]);
    let running = hub.sensors.configs();
    assert_eq!(
        running[3].password.as_ref().map(|p| p.expose().to_string()),
        Some("hunter2".into()),
        "the sensor runs with the unsealed password"
    );
    let on_disk = String::from_utf8(stored(d).expect("the document is stored")).unwrap();
    assert!(!on_disk.contains("hunter2"), "the stored document holds the password in clear");
    assert_eq!(*hub.managed.status().borrow(), ManagedStatus { version: Some(1), problem: None });
    assert!(hub.samples("file.a").await && hub.samples("file.b").await);

    // b changed (slower), c added, http removed, a and the local sensor untouched.
    let slower = SensorConfig { interval: Some(Duration::from_secs(3600)), ..file(d, "b") };
    let (status, _) = within(hub.apply(&signed(2, vec![file(d, "a"), slower, file(d, "c")]))).await;
    assert_eq!(status, CommandStatus::Done);
    assert_eq!(hub.sensors.names(), ["file.local", "file.a", "file.b", "file.c"]);
    assert!(hub.samples("file.c").await, "an added sensor does not run");
    assert!(!hub.samples("file.b").await, "a changed sensor kept its old interval");

    let (status, _) = within(hub.apply(&signed(3, vec![file(d, "a")]))).await;
    assert_eq!(status, CommandStatus::Done);
    assert_eq!(hub.sensors.names(), ["file.local", "file.a"]);
    assert!(!hub.samples("file.c").await, "a removed sensor keeps sampling");
    assert!(hub.samples("file.a").await && hub.samples("file.local").await);
    hub.stop().await;
}

#[tokio::test]
async fn every_refused_document_changes_nothing_running_or_stored() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let k = keys();
    let hub = Hub::start(d, ManagedConfig::default());
    let (status, _) = within(hub.apply(&signed(5, vec![file(d, "a")]))).await;
    assert_eq!(status, CommandStatus::Done);
    let on_disk = stored(d).unwrap();

    let bad_threshold = SensorConfig { warn: Some(90.0), error: Some(80.0), ..file(d, "b") };
    let mut foreign = SensorConfig {
        name: Some("web".into()),
        url: Some("http://127.0.0.1:9/".into()),
        username: Some("monitor".into()),
        ..SensorConfig::new(SensorKind::Http)
    };
    foreign.password = Some(outpost_shared::keys::Secret::new(
        outpost_shared::keys::seal(k.other_hub.public(), "hunter2").unwrap(),
    ));
    let plugin = SensorConfig {
        name: Some("raid".into()),
        command: Some(crate::sensors::CommandLine::Argv(vec!["/bin/true".into()])),
        ..SensorConfig::new(SensorKind::Command)
    };
    let unknown_kind = json!({
        "machine": k.hub.machine_id(), "version": 9, "issued_at": Utc::now(), "issued_by": "user:alice",
        "sensors": [{"kind": "file", "name": "a", "path": d.join("watched")}, {"kind": "teleport", "name": "x"}],
    });
    std::fs::write(d.join("ca.pem"), b"not a certificate").unwrap();
    let unbuildable = SensorConfig {
        name: Some("tls".into()),
        url: Some("https://127.0.0.1:9/".into()),
        ca_file: Some(d.join("ca.pem")),
        ..SensorConfig::new(SensorKind::Http)
    };
    let cases: Vec<(&str, Signed<SensorDocument>, &str)> = vec![
        (
            "signed by another key",
            Signed::sign(&k.impostor, &document(&k.hub, 9, vec![])).unwrap(),
            "signature",
        ),
        ("older version", signed(4, vec![]), "version: v4 is not newer than v5"),
        ("same version, other content", signed(5, vec![]), "version: v5"),
        ("other machine", Signed::sign(&k.cloud, &document(&k.other_hub, 9, vec![])).unwrap(), "machine:"),
        ("bad threshold", signed(9, vec![file(d, "a"), bad_threshold]), "sensor[1].warn"),
        ("unknown kind", signed_raw(unknown_kind), "sensor[1]: unknown variant `teleport`"),
        ("password sealed to another machine", signed(9, vec![foreign]), "sensor[0].password"),
        (
            "local conflict",
            signed(9, vec![file(d, "local")]),
            "sensor[0].name: `file.local` is also the hub's local sensor[0]",
        ),
        ("command sensor not allowed", signed(9, vec![plugin]), "sensor[0].kind"),
        ("a CA file that does not load", signed(9, vec![file(d, "a"), unbuildable]), "sensor[1].ca_file:"),
    ];
    for (what, doc, expected) in cases {
        let (status, report) = within(hub.apply(&doc)).await;
        assert_eq!(status, CommandStatus::Refused, "{what}: {report:?}");
        assert!(
            report.problems.iter().any(|p| p.contains(expected)),
            "{what}: expected {expected:?} in {report:?}"
        );
        assert_eq!(report.running, Some(5), "{what}");
        assert_eq!(hub.sensors.names(), ["file.local", "file.a"], "{what}: the running set changed");
        assert_eq!(stored(d).unwrap(), on_disk, "{what}: the stored document changed");
        let problem = hub.managed.status().borrow().problem.clone().unwrap_or_default();
        assert!(problem.contains(expected), "{what}: status.json would not show why: {problem}");
    }
    for (what, params) in [("no document", json!({})), ("not a document", json!({"document": "v6"}))] {
        let (status, report) = within(hub.apply_params(params)).await;
        assert_eq!(status, CommandStatus::Refused, "{what}");
        assert!(report.problems[0].starts_with("document:"), "{what}: {report:?}");
    }
    // A document of many broken sensors gets a bounded answer.
    let broken = (0..200).map(|i| SensorConfig { warn: Some(-1.0), ..file(d, &format!("s{i}")) }).collect();
    let (status, report) = within(hub.apply(&signed(9, broken))).await;
    assert_eq!(status, CommandStatus::Refused);
    assert_eq!(report.problems.len(), 51, "{:?}", report.problems.last());
    assert!(report.problems[50].contains("150 more"), "{:?}", report.problems[50]);
    assert!(hub.samples("file.a").await, "the last good document stopped running");
    assert_eq!(hub.managed.status().borrow().version, Some(5));

    // The same document delivered again (its answer was lost) is done, and changes nothing.
    let v6 = signed(6, vec![file(d, "a"), file(d, "b")]);
    assert_eq!(within(hub.apply(&v6)).await.0, CommandStatus::Done);
    let before = stored(d).unwrap();
    let (status, report) = within(hub.apply(&v6)).await;
    assert_eq!((status, report.running), (CommandStatus::Done, Some(6)));
    assert_eq!(stored(d).unwrap(), before);
    hub.stop().await;
}

#[tokio::test]
async fn local_rules_refuse_what_the_owner_did_not_allow() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    let off = Hub::start(d, ManagedConfig { enabled: false, ..Default::default() });
    let (status, report) = within(off.apply(&signed(1, vec![file(d, "a")]))).await;
    assert_eq!(status, CommandStatus::Refused);
    assert!(report.problems[0].starts_with("managed.enabled"), "{report:?}");
    assert_eq!(off.sensors.names(), ["file.local"]);
    assert_eq!(stored(d), None, "a refused document was stored");
    off.stop().await;

    let protected = ManagedConfig { protected: vec!["file.a".into(), "file.p".into()], ..Default::default() };
    let hub = Hub::start(d, protected);
    for (doc, expected) in [
        (
            signed(1, vec![file(d, "p")]),
            "sensor[0].name: `file.p` is protected on this hub (managed.protected); the cloud may not add it",
        ),
        (signed(1, vec![file(d, "a")]), "may not add it"),
    ] {
        let (status, report) = within(hub.apply(&doc)).await;
        assert_eq!(status, CommandStatus::Refused);
        assert!(report.problems.iter().any(|p| p.contains(expected)), "{report:?}");
    }
    assert_eq!(hub.sensors.names(), ["file.local"]);
    assert_eq!(stored(d), None);
    hub.stop().await;

    let allowed = Hub::start(d, ManagedConfig { allow_commands: true, ..Default::default() });
    let plugin = SensorConfig {
        name: Some("ok".into()),
        command: Some(crate::sensors::CommandLine::Argv(vec!["/bin/true".into()])),
        interval: Some(Duration::from_secs(3600)),
        ..SensorConfig::new(SensorKind::Command)
    };
    let (status, report) = within(allowed.apply(&signed(1, vec![plugin]))).await;
    assert_eq!(status, CommandStatus::Done, "{report:?}");
    assert_eq!(allowed.sensors.names(), ["file.local", "cmd.ok"]);
    allowed.stop().await;
}

#[tokio::test]
async fn a_protected_sensor_the_cloud_runs_already_may_be_neither_changed_nor_removed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hub = Hub::start(d, ManagedConfig::default());
    assert_eq!(within(hub.apply(&signed(1, vec![file(d, "a")]))).await.0, CommandStatus::Done);
    hub.stop().await;
    // The owner protects it afterwards; after the restart the stored document still runs.
    let hub = Hub::start(d, ManagedConfig { protected: vec!["file.a".into()], ..Default::default() });
    assert_eq!(hub.sensors.names(), ["file.local", "file.a"]);
    let changed = SensorConfig { interval: Some(Duration::from_secs(60)), ..file(d, "a") };
    for (doc, expected) in [
        (signed(2, vec![changed]), "may not change it"),
        (signed(2, vec![]), "sensors: `file.a` is protected"),
    ] {
        let (status, report) = within(hub.apply(&doc)).await;
        assert_eq!(status, CommandStatus::Refused);
        assert!(report.problems.iter().any(|p| p.contains(expected)), "{report:?}");
    }
    assert_eq!(within(hub.apply(&signed(2, vec![file(d, "a"), file(d, "b")]))).await.0, CommandStatus::Done);
    hub.stop().await;
}

#[tokio::test]
async fn after_a_restart_the_stored_document_runs_without_any_cloud_and_old_versions_stay_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hub = Hub::start(d, ManagedConfig::default());
    assert_eq!(within(hub.apply(&signed(1, vec![file(d, "a")]))).await.0, CommandStatus::Done);
    assert_eq!(within(hub.apply(&signed(2, vec![file(d, "b")]))).await.0, CommandStatus::Done);
    hub.stop().await;

    // Start again: no cloud anywhere, only the key pinned at enrollment.
    let hub = Hub::start(d, ManagedConfig::default());
    assert_eq!(hub.sensors.names(), ["file.local", "file.b"]);
    assert!(hub.samples("file.b").await);
    assert_eq!(hub.managed.status().borrow().version, Some(2));
    let (status, report) = within(hub.apply(&signed(1, vec![file(d, "a")]))).await;
    assert_eq!(status, CommandStatus::Refused, "a replayed older version after a restart: {report:?}");
    hub.stop().await;

    // The owner turned managed sensors off meanwhile: local sensors only, and why is reported,
    // while the version floor stays.
    let local = Local {
        policy: ManagedConfig { enabled: false, ..Default::default() },
        sensors: vec![file(d, "local")],
        defaults: false,
        relay: None,
    };
    let loaded = load(d, &keys().hub, Some(keys().cloud.public()), &local);
    assert!(loaded.accepted.is_none());
    assert_eq!(loaded.floor, Some(2));
    assert!(loaded.problem.as_deref().unwrap().contains("managed.enabled"), "{:?}", loaded.problem);

    // Another cloud key (enrolled elsewhere): the stored document is not trusted.
    let local = Local { policy: ManagedConfig::default(), ..local };
    let loaded = load(d, &keys().hub, Some(keys().impostor.public()), &local);
    assert!(loaded.accepted.is_none() && loaded.problem.as_deref().unwrap().contains("signature"));
    let loaded = load(d, &keys().hub, None, &local);
    assert!(loaded.accepted.is_none() && loaded.problem.as_deref().unwrap().contains("not enrolled"));
}

#[tokio::test]
async fn a_stop_between_storing_and_applying_starts_with_the_new_document_and_a_torn_file_with_none() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hub = Hub::start(d, ManagedConfig::default());
    assert_eq!(within(hub.apply(&signed(1, vec![file(d, "a")]))).await.0, CommandStatus::Done);
    hub.stop().await;
    // What a kill -9 right after the store step leaves: v2 on disk, never applied, and the
    // temp file of a later write cut short.
    store::write(d, &signed(2, vec![file(d, "b")])).unwrap();
    std::fs::write(d.join(format!("{MANAGED_FILE}.tmp")), b"{\"kind\":\"sensor-docu").unwrap();
    let hub = Hub::start(d, ManagedConfig::default());
    assert_eq!(hub.sensors.names(), ["file.local", "file.b"]);
    hub.stop().await;

    // A damaged file (not one the hub wrote): local sensors only, with the reason; no crash.
    std::fs::write(store::path(d), b"{\"kind\":\"sensor-docu").unwrap();
    let hub = Hub::start(d, ManagedConfig::default());
    assert_eq!(hub.sensors.names(), ["file.local"]);
    let problem = hub.managed.status().borrow().problem.clone().unwrap();
    assert!(problem.contains("damaged"), "{problem}");
    // The cloud can still deliver a good one, and hears about the damaged file when refusing.
    let (status, report) = within(hub.apply(&signed(3, vec![file(d, "x"), file(d, "x")]))).await;
    assert_eq!(status, CommandStatus::Refused);
    assert!(report.problems.iter().any(|p| p.starts_with("on start:")), "{report:?}");
    assert_eq!(within(hub.apply(&signed(3, vec![file(d, "c")]))).await.0, CommandStatus::Done);
    assert_eq!(hub.sensors.names(), ["file.local", "file.c"]);
    hub.stop().await;
}

#[test]
fn built_in_defaults_yield_to_a_managed_sensor_of_the_same_id_explicit_local_ones_do_not() {
    let cpu = SensorConfig { warn: Some(70.0), ..SensorConfig::new(SensorKind::Cpu) };
    let defaults = Local {
        policy: ManagedConfig::default(),
        sensors: crate::sensors::default_sensors(),
        defaults: true,
        relay: None,
    };
    let all = defaults.combined(std::slice::from_ref(&cpu));
    assert_eq!(all.iter().filter(|s| s.id() == "cpu").count(), 1);
    assert_eq!(all.last(), Some(&cpu));
    let k = keys();
    let doc = signed(1, vec![cpu.clone()]);
    let none = Baseline { floor: None, running: None, sensors: &[] };
    assert!(check(&doc, k.cloud.public(), &k.hub, &defaults, none).is_ok());
    let explicit = Local { defaults: false, ..defaults };
    let none = Baseline { floor: None, running: None, sensors: &[] };
    let refused = check(&doc, k.cloud.public(), &k.hub, &explicit, none).err().unwrap();
    assert!(refused.problems[0].contains("also the hub's local sensor[0]"), "{refused:?}");
}

#[test]
fn the_managed_section_is_checked_with_errors_naming_the_key() {
    let parse = |text: &str| {
        outpost_shared::config::parse::<crate::HubConfig>(text, std::path::Path::new("hub.toml"))
    };
    let default = parse(crate::config::DEFAULT_CONFIG).expect("the default config is valid");
    assert_eq!(default.managed, ManagedConfig::default());
    assert!(default.managed.enabled && !default.managed.allow_commands);

    let ok = parse("[managed]\nenabled = false\nprotected = [\"cpu\", \"tcp.db\"]\nallow_commands = true\n")
        .unwrap();
    assert!(!ok.managed.enabled && ok.managed.allow_commands && ok.managed.is_protected("tcp.db"));

    let bad =
        parse("[managed]\nprotected = [\"tcp.db\", \"has space\", \"tcp.db\"]\n").unwrap_err().to_string();
    assert!(bad.contains("managed.protected[1]") && bad.contains("`has space` is not a sensor id"), "{bad}");
    assert!(bad.contains("managed.protected[2]") && bad.contains("listed twice"), "{bad}");
    let unknown = parse("[managed]\nallow_command = true\n").unwrap_err().to_string();
    assert!(unknown.contains("allow_command"), "{unknown}");
}

/// The whole hub, started from its config with no uplink at all: it runs the stored document
/// (checked against the enrollment's cloud key on disk) beside its local sensor, and says so in
/// `status.json`.
#[tokio::test]
async fn a_hub_starts_with_its_stored_document_and_no_cloud() {
    use outpost_shared::keys::EnrollmentReceipt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let k = keys();
    let key = crate::trust::machine_key(&d.join(crate::trust::KEY_FILE)).unwrap();
    let receipt = EnrollmentReceipt {
        machine_id: key.machine_id().clone(),
        network_id: "net".into(),
        connectors: vec![],
        cloud_key: k.cloud.machine_id().clone(),
        issued_at: Utc::now(),
        role: Some(outpost_shared::model::Role::Sensorhub),
    };
    let enrollment = json!({
        "receipt": Signed::sign(&k.cloud, &receipt).unwrap(),
        "cloud_key": k.cloud.public().to_pem(),
    });
    std::fs::write(d.join(crate::trust::ENROLLMENT_FILE), enrollment.to_string()).unwrap();
    let doc = Signed::sign(&k.cloud, &document(&key, 4, vec![file(d, "b")])).unwrap();
    store::write(d, &doc).unwrap();

    let mut config =
        crate::HubConfig { data_dir: d.to_path_buf(), sensors: vec![file(d, "local")], ..Default::default() };
    config.uplink.discover = false;
    config.uplink.advertise = false;
    let stop = CancellationToken::new();
    let hub = crate::start(config, stop.clone()).await.unwrap();
    assert_eq!(hub.sensors.names(), ["file.local", "file.b"]);
    assert_eq!(hub.managed.status().borrow().version, Some(4));
    let status = within(async {
        loop {
            if let Ok(b) = std::fs::read(d.join(crate::STATUS_FILE)) {
                if let Ok(s) = serde_json::from_slice::<crate::StatusFile>(&b) {
                    return s;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(status.managed_version, Some(4));
    stop.cancel();
    within(hub.join()).await;
}

fn relay_document(version: u64, relays: Vec<RelaySettings>) -> Signed<SensorDocument> {
    let k = keys();
    let doc = SensorDocument { relays, ..document(&k.hub, version, vec![]) };
    Signed::sign(&k.cloud, &doc).unwrap()
}

/// Waits for a relay reading of `sensor` whose message is `message`.
#[cfg(unix)]
async fn relay_reading(rx: &mut tokio::sync::mpsc::Receiver<Batch>, sensor: &str, message: &str) {
    within(async {
        while let Some(b) = rx.recv().await {
            if b.samples.iter().any(|s| s.sensor == sensor && s.message.as_deref() == Some(message)) {
                return;
            }
        }
        panic!("the relay poller stopped before `{sensor}` said `{message}`");
    })
    .await
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_names_locks_and_restores_relays_live_but_never_lifts_what_the_hub_file_says() {
    let sim_dir = tempfile::tempdir().unwrap();
    let sim = crate::relay::run_simulator(1, Some(sim_dir.path().join("ttyRELAY0"))).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The hub's own file: K1 is the pump, locked, switched on again after a power loss.
    let mut own = RelayConfig::new(sim.path());
    own.poll_interval = Duration::from_millis(100);
    own.relays.push(RelaySettings {
        name: Some("pump".into()),
        locked: true,
        restore: Restore::On,
        ..RelaySettings::new(1, 1)
    });
    let local = Local {
        policy: ManagedConfig::default(),
        sensors: vec![file(d, "local")],
        defaults: false,
        relay: Some(own.clone()),
    };
    let loaded = load(d, &keys().hub, Some(keys().cloud.public()), &local);
    let (tx, mut readings) = tokio::sync::mpsc::channel(256);
    let stop = CancellationToken::new();
    let (relays, _poller) = Relays::start(own, tx, stop.clone().cancelled_owned());
    let hub = Hub::start_with_relays(d, local.clone(), loaded, Some(relays.clone()));
    let switch = |relay: u8, on: bool| hub.command("relay.set", json!({"card": 1, "relay": relay, "on": on}));

    // A fresh simulator is a chain that just got power: the hub's rule switched K1 on.
    assert_eq!(within(relays.handle.get(1)).await.unwrap(), 0b01);
    assert_eq!(switch(2, true).await.status, CommandStatus::Done, "K2 is free to switch");
    assert_eq!(switch(1, true).await.status, CommandStatus::Refused, "K1 is locked by the hub's file");

    // The cloud names and locks K2, and says K1 need not be locked: the name and the lock take
    // effect without a restart, the hub's own lock stays.
    let v1 = relay_document(
        1,
        vec![
            RelaySettings { name: Some("fan".into()), locked: true, ..RelaySettings::new(1, 2) },
            RelaySettings { locked: false, ..RelaySettings::new(1, 1) },
        ],
    );
    let (status, report) = hub.apply(&v1).await;
    assert_eq!(status, CommandStatus::Done, "{report:?}");
    let refused = switch(2, false).await;
    assert_eq!(refused.status, CommandStatus::Refused, "the cloud's lock holds from the next command");
    assert_eq!(sim.states(1), 0b11, "K2 did not move");
    assert_eq!(switch(1, true).await.status, CommandStatus::Refused, "the hub's own lock is never lifted");
    relay_reading(&mut readings, "relay.1.k2", "fan: on").await;
    relay_reading(&mut readings, "relay.1.k1", "pump: on").await;

    // Renaming the hub's pump or changing its restore rule is a conflict: refused whole, said why,
    // and the settings in force stay.
    let v2 = relay_document(
        2,
        vec![RelaySettings { name: Some("water".into()), restore: Restore::Off, ..RelaySettings::new(1, 1) }],
    );
    let (status, report) = hub.apply(&v2).await;
    assert_eq!(status, CommandStatus::Refused);
    assert_eq!(report.running, Some(1));
    let said = report.problems.join("; ");
    assert!(said.contains("relays[0].name") && said.contains("`pump`"), "{said}");
    assert!(said.contains("relays[0].restore"), "{said}");
    assert_eq!(switch(2, false).await.status, CommandStatus::Refused, "v1's lock still holds");

    // v3 drops the cloud's lock and asks K2 back on after a power loss: K2 switches again, and
    // when the card loses power both the hub's rule (K1) and the cloud's (K2) are restored.
    let v3 = relay_document(3, vec![RelaySettings { restore: Restore::On, ..RelaySettings::new(1, 2) }]);
    let (status, report) = hub.apply(&v3).await;
    assert_eq!(status, CommandStatus::Done, "{report:?}");
    assert_eq!(switch(2, false).await.status, CommandStatus::Done, "the cloud lifted its own lock");
    assert_eq!(sim.states(1), 0b01);
    sim.power_cycle(1);
    assert_eq!(within(relays.handle.get(1)).await.unwrap(), 0b11, "both restore rules applied");

    stop.cancel();
    hub.stop().await;
    relays.handle.shutdown().await;

    // After a restart, with no cloud, the stored document's relay settings are those the hub
    // starts its cards with.
    let again = load(d, &keys().hub, Some(keys().cloud.public()), &local);
    let relays = again.accepted.expect("v3 stored").relays.expect("the hub has relay cards");
    assert_eq!(relays.relay(1, 2).map(|r| r.restore), Some(Restore::On));
    assert_eq!(relays.relay(1, 1).map(|r| (r.locked, r.restore)), Some((true, Restore::On)));
}

#[tokio::test]
async fn relay_settings_for_a_hub_without_relay_cards_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path(), ManagedConfig::default());
    let doc = relay_document(1, vec![RelaySettings { locked: true, ..RelaySettings::new(1, 1) }]);
    let (status, report) = hub.apply(&doc).await;
    assert_eq!(status, CommandStatus::Refused);
    assert!(
        report.problems.iter().any(|p| p.starts_with("relays: this hub has no [relay] section")),
        "{report:?}"
    );
    assert_eq!(report.running, None);
    hub.stop().await;
}
