//! Harness for end-to-end tests: the real `outpost` binary as separate processes, talking HTTPS
//! over loopback, each test in its own temporary directory with its own ports.
#![allow(dead_code)]

pub mod browser;
// The throwaway PostgreSQL server it starts is unix-only (a socket, a user to run as).
#[cfg(unix)]
pub mod cloud_nodes;
pub mod console;
pub mod ns_cloud;
pub mod small_disk;
/// The real SMTP server of the mail tests (aiosmtpd), shared with `outpost-shared`'s tests.
#[path = "../../shared/tests/smtp/mod.rs"]
pub mod smtp;

use serde_json::Value;
use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_outpost");

/// A running `outpost` process, killed when dropped. Output goes to a log file in the test's
/// directory, printed when a test fails so the reason is visible.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn start(args: &[&str], log: &Path) -> Proc {
        let mut cmd = Command::new(BIN);
        cmd.args(args);
        Proc::start_cmd(cmd, log)
    }

    /// Runs `cmd` (e.g. `outpost` wrapped in `ip netns exec`) with its output logged like [`start`].
    pub fn start_cmd(mut cmd: Command, log: &Path) -> Proc {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let child = cmd
            .env("RUST_LOG", "info,outpost_sensorhub::uplink=debug,sled=warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("outpost binary starts");
        Proc { child, log: log.to_path_buf() }
    }

    /// SIGKILL: no flush, no goodbye.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        unsafe_free_sigterm(self.child.id());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("process did not stop within 20 s of SIGTERM; log: {}", self.log.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn unsafe_free_sigterm(pid: u32) {
    let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- log of {} ----\n{}", self.log.display(), self.log_text());
        }
    }
}

/// A port free right now on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A cloud process with what a client needs to talk to it.
pub struct CloudProc {
    pub proc: Option<Proc>,
    pub dir: PathBuf,
    pub port: u16,
    pub config: PathBuf,
}

impl CloudProc {
    pub fn start(dir: &Path) -> CloudProc {
        Self::start_on(dir, free_port(), "")
    }

    pub fn start_on(dir: &Path, port: u16, extra: &str) -> CloudProc {
        let config = cloud_config(dir, &format!("127.0.0.1:{port}"), extra);
        let mut c = CloudProc { proc: None, dir: dir.to_path_buf(), port, config };
        c.restart();
        c
    }

    pub fn restart(&mut self) {
        let log = self.dir.join("cloud.log");
        self.proc = Some(Proc::start(&["cloud", "--config", self.config.to_str().unwrap()], &log));
        wait_until(Duration::from_secs(20), "cloud answers /v1/health", || {
            self.ca().exists() && self.get_status("/v1/health") == Some(200)
        });
    }

    pub fn stop(&mut self) {
        if let Some(p) = self.proc.take() {
            assert!(p.stop().success(), "cloud exits cleanly on SIGTERM");
        }
    }

    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.dir.join("data/admin-token")).unwrap().trim().to_string()
    }

    pub fn client(&self) -> reqwest::blocking::Client {
        ca_client(&self.ca())
    }

    fn get_status(&self, path: &str) -> Option<u16> {
        self.client().get(format!("{}{path}", self.url())).send().ok().map(|r| r.status().as_u16())
    }
}

/// Writes a cloud config listening on `listen` with its data in `dir/data`, plus `extra` keys, and
/// returns its path.
pub fn cloud_config(dir: &Path, listen: &str, extra: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let config = dir.join("cloud.toml");
    let data = dir.join("data");
    std::fs::write(&config, format!("listen = \"{listen}\"\ndata_dir = \"{}\"\n{extra}\n", data.display()))
        .unwrap();
    config
}

/// A blocking HTTPS client that trusts exactly the CA in `ca`.
pub fn ca_client(ca: &Path) -> reqwest::blocking::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap();
    reqwest::blocking::Client::builder()
        .add_root_certificate(ca)
        .tls_built_in_root_certs(false)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A cloud as a test sees it: where machines reach it, and its admin API. [`CloudProc`] answers
/// over loopback; a cloud inside a network namespace through a helper process there.
pub trait CloudApi {
    /// The base URL machines are configured with.
    fn url(&self) -> String;
    /// The CA that signed the cloud's certificate.
    fn ca(&self) -> PathBuf;
    /// One admin API request (admin token added): the status and the JSON answer (null if none).
    fn request(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value);

