//! End-to-end mail: the real binary as cloud, connector and sensorhub, a real SMTP server
//! (aiosmtpd with STARTTLS and a test CA) receiving what they send. What a user would notice: a
//! sensor going bad on a hub is mailed (by the cloud, or by the connector while the cloud is
//! unreachable, never by both), the periodic report arrives with its CSV, and mail commands switch
//! a relay only for the right people.
//!
//! Without python3 + aiosmtpd the tests are skipped with a printed reason (they fail in CI).
//! Unix only: the relay cards are simulated on a pseudo-terminal.
#![cfg(unix)]

mod common;

use common::smtp::{aiosmtpd_available, ServerTls, SmtpServer};
use common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A STARTTLS server with a certificate for `localhost` from a test CA; returns the CA file.
fn mail_server(dir: &Path) -> (SmtpServer, PathBuf) {
    let certs =
        outpost_shared::tls::ensure_self_signed(&dir.join("smtp-tls"), &["localhost".into()], "test smtp")
            .unwrap();
    let server =
        SmtpServer::start("starttls", 0, Some(ServerTls { cert: &certs.cert, key: &certs.key }), None);
    (server, certs.ca)
}

/// A `[mail]` table sending to `server`; `extra` are more `[mail]` keys. Short timings so a test
/// does not wait for production defaults.
fn mail_toml(server: &SmtpServer, ca: &Path, extra: &str) -> String {
    format!(
        "[mail]\nserver = \"localhost\"\nport = {}\nca_file = \"{}\"\nfrom = \"Outpost <outpost@localhost>\"\n\
         to = [\"ops@localhost\"]\n{extra}\n[mail.alerts]\ngroup_window = \"1s\"\nquiet_period = \"2s\"\n",
        server.port,
        ca.display()
    )
}

/// A `command` sensor whose state is the exit code written in `state_file` (0 ok, 2 error).
fn valve_sensor(state_file: &Path) -> String {
    std::fs::write(state_file, "0").unwrap();
    format!(
        "[[sensor]]\nkind = \"command\"\nname = \"valve\"\ninterval = \"1s\"\ncommand = \"echo valve; exit $(cat '{}')\"\n",
        state_file.display()
    )
}

/// A message with its folded header lines joined again (long subjects are folded on the wire).
fn unfolded(msg: &str) -> String {
    let (head, body) = msg.split_once("\n\n").unwrap_or((msg, ""));
    let head = head.replace("\r\n ", " ").replace("\n ", " ").replace("\r\n\t", " ").replace("\n\t", " ");
    format!("{head}\n\n{body}")
}

