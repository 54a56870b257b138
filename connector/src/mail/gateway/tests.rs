use super::*;
use crate::mail::config::MailSender;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// RFC 6238 appendix B's SHA-1 secret, "12345678901234567890", in base32.
const RFC_SECRET: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";

#[test]
fn totp_matches_the_rfc_6238_test_vectors_and_takes_one_step_either_side() {
    let s = totp::decode_secret(RFC_SECRET).unwrap();
    assert_eq!(s, b"12345678901234567890");
    // The RFC's 8-digit values, cut to 6.
    assert_eq!(totp::code_at(&s, 59), "287082");
    assert_eq!(totp::code_at(&s, 1111111109), "081804");
    assert_eq!(totp::code_at(&s, 2000000000), "279037");
    let code = totp::code_at(&s, 1111111109);
    let step = totp::step_at(1111111109);
    assert_eq!(totp::verify(&s, &code, 1111111109), Some(step));
    assert_eq!(totp::verify(&s, &code, 1111111109 + 30), Some(step), "one step late");
    assert_eq!(totp::verify(&s, &code, 1111111109 - 30), Some(step), "one step early");
    assert_eq!(totp::verify(&s, &code, 1111111109 + 90), None);
    assert_eq!(totp::verify(&s, "12345", 59), None);
    assert_eq!(totp::decode_secret("gezd gnbv-gy3t qojq gezd gnbv gy3t qojq").unwrap(), s);
    assert_eq!(totp::decode_secret("GEZDGNBV"), Err(totp::SecretError::TooShort(5)));
    assert!(matches!(totp::decode_secret("GEZ1"), Err(totp::SecretError::NotBase32('1', 3))));
    let fresh = totp::new_secret();
    assert_eq!(totp::decode_secret(&fresh).unwrap().len(), 20);
    assert_eq!(totp::encode_secret(b"12345678901234567890"), RFC_SECRET);
}

#[test]
fn subjects_are_read_with_encoded_words_and_folding() {
    let m = b"From: Ops <OPS@Example.org>\r\nSubject: =?UTF-8?B?UkVMQVkgd2ViLTEgMSAy?=\r\n =?utf-8?q?_ON_123456?=\r\nMessage-ID: <a@b>\r\n\r\nbody\r\n";
    let h = message::parse(m).unwrap();
    assert_eq!(h.from.as_deref(), Some("ops@example.org"));
    assert_eq!(h.subject.as_deref(), Some("RELAY web-1 1 2 ON 123456"));
    assert_eq!(h.message_id.as_deref(), Some("<a@b>"));
    assert_eq!(message::decode_words("=?ISO-8859-1?Q?STATUS_K=FChlhaus?= 1").unwrap(), "STATUS Kühlhaus 1");
    assert_eq!(message::decode_words("plain =? text").unwrap(), "plain =? text");
    assert_eq!(
        message::decode_words("=?KOI8-R?B?AAAA?="),
        Err(message::MessageError::Charset("koi8-r".into()))
    );
    let two = b"Subject: a\r\nSubject: b\r\n\r\n";
    assert_eq!(message::parse(two), Err(message::MessageError::Duplicate("subject")));
}

#[test]
fn commands_are_parsed_with_the_code_last() {
    assert_eq!(parse_subject("STATUS 123456").unwrap(), (Command::Status(None), "123456".into()));
    assert_eq!(parse_subject("status web-1 123456").unwrap().0, Command::Status(Some("web-1".into())));
    assert_eq!(
        parse_subject("RELAY web-1 2 8 off 000001").unwrap().0,
        Command::Relay { machine: "web-1".into(), card: 2, relay: 8, on: false }
    );
    for bad in [
        "RELAY web-1 1 9 ON 123456",
        "RELAY web-1 0 1 ON 123456",
        "RELAY w 1 1 MAYBE 123456",
        "STATUS",
        "REBOOT 123456",
        "",
    ] {
        assert!(parse_subject(bad).is_err(), "{bad}");
    }
}

