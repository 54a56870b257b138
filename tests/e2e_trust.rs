//! End-to-end trust: what a LAN attacker, a tampering connector or a replayed capture can and
//! cannot do, with real processes, real keys and real TLS on loopback.

mod common;

use common::*;
use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;

fn wait_status(cloud: &CloudProc, id: &str, want: &str) -> Value {
    let mut last = Value::Null;
    wait_until(Duration::from_secs(30), &format!("command {id} is {want}"), || {
        last = cloud.api(&format!("/v1/commands/{id}"));
        last["status"] == want
    });
    last
}

#[test]
fn a_valid_command_runs_once_and_an_expired_one_never_runs() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = CloudProc::start(&dir.path().join("cloud"));
    let hub_dir = dir.path().join("hub");
    let config = hub_config(&hub_dir, &cloud, "");
    let hub = start_hub(&hub_dir, &config);
    let id = machine_id(&hub_dir);
    wait_until(Duration::from_secs(30), "the hub is enrolled and uploading", || {
        machine(&cloud, &id).is_some()
    });

    let (status, created) = cloud.api_post(&format!("/v1/machines/{id}/commands"), json!({"action": "ping"}));
    assert_eq!(status, 201, "{created}");
    let cmd = created["command_id"].as_str().unwrap().to_string();
    let done = wait_status(&cloud, &cmd, "done");
    assert_eq!(done["result"]["pong"], true);
    // The audit trail has it, once each step.
    let audit = cloud.api(&format!("/v1/audit?machine={id}"));
    let events: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["command_id"] == cmd.as_str())
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, vec!["done", "delivered", "created"], "newest first");

    // sample-now of an unknown sensor fails with a reason; of a known one it is done.
    let (_, c) = cloud.api_post(
        &format!("/v1/machines/{id}/commands"),
        json!({"action": "sample-now", "parameters": {"sensor": "nope"}}),
    );
    let failed = wait_status(&cloud, c["command_id"].as_str().unwrap(), "failed");
    assert!(failed["result"]["error"].as_str().unwrap().contains("no sensor named"), "{failed}");

    // A command whose machine is away past its expiry is never delivered.
    assert!(hub.stop().success());
    let (_, c) =
        cloud.api_post(&format!("/v1/machines/{id}/commands"), json!({"action": "ping", "ttl": "1s"}));
    let late = c["command_id"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_secs(2));
    let _hub = start_hub(&hub_dir, &config);
    std::thread::sleep(Duration::from_secs(4));
    let rec = cloud.api(&format!("/v1/commands/{late}"));
    assert_eq!(rec["status"], "expired", "{rec}");
    assert!(rec["delivered_at"].is_null(), "an expired command is not handed out");

    // Unknown actions are refused before anything is signed.
    let (status, _) = cloud.api_post(&format!("/v1/machines/{id}/commands"), json!({"action": "rm -rf"}));
    assert_eq!(status, 400);
}

