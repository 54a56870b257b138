//! Who may send what. The cloud holds a signing key (its fingerprint travels in every enrollment
//! token); machines enroll once with a one-time token and their public key, and from then on
//! every machine request is signed and checked against that enrolled key. A connector forwards a
//! hub's batch with the hub's own signature, so it cannot alter or invent a hub's readings.

use crate::error::CloudError;
use chrono::{DateTime, Utc};
use outpost_shared::keys::session::{ChallengeAnswer, OpenAnswer, OpenRequest, ReplayWindow};
use outpost_shared::keys::{
    verify_request, AuthorizedConnector, CertFingerprint, CommandKeyPair, EnrollmentReceipt, EnrollmentToken,
    KeyPair, MachineId, PublicKey, SessionError, SessionHeaders, Signed, SignedHeaders, SignsCommands,
    Ticket, TicketKeys, VerifyError,
};
use outpost_shared::model::Role;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::store::trust::{EnrollView, EnrollWrite, Trusts};
pub use crate::store::trust::{MachineKey, MailGrant, RevokedKey, TokenRecord};

/// How far a direct request's timestamp may be from the cloud's clock.
pub const MAX_SKEW: Duration = outpost_shared::keys::DEFAULT_MAX_SKEW;

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
    /// A machine session's ticket, MAC, sequence or challenge did not check.
    #[error("{0}")]
    Session(SessionError),
    #[error("enrollment refused: {0}")]
    Enroll(String),
    /// The records could not be read or written now: nothing was decided; retry later.
    #[error("{0}")]
    Storage(CloudError),
    /// Too many session logins at once; the machine signs its requests meanwhile.
    #[error("too many machine sessions are being opened right now; sign requests and open one later")]
    Busy,
}

#[derive(Clone)]
pub struct Trust {
    /// The cloud's signing key: a file in the data directory, never in the database.
    key: Arc<KeyPair>,
    /// Keys, tokens, revocations, mail grants, on the configured engine.
    store: Trusts,
    /// Parsed public keys by machine id. A machine id is the fingerprint of its key, so an entry
    /// can never be wrong for its id; whether the machine is still enrolled is read each time.
    parsed: Arc<std::sync::Mutex<std::collections::HashMap<String, PublicKey>>>,
    /// Challenge and ticket keys of machine sessions, derived from `key` (never stored).
    tickets: Arc<TicketKeys>,
    /// The Ed25519 command key, derived from `key` (never stored) and certified by it.
    command_key: Arc<CommandKeyPair>,
    /// The sequence numbers each live session has used on this node.
    windows: Arc<SessionWindows>,
    /// How long a machine session lives.
    session_lifetime: Duration,
    /// Session logins being opened now, each an RSA private-key operation (several ms). Beyond
    /// the permits a login is answered 503 + retry later: in a cold start of thousands of hubs
    /// the logins would otherwise take every core from ingest, while a machine refused here just
    /// signs its requests (a verification costs the cloud a fraction of a millisecond) and tries
    /// to open again later, at a jittered time.
    opening: Arc<tokio::sync::Semaphore>,
    /// X25519 logins being opened now, each about 0.2 ms of CPU. As many at once as RSA-OAEP
    /// logins, so a flood of them (whoever knows an enrolled machine's id can send one) takes at
    /// most that share of the cores; beyond the permits a login waits up to [`EXCHANGE_WAIT`]
    /// (thousands fit in that time), then gets 503 + retry later.
    exchanging: Arc<tokio::sync::Semaphore>,
}

/// How long an X25519 login waits for a permit before it is told to retry later.
const EXCHANGE_WAIT: Duration = Duration::from_secs(1);

/// Session logins opened at once: half the cores (at least one), so a login storm leaves the
/// other half to ingest.
fn logins_at_once() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// Runs a login's key operations on a blocking thread, off the async workers.
async fn off_workers<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Refusal> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Refusal::Storage(CloudError::Keys(e.to_string())))
}

