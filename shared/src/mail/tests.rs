use super::alerts::{Observed, StateChange};
use super::report::{self, MachineStatus, ReportReading, SensorStatus};
use super::*;
use crate::config::parse;
use crate::model::{State, Value};
use chrono::{DateTime, Duration as Cd, TimeZone, Utc};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    mail: MailConfig,
}

impl crate::config::Validate for File {
    fn validate(&self, problems: &mut Vec<crate::config::Problem>) {
        self.mail.validate(problems);
    }
}

fn load(text: &str) -> Result<MailConfig, crate::config::ConfigError> {
    parse::<File>(text, Path::new("outpost.toml")).map(|f| f.mail)
}

#[test]
fn globs_match_whole_names() {
    assert!(glob_match("disk.*", "disk./var.used_pct"));
    assert!(glob_match("web-?", "web-1"));
    assert!(!glob_match("web-?", "web-12"));
    assert!(glob_match("*", ""));
    assert!(glob_match("*.used_*", "disk./.used_pct"));
    assert!(!glob_match("disk.*", "cpu.total"));
    assert!(!glob_match("db", "db2"));
}

#[test]
fn tls_mode_follows_the_port_and_none_must_be_written() {
    let base = "[mail]\nserver = \"smtp.example.org\"\nfrom = \"Outpost <o@example.org>\"\nto = [\"ops@example.org\"]\n";
    let c = load(base).unwrap();
    assert_eq!((c.port, c.tls_mode()), (587, TlsMode::Starttls));
    let c = load(&format!("{base}port = 465\n")).unwrap();
    assert_eq!(c.tls_mode(), TlsMode::Smtps);
    let c = load(&format!("{base}port = 25\ntls = \"none\"\n")).unwrap();
    assert_eq!(c.tls_mode(), TlsMode::None);
    assert_eq!(c.alerts, AlertTiming::default());
    assert_eq!(c.daily_report_at(), chrono::NaiveTime::from_hms_opt(7, 0, 0));
    let c = load(&format!("{base}report_at = \"off\"\n")).unwrap();
    assert_eq!(c.daily_report_at(), None);
    assert!(load(&format!("{base}report_at = \"7 am\"\n"))
        .unwrap_err()
        .to_string()
        .contains("mail.report_at"));
    assert_eq!(c.report_every, Duration::from_secs(86400));
    let c = load(&format!("{base}report_every = \"1h\"\n")).unwrap();
    assert_eq!(c.report_every, Duration::from_secs(3600));
    assert!(load(&format!("{base}report_every = \"0s\"\n"))
        .unwrap_err()
        .to_string()
        .contains("mail.report_every"));
}

#[test]
fn config_mistakes_are_named_by_key_and_line() {
    let err = load(
        "[mail]\nserver = \"smtp.example.org\"\nport = 465\ntls = \"starttls\"\nfrom = \"not an address\"\n\
         username = \"u\"\nto = [\"ops@example.org\"]\n\n[[mail.route]]\nmachines = [\"web-*\"]\nto = []\n",
    )
    .unwrap_err();
    let text = err.to_string();
    for needle in ["key `mail.tls`", "key `mail.from`", "key `mail.password`", "key `mail.route[0].to`"] {
        assert!(text.contains(needle), "{needle} missing in:\n{text}");
    }
    assert!(text.contains("outpost.toml:4:"), "{text}");
    let err =
        load("[mail]\nserver = \"s\"\nfrom = \"a@b.c\"\nto = [\"a@b.c\"]\npasword = \"x\"\n").unwrap_err();
    assert!(err.to_string().contains("pasword"), "{err}");
}

#[test]
fn debug_never_shows_the_password() {
    let mut c = MailConfig::new("smtp.example.org", 587, "o@example.org");
    c.username = Some("outpost".into());
    c.password = Some("hunter2-secret".into());
    let shown = format!("{c:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    let t = SmtpTransport::new(&c, None);
    // No CA file and maybe no system roots here: either way the password stays hidden.
    let shown = match t {
        Ok(t) => format!("{t:?}"),
        Err(e) => format!("{e:?} {e}"),
    };
    assert!(!shown.contains("hunter2"), "{shown}");
}

#[test]
fn a_sealed_password_without_a_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = crate::tls::ensure_self_signed(dir.path(), &["localhost".to_string()], "t").unwrap();
    let mut c = MailConfig::new("localhost", 587, "o@example.org");
    c.ca_file = Some(p.ca);
    c.username = Some("outpost".into());
    c.password = Some("sealed:v1:abc:def".into());
    assert!(matches!(SmtpTransport::new(&c, None), Err(SetupError::SealedWithoutKey)));
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0).unwrap()
}