#[test]
fn a_batch_signed_by_another_machine_or_altered_on_the_way_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = CloudProc::start(&dir.path().join("cloud"));
    let a = TestMachine::enroll(&cloud, "sensorhub");
    let b = TestMachine::enroll(&cloud, "sensorhub");
    // Stamped now: readings older than the cloud's raw retention are refused for their clock.
    let now = chrono::Utc::now();
    let batch = |m: &str, v: f64| {
        serde_json::to_vec(
            &json!({"machine_id": m, "hostname": "h", "uplink": "direct", "buffered": 0, "readings": [
            {"machine_id": m, "seq": 1, "sensor": "cpu.total", "ts": now, "value": v, "state": "ok"}]}),
        )
        .unwrap()
    };
    // B signs a batch that claims to be A's.
    let body = batch(&a.id(), 1.0);
    let (status, err) = b.post(&cloud, "/v1/batches", body.clone(), &body, false);
    assert_eq!(status, 401, "{err}");
    // A signs one body, another is sent.
    let (status, err) = a.post(&cloud, "/v1/batches", batch(&a.id(), 99.0), &body, false);
    assert_eq!(status, 401, "{err}");
    assert!(err["error"].as_str().unwrap().contains("signature"), "{err}");
    // An unenrolled key gets nothing in.
    let stranger = outpost_shared::keys::KeyPair::generate().unwrap();
    let own = batch(&stranger.machine_id().to_string(), 1.0);
    let sig = outpost_shared::keys::sign_request(&stranger, "POST", "/v1/batches", &own, chrono::Utc::now())
        .unwrap();
    let mut r = cloud.client().post(format!("{}/v1/batches", cloud.url()));
    for (n, v) in sig.to_pairs() {
        r = r.header(n, v);
    }
    let r = r.body(own).send().unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert!(r.text().unwrap().contains("not enrolled"));

    // Through a connector: one hub batch forwarded as signed, one altered by the connector.
    let conn = TestMachine::enroll(&cloud, "connector");
    let sig_a =
        outpost_shared::keys::sign_request(&a.key, "POST", "/v1/batches", &body, chrono::Utc::now()).unwrap();
    let fwd = |b: &[u8]| {
        json!({"sig": {"machine_id": sig_a.machine_id.to_string(), "timestamp": sig_a.timestamp, "signature": sig_a.signature_b64},
               "body": serde_json::from_slice::<Value>(b).unwrap()})
    };
    // The forwarded body must be the exact bytes: re-serialising `Value` keeps this compact JSON.
    let altered = batch(&a.id(), 1e9);
    let env =
        serde_json::to_vec(&json!({"connector": conn.id(), "batches": [fwd(&body), fwd(&altered)]})).unwrap();
    let (status, ack) = conn.post(&cloud, "/v1/forward", env.clone(), &env, false);
    assert_eq!(status, 200, "{ack}");
    assert_eq!(ack["results"][0], json!({"stored": 1, "duplicates": 0}));
    assert_eq!(ack["results"][1]["status"], 401, "the altered batch is refused: {ack}");
    let stored = cloud.api(&format!("/v1/machines/{}/readings?sensor=cpu.total", a.id()));
    assert_eq!(stored.as_array().unwrap().len(), 1);
    assert_eq!(stored[0]["value"], 1.0, "the forged value never landed");
    // A hub may not forward as a connector.
    let (status, _) = a.post(&cloud, "/v1/forward", env.clone(), &env, false);
    assert_eq!(status, 403);
}

#[test]
fn a_rogue_connector_with_a_valid_certificate_but_no_authorisation_gets_no_readings() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = CloudProc::start(&dir.path().join("cloud"));
    // The rogue: a real connector with its own valid TLS certificate, never enrolled.
    let rogue_dir = dir.path().join("rogue");
    let mut rogue = ConnectorProc::start_unenrolled(&rogue_dir, &cloud);

    let hub_dir = dir.path().join("hub");
    let uplink = format!("{}fallback_after = \"2s\"\n", rogue.hub_uplink());
    let hub = start_hub(&hub_dir, &hub_config_with(&hub_dir, &cloud, "", &uplink));
    let id = machine_id(&hub_dir);
    // The hub refuses the rogue and, once the fallback time has passed, goes direct.
    wait_until(Duration::from_secs(40), "the hub's readings arrive directly", || {
        machine(&cloud, &id).is_some_and(|m| m["uplink"] == "direct")
    });
    assert!(hub.log_text().contains("not authorised by the cloud"), "the hub says why:\n{}", hub.log_text());
    drop(hub);
    rogue.stop();
    let stats = buffer_stats(&rogue_dir);
    assert_eq!(stats["len"], 0, "the rogue connector holds no readings: {stats}");
    assert_eq!(stats["next_seq"], 1, "it never took any");
}

/// A tiny HTTP server that answers 200 only to the right basic-auth credentials.
fn basic_auth_server(user: &str, pass: &str) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let expected = {
        use base64::Engine;
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}")))
    };
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            let ok = req.lines().any(|l| l.eq_ignore_ascii_case(&format!("authorization: {expected}")));
            let (status, body) = if ok { ("200 OK", "welcome") } else { ("401 Unauthorized", "who are you") };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

