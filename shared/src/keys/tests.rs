//! Tests of the key module. RSA-3072 generation takes seconds, so the three keys used everywhere
//! (two machines and the cloud) are made once per test binary.

use super::*;
use base64::Engine;
use chrono::{DateTime, Utc};
use std::sync::OnceLock;
use std::time::Duration;

fn key(slot: &'static OnceLock<KeyPair>) -> &'static KeyPair {
    slot.get_or_init(|| KeyPair::generate().expect("key generation"))
}

fn machine_a() -> &'static KeyPair {
    static A: OnceLock<KeyPair> = OnceLock::new();
    key(&A)
}

fn machine_b() -> &'static KeyPair {
    static B: OnceLock<KeyPair> = OnceLock::new();
    key(&B)
}

fn cloud() -> &'static KeyPair {
    static CLOUD: OnceLock<KeyPair> = OnceLock::new();
    key(&CLOUD)
}

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_900_000_000, 0).unwrap()
}

fn secs(n: i64) -> chrono::Duration {
    chrono::Duration::seconds(n)
}

// ---- machine keys ----

#[test]
fn machine_id_is_the_first_128_bits_of_sha256_over_spki() {
    let a = machine_a();
    let digest = super::sha256(a.public().spki_der());
    assert_eq!(a.machine_id().as_str(), hex::encode(&digest[..16]));
    assert_eq!(a.machine_id().as_str().len(), 32);
    assert_eq!(a.public().spki_der().len(), 422, "SPKI DER of a 3072-bit key with e = 65537");
    assert_ne!(a.machine_id(), machine_b().machine_id());

    let again = PublicKey::from_pem(&a.public().to_pem()).unwrap();
    assert_eq!(again.machine_id(), a.machine_id());
    assert_eq!(PublicKey::from_spki_der(a.public().spki_der()).unwrap(), *a.public());
    assert!(again.clone().expect_fingerprint(a.machine_id()).is_ok());
    let err = again.expect_fingerprint(machine_b().machine_id()).unwrap_err();
    assert!(matches!(err, KeyError::FingerprintMismatch { .. }), "{err}");

    assert!(MachineId::parse("ABCDEF0123456789abcdef0123456789").is_err(), "upper case refused");
    assert!(MachineId::parse("abc").is_err());
    let json = serde_json::to_string(a.machine_id()).unwrap();
    assert_eq!(serde_json::from_str::<MachineId>(&json).unwrap(), *a.machine_id());
    assert!(serde_json::from_str::<MachineId>("\"nothex\"").is_err());
}

#[test]
fn private_key_pem_round_trips_and_debug_hides_it() {
    let a = machine_a();
    let pem = a.to_pkcs8_pem();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    let back = KeyPair::from_pkcs8_pem(&pem).unwrap();
    assert_eq!(back.machine_id(), a.machine_id());
    let debug = format!("{a:?}");
    assert!(debug.contains(a.machine_id().as_str()) && !debug.contains("PRIVATE"), "{debug}");
}

#[test]
fn load_or_create_writes_a_0600_key_once_and_loads_it_after() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys/machine.key");
    let (made, created) = KeyPair::load_or_create_with(&path, || Ok(machine_a().clone())).unwrap();
    assert!(created);
    assert_eq!(made.machine_id(), machine_a().machine_id());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "no temporary file left behind");

    let (loaded, created) =
        KeyPair::load_or_create_with(&path, || panic!("must not generate when the key exists")).unwrap();
    assert!(!created);
    assert_eq!(loaded.machine_id(), machine_a().machine_id());

    // An identity is never replaced by accident.
    let err = machine_b().save_new(&path).unwrap_err();
    assert!(
        matches!(&err, KeyError::Io { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists)
    );
    assert_eq!(KeyPair::load(&path).unwrap().machine_id(), machine_a().machine_id());
}

#[cfg(unix)]
#[test]
fn a_key_file_readable_by_others_is_refused_with_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("machine.key");
    machine_a().save_new(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = KeyPair::load_or_create_with(&path, || panic!("must not replace a key")).unwrap_err();
    assert!(matches!(err, KeyError::Permissions { mode: 0o644, .. }));
    let message = err.to_string();
    assert!(message.contains(&format!("chmod 600 {}", path.display())), "{message}");
    assert!(message.contains("0644"), "{message}");
}

#[test]
fn a_key_file_with_garbage_is_a_clear_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("machine.key");
    write_private(&path, b"not a key");
    let err = KeyPair::load(&path).unwrap_err();
    assert!(matches!(err, KeyError::BadPrivateKey { .. }));
    assert!(err.to_string().contains("machine.key"), "{err}");
}

fn write_private(path: &std::path::Path, bytes: &[u8]) {
    crate::tls::write_file(path, bytes, 0o600).unwrap();
}

// ---- request signatures ----

const BODY: &[u8] = br#"{"readings":[1,2,3]}"#;

#[test]
fn a_signed_request_verifies_through_real_headers() {
    let a = machine_a();
    let signed = sign_request(a, "post", "/v1/batches?live=1", BODY, t0()).unwrap();
    let mut map = reqwest::header::HeaderMap::new();
    for (name, value) in signed.to_pairs() {
        map.insert(name, value.parse().unwrap());
    }
    let received = SignedHeaders::from_header_map(&map).unwrap();
    assert_eq!(received, signed);
    verify_request(
        a.public(),
        &received,
        "POST",
        "/v1/batches?live=1",
        BODY,
        t0() + secs(30),
        DEFAULT_MAX_SKEW,
    )
    .unwrap();
}

