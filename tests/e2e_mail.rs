//! End-to-end mail: the real binary as cloud, connector and sensorhub, a real SMTP server
//! (aiosmtpd with STARTTLS and a test CA) receiving what they send. What a user would notice: a
//! sensor going bad on a hub is mailed (by the cloud, or by the connector while the cloud is
//! unreachable, never by both), the periodic report arrives with its CSV, and mail commands switch
//! a relay only for the right people.
//!
//! Without python3 + aiosmtpd the tests are skipped with a printed reason (they fail in CI).

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

/// Waits until the cloud shows `sensor` of `machine` in `state`.
fn wait_sensor(cloud: &CloudProc, machine: &str, sensor: &str, state: &str) {
    wait_until(Duration::from_secs(60), &format!("the cloud shows {sensor} {state}"), || {
        let known = cloud.api("/v1/machines").as_array().unwrap().iter().any(|m| m["id"] == machine);
        known
            && cloud
                .api(&format!("/v1/machines/{machine}/sensors"))
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

#[test]
fn a_sensor_going_bad_on_a_hub_is_mailed_by_the_cloud_and_so_is_its_recovery() {
    if !aiosmtpd_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (smtp, ca) = mail_server(dir.path());
    let cloud = CloudProc::start_on(
        &dir.path().join("cloud"),
        free_port(),
        &mail_toml(&smtp, &ca, "report_at = \"off\""),
    );
    let hub_dir = dir.path().join("hub");
    let state = dir.path().join("valve-state");
    let hub = start_hub(&hub_dir, &hub_config(&hub_dir, &cloud, &valve_sensor(&state)));
    let id = machine_id(&hub_dir);
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
fn the_periodic_report_arrives_with_states_and_the_period_readings_as_csv() {
    if !aiosmtpd_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (smtp, ca) = mail_server(dir.path());
    let cloud = CloudProc::start_on(
        &dir.path().join("cloud"),
        free_port(),
        &mail_toml(&smtp, &ca, "report_at = \"00:00\"\nreport_every = \"4s\""),
    );
    let hub_dir = dir.path().join("hub");
    let state = dir.path().join("valve-state");
    let hub = start_hub(&hub_dir, &hub_config(&hub_dir, &cloud, &valve_sensor(&state)));
    let id = machine_id(&hub_dir);

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

/// Writes a connector config (loopback only, no SSDP, quick retries) plus `extra` TOML and starts
/// it; returns the process and its LAN API port.
fn start_connector(dir: &Path, cloud: &CloudProc, extra: &str) -> (Proc, u16) {
    std::fs::create_dir_all(dir).unwrap();
    let port = free_port();
    let config = dir.join("connector.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\nlisten = \"127.0.0.1:{port}\"\nmonitor_self = false\n\n[cloud]\nurl = \"{}\"\n\
             ca_file = \"{}\"\nenroll_token = \"{}\"\nretry_min = \"200ms\"\nretry_max = \"1s\"\n\n\
             [ssdp]\nadvertise = false\nsearch_hubs = false\n\n{extra}\n",
            dir.join("data").display(),
            cloud.url(),
            cloud.ca().display(),
            cloud.enroll_token()
        ),
    )
    .unwrap();
    let proc = Proc::start(&["connector", "--config", config.to_str().unwrap()], &dir.join("connector.log"));
    (proc, port)
}

/// A hub sending through the connector on `port`.
fn start_hub_behind(dir: &Path, cloud: &CloudProc, port: u16, extra: &str) -> (Proc, String) {
    let uplink = format!("connector = \"https://127.0.0.1:{port}\"\n");
    let hub = start_hub(dir, &hub_config_with(dir, cloud, extra, &uplink));
    let id = machine_id(dir);
    wait_until(Duration::from_secs(60), "the hub sends through the connector", || {
        cloud.api("/v1/machines").as_array().unwrap().iter().any(|m| {
            m["id"] == id.as_str() && m["uplink"].as_str().is_some_and(|u| u.starts_with("connector:"))
        })
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
    let (connector, port) = start_connector(
        &dir.path().join("connector"),
        &cloud,
        &format!("{}\n[outage_alerts]\nafter = \"2s\"\n", mail_toml(&smtp, &ca, "")),
    );
    let state = dir.path().join("valve-state");
    let (hub, id) = start_hub_behind(&dir.path().join("hub"), &cloud, port, &valve_sensor(&state));
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
