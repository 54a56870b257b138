//! Mail against a real SMTP server (Python's aiosmtpd, `tests/smtp/server.py`) on 127.0.0.1:
//! STARTTLS and implicit TLS with a private CA, certificate refusals named in words, no password
//! to a server without STARTTLS, plain SMTP only when configured, a sealed password, and the
//! outbox delivering exactly once after the server comes up late.
//!
//! Without aiosmtpd the tests are skipped with a printed reason, except in CI (`CI` set), where
//! they fail: install it with `pip install aiosmtpd`.

use outpost_shared::keys::{seal, KeyPair};
use outpost_shared::mail::{
    spawn_sender, Mail, MailConfig, Outbox, SendError, SmtpTransport, TlsMode, Transport,
};
use outpost_shared::tls::{ensure_self_signed, CertPaths};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

const USER: &str = "outpost";
const PASSWORD: &str = "s3cret pass";

fn aiosmtpd_available() -> bool {
    let ok = std::process::Command::new("python3")
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

struct Server {
    child: tokio::process::Child,
    port: u16,
    out: tempfile::TempDir,
}

impl Server {
    /// Starts the server in `mode`; `port` 0 lets it choose. Requires AUTH when `auth` is true.
    async fn start(mode: &str, port: u16, certs: Option<&CertPaths>, auth: bool) -> Server {
        let out = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/smtp/server.py");
        let mut cmd = tokio::process::Command::new("python3");
        cmd.arg(script)
            .args(["--mode", mode, "--port", &port.to_string()])
            .arg("--out")
            .arg(out.path())
            .stdout(Stdio::piped())
            // Its tracebacks for refused handshakes are expected; kept beside the messages.
            .stderr(std::fs::File::create(out.path().join("server.log")).unwrap())
            .kill_on_drop(true);
        if let Some(c) = certs {
            cmd.arg("--cert").arg(&c.cert).arg("--key").arg(&c.key);
        }
        if auth {
            cmd.args(["--user", USER, "--password", PASSWORD]);
        }
        let mut child = cmd.spawn().expect("start python3");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("SMTP test server did not start in 20s")
            .unwrap()
            .expect("SMTP test server exited");
        let port = line.strip_prefix("PORT ").expect("PORT line").trim().parse().unwrap();
        Server { child, port, out }
    }

    fn messages(&self) -> Vec<String> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.out.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .collect();
        files.sort();
        files.iter().map(|p| std::fs::read_to_string(p).unwrap()).collect()
    }

    fn auth_log(&self) -> String {
        std::fs::read_to_string(self.out.path().join("auth.log")).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn certs(dir: &Path, names: &[&str]) -> CertPaths {
    certs_named(dir, names, "test smtp")
}

fn certs_named(dir: &Path, names: &[&str], common_name: &str) -> CertPaths {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    ensure_self_signed(dir, &names, common_name).unwrap()
}

fn config(server: &str, port: u16, tls: Option<TlsMode>, ca: Option<&Path>) -> MailConfig {
    let mut c = MailConfig::new(server, port, "Outpost <outpost@localhost>");
    c.tls = tls;
    c.ca_file = ca.map(Path::to_path_buf);
    c.username = Some(USER.into());
    c.password = Some(PASSWORD.into());
    c.timeout = Duration::from_secs(10);
    c.to = vec!["ops@localhost".into()];
    c
}

fn alert(subject: &str) -> Mail {
    Mail {
        to: vec!["ops@localhost".into()],
        subject: subject.into(),
        text: "disk./ is error".into(),
        html: Some("<p>disk./ is <b>error</b></p>".into()),
        attachments: vec![],
    }
}

async fn send(cfg: &MailConfig, key: Option<&KeyPair>, subject: &str) -> Result<(), SendError> {
    let t = SmtpTransport::new(cfg, key).unwrap();
    tokio::time::timeout(Duration::from_secs(60), t.send(&alert(subject), "1.test@outpost"))
        .await
        .expect("send hung")
}

#[tokio::test]
async fn alert_is_delivered_over_starttls_and_over_smtps_with_the_test_ca() {
    if !aiosmtpd_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let c = certs(dir.path(), &["localhost", "127.0.0.1"]);
    let starttls = Server::start("starttls", 0, Some(&c), true).await;
    let smtps = Server::start("smtps", 0, Some(&c), true).await;

    send(&config("localhost", starttls.port, None, Some(&c.ca)), None, "via starttls").await.unwrap();
    send(&config("127.0.0.1", smtps.port, Some(TlsMode::Smtps), Some(&c.ca)), None, "via smtps")
        .await
        .unwrap();

    let m = starttls.messages();
    assert_eq!(m.len(), 1);
    assert!(m[0].starts_with("RCPT ops@localhost\n") && m[0].contains("Subject: via starttls"), "{}", m[0]);
    assert!(m[0].contains("multipart/alternative") && m[0].contains("Message-ID: <1.test@outpost>"));
    assert!(starttls.auth_log().contains(" ok"), "AUTH succeeded: {}", starttls.auth_log());
    let m = smtps.messages();
    assert_eq!(m.len(), 1);
    assert!(m[0].contains("Subject: via smtps"));
    assert!(smtps.auth_log().contains(" ok"));
}

#[tokio::test]
async fn a_certificate_from_an_unknown_authority_is_refused_in_words() {
    if !aiosmtpd_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let c = certs(&dir.path().join("server"), &["localhost", "127.0.0.1"]);
    let other = certs_named(&dir.path().join("other"), &["localhost"], "another authority");
    let server = Server::start("starttls", 0, Some(&c), true).await;

    let e = send(&config("localhost", server.port, None, Some(&other.ca)), None, "x").await.unwrap_err();
    assert!(matches!(e, SendError::UnknownCa { .. }), "{e:?}");
    assert!(e.to_string().contains("unknown authority") && e.to_string().contains("mail.ca_file"), "{e}");
    // The system roots do not know a private CA either (when the machine has any roots).
    if let Ok(t) = SmtpTransport::new(&config("localhost", server.port, None, None), None) {
        let e = t.send(&alert("x"), "2@o").await.unwrap_err();
        assert!(matches!(e, SendError::UnknownCa { .. }), "{e:?}");
    }
    assert!(server.messages().is_empty());
    assert_eq!(server.auth_log(), "", "no password before a trusted TLS link");
}

#[tokio::test]
async fn a_certificate_for_another_host_name_is_refused_in_words() {
    if !aiosmtpd_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let c = certs(dir.path(), &["mail.other.test"]);
    let server = Server::start("smtps", 0, Some(&c), true).await;
    let e = send(&config("localhost", server.port, Some(TlsMode::Smtps), Some(&c.ca)), None, "x")
        .await
        .unwrap_err();
    assert!(matches!(e, SendError::WrongHost { .. }), "{e:?}");
    assert!(e.to_string().contains("not valid for the host name `localhost`"), "{e}");
    assert!(server.messages().is_empty());
    assert_eq!(server.auth_log(), "");
}

#[tokio::test]
async fn a_server_without_starttls_gets_no_mail_and_no_password() {
    if !aiosmtpd_available() {
        return;
    }
    let server = Server::start("nostarttls", 0, None, true).await;
    // TLS is never reached, but a CA file keeps the test independent of the machine's roots.
    let dir = tempfile::tempdir().unwrap();
    let c = certs(dir.path(), &["localhost"]);
    let e = send(&config("127.0.0.1", server.port, None, Some(&c.ca)), None, "x").await.unwrap_err();
    assert!(matches!(e, SendError::NoStartTls { .. }), "{e:?}");
    assert!(e.to_string().contains("does not offer STARTTLS"), "{e}");
    assert!(server.messages().is_empty());
    assert_eq!(server.auth_log(), "", "AUTH must not be attempted");
}

#[tokio::test]
async fn plain_smtp_works_only_when_configured_as_none() {
    if !aiosmtpd_available() {
        return;
    }
    let server = Server::start("plain", 0, None, true).await;
    send(&config("127.0.0.1", server.port, Some(TlsMode::None), None), None, "in clear").await.unwrap();
    assert_eq!(server.messages().len(), 1);
    assert!(server.auth_log().contains(" ok"));
}

#[tokio::test]
async fn a_sealed_password_is_opened_with_the_machine_key() {
    if !aiosmtpd_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let c = certs(dir.path(), &["localhost"]);
    let server = Server::start("starttls", 0, Some(&c), true).await;
    let key = KeyPair::generate().unwrap();
    let mut cfg = config("localhost", server.port, None, Some(&c.ca));
    cfg.password = Some(seal(key.public(), PASSWORD).unwrap());
    assert!(!format!("{:?}", SmtpTransport::new(&cfg, Some(&key)).unwrap()).contains(PASSWORD));
    send(&cfg, Some(&key), "sealed").await.unwrap();
    assert_eq!(server.messages().len(), 1);
    assert!(server.auth_log().contains(" ok"));
}

#[tokio::test]
async fn an_alert_queued_while_the_server_is_down_arrives_once_when_it_is_back() {
    if !aiosmtpd_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let c = certs(&dir.path().join("tls"), &["localhost"]);
    // A port nobody listens on yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let outbox = Outbox::open(&dir.path().join("outbox")).unwrap();
    outbox.enqueue(&alert("queued while down")).await.unwrap();
    let transport = SmtpTransport::new(&config("localhost", port, None, Some(&c.ca)), None).unwrap();
    let backoff =
        outpost_shared::backoff::Backoff::new(Duration::from_millis(50), Duration::from_millis(400), 0.2)
            .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = spawn_sender(outbox.clone(), transport, backoff, async {
        let _ = stop_rx.await;
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(outbox.len(), 1, "kept while the server is down");

    let server = Server::start("starttls", port, Some(&c), true).await;
    for _ in 0..300 {
        if outbox.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(outbox.is_empty(), "outbox drained once the server is up");
    // Give a wrongly repeated send time to show up before counting.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let m = server.messages();
    assert_eq!(m.len(), 1, "exactly once");
    assert!(m[0].contains("Subject: queued while down"));
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
}
