//! Who may send what. The cloud holds a signing key (its fingerprint travels in every enrollment
//! token); machines enroll once with a one-time token and their public key, and from then on
//! every machine request is signed and checked against that enrolled key. A connector forwards a
//! hub's batch with the hub's own signature, so it cannot alter or invent a hub's readings.

use crate::error::CloudError;
use chrono::{DateTime, Utc};
use outpost_shared::keys::{
    verify_request, AuthorizedConnector, CertFingerprint, EnrollmentReceipt, EnrollmentToken, KeyPair,
    MachineId, PublicKey, Signed, SignedHeaders, VerifyError,
};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// How far a direct request's timestamp may be from the cloud's clock.
pub const MAX_SKEW: Duration = outpost_shared::keys::DEFAULT_MAX_SKEW;

/// An enrolled machine.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MachineKey {
    pub machine_id: String,
    pub public_key: String,
    pub network_id: String,
    pub role: outpost_shared::model::Role,
    pub hostname: String,
    pub enrolled_at: DateTime<Utc>,
    /// For connectors: the fingerprint of their LAN certificate, which hubs pin.
    #[serde(default)]
    pub lan_cert: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TokenRecord {
    network_id: String,
    expires_at: DateTime<Utc>,
    created_at: DateTime<Utc>,
    /// The machine that used it; a token enrolls one machine.
    used_by: Option<String>,
}

/// A withdrawn enrollment, kept so refusals can say what happened and when.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RevokedKey {
    key: MachineKey,
    revoked_at: DateTime<Utc>,
}

/// `POST /v1/enroll` body: the token in the clear (straight to the cloud over verified TLS), or
/// sealed to the cloud key and bound to `public_key` (through a connector, which must not see it).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_token: Option<String>,
    /// PEM (SPKI) of the machine's public key.
    pub public_key: String,
    pub role: outpost_shared::model::Role,
    pub hostname: String,
    #[serde(default)]
    pub lan_cert: Option<String>,
}

/// `POST /v1/enroll` answer: the signed receipt and the key that signed it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollResponse {
    pub receipt: Signed<EnrollmentReceipt>,
    pub cloud_key: String,
}

/// Why a machine request is refused: each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("request is not signed ({0}); machines sign every request with their key")]
    Unsigned(VerifyError),
    #[error("machine {0} is not enrolled; enroll it with a token from the dashboard")]
    NotEnrolled(String),
    #[error("machine {0} was revoked at {1}; a new token enrolls it again if that was a mistake")]
    Revoked(String, DateTime<Utc>),
    #[error("signature check failed: {0}")]
    Bad(VerifyError),
    #[error("enrollment refused: {0}")]
    Enroll(String),
}

#[derive(Clone)]
pub struct Trust {
    key: Arc<KeyPair>,
    keys: sled::Tree,
    tokens: sled::Tree,
    revoked: sled::Tree,
}

impl Trust {
    pub fn open(dir: &Path, db: &sled::Db) -> Result<Trust, CloudError> {
        let path = dir.join("cloud.key");
        let (key, created) = KeyPair::load_or_create(&path).map_err(|e| CloudError::Keys(e.to_string()))?;
        if created {
            tracing::info!(fingerprint = %key.machine_id(), "cloud signing key made");
        }
        Ok(Trust {
            key: Arc::new(key),
            keys: db.open_tree("machine_keys")?,
            tokens: db.open_tree("enrollment_tokens")?,
            revoked: db.open_tree("revoked_keys")?,
        })
    }

    pub fn key(&self) -> &KeyPair {
        &self.key
    }

    /// A one-time token for one machine of `network`, valid for `ttl`.
    pub fn new_token(
        &self,
        network: &str,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> Result<EnrollmentToken, CloudError> {
        let expires = now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::days(1));
        let token = EnrollmentToken::generate(network, self.key.machine_id().clone(), expires)
            .map_err(|e| CloudError::Keys(e.to_string()))?;
        let rec = TokenRecord {
            network_id: network.into(),
            expires_at: token.expires_at,
            created_at: now,
            used_by: None,
        };
        self.tokens.insert(token.secret_hash(), serde_json::to_vec(&rec).expect("serialises"))?;
        Ok(token)
    }

