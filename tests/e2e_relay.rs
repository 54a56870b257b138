//! End-to-end: relay cards through the real binary on real pseudo-terminals. The simulator speaks
//! the card protocol on a pty's master side; `outpost relay` and the hub open its slave side like
//! any serial port. What a user would see: `relais`-style output and exit codes, relay states on
//! the dashboard, a change at the card reaching the cloud within a poll interval.
#![cfg(unix)]

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Runs `outpost relay ARGS`; returns exit code, stdout and stderr.
fn relay(args: &[&str]) -> (i32, String, String) {
    relay_env(args, None)
}

fn relay_env(args: &[&str], env_port: Option<&str>) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.arg("relay").args(args).env_remove("OUTPOST_RELAY_PORT");
    if let Some(p) = env_port {
        cmd.env("OUTPOST_RELAY_PORT", p);
    }
    let out = cmd.output().expect("outpost relay runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Starts `outpost relay-sim ARGS` and returns it with the device path it printed (its only
/// output line that is a path; log lines start with a timestamp).
fn relay_sim(args: &[&str], log: &Path) -> (Proc, String) {
    let mut all = vec!["relay-sim"];
    all.extend_from_slice(args);
    let sim = Proc::start(&all, log);
    let mut path = None;
    wait_until(Duration::from_secs(20), "relay-sim prints its device path", || {
        path = sim.log_text().lines().find(|l| l.starts_with('/')).map(str::to_string);
        path.is_some()
    });
    (sim, path.unwrap())
}

#[test]
fn relay_sim_prints_a_pty_and_outpost_relay_switches_it_like_relais() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, port) = relay_sim(&["--cards", "3"], &dir.path().join("sim.log"));
    assert!(port.starts_with("/dev/pts/"), "a pseudo-terminal: {port}");
    {
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::metadata(&port).unwrap().file_type().is_char_device(), "{port}");
    }

    assert_eq!(relay(&["--port", &port, "-off", "-s1", "-s3"]), (0, "OK: 5\n".into(), String::new()));
    assert_eq!(relay(&["--port", &port, "-stat"]), (0, "5\n".into(), String::new()));
    // Cascaded cards are addressed by their place in the chain; card 1 is untouched.
    assert_eq!(relay(&["--port", &port, "--card", "2", "-s8"]), (0, "OK: 128\n".into(), String::new()));
    assert_eq!(relay(&["--port", &port, "--card", "2", "-stat"]), (0, "128\n".into(), String::new()));
    assert_eq!(relay(&["--port", &port, "--card", "3", "-stat"]).1, "0\n");
    // The port may come from the environment, as with the classic tool.
    assert_eq!(relay_env(&["-stat"], Some(&port)), (0, "5\n".into(), String::new()));
    // Off again, then all on but K8, in one call: actions run left to right.
    assert_eq!(relay(&["--port", &port, "-on", "-r8", "-stat"]).1, "127\nOK: 127\n");

    // A bad argument: usage on stderr, exit 64, and the card is not touched.
    for bad in [&["--port", &port, "-s9"][..], &["--port", &port, "-x"], &["--port", &port]] {
        let (code, out, err) = relay(bad);
        assert_eq!(code, 64, "{bad:?}");
        assert!(out.is_empty(), "{bad:?}: {out}");
        assert!(err.contains("usage: outpost relay"), "{bad:?}: {err}");
    }
    assert!(relay(&["--port", &port, "-s9"]).2.contains("relays are numbered 1 to 8"));
    assert_eq!(relay(&["--port", &port, "-stat"]).1, "127\n");

    // A card that does not exist, and a port that does not exist: FAIL and a non-zero exit.
    let (code, out, _) = relay(&["--port", &port, "--card", "4", "-stat"]);
    assert_ne!(code, 0);
    assert!(out.starts_with("FAIL: card 4 does not exist: 3 card(s)"), "{out}");
    let missing = dir.path().join("ttyUSB9");
    let (code, out, _) = relay(&["--port", missing.to_str().unwrap(), "-on"]);
    assert_ne!(code, 0);
    assert!(out.starts_with(&format!("FAIL: serial port {} does not exist", missing.display())), "{out}");

    assert!(sim.stop().success(), "relay-sim stops cleanly on SIGTERM");
}

