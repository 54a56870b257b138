//! The hub's identity and its trust in the cloud: its own key pair (machine id = fingerprint of
//! the public key), and the enrollment receipt the cloud signed for it. The receipt names the
//! cloud key (checked against the fingerprint in the enrollment token) and the connectors the
//! hub may send to, with the fingerprints of their LAN certificates.

use outpost_shared::keys::{EnrollmentReceipt, EnrollmentToken, KeyPair, PublicKey, Signed};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The machine key in the data directory, unless `key_file` says otherwise.
pub const KEY_FILE: &str = "machine.key";
/// Where the receipt and the cloud key are kept after enrollment.
pub const ENROLLMENT_FILE: &str = "enrollment.json";
/// Where an installer leaves the one-time token for the first start.
pub const TOKEN_FILE: &str = "enroll-token";

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("machine key {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("not enrolled and no enrollment token: put one in {0} or set uplink.enroll_token")]
    NoToken(PathBuf),
    #[error("enrollment token: {0}")]
    Token(String),
    #[error("enrollment failed: {0}")]
    Enroll(String),
    #[error("sensor `{sensor}`: cannot unseal its password ({message}); seal it again for this machine (`outpost secret seal`)")]
    Unseal { sensor: String, message: String },
    #[error("enrollment record {path} is damaged ({message}); delete it and enroll again with a new token")]
    Damaged { path: PathBuf, message: String },
}

/// What a hub knows after enrollment.
#[derive(Debug, Clone)]
pub struct Enrollment {
    pub receipt: EnrollmentReceipt,
    pub cloud_key: PublicKey,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    receipt: Signed<EnrollmentReceipt>,
    cloud_key: String,
}

/// The cloud's answer to `POST /v1/enroll` and `POST /v1/receipt`.
#[derive(serde::Deserialize)]
struct Answer {
    receipt: Signed<EnrollmentReceipt>,
    cloud_key: String,
}

/// Loads the machine key, or makes one (RSA 3072, private key file 0600).
pub fn machine_key(path: &Path) -> Result<Arc<KeyPair>, TrustError> {
    let (key, created) = KeyPair::load_or_create(path)
        .map_err(|e| TrustError::Key { path: path.to_path_buf(), message: e.to_string() })?;
    if created {
        tracing::info!(machine_id = %key.machine_id(), path = %path.display(), "machine key made");
    }
    Ok(Arc::new(key))
}

/// The stored enrollment, verified again on every load.
pub fn load(dir: &Path, key: &KeyPair) -> Result<Option<Enrollment>, TrustError> {
    let path = dir.join(ENROLLMENT_FILE);
    let Ok(bytes) = std::fs::read(&path) else { return Ok(None) };
    let damaged = |message: String| TrustError::Damaged { path: path.clone(), message };
    let stored: Stored = serde_json::from_slice(&bytes).map_err(|e| damaged(e.to_string()))?;
    let cloud_key = PublicKey::from_pem(&stored.cloud_key).map_err(|e| damaged(e.to_string()))?;
    let receipt = stored.receipt.verify(&cloud_key).map_err(|e| damaged(e.to_string()))?;
    if &receipt.machine_id != key.machine_id() {
        return Err(damaged("the receipt is for another machine key".into()));
    }
    Ok(Some(Enrollment { receipt, cloud_key }))
}

