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
use outpost_shared::model::Role;
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

/// What the cloud keeps of a token: an admin's decision about one machine. Keyed by the hash of
/// the token's secret, never the secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TokenRecord {
    network_id: String,
    /// The role the machine enrolls in; an enrollment asking for another is refused. Records made
    /// before roles were bound read as sensorhub tokens, the harmless choice.
    #[serde(default)]
    role: outpost_shared::model::Role,
    expires_at: DateTime<Utc>,
    created_at: DateTime<Utc>,
    /// The machine that used it; a token enrolls one machine.
    used_by: Option<String>,
    /// Who made it, for the audit trail and the dashboard.
    #[serde(default)]
    created_by: String,
    /// A name to tell tokens apart ("pump station 3").
    #[serde(default)]
    label: String,
}

/// The cloud's permission for one connector to ask for commands by mail.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MailGrant {
    /// Lower-case mail addresses the connector may act for.
    pub senders: Vec<String>,
    pub granted_by: String,
    pub granted_at: DateTime<Utc>,
}

impl MailGrant {
    pub fn allows(&self, sender: &str) -> bool {
        let sender = sender.trim().to_ascii_lowercase();
        self.senders.contains(&sender)
    }
}

/// A token as the dashboard lists it (no secret: the cloud does not have it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TokenInfo {
    /// The first 16 hex digits of the secret's hash: enough to name it, useless to enroll.
    pub id: String,
    pub network: String,
    pub role: outpost_shared::model::Role,
    pub label: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub created_by: String,
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
    /// Connector id -> [`MailGrant`]: which connectors may ask for commands by mail, for whom.
    mail_grants: sled::Tree,
    /// `network \0 connector id`: the enrolled connectors of each network, so a receipt is built
    /// from its network's entries instead of a scan of every machine.
    connectors: sled::Tree,
    /// Parsed public keys by machine id. A machine id is the fingerprint of its key, so an entry
    /// can never be wrong for its id; whether the machine is still enrolled is read each time.
    parsed: Arc<std::sync::Mutex<std::collections::HashMap<String, PublicKey>>>,
    /// Never a second flush at once (sled #1308): all of them through the database's flusher.
    flusher: outpost_shared::group_flush::GroupFlush,
}

/// Parsed keys kept at most; past it the cache starts over (parsing is the cost, not a miss).
const PARSED_KEYS: usize = 50_000;

impl Trust {
    /// `flusher` is the database's one group-commit flusher (see `outpost_shared::group_flush`):
    /// every write here that must be durable before it is answered waits on it.
    pub fn open(
        dir: &Path,
        db: &sled::Db,
        flusher: outpost_shared::group_flush::GroupFlush,
    ) -> Result<Trust, CloudError> {
        let path = dir.join("cloud.key");
        let (key, created) = KeyPair::load_or_create(&path).map_err(|e| CloudError::Keys(e.to_string()))?;
        if created {
            tracing::info!(fingerprint = %key.machine_id(), "cloud signing key made");
        }
        Trust {
            key: Arc::new(key),
            keys: db.open_tree("machine_keys")?,
            tokens: db.open_tree("enrollment_tokens")?,
            revoked: db.open_tree("revoked_keys")?,
            mail_grants: db.open_tree("mail_grants")?,
            connectors: db.open_tree("network_connectors")?,
            parsed: Arc::default(),
            flusher,
        }
        .with_connector_index()
    }

    /// Builds the connector index from the keys when it is missing (a database from before it).
    fn with_connector_index(self) -> Result<Trust, CloudError> {
        if self.connectors.is_empty() {
            for item in self.keys.iter() {
                let (_, v) = item?;
                if let Ok(k) = serde_json::from_slice::<MachineKey>(&v) {
                    if k.role == Role::Connector {
                        self.connectors.insert(connector_key(&k.network_id, &k.machine_id), &[])?;
                    }
                }
            }
        }
        Ok(self)
    }

    pub fn key(&self) -> &KeyPair {
        &self.key
    }