#[test]
fn relay_sim_keeps_a_stable_link_and_removes_it_when_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("ttyRELAY0");
    let (sim, printed) =
        relay_sim(&["--cards", "1", "--link", link.to_str().unwrap()], &dir.path().join("sim.log"));
    assert_eq!(Path::new(&printed), link, "the stable path is what configs should name");
    assert!(std::fs::read_link(&link).unwrap().starts_with("/dev/pts/"));
    assert_eq!(relay(&["--port", &printed, "-s2"]), (0, "OK: 2\n".into(), String::new()));
    assert!(sim.stop().success());
    assert!(std::fs::symlink_metadata(&link).is_err(), "the link goes with the simulator");
}

/// Waits until command `id` has status `want`; returns its record.
fn wait_command(cloud: &CloudProc, id: &str, want: &str) -> Value {
    let mut last = Value::Null;
    wait_until(Duration::from_secs(30), &format!("command {id} is {want}"), || {
        last = cloud.api(&format!("/v1/commands/{id}"));
        last["status"] == want
    });
    last
}

/// The latest reading of every sensor of `machine`, by sensor key.
fn latest(cloud: &CloudProc, machine: &str) -> std::collections::BTreeMap<String, Value> {
    let list = cloud.api(&format!("/v1/machines/{machine}/sensors"));
    list.as_array().unwrap().iter().map(|s| (s["sensor"].as_str().unwrap().to_string(), s.clone())).collect()
}

fn relay_keys(card: u8) -> Vec<String> {
    std::iter::once(format!("relay.{card}")).chain((1..=8).map(|k| format!("relay.{card}.k{k}"))).collect()
}

#[test]
fn relay_states_and_changes_reach_the_cloud_and_remote_switching_honours_locked() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = CloudProc::start(&dir.path().join("cloud"));
    // The cards run in this process so the test can press their buttons; the hub, a separate
    // process, opens the pseudo-terminal through the stable link like a udev name.
    let link = dir.path().join("ttyRELAY0");
    let sim = outpost_sensorhub::relay::run_simulator(2, Some(link.clone())).unwrap();
    let hub_dir = dir.path().join("hub");
    let relay_cfg = format!(
        "[[sensor]]\nkind = \"memory\"\ninterval = \"1h\"\n\n\
         [relay]\nport = \"{}\"\npoll_interval = \"300ms\"\n\n\
         [[relay.relays]]\ncard = 1\nrelay = 1\nname = \"pump\"\nrestore = \"on\"\n\n\
         [[relay.relays]]\ncard = 2\nrelay = 8\nname = \"siren\"\nlocked = true\n",
        link.display()
    );
    let hub = start_hub(&hub_dir, &hub_config(&hub_dir, &cloud, &relay_cfg));
    let id = machine_id(&hub_dir);
    wait_until(Duration::from_secs(30), "the cloud knows the hub", || machine(&cloud, &id).is_some());

    // The fresh cards came up without power history, so the hub restored the pump: every relay of
    // both cards is reported, named ones with their names.
    wait_until(Duration::from_secs(30), "the cloud has relay.1, relay.2 and all 16 relays", || {
        let l = latest(&cloud, &id);
        relay_keys(1).iter().chain(&relay_keys(2)).all(|k| l.contains_key(k)) && l["relay.1"]["value"] == 1.0
    });
    let l = latest(&cloud, &id);
    assert_eq!(l["relay.1.k1"]["value"], true);
    assert_eq!(l["relay.1.k1"]["message"], "pump: on");
    assert_eq!(l["relay.1.k2"]["value"], false);
    assert_eq!(l["relay.2"]["value"], 0.0);
    assert_eq!(l["relay.2.k8"]["message"], "siren: off");
    assert_eq!(sim.states(1), 1);

    // Someone switches the siren on at the card: the next poll reads it and sends it.
    let pressed = Instant::now();
    sim.set_states(2, 0x80);
    wait_until(Duration::from_secs(20), "the siren is on in the cloud", || {
        let l = latest(&cloud, &id);
        l["relay.2"]["value"] == 128.0 && l["relay.2.k8"]["value"] == true
    });
    eprintln!("card change to cloud: {:?} (poll interval 300ms)", pressed.elapsed());
    assert_eq!(latest(&cloud, &id)["relay.2.k8"]["message"], "siren: on");
    let history: Vec<Value> = cloud
        .api(&format!("/v1/machines/{id}/readings?sensor=relay.2&limit=100000"))
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["value"].clone())
        .collect();
    assert!(history.contains(&Value::from(0.0)) && history.contains(&Value::from(128.0)), "{history:?}");

    // From the cloud: a relay switched by command reports the state read back from the card, and
    // its reading is sent at once; the locked siren is refused and never touched.
    let (status, created) = cloud.api_post(&format!("/v1/machines/{id}/relays/1/2"), json!({"on": true}));
    assert_eq!(status, 201, "{created}");
    let done = wait_command(&cloud, created["command_id"].as_str().unwrap(), "done");
    assert_eq!(done["result"], json!({"card": 1, "state": 3}), "{done}");
    assert_eq!(sim.states(1), 3);
    wait_until(Duration::from_secs(20), "the switched relay is on in the cloud", || {
        let l = latest(&cloud, &id);
        l["relay.1"]["value"] == 3.0 && l["relay.1.k2"]["value"] == true
    });
    let (_, created) = cloud.api_post(&format!("/v1/machines/{id}/relays/2/8"), json!({"on": false}));
    let refused = wait_command(&cloud, created["command_id"].as_str().unwrap(), "refused");
    let why = refused["result"]["error"].as_str().unwrap_or_default();
    assert!(why.contains("relay K8 of card 2 is locked"), "{refused}");
    assert_eq!(sim.states(2), 0x80, "a locked relay stays as it was");

    // Card 1 loses power: the hub notices at its next poll and switches the pump on again.
    sim.power_cycle(1);
    wait_until(Duration::from_secs(20), "the hub restored the pump after the power cut", || {
        sim.address(1).is_some() && sim.states(1) == 1
    });

    // A clean stop closes the port, so the local tool can use it at once: the pump is on again
    // (K2, switched by command, went with the power), the siren as it was.
    assert!(hub.stop().success(), "the hub stops cleanly on SIGTERM");
    assert_eq!(relay(&["--port", link.to_str().unwrap(), "-stat"]), (0, "1\n".into(), String::new()));
    assert_eq!(relay(&["--port", link.to_str().unwrap(), "--card", "2", "-stat"]).1, "128\n");
    let log = std::fs::read_to_string(hub_dir.join("hub.log")).unwrap();
    assert!(log.contains("relay card was powered up; restoring"), "{log}");
}