/// Checks an answer from the cloud against the cloud key we expect, stores it, returns it. The
/// receipt must name this machine in `role`, and must not be older than the one already held: a
/// relay replaying an old receipt cannot bring back a connector the cloud has since revoked.
fn accept(
    dir: &Path,
    key: &KeyPair,
    answer: Answer,
    expected_cloud: &outpost_shared::keys::MachineId,
    role: outpost_shared::model::Role,
) -> Result<Enrollment, TrustError> {
    let cloud_key = PublicKey::from_pem(&answer.cloud_key)
        .and_then(|k| k.expect_fingerprint(expected_cloud))
        .map_err(|e| TrustError::Enroll(format!("the answer is not from the expected cloud: {e}")))?;
    let receipt =
        answer.receipt.verify(&cloud_key).map_err(|e| TrustError::Enroll(format!("receipt: {e}")))?;
    if &receipt.machine_id != key.machine_id() {
        return Err(TrustError::Enroll("the receipt names another machine".into()));
    }
    if receipt.role != Some(role) {
        return Err(TrustError::Enroll(format!(
            "the receipt enrolls this machine as {}, not as the {role} it is; ask the cloud's admin",
            receipt.role.map(|r| r.to_string()).unwrap_or_else(|| "no role".into())
        )));
    }
    if let Ok(Some(held)) = load(dir, key) {
        if held.cloud_key.machine_id() == cloud_key.machine_id() && receipt.issued_at < held.receipt.issued_at
        {
            return Err(TrustError::Enroll(format!(
                "the receipt was issued at {}, before the one held ({}): an old answer replayed; kept the newer one",
                receipt.issued_at, held.receipt.issued_at
            )));
        }
    }
    let stored = Stored { receipt: answer.receipt, cloud_key: answer.cloud_key };
    let path = dir.join(ENROLLMENT_FILE);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&stored).expect("serialises"))
        .and_then(|_| std::fs::rename(&tmp, &path))
        .map_err(|e| TrustError::Enroll(format!("cannot store the receipt in {}: {e}", path.display())))?;
    Ok(Enrollment { receipt, cloud_key })
}

/// Enrolls with the cloud at `base` using the one-time `token`.
// Every argument is a distinct fact of the enrollment request; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
pub async fn enroll(
    client: &reqwest::Client,
    base: &str,
    dir: &Path,
    key: &KeyPair,
    token: &str,
    role: outpost_shared::model::Role,
    hostname: &str,
    lan_cert: Option<String>,
) -> Result<Enrollment, TrustError> {
    let parsed = EnrollmentToken::parse(token.trim()).map_err(|e| TrustError::Token(e.to_string()))?;
    let body = serde_json::json!({
        "token": token.trim(), "public_key": key.public().to_pem(), "role": role,
        "hostname": hostname, "lan_cert": lan_cert,
    });
    send_enrollment(client, base, dir, key, &parsed, role, body).await
}

/// Enrolls through the connector at `base`, for a hub that reaches the cloud only through it. The
/// connector is not known yet (no receipt, so no pin), so the token goes sealed to the cloud key
/// the token names and bound to this machine's key; the receipt comes back signed by that cloud
/// key. A rogue connector learns nothing it could use and cannot forge the answer.
pub async fn enroll_through_connector(
    base: &str,
    timeout: std::time::Duration,
    dir: &Path,
    key: &KeyPair,
    token: &str,
    role: outpost_shared::model::Role,
    hostname: &str,
) -> Result<Enrollment, TrustError> {
    let parsed = EnrollmentToken::parse(token.trim()).map_err(|e| TrustError::Token(e.to_string()))?;
    let client = outpost_shared::keys::enrollment_https_client(timeout)
        .map_err(|e| TrustError::Enroll(e.to_string()))?;
    let base = base.trim_end_matches('/');
    #[derive(serde::Deserialize)]
    struct CloudKey {
        public_key: String,
    }
    let resp =
        client.get(format!("{base}/v1/cloud-key")).send().await.map_err(|e| {
            TrustError::Enroll(format!("connector {base}: {}", outpost_shared::error_chain(&e)))
        })?;
    let cloud: CloudKey =
        resp.json().await.map_err(|e| TrustError::Enroll(format!("connector {base}: no cloud key: {e}")))?;
    // A connector that offers its own key instead of the cloud's gets nothing sealed to it.
    let cloud_key = PublicKey::from_pem(&cloud.public_key)
        .and_then(|k| k.expect_fingerprint(&parsed.cloud_key))
        .map_err(|e| {
            TrustError::Enroll(format!("connector {base} offers a cloud key the token does not name: {e}"))
        })?;
    // Everything the cloud will record about this machine goes inside the seal, where the
    // connector on the way can neither read nor change it.
    let inner = outpost_shared::keys::SealedEnrollment {
        token: String::new(),
        machine_id: key.machine_id().clone(),
        role,
        hostname: hostname.to_string(),
        lan_cert: None,
    };
    let sealed = outpost_shared::keys::seal_token(&cloud_key, &parsed, &inner)
        .map_err(|e| TrustError::Enroll(e.to_string()))?;
    let body = serde_json::json!({
        "sealed_token": sealed, "public_key": key.public().to_pem(), "role": role, "hostname": hostname,
    });
    send_enrollment(&client, base, dir, key, &parsed, role, body).await
}