#[test]
fn tampered_requests_are_refused() {
    let a = machine_a();
    let h = sign_request(a, "POST", "/v1/batches", BODY, t0()).unwrap();
    let check = |h: &SignedHeaders, method: &str, path: &str, body: &[u8]| {
        verify_request(a.public(), h, method, path, body, t0(), DEFAULT_MAX_SKEW)
    };
    assert_eq!(check(&h, "POST", "/v1/batches", br#"{"readings":[1,2,4]}"#), Err(VerifyError::BadSignature));
    assert_eq!(check(&h, "POST", "/v1/batches?x=1", BODY), Err(VerifyError::BadSignature));
    assert_eq!(check(&h, "PUT", "/v1/batches", BODY), Err(VerifyError::BadSignature));
    let moved = SignedHeaders { timestamp: h.timestamp + 1, ..h.clone() };
    assert_eq!(check(&moved, "POST", "/v1/batches", BODY), Err(VerifyError::BadSignature));
    let mut sig = base64::engine::general_purpose::STANDARD.decode(&h.signature_b64).unwrap();
    sig[10] ^= 1;
    let flipped =
        SignedHeaders { signature_b64: base64::engine::general_purpose::STANDARD.encode(sig), ..h.clone() };
    assert_eq!(check(&flipped, "POST", "/v1/batches", BODY), Err(VerifyError::BadSignature));
    let garbage = SignedHeaders { signature_b64: "%%%".into(), ..h.clone() };
    assert!(matches!(check(&garbage, "POST", "/v1/batches", BODY), Err(VerifyError::Malformed(_))));
    assert_eq!(check(&h, "POST", "/v1/batches", BODY), Ok(()));
}

#[test]
fn requests_outside_the_skew_window_are_stale() {
    let a = machine_a();
    let h = sign_request(a, "POST", "/v1/batches", BODY, t0()).unwrap();
    let at = |now| verify_request(a.public(), &h, "POST", "/v1/batches", BODY, now, DEFAULT_MAX_SKEW);
    assert_eq!(at(t0() + secs(300)), Ok(()));
    assert_eq!(at(t0() - secs(300)), Ok(()));
    let late = at(t0() + secs(301)).unwrap_err();
    assert_eq!(late, VerifyError::Stale { timestamp: t0().timestamp(), off_by_secs: 301, allowed_secs: 300 });
    assert!(late.to_string().contains("NTP"));
    assert!(matches!(at(t0() - secs(3600)), Err(VerifyError::Stale { .. })), "from the future");
}

#[test]
fn requests_checked_against_another_machines_key_are_refused() {
    let (a, b) = (machine_a(), machine_b());
    let h = sign_request(a, "POST", "/v1/batches", BODY, t0()).unwrap();
    let err =
        verify_request(b.public(), &h, "POST", "/v1/batches", BODY, t0(), DEFAULT_MAX_SKEW).unwrap_err();
    assert!(matches!(err, VerifyError::WrongSigner { .. }), "{err}");
    // A claiming to be B: the id matches B's key, the signature does not.
    let posing = SignedHeaders { machine_id: b.machine_id().clone(), ..h };
    let err = verify_request(b.public(), &posing, "POST", "/v1/batches", BODY, t0(), DEFAULT_MAX_SKEW);
    assert_eq!(err, Err(VerifyError::BadSignature));
}

#[test]
fn missing_or_malformed_signature_headers_are_named() {
    let id = machine_a().machine_id().as_str();
    let missing = SignedHeaders::from_values(None, Some("1"), Some("x")).unwrap_err();
    assert_eq!(missing, VerifyError::Unsigned(HEADER_MACHINE));
    assert!(missing.to_string().contains("x-outpost-machine"));
    assert_eq!(
        SignedHeaders::from_values(Some(id), None, Some("x")),
        Err(VerifyError::Unsigned(HEADER_TIMESTAMP))
    );
    assert_eq!(
        SignedHeaders::from_values(Some(id), Some("1"), None),
        Err(VerifyError::Unsigned(HEADER_SIGNATURE))
    );
    let empty = reqwest::header::HeaderMap::new();
    assert_eq!(SignedHeaders::from_header_map(&empty), Err(VerifyError::Unsigned(HEADER_MACHINE)));
    let bad_time = SignedHeaders::from_values(Some(id), Some("2030-01-01"), Some("x")).unwrap_err();
    assert!(matches!(bad_time, VerifyError::Malformed(_)), "{bad_time}");
    let bad_id = SignedHeaders::from_values(Some("someone"), Some("1"), Some("x")).unwrap_err();
    assert!(matches!(bad_id, VerifyError::Malformed(_)), "{bad_id}");
}

// ---- signed documents ----

fn command_for(target: &MachineId, now: DateTime<Utc>, ttl_secs: u64) -> CommandEnvelope {
    CommandEnvelope::new(
        target.clone(),
        "relay.set",
        serde_json::json!({"card": 1, "relay": 3, "on": true}),
        now,
        Duration::from_secs(ttl_secs),
    )
    .unwrap()
}

#[test]
fn a_signed_document_survives_relaying_as_json_and_verifies() {
    let command = command_for(machine_a().machine_id(), t0(), 60);
    let signed = Signed::sign(cloud(), &command).unwrap();
    // A connector parses and re-serializes the envelope: the payload bytes stay as they were.
    let relayed: serde_json::Value = serde_json::to_value(&signed).unwrap();
    let pretty = serde_json::to_string_pretty(&relayed).unwrap();
    let received: Signed<CommandEnvelope> = serde_json::from_str(&pretty).unwrap();
    assert_eq!(received, signed);
    assert_eq!(received.verify(cloud().public()).unwrap(), command);
    assert_eq!(received.peek_unverified().unwrap().target, *machine_a().machine_id());
    assert_eq!(relayed["kind"], "command");
    assert_eq!(relayed["signer"], cloud().machine_id().as_str());
}

#[test]
fn tampered_or_misattributed_documents_are_refused() {
    let b64 = base64::engine::general_purpose::STANDARD;
    let result = CommandResult {
        command_id: "c1".into(),
        machine_id: machine_a().machine_id().clone(),
        status: CommandStatus::Done,
        output: serde_json::json!({"state": "on"}),
        finished_at: t0(),
        envelope: Some("ab".repeat(32)),
    };
    let signed = Signed::sign(machine_a(), &result).unwrap();
    assert_eq!(signed.verify(machine_a().public()).unwrap(), result);

    let mut forged = signed.clone();
    let text = String::from_utf8(signed.payload_bytes().unwrap()).unwrap().replace("\"done\"", "\"failed\"");
    forged.payload = b64.encode(text);
    assert_eq!(forged.verify(machine_a().public()), Err(DocumentError::BadSignature));

    let mut bad_sig = signed.clone();
    let mut sig = b64.decode(&signed.signature).unwrap();
    sig[0] ^= 0x80;
    bad_sig.signature = b64.encode(sig);
    assert_eq!(bad_sig.verify(machine_a().public()), Err(DocumentError::BadSignature));

    assert!(matches!(signed.verify(machine_b().public()), Err(DocumentError::WrongSigner { .. })));
    let mut posing = signed.clone();
    posing.signer = machine_b().machine_id().clone();
    assert_eq!(posing.verify(machine_b().public()), Err(DocumentError::BadSignature));
}

#[test]
fn a_document_signed_as_one_kind_never_verifies_as_another() {
    let receipt = EnrollmentReceipt {
        machine_id: machine_a().machine_id().clone(),
        network_id: "plant-7".into(),
        connectors: vec![AuthorizedConnector {
            machine_id: machine_b().machine_id().clone(),
            lan_cert: CertFingerprint::of_der(b"connector certificate"),
        }],
        cloud_key: cloud().machine_id().clone(),
        issued_at: t0(),
        role: Some(crate::model::Role::Sensorhub),
    };
    let signed = Signed::sign(cloud(), &receipt).unwrap();
    let back = signed.verify(cloud().public()).unwrap();
    assert_eq!(back.connector(machine_b().machine_id()).unwrap().lan_cert, receipt.connectors[0].lan_cert);
    assert!(back.connector(machine_a().machine_id()).is_none());

    let json = serde_json::to_string(&signed).unwrap();
    let as_command: Signed<CommandEnvelope> = serde_json::from_str(&json).unwrap();
    assert!(matches!(as_command.verify(cloud().public()), Err(DocumentError::Malformed(_))));
    let relabelled: Signed<CommandEnvelope> =
        serde_json::from_str(&json.replace("\"enrollment-receipt\"", "\"command\"")).unwrap();
    assert_eq!(relabelled.verify(cloud().public()), Err(DocumentError::BadSignature));
}

// ---- command verification ----

fn verifier(dir: &std::path::Path, now: DateTime<Utc>) -> CommandVerifier {
    CommandVerifier::open(
        cloud().public().clone(),
        machine_a().machine_id().clone(),
        &dir.join("state/commands.log"),
        now,
    )
    .unwrap()
}

#[test]
fn a_command_runs_once_and_a_replay_is_refused_even_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let signed = Signed::sign(cloud(), &command_for(machine_a().machine_id(), t0(), 600)).unwrap();
    {
        let v = verifier(dir.path(), t0());
        let accepted = v.verify(&signed, t0() + secs(1)).unwrap();
        assert_eq!(accepted.action, "relay.set");
        let again = v.verify(&signed, t0() + secs(2)).unwrap_err();
        assert!(matches!(again, CommandRefused::Replayed { .. }), "{again}");
    }
    // The hub restarts: a new verifier on the same log still knows the id.
    let v = verifier(dir.path(), t0() + secs(60));
    let err = v.verify(&signed, t0() + secs(61)).unwrap_err();
    assert!(matches!(err, CommandRefused::Replayed { .. }), "{err}");
    assert!(err.to_string().contains("already received"));
    // Another command still goes through.
    let other = Signed::sign(cloud(), &command_for(machine_a().machine_id(), t0(), 600)).unwrap();
    v.verify(&other, t0() + secs(62)).unwrap();
}

#[test]
fn expired_future_and_overlong_commands_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let v = verifier(dir.path(), t0()).with_max_skew(Duration::from_secs(30));
    let signed = Signed::sign(cloud(), &command_for(machine_a().machine_id(), t0(), 60)).unwrap();
    let err = v.verify(&signed, t0() + secs(91)).unwrap_err();
    assert!(matches!(err, CommandRefused::Expired { .. }), "{err}");
    assert!(err.to_string().contains("expired at"), "{err}");
    let err = v.verify(&signed, t0() - secs(31)).unwrap_err();
    assert!(matches!(err, CommandRefused::IssuedInFuture { .. }), "{err}");
    let long = Signed::sign(cloud(), &command_for(machine_a().machine_id(), t0(), 3 * 24 * 3600)).unwrap();
    assert!(matches!(v.verify(&long, t0()), Err(CommandRefused::Malformed(_))));
    // None of the refusals used up the id: the command is still good inside its window.
    v.verify(&signed, t0() + secs(10)).unwrap();
}