fn change(host: &str, sensor: &str, old: State, new: State, ts: DateTime<Utc>) -> StateChange {
    StateChange {
        machine_id: format!("id-{host}"),
        hostname: host.into(),
        sensor: sensor.into(),
        old,
        new,
        value: Some(Value::Number(93.5)),
        unit: Some("%".into()),
        message: Some("disk <almost> full".into()),
        ts,
    }
}

fn alert_config() -> MailConfig {
    let mut c = MailConfig::new("smtp.example.org", 587, "o@example.org");
    c.to = vec!["ops@example.org".into()];
    c
}

#[test]
fn one_change_becomes_one_mail_after_the_group_window() {
    let mut a = Alerter::new(&alert_config());
    let now = t0();
    assert_eq!(a.observe(change("web1", "disk./", State::Ok, State::Error, now), now), Observed::Queued);
    assert_eq!(a.next_deadline(), Some(now + Cd::seconds(30)));
    assert!(a.poll(now + Cd::seconds(29)).is_empty());
    let mails = a.poll(now + Cd::seconds(30));
    assert_eq!(mails.len(), 1);
    let m = &mails[0];
    assert_eq!(m.to, vec!["ops@example.org".to_string()]);
    assert_eq!(m.subject, "[Outpost] ERROR web1: disk./ (was ok)");
    assert!(m.text.contains("93.50 %") && m.text.contains("disk <almost> full"), "{}", m.text);
    let html = m.html.as_ref().unwrap();
    assert!(html.contains("disk &lt;almost&gt; full") && !html.contains("<almost>"));
    assert!(a.poll(now + Cd::seconds(90)).is_empty(), "sent once");
}

#[test]
fn many_changes_are_grouped_and_routed() {
    let mut cfg = alert_config();
    cfg.route = vec![Route {
        machines: vec!["web*".into()],
        sensors: vec!["disk.*".into()],
        to: vec!["web-team@example.org".into()],
    }];
    let mut a = Alerter::new(&cfg);
    let now = t0();
    a.observe(change("web1", "disk./", State::Ok, State::Warn, now), now);
    a.observe(change("web2", "disk./var", State::Ok, State::Error, now), now + Cd::seconds(5));
    a.observe(change("db1", "cpu.total", State::Warn, State::Ok, now), now + Cd::seconds(10));
    a.observe(change("web1", "cpu.total", State::Ok, State::Error, now), now + Cd::seconds(20));
    assert!(a.poll(now + Cd::seconds(25)).is_empty());
    let mut mails = a.poll(now + Cd::seconds(31));
    mails.sort_by(|x, y| x.to.cmp(&y.to));
    assert_eq!(mails.len(), 2, "{mails:#?}");
    assert_eq!(mails[0].to, vec!["ops@example.org".to_string()]);
    assert_eq!(mails[0].subject, "[Outpost] 2 alerts: 1 error, 1 ok again (db1, web1)");
    assert_eq!(mails[1].to, vec!["web-team@example.org".to_string()]);
    assert!(mails[1].subject.starts_with("[Outpost] 2 alerts: 1 error, 1 warn"), "{}", mails[1].subject);
    // Worst first.
    assert!(mails[1].text.find("web2").unwrap() < mails[1].text.find("web1").unwrap());
}

#[test]
fn replayed_backlog_and_unknown_do_not_alert() {
    let mut a = Alerter::new(&alert_config());
    let now = t0();
    let old = now - Cd::minutes(11);
    assert_eq!(a.observe(change("h", "s", State::Ok, State::Error, old), now), Observed::Stale);
    assert_eq!(a.observe(change("h", "s2", State::Unknown, State::Ok, now), now), Observed::Ignored);
    assert_eq!(a.observe(change("h", "s3", State::Ok, State::Unknown, now), now), Observed::Ignored);
    assert_eq!(a.next_deadline(), None);
    assert!(a.poll(now + Cd::hours(1)).is_empty());
}