/// Live sessions whose sequence numbers one node remembers. Policy when full (after dropping
/// expired ones): a request of a session not yet remembered is answered 503 + retry later, so
/// its sender keeps its data; sessions already remembered go on.
const MAX_SESSIONS: usize = 200_000;

/// The replay windows of live sessions on this node, by session id. A replay sent to another
/// node is not caught here; that does no harm (SECURITY.md: batches are stored once per
/// `(machine, seq)`, results once per command, polls change nothing).
#[derive(Default)]
struct SessionWindows {
    map: std::sync::Mutex<std::collections::HashMap<[u8; 16], (ReplayWindow, i64)>>,
}

impl SessionWindows {
    fn take(&self, ticket: &Ticket, seq: u64, now: i64) -> Result<(), SessionError> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(&ticket.session_id) && map.len() >= MAX_SESSIONS {
            map.retain(|_, (_, expires)| *expires > now);
            if map.len() >= MAX_SESSIONS {
                return Err(SessionError::Full);
            }
        }
        let (window, _) =
            map.entry(ticket.session_id).or_insert((ReplayWindow::default(), ticket.expires_at));
        if window.take(seq) {
            Ok(())
        } else {
            Err(SessionError::Replayed { seq, highest: window.highest() })
        }
    }
}

/// Parsed keys kept at most; past it the cache starts over (parsing is the cost, not a miss).
const PARSED_KEYS: usize = 50_000;

impl Trust {
    /// Loads the cloud's signing key from `dir/cloud.key` (made on first start) and keeps the
    /// trust records in `store`.
    pub fn open(dir: &Path, store: Trusts) -> Result<Trust, CloudError> {
        let path = dir.join("cloud.key");
        let (key, created) = KeyPair::load_or_create(&path).map_err(|e| CloudError::Keys(e.to_string()))?;
        if created {
            tracing::info!(fingerprint = %key.machine_id(), "cloud signing key made");
        }
        let command_key = CommandKeyPair::derive(&key).map_err(|e| CloudError::Keys(e.to_string()))?;
        Ok(Trust {
            tickets: Arc::new(TicketKeys::derive(&key)),
            command_key: Arc::new(command_key),
            key: Arc::new(key),
            store,
            parsed: Arc::default(),
            windows: Arc::default(),
            session_lifetime: outpost_shared::keys::session::DEFAULT_LIFETIME,
            opening: Arc::new(tokio::sync::Semaphore::new(logins_at_once())),
            exchanging: Arc::new(tokio::sync::Semaphore::new(logins_at_once())),
        })
    }

    /// Opens at most `n` machine sessions at once (see the field; tests use 0 to see the refusal).
    pub fn with_logins_at_once(mut self, n: usize) -> Trust {
        self.opening = Arc::new(tokio::sync::Semaphore::new(n));
        self
    }

    /// Opens at most `n` X25519 logins at once (tests use 0 to see the refusal).
    pub fn with_exchanges_at_once(mut self, n: usize) -> Trust {
        self.exchanging = Arc::new(tokio::sync::Semaphore::new(n));
        self
    }

    /// Machine sessions live `lifetime` (one hour unless changed; tests make it short).
    pub fn with_session_lifetime(mut self, lifetime: Duration) -> Trust {
        self.session_lifetime = lifetime;
        self
    }

    /// A fresh challenge for opening a machine session (no state kept), with the certificate of
    /// the key that signs the cloud's half of an X25519 login.
    pub fn session_challenge(&self) -> Result<ChallengeAnswer, CloudError> {
        let challenge =
            self.tickets.challenge(Utc::now().timestamp()).map_err(|e| CloudError::Keys(e.to_string()))?;
        Ok(ChallengeAnswer { challenge, exchange_key: Some(self.command_key.certificate().clone()) })
    }