#[test]
fn the_cloud_names_and_locks_relays_of_a_running_hub_but_never_lifts_the_hubs_own_settings() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = CloudProc::start(&dir.path().join("cloud"));
    let link = dir.path().join("ttyRELAY0");
    let sim = outpost_sensorhub::relay::run_simulator(1, Some(link.clone())).unwrap();
    let hub_dir = dir.path().join("hub");
    let relay_cfg = format!(
        "[[sensor]]\nkind = \"memory\"\ninterval = \"1h\"\n\n\
         [relay]\nport = \"{}\"\npoll_interval = \"300ms\"\n\n\
         [[relay.relays]]\ncard = 1\nrelay = 1\nname = \"pump\"\nlocked = true\n",
        link.display()
    );
    let hub = start_hub(&hub_dir, &hub_config(&hub_dir, &cloud, &relay_cfg));
    let id = machine_id(&hub_dir);
    wait_until(Duration::from_secs(30), "the cloud knows the hub", || machine(&cloud, &id).is_some());
    wait_until(Duration::from_secs(30), "the cloud has the relay readings", || {
        latest(&cloud, &id).contains_key("relay.1.k2")
    });
    let managed = format!("/v1/machines/{id}/managed");
    let status_text = || cloud.api(&managed)["status"]["text"].as_str().unwrap_or_default().to_string();

    // The cloud names K2 `fan` and locks it: the running hub takes it without a restart.
    let (status, v) = cloud.request(
        "PUT",
        &format!("{managed}/relays"),
        Some(&json!({"relays": [{"card": 1, "relay": 2, "name": "fan", "locked": true}]})),
    );
    assert_eq!(status, 200, "{v}");
    wait_until(Duration::from_secs(30), "the hub applied v1", || status_text() == "applied v1");
    let (_, created) = cloud.api_post(&format!("/v1/machines/{id}/relays/1/2"), json!({"on": true}));
    let refused = wait_command(&cloud, created["command_id"].as_str().unwrap(), "refused");
    assert!(refused["result"]["error"].as_str().unwrap_or_default().contains("locked"), "{refused}");
    assert_eq!(sim.states(1) & 0b10, 0, "the relay the cloud locked did not move");
    sim.set_states(1, 0b10);
    wait_until(Duration::from_secs(20), "K2's readings carry the cloud's name", || {
        latest(&cloud, &id)["relay.1.k2"]["message"] == "fan: on"
    });

    // Renaming the hub's own pump is refused by the hub, which says why; v1's lock stays.
    let (status, v) = cloud.request(
        "PUT",
        &format!("{managed}/relays"),
        Some(&json!({"relays": [{"card": 1, "relay": 1, "name": "water"}, {"card": 1, "relay": 2, "locked": true}]})),
    );
    assert_eq!(status, 200, "{v}");
    wait_until(Duration::from_secs(30), "the hub's refusal shows", || {
        cloud.api(&managed)["status"].to_string().contains("may not rename")
    });
    let (_, created) = cloud.api_post(&format!("/v1/machines/{id}/relays/1/2"), json!({"on": false}));
    wait_command(&cloud, created["command_id"].as_str().unwrap(), "refused");
    assert_eq!(sim.states(1), 0b10);

    // Clearing the cloud's settings lifts the cloud's lock only: K2 switches, the pump stays locked.
    let (status, v) = cloud.request("PUT", &format!("{managed}/relays"), Some(&json!({"relays": []})));
    assert_eq!(status, 200, "{v}");
    wait_until(Duration::from_secs(30), "the hub applied v3", || status_text() == "applied v3");
    let (_, created) = cloud.api_post(&format!("/v1/machines/{id}/relays/1/2"), json!({"on": false}));
    wait_command(&cloud, created["command_id"].as_str().unwrap(), "done");
    assert_eq!(sim.states(1), 0);
    let (_, created) = cloud.api_post(&format!("/v1/machines/{id}/relays/1/1"), json!({"on": true}));
    wait_command(&cloud, created["command_id"].as_str().unwrap(), "refused");
    assert_eq!(sim.states(1), 0, "the hub's own lock holds whatever the cloud says");
    assert!(hub.stop().success());
}

