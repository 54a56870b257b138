//! End-to-end through a connector: the real binary as separate processes (cloud, connector,
//! hubs), every machine enrolled and every request signed. On loopback: fallback to the direct
//! path and back, a cloud outage and `kill -9` with twenty hubs behind one connector, a full
//! connector pushing back. Between network namespaces (real multicast, see `tests/netns`): a new
//! hub finds the connector by SSDP and its readings reach the cloud through it, and a hub that
//! sends directly is listed as unattached.

mod common;
mod netns;

use common::ns_cloud::{self, NsCloud};
use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One fast sensor: a few readings every 100 ms, so outages and crashes hit mid-stream.
const FAST: &str = "[[sensor]]\nkind = \"memory\"\ninterval = \"100ms\"\n";

fn parse_ts(v: &Value) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap().with_timezone(&chrono::Utc)
}

/// Starts `n` hubs in `dir/hub0`, `dir/hub1`, … with `uplink` lines, and returns them with their
/// machine ids.
fn start_hubs(dir: &Path, cloud: &CloudProc, n: usize, uplink: &str) -> Vec<(PathBuf, Proc, String)> {
    let hubs: Vec<(PathBuf, Proc)> = (0..n)
        .map(|i| {
            let hub_dir = dir.join(format!("hub{i}"));
            let cfg = hub_config_with(&hub_dir, cloud, FAST, uplink);
            (hub_dir.clone(), start_hub(&hub_dir, &cfg))
        })
        .collect();
    hubs.into_iter()
        .map(|(d, p)| {
            let id = machine_id(&d);
            (d, p, id)
        })
        .collect()
}

/// Waits until every hub's latest batch came through `via`, after `since` when given.
fn wait_all_via(
    cloud: &CloudProc,
    hubs: &[(PathBuf, Proc, String)],
    via: &str,
    since: Option<chrono::DateTime<chrono::Utc>>,
    what: &str,
) {
    wait_until(Duration::from_secs(120), what, || {
        let ms = machines(cloud);
        hubs.iter().all(|(_, _, id)| {
            ms.iter().any(|m| {
                m["id"] == id.as_str()
                    && m["uplink"] == via
                    && since.is_none_or(|t| parse_ts(&m["last_seen"]) > t)
            })
        })
    });
}

/// Stops every hub (SIGTERM, all at once, as a machine shutting down would), checks that a clean
/// stop handed everything over, then waits until the cloud holds each hub's readings exactly once.
fn stop_hubs_and_check_all_arrived_once(cloud: &impl CloudApi, hubs: Vec<(PathBuf, Proc, String)>) {
    let stopping: Vec<_> = hubs
        .into_iter()
        .map(|(dir, p, id)| (dir, id, std::thread::spawn(move || p.stop().success())))
        .collect();
    for (dir, id, stopped) in stopping {
        assert!(stopped.join().unwrap(), "hub {} stops cleanly", dir.display());
        let log = std::fs::read_to_string(dir.join("hub.log")).unwrap_or_default();
        assert!(
            !log.contains("refuses this reading for good"),
            "{}: a reading was dropped:\n{log}",
            dir.display()
        );
        let stats = buffer_stats(&dir);
        assert_eq!(stats["len"], 0, "{}: a clean stop hands everything over: {stats}", dir.display());
        let next_seq = stats["next_seq"].as_u64().unwrap();
        wait_until(Duration::from_secs(60), "every reading of every hub reached the cloud", || {
            all_seqs(cloud, &id).len() as u64 >= next_seq - 1
        });
        assert_exactly_once(cloud, &id, next_seq);
    }
}

#[test]
fn a_hub_falls_back_to_direct_when_its_connector_dies_and_returns_when_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = CloudProc::start(&dir.path().join("cloud"));
    let mut conn = ConnectorProc::start(&dir.path().join("conn"), &cloud, "");
    let via = conn.path();
    let uplink = format!("{}fallback_after = \"3s\"\nreprobe_every = \"2s\"\n", conn.hub_uplink());
    let hubs = start_hubs(dir.path(), &cloud, 1, &uplink);
    let id = hubs[0].2.clone();
    wait_all_via(&cloud, &hubs, &via, None, "the hub sends through the connector");

    conn.kill9();
    let killed = Instant::now();
    wait_until(Duration::from_secs(60), "the hub switches to the direct path", || {
        machine(&cloud, &id).is_some_and(|m| m["uplink"] == "direct")
    });
    let to_direct = killed.elapsed();
    eprintln!("connector killed: hub on the direct path after {to_direct:.1?} (fallback_after = 3s)");
    // Not a timing figure: a hub that left its connector before fallback_after would be a bug.
    assert!(to_direct >= Duration::from_secs(3), "no fallback before fallback_after: {to_direct:?}");

    conn.restart();
    let back = Instant::now();
    wait_all_via(&cloud, &hubs, &via, None, "the hub switches back to the connector");
    eprintln!("connector back: hub sends through it again after {:.1?} (reprobe_every = 2s)", back.elapsed());

    stop_hubs_and_check_all_arrived_once(&cloud, hubs);
}

