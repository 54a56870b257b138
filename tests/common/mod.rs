//! Harness for end-to-end tests: the real `outpost` binary as separate processes, talking HTTPS
//! over loopback, each test in its own temporary directory with its own ports.
#![allow(dead_code)]

pub mod browser;
/// The real SMTP server of the mail tests (aiosmtpd), shared with `outpost-shared`'s tests.
#[path = "../../shared/tests/smtp/mod.rs"]
pub mod smtp;

use serde_json::Value;
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
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let child = Command::new(BIN)
            .args(args)
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
        std::fs::create_dir_all(dir).unwrap();
        let config = dir.join("cloud.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n{extra}\n",
                dir.join("data").display()
            ),
        )
        .unwrap();
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

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }
    pub fn ca(&self) -> PathBuf {
        self.dir.join("data/tls/ca.pem")
    }
    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.dir.join("data/admin-token")).unwrap().trim().to_string()
    }
    /// A fresh one-time enrollment token from the cloud's API.
    pub fn enroll_token(&self) -> String {
        let r = self
            .client()
            .post(format!("{}/v1/enrollment-tokens", self.url()))
            .bearer_auth(self.admin_token())
            .json(&serde_json::json!({"network": "default", "ttl": "1h"}))
            .send()
            .unwrap();
        assert!(r.status().is_success(), "token: {}", r.status());
        let v: Value = r.json().unwrap();
        v["token"].as_str().unwrap().to_string()
    }

    /// POST a JSON body to an admin API path.
    pub fn api_post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .client()
            .post(format!("{}{path}", self.url()))
            .bearer_auth(self.admin_token())
            .json(&body)
            .send()
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }

    pub fn client(&self) -> reqwest::blocking::Client {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(self.ca()).unwrap()).unwrap();
        reqwest::blocking::Client::builder()
            .add_root_certificate(ca)
            .tls_built_in_root_certs(false)
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    }

    fn get_status(&self, path: &str) -> Option<u16> {
        self.client().get(format!("{}{path}", self.url())).send().ok().map(|r| r.status().as_u16())
    }

    /// GET an admin API path as JSON.
    pub fn api(&self, path: &str) -> Value {
        let r = self
            .client()
            .get(format!("{}{path}", self.url()))
            .bearer_auth(self.admin_token())
            .send()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().unwrap()
    }

    /// Every stored seq of one sensor of one machine.
    pub fn seqs(&self, machine: &str, sensor: &str) -> Vec<u64> {
        let v = self.api(&format!("/v1/machines/{machine}/readings?sensor={sensor}&limit=100000"));
        v.as_array().unwrap().iter().map(|r| r["seq"].as_u64().unwrap()).collect()
    }
}

/// Writes a hub config that enrolls with and uploads to `cloud`, plus `extra` TOML (top-level
/// keys and tables) and `uplink` (more `[uplink]` keys), and returns its path.
pub fn hub_config_with(dir: &Path, cloud: &CloudProc, extra: &str, uplink: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("sensorhub.toml");
    std::fs::write(
        &path,
        format!(
            "data_dir = \"{}\"\n{extra}\n[uplink]\ncloud = \"{}\"\nca_file = \"{}\"\nenroll_token = \"{}\"\nretry_min = \"200ms\"\nretry_max = \"1s\"\n# Loopback tests: no SSDP multicast on this machine's real interfaces.\ndiscover = false\nadvertise = false\n{uplink}\n",
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
        let key = outpost_shared::keys::KeyPair::generate().unwrap();
        let body = serde_json::json!({"token": cloud.enroll_token(), "public_key": key.public().to_pem(),
            "role": role, "hostname": "test", "lan_cert": Value::Null});
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