#[test]
fn flapping_sensor_mails_once_per_quiet_period_with_its_final_state() {
    let mut a = Alerter::new(&alert_config());
    let now = t0();
    let at = |s: i64| now + Cd::seconds(s);
    a.observe(change("h", "s", State::Ok, State::Error, at(0)), at(0));
    assert_eq!(a.poll(at(30)).len(), 1);
    // Flaps within the 10-minute quiet period: nothing goes out.
    for (i, (o, n)) in [(State::Error, State::Ok), (State::Ok, State::Error), (State::Error, State::Ok)]
        .into_iter()
        .enumerate()
    {
        let t = at(60 + 60 * i as i64);
        assert_eq!(a.observe(change("h", "s", o, n, t), t), Observed::Held);
        assert!(a.poll(t).is_empty());
    }
    assert_eq!(a.next_deadline(), Some(at(600)));
    assert!(a.poll(at(599)).is_empty());
    assert!(a.poll(at(600)).is_empty(), "the summary waits for the group window too");
    let mails = a.poll(at(630));
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].subject, "[Outpost] OK again h: s (was error)");
    assert!(mails[0].text.contains("changed 3 more time(s)"), "{}", mails[0].text);

    // Flapping that ends where the last mail left it sends nothing.
    let mut a = Alerter::new(&alert_config());
    a.observe(change("h", "s", State::Ok, State::Warn, at(0)), at(0));
    assert_eq!(a.poll(at(30)).len(), 1);
    a.observe(change("h", "s", State::Warn, State::Ok, at(40)), at(40));
    a.observe(change("h", "s", State::Ok, State::Warn, at(50)), at(50));
    assert!(a.poll(at(600)).is_empty());
    assert!(a.poll(at(700)).is_empty());
    assert_eq!(a.next_deadline(), Some(at(30) + Cd::hours(4)), "only the reminder is left");
    // After the quiet period a new change alerts again at once (well, after the window).
    a.observe(change("h", "s", State::Warn, State::Ok, at(800)), at(800));
    assert_eq!(a.poll(at(830))[0].subject, "[Outpost] OK again h: s (was warn)");
}

#[test]
fn recovery_is_mailed_even_across_unknown() {
    let mut a = Alerter::new(&alert_config());
    let now = t0();
    let at = |s: i64| now + Cd::seconds(s);
    a.observe(change("h", "s", State::Ok, State::Error, at(0)), at(0));
    assert_eq!(a.poll(at(30)).len(), 1);
    assert!(a.poll(at(700)).is_empty());
    assert_eq!(
        a.observe(change("h", "s", State::Error, State::Unknown, at(800)), at(800)),
        Observed::Ignored
    );
    assert_eq!(a.observe(change("h", "s", State::Unknown, State::Ok, at(900)), at(900)), Observed::Queued);
    assert_eq!(a.poll(at(930))[0].subject, "[Outpost] OK again h: s (was error)");
}

#[test]
fn a_state_told_elsewhere_is_not_mailed_again_and_later_changes_compare_with_it() {
    let mut a = Alerter::new(&alert_config());
    let now = t0();
    let at = |s: i64| now + Cd::seconds(s);
    let told =
        |state, ts| crate::model::MailedState { machine_id: "id-h".into(), sensor: "s".into(), state, ts };
    // Told before the change arrives (the cloud takes a forward's notes before its batches).
    a.told(&told(State::Error, at(0)), at(1));
    assert_eq!(a.observe(change("h", "s", State::Ok, State::Error, at(0)), at(1)), Observed::Held);
    assert!(a.poll(at(700)).is_empty(), "nothing new once the quiet period ends");
    // Told after the change was queued: the pending alert goes.
    a.observe(change("h", "s2", State::Ok, State::Warn, at(800)), at(800));
    a.told(&crate::model::MailedState { sensor: "s2".into(), ..told(State::Warn, at(800)) }, at(801));
    assert!(a.poll(at(900)).is_empty());
    // Recovery after the quiet period is mailed, compared with the told state.
    a.observe(change("h", "s", State::Error, State::Ok, at(1000)), at(1000));
    assert_eq!(a.poll(at(1030))[0].subject, "[Outpost] OK again h: s (was error)");

    let mut c = Alerter::new(&alert_config()).with_origin("connector", "Sent by the connector.");
    c.observe(change("h", "s", State::Ok, State::Error, at(0)), at(0));
    let m = &c.poll(at(30))[0];
    assert_eq!(m.subject, "[Outpost connector] ERROR h: s (was ok)");
    assert!(m.text.starts_with("Sent by the connector.") && m.html.as_ref().unwrap().contains("Sent by"));
}