#[test]
fn mis_targeted_forged_and_malformed_commands_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let v = verifier(dir.path(), t0());
    let for_b = Signed::sign(cloud(), &command_for(machine_b().machine_id(), t0(), 60)).unwrap();
    let err = v.verify(&for_b, t0()).unwrap_err();
    assert!(matches!(err, CommandRefused::WrongTarget { .. }), "{err}");
    assert!(err.to_string().contains(machine_b().machine_id().as_str()));

    // Signed by a machine key instead of the cloud key.
    let forged = Signed::sign(machine_b(), &command_for(machine_a().machine_id(), t0(), 60)).unwrap();
    assert!(matches!(
        v.verify(&forged, t0()),
        Err(CommandRefused::Forged(DocumentError::WrongSigner { .. }))
    ));
    let mut posing = forged.clone();
    posing.signer = cloud().machine_id().clone();
    assert!(matches!(v.verify(&posing, t0()), Err(CommandRefused::Forged(DocumentError::BadSignature))));

    let mut bad_id = command_for(machine_a().machine_id(), t0(), 60);
    bad_id.id = "two words\n".into();
    let signed = Signed::sign(cloud(), &bad_id).unwrap();
    assert!(matches!(v.verify(&signed, t0()), Err(CommandRefused::Malformed(_))));
}

// ---- the command key ----

fn command_key() -> &'static CommandKeyPair {
    static KEY: OnceLock<CommandKeyPair> = OnceLock::new();
    KEY.get_or_init(|| CommandKeyPair::derive(cloud()).unwrap())
}

/// `signed` as JSON, changed by `edit`, read back: what a relay or an attacker could hand a hub.
fn edited(
    signed: &Signed<CommandEnvelope>,
    edit: impl FnOnce(&mut serde_json::Value),
) -> Signed<CommandEnvelope> {
    let mut json = serde_json::to_value(signed).unwrap();
    edit(&mut json);
    serde_json::from_value(json).unwrap()
}

#[test]
fn a_command_signed_with_the_certified_key_runs_once_and_relays_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let v = verifier(dir.path(), t0());
    let command = command_for(machine_a().machine_id(), t0(), 600);
    let signed = command_key().sign_command(&command).unwrap();
    let pretty = serde_json::to_string_pretty(&signed).unwrap();
    let received: Signed<CommandEnvelope> = serde_json::from_str(&pretty).unwrap();
    assert_eq!(received, signed);
    assert_eq!(received.signer, *cloud().machine_id());
    assert_eq!(v.verify(&received, t0() + secs(1)).unwrap(), command);
    let again = v.verify(&received, t0() + secs(2)).unwrap_err();
    assert!(matches!(again, CommandRefused::Replayed { .. }), "{again}");
    // Every node with the same cloud key derives the same command key; each node's certificate
    // (a fresh RSA-PSS signature) is accepted.
    let other_node = CommandKeyPair::derive(cloud()).unwrap();
    let cert = |k: &CommandKeyPair| k.certificate().peek_unverified().unwrap();
    assert_eq!(cert(&other_node), cert(command_key()));
    assert_ne!(other_node.certificate().signature, command_key().certificate().signature);
    let from_b = other_node.sign_command(&command_for(machine_a().machine_id(), t0(), 600)).unwrap();
    v.verify(&from_b, t0() + secs(3)).unwrap();
    // The certificate is part of what the hub received: the digest a result names covers it.
    let recertified =
        edited(&signed, |j| j["signing_key"] = serde_json::to_value(other_node.certificate()).unwrap());
    assert_ne!(recertified.digest(), signed.digest());
}