#[test]
fn a_hub_behind_a_connector_answers_commands_in_its_own_session_with_the_cloud() {
    // The connector relays the hub's login and its MAC'd result unchanged (it can read or make
    // neither); the hub's poll and its batches, which the connector checks itself, stay signed.
    let dir = tempfile::tempdir().unwrap();
    let cloud = CloudProc::start(&dir.path().join("cloud"));
    let conn = ConnectorProc::start(&dir.path().join("conn"), &cloud, "");
    let via = conn.path();
    let hubs = start_hubs(dir.path(), &cloud, 1, &conn.hub_uplink());
    let id = hubs[0].2.clone();
    wait_all_via(&cloud, &hubs, &via, None, "the hub sends through the connector");
    for _ in 0..3 {
        let (status, created) =
            cloud.api_post(&format!("/v1/machines/{id}/commands"), json!({"action": "ping"}));
        assert_eq!(status, 201, "{created}");
        let cmd = created["command_id"].as_str().unwrap().to_string();
        wait_until(Duration::from_secs(20), "the ping is answered through the connector", || {
            cloud.api(&format!("/v1/commands/{cmd}"))["status"] == "done"
        });
    }
    let log = hubs[0].1.log_text();
    // (Before the hub knew its connector it polled the cloud directly, in a session of that path.)
    let through = format!("through={}", conn.url());
    let relayed =
        log.lines().filter(|l| l.contains("machine session with the cloud opened") && l.contains(&through));
    assert_eq!(relayed.count(), 1, "one session, opened through the connector, served every result:\n{log}");
    assert!(!log.contains("cannot report a command result"), "{log}");
    stop_hubs_and_check_all_arrived_once(&cloud, hubs);
}

#[test]
fn twenty_hubs_behind_one_connector_lose_nothing_through_a_cloud_outage_and_a_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut cloud = CloudProc::start(&dir.path().join("cloud"));
    let mut conn = ConnectorProc::start(&dir.path().join("conn"), &cloud, "");
    let via = conn.path();
    // Only through the connector: this test is about the connector's custody of the data.
    let hubs = start_hubs(dir.path(), &cloud, 20, &format!("{}allow_direct = false\n", conn.hub_uplink()));
    wait_all_via(&cloud, &hubs, &via, None, "all hubs send through the connector");

    // The cloud goes away; the connector holds what the hubs send.
    cloud.stop();
    wait_until(Duration::from_secs(30), "the connector notices the outage", || {
        conn.log_text().contains("cannot reach the cloud")
    });
    std::thread::sleep(Duration::from_secs(3));
    let restarted = chrono::Utc::now();
    cloud.restart();
    // As soon as the backlog starts to arrive, the connector dies mid-forwarding.
    wait_until(Duration::from_secs(60), "forwarding resumes after the outage", || {
        machines(&cloud).iter().any(|m| parse_ts(&m["last_seen"]) > restarted)
    });
    conn.kill9();
    let held = buffer_stats(&conn.dir);
    eprintln!("connector killed mid-forwarding holding {} hub batches", held["len"]);
    std::thread::sleep(Duration::from_secs(1));
    conn.restart();
    let back = chrono::Utc::now();
    wait_all_via(&cloud, &hubs, &via, Some(back), "every hub sends through the restarted connector");

    stop_hubs_and_check_all_arrived_once(&cloud, hubs);
    assert!(!conn.log_text().contains("dropped"), "the connector dropped hub batches:\n{}", conn.log_text());
}

#[test]
fn a_full_connector_pushes_back_and_the_hubs_hold_their_data_until_it_drains() {
    let dir = tempfile::tempdir().unwrap();
    let mut cloud = CloudProc::start(&dir.path().join("cloud"));
    // The smallest quota: a few hundred readings fill it while the cloud is away.
    let conn = ConnectorProc::start(&dir.path().join("conn"), &cloud, "buffer.quota = \"64KiB\"\n");
    let hubs = start_hubs(dir.path(), &cloud, 3, &format!("{}allow_direct = false\n", conn.hub_uplink()));
    wait_all_via(&cloud, &hubs, &conn.path(), None, "all hubs send through the connector");

    cloud.stop();
    wait_until(Duration::from_secs(60), "the connector says it is full", || {
        conn.log_text().contains("connector buffer full; hubs told to hold their data")
    });
    // Every hub is told to wait (503 + Retry-After) and keeps its readings.
    wait_until(Duration::from_secs(60), "every hub holds readings because the connector is busy", || {
        hubs.iter().all(|(d, _, _)| {
            hub_status(d).is_some_and(|s| {
                s["buffered"].as_u64().unwrap_or(0) > 50
                    && s["last_error"].as_str().is_some_and(|e| e.contains("busy"))
            })
        })
    });
    let held: u64 = hubs.iter().map(|(d, _, _)| hub_status(d).unwrap()["buffered"].as_u64().unwrap()).sum();
    eprintln!("connector full: the hubs hold {held} readings");

    cloud.restart();
    wait_until(Duration::from_secs(120), "the hubs' backlogs drain", || {
        hubs.iter().all(|(d, _, _)| hub_status(d).is_some_and(|s| s["last_error"].is_null()))
    });
    stop_hubs_and_check_all_arrived_once(&cloud, hubs);
    assert!(!conn.log_text().contains("dropped"), "the connector dropped hub batches:\n{}", conn.log_text());
}

