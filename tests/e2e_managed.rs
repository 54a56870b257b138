//! Sensors managed from the cloud, end to end with the real binary: an HTTP check with a
//! basic-auth password added on the dashboard (real Chromium) runs on a hub behind a connector
//! without a restart, and its password is found in no file, log or answer of the cloud's and
//! connector's; a template reaches three hubs, edits and removals follow, seqs stay gap-free; a
//! hub offline during changes catches up, and runs its document after a restart without the
//! cloud; documents a misbehaving cloud might send are refused by the hub, which says why.

mod common;

use base64::Engine as _;
use common::browser::{available, Browser};
use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

/// A web server on loopback that answers 200 "healthy" to basic auth `user:password` and 401 to
/// anything else, counting the requests that had the right password.
struct AuthServer {
    port: u16,
    good: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl AuthServer {
    fn start(user: &str, password: &str) -> AuthServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let expected = format!(
            "authorization: basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )
        .to_ascii_lowercase();
        let good = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = good.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = vec![0u8; 8192];
                let mut n = 0;
                while n < buf.len() {
                    match s.read(&mut buf[n..]) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => n += k,
                    }
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                let head = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
                let ok = head.lines().any(|l| l.trim() == expected);
                if ok {
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                let answer = if ok {
                    "HTTP/1.1 200 OK\r\ncontent-length: 7\r\nconnection: close\r\n\r\nhealthy"
                } else {
                    "HTTP/1.1 401 Unauthorized\r\nwww-authenticate: Basic realm=\"t\"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                };
                let _ = s.write_all(answer.as_bytes());
            }
        });
        AuthServer { port, good }
    }