    /// GET an admin API path as JSON; panics unless it succeeds.
    fn api(&self, path: &str) -> Value {
        let (status, v) = self.request("GET", path, None);
        assert!((200..300).contains(&status), "GET {path}: {status} {v}");
        v
    }

    /// POST a JSON body to an admin API path.
    fn api_post(&self, path: &str, body: Value) -> (u16, Value) {
        self.request("POST", path, Some(&body))
    }

    /// A fresh one-time enrollment token for a sensorhub from the cloud's API.
    fn enroll_token(&self) -> String {
        self.role_token("sensorhub")
    }

    /// A fresh one-time enrollment token for a connector: asked for by name, as an admin would.
    fn connector_token(&self) -> String {
        self.role_token("connector")
    }

    /// A fresh one-time enrollment token for `role` (`sensorhub` or `connector`).
    fn role_token(&self, role: &str) -> String {
        let (status, v) = self.api_post(
            "/v1/enrollment-tokens",
            serde_json::json!({"network": "default", "role": role, "ttl": "1h"}),
        );
        assert!((200..300).contains(&status), "token: {status} {v}");
        v["token"].as_str().unwrap().to_string()
    }

    /// Every stored seq of one sensor of one machine.
    fn seqs(&self, machine: &str, sensor: &str) -> Vec<u64> {
        let v = self.api(&format!("/v1/machines/{machine}/readings?sensor={sensor}&limit=100000"));
        v.as_array().unwrap().iter().map(|r| r["seq"].as_u64().unwrap()).collect()
    }
}

impl CloudApi for CloudProc {
    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("data/tls/ca.pem")
    }

    fn request(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let mut r = self
            .client()
            .request(method.parse().unwrap(), format!("{}{path}", self.url()))
            .bearer_auth(self.admin_token());
        if let Some(b) = body {
            r = r.json(b);
        }
        let r = r.send().unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }
}

/// `GET /v1/machines`.
pub fn machines(cloud: &impl CloudApi) -> Vec<Value> {
    cloud.api("/v1/machines").as_array().unwrap().clone()
}

/// The `GET /v1/machines` row of one machine, if the cloud knows it.
pub fn machine(cloud: &impl CloudApi, id: &str) -> Option<Value> {
    machines(cloud).into_iter().find(|m| m["id"] == id)
}

/// Every seq the cloud holds for a machine, over all its sensors, sorted.
pub fn all_seqs(cloud: &impl CloudApi, machine: &str) -> Vec<u64> {
    let sensors = cloud.api(&format!("/v1/machines/{machine}/sensors"));
    let mut all = Vec::new();
    for s in sensors.as_array().unwrap() {
        all.extend(cloud.seqs(machine, s["sensor"].as_str().unwrap()));
    }
    all.sort_unstable();
    all
}

/// The cloud holds exactly seqs 1..next_seq of `machine`, each once: nothing lost, nothing twice.
pub fn assert_exactly_once(cloud: &impl CloudApi, machine: &str, next_seq: u64) {
    let all = all_seqs(cloud, machine);
    let unique: BTreeSet<u64> = all.iter().copied().collect();
    assert_eq!(all.len(), unique.len(), "{machine}: some reading is stored twice");
    let expected: BTreeSet<u64> = (1..next_seq).collect();
    let missing: Vec<_> = expected.difference(&unique).take(10).collect();
    assert!(missing.is_empty(), "{machine}: readings lost, e.g. seqs {missing:?} (of {})", next_seq - 1);
    assert_eq!(unique, expected, "{machine}: the cloud holds seqs the hub never took");
}

/// Writes a hub config that enrolls with and uploads to `cloud`, plus `extra` TOML (top-level
/// keys and tables) and `uplink` (more `[uplink]` keys, which replace the test defaults here:
/// short retries, and no SSDP, since loopback tests must not multicast on this machine's real
/// interfaces), and returns its path.
pub fn hub_config_with(dir: &Path, cloud: &impl CloudApi, extra: &str, uplink: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("sensorhub.toml");
    let given = |key: &str| uplink.lines().any(|l| l.split('=').next().map(str::trim) == Some(key));
    let defaults: String =
        [("retry_min", "\"200ms\""), ("retry_max", "\"1s\""), ("discover", "false"), ("advertise", "false")]
            .iter()
            .filter(|(k, _)| !given(k))
            .map(|(k, v)| format!("{k} = {v}\n"))
            .collect();
    std::fs::write(
        &path,
        format!(
            "data_dir = \"{}\"\n{extra}\n[uplink]\ncloud = \"{}\"\nca_file = \"{}\"\nenroll_token = \"{}\"\n{defaults}{uplink}\n",
            dir.join("data").display(),
            cloud.url(),
            cloud.ca().display(),
            cloud.enroll_token(),
        ),
    )
    .unwrap();
    path
}

