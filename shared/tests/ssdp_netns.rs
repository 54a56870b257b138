//! Real multicast between network namespaces: responders and searchers run as separate processes
//! in namespaces joined by a bridge (see `tests/netns/netns.sh`); this machine's own interfaces
//! are never used. Needs root and iproute2; without them each test prints why it is skipped
//! (`OUTPOST_NETNS_REQUIRED=1` turns the skip into a failure).
//!
//! The processes are this test binary run again with `OUTPOST_SSDP_PROBE_ARGS` set, which turns
//! the `probe_child` entry point into `shared/examples/ssdp_probe.rs`; so the code under test is
//! always the one just built, whichever cargo command built it.
//!
//! Run: `cargo test -p outpost-shared --test ssdp_netns` (as root).

#[path = "../../tests/netns/mod.rs"]
mod netns;
#[path = "../examples/ssdp_probe.rs"]
#[allow(dead_code)]
mod probe;

use outpost_shared::ssdp::{ST_CONNECTOR, ST_SENSORHUB};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const CHILD_ARGS: &str = "OUTPOST_SSDP_PROBE_ARGS";
const START: Duration = Duration::from_secs(30);

/// Not a test of its own: inside a namespace, with `OUTPOST_SSDP_PROBE_ARGS` set, this binary
/// becomes the probe and exits with its status.
#[test]
fn probe_child() {
    let Ok(args) = std::env::var(CHILD_ARGS) else { return };
    let args: Vec<String> = serde_json::from_str(&args).expect("probe arguments are a JSON list");
    std::process::exit(probe::run(args));
}

fn net(tag: &str, hosts: &[(&str, &str)]) -> Option<netns::TestNet> {
    match netns::TestNet::create(tag, hosts) {
        Ok(net) => Some(net),
        Err(reason) => {
            netns::skip(&reason);
            None
        }
    }
}

/// A probe process in a namespace. Dropping it closes its stdin (its stop signal), waits a little
/// for it to say goodbye, then kills it.
struct Probe {
    what: String,
    child: Child,
    stdin: Option<ChildStdin>,
    events: mpsc::Receiver<Value>,
}

impl Probe {
    fn start(net: &netns::TestNet, host: &str, args: &[&str]) -> Probe {
        let exe = std::env::current_exe().expect("test binary path");
        let mut child = net
            .command(host, exe)
            .args(["--exact", "probe_child", "--nocapture", "--test-threads=1", "-q"])
            .env(CHILD_ARGS, serde_json::to_string(args).unwrap())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run ip netns exec");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // The test harness may print on the same line before the probe's first object.
                let Some(i) = line.find('{') else { continue };
                if let Ok(v) = serde_json::from_str::<Value>(&line[i..]) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        let stdin = child.stdin.take();
        Probe { what: format!("{host}: {}", args.join(" ")), child, stdin, events }
    }