    /// Opens a machine session: the machine must be enrolled (and not revoked) and its key must
    /// have signed the challenge and its half of the exchange (or the sealed session key). The
    /// session key goes into the ticket only; nothing is stored.
    pub async fn open_session(&self, req: OpenRequest) -> Result<OpenAnswer, Refusal> {
        // An HMAC first: a login without a fresh challenge of this cloud costs no lookup.
        self.tickets.check_challenge(&req.challenge, Utc::now().timestamp()).map_err(Refusal::Session)?;
        let mk = self.enrolled(&req.machine_id).await?;
        let public =
            self.parsed_key(&mk).map_err(|e| Refusal::NotEnrolled(format!("{} ({e})", mk.machine_id)))?;
        let (tickets, lifetime) = (self.tickets.clone(), self.session_lifetime);
        use outpost_shared::keys::session::{accept_open, accept_open_x25519};
        let opened = if req.x25519.is_some() {
            // An RSA verification, an X25519 and an Ed25519 signature: about what checking one
            // signed request costs, under a permit of its own (see the field).
            let waiting = self.exchanging.clone().acquire_owned();
            let _exchanging = match tokio::time::timeout(EXCHANGE_WAIT, waiting).await {
                Ok(permit) => permit.map_err(|_| Refusal::Busy)?,
                Err(_) => return Err(Refusal::Busy),
            };
            let exchange = self.command_key.clone();
            off_workers(move || {
                accept_open_x25519(&exchange, &tickets, &req, &public, Utc::now().timestamp(), lifetime)
            })
            .await?
        } else {
            // An RSA private-key operation besides: one of the few logins opened at once.
            let _opening = self.opening.clone().try_acquire_owned().map_err(|_| Refusal::Busy)?;
            let key = self.key.clone();
            off_workers(move || accept_open(&key, &tickets, &req, &public, Utc::now().timestamp(), lifetime))
                .await?
        };
        opened.map(|(answer, _)| answer).map_err(Refusal::Session)
    }

    /// The enrolled key of `id`, or why there is none (revoked or unknown).
    async fn enrolled(&self, id: &str) -> Result<MachineKey, Refusal> {
        match self.store.machine_key(id).await.map_err(Refusal::Storage)? {
            Some(mk) => Ok(mk),
            None => Err(match self.store.revocation(id).await.map_err(Refusal::Storage)? {
                Some(r) => Refusal::Revoked(id.to_string(), r.revoked_at),
                None => Refusal::NotEnrolled(id.to_string()),
            }),
        }
    }

    /// The cheap part of a session check, before a body is read: the ticket opens and is live, its
    /// machine is still enrolled, the time is inside the window. No MAC yet.
    pub async fn claimed_session(&self, headers: &SessionHeaders) -> Result<(MachineKey, Ticket), Refusal> {
        let now = Utc::now().timestamp();
        let ticket = self.tickets.open(&headers.ticket, now).map_err(Refusal::Session)?;
        // Enrollment is read on every request: a revocation ends live sessions at once.
        let mk = self.enrolled(ticket.machine_id.as_str()).await?;
        let off_by = now.saturating_sub(headers.timestamp).saturating_abs();
        if off_by as u64 > MAX_SKEW.as_secs() {
            return Err(Refusal::Session(SessionError::Stale {
                timestamp: headers.timestamp,
                off_by_secs: off_by,
                allowed_secs: MAX_SKEW.as_secs(),
            }));
        }
        Ok((mk, ticket))
    }