/// Silences set by the test: a maintenance window over a machine until a time, an
/// acknowledgement of one sensor's state up to a reading time.
#[derive(Default)]
struct FakeSilences {
    maintenance: Mutex<Option<(String, DateTime<Utc>)>>,
    ack: Mutex<Option<(String, State, DateTime<Utc>)>>,
}

impl alerts::Silences for FakeSilences {
    fn silence(
        &self,
        machine_id: &str,
        sensor: &str,
        state: State,
        reading_ts: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Option<alerts::Silence> {
        if let Some((m, until)) = self.maintenance.lock().unwrap().clone() {
            if m == machine_id && now < until {
                return Some(alerts::Silence::Maintenance { until });
            }
        }
        match self.ack.lock().unwrap().clone() {
            Some((s, st, upto)) if s == sensor && st == state && reading_ts <= upto => {
                Some(alerts::Silence::Acknowledged { by: "user:night".into() })
            }
            _ => None,
        }
    }
}

#[test]
fn a_problem_is_mailed_again_until_it_recovers() {
    let mut a = Alerter::new(&alert_config());
    let at = |s: i64| t0() + Cd::seconds(s);
    a.observe(change("h", "s", State::Ok, State::Error, at(0)), at(0));
    assert_eq!(a.poll(at(30)).len(), 1);
    assert_eq!(a.next_deadline(), Some(at(30) + Cd::hours(4)));
    assert!(a.poll(at(30) + Cd::hours(4) - Cd::seconds(1)).is_empty());
    assert!(a.poll(at(30) + Cd::hours(4)).is_empty(), "a reminder waits for the group window too");
    let again = a.poll(at(60) + Cd::hours(4));
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].subject, "[Outpost] STILL ERROR h: s (since 2025-03-01 12:00 UTC)");
    // Recovered: no more reminders, the recovery is mailed.
    let t = at(100) + Cd::hours(4);
    a.observe(change("h", "s", State::Error, State::Ok, t), t);
    assert_eq!(a.poll(t + Cd::seconds(30))[0].subject, "[Outpost] OK again h: s (was error)");
    assert!(a.poll(t + Cd::hours(9)).is_empty());

    let mut cfg = alert_config();
    cfg.alerts.remind_every = Duration::ZERO;
    let mut a = Alerter::new(&cfg);
    a.observe(change("h", "s", State::Ok, State::Error, at(0)), at(0));
    assert_eq!(a.poll(at(30)).len(), 1);
    assert_eq!(a.next_deadline(), None, "reminders off");
}