    /// Enrolls a machine: checks the token (known, unexpired, unused or used by this same key),
    /// records the key and answers with a receipt signed by the cloud key.
    pub fn enroll(&self, req: &EnrollRequest, now: DateTime<Utc>) -> Result<EnrollResponse, Refusal> {
        let public = PublicKey::from_pem(&req.public_key)
            .map_err(|e| Refusal::Enroll(format!("bad public key: {e}")))?;
        let text = match (&req.token, &req.sealed_token) {
            (Some(t), None) => t.trim().to_string(),
            (None, Some(sealed)) => {
                outpost_shared::keys::unseal_token(&self.key, sealed, public.machine_id())
                    .map_err(|e| Refusal::Enroll(e.to_string()))?
            }
            _ => return Err(Refusal::Enroll("give either `token` or `sealed_token`".into())),
        };
        let token = EnrollmentToken::parse_at(&text, now).map_err(|e| Refusal::Enroll(e.to_string()))?;
        if &token.cloud_key != self.key.machine_id() {
            return Err(Refusal::Enroll("the token was made by another cloud".into()));
        }
        let id = public.machine_id().to_string();
        let hash = token.secret_hash();
        let stored = self.tokens.get(&hash).map_err(|e| Refusal::Enroll(e.to_string()))?;
        let mut rec: TokenRecord = match stored.and_then(|v| serde_json::from_slice(&v).ok()) {
            Some(r) => r,
            None => return Err(Refusal::Enroll("unknown token; make a new one on the dashboard".into())),
        };
        // Looked up by the hash of its secret: the cloud never stores a token in the clear.
        match &rec.used_by {
            Some(other) if other != &id => {
                return Err(Refusal::Enroll(
                    "this token was already used by another machine; tokens are one-time".into(),
                ))
            }
            _ => {}
        }
        if let Some(lan) = &req.lan_cert {
            CertFingerprint::parse(lan)
                .map_err(|e| Refusal::Enroll(format!("bad LAN certificate fingerprint: {e}")))?;
        }
        rec.used_by = Some(id.clone());
        let mk = MachineKey {
            machine_id: id.clone(),
            public_key: public.to_pem(),
            network_id: rec.network_id.clone(),
            role: req.role,
            hostname: req.hostname.clone(),
            enrolled_at: now,
            lan_cert: req.lan_cert.clone(),
        };
        let put = || -> Result<(), sled::Error> {
            self.tokens.insert(&hash, serde_json::to_vec(&rec).expect("serialises"))?;
            self.keys.insert(id.as_bytes(), serde_json::to_vec(&mk).expect("serialises"))?;
            // A fresh token is the operator's decision to take a revoked machine back.
            self.revoked.remove(id.as_bytes())?;
            self.keys.flush()?;
            Ok(())
        };
        put().map_err(|e| Refusal::Enroll(e.to_string()))?;
        tracing::info!(machine = %id, network = %mk.network_id, role = %mk.role, "machine enrolled");
        self.receipt(&mk, now).map_err(|e| Refusal::Enroll(e.to_string()))
    }

    /// A fresh receipt for an enrolled machine: the connectors now authorised in its network.
    pub fn receipt(&self, mk: &MachineKey, now: DateTime<Utc>) -> Result<EnrollResponse, CloudError> {
        let mut connectors = Vec::new();
        for item in self.keys.iter() {
            let (_, v) = item?;
            let Ok(k) = serde_json::from_slice::<MachineKey>(&v) else { continue };
            if k.network_id == mk.network_id && k.role == outpost_shared::model::Role::Connector {
                if let (Ok(id), Some(Ok(fp))) =
                    (MachineId::parse(&k.machine_id), k.lan_cert.as_deref().map(CertFingerprint::parse))
                {
                    connectors.push(AuthorizedConnector { machine_id: id, lan_cert: fp });
                }
            }
        }
        let receipt = EnrollmentReceipt {
            machine_id: MachineId::parse(&mk.machine_id).map_err(|e| CloudError::Keys(e.to_string()))?,
            network_id: mk.network_id.clone(),
            connectors,
            cloud_key: self.key.machine_id().clone(),
            issued_at: now,
        };
        let signed = Signed::sign(&self.key, &receipt).map_err(|e| CloudError::Keys(e.to_string()))?;
        Ok(EnrollResponse { receipt: signed, cloud_key: self.key.public().to_pem() })
    }