#[test]
fn cidr_ranges_contain_what_they_should() {
    let c: Cidr = "192.168.1.0/24".parse().unwrap();
    assert!(c.contains("192.168.1.77".parse().unwrap()));
    assert!(!c.contains("192.168.2.1".parse().unwrap()));
    assert!(c.contains("::ffff:192.168.1.5".parse().unwrap()), "IPv4-mapped");
    let one: Cidr = "127.0.0.1".parse().unwrap();
    assert!(one.contains("127.0.0.1".parse().unwrap()) && !one.contains("127.0.0.2".parse().unwrap()));
    let all: Cidr = "0.0.0.0/0".parse().unwrap();
    assert!(all.contains("8.8.8.8".parse().unwrap()) && !all.contains("::1".parse().unwrap()));
    let v6: Cidr = "fd00::/8".parse().unwrap();
    assert!(v6.contains("fd12::1".parse().unwrap()));
    assert!("10.0.0.0/33".parse::<Cidr>().is_err() && "ten/8".parse::<Cidr>().is_err());
}

struct Fixture {
    _dir: tempfile::TempDir,
    gw: Gateway,
    secret: Vec<u8>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(&dir.path().join("outbox")).unwrap();
    let cfg = MailCommands {
        enabled: true,
        senders: vec![
            MailSender { address: "ops@example.org".into(), secret: RFC_SECRET.into(), write: true },
            MailSender { address: "viewer@example.org".into(), secret: RFC_SECRET.into(), write: false },
        ],
        ..Default::default()
    };
    let key = test_key();
    let watch = Arc::new(Watch::new(Duration::from_secs(60), None, None).unwrap());
    let gw = Gateway::new(&cfg, &key, outbox, watch, None, "conn".into()).unwrap();
    Fixture { _dir: dir, gw, secret: totp::decode_secret(RFC_SECRET).unwrap() }
}

fn test_key() -> KeyPair {
    static KEY: std::sync::OnceLock<KeyPair> = std::sync::OnceLock::new();
    KEY.get_or_init(|| KeyPair::generate().unwrap()).clone()
}

fn envelope(from: &str, header_from: &str, subject: &str, id: &str) -> smtp::Envelope {
    smtp::Envelope {
        peer: "127.0.0.1:5000".parse().unwrap(),
        tls: false,
        mail_from: from.into(),
        rcpt_to: vec!["outpost@conn".into()],
        data: format!("From: {header_from}\r\nSubject: {subject}\r\nMessage-ID: {id}\r\n\r\nhi\r\n")
            .into_bytes(),
    }
}

#[test]
fn only_known_senders_with_a_fresh_right_code_and_the_right_permission_get_through() {
    let f = fixture();
    let t = 1_700_000_000u64;
    let code = totp::code_at(&f.secret, t);
    let ops = "ops@example.org";
    let relay = format!("RELAY web-1 1 2 ON {code}");
    let run = f.gw.decide(&envelope(ops, ops, &relay, "<1@x>"), t);
    assert!(matches!(run, Decision::Run { .. }), "{run:?}");
    // The same mail again, and the same code in another mail: both refused.
    let again = f.gw.decide(&envelope(ops, ops, &relay, "<1@x>"), t);
    assert!(
        matches!(&again, Decision::Refuse { reason, .. } if reason.contains("already used")),
        "{again:?}"
    );
    let reuse = f.gw.decide(&envelope(ops, ops, &relay, "<2@x>"), t);
    assert!(
        matches!(&reuse, Decision::Refuse { reason, .. } if reason.contains("code was already used")),
        "{reuse:?}"
    );
    // The next step's code works.
    let next = format!("STATUS {}", totp::code_at(&f.secret, t + 30));
    assert!(matches!(f.gw.decide(&envelope(ops, ops, &next, "<3@x>"), t), Decision::Run { .. }));

    let unknown = f.gw.decide(&envelope("eve@example.org", "eve@example.org", &relay, "<4@x>"), t);
    assert!(matches!(unknown, Decision::Drop(_)));
    let forged = f.gw.decide(&envelope("eve@example.org", ops, &relay, "<5@x>"), t);
    assert!(matches!(&forged, Decision::Drop(r) if r.contains("differs")), "{forged:?}");

    let viewer = "viewer@example.org";
    let wrong = f.gw.decide(&envelope(viewer, viewer, "STATUS 000000", "<6@x>"), t);
    assert!(matches!(&wrong, Decision::Refuse { reason, .. } if reason.contains("wrong code")), "{wrong:?}");
    let write = f.gw.decide(&envelope(viewer, viewer, &relay, "<7@x>"), t);
    assert!(
        matches!(&write, Decision::Refuse { reason, .. } if reason.contains("no write permission")),
        "{write:?}"
    );
    // Five wrong codes lock the sender out, even with a right code after.
    for i in 0..5 {
        f.gw.decide(&envelope(viewer, viewer, "STATUS 000000", &format!("<w{i}@x>")), t);
    }
    let locked = f.gw.decide(
        &envelope(viewer, viewer, &format!("STATUS {}", totp::code_at(&f.secret, t + 60)), "<8@x>"),
        t + 60,
    );
    assert!(
        matches!(&locked, Decision::Refuse { reason, .. } if reason.contains("too many wrong codes")),
        "{locked:?}"
    );
}