    /// A one-time token for one machine of `network` in `role`, valid for `ttl`. Made only by an
    /// admin: a connector token is a deliberate act, since connectors are trusted by every hub of
    /// their network.
    pub fn new_token(
        &self,
        network: &str,
        role: outpost_shared::model::Role,
        ttl: Duration,
        label: &str,
        who: &str,
        now: DateTime<Utc>,
    ) -> Result<(EnrollmentToken, TokenInfo), CloudError> {
        if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
            return Err(CloudError::Invalid(format!(
                "a token's lifetime must be between 1 s and {} days",
                MAX_TOKEN_TTL.as_secs() / 86400
            )));
        }
        if label.len() > 100 || label.chars().any(char::is_control) {
            return Err(CloudError::Invalid("a token's label is at most 100 printable characters".into()));
        }
        let expires = now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::days(1));
        let token = EnrollmentToken::generate(network, self.key.machine_id().clone(), expires)
            .map_err(|e| CloudError::Invalid(e.to_string()))?;
        let rec = TokenRecord {
            network_id: network.into(),
            role,
            expires_at: token.expires_at,
            created_at: now,
            used_by: None,
            created_by: who.into(),
            label: label.into(),
        };
        let hash = token.secret_hash();
        self.tokens.insert(hash.as_bytes(), serde_json::to_vec(&rec).expect("serialises"))?;
        self.flusher.flush_blocking()?;
        Ok((token, token_info(&hash, &rec)))
    }

    /// Cancels an open token by the id the dashboard shows. Returns what it was, or None when no
    /// open token has that id.
    pub fn cancel_token(&self, id: &str) -> Result<Option<TokenInfo>, CloudError> {
        if id.len() != TOKEN_ID_LEN || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        for item in self.tokens.scan_prefix(id.as_bytes()) {
            let (k, v) = item?;
            let Ok(rec) = serde_json::from_slice::<TokenRecord>(&v) else { continue };
            if rec.used_by.is_none() {
                self.tokens.remove(&k)?;
                self.flusher.flush_blocking()?;
                return Ok(Some(token_info(&String::from_utf8_lossy(&k), &rec)));
            }
        }
        Ok(None)
    }

    /// Enrolls a machine: checks the token (known, unexpired, made for this role, unused), records
    /// the key and answers with a receipt signed by the cloud key. Through a connector, role, host
    /// name and LAN certificate come from inside the seal only.
    ///
    /// The token is consumed atomically with recording the key (one sled transaction over tokens,
    /// keys and revocations), so of any number of racing enrollments with one token exactly one
    /// wins. Enrolling an already enrolled key again with the token it used answers with its
    /// receipt and changes nothing (a hub whose first answer was lost). A revoked machine comes
    /// back only with a token made after its revocation.
    pub fn enroll(&self, req: &EnrollRequest, now: DateTime<Utc>) -> Result<EnrollResponse, Refusal> {
        let refuse = |m: &str| Refusal::Enroll(m.to_string());
        let public = PublicKey::from_pem(&req.public_key)
            .map_err(|e| Refusal::Enroll(format!("bad public key: {e}")))?;
        let (text, role, hostname, lan_cert) = match (&req.token, &req.sealed_token) {
            (Some(t), None) => (t.trim().to_string(), req.role, req.hostname.clone(), req.lan_cert.clone()),
            (None, Some(sealed)) => {
                let inner = outpost_shared::keys::unseal_token(&self.key, sealed, public.machine_id())
                    .map_err(|e| Refusal::Enroll(e.to_string()))?;
                // What travelled in the clear beside the seal must say the same: a relay that
                // rewrote it is caught here rather than silently overruled.
                if (inner.role, &inner.hostname, &inner.lan_cert) != (req.role, &req.hostname, &req.lan_cert)
                {
                    return Err(refuse(
                        "the enrollment was altered on the way: role, host name or LAN certificate differ from what the machine sealed",
                    ));
                }
                if inner.role == Role::Connector {
                    return Err(refuse(
                        "connectors enroll directly with the cloud, never through another connector",
                    ));
                }
                (inner.token, inner.role, inner.hostname, inner.lan_cert)
            }
            _ => return Err(refuse("give either `token` or `sealed_token`")),
        };
        check_hostname(&hostname).map_err(Refusal::Enroll)?;
        match (role, &lan_cert) {
            (Role::Connector, None) => {
                return Err(refuse("a connector enrolls with the fingerprint of its LAN certificate"))
            }
            (Role::Sensorhub, Some(_)) => return Err(refuse("a sensorhub has no LAN certificate")),
            (_, Some(lan)) => {
                CertFingerprint::parse(lan)
                    .map_err(|e| Refusal::Enroll(format!("bad LAN certificate fingerprint: {e}")))?;
            }
            _ => {}
        }
        let token = EnrollmentToken::parse_at(&text, now).map_err(|e| Refusal::Enroll(e.to_string()))?;
        if &token.cloud_key != self.key.machine_id() {
            return Err(refuse("the token was made by another cloud"));
        }
        let id = public.machine_id().to_string();
        let hash = token.secret_hash();
        let candidate = MachineKey {
            machine_id: id.clone(),
            public_key: public.to_pem(),
            network_id: token.network_id.clone(),
            role,
            hostname,
            enrolled_at: now,
            lan_cert,
        };
        use sled::transaction::{ConflictableTransactionError as Abort, TransactionError};
        use sled::Transactional;
        let outcome = (&self.tokens, &self.keys, &self.revoked, &self.connectors).transaction(
            |(tokens, keys, revoked, connectors)| {
                let abort = |m: String| Abort::Abort(Refusal::Enroll(m));
                let Some(raw) = tokens.get(hash.as_bytes())? else {
                    return Err(abort("unknown or cancelled token; make a new one on the dashboard".into()));
                };
                let mut rec: TokenRecord = serde_json::from_slice(&raw)
                    .map_err(|e| abort(format!("token record unreadable: {e}")))?;
                if rec.role != role {
                    return Err(abort(format!(
                        "this token enrolls a {}, not a {role}; ask an admin for a {role} token",
                        rec.role
                    )));
                }
                if let Some(stored) = keys.get(id.as_bytes())? {
                    let stored: MachineKey = serde_json::from_slice(&stored)
                        .map_err(|e| abort(format!("key record unreadable: {e}")))?;
                    if rec.used_by.as_deref() == Some(id.as_str()) {
                        // The same machine asking again: its enrollment stands exactly as it was.
                        return Ok(stored);
                    }
                    return Err(abort(format!(
                    "this machine is already enrolled (network {}, {}); revoke it first to enroll it anew",
                    stored.network_id, stored.role
                )));
                }
                if let Some(r) = revoked.get(id.as_bytes())? {
                    let r: RevokedKey = serde_json::from_slice(&r)
                        .map_err(|e| abort(format!("revocation record unreadable: {e}")))?;
                    if rec.created_at <= r.revoked_at {
                        return Err(abort(format!(
                            "this machine was revoked at {}; only a token made after that takes it back",
                            r.revoked_at
                        )));
                    }
                    // A token made after the revocation is the operator's decision to take it back.
                    revoked.remove(id.as_bytes())?;
                }
                if rec.used_by.is_some() {
                    return Err(abort("this token was already used; tokens are one-time".into()));
                }
                rec.used_by = Some(id.clone());
                tokens.insert(hash.as_bytes(), serde_json::to_vec(&rec).expect("serialises"))?;
                keys.insert(id.as_bytes(), serde_json::to_vec(&candidate).expect("serialises"))?;
                if candidate.role == Role::Connector {
                    connectors.insert(connector_key(&candidate.network_id, &id), &[])?;
                }
                Ok(candidate.clone())
            },
        );
        let mk = match outcome {
            Ok(mk) => mk,
            Err(TransactionError::Abort(r)) => return Err(r),
            Err(TransactionError::Storage(e)) => return Err(Refusal::Enroll(format!("storage: {e}"))),
        };
        self.flusher.flush_blocking().map_err(|e| Refusal::Enroll(format!("storage: {e}")))?;
        if mk.enrolled_at == now {
            tracing::info!(machine = %id, network = %mk.network_id, role = %mk.role, "machine enrolled");
        }
        self.receipt(&mk, now).map_err(|e| Refusal::Enroll(e.to_string()))
    }

    /// A fresh receipt for an enrolled machine: the connectors now authorised in its network.
    pub fn receipt(&self, mk: &MachineKey, now: DateTime<Utc>) -> Result<EnrollResponse, CloudError> {
        let mut connectors = Vec::new();
        let prefix = connector_key(&mk.network_id, "");
        for item in self.connectors.scan_prefix(&prefix) {
            let (k, _) = item?;
            let id = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            // Revocation removes the key record; the index entry goes with it, and a stale one is
            // skipped here.
            let Some(k) = self.machine_key(&id)? else { continue };
            if k.network_id == mk.network_id && k.role == Role::Connector {
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
            role: Some(mk.role),
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
        let public = self.parsed_key(&mk).map_err(|e| Refusal::NotEnrolled(format!("{id} ({e})")))?;
        let skew = max_skew.unwrap_or(Duration::from_secs(10 * 365 * 86400));
        verify_request(&public, headers, method, path, body, Utc::now(), skew).map_err(Refusal::Bad)?;
        Ok(mk)
    }

    /// The machine's public key, parsed once.
    pub fn parsed_key(&self, mk: &MachineKey) -> Result<PublicKey, outpost_shared::keys::KeyError> {
        let mut cache = self.parsed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = cache.get(&mk.machine_id) {
            return Ok(k.clone());
        }
        let k = PublicKey::from_pem(&mk.public_key)?;
        if k.machine_id().as_str() != mk.machine_id {
            return Err(outpost_shared::keys::KeyError::Serialize(format!(
                "stored key of {} has fingerprint {}",
                mk.machine_id,
                k.machine_id()
            )));
        }
        if cache.len() >= PARSED_KEYS {
            cache.clear();
        }
        cache.insert(mk.machine_id.clone(), k.clone());
        Ok(k)
    }

    /// Withdraws a machine's enrollment: from now on its signed requests are refused, and the
    /// receipts hubs fetch no longer list it as a connector. Its stored readings stay. Returns the
    /// key record it had, or None when it was not enrolled.
    pub fn revoke(&self, id: &str, now: DateTime<Utc>) -> Result<Option<MachineKey>, CloudError> {
        let Some(old) = self.keys.remove(id.as_bytes())? else { return Ok(None) };
        let mk: MachineKey = serde_json::from_slice(&old).map_err(|e| CloudError::Corrupt(e.to_string()))?;
        self.connectors.remove(connector_key(&mk.network_id, &mk.machine_id))?;
        let record = RevokedKey { key: mk.clone(), revoked_at: now };
        self.revoked.insert(id.as_bytes(), serde_json::to_vec(&record).expect("serialises"))?;
        self.flusher.flush_blocking()?;
        tracing::warn!(machine = %id, role = %mk.role, network = %mk.network_id, "machine revoked");
        Ok(Some(mk))
    }

    /// Lets the connector `id` ask for relay commands by mail on behalf of `senders` (mail
    /// addresses, compared without case). The connector's own configuration authenticates the
    /// senders; this is the cloud's decision that it may act for them at all.
    pub fn grant_mail_commands(
        &self,
        id: &str,
        senders: &[String],
        who: &str,
        now: DateTime<Utc>,
    ) -> Result<MailGrant, CloudError> {
        match self.machine_key(id)? {
            Some(k) if k.role == Role::Connector => {}
            Some(_) => return Err(CloudError::Invalid(format!("{id} is not a connector"))),
            None => return Err(CloudError::Invalid(format!("no enrolled connector {id}"))),
        }
        if senders.is_empty() || senders.len() > 100 {
            return Err(CloudError::Invalid("list 1 to 100 sender addresses".into()));
        }
        let mut list = Vec::with_capacity(senders.len());
        for a in senders {
            let a = a.trim().to_ascii_lowercase();
            let plausible = a.len() <= 254
                && a.split_once('@').is_some_and(|(l, d)| !l.is_empty() && !d.is_empty())
                && !a.chars().any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>');
            if !plausible {
                return Err(CloudError::Invalid(format!("`{a}` is not a mail address")));
            }
            list.push(a);
        }
        list.sort();
        list.dedup();
        let grant = MailGrant { senders: list, granted_by: who.into(), granted_at: now };
        self.mail_grants.insert(id.as_bytes(), serde_json::to_vec(&grant).expect("serialises"))?;
        self.flusher.flush_blocking()?;
        Ok(grant)
    }

    /// Withdraws a connector's mail-command grant. Returns whether it had one.
    pub fn withdraw_mail_commands(&self, id: &str) -> Result<bool, CloudError> {
        let had = self.mail_grants.remove(id.as_bytes())?.is_some();
        self.flusher.flush_blocking()?;
        Ok(had)
    }

    pub fn mail_grant(&self, id: &str) -> Result<Option<MailGrant>, CloudError> {
        Ok(self.mail_grants.get(id.as_bytes())?.and_then(|v| serde_json::from_slice(&v).ok()))
    }

    fn revoked_at(&self, id: &str) -> Option<DateTime<Utc>> {
        let v = self.revoked.get(id.as_bytes()).ok()??;
        serde_json::from_slice::<RevokedKey>(&v).ok().map(|r| r.revoked_at)
    }

    /// Forgets tokens that can enroll nobody any more: open ones once expired, used ones
    /// [`USED_TOKEN_KEPT`] after their expiry (until then the machine that used one may ask again
    /// for its receipt with it). Returns how many went.
    pub fn prune_tokens(&self, now: DateTime<Utc>) -> Result<u64, CloudError> {
        let kept = chrono::Duration::from_std(USED_TOKEN_KEPT).expect("small");
        let mut gone = 0;
        for item in self.tokens.iter() {
            let (k, v) = item?;
            let Ok(r) = serde_json::from_slice::<TokenRecord>(&v) else { continue };
            let dead = match r.used_by {
                None => r.expires_at <= now,
                Some(_) => r.expires_at + kept <= now,
            };
            if dead {
                self.tokens.remove(k)?;
                gone += 1;
            }
        }
        Ok(gone)
    }

    /// Tokens that are still open: for the dashboard.
    pub fn open_tokens(&self, now: DateTime<Utc>) -> Result<Vec<TokenInfo>, CloudError> {
        let mut out = Vec::new();
        for item in self.tokens.iter() {
            let (k, v) = item?;
            if let Ok(r) = serde_json::from_slice::<TokenRecord>(&v) {
                if r.used_by.is_none() && r.expires_at > now {
                    out.push(token_info(&String::from_utf8_lossy(&k), &r));
                }
            }
        }
        Ok(out)
    }
}

/// Longest lifetime of an enrollment token: a token is for installing a machine now, not a
/// standing credential.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(30 * 86400);
const TOKEN_ID_LEN: usize = 16;
/// How long a used token's record outlives its expiry.
pub const USED_TOKEN_KEPT: Duration = Duration::from_secs(30 * 86400);

fn token_info(hash: &str, r: &TokenRecord) -> TokenInfo {
    TokenInfo {
        id: hash.chars().take(TOKEN_ID_LEN).collect(),
        network: r.network_id.clone(),
        role: r.role,
        label: r.label.clone(),
        created_at: r.created_at,
        expires_at: r.expires_at,
        created_by: r.created_by.clone(),
    }
}

fn connector_key(network: &str, id: &str) -> Vec<u8> {
    let mut k = network.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    k
}

/// A host name is shown on the dashboard and in mail: printable, short.
fn check_hostname(h: &str) -> Result<(), String> {
    if h.is_empty() || h.len() > 253 || h.chars().any(char::is_control) {
        return Err("host name must be 1 to 253 printable characters".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_open_tokens_go_and_used_ones_are_kept_for_a_while_after_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path().join("db")).unwrap();
        let trust =
            Trust::open(dir.path(), &db, outpost_shared::group_flush::GroupFlush::new(db.clone())).unwrap();
        let now = Utc::now();
        let hour = Duration::from_secs(3600);
        let (open, _) = trust.new_token("n", Role::Sensorhub, hour, "", "t", now).unwrap();
        let (used, _) = trust.new_token("n", Role::Sensorhub, hour, "", "t", now).unwrap();
        let key = KeyPair::generate().unwrap();
        let req = EnrollRequest {
            token: Some(used.encode()),
            sealed_token: None,
            public_key: key.public().to_pem(),
            role: Role::Sensorhub,
            hostname: "h".into(),
            lan_cert: None,
        };
        trust.enroll(&req, now).unwrap();
        assert_eq!(trust.prune_tokens(now).unwrap(), 0);
        // Past their expiry: the open one can enroll nobody and goes; the used one stays, so its
        // machine can still ask for its receipt with it.
        assert_eq!(trust.prune_tokens(now + chrono::Duration::hours(2)).unwrap(), 1);
        assert!(trust.open_tokens(now).unwrap().is_empty());
        assert!(trust.enroll(&req, now + chrono::Duration::minutes(30)).is_ok());
        let long_after = now + chrono::Duration::days(31) + chrono::Duration::hours(2);
        assert_eq!(trust.prune_tokens(long_after).unwrap(), 1);
        drop(open);
    }
}