#[test]
fn an_acknowledged_problem_is_not_mailed_again_until_it_changes() {
    let silences = Arc::new(FakeSilences::default());
    let mut a = Alerter::new(&alert_config()).with_silences(silences.clone());
    let at = |s: i64| t0() + Cd::seconds(s);
    a.observe(change("h", "s", State::Ok, State::Error, at(0)), at(0));
    assert_eq!(a.poll(at(30)).len(), 1);
    // Acknowledged with the reading of at(0) on screen: no reminder.
    *silences.ack.lock().unwrap() = Some(("s".into(), State::Error, at(0)));
    for h in 1..=12 {
        assert!(a.poll(at(30) + Cd::hours(h)).is_empty(), "hour {h}");
    }
    // It changes (warn) after the acknowledgement: that is news, mailed.
    let t = at(20) + Cd::hours(13);
    a.observe(change("h", "s", State::Error, State::Warn, t), t);
    assert_eq!(a.poll(t + Cd::seconds(30))[0].subject, "[Outpost] WARN h: s (was error)");

    // Acknowledged before the first mail went out: nothing is mailed, and nothing later either.
    let silences = Arc::new(FakeSilences::default());
    let mut a = Alerter::new(&alert_config()).with_silences(silences.clone());
    a.observe(change("h", "s", State::Ok, State::Error, at(0)), at(0));
    *silences.ack.lock().unwrap() = Some(("s".into(), State::Error, at(0)));
    assert!(a.poll(at(30)).is_empty());
    assert!(a.poll(at(30) + Cd::hours(5)).is_empty());
    // The acknowledgement is withdrawn while the error lasts: the error is mailed after all.
    *silences.ack.lock().unwrap() = None;
    let t = at(30) + Cd::hours(5);
    let mut mails = a.poll(t + Cd::seconds(10));
    mails.extend(a.poll(t + Cd::seconds(40)));
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].subject, "[Outpost] ERROR h: s (was ok)");
}

#[test]
fn a_machine_in_maintenance_raises_no_mail_and_what_is_left_after_it_is_mailed() {
    let silences = Arc::new(FakeSilences::default());
    let mut a = Alerter::new(&alert_config()).with_silences(silences.clone());
    let at = |s: i64| t0() + Cd::seconds(s);
    *silences.maintenance.lock().unwrap() = Some(("id-h".into(), at(600)));
    a.observe(change("h", "s", State::Ok, State::Error, at(0)), at(0));
    // A sensor that fails and recovers within the window: never mailed.
    a.observe(change("h", "t", State::Ok, State::Error, at(0)), at(0));
    assert!(a.poll(at(30)).is_empty());
    a.observe(change("h", "t", State::Error, State::Ok, at(100)), at(100));
    let mut mails = Vec::new();
    let mut t = at(100);
    while t < at(700) {
        mails.extend(a.poll(t));
        t += Cd::seconds(5);
    }
    assert_eq!(mails.len(), 1, "{mails:#?}");
    assert_eq!(mails[0].subject, "[Outpost] ERROR h: s (was ok)", "still in error when the window ended");
    // Another machine is not silenced.
    a.observe(change("g", "s", State::Ok, State::Error, at(700)), at(700));
    assert_eq!(a.poll(at(730)).len(), 1);
}

fn lettre_from() -> lettre::message::Mailbox {
    "Outpost <o@example.org>".parse().unwrap()
}

#[test]
fn messages_have_the_right_mime_structure() {
    let mut mail = Mail {
        to: vec!["a@example.org".into()],
        subject: "plain".into(),
        text: "hello".into(),
        html: None,
        attachments: vec![],
    };
    let raw = String::from_utf8(
        transport::build_message(&lettre_from(), &mail, "1.ab@outpost").unwrap().formatted(),
    )
    .unwrap();
    assert!(raw.contains("Message-ID: <1.ab@outpost>"), "{raw}");
    assert!(raw.contains("Content-Type: text/plain") && !raw.contains("multipart"), "{raw}");

    mail.html = Some("<p>hello</p>".into());
    mail.attachments.push(Attachment {
        filename: "r.csv".into(),
        content_type: "text/csv; charset=utf-8".into(),
        data: b"a,b\r\n1,2\r\n".to_vec(),
    });
    let raw = String::from_utf8(
        transport::build_message(&lettre_from(), &mail, "2.ab@outpost").unwrap().formatted(),
    )
    .unwrap();
    let mixed = raw.find("multipart/mixed").expect("mixed");
    let alt = raw.find("multipart/alternative").expect("alternative");
    assert!(mixed < alt && raw.contains("text/html") && raw.contains("filename=\"r.csv\""), "{raw}");

    mail.to = vec!["not an address".into()];
    let e = transport::build_message(&lettre_from(), &mail, "3@o").unwrap_err();
    assert!(e.is_permanent(), "{e}");
}