#[test]
fn used_codes_are_remembered_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let t = 1_700_000_000u64;
    let secret = totp::decode_secret(RFC_SECRET).unwrap();
    let subject = format!("STATUS {}", totp::code_at(&secret, t));
    let ops = "ops@example.org";
    let cfg = MailCommands {
        enabled: true,
        senders: vec![MailSender { address: ops.into(), secret: RFC_SECRET.into(), write: false }],
        ..Default::default()
    };
    for (round, want_run) in [(0, true), (1, false)] {
        let outbox = Outbox::open(&dir.path().join("outbox")).unwrap();
        let watch = Arc::new(Watch::new(Duration::from_secs(60), None, None).unwrap());
        let gw = Gateway::new(&cfg, &test_key(), outbox.clone(), watch, None, "c".into()).unwrap();
        let d = gw.decide(&envelope(ops, ops, &subject, &format!("<r{round}@x>")), t);
        assert_eq!(matches!(d, Decision::Run { .. }), want_run, "{d:?}");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(outbox.flush())
            .unwrap();
    }
}

/// A test listener for raw SMTP conversations.
struct Client {
    r: BufReader<tokio::net::TcpStream>,
}

impl Client {
    async fn connect(addr: std::net::SocketAddr) -> Client {
        Client { r: BufReader::new(tokio::net::TcpStream::connect(addr).await.unwrap()) }
    }
    /// One complete reply (all its lines).
    async fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(20), self.r.read_line(&mut line))
                .await
                .unwrap()
                .unwrap();
            if n == 0 {
                return all + "EOF";
            }
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    }
    async fn send(&mut self, text: &str) -> String {
        self.r.get_mut().write_all(text.as_bytes()).await.unwrap();
        self.reply().await
    }
}

struct AnySender;
impl smtp::Policy for AnySender {
    fn known_sender(&self, a: &str) -> bool {
        a.ends_with("@example.org")
    }
}

async fn server(
    allow: &str,
    max_connections: usize,
    idle: Duration,
) -> (std::net::SocketAddr, tokio::sync::mpsc::Receiver<smtp::Envelope>, CancellationToken) {
    server_with(allow, max_connections, idle, false).await
}