/// Quoted-printable decoding (soft line breaks and `=XX`), enough for the ASCII parts we check.
fn unquote(qp: &str) -> String {
    let joined = qp.replace("=\r\n", "").replace("=\n", "");
    let mut out = Vec::new();
    let b = joined.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match (
            b[i],
            b.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()),
        ) {
            (b'=', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The messages whose (unfolded) text contains every one of `needles`.
fn mails_with(server: &SmtpServer, needles: &[&str]) -> Vec<String> {
    server
        .messages()
        .into_iter()
        .map(|m| unfolded(&m))
        .filter(|m| needles.iter().all(|n| m.contains(n)))
        .collect()
}

/// Waits until the cloud shows `sensor` of `machine_id` in `state`.
fn wait_sensor(cloud: &CloudProc, machine_id: &str, sensor: &str, state: &str) {
    wait_until(Duration::from_secs(60), &format!("the cloud shows {sensor} {state}"), || {
        machine(cloud, machine_id).is_some()
            && cloud
                .api(&format!("/v1/machines/{machine_id}/sensors"))
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["sensor"] == sensor && s["state"] == state)
    });
}

fn wait_mail(server: &SmtpServer, needles: &[&str]) -> String {
    let mut found = Vec::new();
    wait_until(Duration::from_secs(60), &format!("a mail with {needles:?} arrives"), || {
        found = mails_with(server, needles);
        !found.is_empty()
    });
    found.remove(0)
}

/// The decoded content of every attachment part of a MIME message.
fn attachments(msg: &str) -> Vec<String> {
    use base64::Engine;
    let mut out = Vec::new();
    for part in msg.split("\n--") {
        if !part.to_ascii_lowercase().contains("content-disposition: attachment") {
            continue;
        }
        let Some((head, body)) = part.split_once("\r\n\r\n").or_else(|| part.split_once("\n\n")) else {
            continue;
        };
        if head.to_ascii_lowercase().contains("content-transfer-encoding: base64") {
            let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
            let bytes = base64::engine::general_purpose::STANDARD.decode(b64.trim_end_matches('-')).unwrap();
            out.push(String::from_utf8(bytes).unwrap());
        } else if head.to_ascii_lowercase().contains("quoted-printable") {
            out.push(unquote(body));
        } else {
            out.push(body.to_string());
        }
    }
    out
}

/// A mail server, a cloud mailing to it (`mail_extra`: more `[mail]` keys) and a hub sending to
/// the cloud directly, with the valve sensor.
struct Direct {
    smtp: SmtpServer,
    cloud: CloudProc,
    hub: Proc,
    id: String,
    /// The valve's exit code file.
    state: PathBuf,
}

fn cloud_with_valve_hub(dir: &Path, mail_extra: &str) -> Direct {
    let (smtp, ca) = mail_server(dir);
    let cloud = CloudProc::start_on(&dir.join("cloud"), free_port(), &mail_toml(&smtp, &ca, mail_extra));
    let hub_dir = dir.join("hub");
    let state = dir.join("valve-state");
    let hub = start_hub(&hub_dir, &hub_config(&hub_dir, &cloud, &valve_sensor(&state)));
    let id = machine_id(&hub_dir);
    Direct { smtp, cloud, hub, id, state }
}

#[test]
fn a_sensor_going_bad_on_a_hub_is_mailed_by_the_cloud_and_so_is_its_recovery() {
    if !aiosmtpd_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Direct { smtp, cloud, hub, id, state } = cloud_with_valve_hub(dir.path(), "report_at = \"off\"");
    wait_sensor(&cloud, &id, "cmd.valve", "ok");

    std::fs::write(&state, "2").unwrap();
    let alert = wait_mail(&smtp, &["Subject: [Outpost] ERROR ", ": cmd.valve (was ok)"]);
    assert!(alert.starts_with("RCPT ops@localhost\n"), "{alert}");
    assert!(alert.contains(&id), "the mail names the machine: {alert}");
    assert!(!alert.contains("connector"), "sent by the cloud itself: {alert}");

    std::fs::write(&state, "0").unwrap();
    wait_mail(&smtp, &["Subject: [Outpost] OK again ", ": cmd.valve (was error)"]);
    assert_eq!(mails_with(&smtp, &["ERROR", "cmd.valve"]).len(), 1, "one alert per change");
    drop(hub);
}

#[test]
fn an_acknowledged_problem_is_not_mailed_again_and_maintenance_holds_its_mail_until_it_ends() {
    if !aiosmtpd_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (smtp, ca) = mail_server(dir.path());
    // Reminders every 3 s (production: hours), so "not mailed again" is seen within seconds.
    let mail = mail_toml(&smtp, &ca, "report_at = \"off\"") + "remind_every = \"3s\"\n";
    let cloud = CloudProc::start_on(&dir.path().join("cloud"), free_port(), &mail);
    let hub_dir = dir.path().join("hub");
    let state = dir.path().join("valve-state");
    let hub = start_hub(&hub_dir, &hub_config(&hub_dir, &cloud, &valve_sensor(&state)));
    let id = machine_id(&hub_dir);
    wait_sensor(&cloud, &id, "cmd.valve", "ok");

    // In error and not acknowledged: the alert, then reminders.
    std::fs::write(&state, "2").unwrap();
    wait_mail(&smtp, &["Subject: [Outpost] ERROR ", ": cmd.valve (was ok)"]);
    wait_mail(&smtp, &["Subject: [Outpost] STILL ERROR ", ": cmd.valve (since "]);

    // Acknowledged: no more reminders while it stays in error.
    let (status, v) = cloud.api_post(
        &format!("/v1/machines/{id}/sensors/cmd.valve/ack"),
        serde_json::json!({"comment": "valve replaced tomorrow"}),
    );
    assert_eq!(status, 200, "{v}");
    // A reminder already handed to the mail server before the acknowledgement may still arrive.
    std::thread::sleep(Duration::from_secs(3));
    let reminders = mails_with(&smtp, &["STILL ERROR", "cmd.valve"]).len();
    std::thread::sleep(Duration::from_secs(10));
    assert_eq!(mails_with(&smtp, &["STILL ERROR", "cmd.valve"]).len(), reminders, "reminders stopped");
    let audit = cloud.api("/v1/audit/rows?limit=100");
    assert!(audit.to_string().contains("valve replaced tomorrow"), "the trail has the comment: {audit}");

    // It recovers: the acknowledgement ends, the recovery is mailed.
    std::fs::write(&state, "0").unwrap();
    wait_mail(&smtp, &["Subject: [Outpost] OK again ", ": cmd.valve (was error)"]);
    wait_until(Duration::from_secs(20), "the acknowledgement ended", || {
        cloud.api("/v1/silences")["acks"].as_array().unwrap().is_empty()
    });

    // A maintenance window over the machine: the error inside it raises no mail; once the
    // window is over, the error still there is mailed.
    let errors_before = mails_with(&smtp, &["Subject: [Outpost] ERROR ", "cmd.valve"]).len();
    let now = chrono::Utc::now();
    let until = now + chrono::Duration::seconds(12);
    let (status, v) = cloud.api_post(
        "/v1/maintenance",
        serde_json::json!({"machine": id, "once": {"start": now - chrono::Duration::seconds(5), "end": until}, "comment": "valve swap"}),
    );
    assert_eq!(status, 201, "{v}");
    std::fs::write(&state, "2").unwrap();
    wait_sensor(&cloud, &id, "cmd.valve", "error");
    while chrono::Utc::now() < until - chrono::Duration::seconds(1) {
        assert_eq!(
            mails_with(&smtp, &["Subject: [Outpost] ERROR ", "cmd.valve"]).len(),
            errors_before,
            "no alert mail during maintenance"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    wait_until(Duration::from_secs(60), "the error is mailed after the window", || {
        mails_with(&smtp, &["Subject: [Outpost] ERROR ", "cmd.valve"]).len() > errors_before
    });
    let last = mails_with(&smtp, &["Subject: [Outpost] ERROR ", "cmd.valve"]).pop().unwrap();
    assert!(last.contains("(was ok)"), "{last}");
    drop(hub);
}

#[test]
fn the_periodic_report_arrives_with_states_and_the_period_readings_as_csv() {
    if !aiosmtpd_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Direct { smtp, cloud: _cloud, hub, id, .. } =
        cloud_with_valve_hub(dir.path(), "report_at = \"00:00\"\nreport_every = \"4s\"");

    // The first reports may come before the hub sent anything; wait for one with its readings.
    let mut report = String::new();
    wait_until(Duration::from_secs(90), "a report with the valve's readings arrives", || {
        report = mails_with(&smtp, &["Subject: [Outpost] default report "])
            .into_iter()
            .find(|m| attachments(m).iter().any(|a| a.contains(",cmd.valve,")))
            .unwrap_or_default();
        !report.is_empty()
    });
    assert!(report.contains("multipart/alternative") && report.contains("text/html"), "{report}");
    assert!(report.contains("1 machine(s)"), "{report}");
    let csv = attachments(&report).into_iter().find(|a| a.contains(",cmd.valve,")).unwrap();
    assert!(csv.starts_with("machine_id,hostname,sensor,time,value,unit,state\r\n"), "{csv}");
    let row = csv.lines().find(|l| l.contains(",cmd.valve,")).unwrap();
    assert!(row.starts_with(&format!("{id},")) && row.ends_with(",ok"), "{row}");
    assert!(report.contains("\"outpost-default-") && report.contains(".csv\""), "{report}");
    drop(hub);
}

/// A hub sending through `connector`.
fn start_hub_behind(dir: &Path, cloud: &CloudProc, connector: &ConnectorProc, extra: &str) -> (Proc, String) {
    let hub = start_hub(dir, &hub_config_with(dir, cloud, extra, &connector.hub_uplink()));
    let id = machine_id(dir);
    wait_until(Duration::from_secs(60), "the hub sends through the connector", || {
        machine(cloud, &id).is_some_and(|m| m["uplink"].as_str().is_some_and(|u| u.starts_with("connector:")))
    });
    (hub, id)
}

#[test]
fn while_the_cloud_is_down_the_connector_mails_the_alert_and_the_cloud_does_not_repeat_it() {
    if !aiosmtpd_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (smtp, ca) = mail_server(dir.path());
    let mut cloud = CloudProc::start_on(
        &dir.path().join("cloud"),
        free_port(),
        &mail_toml(&smtp, &ca, "report_at = \"off\""),
    );
    let connector = ConnectorProc::start(
        &dir.path().join("connector"),
        &cloud,
        &format!("{}\n[outage_alerts]\nafter = \"2s\"\n", mail_toml(&smtp, &ca, "")),
    );
    let state = dir.path().join("valve-state");
    let (hub, id) = start_hub_behind(&dir.path().join("hub"), &cloud, &connector, &valve_sensor(&state));
    wait_sensor(&cloud, &id, "cmd.valve", "ok");

    cloud.stop();
    std::fs::write(&state, "2").unwrap();
    let alert = wait_mail(&smtp, &["Subject: [Outpost connector] ERROR ", ": cmd.valve (was ok)"]);
    assert!(alert.contains("could not reach the cloud"), "the mail says who sent it and why: {alert}");
    assert!(connector.log_text().contains("the connector mails alerts itself"), "{}", connector.log_text());

    // The cloud comes back and gets the readings the connector held: it shows the error but does
    // not mail it again; the recovery after that is the cloud's to mail.
    cloud.restart();
    wait_sensor(&cloud, &id, "cmd.valve", "error");
    wait_until(Duration::from_secs(30), "the connector hands alerts back", || {
        connector.log_text().contains("cloud reachable again")
    });
    std::fs::write(&state, "0").unwrap();
    let ok = wait_mail(&smtp, &["Subject: [Outpost] OK again ", ": cmd.valve (was error)"]);
    assert!(!ok.contains("could not reach the cloud"), "sent by the cloud: {ok}");
    let errors = mails_with(&smtp, &["ERROR", ": cmd.valve (was ok)"]);
    assert_eq!(errors.len(), 1, "the error was mailed once, by the connector: {errors:#?}");
    drop(hub);
    drop(connector);
}

/// Runs `outpost ARGS`, returns its standard output (it must succeed).
fn outpost(args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new(BIN)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "outpost {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Sends one mail with Python's smtplib (`tests/mail/send_command.py ARGS`); its one-line verdict.
fn send_mail(port: u16, args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mail/send_command.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .args(["--port", &port.to_string()])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "send_command.py: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The code of `secret` at `offset` seconds from now.
fn code_in(secret: &str, offset: u64) -> String {
    use outpost_connector::mail::gateway::totp;
    let now = chrono::Utc::now().timestamp() as u64;
    totp::code_at(&totp::decode_secret(secret).unwrap(), now + offset)
}

#[test]
fn a_mail_command_switches_a_relay_only_from_the_right_sender_address_and_code() {
    if !aiosmtpd_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (smtp, ca) = mail_server(dir.path());
    let cloud = CloudProc::start(&dir.path().join("cloud"));
    let ops_secret = outpost(&["mail-code", "--new", "--account", "ops@example.org"], None);
    let ops_secret = ops_secret.lines().next().unwrap().to_string();
    let viewer_secret = outpost(&["mail-code", "--new"], None).lines().next().unwrap().to_string();
    let gateway = free_port();
    let connector_dir = dir.path().join("connector");
    let connector = ConnectorProc::start(
        &connector_dir,
        &cloud,
        &format!(
            "{}\n[mail_commands]\nenabled = true\nlisten = \"127.0.0.1:{gateway}\"\nallow_from = [\"127.0.0.1/32\"]\n\n\
             [[mail_commands.sender]]\naddress = \"ops@example.org\"\nsecret = \"{ops_secret}\"\nwrite = true\n\n\
             [[mail_commands.sender]]\naddress = \"viewer@example.org\"\nsecret = \"{viewer_secret}\"\n",
            mail_toml(&smtp, &ca, "")
        ),
    );
    // The cards run in this process; the hub opens the pseudo-terminal through the link.
    let link = dir.path().join("ttyRELAY0");
    let sim = outpost_sensorhub::relay::run_simulator(1, Some(link.clone())).unwrap();
    let relay_cfg = format!(
        "[[sensor]]\nkind = \"memory\"\ninterval = \"1h\"\n\n[relay]\nport = \"{}\"\npoll_interval = \"300ms\"\n",
        link.display()
    );
    let (hub, id) = start_hub_behind(&dir.path().join("hub"), &cloud, &connector, &relay_cfg);
    wait_sensor(&cloud, &id, "relay.1.k2", "ok");
    wait_until(Duration::from_secs(30), "the mail gateway listens", || {
        connector.log_text().contains("mail commands: listening")
    });
    let refused = |reason: &str| {
        wait_until(Duration::from_secs(30), &format!("the connector logs the refusal `{reason}`"), || {
            connector.log_text().lines().any(|l| l.contains("mail command") && l.contains(reason))
        })
    };
    let connector_ca = connector_dir.join("data/tls/ca.pem");
    // The cloud decides whether this connector may act for mail senders at all, and for whom.
    let connector_id = cloud
        .api("/v1/audit?limit=1000")
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "enroll" && e["parameters"]["role"] == "connector")
        .map(|e| e["machine"].as_str().unwrap().to_string())
        .expect("the connector's enrollment is in the audit trail");
    let (status, grant) = cloud.request(
        "PUT",
        &format!("/v1/machines/{connector_id}/mail-commands"),
        Some(&serde_json::json!({"senders": ["ops@example.org", "viewer@example.org"]})),
    );
    assert_eq!(status, 200, "{grant}");

    // STATUS from a read-only sender, over STARTTLS: a status mail from what the connector holds.
    let status = format!("STATUS {}", code_in(&viewer_secret, 0));
    let tls_ca = connector_ca.to_str().unwrap();
    let verdict = send_mail(
        gateway,
        &["--sender", "viewer@example.org", "--subject", &status, "--starttls-ca", tls_ca],
    );
    assert_eq!(verdict, "SENT");
    let answer = wait_mail(&smtp, &["RCPT viewer@example.org", "Subject: [Outpost] STATUS"]);
    assert!(answer.contains(&id) && answer.contains("relay.1.k2"), "{answer}");

    // Every command travels over TLS (`require_tls` is on by default): in clear it is refused.
    let send = |args: &[&str]| {
        let mut a = args.to_vec();
        a.extend(["--starttls-ca", tls_ca]);
        send_mail(gateway, &a)
    };
    let relay_on = format!("RELAY {id} 1 2 ON {}", code_in(&ops_secret, 0));
    let verdict = send_mail(gateway, &["--sender", "ops@example.org", "--subject", &relay_on]);
    assert!(verdict.starts_with("REFUSED 530"), "{verdict}");
    refused("no TLS");
    // RELAY from the sender with write permission: the card switches, the answer says done, the
    // cloud's audit trail names the sender.
    let raw = dir.path().join("relay-on.eml");
    let verdict =
        send(&["--sender", "ops@example.org", "--subject", &relay_on, "--save", raw.to_str().unwrap()]);
    assert_eq!(verdict, "SENT");
    wait_until(Duration::from_secs(60), "the relay switched on", || sim.states(1) == 0b10);
    wait_mail(&smtp, &["RCPT ops@example.org", &format!("Subject: [Outpost] RELAY {id} 1 2 ON: done")]);
    let audit = cloud.api(&format!("/v1/audit?machine={id}"));
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["who"].as_str().unwrap_or("").starts_with("mail:ops@example.org via connector ")),
        "{audit}"
    );

    // Someone switches it off at the card; then every bad mail must leave it off.
    sim.set_states(1, 0);
    wait_until(Duration::from_secs(30), "the cloud sees the relay off", || {
        let s = cloud.api(&format!("/v1/machines/{id}/sensors"));
        s.as_array().unwrap().iter().any(|s| s["sensor"] == "relay.1.k2" && s["value"] == false)
    });

    // The same mail again (replayed): refused, and its sender is told.
    assert_eq!(send(&["--sender", "ops@example.org", "--raw", raw.to_str().unwrap()]), "SENT");
    refused("already used");
    wait_mail(&smtp, &["RCPT ops@example.org", "Subject: [Outpost] Mail command refused", "already used"]);

    // A wrong code.
    let right: Vec<String> = [0, 30, 60, 90].iter().map(|o| code_in(&ops_secret, *o)).collect();
    let wrong = (0..1_000_000).map(|n| format!("{n:06}")).find(|c| !right.contains(c)).unwrap();
    let verdict = send(&["--sender", "ops@example.org", "--subject", &format!("RELAY {id} 1 3 ON {wrong}")]);
    assert_eq!(verdict, "SENT");
    refused("wrong code");

    // A read-only sender asking to switch (with a fresh, valid code).
    let viewer_relay = format!("RELAY {id} 1 4 ON {}", code_in(&viewer_secret, 30));
    assert_eq!(send(&["--sender", "viewer@example.org", "--subject", &viewer_relay]), "SENT");
    refused("no write permission");

    // An unknown sender is refused at MAIL FROM; a client outside allow_from at the greeting.
    let stranger = format!("RELAY {id} 1 5 ON {}", code_in(&ops_secret, 30));
    let verdict = send(&["--sender", "stranger@example.org", "--subject", &stranger]);
    assert!(verdict.starts_with("REFUSED 550"), "{verdict}");
    refused("unknown sender");
    let verdict = send(&["--source", "127.0.0.2", "--sender", "ops@example.org", "--subject", &stranger]);
    assert!(verdict.starts_with("REFUSED 554"), "{verdict}");
    refused("outside mail_commands.allow_from");

    assert_eq!(sim.states(1), 0, "no refused mail moved a relay");
    for line in connector.log_text().lines().filter(|l| l.contains("mail command")) {
        eprintln!("{line}");
    }
    drop(hub);
    drop(connector);
}