    /// Checks a request made in a machine session: [`Trust::claimed_session`], the MAC over
    /// exactly this request, then that its sequence number is new in the session.
    pub async fn verify_session(
        &self,
        headers: &SessionHeaders,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<(MachineKey, Ticket), Refusal> {
        let (mk, ticket) = self.claimed_session(headers).await?;
        let now = Utc::now().timestamp();
        outpost_shared::keys::session::verify_mac(&ticket, headers, method, path, body, now, MAX_SKEW)
            .map_err(Refusal::Session)?;
        self.windows.take(&ticket, headers.seq, now).map_err(Refusal::Session)?;
        Ok((mk, ticket))
    }

    pub fn key(&self) -> &KeyPair {
        &self.key
    }

    /// What signs commands for a machine that reported `features`: the Ed25519 command key for
    /// hubs that check it (microseconds), the RSA key for all others (about 2 ms).
    pub fn command_signer(&self, features: &[String]) -> &dyn SignsCommands {
        if features.iter().any(|f| f == outpost_shared::keys::command_key::FEATURE) {
            self.command_key.as_ref()
        } else {
            self.key.as_ref()
        }
    }

    /// A one-time token for one machine of `network` in `role`, valid for `ttl`. Made only by an
    /// admin: a connector token is a deliberate act, since connectors are trusted by every hub of
    /// their network. Durable on return.
    pub async fn new_token(
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
        self.store.put_token(&hash, &rec).await?;
        Ok((token, token_info(&hash, &rec)))
    }

    /// Cancels an open token by the id the dashboard shows. Returns what it was, or None when no
    /// open token has that id.
    pub async fn cancel_token(&self, id: &str) -> Result<Option<TokenInfo>, CloudError> {
        if id.len() != TOKEN_ID_LEN || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        Ok(self.store.cancel_token(id).await?.map(|(hash, rec)| token_info(&hash, &rec)))
    }

    /// Enrolls a machine: checks the token (known, unexpired, made for this role, unused), records
    /// the key and answers with a receipt signed by the cloud key. Through a connector, role, host
    /// name and LAN certificate come from inside the seal only.
    ///
    /// The token is consumed atomically with recording the key (one storage transaction over
    /// tokens, keys and revocations), so of any number of racing enrollments with one token
    /// exactly one wins. Enrolling an already enrolled key again with the token it used answers
    /// with its receipt and changes nothing (a hub whose first answer was lost). A revoked
    /// machine comes back only with a token made after its revocation.
    pub async fn enroll(&self, req: &EnrollRequest, now: DateTime<Utc>) -> Result<EnrollResponse, Refusal> {
        let refuse = |m: &str| Refusal::Enroll(m.to_string());
        let public = PublicKey::from_pem(&req.public_key)
            .map_err(|e| Refusal::Enroll(format!("bad public key: {e}")))?;
        let (text, role, hostname, lan_cert) = match (&req.token, &req.sealed_token) {
            (Some(t), None) => (t.trim().to_string(), req.role, req.hostname.clone(), req.lan_cert.clone()),
            (None, Some(sealed)) => {
                // An RSA private-key operation: off the async workers.
                let (key, sealed, id) = (self.key.clone(), sealed.clone(), public.machine_id().clone());
                let inner = tokio::task::spawn_blocking(move || {
                    outpost_shared::keys::unseal_token(&key, &sealed, &id)
                })
                .await
                .map_err(|e| Refusal::Enroll(format!("unsealing failed: {e}")))?
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
        let decide = |view: &EnrollView| decide_enrollment(view, &candidate);
        let mk = match self.store.enroll(&hash, &id, &decide).await {
            Ok(Ok(mk)) => mk,
            Ok(Err(why)) => return Err(Refusal::Enroll(why)),
            Err(e) => return Err(Refusal::Storage(e)),
        };
        if mk.enrolled_at == now {
            tracing::info!(machine = %id, network = %mk.network_id, role = %mk.role, "machine enrolled");
        }
        self.receipt(&mk, now).await.map_err(Refusal::Storage)
    }

    /// A fresh receipt for an enrolled machine: the connectors now authorised in its network.
    pub async fn receipt(&self, mk: &MachineKey, now: DateTime<Utc>) -> Result<EnrollResponse, CloudError> {
        let mut connectors = Vec::new();
        for k in self.store.connectors(&mk.network_id).await? {
            if let (Ok(id), Some(Ok(fp))) =
                (MachineId::parse(&k.machine_id), k.lan_cert.as_deref().map(CertFingerprint::parse))
            {
                connectors.push(AuthorizedConnector { machine_id: id, lan_cert: fp });
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
        // RSA signing is CPU work: off the async workers.
        let key = self.key.clone();
        let signed = tokio::task::spawn_blocking(move || Signed::sign(&key, &receipt))
            .await
            .map_err(|e| CloudError::Keys(format!("signing task failed: {e}")))?
            .map_err(|e| CloudError::Keys(e.to_string()))?;
        Ok(EnrollResponse { receipt: signed, cloud_key: self.key.public().to_pem() })
    }

    pub async fn machine_key(&self, id: &str) -> Result<Option<MachineKey>, CloudError> {
        self.store.machine_key(id).await
    }

    /// The enrolled machines among `ids`, in one read.
    pub async fn machine_keys_of(&self, ids: &[String]) -> Result<Vec<MachineKey>, CloudError> {
        self.store.machine_keys_of(ids).await
    }

    /// Every enrolled machine, by network.
    pub async fn networks(&self) -> Result<std::collections::BTreeMap<String, Vec<MachineKey>>, CloudError> {
        let mut out: std::collections::BTreeMap<String, Vec<MachineKey>> = Default::default();
        for k in self.store.machine_keys().await? {
            out.entry(k.network_id.clone()).or_default().push(k);
        }
        Ok(out)
    }

    /// The enrolled machines of one network (hubs and connectors), for the key list its
    /// connectors check hub batches against. Revoked machines are not in it.
    pub async fn network_keys(&self, network: &str) -> Result<Vec<MachineKey>, CloudError> {
        self.store.network_keys(network).await
    }

    /// Checks a signed machine request; returns the enrolled signer. `max_skew` is `None` for
    /// batches a connector held for a while: their signature still proves who wrote them, and
    /// storing them twice is impossible anyway.
    pub async fn verify(
        &self,
        headers: &SignedHeaders,
        method: &str,
        path: &str,
        body: &[u8],
        max_skew: Option<Duration>,
    ) -> Result<MachineKey, Refusal> {
        let id = headers.machine_id.to_string();
        let mk = match self.store.machine_key(&id).await.map_err(Refusal::Storage)? {
            Some(mk) => mk,
            None => {
                return Err(match self.store.revocation(&id).await.map_err(Refusal::Storage)? {
                    Some(r) => Refusal::Revoked(id, r.revoked_at),
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
    /// key record it had, or None when it was not enrolled. Durable on return.
    /// Archives (or with None brings back) a revoked machine; false when it is not revoked.
    pub async fn archive(&self, id: &str, at: Option<DateTime<Utc>>) -> Result<bool, CloudError> {
        self.store.archive(id, at).await
    }

    /// The revocation record of a machine no longer enrolled.
    pub async fn revocation(&self, id: &str) -> Result<Option<crate::store::trust::RevokedKey>, CloudError> {
        self.store.revocation(id).await
    }

    pub async fn revoke(&self, id: &str, now: DateTime<Utc>) -> Result<Option<MachineKey>, CloudError> {
        let mk = self.store.revoke(id, now).await?;
        if let Some(mk) = &mk {
            tracing::warn!(machine = %id, role = %mk.role, network = %mk.network_id, "machine revoked");
        }
        Ok(mk)
    }

    /// Lets the connector `id` ask for relay commands by mail on behalf of `senders` (mail
    /// addresses, compared without case). The connector's own configuration authenticates the
    /// senders; this is the cloud's decision that it may act for them at all.
    pub async fn grant_mail_commands(
        &self,
        id: &str,
        senders: &[String],
        who: &str,
        now: DateTime<Utc>,
    ) -> Result<MailGrant, CloudError> {
        match self.machine_key(id).await? {
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
        self.store.put_mail_grant(id, &grant).await?;
        Ok(grant)
    }

    /// Withdraws a connector's mail-command grant. Returns whether it had one.
    pub async fn withdraw_mail_commands(&self, id: &str) -> Result<bool, CloudError> {
        self.store.remove_mail_grant(id).await
    }

    pub async fn mail_grant(&self, id: &str) -> Result<Option<MailGrant>, CloudError> {
        self.store.mail_grant(id).await
    }

    /// Forgets tokens that can enroll nobody any more: open ones once expired, used ones
    /// [`USED_TOKEN_KEPT`] after their expiry (until then the machine that used one may ask again
    /// for its receipt with it). Returns how many went.
    pub async fn prune_tokens(&self, now: DateTime<Utc>) -> Result<u64, CloudError> {
        let kept = chrono::Duration::from_std(USED_TOKEN_KEPT).expect("small");
        let dead: Vec<String> = self
            .store
            .tokens()
            .await?
            .into_iter()
            .filter(|(_, r)| match r.used_by {
                None => r.expires_at <= now,
                Some(_) => r.expires_at + kept <= now,
            })
            .map(|(h, _)| h)
            .collect();
        if dead.is_empty() {
            return Ok(0);
        }
        self.store.remove_tokens(&dead).await
    }

    /// Tokens that are still open: for the dashboard.
    pub async fn open_tokens(&self, now: DateTime<Utc>) -> Result<Vec<TokenInfo>, CloudError> {
        Ok(self
            .store
            .tokens()
            .await?
            .into_iter()
            .filter(|(_, r)| r.used_by.is_none() && r.expires_at > now)
            .map(|(h, r)| token_info(&h, &r))
            .collect())
    }
}

/// The enrollment rule, over what is stored: the token must exist, be for this role and unused;
/// a machine already enrolled gets its enrollment back only with the token it used; a revoked
/// machine comes back only with a token made after its revocation.
fn decide_enrollment(view: &EnrollView, candidate: &MachineKey) -> Result<EnrollWrite, String> {
    let role = candidate.role;
    let Some(rec) = &view.token else {
        return Err("unknown or cancelled token; make a new one on the dashboard".into());
    };
    if rec.role != role {
        return Err(format!(
            "this token enrolls a {}, not a {role}; ask an admin for a {role} token",
            rec.role
        ));
    }
    if let Some(stored) = &view.key {
        if rec.used_by.as_deref() == Some(candidate.machine_id.as_str()) {
            // The same machine asking again: its enrollment stands exactly as it was.
            return Ok(EnrollWrite::Stands(stored.clone()));
        }
        return Err(format!(
            "this machine is already enrolled (network {}, {}); revoke it first to enroll it anew",
            stored.network_id, stored.role
        ));
    }
    if let Some(r) = &view.revoked {
        if rec.created_at <= r.revoked_at {
            return Err(format!(
                "this machine was revoked at {}; only a token made after that takes it back",
                r.revoked_at
            ));
        }
        // A token made after the revocation is the operator's decision to take it back.
    }
    if rec.used_by.is_some() {
        return Err("this token was already used; tokens are one-time".into());
    }
    let mut token = rec.clone();
    token.used_by = Some(candidate.machine_id.clone());
    Ok(EnrollWrite::Enroll { token, key: candidate.clone() })
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

/// A host name is shown on the dashboard and in mail: printable, short.
fn check_hostname(h: &str) -> Result<(), String> {
    if h.is_empty() || h.len() > 253 || h.chars().any(char::is_control) {
        return Err("host name must be 1 to 253 printable characters".into());
    }
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use crate::store::testing::Keep;
    use crate::store::Engines;

    crate::both_engines!(
        expired_open_tokens_go_and_used_ones_are_kept_for_a_while_after_expiry,
        of_many_racing_enrollments_with_one_token_exactly_one_wins,
        a_revoked_machine_comes_back_only_with_a_token_made_after_its_revocation,
        a_token_is_for_its_role_only_and_a_cancelled_one_enrolls_nobody,
    );

    fn request(token: &EnrollmentToken, key: &KeyPair, role: Role) -> EnrollRequest {
        EnrollRequest {
            token: Some(token.encode()),
            sealed_token: None,
            public_key: key.public().to_pem(),
            role,
            hostname: "h".into(),
            lan_cert: (role == Role::Connector).then(|| "0".repeat(64)),
        }
    }

    async fn expired_open_tokens_go_and_used_ones_are_kept_for_a_while_after_expiry(e: Engines, k: &Keep) {
        let trust = Trust::open(k.dir.path(), e.trust.clone()).unwrap();
        let now = Utc::now();
        let hour = Duration::from_secs(3600);
        let (open, _) = trust.new_token("n", Role::Sensorhub, hour, "", "t", now).await.unwrap();
        let (used, _) = trust.new_token("n", Role::Sensorhub, hour, "", "t", now).await.unwrap();
        let key = KeyPair::generate().unwrap();
        let req = request(&used, &key, Role::Sensorhub);
        trust.enroll(&req, now).await.unwrap();
        assert_eq!(trust.prune_tokens(now).await.unwrap(), 0);
        // Past their expiry: the open one can enroll nobody and goes; the used one stays, so its
        // machine can still ask for its receipt with it.
        assert_eq!(trust.prune_tokens(now + chrono::Duration::hours(2)).await.unwrap(), 1);
        assert!(trust.open_tokens(now).await.unwrap().is_empty());
        assert!(trust.enroll(&req, now + chrono::Duration::minutes(30)).await.is_ok());
        let long_after = now + chrono::Duration::days(31) + chrono::Duration::hours(2);
        assert_eq!(trust.prune_tokens(long_after).await.unwrap(), 1);
        drop(open);
    }

    /// The token is consumed in the same transaction that records the key: twelve machines
    /// racing with one token, on two handles of the store (two cloud nodes on one database do
    /// the same), make exactly one enrollment.
    async fn of_many_racing_enrollments_with_one_token_exactly_one_wins(e: Engines, k: &Keep) {
        let trust = Trust::open(k.dir.path(), e.trust.clone()).unwrap();
        let now = Utc::now();
        let (token, _) =
            trust.new_token("n", Role::Sensorhub, Duration::from_secs(600), "", "t", now).await.unwrap();
        let keys: Vec<KeyPair> = (0..12).map(|_| KeyPair::generate().unwrap()).collect();
        let racers: Vec<_> = keys
            .iter()
            .map(|key| {
                let (trust, req) = (trust.clone(), request(&token, key, Role::Sensorhub));
                tokio::spawn(async move { trust.enroll(&req, now).await })
            })
            .collect();
        let mut won = 0;
        for r in futures_util::future::join_all(racers).await {
            match r.unwrap() {
                Ok(_) => won += 1,
                Err(Refusal::Enroll(why)) => assert!(why.contains("already used"), "{why}"),
                Err(other) => panic!("a race must end in a refusal, not {other}"),
            }
        }
        assert_eq!(won, 1);
        assert_eq!(trust.networks().await.unwrap()["n"].len(), 1);
    }

    async fn a_revoked_machine_comes_back_only_with_a_token_made_after_its_revocation(e: Engines, k: &Keep) {
        let trust = Trust::open(k.dir.path(), e.trust.clone()).unwrap();
        let now = Utc::now();
        let ttl = Duration::from_secs(600);
        let key = KeyPair::generate().unwrap();
        let (first, _) = trust.new_token("n", Role::Connector, ttl, "", "t", now).await.unwrap();
        let (early, _) = trust.new_token("n", Role::Connector, ttl, "", "t", now).await.unwrap();
        trust.enroll(&request(&first, &key, Role::Connector), now).await.unwrap();
        let hub = KeyPair::generate().unwrap();
        let (hub_token, _) = trust.new_token("n", Role::Sensorhub, ttl, "", "t", now).await.unwrap();
        let receipt = trust.enroll(&request(&hub_token, &hub, Role::Sensorhub), now).await.unwrap();
        assert_eq!(receipt.receipt.peek_unverified().unwrap().connectors.len(), 1, "the connector is listed");

        let id = key.machine_id().to_string();
        let later = now + chrono::Duration::seconds(1);
        assert!(trust.revoke(&id, later).await.unwrap().is_some());
        assert!(trust.machine_key(&id).await.unwrap().is_none());
        let hub_mk = trust.machine_key(hub.machine_id().as_str()).await.unwrap().unwrap();
        let receipt = trust.receipt(&hub_mk, later).await.unwrap();
        assert!(receipt.receipt.peek_unverified().unwrap().connectors.is_empty(), "no longer listed");
        // A signed request of the revoked machine says so.
        let headers = outpost_shared::keys::sign_request(&key, "POST", "/v1/x", b"", Utc::now()).unwrap();
        assert!(matches!(
            trust.verify(&headers, "POST", "/v1/x", b"", None).await,
            Err(Refusal::Revoked(..))
        ));
        // A token made before the revocation does not take it back; one made after does.
        let refused = trust.enroll(&request(&early, &key, Role::Connector), later).await.unwrap_err();
        assert!(refused.to_string().contains("revoked"), "{refused}");
        let after = later + chrono::Duration::seconds(1);
        let (fresh, _) = trust.new_token("n", Role::Connector, ttl, "", "t", after).await.unwrap();
        trust.enroll(&request(&fresh, &key, Role::Connector), after).await.unwrap();
        assert!(trust.verify(&headers, "POST", "/v1/x", b"", None).await.is_ok());
    }

    async fn a_token_is_for_its_role_only_and_a_cancelled_one_enrolls_nobody(e: Engines, k: &Keep) {
        let trust = Trust::open(k.dir.path(), e.trust.clone()).unwrap();
        let now = Utc::now();
        let ttl = Duration::from_secs(600);
        let key = KeyPair::generate().unwrap();
        let (hub_token, _) = trust.new_token("n", Role::Sensorhub, ttl, "", "t", now).await.unwrap();
        let refused = trust.enroll(&request(&hub_token, &key, Role::Connector), now).await.unwrap_err();
        assert!(refused.to_string().contains("not a connector"), "{refused}");
        let (t, info) = trust.new_token("n", Role::Sensorhub, ttl, "pump", "t", now).await.unwrap();
        assert_eq!(trust.open_tokens(now).await.unwrap().len(), 2);
        assert_eq!(trust.cancel_token(&info.id).await.unwrap().map(|i| i.label), Some("pump".into()));
        assert!(trust.cancel_token(&info.id).await.unwrap().is_none(), "gone");
        let refused = trust.enroll(&request(&t, &key, Role::Sensorhub), now).await.unwrap_err();
        assert!(refused.to_string().contains("unknown or cancelled"), "{refused}");
        // Mail grants: only for connectors, kept and withdrawn.
        let id = key.machine_id().to_string();
        trust.enroll(&request(&hub_token, &key, Role::Sensorhub), now).await.unwrap();
        assert!(trust.grant_mail_commands(&id, &["a@b.c".into()], "t", now).await.is_err(), "a hub");
        let c = KeyPair::generate().unwrap();
        let (ct, _) = trust.new_token("n", Role::Connector, ttl, "", "t", now).await.unwrap();
        trust.enroll(&request(&ct, &c, Role::Connector), now).await.unwrap();
        let cid = c.machine_id().to_string();
        trust.grant_mail_commands(&cid, &["Ops@Example.org".into()], "t", now).await.unwrap();
        assert!(trust.mail_grant(&cid).await.unwrap().unwrap().allows("ops@example.org"));
        assert!(trust.withdraw_mail_commands(&cid).await.unwrap());
        assert!(trust.mail_grant(&cid).await.unwrap().is_none());
    }
}