#[test]
fn only_the_pinned_cloud_certifies_a_command_key_and_only_for_commands() {
    let dir = tempfile::tempdir().unwrap();
    let v = verifier(dir.path(), t0());
    let command = command_for(machine_a().machine_id(), t0(), 600);
    let genuine = command_key().sign_command(&command).unwrap();
    let forged = |s: &Signed<CommandEnvelope>| match v.verify(s, t0()) {
        Err(CommandRefused::Forged(e)) => e,
        other => panic!("accepted or refused for another reason: {other:?}"),
    };

    // Another machine's own command key, certified by itself, posing as the cloud.
    let attacker = CommandKeyPair::derive(machine_b()).unwrap();
    let own = attacker.sign_command(&command).unwrap();
    assert!(matches!(forged(&own), DocumentError::WrongSigner { .. }));
    let posing = edited(&own, |j| j["signer"] = cloud().machine_id().as_str().into());
    assert!(matches!(forged(&posing), DocumentError::WrongSigner { .. }), "the certificate is b's");
    // The cloud's genuine certificate on a command the attacker signed with its own key.
    let stolen_cert = edited(&own, |j| {
        j["signer"] = cloud().machine_id().as_str().into();
        j["signing_key"] = serde_json::to_value(command_key().certificate()).unwrap();
    });
    assert_eq!(forged(&stolen_cert), DocumentError::BadSignature);
    // A genuine command, altered on its way.
    let altered = edited(&genuine, |j| {
        let b64 = base64::engine::general_purpose::STANDARD;
        let text = String::from_utf8(genuine.payload_bytes().unwrap())
            .unwrap()
            .replace("\"on\":true", "\"on\":false");
        j["payload"] = b64.encode(text).into();
    });
    assert_eq!(forged(&altered), DocumentError::BadSignature);
    // The certificate edited to name the attacker's key.
    let swapped = edited(&own, |j| {
        j["signer"] = cloud().machine_id().as_str().into();
        let mut cert = serde_json::to_value(command_key().certificate()).unwrap();
        cert["payload"] = serde_json::to_value(attacker.certificate()).unwrap()["payload"].clone();
        j["signing_key"] = cert;
    });
    assert_eq!(forged(&swapped), DocumentError::BadSignature);
    // A certificate vouched for by another certificate (a chain) is not taken.
    let chained = edited(&own, |j| {
        j["signer"] = cloud().machine_id().as_str().into();
        let mut cert = serde_json::to_value(attacker.certificate()).unwrap();
        cert["signer"] = cloud().machine_id().as_str().into();
        cert["signing_key"] = serde_json::to_value(command_key().certificate()).unwrap();
        j["signing_key"] = cert;
    });
    let err = v.verify(&chained, t0()).unwrap_err();
    assert!(matches!(err, CommandRefused::Malformed(_)), "{err}");
    // Nothing but a command is taken with a certified key: the same bytes offered as a receipt.
    let json = serde_json::to_string(&genuine).unwrap().replace("\"command\"", "\"enrollment-receipt\"");
    let as_receipt: Signed<EnrollmentReceipt> = serde_json::from_str(&json).unwrap();
    assert!(matches!(as_receipt.verify(cloud().public()), Err(DocumentError::Malformed(_))));
    // None of this used up the id: the genuine command still runs.
    v.verify(&genuine, t0()).unwrap();
}

#[test]
fn the_replay_log_forgets_expired_ids_and_compacts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("commands.log");
    let mut log = ReplayLog::open(&path, t0()).unwrap();
    for i in 0..1100 {
        assert!(log.record(&format!("old-{i}"), t0() + secs(10), t0()).unwrap());
    }
    assert!(!log.record("old-5", t0() + secs(10), t0()).unwrap(), "known id");
    let later = t0() + secs(100);
    assert!(log.record("new-1", later + secs(600), later).unwrap());
    for i in 0..1100 {
        log.record(&format!("new-more-{i}"), later + secs(600), later).unwrap();
    }
    let lines = std::fs::read_to_string(&path).unwrap().lines().count();
    assert!(lines < 1200, "expired ids were compacted away, {lines} lines left");
    drop(log);
    let log = ReplayLog::open(&path, later).unwrap();
    assert_eq!(log.len(), 1101);
    let log = ReplayLog::open(&path, later + secs(601)).unwrap();
    assert!(log.is_empty());
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
}

#[test]
fn a_torn_last_line_in_the_replay_log_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("commands.log");
    let until = (t0() + secs(60)).timestamp();
    std::fs::write(&path, format!("{until} abc\n{until}")).unwrap();
    let mut log = ReplayLog::open(&path, t0()).unwrap();
    assert_eq!(log.len(), 1);
    assert!(!log.record("abc", t0() + secs(60), t0()).unwrap());
}

#[test]
fn a_refused_result_carries_the_reason() {
    let reason = CommandRefused::Replayed { id: "c9".into() };
    let result =
        CommandResult::refused("c9", machine_a().machine_id().clone(), &reason, t0(), "cd".repeat(32));
    assert_eq!(result.status, CommandStatus::Refused);
    let json = serde_json::to_value(&result).unwrap();
    assert_eq!(json["status"], "refused");
    assert!(json["output"]["error"].as_str().unwrap().contains("already received"));
}

// ---- sealed secrets ----

#[test]
fn a_sealed_secret_opens_only_on_its_machine() {
    let (a, b) = (machine_a(), machine_b());
    let password = "hunter2-sensor-pass";
    let sealed = seal(a.public(), password).unwrap();
    assert!(is_sealed(&sealed));
    assert!(sealed.starts_with(&format!("sealed:v1:{}:", a.machine_id())));
    assert_eq!(unseal(a, &sealed).unwrap().expose(), password);
    assert_ne!(seal(a.public(), password).unwrap(), sealed, "fresh key and nonce each time");

    let err = unseal(b, &sealed).unwrap_err();
    assert!(matches!(err, SealError::NotForThisMachine { .. }), "{err}");
    // Relabelled for B: B's key cannot unwrap A's content key.
    let relabelled = sealed.replace(a.machine_id().as_str(), b.machine_id().as_str());
    assert!(matches!(unseal(b, &relabelled), Err(SealError::Undecryptable)));
}