pub fn hub_config(dir: &Path, cloud: &CloudProc, extra: &str) -> PathBuf {
    hub_config_with(dir, cloud, extra, "")
}

pub fn start_hub(dir: &Path, config: &Path) -> Proc {
    Proc::start(&["sensorhub", "--config", config.to_str().unwrap()], &dir.join("hub.log"))
}

/// The hub's machine id: the fingerprint of its key, as its status file reports it.
pub fn machine_id(hub_dir: &Path) -> String {
    let path = hub_dir.join("data/status.json");
    wait_until(Duration::from_secs(30), "the hub writes its status file", || path.exists());
    let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    v["machine_id"].as_str().unwrap().to_string()
}

/// A machine of the test's own: a real key, enrolled with the cloud, signing its requests like a
/// hub does. For feeding the cloud exactly the requests a test needs.
pub struct TestMachine {
    pub key: outpost_shared::keys::KeyPair,
}

impl TestMachine {
    pub fn enroll(cloud: &CloudProc, role: &str) -> TestMachine {
        TestMachine::enroll_in(cloud, role, "default")
    }

    /// Enrolls in `network` (customers hold networks).
    pub fn enroll_in(cloud: &CloudProc, role: &str, network: &str) -> TestMachine {
        let (status, v) = cloud.api_post(
            "/v1/enrollment-tokens",
            serde_json::json!({"network": network, "role": role, "ttl": "1h"}),
        );
        assert!((200..300).contains(&status), "token: {status} {v}");
        let token = v["token"].as_str().unwrap().to_string();
        let key = outpost_shared::keys::KeyPair::generate().unwrap();
        // A connector enrolls with the fingerprint of its LAN certificate; this one has none to
        // serve, so any well-formed fingerprint does.
        let lan_cert = (role == "connector").then(|| "0".repeat(64));
        let body = serde_json::json!({"token": token, "public_key": key.public().to_pem(),
            "role": role, "hostname": "test", "lan_cert": lan_cert});
        let r = cloud.client().post(format!("{}/v1/enroll", cloud.url())).json(&body).send().unwrap();
        assert!(r.status().is_success(), "enroll: {}", r.status());
        TestMachine { key }
    }

    pub fn id(&self) -> String {
        self.key.machine_id().to_string()
    }

    /// POSTs `body` (JSON bytes) to `path`, signed over `signed_body` (normally the same bytes).
    pub fn post(
        &self,
        cloud: &CloudProc,
        path: &str,
        body: Vec<u8>,
        signed_body: &[u8],
        gzip: bool,
    ) -> (u16, Value) {
        let sig =
            outpost_shared::keys::sign_request(&self.key, "POST", path, signed_body, chrono::Utc::now())
                .unwrap();
        let mut r = cloud.client().post(format!("{}{path}", cloud.url()));
        for (name, value) in sig.to_pairs() {
            r = r.header(name, value);
        }
        if gzip {
            r = r.header("content-encoding", "gzip");
        }
        let resp = r.body(body).send().unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().unwrap_or(Value::Null))
    }
}

/// Polls `f` until it holds or `limit` passes; a timeout here is a failure of the system, with a
/// generous limit so a busy machine does not make it flaky.
pub fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {limit:?} waiting until {what}");
}

/// Runs `outpost buffer` on a stopped hub's data directory.
pub fn buffer_stats(hub_dir: &Path) -> Value {
    let out = Command::new(BIN).args(["buffer", "--data-dir"]).arg(hub_dir.join("data")).output().unwrap();
    assert!(out.status.success(), "outpost buffer: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A hub's `status.json` (uplink path, buffered, last error), if it has written one.
pub fn hub_status(hub_dir: &Path) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(hub_dir.join("data/status.json")).ok()?).ok()
}

