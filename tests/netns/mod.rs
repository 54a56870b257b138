//! Test LANs made of network namespaces, for tests that need real multicast between processes
//! without touching this machine's interfaces. A thin wrapper around `tests/netns/netns.sh` (read
//! it for the topology: one bridge in its own namespace, one namespace per host with `eth0`).
//!
//! Use from an integration test of the root package with `mod netns;`, or from another crate's
//! tests with `#[path = "../../tests/netns/mod.rs"] mod netns;`:
//!
//! ```ignore
//! let net = match netns::TestNet::create("e2e", &[("hub", "10.77.0.2/24"), ("conn", "10.77.0.1/24")]) {
//!     Ok(net) => net,
//!     Err(skip) => return netns::skip(&skip),
//! };
//! let child = net.command("conn", "/path/to/outpost").args(["connector"]).spawn()?;
//! // `net` deletes the namespaces when dropped, also when the test panics; end children first.
//! ```
//!
//! Needs Linux, root and iproute2. Without them [`TestNet::create`] says why, and [`skip`] prints
//! it, unless `OUTPOST_NETNS_REQUIRED=1` is set (for CI on a machine that can run them), where it
//! fails the test instead.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Namespaces created for one test; deleted on drop.
pub struct TestNet {
    prefix: String,
}

/// `tests/netns/netns.sh`, found by walking up from the including crate to the workspace root.
fn script_path() -> PathBuf {
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    loop {
        let candidate = dir.join("tests/netns/netns.sh");
        if candidate.exists() || !dir.pop() {
            return candidate;
        }
    }
}

/// Why namespaces cannot be made here, if they cannot.
pub fn unavailable() -> Option<String> {
    if !cfg!(target_os = "linux") {
        return Some("network namespaces need Linux".into());
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1).map(str::to_string));
    if euid.as_deref() != Some("0") {
        return Some("network namespaces need root (run the test as root)".into());
    }
    match Command::new("ip").arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status() {
        Ok(s) if s.success() => None,
        _ => Some("`ip` (iproute2) is not installed".into()),
    }
}

/// Prints why a test is skipped, or panics with it when `OUTPOST_NETNS_REQUIRED=1`.
pub fn skip(reason: &str) {
    if std::env::var("OUTPOST_NETNS_REQUIRED").as_deref() == Ok("1") {
        panic!("OUTPOST_NETNS_REQUIRED=1 but {reason}");
    }
    eprintln!("SKIPPED (no network namespaces): {reason}");
}

impl TestNet {
    /// Creates namespaces `<prefix>-br` and `<prefix>-<host>` for each `(host, "cidr[,cidr]")`,
    /// with a prefix unique to this process and call. `Err` says why it cannot (see [`skip`]).
    pub fn create(tag: &str, hosts: &[(&str, &str)]) -> Result<TestNet, String> {
        if let Some(reason) = unavailable() {
            return Err(reason);
        }
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let tag: String = tag.chars().filter(char::is_ascii_alphanumeric).take(12).collect();
        let prefix = format!("otn{}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed), tag);
        let net = TestNet { prefix };
        let mut cmd = Command::new("bash");
        cmd.arg(script_path()).args(["up", &net.prefix]);
        for (host, cidrs) in hosts {
            cmd.arg(format!("{host}={cidrs}"));
        }
        let out = cmd.output().map_err(|e| format!("cannot run {}: {e}", script_path().display()))?;
        if !out.status.success() {
            // `net` is dropped here and removes whatever part was made.
            return Err(format!(
                "creating namespaces failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(net)
    }

    /// The namespace name of `host`, for `ip netns exec`.
    pub fn ns(&self, host: &str) -> String {
        format!("{}-{}", self.prefix, host)
    }

    /// A command that runs `program` inside `host`'s namespace.
    pub fn command(&self, host: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(host)]).arg(program);
        cmd
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script_path())
            .args(["down", &self.prefix])
            .stdout(Stdio::null())
            .status();
    }
}