#[test]
fn a_sealed_blob_does_not_contain_the_plaintext_and_detects_tampering() {
    let a = machine_a();
    let password = "PLAINTEXT-PASSWORD-1234";
    let sealed = seal(a.public(), password).unwrap();
    assert!(!sealed.contains(password));
    let b64 = sealed.rsplit(':').next().unwrap();
    let blob = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(b64).unwrap();
    assert!(!blob.windows(password.len()).any(|w| w == password.as_bytes()));

    let mut tampered = blob.clone();
    *tampered.last_mut().unwrap() ^= 1;
    let text = format!(
        "sealed:v1:{}:{}",
        a.machine_id(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&tampered)
    );
    assert!(matches!(unseal(a, &text), Err(SealError::Undecryptable)));

    for bad in
        ["hunter2", "sealed:v1:", "sealed:v1:nothex:AAAA", &format!("sealed:v1:{}:AAAA", a.machine_id())]
    {
        assert!(matches!(unseal(a, bad), Err(SealError::Malformed(_))), "{bad}");
    }
}

#[test]
fn a_secret_never_prints() {
    let s = Secret::new("topsecret");
    assert_eq!(format!("{s}"), "***");
    assert_eq!(format!("{s:?}"), "***");
    assert_eq!(format!("{:?}", Some(s.clone())), "Some(***)");
    assert_eq!(s.expose(), "topsecret");
}

// ---- enrollment tokens ----

#[test]
fn a_token_round_trips_and_only_its_hash_is_needed() {
    let expires = t0() + secs(3600);
    let token = EnrollmentToken::generate("plant-7", cloud().machine_id().clone(), expires).unwrap();
    let text = token.encode();
    assert!(text.starts_with("OPT1.plant-7."), "{text}");
    assert!(text.ends_with(&format!(".{}.{}", cloud().machine_id(), expires.timestamp())));
    let parsed = EnrollmentToken::parse_at(&format!("  {text}\n"), t0()).unwrap();
    assert_eq!(parsed, token);
    assert_eq!(parsed.cloud_key, *cloud().machine_id());

    let stored = token.secret_hash();
    assert_eq!(stored.len(), 64);
    assert!(!stored.contains(text.split('.').nth(2).unwrap()));
    assert!(token_secret_matches(&stored, &parsed));
    let other = EnrollmentToken::generate("plant-7", cloud().machine_id().clone(), expires).unwrap();
    assert!(!token_secret_matches(&stored, &other));
    assert!(!format!("{parsed:?}").contains(text.split('.').nth(2).unwrap()), "Debug hides the secret");
}

#[test]
fn bad_tokens_get_clear_errors() {
    let token = EnrollmentToken::generate("plant-7", cloud().machine_id().clone(), t0()).unwrap();
    let text = token.encode();
    let err = EnrollmentToken::parse_at(&text, t0()).unwrap_err();
    assert_eq!(err, TokenError::Expired(t0()));
    assert!(err.to_string().starts_with("token expired at 2030-"), "{err}");

    let fields: Vec<&str> = text.split('.').collect();
    let with = |i: usize, v: &str| {
        let mut f = fields.clone();
        f[i] = v;
        EnrollmentToken::parse_at(&f.join("."), t0() - secs(10)).unwrap_err().to_string()
    };
    assert!(EnrollmentToken::parse_at(&text, t0() - secs(1)).is_ok());
    let few = EnrollmentToken::parse_at("OPT1.plant-7.abc", t0()).unwrap_err().to_string();
    assert!(few.starts_with("malformed token: expected 5 fields"), "{few}");
    assert!(with(0, "OPT2").contains("unknown version"));
    assert!(with(1, "plant 7").contains("network id"));
    assert!(with(2, "c2hvcnQ").contains("secret"));
    assert!(with(3, "xyz").contains("cloud key fingerprint"));
    assert!(with(4, "tomorrow").contains("expiry"));
    assert!(EnrollmentToken::generate("bad.id", cloud().machine_id().clone(), t0()).is_err());
}

// ---- certificate pinning ----

#[test]
fn cert_fingerprints_parse_in_common_spellings() {
    let fp = CertFingerprint::of_der(b"certificate");
    let text = fp.to_string();
    assert_eq!(text.len(), 64);
    assert_eq!(CertFingerprint::parse(&text.to_uppercase()).unwrap(), fp);
    let colons =
        text.as_bytes().chunks(2).map(|c| std::str::from_utf8(c).unwrap()).collect::<Vec<_>>().join(":");
    assert_eq!(CertFingerprint::parse(&colons).unwrap(), fp);
    assert!(CertFingerprint::parse("abcd").is_err());
    let json = serde_json::to_string(&fp).unwrap();
    assert_eq!(serde_json::from_str::<CertFingerprint>(&json).unwrap(), fp);
}

mod tls_pinning {
    use super::super::*;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Cert {
        der: CertificateDer<'static>,
        key: PrivateKeyDer<'static>,
    }

    fn make_cert() -> Cert {
        let made = rcgen::generate_simple_self_signed(vec!["connector.local".to_string()]).unwrap();
        Cert {
            der: made.cert.der().clone(),
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.key_pair.serialize_der())),
        }
    }

    /// Presents `chain` and signs the handshake with `key`, even if they do not belong together
    /// (rustls' own `with_single_cert` would refuse such a pair up front).
    #[derive(Debug)]
    struct Fixed(Arc<rustls::sign::CertifiedKey>);

    impl rustls::server::ResolvesServerCert for Fixed {
        fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
            Some(self.0.clone())
        }
    }

    /// Serves one TLS connection on 127.0.0.1 that says hello, and connects to it with a client
    /// pinned to `pin`. Returns what the client read, or the handshake error.
    async fn handshake(
        cert: &CertificateDer<'static>,
        key: &PrivateKeyDer<'static>,
        pin: CertFingerprint,
    ) -> Result<String, std::io::Error> {
        crate::install_crypto_provider();
        let provider = rustls::crypto::ring::default_provider();
        let signing_key = provider.key_provider.load_private_key(key.clone_key()).unwrap();
        let certified = rustls::sign::CertifiedKey::new(vec![cert.clone()], signing_key);
        let server_cfg = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Fixed(Arc::new(certified))));
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            if let Ok(mut tls) = acceptor.accept(tcp).await {
                let _ = tls.write_all(b"hello").await;
                let _ = tls.shutdown().await;
            }
        });
        let connector = tokio_rustls::TlsConnector::from(pinned_client_config(pin));
        let client = async {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let name = ServerName::try_from("connector.local").unwrap();
            let mut tls = connector.connect(name, tcp).await?;
            let mut got = String::new();
            tls.read_to_string(&mut got).await?;
            Ok(got)
        };
        let result =
            tokio::time::timeout(std::time::Duration::from_secs(20), client).await.expect("handshake hung");
        tokio::time::timeout(std::time::Duration::from_secs(20), server).await.expect("server hung").unwrap();
        result
    }

    #[tokio::test]
    async fn only_the_pinned_certificate_is_accepted() {
        let (one, two) = (make_cert(), make_cert());
        let pin_one = CertFingerprint::of_der(&one.der);

        assert_eq!(handshake(&one.der, &one.key, pin_one).await.unwrap(), "hello");

        let err = handshake(&two.der, &two.key, pin_one).await.unwrap_err();
        assert!(err.to_string().contains("is not the pinned"), "{err}");
        assert!(err.to_string().contains(&pin_one.to_string()), "{err}");

        // The pinned certificate copied without its private key: the handshake signature fails.
        let err = handshake(&one.der, &two.key, pin_one).await.unwrap_err();
        assert!(err.to_string().contains("BadSignature"), "{err}");
    }
}

