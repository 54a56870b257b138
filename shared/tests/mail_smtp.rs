//! Mail against a real SMTP server (Python's aiosmtpd, `tests/smtp/server.py`) on 127.0.0.1:
//! STARTTLS and implicit TLS with a private CA, certificate refusals named in words, no password
//! to a server without STARTTLS, plain SMTP only when configured, a sealed password, and the
//! outbox delivering exactly once after the server comes up late.
//!
//! Without aiosmtpd the tests are skipped with a printed reason, except in CI (`CI` set), where
//! they fail: install it with `pip install aiosmtpd`. The server helper is `tests/smtp/mod.rs`.

use outpost_shared::keys::{seal, KeyPair};
use outpost_shared::mail::{
    spawn_sender, Mail, MailConfig, Outbox, SendError, SmtpTransport, TlsMode, Transport,
};
use outpost_shared::tls::{ensure_self_signed, CertPaths};
use smtp::{aiosmtpd_available, ServerTls, SmtpServer};
use std::path::Path;
use std::time::Duration;

mod smtp;

const USER: &str = "outpost";
const PASSWORD: &str = "s3cret pass";

/// Starts the test server; `auth` requires our login.
fn server(mode: &str, port: u16, certs: Option<&CertPaths>, auth: bool) -> SmtpServer {
    let tls = certs.map(|c| ServerTls { cert: &c.cert, key: &c.key });
    SmtpServer::start(mode, port, tls, auth.then_some((USER, PASSWORD)))
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
    let starttls = server("starttls", 0, Some(&c), true);
    let smtps = server("smtps", 0, Some(&c), true);

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
    let server = server("starttls", 0, Some(&c), true);

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
    let server = server("smtps", 0, Some(&c), true);
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
    let server = server("nostarttls", 0, None, true);
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
    let server = server("plain", 0, None, true);
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
    let server = server("starttls", 0, Some(&c), true);
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

    let server = server("starttls", port, Some(&c), true);
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
