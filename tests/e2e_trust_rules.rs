//! The trust rules tried as an attacker would, against the real `outpost cloud` over real TLS: a
//! token is an admin's decision about one machine in one role, a relay cannot rewrite a sealed
//! enrollment, mail commands are the cloud's grant, and a command result counts only for the
//! envelope the cloud issued.

mod common;

use common::*;
use outpost_shared::keys::{
    seal_token, CommandEnvelope, CommandResult, CommandStatus, EnrollmentToken, KeyPair, PublicKey,
    SealedEnrollment, Signed,
};
use outpost_shared::model::Role;
use serde_json::{json, Value};
use std::time::Duration;

/// A well-formed LAN certificate fingerprint (these connectors serve no LAN).
fn lan_cert() -> String {
    "ab".repeat(32)
}

fn enroll(cloud: &CloudProc, key: &KeyPair, token: &str, role: &str) -> (u16, Value) {
    let lan = (role == "connector").then(lan_cert);
    let body = json!({"token": token, "public_key": key.public().to_pem(), "role": role,
                      "hostname": "attacker", "lan_cert": lan});
    post_enroll(cloud, &body)
}

fn post_enroll(cloud: &CloudProc, body: &Value) -> (u16, Value) {
    let r = cloud.client().post(format!("{}/v1/enroll", cloud.url())).json(body).send().unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

fn keys(n: usize) -> Vec<KeyPair> {
    // RSA-3072 generation is slow: make them on every core at once.
    let handles: Vec<_> = (0..n).map(|_| std::thread::spawn(|| KeyPair::generate().unwrap())).collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn a_token_enrolls_one_machine_in_its_role_once_and_never_undoes_a_revocation() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = CloudProc::start(&dir.path().join("cloud"));
    let keys = keys(21);

    // A token handed out for a hub cannot make a connector, whatever the request says.
    let hub_token = cloud.enroll_token();
    let (status, answer) = enroll(&cloud, &keys[0], &hub_token, "connector");
    assert_eq!(status, 403, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("enrolls a sensorhub"), "{answer}");

    // Twenty enrollments race for one token: exactly one key gets it.
    let token = cloud.enroll_token();
    let results: Vec<u16> = std::thread::scope(|s| {
        let runs: Vec<_> =
            keys[1..].iter().map(|k| s.spawn(|| enroll(&cloud, k, &token, "sensorhub").0)).collect();
        runs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(results.iter().filter(|s| **s == 200).count(), 1, "one winner: {results:?}");
    assert_eq!(results.iter().filter(|s| **s == 403).count(), 19, "the rest refused: {results:?}");
    let winner = &keys[1 + results.iter().position(|s| *s == 200).unwrap()];
    let id = winner.machine_id().to_string();

    // The winner asking again gets its receipt back, unchanged: still a sensorhub.
    let (status, again) = enroll(&cloud, winner, &token, "sensorhub");
    assert_eq!(status, 200, "{again}");
    let receipt: Signed<outpost_shared::keys::EnrollmentReceipt> =
        serde_json::from_value(again["receipt"].clone()).unwrap();
    let receipt =
        receipt.verify(&PublicKey::from_pem(again["cloud_key"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(receipt.role, Some(Role::Sensorhub));
    // Asking with its own, valid token to become a connector changes nothing.
    let (status, answer) = enroll(&cloud, winner, &token, "connector");
    assert_eq!(status, 403, "{answer}");
    assert_eq!(machine_role(&cloud, &id), "sensorhub");

    // Revoked: its old token cannot bring it back; only a token made after the revocation can.
    let (status, _) = cloud.request("DELETE", &format!("/v1/machines/{id}"), None);
    assert_eq!(status, 200);
    let (status, answer) = enroll(&cloud, winner, &token, "sensorhub");
    assert_eq!(status, 403, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("revoked"), "{answer}");
    std::thread::sleep(Duration::from_millis(20));
    let (status, answer) = enroll(&cloud, winner, &cloud.enroll_token(), "sensorhub");
    assert_eq!(status, 200, "a fresh token is the admin's decision to take it back: {answer}");

    // A connector token is asked for by name, and enrolls a connector only with its certificate.
    let conn_token = cloud.connector_token();
    let body = json!({"token": conn_token, "public_key": keys[0].public().to_pem(), "role": "connector",
                      "hostname": "c", "lan_cert": null});
    assert_eq!(post_enroll(&cloud, &body).0, 403, "a connector without a LAN certificate");
    assert_eq!(enroll(&cloud, &keys[0], &conn_token, "connector").0, 200);

    // A cancelled token enrolls nobody; the audit trail shows the token's life.
    let (status, made) = cloud.api_post(
        "/v1/enrollment-tokens",
        json!({"network": "default", "role": "sensorhub", "ttl": "10m", "label": "spare"}),
    );
    assert_eq!(status, 200, "{made}");
    let tid = made["id"].as_str().unwrap();
    assert!(cloud.api("/v1/enrollment-tokens").as_array().unwrap().iter().any(|t| t["id"] == tid));
    let (status, _) = cloud.request("DELETE", &format!("/v1/enrollment-tokens/{tid}"), None);
    assert_eq!(status, 200);
    let (status, answer) = enroll(&cloud, &keys[2], made["token"].as_str().unwrap(), "sensorhub");
    assert_eq!(status, 403, "{answer}");
    let audit = cloud.api("/v1/audit?limit=1000");
    let actions: Vec<&str> = audit.as_array().unwrap().iter().filter_map(|e| e["action"].as_str()).collect();
    for want in ["token-created", "token-cancelled", "enroll", "revoke"] {
        assert!(actions.contains(&want), "audit has {want}: {actions:?}");
    }
}

fn machine_role(cloud: &CloudProc, id: &str) -> String {
    // Not uploading yet, so not in /v1/machines: the receipt endpoint's view is the key record.
    let audit = cloud.api("/v1/audit?limit=1000");
    audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "enroll" && e["machine"] == id)
        .map(|e| e["parameters"]["role"].as_str().unwrap().to_string())
        .unwrap()
}

#[test]
fn a_connector_that_rewrites_a_sealed_enrollment_gets_it_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = CloudProc::start(&dir.path().join("cloud"));
    let hub = KeyPair::generate().unwrap();
    let cloud_pem = cloud.api("/v1/cloud-key")["public_key"].as_str().unwrap().to_string();
    let cloud_key = PublicKey::from_pem(&cloud_pem).unwrap();
    let token_text = cloud.enroll_token();
    let token = EnrollmentToken::parse(&token_text).unwrap();
    // What a hub sends through a connector: the seal binds everything the cloud records.
    let inner = SealedEnrollment {
        token: String::new(),
        machine_id: hub.machine_id().clone(),
        role: Role::Sensorhub,
        hostname: "pump-3".into(),
        lan_cert: None,
    };
    let sealed = seal_token(&cloud_key, &token, &inner).unwrap();
    let honest = json!({"sealed_token": sealed, "public_key": hub.public().to_pem(), "role": "sensorhub",
                        "hostname": "pump-3"});

    // The man in the middle makes it a connector with its own certificate: refused.
    let mut rewritten = honest.clone();
    rewritten["role"] = json!("connector");
    rewritten["lan_cert"] = json!(lan_cert());
    let (status, answer) = post_enroll(&cloud, &rewritten);
    assert_eq!(status, 403, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("altered"), "{answer}");
    // Or just renames it: refused too.
    let mut renamed = honest.clone();
    renamed["hostname"] = json!("evil");
    assert_eq!(post_enroll(&cloud, &renamed).0, 403);
    // A hub that seals itself as a connector (the connector path is for hubs only): refused.
    let as_connector =
        SealedEnrollment { role: Role::Connector, lan_cert: Some(lan_cert()), ..inner.clone() };
    let body = json!({"sealed_token": seal_token(&cloud_key, &token, &as_connector).unwrap(),
                      "public_key": hub.public().to_pem(), "role": "connector", "hostname": "pump-3",
                      "lan_cert": lan_cert()});
    let (status, answer) = post_enroll(&cloud, &body);
    assert_eq!(status, 403, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("connectors enroll directly"), "{answer}");

    // The untouched request still works: the attempts did not use up the token.
    let (status, answer) = post_enroll(&cloud, &honest);
    assert_eq!(status, 200, "{answer}");
}

fn mail_command(conn: &TestMachine, cloud: &CloudProc, hub: &str, sender: &str) -> (u16, Value) {
    let body =
        serde_json::to_vec(&json!({"machine": hub, "card": 1, "relay": 2, "on": true, "sender": sender}))
            .unwrap();
    conn.post(cloud, "/v1/mail-commands", body.clone(), &body, false)
}

#[test]
fn only_a_connector_the_cloud_granted_can_ask_for_commands_by_mail_and_only_for_listed_senders() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = CloudProc::start(&dir.path().join("cloud"));
    let hub = TestMachine::enroll(&cloud, "sensorhub");
    let conn = TestMachine::enroll(&cloud, "connector");

    let (status, answer) = mail_command(&conn, &cloud, &hub.id(), "ops@example.org");
    assert_eq!(status, 403, "no grant yet: {answer}");
    assert!(answer["error"].as_str().unwrap().contains("not enabled"), "{answer}");
    let refusals = |who: &str| {
        cloud
            .api(&format!("/v1/audit?machine={}", hub.id()))
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["event"] == "refused" && e["who"].as_str().unwrap().contains(who))
            .count()
    };
    assert_eq!(refusals("mail:ops@example.org"), 1, "the refusal is audited");

    // A hub cannot be granted, and cannot ask.
    let (status, _) = cloud.request(
        "PUT",
        &format!("/v1/machines/{}/mail-commands", hub.id()),
        Some(&json!({"senders": ["ops@example.org"]})),
    );
    assert_eq!(status, 400);
    assert_eq!(mail_command(&hub, &cloud, &hub.id(), "ops@example.org").0, 403);

    let (status, grant) = cloud.request(
        "PUT",
        &format!("/v1/machines/{}/mail-commands", conn.id()),
        Some(&json!({"senders": ["Ops@Example.org"]})),
    );
    assert_eq!(status, 200, "{grant}");
    let (status, answer) = mail_command(&conn, &cloud, &hub.id(), "ops@example.org");
    assert_eq!(status, 201, "granted: {answer}");
    let (status, _) = mail_command(&conn, &cloud, &hub.id(), "mallory@example.org");
    assert_eq!(status, 403, "a sender not on the cloud's list");
    assert_eq!(refusals("mail:mallory@example.org"), 1);

    let (status, _) = cloud.request("DELETE", &format!("/v1/machines/{}/mail-commands", conn.id()), None);
    assert_eq!(status, 200);
    assert_eq!(mail_command(&conn, &cloud, &hub.id(), "ops@example.org").0, 403, "withdrawn");
}

/// Signed `GET /v1/commands/poll` as the machine would send it.
fn poll(m: &TestMachine, cloud: &CloudProc) -> Vec<Signed<CommandEnvelope>> {
    let path = "/v1/commands/poll?wait=1";
    let sig = outpost_shared::keys::sign_request(&m.key, "GET", path, b"", chrono::Utc::now()).unwrap();
    let mut r = cloud.client().get(format!("{}{path}", cloud.url()));
    for (name, value) in sig.to_pairs() {
        r = r.header(name, value);
    }
    let resp = r.send().unwrap();
    assert!(resp.status().is_success(), "poll: {}", resp.status());
    resp.json().unwrap()
}

fn answer(m: &TestMachine, cloud: &CloudProc, id: &str, status: CommandStatus, envelope: String) -> u16 {
    let result = CommandResult {
        command_id: id.into(),
        machine_id: m.key.machine_id().clone(),
        status,
        output: json!({"said": "hub"}),
        finished_at: chrono::Utc::now(),
        envelope: Some(envelope),
    };
    let body = serde_json::to_vec(&Signed::sign(&m.key, &result).unwrap()).unwrap();
    m.post(cloud, "/v1/commands/result", body.clone(), &body, false).0
}

#[test]
fn a_result_counts_only_for_the_envelope_the_cloud_issued_and_an_unanswered_command_comes_again() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = CloudProc::start(&dir.path().join("cloud"));
    let hub = TestMachine::enroll(&cloud, "sensorhub");
    let (status, made) =
        cloud.api_post(&format!("/v1/machines/{}/commands", hub.id()), json!({"action": "ping"}));
    assert_eq!(status, 201, "{made}");
    let cmd = made["command_id"].as_str().unwrap().to_string();
    let issued = poll(&hub, &cloud);
    assert_eq!(issued.len(), 1);

    // A connector on the path forges an envelope under the real id; the hub refuses it and says
    // so, bound to what it received. The cloud's record of the real command does not change.
    let forger = KeyPair::generate().unwrap();
    let real = issued[0].peek_unverified().unwrap();
    let forged_env = CommandEnvelope { action: "relay.set".into(), ..real.clone() };
    let forged = Signed::sign(&forger, &forged_env).unwrap();
    assert_eq!(answer(&hub, &cloud, &cmd, CommandStatus::Refused, forged.digest()), 400);
    let rec = cloud.api(&format!("/v1/commands/{cmd}"));
    assert_eq!(rec["status"], "delivered", "the forged refusal changed nothing: {rec}");
    let audit = cloud.api(&format!("/v1/audit?machine={}", hub.id()));
    assert!(audit.as_array().unwrap().iter().any(|e| e["event"] == "result-ignored"), "{audit}");

    // The poll answer was "lost": the command is handed out again, the same envelope.
    std::thread::sleep(Duration::from_secs(11));
    let again = poll(&hub, &cloud);
    assert_eq!(again.len(), 1, "redelivered until answered");
    assert_eq!(again[0].digest(), issued[0].digest());

    // The genuine answer, bound to the issued envelope, is recorded; then nothing is handed out.
    assert_eq!(answer(&hub, &cloud, &cmd, CommandStatus::Done, issued[0].digest()), 200);
    assert_eq!(cloud.api(&format!("/v1/commands/{cmd}"))["status"], "done");
    std::thread::sleep(Duration::from_secs(11));
    assert!(poll(&hub, &cloud).is_empty(), "an answered command is not handed out again");
}