fn sealed_for(machine: &KeyPair, role: crate::model::Role, lan_cert: Option<&str>) -> SealedEnrollment {
    SealedEnrollment {
        token: String::new(),
        machine_id: machine.machine_id().clone(),
        role,
        hostname: "pump-3".into(),
        lan_cert: lan_cert.map(str::to_string),
    }
}

#[test]
fn a_sealed_token_opens_only_for_the_cloud_and_only_for_the_machine_that_sealed_it() {
    let token = EnrollmentToken::generate("plant", cloud().machine_id().clone(), t0() + secs(3600)).unwrap();
    let inner = sealed_for(machine_a(), crate::model::Role::Sensorhub, None);
    let sealed = seal_token(cloud().public(), &token, &inner).unwrap();
    assert!(!sealed.contains(&token.encode()), "the connector on the way sees ciphertext");
    let opened = unseal_token(cloud(), &sealed, machine_a().machine_id()).unwrap();
    assert_eq!(opened.token, token.encode());
    // Everything the cloud records travels inside the seal, out of a relay's reach.
    assert_eq!(
        (opened.role, opened.hostname.as_str(), opened.lan_cert),
        (crate::model::Role::Sensorhub, "pump-3", None)
    );
    // Copied into a request for another key: refused.
    let e = unseal_token(cloud(), &sealed, machine_b().machine_id()).unwrap_err();
    assert!(e.to_string().contains("another machine key"), "{e}");
    // Sealing to a key the token does not name (a rogue connector's "cloud key") is refused.
    assert!(seal_token(machine_b().public(), &token, &inner).is_err());
    assert!(unseal_token(machine_b(), &sealed, machine_a().machine_id()).is_err());
}

// ---- sessions ----

mod sessions {
    use super::super::session::*;
    use super::*;

    const NOW: i64 = 1_900_000_000;
    const LIFE: Duration = Duration::from_secs(3600);

    /// A session of machine A with the cloud: (ticket keys, answer, opened ticket, the machine's key).
    fn opened() -> (TicketKeys, OpenAnswer, Ticket, SessionKey) {
        let tk = TicketKeys::derive(cloud());
        let challenge = tk.challenge(NOW).unwrap();
        let (req, session) = open_request(machine_a(), cloud().public(), &challenge).unwrap();
        let (answer, ticket) = accept_open(cloud(), &tk, &req, machine_a().public(), NOW, LIFE).unwrap();
        assert!(check_opened(&session, &answer));
        (tk, answer, ticket, session)
    }

    #[test]
    fn a_session_opens_and_a_mac_checks_against_its_ticket() {
        let (tk, answer, _, session) = opened();
        let ticket = tk.open(&answer.ticket, NOW + 10).unwrap();
        assert_eq!(&ticket.machine_id, machine_a().machine_id());
        assert_eq!(ticket.expires_at, NOW + 3600);
        let h = mac_request(
            &session,
            machine_a().machine_id(),
            &answer.ticket,
            1,
            "POST",
            "/v1/batches",
            b"{}",
            NOW + 10,
        );
        verify_mac(&ticket, &h, "POST", "/v1/batches", b"{}", NOW + 10, DEFAULT_MAX_SKEW).unwrap();
        // The same derivation on another node gives the same keys (stateless, load balancer).
        assert!(TicketKeys::derive(cloud()).open(&answer.ticket, NOW).is_ok());
        assert!(TicketKeys::derive(cloud()).check_challenge(&tk.challenge(NOW).unwrap(), NOW + 59).is_ok());
    }

    #[test]
    fn a_tampered_request_is_refused_whatever_field_changed() {
        let (tk, answer, _, session) = opened();
        let ticket = tk.open(&answer.ticket, NOW).unwrap();
        let h = mac_request(
            &session,
            machine_a().machine_id(),
            &answer.ticket,
            5,
            "POST",
            "/v1/batches",
            b"{\"a\":1}",
            NOW,
        );
        let ok = |h: &SessionHeaders, m: &str, p: &str, b: &[u8]| {
            verify_mac(&ticket, h, m, p, b, NOW, DEFAULT_MAX_SKEW)
        };
        assert!(ok(&h, "POST", "/v1/batches", b"{\"a\":1}").is_ok());
        assert_eq!(ok(&h, "POST", "/v1/batches", b"{\"a\":2}"), Err(SessionError::BadMac), "body");
        assert_eq!(ok(&h, "GET", "/v1/batches", b"{\"a\":1}"), Err(SessionError::BadMac), "method");
        assert_eq!(ok(&h, "POST", "/v1/forward", b"{\"a\":1}"), Err(SessionError::BadMac), "path");
        let mut seq = h.clone();
        seq.seq = 6;
        assert_eq!(ok(&seq, "POST", "/v1/batches", b"{\"a\":1}"), Err(SessionError::BadMac), "seq");
        let mut ts = h.clone();
        ts.timestamp += 1;
        assert_eq!(ok(&ts, "POST", "/v1/batches", b"{\"a\":1}"), Err(SessionError::BadMac), "timestamp");
        let mut mac = h.clone();
        mac.mac_b64 = B64.encode([0u8; 32]);
        assert_eq!(ok(&mac, "POST", "/v1/batches", b"{\"a\":1}"), Err(SessionError::BadMac), "mac");
        // A MAC made with another session key (another session of the same machine).
        let other = SessionKey::generate().unwrap();
        let h2 = mac_request(
            &other,
            machine_a().machine_id(),
            &answer.ticket,
            5,
            "POST",
            "/v1/batches",
            b"{\"a\":1}",
            NOW,
        );
        assert_eq!(ok(&h2, "POST", "/v1/batches", b"{\"a\":1}"), Err(SessionError::BadMac), "wrong key");
        // Old or future timestamps are refused before the MAC.
        let late =
            mac_request(&session, machine_a().machine_id(), &answer.ticket, 7, "GET", "/x", b"", NOW - 301);
        assert!(matches!(ok(&late, "GET", "/x", b""), Err(SessionError::Stale { .. })));
    }

    const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