#[test]
fn a_sealed_password_reaches_the_hub_and_nobody_else_holds_it_in_the_clear() {
    const PLAIN: &str = "Pl41ntext-Passw0rd-4711";
    let dir = tempfile::tempdir().unwrap();
    let cloud = CloudProc::start(&dir.path().join("cloud"));
    // Readings travel through a connector, whose store is searched for the password too.
    let connector_dir = dir.path().join("connector");
    let mut connector = ConnectorProc::start(&connector_dir, &cloud, "");
    let hub_dir = dir.path().join("hub");
    let uplink = format!("{}fallback_after = \"10m\"\n", connector.hub_uplink());
    let config = hub_config_with(&hub_dir, &cloud, "", &uplink);
    let hub = start_hub(&hub_dir, &config);
    let id = machine_id(&hub_dir);
    wait_until(Duration::from_secs(30), "the hub uploads through the connector", || {
        machine(&cloud, &id)
            .is_some_and(|m| m["uplink"].as_str().is_some_and(|u| u.starts_with("connector:")))
    });
    assert!(hub.stop().success());

    // Sealed by the cloud (which keeps nothing of it) and by the CLI on the machine itself.
    let (status, sealed) = cloud.api_post(&format!("/v1/machines/{id}/seal"), json!({"secret": PLAIN}));
    assert_eq!(status, 200);
    let sealed = sealed["sealed"].as_str().unwrap().to_string();
    assert!(sealed.starts_with("sealed:v1:") && !sealed.contains(PLAIN));
    let out = Command::new(BIN)
        .args(["secret", "seal", "--data-dir"])
        .arg(hub_dir.join("data"))
        .arg(PLAIN)
        .output()
        .unwrap();
    assert!(out.status.success());
    let cli_sealed = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(cli_sealed.starts_with("sealed:v1:"));

    let port = basic_auth_server("monitor", PLAIN);
    for (n, s) in [("cloud", &sealed), ("cli", &cli_sealed)] {
        let extra = format!(
            "[[sensor]]\nkind = \"http\"\nname = \"{n}\"\nurl = \"http://127.0.0.1:{port}/\"\ninterval = \"1s\"\nusername = \"monitor\"\npassword = \"{s}\"\n"
        );
        std::fs::write(&config, std::fs::read_to_string(&config).unwrap() + &extra).unwrap();
    }
    let hub = start_hub(&hub_dir, &config);
    wait_until(Duration::from_secs(30), "both checks log in with the unsealed password", || {
        let s = cloud.api(&format!("/v1/machines/{id}/sensors"));
        ["cloud", "cli"].iter().all(|n| {
            s.as_array()
                .unwrap()
                .iter()
                .any(|r| r["sensor"] == format!("http.{n}.status") && r["value"] == 200.0)
        })
    });
    assert!(!hub.log_text().contains(PLAIN), "the password never reaches a log");
    drop(hub);
    connector.stop();

    // Neither the cloud's files, the connector's nor the hub's buffer hold it in the clear.
    for root in [cloud.dir.clone(), connector_dir, hub_dir.join("data")] {
        for entry in walk(&root) {
            let bytes = std::fs::read(&entry).unwrap_or_default();
            assert!(!contains(&bytes, PLAIN.as_bytes()), "plaintext found in {}", entry.display());
        }
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(hub_dir.join("data/machine.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the private key is readable by its owner alone");
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_token_from_the_cli_enrolls_one_hub_once_and_is_listed_until_used() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = CloudProc::start(&dir.path().join("cloud"));
    let token = |args: &[&str]| {
        let out = Command::new(BIN)
            .arg("token")
            .args(args)
            .args(["--config", cloud.config.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "outpost token {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let before = token(&["list"]).lines().count();
    let made = token(&["create", "--network", "plant-7", "--ttl", "10m"]).trim().to_string();
    assert!(made.starts_with("OPT1."), "a token, alone on stdout: {made:?}");
    let listed = token(&["list"]);
    assert_eq!(listed.lines().count(), before + 1);
    assert!(listed.contains("plant-7"), "the new token is listed with its network: {listed}");
    assert!(!listed.contains(&made), "the list never shows a token's secret");

    let hub_dir = dir.path().join("hub");
    let config = hub_config(&hub_dir, &cloud, "");
    use_token(&config, &made);
    let hub = start_hub(&hub_dir, &config);
    let id = machine_id(&hub_dir);
    wait_until(Duration::from_secs(30), "the hub enrolled with the CLI's token shows up", || {
        machine(&cloud, &id).is_some()
    });
    drop(hub);
    assert!(!token(&["list"]).contains("plant-7"), "a used token is no longer open");

    // A second machine with the same token gets nothing in.
    let other = dir.path().join("other");
    let config = hub_config(&other, &cloud, "");
    use_token(&config, &made);
    let hub = start_hub(&other, &config);
    wait_until(Duration::from_secs(30), "the second hub says why it is refused", || {
        hub.log_text().contains("already used")
    });
}

/// Points a hub config at `token` instead of the one the harness made.
fn use_token(config: &std::path::Path, token: &str) {
    let text: String = std::fs::read_to_string(config)
        .unwrap()
        .lines()
        .map(|l| {
            if l.starts_with("enroll_token") {
                format!("enroll_token = \"{token}\"\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(config, text).unwrap();
}

#[test]
fn a_hub_that_reaches_only_a_connector_enrolls_through_it_without_showing_it_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = CloudProc::start(&dir.path().join("cloud"));
    let connector = ConnectorProc::start(&dir.path().join("connector"), &cloud, "");
    let connector_url = connector.url();

    // A token in the clear is not carried across the LAN.
    let token = cloud.enroll_token();
    let insecure = reqwest::blocking::Client::builder().danger_accept_invalid_certs(true).build().unwrap();
    let r = insecure
        .post(format!("{connector_url}/v1/enroll"))
        .json(&json!({"token": token, "public_key": "x", "role": "sensorhub", "hostname": "h"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().unwrap().contains("sealed"), "the refusal says how to do it right");

    // The hub has no cloud URL at all: only the connector.
    let hub_dir = dir.path().join("hub");
    let config = hub_dir.join("sensorhub.toml");
    std::fs::create_dir_all(&hub_dir).unwrap();
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[uplink]\nconnector = \"{connector_url}\"\nenroll_token = \"{token}\"\nretry_min = \"200ms\"\nretry_max = \"1s\"\ndiscover = false\nadvertise = false\n",
            hub_dir.join("data").display()
        ),
    )
    .unwrap();
    let hub = start_hub(&hub_dir, &config);
    let id = machine_id(&hub_dir);
    wait_until(Duration::from_secs(40), "the hub's readings arrive through the connector", || {
        machine(&cloud, &id)
            .is_some_and(|m| m["uplink"].as_str().is_some_and(|u| u.starts_with("connector:")))
    });
    drop(hub);
    drop(connector);
    let secret = token.split('.').nth(2).unwrap();
    for entry in walk(&dir.path().join("connector")) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        assert!(!contains(&bytes, secret.as_bytes()), "the hub's token secret is in {}", entry.display());
    }
}

#[test]
fn a_revoked_connector_is_refused_by_the_cloud_and_left_by_its_hubs() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = CloudProc::start(&dir.path().join("cloud"));
    // Once its hubs have left, the connector's next signed request is its key-list refresh: made
    // every 2 s here (60 s by default) so the test need not wait for one.
    let connector = ConnectorProc::start(&dir.path().join("connector"), &cloud, "cloud.keys_every = \"2s\"");
    let hub_dir = dir.path().join("hub");
    let uplink = format!(
        "{}fallback_after = \"1s\"\nrecheck_every = \"1s\"\nreprobe_every = \"1h\"\n",
        connector.hub_uplink()
    );
    let hub = start_hub(&hub_dir, &hub_config_with(&hub_dir, &cloud, "", &uplink));
    let id = machine_id(&hub_dir);
    wait_until(Duration::from_secs(30), "the hub uploads through the connector", || {
        machine(&cloud, &id).is_some_and(|m| m["uplink"] == connector.path().as_str())
    });

    let conn_id = connector.path().trim_start_matches("connector:").to_string();
    let r = cloud
        .client()
        .delete(format!("{}/v1/machines/{conn_id}", cloud.url()))
        .bearer_auth(cloud.admin_token())
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap_or_default());
    let again = cloud
        .client()
        .delete(format!("{}/v1/machines/{conn_id}", cloud.url()))
        .bearer_auth(cloud.admin_token());
    assert_eq!(again.send().unwrap().status(), 404, "revoking twice finds nothing to revoke");

    // The hub hears it from the cloud, leaves the connector and, with no other, goes direct.
    wait_until(Duration::from_secs(40), "the hub leaves the revoked connector", || {
        machine(&cloud, &id).is_some_and(|m| m["uplink"] == "direct")
    });
    assert!(hub.log_text().contains("no longer authorises this connector"), "the hub says why");
    // The connector's own signed requests are refused, saying it was revoked.
    wait_until(Duration::from_secs(30), "the connector is told it was revoked", || {
        connector.log_text().contains("revoked")
    });
    let audit = cloud.api("/v1/audit");
    assert!(
        audit.as_array().unwrap().iter().any(|e| e["action"] == "revoke" && e["machine"] == conn_id.as_str()),
        "the revocation is in the audit trail: {audit}"
    );
}