/// Posts an enrollment request and accepts the answer only if the cloud the token names signed it.
async fn send_enrollment(
    client: &reqwest::Client,
    base: &str,
    dir: &Path,
    key: &KeyPair,
    token: &EnrollmentToken,
    role: outpost_shared::model::Role,
    body: serde_json::Value,
) -> Result<Enrollment, TrustError> {
    let resp = client
        .post(format!("{}/v1/enroll", base.trim_end_matches('/')))
        .json(&body)
        .send()
        .await
        .map_err(|e| TrustError::Enroll(outpost_shared::error_chain(&e)))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let msg = resp.json::<outpost_shared::model::ApiError>().await.map(|e| e.error).unwrap_or_default();
        return Err(TrustError::Enroll(format!("{status}: {msg}")));
    }
    let answer: Answer = resp.json().await.map_err(|e| TrustError::Enroll(e.to_string()))?;
    let e = accept(dir, key, answer, &token.cloud_key, role)?;
    let _ = std::fs::remove_file(dir.join(TOKEN_FILE));
    tracing::info!(machine_id = %key.machine_id(), network = %e.receipt.network_id, via = %base, "enrolled");
    Ok(e)
}

/// Asks the cloud for a fresh receipt (the connectors authorised now), signed request.
pub async fn refresh(
    client: &reqwest::Client,
    base: &str,
    dir: &Path,
    key: &KeyPair,
    current: &Enrollment,
) -> Result<Enrollment, TrustError> {
    let path = "/v1/receipt";
    let sig = outpost_shared::keys::sign_request(key, "POST", path, b"", chrono::Utc::now())
        .map_err(|e| TrustError::Enroll(e.to_string()))?;
    let mut req = client.post(format!("{}{path}", base.trim_end_matches('/')));
    for (name, value) in sig.to_pairs() {
        req = req.header(name, value);
    }
    let resp = req.send().await.map_err(|e| TrustError::Enroll(outpost_shared::error_chain(&e)))?;
    if !resp.status().is_success() {
        return Err(TrustError::Enroll(format!("receipt refresh: {}", resp.status())));
    }
    let answer: Answer = resp.json().await.map_err(|e| TrustError::Enroll(e.to_string()))?;
    // Receipts from before roles were bound name none; such a machine enrolled as a sensorhub
    // or a connector, and the cloud now answers with the role it recorded.
    let role = current.receipt.role.unwrap_or(outpost_shared::model::Role::Sensorhub);
    accept(dir, key, answer, current.cloud_key.machine_id(), role)
}

/// The token for a first enrollment: from config, or the file an installer left.
pub fn token(cfg_token: Option<&str>, dir: &Path) -> Result<String, TrustError> {
    if let Some(t) = cfg_token {
        return Ok(t.to_string());
    }
    std::fs::read_to_string(dir.join(TOKEN_FILE))
        .map(|t| t.trim().to_string())
        .map_err(|_| TrustError::NoToken(dir.join(TOKEN_FILE)))
}

/// Replaces sealed sensor passwords by their plaintext, in memory only, just before the sensors
/// are built. Config files, the cloud and connectors only ever hold the sealed form.
pub fn unseal_sensor_secrets(
    sensors: &mut [crate::sensors::SensorConfig],
    key: &KeyPair,
) -> Result<(), TrustError> {
    for s in sensors {
        let Some(p) = &s.password else { continue };
        if !outpost_shared::keys::is_sealed(p.expose()) {
            continue;
        }
        let plain = outpost_shared::keys::unseal(key, p.expose())
            .map_err(|e| TrustError::Unseal { sensor: s.id(), message: e.to_string() })?;
        s.password = Some(crate::sensors::Secret::new(plain.expose()));
    }
    Ok(())
}
