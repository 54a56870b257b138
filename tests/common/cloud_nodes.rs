//! Several `outpost cloud` processes on one PostgreSQL behind Debian's haproxy: a throwaway
//! database server, nodes that share the first node's key, certificate and admin token (as
//! docs/postgres.md tells operators to copy them), a load balancer on loopback, and simulated
//! hubs that enroll and sign like real ones.

use super::{ca_client, wait_until, CloudApi, CloudProc, Proc};
use outpost_cloud::store::postgres::throwaway::{create_database, Throwaway};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A private PostgreSQL server and one database on it (the URL the nodes are given).
pub fn database() -> (Throwaway, String) {
    let server = Throwaway::start().unwrap_or_else(|e| panic!("{e}"));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let url = rt.block_on(create_database(&server, "nodes")).unwrap();
    (server, url)
}

/// The `[storage]` table of a node on `url`: a short wait for a connection, so an outage is
/// answered "retry later" quickly.
pub fn storage(url: &str) -> String {
    format!("[storage]\npostgres = \"{url}\"\ntimeout = \"1s\"\n")
}

/// Starts another node on `port` with the data directory files of `first` that every node must
/// share: the signing key, the TLS certificate and its authority, the admin token. Never the
/// database: that is the shared one.
pub fn another_node(first: &CloudProc, dir: &Path, port: u16, url: &str) -> CloudProc {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    for f in ["cloud.key", "admin-token", "tls"] {
        let ok =
            Command::new("cp").arg("-a").arg(first.dir.join("data").join(f)).arg(&data).status().unwrap();
        assert!(ok.success(), "copy {f}");
    }
    CloudProc::start_on(dir, port, &storage(url))
}

/// haproxy in TCP mode (TLS passes through to the nodes) on loopback, round robin, checking
/// each node every 200 ms and sending a new connection to a live node when one is refused.
pub struct Balancer {
    pub proc: Proc,
    pub port: u16,
}

/// Debian's haproxy, or a failure saying how to get it (never a skip).
fn haproxy() -> PathBuf {
    let found = ["/usr/sbin/haproxy", "/usr/bin/haproxy"].into_iter().map(PathBuf::from).find(|p| p.exists());
    found.unwrap_or_else(|| panic!("haproxy is not installed: apt-get install haproxy (CI's .ci/run does)"))
}

impl Balancer {
    pub fn start(dir: &Path, port: u16, nodes: &[u16]) -> Balancer {
        std::fs::create_dir_all(dir).unwrap();
        let servers: String = nodes
            .iter()
            .enumerate()
            .map(|(i, p)| format!("    server n{i} 127.0.0.1:{p} check inter 200ms fall 1 rise 2\n"))
            .collect();
        let config = dir.join("haproxy.cfg");
        std::fs::write(
            &config,
            format!(
                "global\n    maxconn 2000\n\
                 defaults\n    mode tcp\n    timeout connect 1s\n    timeout client 60s\n    timeout server 60s\n    \
                 retries 3\n    option redispatch\n\
                 frontend cloud\n    bind 127.0.0.1:{port}\n    default_backend nodes\n\
                 backend nodes\n    balance roundrobin\n{servers}"
            ),
        )
        .unwrap();
        let check =
            Command::new(haproxy()).arg("-c").arg("-f").arg(&config).stdout(Stdio::null()).status().unwrap();
        assert!(check.success(), "haproxy refuses {}", config.display());
        let mut cmd = Command::new(haproxy());
        cmd.arg("-db").arg("-f").arg(&config);
        let proc = Proc::start_cmd(cmd, &dir.join("haproxy.log"));
        Balancer { proc, port }
    }
}

/// The cloud as machines and people see it: through the balancer.
pub struct Balanced {
    pub port: u16,
    /// The nodes' shared authority and admin token.
    pub ca: PathBuf,
    pub admin_token: String,
}

impl Balanced {
    pub fn new(balancer: &Balancer, first: &CloudProc) -> Balanced {
        let b = Balanced { port: balancer.port, ca: first.ca(), admin_token: first.admin_token() };
        wait_until(Duration::from_secs(20), "the balancer passes requests on", || {
            ca_client(&b.ca).get(format!("{}/v1/health", b.url())).send().is_ok_and(|r| r.status() == 200)
        });
        b
    }
}

impl CloudApi for Balanced {
    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    fn ca(&self) -> PathBuf {
        self.ca.clone()
    }