    fn good_requests(&self) -> usize {
        self.good.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The latest reading of one sensor, if the cloud has one.
fn latest(cloud: &CloudProc, machine: &str, sensor: &str) -> Option<Value> {
    let (status, v) = cloud.request("GET", &format!("/v1/machines/{machine}/sensors"), None);
    if status != 200 {
        return None;
    }
    v.as_array()?.iter().find(|s| s["sensor"] == sensor).cloned()
}

fn managed(cloud: &CloudProc, machine: &str) -> Value {
    cloud.api(&format!("/v1/machines/{machine}/managed"))
}

fn status_text(cloud: &CloudProc, machine: &str) -> String {
    managed(cloud, machine)["status"]["text"].as_str().unwrap_or_default().to_string()
}

fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The files under `dir` that hold `needle`.
fn holding(dir: &Path, needle: &str) -> Vec<String> {
    files(dir)
        .into_iter()
        .filter(|f| std::fs::read(f).is_ok_and(|b| contains(&b, needle.as_bytes())))
        .map(|f| f.display().to_string())
        .collect()
}

#[test]
fn an_http_check_with_a_password_added_on_the_dashboard_runs_on_the_hub_and_the_password_is_nowhere() {
    if !available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let password = format!("pw-{}", std::process::id() as u64 * 7919 + 424242);
    let user = "monitor";
    let web = AuthServer::start(user, &password);
    let cloud = CloudProc::start(&dir.path().join("cloud"));
    let connector = ConnectorProc::start(&dir.path().join("connector"), &cloud, "");
    let hub_dir = dir.path().join("hub");
    let hub = start_hub(&hub_dir, &hub_config_with(&hub_dir, &cloud, "", &connector.hub_uplink()));
    let id = machine_id(&hub_dir);
    wait_until(Duration::from_secs(30), "the hub's readings reach the cloud", || {
        latest(&cloud, &id, "cpu.total").is_some()
    });

    let browser = Browser::start();
    browser.set_window_size(1400, 1400);
    common::console::sign_in_as_owner(&browser, &cloud);
    browser.wait_for(
        Duration::from_secs(15),
        "the hub is listed",
        &format!("return !!document.querySelector('tr.machine[data-id=\"{id}\"]')"),
    );
    browser.click(&format!("tr.machine[data-id=\"{id}\"]"));
    browser.wait_for(
        Duration::from_secs(15),
        "the managed sensors panel shows, with nothing managed yet",
        "return document.getElementById('mstatus').textContent === 'no managed sensors' \
           && document.getElementById('mkind').options.length > 10",
    );
    browser.eval("const k = document.getElementById('mkind'); k.value = 'http'; return true");
    browser.click("#madd");
    browser.wait_for(
        Duration::from_secs(5),
        "the http form shows its fields with help, the password write-only",
        "const f = document.getElementById('mform'); return !!f && f.dataset.kind === 'http' \
           && document.getElementById('mf-password').type === 'password' \
           && !!document.getElementById('mf-url') && f.textContent.includes('basic authentication')",
    );
    let fill = |key: &str, value: &str| {
        browser.eval(&format!(
            "document.getElementById('mf-{key}').value = {}; return true",
            serde_json::to_string(value).unwrap()
        ));
    };
    // First a bad threshold: the cloud refuses it, naming the field, and saves nothing.
    fill("name", "intranet");
    fill("url", &format!("http://127.0.0.1:{}/health", web.port));
    fill("interval", "1s");
    fill("username", user);
    fill("password", &password);
    fill("warn", "900");
    fill("error", "100");
    browser.click("#mformsave");
    browser.wait_for(
        Duration::from_secs(10),
        "the refusal names the field",
        "return document.getElementById('mformerr').textContent.includes('sensor[http.intranet].warn')",
    );
    assert_eq!(status_text(&cloud, &id), "no managed sensors", "nothing was saved");
    fill("warn", "");
    fill("error", "");
    browser.click("#mformsave");
    browser.wait_for(
        Duration::from_secs(30),
        "the dashboard says the hub applied version 1",
        "return document.getElementById('mstatus').textContent === 'applied v1'",
    );
    // The hub runs it without a restart: readings with the right password arrive.
    wait_until(Duration::from_secs(30), "the check's reading reaches the cloud, ok", || {
        latest(&cloud, &id, "http.intranet.status").is_some_and(|r| r["state"] == "ok")
    });
    assert!(web.good_requests() > 0, "the web server saw the right password");
    browser.wait_for(
        Duration::from_secs(30),
        "the reading shows in the machine's sensor table",
        "return !!document.querySelector('tr.sensor[data-sensor=\"http.intranet.status\"]')",
    );
    assert_eq!(hub_pid_alive(&hub), (), "the hub was not restarted");

    // Test now: a sample-now of the new sensor, its result shown.
    browser.click("button.mtestnow[data-id=\"http.intranet\"]");
    browser.wait_for(
        Duration::from_secs(30),
        "the test's result is shown",
        "return document.getElementById('mtest').dataset.status === 'done'",
    );
    browser.wait_for(
        Duration::from_secs(10),
        "the history lists the change",
        "return document.querySelector('tr.mversion[data-version=\"1\"]').textContent.includes('added http.intranet')",
    );
    // `OUTPOST_SCREENSHOTS` (a directory) keeps the picture, to look at the layout by eye.
    let shots = std::env::var_os("OUTPOST_SCREENSHOTS").map(std::path::PathBuf::from);
    browser.screenshot(&shots.unwrap_or_else(|| dir.path().to_path_buf()).join("managed.png"));

    // The password: in no answer of the API, no file of the cloud's or connector's data
    // directories, and no log (the hub's log included).
    let mut answers = String::new();
    for path in [
        format!("/v1/machines/{id}/managed"),
        format!("/v1/machines/{id}/managed/history"),
        "/v1/audit".to_string(),
        format!("/v1/audit?machine={id}"),
        "/v1/templates".to_string(),
        format!("/v1/machines/{id}/sensors"),
    ] {
        answers += &cloud.api(&path).to_string();
    }
    for c in cloud.api(&format!("/v1/audit?machine={id}")).as_array().unwrap() {
        if let Some(cmd) = c["command_id"].as_str().filter(|c| !c.is_empty()) {
            answers += &cloud.api(&format!("/v1/commands/{cmd}")).to_string();
        }
    }
    assert!(answers.contains("http.intranet") && answers.contains(user), "the answers were read");
    assert!(!answers.contains(&password), "an API answer holds the password");
    assert!(!answers.contains("sealed:v1:"), "an API answer holds even the sealed password");
    let found: Vec<String> = [dir.path().join("cloud"), dir.path().join("connector"), hub_dir.clone()]
        .iter()
        .flat_map(|d| holding(d, &password))
        .collect();
    assert!(found.is_empty(), "the password is in {found:?}");
    // The files were searchable: the user name is stored in clear on the cloud.
    assert!(!holding(&dir.path().join("cloud/data"), user).is_empty(), "the cloud's files were read");
    drop(hub);
}

/// The hub process is still the one started (a restart would be a new process).
fn hub_pid_alive(hub: &Proc) {
    assert!(Path::new(&format!("/proc/{}", hub.child.id())).exists(), "the hub process ended");
}

/// Starts a hub in `dir` reporting to `cloud` with a fast cpu sensor, returns it and its id once
/// the cloud knows the machine (before its first upload, the machine's API answers 404).
fn hub(dir: &Path, cloud: &CloudProc, extra: &str) -> (Proc, String) {
    let cfg = hub_config(dir, cloud, &format!("[[sensor]]\nkind = \"cpu\"\ninterval = \"500ms\"\n{extra}"));
    let p = start_hub(dir, &cfg);
    let id = machine_id(dir);
    wait_until(Duration::from_secs(60), "the cloud knows the hub", || machine(cloud, &id).is_some());
    (p, id)
}

fn tcp(name: &str, port: u16) -> Value {
    json!({"kind": "tcp", "name": name, "host": "127.0.0.1", "port": port, "interval": "500ms"})
}

fn post(cloud: &CloudProc, path: &str, body: Value) -> Value {
    let (status, v) = cloud.api_post(path, body);
    assert!((200..300).contains(&status), "POST {path}: {status} {v}");
    v
}

fn put(cloud: &CloudProc, path: &str, body: Value) -> Value {
    let (status, v) = cloud.request("PUT", path, Some(&body));
    assert!((200..300).contains(&status), "PUT {path}: {status} {v}");
    v
}

/// The newest reading time of a sensor, if any.
fn newest(cloud: &CloudProc, machine: &str, sensor: &str) -> Option<String> {
    latest(cloud, machine, sensor).and_then(|r| r["ts"].as_str().map(str::to_string))
}

#[test]
fn a_template_reaches_three_hubs_and_its_edits_and_removals_follow_with_gap_free_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = target.local_addr().unwrap().port();
    let cloud = CloudProc::start(&dir.path().join("cloud"));
    let hubs: Vec<(std::path::PathBuf, Proc, String)> = (0..3)
        .map(|i| {
            let d = dir.path().join(format!("hub{i}"));
            let (p, id) = hub(&d, &cloud, "");
            (d, p, id)
        })
        .collect();
    post(
        &cloud,
        "/v1/templates",
        json!({"name": "db server", "sensors": [tcp("a", port), tcp("b", port), tcp("c", port)]}),
    );
    for (_, _, id) in &hubs {
        put(&cloud, &format!("/v1/machines/{id}/managed/templates"), json!({"templates": ["db server"]}));
    }
    for (_, _, id) in &hubs {
        wait_until(Duration::from_secs(30), "each hub applies version 1 and its three checks report", || {
            status_text(&cloud, id) == "applied v1"
                && ["tcp.a", "tcp.b", "tcp.c"].iter().all(|s| latest(&cloud, id, s).is_some())
        });
    }
    // Edit: b checks a closed port now (an error), c goes. The hubs keep a running.
    let closed = free_port();
    let before: Vec<String> = hubs.iter().map(|(_, _, id)| newest(&cloud, id, "tcp.a").unwrap()).collect();
    let v = put(&cloud, "/v1/templates/db%20server", json!({"sensors": [tcp("a", port), tcp("b", closed)]}));
    assert_eq!(v["versions"].as_object().unwrap().len(), 3, "every hub got a new version: {v}");
    for (i, (_, _, id)) in hubs.iter().enumerate() {
        wait_until(Duration::from_secs(30), "each hub applies version 2: b fails, a goes on", || {
            status_text(&cloud, id) == "applied v2"
                && latest(&cloud, id, "tcp.b").is_some_and(|r| r["state"] == "error")
                && newest(&cloud, id, "tcp.a").is_some_and(|t| t > before[i])
        });
    }
    // c stopped: no reading of it after the hub applied v2.
    let c_last: Vec<String> = hubs.iter().map(|(_, _, id)| newest(&cloud, id, "tcp.c").unwrap()).collect();
    std::thread::sleep(Duration::from_secs(3));
    for (i, (_, _, id)) in hubs.iter().enumerate() {
        assert_eq!(newest(&cloud, id, "tcp.c").unwrap(), c_last[i], "tcp.c still runs on hub {i}");
        assert!(newest(&cloud, id, "tcp.a").unwrap() > c_last[i], "tcp.a keeps running on hub {i}");
    }
    // Every reading arrived once: seqs continue without a gap or a repeat across the changes.
    for (d, p, id) in hubs {
        assert!(p.stop().success());
        let stats = buffer_stats(&d);
        wait_until(Duration::from_secs(30), "the last readings are in the cloud", || {
            all_seqs(&cloud, &id).len() as u64 + 1 >= stats["next_seq"].as_u64().unwrap()
        });
        assert_exactly_once(&cloud, &id, stats["next_seq"].as_u64().unwrap());
    }
}

#[test]
fn a_hub_offline_during_changes_applies_the_newest_when_back_and_after_a_restart_without_the_cloud() {
    let dir = tempfile::tempdir().unwrap();
    let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = target.local_addr().unwrap().port();
    let mut cloud = CloudProc::start(&dir.path().join("cloud"));
    let hub_dir = dir.path().join("hub");
    let (p, id) = hub(&hub_dir, &cloud, "");
    post(&cloud, &format!("/v1/machines/{id}/managed/sensors"), tcp("one", port));
    wait_until(Duration::from_secs(30), "version 1 applied", || status_text(&cloud, &id) == "applied v1");
    assert!(p.stop().success());

    // Two changes while the hub is away.
    post(&cloud, &format!("/v1/machines/{id}/managed/sensors"), tcp("two", port));
    let (status, _) = cloud.request("DELETE", &format!("/v1/machines/{id}/managed/sensors/tcp.one"), None);
    assert_eq!(status, 200);
    assert_eq!(status_text(&cloud, &id), "pending v3 (runs v1)");

    let cfg = hub_dir.join("sensorhub.toml");
    let p = start_hub(&hub_dir, &cfg);
    wait_until(Duration::from_secs(60), "back, the hub runs the newest version", || {
        status_text(&cloud, &id) == "applied v3" && latest(&cloud, &id, "tcp.two").is_some()
    });
    assert!(p.stop().success());

    // Without the cloud, the hub runs version 3 from its disk: tcp.two, not tcp.one.
    cloud.stop();
    let down = chrono::Utc::now();
    let p = start_hub(&hub_dir, &cfg);
    std::thread::sleep(Duration::from_secs(4));
    assert!(p.stop().success());
    let up = chrono::Utc::now();
    cloud.restart();
    let p = start_hub(&hub_dir, &cfg);
    let taken_offline = |sensor: &str| -> usize {
        let v = cloud.api(&format!("/v1/machines/{id}/readings?sensor={sensor}&limit=100000"));
        v.as_array()
            .unwrap()
            .iter()
            .filter(|r| {
                let ts = chrono::DateTime::parse_from_rfc3339(r["ts"].as_str().unwrap()).unwrap();
                ts > down && ts < up
            })
            .count()
    };
    wait_until(Duration::from_secs(30), "readings tcp.two took without the cloud arrive", || {
        taken_offline("tcp.two") >= 3
    });
    assert_eq!(taken_offline("tcp.one"), 0, "the removed sensor did not run without the cloud");
    assert!(p.stop().success());
}

/// A sensor document as raw JSON, signed as one: what only a misbehaving (or compromised) cloud
/// could send, since the real one checks every document before it signs it.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
struct RawDoc(Value);

impl outpost_shared::keys::SignedKind for RawDoc {
    const KIND: &'static str = "sensor-document";
}

/// Queues a `sensors.apply` command carrying `doc` (signed by `signer`, the cloud's own key when
/// None) in the stopped cloud's database, as the newest version when `as_version` says so, and
/// starts the cloud again. Returns the command id.
fn forge(
    cloud: &mut CloudProc,
    machine: &str,
    doc: Value,
    signer: Option<&outpost_shared::keys::KeyPair>,
    as_version: bool,
) -> String {
    use outpost_cloud::store::managed::{Delivery, ManagedChange, VersionRecord};
    cloud.stop();
    let data = cloud.dir.join("data");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let id = rt.block_on(async {
        let sled = outpost_cloud::store::sled::SledStore::open(&data.join("db")).unwrap();
        let engines = outpost_cloud::store::Engines::on_sled(sled.clone(), None).unwrap();
        let trust = outpost_cloud::trust::Trust::open(&data, engines.trust.clone()).unwrap();
        let commands = outpost_cloud::commands::Commands::new(engines.commands.clone());
        let managed = engines.managed.clone();
        let signed =
            outpost_shared::keys::Signed::sign(signer.unwrap_or(trust.key()), &RawDoc(doc.clone())).unwrap();
        let version = doc["version"].as_u64().unwrap();
        if as_version {
            let record = VersionRecord {
                machine: machine.to_string(),
                version,
                at: chrono::Utc::now(),
                who: "test:forger".into(),
                change: "forged".into(),
                document: serde_json::from_value(serde_json::to_value(&signed).unwrap()).unwrap(),
            };
            managed.save(ManagedChange { versions: vec![record], ..Default::default() }).await.unwrap();
        }
        let rec = commands
            .create(
                trust.key(),
                machine,
                "sensors.apply",
                json!({"document": signed}),
                Duration::from_secs(600),
                "test:forger",
            )
            .await
            .unwrap();
        managed
            .note_delivery(Delivery {
                machine: machine.to_string(),
                version,
                command: rec.id.clone(),
                at: rec.created_at,
            })
            .await
            .unwrap();
        use outpost_cloud::store::ReadingStore;
        sled.commit().await.unwrap();
        rec.id
    });
    drop(rt);
    cloud.restart();
    id
}

fn command(cloud: &CloudProc, id: &str) -> Value {
    cloud.api(&format!("/v1/commands/{id}"))
}

#[test]
fn documents_a_misbehaving_cloud_might_send_are_refused_by_the_hub_which_keeps_its_sensors_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = target.local_addr().unwrap().port();
    let mut cloud = CloudProc::start(&dir.path().join("cloud"));
    let hub_dir = dir.path().join("hub");
    let (_p, id) = hub(&hub_dir, &cloud, "");
    let other = outpost_shared::keys::KeyPair::generate().unwrap();
    post(&cloud, &format!("/v1/machines/{id}/managed/sensors"), tcp("keep", port));
    wait_until(Duration::from_secs(30), "version 1 applied", || status_text(&cloud, &id) == "applied v1");
    let v1 = cloud.api(&format!("/v1/machines/{id}/managed/history"))[0].clone();
    assert_eq!(v1["version"], 1);