/// Writes a connector config that forwards to `cloud` and enrolls with `enroll_token`, with short
/// retry delays, plus `extra` (more top-level keys, dotted for tables: `buffer.quota = "64KiB"`;
/// not those set here), and returns its path.
pub fn connector_config(
    dir: &Path,
    listen: &str,
    cloud: &impl CloudApi,
    enroll_token: Option<String>,
    extra: &str,
) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("connector.toml");
    let token = enroll_token.map(|t| format!("cloud.enroll_token = \"{t}\"\n")).unwrap_or_default();
    std::fs::write(
        &path,
        format!(
            "data_dir = \"{}\"\nlisten = \"{listen}\"\ncloud.url = \"{}\"\ncloud.ca_file = \"{}\"\n{token}\
             cloud.retry_min = \"200ms\"\ncloud.retry_max = \"1s\"\nbuffer.retry_after = \"1s\"\n{extra}\n",
            dir.join("data").display(),
            cloud.url(),
            cloud.ca().display(),
        ),
    )
    .unwrap();
    path
}

/// The machine id of a connector (or any role) with its data in `dir/data`: the fingerprint of
/// its key, once it has made one.
pub fn key_machine_id(dir: &Path) -> String {
    let path = dir.join("data/machine.key");
    wait_until(Duration::from_secs(30), "the machine has made its key", || path.exists());
    outpost_shared::keys::KeyPair::load(&path).unwrap().machine_id().to_string()
}

/// A connector process on 127.0.0.1 forwarding to a [`CloudProc`], with SSDP off (loopback tests
/// must not multicast on this machine's interfaces), no embedded hub and short retry delays.
pub struct ConnectorProc {
    pub proc: Option<Proc>,
    pub dir: PathBuf,
    pub port: u16,
    pub config: PathBuf,
}

impl ConnectorProc {
    /// Starts a connector enrolled with a fresh token, and waits until it is enrolled: hubs that
    /// enroll after that find it authorised in their receipt. `extra` as for [`connector_config`].
    pub fn start(dir: &Path, cloud: &CloudProc, extra: &str) -> ConnectorProc {
        let c = Self::launch(dir, cloud, Some(cloud.connector_token()), extra);
        let enrolled = dir.join("data/enrollment.json");
        wait_until(Duration::from_secs(30), "the connector is enrolled", || enrolled.exists());
        c
    }

    /// A connector that was never enrolled: a valid certificate, but no hub may trust it.
    pub fn start_unenrolled(dir: &Path, cloud: &CloudProc) -> ConnectorProc {
        Self::launch(dir, cloud, None, "")
    }

    fn launch(dir: &Path, cloud: &CloudProc, token: Option<String>, extra: &str) -> ConnectorProc {
        let port = free_port();
        let config = connector_config(
            dir,
            &format!("127.0.0.1:{port}"),
            cloud,
            token,
            &format!("monitor_self = false\nssdp.advertise = false\nssdp.search_hubs = false\n{extra}"),
        );
        let mut c = ConnectorProc { proc: None, dir: dir.to_path_buf(), port, config };
        c.restart();
        c
    }

    /// Starts the process (again, on the same port and data) and waits until its LAN API answers.
    pub fn restart(&mut self) {
        let log = self.dir.join("connector.log");
        // A running one ends first: two processes cannot hold the same buffer.
        drop(self.proc.take());
        self.proc = Some(Proc::start(&["connector", "--config", self.config.to_str().unwrap()], &log));
        let ca = self.dir.join("data/tls/ca.pem");
        wait_until(Duration::from_secs(20), "the connector answers /v1/health", || {
            ca.exists()
                && ca_client(&ca)
                    .get(format!("{}/v1/health", self.url()))
                    .send()
                    .is_ok_and(|r| r.status() == 200)
        });
    }

    pub fn kill9(&mut self) {
        if let Some(p) = self.proc.take() {
            p.kill9();
        }
    }

    pub fn stop(&mut self) {
        if let Some(p) = self.proc.take() {
            assert!(p.stop().success(), "connector exits cleanly on SIGTERM");
        }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// `connector:<id>`, the uplink a hub reports when it sends through this connector.
    pub fn path(&self) -> String {
        format!("connector:{}", key_machine_id(&self.dir))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("connector.log")).unwrap_or_default()
    }

    /// `[uplink]` lines that make a hub send through this connector.
    pub fn hub_uplink(&self) -> String {
        format!("connector = \"{}\"\n", self.url())
    }
}

/// Established TCP connections of process `pid` to port `remote_port` on loopback: its socket
/// inodes matched against the kernel's connection table.
pub fn connections_to(pid: u32, remote_port: u16) -> usize {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter_map(|l| {
                    let l = l.to_string_lossy().into_owned();
                    l.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')).map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    let mut n = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table).unwrap_or_default().lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "01" {
                continue;
            }
            let port = f[2].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            if port == Some(remote_port) && inodes.contains(f[9]) {
                n += 1;
            }
        }
    }
    n
}