    pub fn machine_key(&self, id: &str) -> Result<Option<MachineKey>, CloudError> {
        Ok(match self.keys.get(id.as_bytes())? {
            Some(v) => serde_json::from_slice(&v).ok(),
            None => None,
        })
    }

    /// Every enrolled machine, by network.
    pub fn networks(&self) -> Result<std::collections::BTreeMap<String, Vec<MachineKey>>, CloudError> {
        let mut out: std::collections::BTreeMap<String, Vec<MachineKey>> = Default::default();
        for item in self.keys.iter() {
            let (_, v) = item?;
            if let Ok(k) = serde_json::from_slice::<MachineKey>(&v) {
                out.entry(k.network_id.clone()).or_default().push(k);
            }
        }
        Ok(out)
    }

    /// The enrolled machines of one network (hubs and connectors), for the key list its
    /// connectors check hub batches against. Revoked machines are not in it.
    pub fn network_keys(&self, network: &str) -> Result<Vec<MachineKey>, CloudError> {
        let mut out = Vec::new();
        for item in self.keys.iter() {
            let (_, v) = item?;
            if let Ok(k) = serde_json::from_slice::<MachineKey>(&v) {
                if k.network_id == network {
                    out.push(k);
                }
            }
        }
        Ok(out)
    }

    /// Checks a signed machine request; returns the enrolled signer. `max_skew` is `None` for
    /// batches a connector held for a while: their signature still proves who wrote them, and
    /// storing them twice is impossible anyway.
    pub fn verify(
        &self,
        headers: &SignedHeaders,
        method: &str,
        path: &str,
        body: &[u8],
        max_skew: Option<Duration>,
    ) -> Result<MachineKey, Refusal> {
        let id = headers.machine_id.to_string();
        let mk = match self.machine_key(&id).ok().flatten() {
            Some(mk) => mk,
            None => {
                return Err(match self.revoked_at(&id) {
                    Some(at) => Refusal::Revoked(id, at),
                    None => Refusal::NotEnrolled(id),
                })
            }
        };
        let public =
            PublicKey::from_pem(&mk.public_key).map_err(|e| Refusal::NotEnrolled(format!("{id} ({e})")))?;
        let skew = max_skew.unwrap_or(Duration::from_secs(10 * 365 * 86400));
        verify_request(&public, headers, method, path, body, Utc::now(), skew).map_err(Refusal::Bad)?;
        Ok(mk)
    }

    /// Withdraws a machine's enrollment: from now on its signed requests are refused, and the
    /// receipts hubs fetch no longer list it as a connector. Its stored readings stay. Returns the
    /// key record it had, or None when it was not enrolled.
    pub fn revoke(&self, id: &str, now: DateTime<Utc>) -> Result<Option<MachineKey>, CloudError> {
        let Some(old) = self.keys.remove(id.as_bytes())? else { return Ok(None) };
        let mk: MachineKey = serde_json::from_slice(&old).map_err(|e| CloudError::Corrupt(e.to_string()))?;
        let record = RevokedKey { key: mk.clone(), revoked_at: now };
        self.revoked.insert(id.as_bytes(), serde_json::to_vec(&record).expect("serialises"))?;
        self.keys.flush()?;
        tracing::warn!(machine = %id, role = %mk.role, network = %mk.network_id, "machine revoked");
        Ok(Some(mk))
    }

    fn revoked_at(&self, id: &str) -> Option<DateTime<Utc>> {
        let v = self.revoked.get(id.as_bytes()).ok()??;
        serde_json::from_slice::<RevokedKey>(&v).ok().map(|r| r.revoked_at)
    }

    /// Tokens that are still open: for the dashboard.
    pub fn open_tokens(&self, now: DateTime<Utc>) -> Result<Vec<serde_json::Value>, CloudError> {
        let mut out = Vec::new();
        for item in self.tokens.iter() {
            let (_, v) = item?;
            if let Ok(r) = serde_json::from_slice::<TokenRecord>(&v) {
                if r.used_by.is_none() && r.expires_at > now {
                    out.push(serde_json::json!({"network": r.network_id, "expires_at": r.expires_at, "created_at": r.created_at}));
                }
            }
        }
        Ok(out)
    }
}