    let doc = |version: u64, machine: &str, sensors: Value| json!({"machine": machine, "version": version, "issued_at": chrono::Utc::now(), "issued_by": "test", "sensors": sensors});
    let keep = json!({"kind": "tcp", "name": "keep", "host": "127.0.0.1", "port": port, "interval": "500ms"});
    let sealed_elsewhere = outpost_shared::keys::seal(other.public(), "secret").unwrap();
    // (version, document, signer, what the hub's refusal must mention)
    let cases: Vec<(Value, Option<&outpost_shared::keys::KeyPair>, &str)> = vec![
        (
            doc(
                2,
                &id,
                json!([keep, {"kind": "tcp", "name": "bad", "host": "h", "port": 1, "warn": 900, "error": 100}]),
            ),
            None,
            "warn",
        ),
        (doc(3, &id, json!([keep, {"kind": "teapot", "name": "t"}])), None, "teapot"),
        (
            doc(
                4,
                &id,
                json!([keep, {"kind": "http", "name": "w", "url": "http://127.0.0.1:1/", "username": "u", "password": sealed_elsewhere}]),
            ),
            None,
            "password",
        ),
        (doc(5, &id, json!([keep])), Some(&other), "sign"),
        (doc(6, &other.machine_id().to_string(), json!([keep])), None, "machine"),
    ];
    for (doc, signer, why) in cases {
        let version = doc["version"].as_u64().unwrap();
        let cmd = forge(&mut cloud, &id, doc, signer, true);
        wait_until(Duration::from_secs(40), "the hub refuses the document", || {
            command(&cloud, &cmd)["status"] == "refused"
        });
        let st = managed(&cloud, &id)["status"].clone();
        assert_eq!(st["state"], "refused", "v{version}: {st}");
        assert_eq!(st["running"], 1, "the hub keeps running version 1: {st}");
        assert!(
            st["text"].as_str().unwrap().to_lowercase().contains(why),
            "v{version}: the reason shows: {st}"
        );
        let audit = cloud.api(&format!("/v1/audit?machine={id}"));
        assert!(
            audit
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["command_id"] == cmd.as_str() && e["event"] == "refused"),
            "the refusal is audited"
        );
    }
    // Through it all the old sensor kept running; a good version is applied again.
    let before = newest(&cloud, &id, "tcp.keep").unwrap();
    wait_until(Duration::from_secs(10), "tcp.keep still reports", || {
        newest(&cloud, &id, "tcp.keep").is_some_and(|t| t > before)
    });
    post(&cloud, &format!("/v1/machines/{id}/managed/sensors"), tcp("after", port));
    wait_until(Duration::from_secs(30), "a good version after the refusals is applied", || {
        status_text(&cloud, &id) == "applied v7" && latest(&cloud, &id, "tcp.after").is_some()
    });
    // An older version played again (version 1, signed by the cloud) changes nothing.
    let replay = version_1(&mut cloud, &id);
    let cmd = forge(&mut cloud, &id, replay, None, false);
    wait_until(Duration::from_secs(40), "the replay is refused", || {
        command(&cloud, &cmd)["status"] == "refused"
    });
    let audit = cloud.api(&format!("/v1/audit?machine={id}"));
    assert!(audit
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["command_id"] == cmd.as_str() && e["event"] == "refused"));
    assert_eq!(status_text(&cloud, &id), "applied v7", "the hub still runs version 7");
    let before = newest(&cloud, &id, "tcp.after").unwrap();
    wait_until(Duration::from_secs(10), "tcp.after still reports", || {
        newest(&cloud, &id, "tcp.after").is_some_and(|t| t > before)
    });
}

