//! A cloud inside a network namespace (see `tests/netns`), for tests and benches whose machines
//! live in namespaces. The test process cannot reach an address inside a namespace, so admin API
//! requests go through a helper: the same executable run again inside the cloud's namespace with
//! [`HELPER_ENV`] set, reading one request a line on stdin and answering each with one `@api`
//! line on stdout. Each executable calls [`serve_if_helper`] first thing in the entry point the
//! helper command runs (a `#[test]` of its own, or `main`).

use super::{cloud_config, connector_config, key_machine_id, wait_until, CloudApi, Proc, BIN};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

/// Set (to the helper's spec, JSON) in the environment of the helper process.
pub const HELPER_ENV: &str = "OUTPOST_NS_API_HELPER";

/// If this process is the helper: answers requests until stdin closes, then exits. Otherwise
/// returns at once.
pub fn serve_if_helper() {
    let Ok(spec) = std::env::var(HELPER_ENV) else { return };
    let spec: Value = serde_json::from_str(&spec).expect("API helper spec is JSON");
    let client = super::ca_client(Path::new(spec["ca"].as_str().unwrap()));
    let url = spec["url"].as_str().unwrap();
    let token_file = spec["token_file"].as_str().unwrap();
    let mut out = std::io::stdout().lock();
    for line in std::io::stdin().lock().lines().map_while(Result::ok) {
        let req: Value = serde_json::from_str(&line).expect("one JSON request a line");
        // Read at every request: the cloud writes it on its first start.
        let token = std::fs::read_to_string(token_file).unwrap_or_default();
        let mut r = client
            .request(
                req["method"].as_str().unwrap().parse().unwrap(),
                format!("{url}{}", req["path"].as_str().unwrap()),
            )
            .bearer_auth(token.trim());
        if !req["body"].is_null() {
            r = r.json(&req["body"]);
        }
        let answer = match r.send() {
            Ok(r) => {
                let status = r.status().as_u16();
                serde_json::json!({"status": status, "body": r.json::<Value>().unwrap_or(Value::Null)})
            }
            Err(e) => serde_json::json!({"status": 0, "body": e.to_string()}),
        };
        writeln!(out, "@api {answer}").unwrap();
        out.flush().unwrap();
    }
    std::process::exit(0);
}

/// `outpost cloud` inside a namespace, and the helper that asks it.
pub struct NsCloud {
    pub proc: Proc,
    pub dir: PathBuf,
    url: String,
    helper: Mutex<(Child, ChildStdin, mpsc::Receiver<Value>)>,
}

impl NsCloud {
    /// Starts the cloud listening on `ip:8443` with its data in `dir`: `in_ns(program)` must give
    /// a command that runs `program` in the namespace that has `ip`, and `helper_args` are the
    /// arguments that make this executable reach [`serve_if_helper`]. Returns once the cloud
    /// answers through the helper.
    pub fn start(dir: &Path, ip: &str, in_ns: impl Fn(&Path) -> Command, helper_args: &[&str]) -> NsCloud {
        let config = cloud_config(dir, &format!("{ip}:8443"), &format!("names = [\"{ip}\"]"));
        let mut cmd = in_ns(Path::new(BIN));
        cmd.args(["cloud", "--config", config.to_str().unwrap()]);
        let proc = Proc::start_cmd(cmd, &dir.join("cloud.log"));
        let ca = dir.join("data/tls/ca.pem");
        wait_until(Duration::from_secs(20), "the cloud has made its certificate", || ca.exists());

        let url = format!("https://{ip}:8443");
        let spec = serde_json::json!({"url": url, "ca": ca, "token_file": dir.join("data/admin-token")});
        let mut child = in_ns(&std::env::current_exe().unwrap())
            .args(helper_args)
            .env(HELPER_ENV, spec.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run the API helper in the namespace");
        let stdout = child.stdout.take().unwrap();
        let stdin = child.stdin.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // A test harness may print on the same line before the answer.
                let Some(i) = line.find("@api ") else { continue };
                if tx.send(serde_json::from_str::<Value>(&line[i + 5..]).unwrap()).is_err() {
                    break;
                }
            }
        });
        let cloud = NsCloud { proc, dir: dir.to_path_buf(), url, helper: Mutex::new((child, stdin, rx)) };
        wait_until(Duration::from_secs(20), "the cloud answers in its namespace", || {
            cloud.request("GET", "/v1/machines", None).0 == 200
        });
        cloud
    }
}

impl NsCloud {
    /// Starts a connector listening on port 8444 of every address of its namespace (`in_ns` as
    /// for [`NsCloud::start`]), enrolled with a fresh token, with `extra` config keys (as for
    /// [`connector_config`]); returns once it is enrolled, with its machine id.
    pub fn start_connector(
        &self,
        dir: &Path,
        in_ns: impl Fn(&Path) -> Command,
        extra: &str,
    ) -> (Proc, String) {
        let config = connector_config(dir, "0.0.0.0:8444", self, Some(self.connector_token()), extra);
        let mut cmd = in_ns(Path::new(BIN));
        cmd.args(["connector", "--config", config.to_str().unwrap()]);
        let proc = Proc::start_cmd(cmd, &dir.join("connector.log"));
        let enrolled = dir.join("data/enrollment.json");
        wait_until(Duration::from_secs(60), "the connector is enrolled", || enrolled.exists());
        (proc, key_machine_id(dir))
    }
}

impl CloudApi for NsCloud {
    fn url(&self) -> String {
        self.url.clone()
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("data/tls/ca.pem")
    }

    /// Status 0 when the cloud was unreachable.
    fn request(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let mut h = self.helper.lock().unwrap();
        let req = serde_json::json!({"method": method, "path": path, "body": body});
        writeln!(h.1, "{req}").unwrap();
        h.1.flush().unwrap();
        let a = h.2.recv_timeout(Duration::from_secs(30)).expect("the API helper answers");
        (a["status"].as_u64().unwrap() as u16, a["body"].clone())
    }
}

impl Drop for NsCloud {
    fn drop(&mut self) {
        let h = self.helper.get_mut().unwrap();
        let _ = h.0.kill();
        let _ = h.0.wait();
    }
}