    #[test]
    fn tickets_expire_and_only_their_own_cloud_opens_them() {
        let (tk, answer, _, _) = opened();
        assert_eq!(tk.open(&answer.ticket, NOW + 3600).unwrap_err(), SessionError::Expired(NOW + 3600));
        assert!(SessionError::Expired(0).is_reopen());
        // Another cloud key: the ticket means nothing there.
        let other = TicketKeys::derive(machine_b());
        assert_eq!(other.open(&answer.ticket, NOW).unwrap_err(), SessionError::UnknownTicket);
        // Any byte of the ticket changed: refused (authenticated encryption).
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&answer.ticket).unwrap();
        for i in [0, 1, 14, 40, raw.len() - 1] {
            let mut t = raw.clone();
            t[i] ^= 1;
            let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&t);
            assert_eq!(tk.open(&text, NOW).unwrap_err(), SessionError::UnknownTicket, "byte {i}");
        }
        assert_eq!(tk.open("not a ticket", NOW).unwrap_err(), SessionError::UnknownTicket);
        assert!(SessionError::UnknownTicket.is_reopen());
        assert!(!SessionError::BadMac.is_reopen());
    }

    #[test]
    fn challenges_are_the_clouds_own_and_live_sixty_seconds() {
        let tk = TicketKeys::derive(cloud());
        let c = tk.challenge(NOW).unwrap();
        assert!(tk.check_challenge(&c, NOW + 60).is_ok());
        assert_eq!(tk.check_challenge(&c, NOW + 61), Err(SessionError::BadChallenge), "too old");
        assert_eq!(tk.check_challenge(&c, NOW - 30), Err(SessionError::BadChallenge), "from the future");
        assert_eq!(TicketKeys::derive(machine_b()).check_challenge(&c, NOW), Err(SessionError::BadChallenge));
        // Forging the time inside the challenge breaks its MAC.
        let mut raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&c).unwrap();
        raw[23] ^= 1;
        let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw);
        assert_eq!(tk.check_challenge(&forged, NOW), Err(SessionError::BadChallenge));
    }

    #[test]
    fn opening_needs_the_machine_key_a_fresh_challenge_and_an_intact_seal() {
        let tk = TicketKeys::derive(cloud());
        let c = tk.challenge(NOW).unwrap();
        let (req, _) = open_request(machine_a(), cloud().public(), &c).unwrap();
        // Claimed by A, checked against B's key: refused.
        assert_eq!(
            accept_open(cloud(), &tk, &req, machine_b().public(), NOW, LIFE).unwrap_err(),
            SessionError::BadSignature
        );
        // Signed by B but claiming A.
        let (mut by_b, _) = open_request(machine_b(), cloud().public(), &c).unwrap();
        by_b.machine_id = machine_a().machine_id().to_string();
        assert_eq!(
            accept_open(cloud(), &tk, &by_b, machine_a().public(), NOW, LIFE).unwrap_err(),
            SessionError::BadSignature
        );
        // Any field altered on the way.
        let mut sealed = req.clone();
        let (other, _) = open_request(machine_a(), cloud().public(), &c).unwrap();
        sealed.sealed = other.sealed;
        assert_eq!(
            accept_open(cloud(), &tk, &sealed, machine_a().public(), NOW, LIFE).unwrap_err(),
            SessionError::BadSignature
        );
        let mut challenge = req.clone();
        challenge.challenge = tk.challenge(NOW).unwrap();
        assert_eq!(
            accept_open(cloud(), &tk, &challenge, machine_a().public(), NOW, LIFE).unwrap_err(),
            SessionError::BadSignature
        );
        // A stale challenge, however well signed.
        assert_eq!(
            accept_open(cloud(), &tk, &req, machine_a().public(), NOW + 61, LIFE).unwrap_err(),
            SessionError::BadChallenge
        );
        // Sealed to another cloud's key: that cloud cannot open it.
        let (to_b, _) = open_request(machine_a(), machine_b().public(), &c).unwrap();
        assert_eq!(
            accept_open(cloud(), &tk, &to_b, machine_a().public(), NOW, LIFE).unwrap_err(),
            SessionError::Undecryptable
        );
        // An answer not made with the session key is not believed by the machine.
        let (req, session) = open_request(machine_a(), cloud().public(), &c).unwrap();
        let (mut answer, _) = accept_open(cloud(), &tk, &req, machine_a().public(), NOW, LIFE).unwrap();
        assert!(check_opened(&session, &answer));
        answer.lifetime_secs += 1;
        assert!(!check_opened(&session, &answer));
    }

    /// The cloud's command key and the Ed25519 public key its certificate names.
    fn exchange_key() -> (super::super::command_key::CommandKeyPair, [u8; 32]) {
        let pair = super::super::command_key::CommandKeyPair::derive(cloud()).unwrap();
        let public = B64.decode(pair.certificate().verify(cloud().public()).unwrap().ed25519).unwrap();
        (pair, public.try_into().unwrap())
    }

    #[test]
    fn an_x25519_login_gives_both_sides_the_same_key_and_no_one_else() {
        let tk = TicketKeys::derive(cloud());
        let (pair, public) = exchange_key();
        let c = tk.challenge(NOW).unwrap();
        let (req, pending) = open_request_x25519(machine_a(), &c).unwrap();
        assert!(req.sealed.is_empty(), "nothing sealed to the cloud's RSA key");
        let (answer, ticket) = accept_open_x25519(&pair, &tk, &req, machine_a().public(), NOW, LIFE).unwrap();
        let key = finish_open_x25519(pending, &answer, &public).unwrap();
        // The machine's key is the one in the ticket: an answer MAC made with one checks with the other.
        let mac = answer_mac(&ticket.key, 1, 200, b"{}");
        assert!(check_answer(&key, 1, 200, b"{}", Some(&mac)));
        assert_eq!(&tk.open(&answer.ticket, NOW).unwrap().machine_id, machine_a().machine_id());
        // Two logins never share a key (both halves are fresh).
        let (req2, pending2) = open_request_x25519(machine_a(), &c).unwrap();
        let (answer2, _) = accept_open_x25519(&pair, &tk, &req2, machine_a().public(), NOW, LIFE).unwrap();
        let key2 = finish_open_x25519(pending2, &answer2, &public).unwrap();
        assert!(!check_answer(&key2, 1, 200, b"{}", Some(&mac)));
    }

    #[test]
    fn an_x25519_login_is_refused_when_anything_in_it_is_not_what_was_signed() {
        let tk = TicketKeys::derive(cloud());
        let (pair, _) = exchange_key();
        let c = tk.challenge(NOW).unwrap();
        let (req, _) = open_request_x25519(machine_a(), &c).unwrap();
        let accept = |r: &OpenRequest, by: &KeyPair, now: i64| {
            accept_open_x25519(&pair, &tk, r, by.public(), now, LIFE).map(|_| ()).unwrap_err()
        };
        assert_eq!(accept(&req, machine_b(), NOW), SessionError::BadSignature, "checked against B's key");
        assert_eq!(accept(&req, machine_a(), NOW + 61), SessionError::BadChallenge, "stale challenge");
        let (other, _) = open_request_x25519(machine_a(), &c).unwrap();
        let swapped = OpenRequest { x25519: other.x25519.clone(), ..req.clone() };
        assert_eq!(accept(&swapped, machine_a(), NOW), SessionError::BadSignature, "another key half");
        let (by_b, _) = open_request_x25519(machine_b(), &c).unwrap();
        let claimed = OpenRequest { machine_id: machine_a().machine_id().to_string(), ..by_b };
        assert_eq!(accept(&claimed, machine_a(), NOW), SessionError::BadSignature, "B claiming A");
        let (sealed, _) = open_request(machine_a(), cloud().public(), &c).unwrap();
        let both = OpenRequest { sealed: sealed.sealed, ..req.clone() };
        assert!(matches!(accept(&both, machine_a(), NOW), SessionError::Malformed(_)), "both kinds at once");
        for bad in ["AAAA", "not base64!", &"A".repeat(100)] {
            let signature = sign_open_x25519(machine_a(), &c, bad).unwrap();
            let r = OpenRequest { x25519: Some(bad.to_string()), signature, ..req.clone() };
            assert!(matches!(accept(&r, machine_a(), NOW), SessionError::Malformed(_)), "{bad}");
        }
        // A low-order point, signed by the machine itself: the shared secret would be all zeros,
        // known to anyone. Refused.
        let zero = B64.encode([0u8; 32]);
        let signature = sign_open_x25519(machine_a(), &c, &zero).unwrap();
        let r = OpenRequest { x25519: Some(zero), signature, ..req.clone() };
        assert_eq!(accept(&r, machine_a(), NOW), SessionError::Undecryptable);
    }

    #[test]
    fn a_machine_believes_only_the_cloud_it_pinned_and_only_for_this_login() {
        let tk = TicketKeys::derive(cloud());
        let (pair, public) = exchange_key();
        let c = tk.challenge(NOW).unwrap();
        let login = || open_request_x25519(machine_a(), &c).unwrap();
        let finish = |p, answer: &OpenAnswer| finish_open_x25519(p, answer, &public);
        // Someone without the cloud key answers in its place (a man in the middle, a fake cloud):
        // it can do its half of the exchange and MAC the answer, but not sign as the cloud.
        let (req, p) = login();
        let impostor = super::super::command_key::CommandKeyPair::derive(machine_b()).unwrap();
        let (fake, _) = accept_open_x25519(&impostor, &tk, &req, machine_a().public(), NOW, LIFE).unwrap();
        assert_eq!(finish(p, &fake).unwrap_err(), SessionError::BadSignature);
        // The cloud's real answer to another login of the same machine.
        let (req, _) = login();
        let (other, _) = accept_open_x25519(&pair, &tk, &req, machine_a().public(), NOW, LIFE).unwrap();
        let (_, p) = login();
        assert_eq!(finish(p, &other).unwrap_err(), SessionError::BadSignature);
        // No exchange at all (an answer to an RSA-OAEP login).
        let (req, p) = login();
        let (answer, _) = accept_open_x25519(&pair, &tk, &req, machine_a().public(), NOW, LIFE).unwrap();
        let bare = OpenAnswer { x25519: None, exchange_signature: None, ..answer.clone() };
        assert!(matches!(finish(p, &bare).unwrap_err(), SessionError::Malformed(_)));
        // The ticket's lifetime altered on the way: the MAC under the derived key fails.
        let (req, p) = login();
        let (answer, _) = accept_open_x25519(&pair, &tk, &req, machine_a().public(), NOW, LIFE).unwrap();
        let altered = OpenAnswer { lifetime_secs: answer.lifetime_secs + 1, ..answer.clone() };
        assert_eq!(finish(p, &altered).unwrap_err(), SessionError::BadSignature);
    }

    #[test]
    fn a_machine_that_saw_the_x25519_offer_does_not_take_a_login_without_it() {
        let client = super::super::session_client::SessionClient::new(
            std::sync::Arc::new(machine_a().clone()),
            cloud().public().clone(),
        );
        // A cloud of an earlier version, first: the RSA-OAEP login.
        assert_eq!(client.exchange_key(None), Ok(None));
        let (pair, public) = exchange_key();
        assert_eq!(client.exchange_key(Some(pair.certificate())), Ok(Some(public)));
        // Now an answer without the offer is taken as stripped on the way: no RSA-OAEP login.
        assert!(client.exchange_key(None).unwrap_err().contains("offers none"));
        // A certificate by another key than the pinned cloud key is refused.
        let other = super::super::command_key::CommandKeyPair::derive(machine_b()).unwrap();
        assert!(client.exchange_key(Some(other.certificate())).unwrap_err().contains("not certified"));
    }

    #[test]
    fn answers_are_bound_to_sequence_status_and_body() {
        let (_, _, ticket, session) = opened();
        assert_eq!(format!("{:?}", session), "SessionKey(hidden)");
        let mac = answer_mac(&ticket.key, 9, 200, b"{\"stored\":3}");
        assert!(check_answer(&session, 9, 200, b"{\"stored\":3}", Some(&mac)));
        assert!(!check_answer(&session, 8, 200, b"{\"stored\":3}", Some(&mac)), "another request's answer");
        assert!(!check_answer(&session, 9, 201, b"{\"stored\":3}", Some(&mac)));
        assert!(!check_answer(&session, 9, 200, b"{\"stored\":0}", Some(&mac)));
        assert!(!check_answer(&session, 9, 200, b"{\"stored\":3}", None), "no MAC: not acknowledged");
        assert!(!check_answer(&SessionKey::generate().unwrap(), 9, 200, b"{\"stored\":3}", Some(&mac)));
    }

    #[test]
    fn the_replay_window_takes_each_sequence_number_once() {
        let mut w = ReplayWindow::default();
        assert!(!w.take(0), "sequence numbers start at 1");
        assert!(w.take(1));
        assert!(!w.take(1), "replayed");
        assert!(w.take(3));
        assert!(w.take(2), "reordered within the window: taken once");
        assert!(!w.take(2));
        assert!(w.take(100));
        assert!(w.take(100 - 63), "oldest inside the window");
        assert!(!w.take(100 - 64), "just outside the window");
        assert!(!w.take(3), "far outside");
        assert!(!w.take(100));
        assert!(w.take(1000), "a jump forward clears the window");
        assert!(!w.take(999 - 63), "outside after the jump");
        assert!(w.take(999));
        assert_eq!(w.highest(), 1000);
    }
}