    /// Events up to and including the first that `done` accepts; panics after `within`.
    fn until(&self, within: Duration, done: impl Fn(&Value) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            match self.events.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(v) => {
                    let last = done(&v);
                    seen.push(v);
                    if last {
                        return seen;
                    }
                }
                Err(_) => panic!("{}: nothing expected within {within:?}; saw {seen:?}", self.what),
            }
        }
    }

    /// The first event called `event`.
    fn expect(&self, event: &str, within: Duration) -> Value {
        self.until(within, |v| v["event"] == event).pop().unwrap()
    }

    /// Closes stdin, which makes `respond` and `listen` stop.
    fn stop(&mut self) {
        self.stdin.take();
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.stdin.take();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn usns(found: &Value) -> Vec<String> {
    found["found"].as_array().unwrap().iter().map(|f| f["usn"].as_str().unwrap().to_string()).collect()
}

#[test]
fn responders_are_found_from_their_subnet_only_and_announce_themselves() {
    let Some(net) = net("find", &[("a", "10.77.0.1/24"), ("b", "10.77.0.2/24"), ("c", "192.168.50.3/24")])
    else {
        return;
    };
    let listener = Probe::start(&net, "b", &["listen", "--for", "120s"]);
    listener.expect("ready", START);
    let conn_usn = format!("uuid:conn-1::{ST_CONNECTOR}");
    let hub_usn = format!("uuid:hub-1::{ST_SENSORHUB}");
    // Two responders in one namespace share port 1900 (SO_REUSEADDR/SO_REUSEPORT).
    let mut conn = Probe::start(
        &net,
        "a",
        &[
            "respond",
            "--st",
            ST_CONNECTOR,
            "--uuid",
            "conn-1",
            "--location",
            "http://{ip}:8080/",
            "--boot-id",
            "5",
        ],
    );
    let hub = Probe::start(
        &net,
        "a",
        &[
            "respond",
            "--st",
            ST_SENSORHUB,
            "--uuid",
            "hub-1",
            "--location",
            "https://{ip}:9443/api",
            "--boot-id",
            "9",
        ],
    );
    let ready = conn.expect("ready", START);
    assert_eq!(ready["interfaces"][0]["addr"], "10.77.0.1", "{ready}");
    hub.expect("ready", START);

    // Searches from the responders' subnet (b) and from a foreign one on the same wire (c).
    let by_st = Probe::start(&net, "b", &["search", "--st", ST_CONNECTOR, "--wait", "3s"]);
    let all = Probe::start(&net, "b", &["search", "--st", "ssdp:all", "--wait", "3s"]);
    let foreign = Probe::start(&net, "c", &["search", "--st", ST_CONNECTOR, "--wait", "3s"]);

    let found = by_st.expect("found", START);
    assert_eq!(usns(&found), vec![conn_usn.clone()], "{found}");
    let f = &found["found"][0];
    assert_eq!(f["location"], "http://10.77.0.1:8080/");
    assert_eq!(f["uuid"], "conn-1");
    assert!(f["server"].as_str().unwrap().contains(" UPnP/1.1 outpost/"), "{f}");

    let mut every = usns(&all.expect("found", START));
    every.sort();
    assert_eq!(every, [conn_usn.clone(), hub_usn.clone()]);

    let nothing = foreign.expect("found", START);
    assert_eq!(usns(&nothing), Vec::<String>::new(), "a foreign subnet must get no answer");

    conn.stop();
    let stats = conn.expect("stopped", START)["stats"].clone();
    assert!(stats["answered"].as_u64().unwrap() >= 2, "{stats}");
    assert!(stats["dropped_foreign"].as_u64().unwrap() >= 1, "{stats}");
    assert_eq!(stats["interfaces"], 1);

    // The listener heard both alive (with LOCATION and BOOTID) and the connector's byebye.
    let heard = listener.until(START, |v| v["nts"] == "ssdp:byebye" && v["usn"] == conn_usn.as_str());
    let alive = |usn: &str| heard.iter().find(|v| v["nts"] == "ssdp:alive" && v["usn"] == usn).cloned();
    let conn_alive = alive(&conn_usn).expect("connector alive heard");
    assert_eq!(conn_alive["location"], "http://10.77.0.1:8080/");
    assert_eq!(conn_alive["boot_id"], 5);
    assert_eq!(conn_alive["max_age"], 1800);
    assert!(conn_alive["source"].as_str().unwrap().starts_with("10.77.0.1:"));
    let hub_alive = alive(&hub_usn).expect("hub alive heard");
    assert_eq!(hub_alive["location"], "https://10.77.0.1:9443/api");
}

#[test]
fn a_flood_is_answered_at_the_rate_limit_not_more() {
    let Some(net) = net("flood", &[("a", "10.78.0.1/24"), ("b", "10.78.0.2/24")]) else { return };
    let mut responder = Probe::start(
        &net,
        "a",
        &[
            "respond",
            "--st",
            ST_CONNECTOR,
            "--uuid",
            "conn-2",
            "--location",
            "http://{ip}:8080/",
            "--global",
            "1000/1000",
            "--per-source",
            "2/4",
        ],
    );
    responder.expect("ready", START);
    let flood =
        Probe::start(&net, "b", &["flood", "--to", "10.78.0.1:1900", "--count", "200", "--wait", "2s"]);
    let result = flood.expect("flood", START);
    let replies = result["replies"].as_u64().unwrap();
    let elapsed = result["elapsed_ms"].as_u64().unwrap() as f64 / 1000.0;
    // Burst 4, then 2 a second for however long the flood lasted on this machine.
    assert!(replies >= 4, "{result}");
    assert!(replies as f64 <= 4.0 + (2.0 * elapsed).ceil(), "{result}");

    responder.stop();
    let stats = responder.expect("stopped", START)["stats"].clone();
    assert_eq!(stats["answered"].as_u64().unwrap(), replies, "{stats}");
    let limited = stats["dropped_rate_limited"].as_u64().unwrap();
    assert_eq!(replies + limited, 200, "every search was either answered or counted as dropped: {stats}");
}

#[test]
fn an_interface_that_appears_later_is_picked_up() {
    let Some(net) = net("late", &[("a", "10.80.0.1/24"), ("b", "10.80.0.2/24")]) else { return };
    // Like a machine whose DHCP lease comes after the service started: no address at first.
    let ip = |args: &[&str]| {
        let ok = std::process::Command::new("ip").args(["-n", &net.ns("a")]).args(args).status().unwrap();
        assert!(ok.success(), "ip {args:?}");
    };
    ip(&["addr", "flush", "dev", "eth0"]);
    let mut responder = Probe::start(
        &net,
        "a",
        &[
            "respond",
            "--st",
            ST_CONNECTOR,
            "--uuid",
            "conn-4",
            "--location",
            "http://{ip}:8080/",
            "--rescan",
            "1s",
            "--expect-interfaces",
            "0",
        ],
    );
    responder.expect("ready", START);
    ip(&["addr", "add", "10.80.0.7/24", "dev", "eth0"]);
    // Search until the rescan (every second) has joined the new address.
    let deadline = Instant::now() + Duration::from_secs(30);
    let found = loop {
        let search = Probe::start(&net, "b", &["search", "--st", ST_CONNECTOR, "--wait", "2s"]);
        let found = search.expect("found", START);
        if !usns(&found).is_empty() || Instant::now() > deadline {
            break found;
        }
    };
    assert_eq!(found["found"][0]["location"], "http://10.80.0.7:8080/", "{found}");
    responder.stop();
    let stats = responder.expect("stopped", START)["stats"].clone();
    assert_eq!(stats["interfaces"], 1, "{stats}");
}

/// Checks that a standard UPnP tool (GSSDP's `gssdp-discover`, Debian package `gupnp-tools`) sees
/// the responder. Skipped when the tool is not installed.
#[test]
fn gssdp_discover_sees_the_responder() {
    let tool_missing = std::process::Command::new("gssdp-discover")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err();
    if tool_missing {
        eprintln!("SKIPPED: gssdp-discover is not installed (apt-get install gupnp-tools)");
        return;
    }
    let Some(net) = net("gssdp", &[("a", "10.79.0.1/24"), ("b", "10.79.0.2/24")]) else { return };
    let responder = Probe::start(
        &net,
        "a",
        &["respond", "--st", ST_CONNECTOR, "--uuid", "conn-3", "--location", "http://{ip}:8080/"],
    );
    responder.expect("ready", START);
    let out = net
        .command("b", "timeout")
        .args(["20", "gssdp-discover", "-i", "eth0", "-t", ST_CONNECTOR, "-n", "4"])
        .output()
        .expect("run gssdp-discover");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("uuid:conn-3::{ST_CONNECTOR}")), "gssdp-discover printed:\n{text}");
    assert!(text.contains("http://10.79.0.1:8080/"), "gssdp-discover printed:\n{text}");
}