/// Refuses the first `fail` sends as if the server were down, then accepts; records what it got.
#[derive(Clone, Default)]
struct FakeTransport {
    fail: Arc<Mutex<u32>>,
    reject_subject: Option<String>,
    sent: Arc<Mutex<Vec<(String, String)>>>,
}

impl Transport for FakeTransport {
    async fn send(&self, mail: &Mail, message_id: &str) -> Result<(), SendError> {
        if self.reject_subject.as_deref() == Some(mail.subject.as_str()) {
            return Err(SendError::Rejected { server: "fake".into(), detail: "550 no such user".into() });
        }
        {
            let mut f = self.fail.lock().unwrap();
            if *f > 0 {
                *f -= 1;
                return Err(SendError::Connect { server: "fake".into(), detail: "refused".into() });
            }
        }
        self.sent.lock().unwrap().push((mail.subject.clone(), message_id.to_string()));
        Ok(())
    }
}

fn quick_backoff() -> crate::backoff::Backoff {
    crate::backoff::Backoff::new(Duration::from_millis(1), Duration::from_millis(5), 0.0).unwrap()
}

fn mail(subject: &str) -> Mail {
    Mail {
        to: vec!["a@example.org".into()],
        subject: subject.into(),
        text: "t".into(),
        html: None,
        attachments: vec![],
    }
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn outbox_survives_reopen_and_sends_each_mail_once_after_failures() {
    let dir = tempfile::tempdir().unwrap();
    {
        let ob = Outbox::open(dir.path()).unwrap();
        ob.enqueue(&mail("first")).await.unwrap();
        ob.enqueue(&mail("second")).await.unwrap();
    }
    let ob = Outbox::open(dir.path()).unwrap();
    assert_eq!(ob.len(), 2, "queued mail survives a restart");
    let fake = FakeTransport { fail: Arc::new(Mutex::new(3)), ..Default::default() };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = spawn_sender(ob.clone(), fake.clone(), quick_backoff(), async {
        let _ = stop_rx.await;
    });
    wait_until("two mails", || fake.sent.lock().unwrap().len() == 2).await;
    ob.enqueue(&mail("third")).await.unwrap();
    wait_until("third mail", || fake.sent.lock().unwrap().len() == 3).await;
    wait_until("empty outbox", || ob.is_empty()).await;
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
    let sent = fake.sent.lock().unwrap().clone();
    let subjects: Vec<&str> = sent.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(subjects, ["first", "second", "third"]);
    assert_ne!(sent[0].1, sent[1].1, "each mail has its own Message-ID");
    assert_eq!(ob.dead_len(), 0);
}

#[tokio::test]
async fn a_mail_refused_for_good_does_not_block_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let ob = Outbox::open(dir.path()).unwrap();
    ob.enqueue(&mail("bad")).await.unwrap();
    ob.enqueue(&mail("good")).await.unwrap();
    let fake = FakeTransport { reject_subject: Some("bad".into()), ..Default::default() };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = spawn_sender(ob.clone(), fake.clone(), quick_backoff(), async {
        let _ = stop_rx.await;
    });
    wait_until("good mail", || fake.sent.lock().unwrap().len() == 1).await;
    wait_until("empty outbox", || ob.is_empty()).await;
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
    assert_eq!(ob.dead_len(), 1);
}

#[tokio::test]
async fn spawned_alerter_puts_grouped_mail_in_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let ob = Outbox::open(dir.path()).unwrap();
    let mut cfg = alert_config();
    cfg.alerts.group_window = Duration::from_millis(200);
    let (tx, rx) = tokio::sync::mpsc::channel(alerts::CHANNEL_CAPACITY);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = alerts::spawn_alerts(Alerter::new(&cfg), rx, ob.clone(), async {
        let _ = stop_rx.await;
    });
    let now = Utc::now();
    tx.send(AlertEvent::Change(change("a", "s1", State::Ok, State::Error, now))).await.unwrap();
    tx.send(AlertEvent::Change(change("b", "s2", State::Ok, State::Warn, now))).await.unwrap();
    wait_until("alert in outbox", || ob.len() == 1).await;
    // A change still inside its window at shutdown is flushed, not lost.
    tx.send(AlertEvent::Change(change("c", "s3", State::Ok, State::Error, Utc::now()))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
    assert_eq!(ob.len(), 2);
}