/// Version 1 of a machine's document as the cloud keeps it (no answer shows a whole document).
fn version_1(cloud: &mut CloudProc, machine: &str) -> Value {
    use outpost_cloud::store::managed::ManagedStore;
    cloud.stop();
    let data = cloud.dir.join("data");
    let doc = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let sled = outpost_cloud::store::sled::SledStore::open(&data.join("db")).unwrap();
        let managed =
            outpost_cloud::store::sled::managed::SledManaged::open(sled.db(), sled.flusher()).unwrap();
        managed.version(machine, 1).await.unwrap().expect("version 1 is kept").document
    });
    cloud.restart();
    serde_json::to_value(doc.peek_unverified().unwrap()).unwrap()
}

#[test]
fn a_template_made_on_the_dashboard_is_applied_and_a_removal_is_rolled_back() {
    if !available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = target.local_addr().unwrap().port();
    let cloud = CloudProc::start(&dir.path().join("cloud"));
    let (_hub, id) = hub(&dir.path().join("hub"), &cloud, "");
    wait_until(Duration::from_secs(30), "the hub reports", || latest(&cloud, &id, "cpu.total").is_some());
    let browser = Browser::start();
    browser.set_window_size(1400, 1400);
    common::console::sign_in_as_owner(&browser, &cloud);
    let fill = |key: &str, value: &str| {
        browser.eval(&format!(
            "document.getElementById('{key}').value = {}; return true",
            serde_json::to_string(value).unwrap()
        ));
    };
    let form = |kind_select: &str, add: &str, name: &str| {
        browser.wait_for(
            Duration::from_secs(15),
            "the kinds are listed",
            &format!("return document.getElementById('{kind_select}').options.length > 10"),
        );
        fill(kind_select, "tcp");
        browser.click(&format!("#{add}"));
        browser.wait_for(
            Duration::from_secs(5),
            "the tcp form shows",
            "return !!document.getElementById('mf-port')",
        );
        fill("mf-name", name);
        fill("mf-host", "127.0.0.1");
        fill("mf-port", &port.to_string());
        fill("mf-interval", "1s");
        browser.click("#mformsave");
    };

    // A template with one sensor, made on the templates section.
    browser.wait_for(
        Duration::from_secs(15),
        "the templates section shows",
        "return !!document.getElementById('tname')",
    );
    fill("tname", "web server");
    browser.click("#tnewform button");
    browser.wait_for(
        Duration::from_secs(10),
        "the new template opens",
        "return document.getElementById('ttitle').textContent === 'Template web server'",
    );
    form("tkind", "tadd", "fromtemplate");
    browser.wait_for(
        Duration::from_secs(10),
        "the template lists its sensor",
        "return !!document.querySelector('tr.tsensor[data-id=\"tcp.fromtemplate\"]')",
    );

    // Applied to the machine, then a sensor of its own.
    browser.click(&format!("tr.machine[data-id=\"{id}\"]"));
    browser.wait_for(
        Duration::from_secs(15),
        "the machine's panel offers the template",
        "return !!document.querySelector('#mtemplates input[value=\"web server\"]')",
    );
    browser.click("#mtemplates input[value=\"web server\"]");
    browser.click("#mtemplatesave");
    browser.wait_for(
        Duration::from_secs(30),
        "the hub applies the template's sensor",
        "return document.getElementById('mstatus').textContent === 'applied v1' \
           && document.querySelector('tr.msensor[data-id=\"tcp.fromtemplate\"]')?.textContent.includes('template web server')",
    );
    form("mkind", "madd", "own");
    browser.wait_for(
        Duration::from_secs(30),
        "the hub applies its own sensor",
        "return document.getElementById('mstatus').textContent === 'applied v2' \
           && !!document.querySelector('tr.msensor[data-id=\"tcp.own\"]')",
    );
    wait_until(Duration::from_secs(30), "tcp.own reports", || latest(&cloud, &id, "tcp.own").is_some());

    // Remove (two clicks), then roll back to version 2: the sensor is back.
    browser.click("button.mremove[data-id=\"tcp.own\"]");
    browser.click("button.mremove[data-id=\"tcp.own\"]");
    browser.wait_for(
        Duration::from_secs(30),
        "the removal is applied",
        "return document.getElementById('mstatus').textContent === 'applied v3' \
           && !document.querySelector('tr.msensor[data-id=\"tcp.own\"]')",
    );
    // The history must show version 3 first: its row, added on top, moves the older rows down,
    // and a click aimed at version 2's button before that lands elsewhere.
    browser.wait_for(
        Duration::from_secs(10),
        "the history lists version 3 and offers version 2",
        "return !!document.querySelector('tr.mversion[data-version=\"3\"]') \
           && !!document.querySelector('button.mrollback[data-version=\"2\"]')",
    );
    browser.click("button.mrollback[data-version=\"2\"]");
    browser.wait_for(
        Duration::from_secs(30),
        "the roll-back is applied: tcp.own is back",
        "return document.getElementById('mstatus').textContent === 'applied v4' \
           && !!document.querySelector('tr.msensor[data-id=\"tcp.own\"]') \
           && document.querySelector('tr.mversion[data-version=\"4\"]').textContent.includes('rolled back to v2')",
    );
    let before = newest(&cloud, &id, "tcp.own").unwrap();
    wait_until(Duration::from_secs(30), "tcp.own reports again", || {
        newest(&cloud, &id, "tcp.own").is_some_and(|t| t > before)
    });
}
