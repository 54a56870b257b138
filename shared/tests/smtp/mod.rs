//! A real SMTP server for tests: `server.py` beside this file (Python's aiosmtpd) on 127.0.0.1,
//! every accepted message written to a file. Shared by the mail tests of `outpost-shared` and the
//! end-to-end tests of the workspace (which include this file by path).
#![allow(dead_code)]

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Whether python3 with aiosmtpd is there. Without it the mail tests are skipped with a printed
/// reason, except in CI (`CI` set), where they fail: install it with `pip install aiosmtpd`.
pub fn aiosmtpd_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import aiosmtpd"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        if std::env::var_os("CI").is_some() {
            panic!("python3 with aiosmtpd is required in CI: pip install aiosmtpd");
        }
        eprintln!("SKIPPED: python3 module aiosmtpd not found (pip install aiosmtpd)");
    }
    ok
}

/// A running server, killed when dropped.
pub struct SmtpServer {
    child: Child,
    pub port: u16,
    out: tempfile::TempDir,
}

/// TLS files for the server: certificate and key (PEM).
pub struct ServerTls<'a> {
    pub cert: &'a Path,
    pub key: &'a Path,
}

impl SmtpServer {
    /// Starts the server in `mode` (`starttls`, `smtps`, `nostarttls`, `plain`; see server.py);
    /// `port` 0 lets it choose. With `auth`, AUTH with that user and password is required.
    pub fn start(
        mode: &str,
        port: u16,
        tls: Option<ServerTls<'_>>,
        auth: Option<(&str, &str)>,
    ) -> SmtpServer {
        let out = tempfile::tempdir().unwrap();
        let script = workspace_root().join("shared/tests/smtp/server.py");
        let mut cmd = Command::new("python3");
        cmd.arg(script)
            .args(["--mode", mode, "--port", &port.to_string()])
            .arg("--out")
            .arg(out.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            // Its tracebacks for refused handshakes are expected; kept beside the messages.
            .stderr(std::fs::File::create(out.path().join("server.log")).unwrap());
        if let Some(t) = tls {
            cmd.arg("--cert").arg(t.cert).arg("--key").arg(t.key);
        }
        if let Some((user, password)) = auth {
            cmd.args(["--user", user, "--password", password]);
        }
        let mut child = cmd.spawn().expect("start python3");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(30)).expect("SMTP test server did not start in 30s");
        let port = line
            .strip_prefix("PORT ")
            .unwrap_or_else(|| panic!("SMTP test server exited: {line:?}"))
            .trim()
            .parse()
            .unwrap();
        SmtpServer { child, port, out }
    }

    /// Every accepted message, oldest first: the envelope recipients on the first line
    /// (`RCPT a,b`), then the message as received.
    pub fn messages(&self) -> Vec<String> {
        let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(self.out.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .filter_map(|p| {
                let n = p.file_stem()?.to_str()?.strip_prefix("msg-")?.parse().ok()?;
                Some((n, p))
            })
            .collect();
        files.sort();
        files.iter().map(|(_, p)| std::fs::read_to_string(p).unwrap()).collect()
    }

    /// One line per AUTH attempt: `MECHANISM ok|bad`.
    pub fn auth_log(&self) -> String {
        std::fs::read_to_string(self.out.path().join("auth.log")).unwrap_or_default()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn workspace_root() -> PathBuf {
    // CARGO_MANIFEST_DIR is the crate that includes this file: the workspace root or `shared/`.
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if dir.join("shared/tests/smtp/server.py").exists() {
        dir
    } else {
        dir.parent().unwrap().to_path_buf()
    }
}