#[test]
fn report_has_table_text_and_csv() {
    let t = t0();
    let machines = vec![MachineStatus {
        machine_id: "id-1".into(),
        hostname: "web1".into(),
        last_seen: Some(t),
        sensors: vec![
            SensorStatus {
                sensor: "disk./".into(),
                state: State::Warn,
                value: Some(Value::Number(91.0)),
                unit: Some("%".into()),
                ts: t,
            },
            SensorStatus { sensor: "cpu.total".into(), state: State::Ok, value: None, unit: None, ts: t },
        ],
    }];
    let readings = vec![ReportReading {
        machine_id: "id-1".into(),
        hostname: "web1".into(),
        sensor: "http.\"x\",y".into(),
        ts: t,
        value: Value::Text("a,b".into()),
        unit: None,
        state: State::Ok,
    }];
    let m = report::build("home", t - Cd::days(1), t, &machines, &readings, vec!["ops@example.org".into()]);
    assert_eq!(m.subject, "[Outpost] home report 2025-03-01: 1 machine(s), 0 error, 1 warn");
    assert!(m.text.contains("web1 (id-1)") && m.text.contains("91 %"), "{}", m.text);
    assert!(m.html.as_ref().unwrap().contains("<td>disk./</td>"));
    let csv = String::from_utf8(m.attachments[0].data.clone()).unwrap();
    assert_eq!(
        csv,
        "machine_id,hostname,sensor,time,value,unit,state\r\n\
         id-1,web1,\"http.\"\"x\"\",y\",2025-03-01T12:00:00.000Z,\"a,b\",,ok\r\n"
    );
    assert_eq!(m.attachments[0].filename, "outpost-home-2025-03-01.csv");
    let raw =
        String::from_utf8(transport::build_message(&lettre_from(), &m, "r@o").unwrap().formatted()).unwrap();
    assert!(
        raw.contains("multipart/mixed") && raw.contains("multipart/alternative") && raw.contains("text/csv")
    );
}

#[test]
fn next_run_is_strictly_later_and_counts_periods_from_report_at() {
    let at = chrono::NaiveTime::from_hms_opt(7, 0, 0).unwrap();
    let day = Duration::from_secs(86400);
    let morning = Utc.with_ymd_and_hms(2025, 3, 1, 6, 59, 0).unwrap();
    assert_eq!(report::next_run(morning, at, day), Utc.with_ymd_and_hms(2025, 3, 1, 7, 0, 0).unwrap());
    let exactly = Utc.with_ymd_and_hms(2025, 3, 1, 7, 0, 0).unwrap();
    assert_eq!(report::next_run(exactly, at, day), Utc.with_ymd_and_hms(2025, 3, 2, 7, 0, 0).unwrap());
    let hourly = report::next_run(morning, chrono::NaiveTime::from_hms_opt(0, 15, 0).unwrap(), day / 24);
    assert_eq!(hourly, Utc.with_ymd_and_hms(2025, 3, 1, 7, 15, 0).unwrap());
    let short = report::next_run(exactly, at, Duration::from_secs(5));
    assert_eq!(short, exactly + Cd::seconds(5));
}

#[test]
fn a_network_can_have_its_own_report_recipients() {
    let base = "[mail]\nserver = \"smtp.example.org\"\nfrom = \"Outpost <o@example.org>\"\nto = [\"ops@example.org\"]\n";
    let c = load(&format!("{base}[mail.report_to]\nplant-7 = [\"plant7@example.org\"]\n")).unwrap();
    assert_eq!(c.report_recipients("plant-7"), vec!["plant7@example.org".to_string()]);
    assert_eq!(c.report_recipients("default"), vec!["ops@example.org".to_string()], "others go to `to`");
    let e =
        load(&format!("{base}[mail.report_to]\nplant-7 = [\"not an address\"]\n")).unwrap_err().to_string();
    assert!(e.contains("mail.report_to.plant-7"), "{e}");
    let e = load(&format!("{base}[mail.report_to]\nplant-7 = []\n")).unwrap_err().to_string();
    assert!(e.contains("mail.report_to.plant-7"), "{e}");
}