    fn request(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let mut r = ca_client(&self.ca)
            .request(method.parse().unwrap(), format!("{}{path}", self.url()))
            .bearer_auth(&self.admin_token);
        if let Some(b) = body {
            r = r.json(b);
        }
        let r = r.send().unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }
}

/// A simulated hub: a real key, enrolled through `cloud`, signing like a hub.
pub struct SimHub {
    pub key: outpost_shared::keys::KeyPair,
}

/// What a simulated hub's upload got back.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// Stored (or a duplicate): acknowledged.
    Taken,
    /// 503 with Retry-After: keep it and send it again.
    RetryLater,
    /// No answer (a node died mid-request, the balancer had nowhere to send it).
    Lost,
    Other(u16),
}

impl SimHub {
    pub fn enroll(cloud: &impl CloudApi) -> SimHub {
        let key = outpost_shared::keys::KeyPair::generate().unwrap();
        let body = serde_json::json!({"token": cloud.enroll_token(), "public_key": key.public().to_pem(),
            "role": "sensorhub", "hostname": "sim"});
        let r = ca_client(&cloud.ca()).post(format!("{}/v1/enroll", cloud.url())).json(&body).send().unwrap();
        assert!(r.status().is_success(), "enroll: {}", r.status());
        SimHub { key }
    }

    pub fn id(&self) -> String {
        self.key.machine_id().to_string()
    }

    /// Uploads readings `seqs` of sensor `load`, stamped now, to `base`.
    pub fn upload(
        &self,
        client: &reqwest::blocking::Client,
        base: &str,
        seqs: std::ops::Range<u64>,
    ) -> Answer {
        let id = self.id();
        let now = chrono::Utc::now();
        let batch = outpost_shared::model::Batch {
            machine_id: id.clone(),
            hostname: "sim".into(),
            role: outpost_shared::model::Role::Sensorhub,
            uplink: "direct".into(),
            buffered: 0,
            dropped: 0,
            version: "test".into(),
            quarantined: 0,
            clock_problem: None,
            features: Vec::new(),
            readings: seqs
                .map(|seq| outpost_shared::model::Reading {
                    machine_id: id.clone(),
                    seq,
                    sample: outpost_shared::model::Sample::new(
                        "load",
                        seq as f64,
                        outpost_shared::model::State::Ok,
                    )
                    .at(now),
                })
                .collect(),
        };
        let json = serde_json::to_vec(&batch).unwrap();
        let sig = outpost_shared::keys::sign_request(&self.key, "POST", "/v1/batches", &json, now).unwrap();
        let mut r = client
            .post(format!("{base}/v1/batches"))
            .header("content-encoding", "gzip")
            .body(outpost_shared::wire::gzip(&json));
        for (k, v) in sig.to_pairs() {
            r = r.header(k, v);
        }
        match r.send() {
            Ok(r) if r.status() == 200 => Answer::Taken,
            Ok(r) if r.status() == 503 && r.headers().contains_key("retry-after") => Answer::RetryLater,
            Ok(r) => Answer::Other(r.status().as_u16()),
            Err(_) => Answer::Lost,
        }
    }

    /// One long-poll for commands at `base`: the envelopes' command ids, or None when the
    /// request got no answer (its node died).
    pub fn poll(&self, client: &reqwest::blocking::Client, base: &str, wait: u64) -> Option<Vec<String>> {
        let path = format!("/v1/commands/poll?wait={wait}");
        let sig =
            outpost_shared::keys::sign_request(&self.key, "GET", &path, b"", chrono::Utc::now()).unwrap();
        let mut r = client.get(format!("{base}{path}"));
        for (k, v) in sig.to_pairs() {
            r = r.header(k, v);
        }
        let r = r.send().ok()?;
        if r.status() != 200 {
            return None;
        }
        let list: Vec<outpost_shared::keys::Signed<outpost_shared::keys::CommandEnvelope>> = r.json().ok()?;
        Some(list.iter().filter_map(|s| Some(s.peek_unverified().ok()?.id)).collect())
    }
}

/// A client for long polls: the cloud may hold a request 30 s.
pub fn long_client(ca: &Path) -> reqwest::blocking::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap();
    reqwest::blocking::Client::builder()
        .add_root_certificate(ca)
        .tls_built_in_root_certs(false)
        .timeout(Duration::from_secs(40))
        .build()
        .unwrap()
}