async fn server_with(
    allow: &str,
    max_connections: usize,
    idle: Duration,
    require_tls: bool,
) -> (std::net::SocketAddr, tokio::sync::mpsc::Receiver<smtp::Envelope>, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let settings = smtp::Settings {
        hostname: "conn.test".into(),
        max_message_size: 2048,
        max_connections,
        idle_timeout: idle,
        session_timeout: Duration::from_secs(60),
        allow_from: vec![allow.parse().unwrap()],
        require_tls,
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let stop = CancellationToken::new();
    smtp::serve(listener, settings, None, Arc::new(AnySender), tx, stop.clone());
    (addr, rx, stop)
}

#[tokio::test]
async fn the_smtp_server_takes_a_message_with_dot_unstuffing_and_enforces_its_limits() {
    let (addr, mut rx, stop) = server("127.0.0.1/32", 8, Duration::from_secs(20)).await;
    let mut c = Client::connect(addr).await;
    assert!(c.reply().await.starts_with("220 conn.test"));
    assert!(c.send("MAIL FROM:<ops@example.org>\r\n").await.starts_with("503"), "EHLO first");
    let ehlo = c.send("EHLO client\r\n").await;
    assert!(ehlo.contains("250-SIZE 2048") && !ehlo.contains("STARTTLS"), "{ehlo}");
    assert!(c.send("MAIL FROM:<ops@example.org> SIZE=4096\r\n").await.starts_with("552"));
    assert!(c.send("MAIL FROM:<eve@evil.test>\r\n").await.starts_with("550"));
    assert!(c.send("DATA\r\n").await.starts_with("503"));
    assert!(c.send("MAIL FROM:<Ops@Example.org> SIZE=100 BODY=8BITMIME\r\n").await.starts_with("250"));
    assert!(c.send("RCPT TO:<outpost@conn>\r\n").await.starts_with("250"));
    assert!(c.send("DATA\r\n").await.starts_with("354"));
    let answer = c.send("Subject: x\r\n\r\n..leading dot\r\nend\r\n.\r\n").await;
    assert!(answer.starts_with("250"), "{answer}");
    let env = rx.recv().await.unwrap();
    assert_eq!(env.mail_from, "ops@example.org");
    assert_eq!(env.data, b"Subject: x\r\n\r\n.leading dot\r\nend\r\n");

    // Too big without SIZE: read to the end, then refused; the session goes on.
    c.send("MAIL FROM:<ops@example.org>\r\n").await;
    c.send("RCPT TO:<outpost@conn>\r\n").await;
    c.send("DATA\r\n").await;
    let big = format!("{}\r\n.\r\n", "x\r\n".repeat(1500));
    assert!(c.send(&big).await.starts_with("552"));
    c.send("MAIL FROM:<ops@example.org>\r\n").await;
    c.send("RCPT TO:<outpost@conn>\r\n").await;
    c.send("DATA\r\n").await;
    assert!(c.send(&format!("{}\r\n.\r\n", "y".repeat(1200))).await.starts_with("500"), "line too long");
    assert!(c.send(&format!("NOOP {}\r\n", "z".repeat(600))).await.starts_with("500"));
    assert!(c.send("RSET\r\n").await.starts_with("250"));
    assert!(c.send("QUIT\r\n").await.starts_with("221"));
    assert!(rx.try_recv().is_err(), "nothing refused reached the gateway");
    stop.cancel();
}

#[tokio::test]
async fn with_require_tls_no_command_is_taken_in_clear() {
    let (addr, mut rx, stop) = server_with("127.0.0.1/32", 8, Duration::from_secs(20), true).await;
    let mut c = Client::connect(addr).await;
    assert!(c.reply().await.starts_with("220"));
    assert!(c.send("EHLO client\r\n").await.starts_with("250"));
    let refused = c.send("MAIL FROM:<ops@example.org>\r\n").await;
    assert!(refused.starts_with("530 5.7.0"), "{refused}");
    assert!(c.send("RCPT TO:<outpost@conn>\r\n").await.starts_with("503"), "no sender was taken");
    assert!(c.send("DATA\r\n").await.starts_with("503"));
    assert!(rx.try_recv().is_err(), "nothing reached the gateway");
    stop.cancel();
}

#[tokio::test]
async fn outsiders_extra_connections_and_idle_clients_are_turned_away() {
    let (addr, _rx, stop) = server("10.0.0.0/8", 1, Duration::from_secs(20)).await;
    let mut c = Client::connect(addr).await;
    assert!(c.reply().await.starts_with("554 5.7.1"), "127.0.0.1 is outside 10/8");
    stop.cancel();

    let (addr, _rx, stop) = server("127.0.0.0/8", 1, Duration::from_secs(1)).await;
    let mut first = Client::connect(addr).await;
    assert!(first.reply().await.starts_with("220"));
    let mut second = Client::connect(addr).await;
    assert!(second.reply().await.starts_with("421"), "one connection at most");
    // The idle first client is dropped after its idle timeout (the read in `reply` waits 20s).
    assert!(first.reply().await.ends_with("EOF"));
    // Its slot is free again (released just after the close, so allow a moment).
    let mut greeted = false;
    for _ in 0..100 {
        if Client::connect(addr).await.reply().await.starts_with("220") {
            greeted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(greeted, "a new client is served once the idle one is gone");
    stop.cancel();
}