fn client_for(ca: &Path) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap())
        .tls_built_in_root_certs(false)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// GET an admin API path of the cloud `outpost up` runs from `data`.
fn up_api(data: &Path, port: u16, path: &str) -> Option<Value> {
    let ca = data.join("cloud/tls/ca.pem");
    let token = std::fs::read_to_string(data.join("cloud/admin-token")).ok()?;
    if !ca.exists() {
        return None;
    }
    let r = client_for(&ca)
        .get(format!("https://127.0.0.1:{port}{path}"))
        .bearer_auth(token.trim())
        .send()
        .ok()?;
    r.status().is_success().then(|| r.json().ok()).flatten()
}

#[test]
fn outpost_up_runs_simulated_relay_cards_and_shows_their_readings() {
    let dir = tempfile::tempdir().unwrap();
    let data: PathBuf = dir.path().join("d");
    let port = free_port();
    let up = Proc::start(
        &[
            "up",
            "--data-dir",
            data.to_str().unwrap(),
            "--port",
            &port.to_string(),
            "--connector-port",
            &free_port().to_string(),
        ],
        &dir.path().join("up.log"),
    );
    let link = data.join("relay-sim/ttyRELAY0");
    wait_until(Duration::from_secs(30), "the cloud shows the pump on and both cards", || {
        let Some(machines) = up_api(&data, port, "/v1/machines") else { return false };
        // The connector reports its own machine too; the relays are the sensorhub's.
        machines.as_array().unwrap().iter().filter_map(|m| m["id"].as_str()).any(|id| {
            let Some(sensors) = up_api(&data, port, &format!("/v1/machines/{id}/sensors")) else {
                return false;
            };
            let by = |k: &str| sensors.as_array().unwrap().iter().find(|s| s["sensor"] == k).cloned();
            by("relay.1.k1").is_some_and(|s| s["message"] == "pump: on")
                && by("relay.1.k2").is_some_and(|s| s["message"] == "siren: off")
                && by("relay.2").is_some()
        })
    });
    let banner = up.log_text();
    assert!(
        banner.contains(&format!("Relays:      2 simulated cards on {} -> /dev/pts/", link.display())),
        "the banner names the simulator's device: {banner}"
    );
    assert!(up.stop().success(), "outpost up stops cleanly on SIGTERM");
    assert!(std::fs::symlink_metadata(&link).is_err(), "the simulator's link is gone after stop");
}