// ---- Real multicast between network namespaces ----

/// Not a test of its own: the cloud's API helper (see `common::ns_cloud`) when run as one.
#[test]
fn ns_api_helper() {
    ns_cloud::serve_if_helper();
}

/// `outpost sensorhub --config CONFIG` inside `host`'s namespace, logging to `hub_dir/hub.log`.
fn start_hub_in(net: &netns::TestNet, host: &str, hub_dir: &Path, config: &Path) -> Proc {
    let mut cmd = net.command(host, BIN);
    cmd.args(["sensorhub", "--config", config.to_str().unwrap()]);
    Proc::start_cmd(cmd, &hub_dir.join("hub.log"))
}

#[test]
fn a_new_hub_finds_the_connector_by_ssdp_and_its_readings_reach_the_cloud_through_it() {
    let net = match netns::TestNet::create(
        "conn",
        &[
            ("cloud", "10.77.0.10/24"),
            ("conn", "10.77.0.1/24"),
            ("hubnew", "10.77.0.2/24"),
            ("hubdirect", "10.77.0.3/24"),
        ],
    ) {
        Ok(net) => net,
        Err(reason) => return netns::skip(&reason),
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cloud = NsCloud::start(
        &d.join("cloud"),
        "10.77.0.10",
        |program| net.command("cloud", program),
        &["--exact", "ns_api_helper", "--nocapture", "--test-threads=1", "-q"],
    );

    // The connector: SSDP on (inside the namespaces only), looking for hubs every 5 s, with its
    // embedded hub watching its own machine.
    let (_conn, conn_id) =
        cloud.start_connector(&d.join("conn"), |p| net.command("conn", p), "ssdp.search_every = \"5s\"\n");
    wait_until(Duration::from_secs(60), "the connector's own machine reports, as a connector", || {
        machine(&cloud, &conn_id).is_some_and(|m| m["role"] == "connector")
    });

    // A hub that sends directly but announces itself: it is listed as unattached.
    let direct_dir = d.join("hubdirect");
    let direct_cfg = hub_config_with(&direct_dir, &cloud, FAST, "advertise = true\n");
    let _direct = start_hub_in(&net, "hubdirect", &direct_dir, &direct_cfg);

    // A new hub: no connector configured or remembered; it searches.
    let new_dir = d.join("hubnew");
    let new_cfg = hub_config_with(&new_dir, &cloud, FAST, "discover = true\nadvertise = true\n");
    let _new = start_hub_in(&net, "hubnew", &new_dir, &new_cfg);
    let new_id = machine_id(&new_dir);
    let via = format!("connector:{conn_id}");
    wait_until(Duration::from_secs(60), "the new hub's readings arrive through the connector", || {
        machine(&cloud, &new_id).is_some_and(|m| m["uplink"] == via)
    });
    assert!(!all_seqs(&cloud, &new_id).is_empty());
    let remembered: Value =
        serde_json::from_slice(&std::fs::read(new_dir.join("data/connector.json")).unwrap()).unwrap();
    assert_eq!(remembered["url"], "https://10.77.0.1:8444", "the hub remembers the connector it found");

    let direct_id = machine_id(&direct_dir);
    wait_until(Duration::from_secs(60), "the direct hub is listed as unattached", || {
        cloud.api("/v1/hubs/unattached").as_array().unwrap().iter().any(|h| h["machine_id"] == direct_id)
    });
    let list = cloud.api("/v1/hubs/unattached");
    let listed = list.as_array().unwrap().iter().find(|h| h["machine_id"] == direct_id).unwrap();
    assert_eq!(listed["connector"], conn_id.as_str(), "{listed}");
    assert!(listed["location"].as_str().unwrap().contains("10.77.0.3"), "{listed}");
    assert!(
        !list.as_array().unwrap().iter().any(|h| h["machine_id"] == new_id),
        "a hub sending through the connector is not unattached: {list}"
    );
    assert!(machine(&cloud, &direct_id).is_some_and(|m| m["uplink"] == "direct"));
}
