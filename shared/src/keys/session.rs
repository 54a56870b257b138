//! Machine sessions: the machine key proves itself once, then a MAC per request.
//!
//! An RSA-PSS-3072 signature costs a hub about 8 ms of CPU per request. A session replaces it with
//! an HMAC-SHA-256 (microseconds) after one login:
//!
//! 1. `GET /v1/machine-session/challenge`: the cloud answers a [challenge](TicketKeys::challenge), 16
//!    random bytes and the time under an HMAC of the cloud's ticket key. It keeps nothing: any
//!    cloud node holding the same `cloud.key` checks it; it is good for [`CHALLENGE_VALID`].
//! 2. `POST /v1/machine-session` with an [`OpenRequest`], in one of two ways:
//!    - **X25519** (when the challenge answer carries the cloud's certified command key, see
//!      [`ChallengeAnswer::exchange_key`]): the machine draws an ephemeral X25519 key and signs,
//!      with its machine key, the challenge and its public half ([`open_request_x25519`]). The
//!      cloud checks the challenge and the signature against the enrolled key, draws its own
//!      ephemeral X25519 key, and signs the whole exchange with its Ed25519 command key
//!      ([`accept_open_x25519`]); the machine checks that signature against the certificate its
//!      pinned cloud key signed ([`finish_open_x25519`]). Both derive the session key from the
//!      shared secret (HKDF-SHA-256 over the exchange). The cloud's part costs about 0.2 ms (an
//!      RSA verification, an X25519, an Ed25519 signature), so a fleet of thousands logging in at
//!      once costs a cloud node seconds, not minutes. (No forward secrecy: the ticket carries the
//!      session key sealed under a key derived from `cloud.key`, see step 3.)
//!    - **RSA-OAEP** (with clouds that offer no command key): the machine draws a 32-byte session
//!      key and a 16-byte nonce, seals them with RSA-OAEP-SHA-256 to the cloud's public key (only
//!      the holder of `cloud.key` can read them) and signs, with its machine key, the challenge
//!      and the sealed bytes ([`open_request`]). The cloud checks the challenge, the signature,
//!      then opens the seal ([`accept_open`]), an RSA private-key operation of about 5 ms.
//!
//!    Either way the cloud answers an [`OpenAnswer`]: a **ticket** and its lifetime.
//! 3. The ticket is the session's state, kept by the machine, not by the cloud: the machine id, a
//!    session id, the expiry and the session key, encrypted and authenticated (AES-256-GCM) under
//!    the ticket key. The ticket key is derived (HKDF-SHA-256) from the cloud's private key, a file
//!    in the data directory, never in the database. So every cloud node derives the same one, and
//!    a copy of the database holds no session key and nothing to make or read tickets with.
//! 4. Each request then carries the ticket, a sequence number that rises per session, the time and
//!    an HMAC under the session key over the same canonical text a signature covers plus the
//!    sequence ([`SessionHeaders`]). The cloud opens the ticket, checks expiry, that the machine is
//!    still enrolled, the MAC (constant time), then the sequence in a [`ReplayWindow`].
//! 5. The cloud's answer carries [`HEADER_ANSWER_MAC`], an HMAC under the session key over the
//!    sequence, the status and the body's hash ([`answer_mac`]): a machine deletes data only on an
//!    acknowledgement that proves it came from whoever holds the session key.
//!
//! A stolen ticket gives nothing: without the session key inside it (which only the machine and,
//! while it checks a request, the cloud's memory hold) no MAC can be made.

use super::command_key::{CommandKey, CommandKeyPair};
use super::document::Signed;
use super::error::KeyError;
use super::machine::{KeyPair, MachineId, PublicKey};
use base64::Engine;
use ring::signature::{UnparsedPublicKey, ED25519};
use ring::{aead, agreement, hkdf, hmac};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Header with the session ticket (base64url).
pub const HEADER_SESSION: &str = "x-outpost-session";
/// Header with the request's sequence number in its session (decimal, from 1, rising).
pub const HEADER_SEQ: &str = "x-outpost-seq";
/// Header with the request's HMAC (base64).
pub const HEADER_MAC: &str = "x-outpost-mac";
/// Header of the cloud's answer to a session request: HMAC over sequence, status and body.
pub const HEADER_ANSWER_MAC: &str = "x-outpost-answer-mac";
/// How long a challenge can be used to open a session.
pub const CHALLENGE_VALID: Duration = Duration::from_secs(60);
/// How long a session lives unless the cloud is told otherwise.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);
/// How many sequence numbers behind the highest seen a request may arrive (reordered by HTTP/2
/// or by concurrent requests of one machine) and still be taken once.
pub const REPLAY_WINDOW: u64 = 64;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
const B64URL: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;
const TICKET_VERSION: u8 = 1;
const TICKET_AAD: &[u8] = b"outpost-ticket-v1";
/// machine id (32 hex) ‖ session id (16) ‖ expires_at (8, big endian) ‖ session key (32).
const TICKET_PLAIN: usize = 32 + 16 + 8 + 32;
const CHALLENGE_LEN: usize = 16 + 8 + 32;
/// Longest ticket text taken from a header (the real ones are about 160 characters).
const MAX_TICKET: usize = 512;

/// Why a session step was refused. The cloud maps each to a verdict: the ticket ones
/// ([`SessionError::is_reopen`]) tell the machine to open a new session and send again, nothing lost.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("session headers are malformed: {0}")]
    Malformed(String),
    #[error("the challenge is not one this cloud made, or older than {} s; ask for a new one", CHALLENGE_VALID.as_secs())]
    BadChallenge,
    #[error("the session request's signature does not verify against the machine's enrolled key")]
    BadSignature,
    #[error("the sealed session key cannot be opened with this cloud's key")]
    Undecryptable,
    #[error(
        "the session ticket is not one this cloud issued (another cloud key, or altered); open a new session"
    )]
    UnknownTicket,
    #[error("the session expired at {0}; open a new session")]
    Expired(i64),
    #[error("the session's MAC does not verify: the request was altered or made without the session key")]
    BadMac,
    #[error(
        "request {seq} of this session was seen before or is too old (highest {highest}); replay refused"
    )]
    Replayed { seq: u64, highest: u64 },
    #[error("request timestamp {timestamp} is {off_by_secs} s away from the cloud's clock (allowed {allowed_secs} s); check the clocks (NTP)")]
    Stale { timestamp: i64, off_by_secs: i64, allowed_secs: u64 },
    #[error("too many live sessions on this cloud node; retry later")]
    Full,
}

impl SessionError {
    /// The ticket cannot be used (expired, unknown, made with another cloud key): the machine
    /// should open a new session and send the same request again.
    pub fn is_reopen(&self) -> bool {
        matches!(self, SessionError::UnknownTicket | SessionError::Expired(_))
    }
}

/// A session key: 32 random bytes, wiped on drop, never printed.
#[derive(Clone)]
pub struct SessionKey(zeroize::Zeroizing<[u8; 32]>);

impl SessionKey {
    pub fn generate() -> Result<SessionKey, KeyError> {
        Ok(SessionKey(zeroize::Zeroizing::new(super::random_bytes::<32>()?)))
    }

    fn hmac(&self) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, self.0.as_slice())
    }
}

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(hidden)")
    }
}

/// The cloud's keys for challenges and tickets, derived from its private key: every node with the
/// same `cloud.key` derives the same ones; nothing of them is stored anywhere.
pub struct TicketKeys {
    challenge: hmac::Key,
    ticket: aead::LessSafeKey,
}

impl std::fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TicketKeys(hidden)")
    }
}

struct Len(usize);
impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

impl TicketKeys {
    /// HKDF-SHA-256 over the cloud's private key (PKCS#8), one output per use.
    pub fn derive(cloud: &KeyPair) -> TicketKeys {
        let pem = cloud.to_pkcs8_pem();
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"outpost-session-keys-v1").extract(pem.as_bytes());
        let expand = |info: &[u8]| -> zeroize::Zeroizing<[u8; 32]> {
            let mut out = zeroize::Zeroizing::new([0u8; 32]);
            prk.expand(&[info], Len(32))
                .and_then(|okm| okm.fill(out.as_mut_slice()))
                .expect("32 bytes is a valid HKDF-SHA-256 output length");
            out
        };
        let c = expand(b"challenge");
        let t = expand(b"ticket");
        TicketKeys {
            challenge: hmac::Key::new(hmac::HMAC_SHA256, c.as_slice()),
            ticket: aead::LessSafeKey::new(
                aead::UnboundKey::new(&aead::AES_256_GCM, t.as_slice()).expect("32-byte AES-256 key"),
            ),
        }
    }

    /// A fresh challenge: 16 random bytes ‖ unix time ‖ HMAC of both, base64url.
    pub fn challenge(&self, now: i64) -> Result<String, KeyError> {
        let mut out = Vec::with_capacity(CHALLENGE_LEN);
        out.extend_from_slice(&super::random_bytes::<16>()?);
        out.extend_from_slice(&now.to_be_bytes());
        let tag = hmac::sign(&self.challenge, &out);
        out.extend_from_slice(tag.as_ref());
        Ok(B64URL.encode(out))
    }

    /// Whether `challenge` was made by these keys less than [`CHALLENGE_VALID`] ago (5 s into the
    /// future are allowed for clocks of several nodes).
    pub fn check_challenge(&self, challenge: &str, now: i64) -> Result<(), SessionError> {
        if challenge.len() > 2 * CHALLENGE_LEN {
            return Err(SessionError::BadChallenge);
        }
        let raw = B64URL.decode(challenge.as_bytes()).map_err(|_| SessionError::BadChallenge)?;
        if raw.len() != CHALLENGE_LEN {
            return Err(SessionError::BadChallenge);
        }
        hmac::verify(&self.challenge, &raw[..24], &raw[24..]).map_err(|_| SessionError::BadChallenge)?;
        let made = i64::from_be_bytes(raw[16..24].try_into().expect("8 bytes"));
        let age = now.saturating_sub(made);
        if age > CHALLENGE_VALID.as_secs() as i64 || age < -5 {
            return Err(SessionError::BadChallenge);
        }
        Ok(())
    }

    /// Seals a ticket: a random 96-bit nonce per ticket (tickets are few: one per machine per
    /// session lifetime, far below the 2^32 a random-nonce GCM key allows).
    pub fn issue(&self, ticket: &Ticket) -> Result<String, KeyError> {
        let mut plain = zeroize::Zeroizing::new(Vec::with_capacity(TICKET_PLAIN + 16));
        plain.extend_from_slice(ticket.machine_id.as_str().as_bytes());
        plain.extend_from_slice(&ticket.session_id);
        plain.extend_from_slice(&ticket.expires_at.to_be_bytes());
        plain.extend_from_slice(ticket.key.0.as_slice());
        let nonce = super::random_bytes::<12>()?;
        self.ticket
            .seal_in_place_append_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(TICKET_AAD),
                &mut *plain,
            )
            .map_err(|_| KeyError::Rsa("ticket encryption failed".into()))?;
        let mut out = Vec::with_capacity(1 + 12 + plain.len());
        out.push(TICKET_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&plain);
        Ok(B64URL.encode(out))
    }

    /// Opens a ticket this cloud issued and checks that it has not expired.
    pub fn open(&self, text: &str, now: i64) -> Result<Ticket, SessionError> {
        if text.len() > MAX_TICKET {
            return Err(SessionError::UnknownTicket);
        }
        let raw = B64URL.decode(text.trim().as_bytes()).map_err(|_| SessionError::UnknownTicket)?;
        if raw.len() != 1 + 12 + TICKET_PLAIN + 16 || raw[0] != TICKET_VERSION {
            return Err(SessionError::UnknownTicket);
        }
        let nonce =
            aead::Nonce::try_assume_unique_for_key(&raw[1..13]).map_err(|_| SessionError::UnknownTicket)?;
        let mut sealed = zeroize::Zeroizing::new(raw[13..].to_vec());
        let plain = self
            .ticket
            .open_in_place(nonce, aead::Aad::from(TICKET_AAD), &mut sealed)
            .map_err(|_| SessionError::UnknownTicket)?;
        let machine = std::str::from_utf8(&plain[..32]).map_err(|_| SessionError::UnknownTicket)?;
        let machine_id = MachineId::parse(machine).map_err(|_| SessionError::UnknownTicket)?;
        let session_id: [u8; 16] = plain[32..48].try_into().expect("16 bytes");
        let expires_at = i64::from_be_bytes(plain[48..56].try_into().expect("8 bytes"));
        let key: [u8; 32] = plain[56..88].try_into().expect("32 bytes");
        if now >= expires_at {
            return Err(SessionError::Expired(expires_at));
        }
        Ok(Ticket { machine_id, session_id, expires_at, key: SessionKey(zeroize::Zeroizing::new(key)) })
    }
}

/// What a ticket holds. Only ever in memory on the cloud.
#[derive(Debug, Clone)]
pub struct Ticket {
    pub machine_id: MachineId,
    pub session_id: [u8; 16],
    /// Unix seconds.
    pub expires_at: i64,
    pub key: SessionKey,
}

/// `GET /v1/machine-session/challenge` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChallengeAnswer {
    pub challenge: String,
    /// The certificate of the cloud's Ed25519 command key, which also signs the cloud's half of
    /// an X25519 login: its presence says the cloud takes one. Clouds of earlier versions send
    /// none, and their machines log in with RSA-OAEP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange_key: Option<Signed<CommandKey>>,
}

/// `POST /v1/machine-session` body: exactly one of `sealed` and `x25519`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenRequest {
    pub machine_id: String,
    pub challenge: String,
    /// RSA-OAEP-SHA-256 to the cloud's key of session key (32) ‖ client nonce (16), base64.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sealed: String,
    /// The machine's ephemeral X25519 public key (32 bytes, base64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x25519: Option<String>,
    /// The machine key's RSA-PSS over [`open_text`] (or [`open_text_x25519`]), base64.
    pub signature: String,
}

/// `POST /v1/machine-session` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpenAnswer {
    pub ticket: String,
    /// Unix seconds, by the cloud's clock.
    pub expires_at: i64,
    /// Seconds the session lives from now: the machine renews by its own monotonic clock.
    pub lifetime_secs: u64,
    /// HMAC under the session key over ticket and expiry: proves the answer comes from the holder
    /// of the cloud key (only it could open the seal, or sign the exchange), base64.
    pub mac: String,
    /// An X25519 login: the cloud's ephemeral public key (32 bytes, base64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x25519: Option<String>,
    /// An X25519 login: the command key's Ed25519 signature over [`exchange_text`], base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange_signature: Option<String>,
}

fn open_text(machine: &str, challenge: &str, sealed: &str) -> Vec<u8> {
    format!("outpost-session-v1\n{machine}\n{challenge}\n{sealed}").into_bytes()
}

fn open_text_x25519(machine: &str, challenge: &str, x25519: &str) -> Vec<u8> {
    format!("outpost-session-v2\n{machine}\n{challenge}\n{x25519}").into_bytes()
}

/// What the cloud's command key signs in an X25519 login: both public halves, bound to the machine
/// and the challenge. The prefix cannot begin a signed document's message (`outpost-signed-v1`),
/// so no exchange signature can pass for a command.
fn exchange_text(machine: &str, challenge: &str, machine_x25519: &str, cloud_x25519: &str) -> Vec<u8> {
    format!("outpost-session-v2-exchange\n{machine}\n{challenge}\n{machine_x25519}\n{cloud_x25519}")
        .into_bytes()
}

/// The session key of an X25519 login: HKDF-SHA-256 over the shared secret, bound to the exchange.
fn exchange_session_key(shared: &[u8], exchange: &[u8]) -> SessionKey {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"outpost-session-v2").extract(shared);
    let mut key = zeroize::Zeroizing::new([0u8; 32]);
    prk.expand(&[exchange], Len(32))
        .and_then(|okm| okm.fill(key.as_mut_slice()))
        .expect("32 bytes is a valid HKDF-SHA-256 output length");
    SessionKey(key)
}

/// A 32-byte X25519 public key from base64, or why not.
fn x25519_public(b64: &str, whose: &str) -> Result<[u8; 32], SessionError> {
    if b64.len() > 64 {
        return Err(SessionError::Malformed(format!("{whose} X25519 key is too long")));
    }
    B64.decode(b64.as_bytes())
        .ok()
        .and_then(|k| <[u8; 32]>::try_from(k).ok())
        .ok_or_else(|| SessionError::Malformed(format!("{whose} X25519 key is not 32 bytes of base64")))
}

fn opened_text(ticket: &str, expires_at: i64, lifetime: u64) -> Vec<u8> {
    format!("outpost-session-opened-v1\n{ticket}\n{expires_at}\n{lifetime}").into_bytes()
}

/// The machine's side of step 2: a new session key, sealed to `cloud` and signed with `key`.
pub fn open_request(
    key: &KeyPair,
    cloud: &PublicKey,
    challenge: &str,
) -> Result<(OpenRequest, SessionKey), KeyError> {
    let session = SessionKey::generate()?;
    let mut secret = zeroize::Zeroizing::new(Vec::with_capacity(48));
    secret.extend_from_slice(session.0.as_slice());
    secret.extend_from_slice(&super::random_bytes::<16>()?);
    let sealed = B64.encode(cloud.oaep_encrypt(&secret)?);
    let machine = key.machine_id().to_string();
    let signature = B64.encode(key.sign_pss(&open_text(&machine, challenge, &sealed))?);
    Ok((
        OpenRequest {
            machine_id: machine,
            challenge: challenge.to_string(),
            sealed,
            x25519: None,
            signature,
        },
        session,
    ))
}

/// A machine's X25519 login between its request and the cloud's answer: its ephemeral private key
/// (used once, by [`finish_open_x25519`]) and what the exchange is bound to.
pub struct PendingExchange {
    private: agreement::EphemeralPrivateKey,
    machine: String,
    challenge: String,
    public: String,
}

impl std::fmt::Debug for PendingExchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PendingExchange({}, private key hidden)", self.machine)
    }
}

/// The machine's side of step 2 in an X25519 login: a fresh ephemeral key, its public half signed
/// with `key` together with the challenge.
pub fn open_request_x25519(
    key: &KeyPair,
    challenge: &str,
) -> Result<(OpenRequest, PendingExchange), KeyError> {
    let rng = ring::rand::SystemRandom::new();
    let private = agreement::EphemeralPrivateKey::generate(&agreement::X25519, &rng)
        .map_err(|_| KeyError::Rsa("no randomness for an X25519 key".into()))?;
    let public = private.compute_public_key().map_err(|_| KeyError::Rsa("X25519 public key".into()))?;
    let public = B64.encode(public.as_ref());
    let machine = key.machine_id().to_string();
    let signature = sign_open_x25519(key, challenge, &public)?;
    let req = OpenRequest {
        machine_id: machine.clone(),
        challenge: challenge.to_string(),
        sealed: String::new(),
        x25519: Some(public.clone()),
        signature,
    };
    Ok((req, PendingExchange { private, machine, challenge: challenge.to_string(), public }))
}

/// The machine key's signature (base64) over an X25519 login's challenge and public key.
pub fn sign_open_x25519(key: &KeyPair, challenge: &str, x25519: &str) -> Result<String, KeyError> {
    Ok(B64.encode(key.sign_pss(&open_text_x25519(key.machine_id().as_str(), challenge, x25519))?))
}

/// The machine's side of step 3 in an X25519 login: the answer's exchange must be signed by
/// `exchange_key` (the command key whose certificate the pinned cloud key signed) over this very
/// login, and its MAC must check under the derived session key. Anything else is not the cloud.
pub fn finish_open_x25519(
    pending: PendingExchange,
    answer: &OpenAnswer,
    exchange_key: &[u8; 32],
) -> Result<SessionKey, SessionError> {
    let (Some(cloud_public), Some(signature)) = (&answer.x25519, &answer.exchange_signature) else {
        return Err(SessionError::Malformed("the answer to an X25519 login carries no exchange".into()));
    };
    let peer = x25519_public(cloud_public, "the cloud's")?;
    let signature = B64
        .decode(signature.as_bytes())
        .map_err(|_| SessionError::Malformed("exchange signature is not base64".into()))?;
    let exchange = exchange_text(&pending.machine, &pending.challenge, &pending.public, cloud_public);
    UnparsedPublicKey::new(&ED25519, exchange_key)
        .verify(&exchange, &signature)
        .map_err(|_| SessionError::BadSignature)?;
    let key = agreement::agree_ephemeral(
        pending.private,
        &agreement::UnparsedPublicKey::new(&agreement::X25519, peer),
        |shared| exchange_session_key(shared, &exchange),
    )
    .map_err(|_| SessionError::Undecryptable)?;
    if !check_opened(&key, answer) {
        return Err(SessionError::BadSignature);
    }
    Ok(key)
}

/// The cloud's side of step 2, for a request whose machine is enrolled with `machine_key`: checks
/// the challenge, the signature (before the costly private-key operation), opens the seal and
/// issues the ticket.
pub fn accept_open(
    cloud: &KeyPair,
    tickets: &TicketKeys,
    req: &OpenRequest,
    machine_key: &PublicKey,
    now: i64,
    lifetime: Duration,
) -> Result<(OpenAnswer, Ticket), SessionError> {
    check_signed_open(
        tickets,
        req,
        machine_key,
        now,
        &open_text(&req.machine_id, &req.challenge, &req.sealed),
    )?;
    let sealed = B64
        .decode(req.sealed.as_bytes())
        .map_err(|_| SessionError::Malformed("sealed is not base64".into()))?;
    let secret = cloud.oaep_decrypt(&sealed).ok_or(SessionError::Undecryptable)?;
    if secret.len() != 48 {
        return Err(SessionError::Undecryptable);
    }
    let key: [u8; 32] = secret[..32].try_into().expect("32 bytes");
    issue_session(tickets, machine_key, SessionKey(zeroize::Zeroizing::new(key)), now, lifetime)
}

/// The cloud's side of step 2 in an X25519 login, for a request whose machine is enrolled with
/// `machine_key`: checks the challenge and the signature, draws the cloud's ephemeral key, signs
/// the exchange with `exchange_key` and issues the ticket for the derived session key.
pub fn accept_open_x25519(
    exchange_key: &CommandKeyPair,
    tickets: &TicketKeys,
    req: &OpenRequest,
    machine_key: &PublicKey,
    now: i64,
    lifetime: Duration,
) -> Result<(OpenAnswer, Ticket), SessionError> {
    let Some(machine_public) = req.x25519.as_deref().filter(|_| req.sealed.is_empty()) else {
        return Err(SessionError::Malformed("an X25519 login carries its key and no sealed key".into()));
    };
    let peer = x25519_public(machine_public, "the machine's")?;
    let signed = open_text_x25519(&req.machine_id, &req.challenge, machine_public);
    check_signed_open(tickets, req, machine_key, now, &signed)?;
    let rng = ring::rand::SystemRandom::new();
    let private = agreement::EphemeralPrivateKey::generate(&agreement::X25519, &rng)
        .map_err(|_| SessionError::Malformed("no randomness for an X25519 key".into()))?;
    let public =
        private.compute_public_key().map_err(|_| SessionError::Malformed("X25519 public key".into()))?;
    let cloud_public = B64.encode(public.as_ref());
    let exchange = exchange_text(&req.machine_id, &req.challenge, machine_public, &cloud_public);
    // A low-order point from the machine gives an all-zero secret, which ring refuses.
    let key = agreement::agree_ephemeral(
        private,
        &agreement::UnparsedPublicKey::new(&agreement::X25519, peer),
        |shared| exchange_session_key(shared, &exchange),
    )
    .map_err(|_| SessionError::Undecryptable)?;
    let (mut answer, ticket) = issue_session(tickets, machine_key, key, now, lifetime)?;
    answer.x25519 = Some(cloud_public);
    answer.exchange_signature = Some(B64.encode(exchange_key.sign_exchange(&exchange)));
    Ok((answer, ticket))
}

/// What every login must show before the cloud does more: the claimed machine is `machine_key`'s,
/// the challenge is this cloud's and fresh, and the machine key signed `signed`.
fn check_signed_open(
    tickets: &TicketKeys,
    req: &OpenRequest,
    machine_key: &PublicKey,
    now: i64,
    signed: &[u8],
) -> Result<(), SessionError> {
    if req.machine_id != machine_key.machine_id().as_str() {
        return Err(SessionError::BadSignature);
    }
    tickets.check_challenge(&req.challenge, now)?;
    let signature = B64
        .decode(req.signature.as_bytes())
        .map_err(|_| SessionError::Malformed("signature is not base64".into()))?;
    if !machine_key.verify_pss(signed, &signature) {
        return Err(SessionError::BadSignature);
    }
    Ok(())
}

/// The ticket and the answer for a session whose key both sides now hold.
fn issue_session(
    tickets: &TicketKeys,
    machine_key: &PublicKey,
    key: SessionKey,
    now: i64,
    lifetime: Duration,
) -> Result<(OpenAnswer, Ticket), SessionError> {
    let session_id = super::random_bytes::<16>().map_err(|e| SessionError::Malformed(e.to_string()))?;
    let lifetime_secs = lifetime.as_secs().max(1);
    let ticket = Ticket {
        machine_id: machine_key.machine_id().clone(),
        session_id,
        expires_at: now.saturating_add(lifetime_secs as i64),
        key,
    };
    let text = tickets.issue(&ticket).map_err(|e| SessionError::Malformed(e.to_string()))?;
    let mac = hmac::sign(&ticket.key.hmac(), &opened_text(&text, ticket.expires_at, lifetime_secs));
    let answer = OpenAnswer {
        ticket: text,
        expires_at: ticket.expires_at,
        lifetime_secs,
        mac: B64.encode(mac.as_ref()),
        x25519: None,
        exchange_signature: None,
    };
    Ok((answer, ticket))
}

/// The machine checks that the answer to its open request comes from the cloud it sealed to.
pub fn check_opened(session: &SessionKey, answer: &OpenAnswer) -> bool {
    let Ok(mac) = B64.decode(answer.mac.as_bytes()) else { return false };
    hmac::verify(&session.hmac(), &opened_text(&answer.ticket, answer.expires_at, answer.lifetime_secs), &mac)
        .is_ok()
}

/// The session headers of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionHeaders {
    pub ticket: String,
    pub seq: u64,
    /// Unix seconds.
    pub timestamp: i64,
    pub mac_b64: String,
}

impl SessionHeaders {
    /// Reads the headers of an incoming request: `Ok(None)` when it carries no session.
    pub fn from_header_map(
        headers: &reqwest::header::HeaderMap,
    ) -> Result<Option<SessionHeaders>, SessionError> {
        let Some(ticket) = headers.get(HEADER_SESSION) else { return Ok(None) };
        let get = |name: &'static str| -> Result<&str, SessionError> {
            headers
                .get(name)
                .ok_or_else(|| SessionError::Malformed(format!("{name} is missing")))?
                .to_str()
                .map_err(|_| SessionError::Malformed(format!("{name} is not ASCII")))
        };
        let ticket = ticket.to_str().map_err(|_| SessionError::Malformed("ticket is not ASCII".into()))?;
        let seq = get(HEADER_SEQ)?
            .trim()
            .parse::<u64>()
            .map_err(|_| SessionError::Malformed(format!("{HEADER_SEQ} must be a number")))?;
        let timestamp = get(super::request::HEADER_TIMESTAMP)?
            .trim()
            .parse::<i64>()
            .map_err(|_| SessionError::Malformed("timestamp must be unix seconds".into()))?;
        let mac_b64 = get(HEADER_MAC)?.trim().to_string();
        Ok(Some(SessionHeaders { ticket: ticket.trim().to_string(), seq, timestamp, mac_b64 }))
    }

    /// `(name, value)` pairs to add to an outgoing request.
    pub fn to_pairs(&self) -> [(&'static str, String); 4] {
        [
            (HEADER_SESSION, self.ticket.clone()),
            (HEADER_SEQ, self.seq.to_string()),
            (super::request::HEADER_TIMESTAMP, self.timestamp.to_string()),
            (HEADER_MAC, self.mac_b64.clone()),
        ]
    }
}

fn request_text(
    method: &str,
    path_and_query: &str,
    timestamp: i64,
    seq: u64,
    body: &[u8],
    machine: &MachineId,
    ticket: &str,
) -> Vec<u8> {
    format!(
        "outpost-session-request-v1\n{}\n{}:{}\n{}\n{}\n{}\n{}\n{}",
        method.to_ascii_uppercase(),
        path_and_query.len(),
        path_and_query,
        timestamp,
        seq,
        hex::encode(super::sha256(body)),
        machine,
        hex::encode(super::sha256(ticket.as_bytes())),
    )
    .into_bytes()
}

/// The machine authenticates one request in its session.
#[allow(clippy::too_many_arguments)]
pub fn mac_request(
    session: &SessionKey,
    machine: &MachineId,
    ticket: &str,
    seq: u64,
    method: &str,
    path_and_query: &str,
    body: &[u8],
    now: i64,
) -> SessionHeaders {
    let text = request_text(method, path_and_query, now, seq, body, machine, ticket);
    let mac = hmac::sign(&session.hmac(), &text);
    SessionHeaders { ticket: ticket.to_string(), seq, timestamp: now, mac_b64: B64.encode(mac.as_ref()) }
}

/// The cloud checks one session request against its opened ticket: time window, then the MAC in
/// constant time. The replay check ([`ReplayWindow`]) comes after, so a forged request cannot
/// move the window.
pub fn verify_mac(
    ticket: &Ticket,
    headers: &SessionHeaders,
    method: &str,
    path_and_query: &str,
    body: &[u8],
    now: i64,
    max_skew: Duration,
) -> Result<(), SessionError> {
    let off_by = now.saturating_sub(headers.timestamp).saturating_abs();
    if off_by as u64 > max_skew.as_secs() {
        return Err(SessionError::Stale {
            timestamp: headers.timestamp,
            off_by_secs: off_by,
            allowed_secs: max_skew.as_secs(),
        });
    }
    let mac = B64.decode(headers.mac_b64.as_bytes()).map_err(|_| SessionError::BadMac)?;
    let text = request_text(
        method,
        path_and_query,
        headers.timestamp,
        headers.seq,
        body,
        &ticket.machine_id,
        &headers.ticket,
    );
    hmac::verify(&ticket.key.hmac(), &text, &mac).map_err(|_| SessionError::BadMac)
}

fn answer_text(seq: u64, status: u16, body: &[u8]) -> Vec<u8> {
    format!("outpost-session-answer-v1\n{seq}\n{status}\n{}", hex::encode(super::sha256(body))).into_bytes()
}

/// The cloud's MAC over its answer to request `seq` (base64), for [`HEADER_ANSWER_MAC`].
pub fn answer_mac(session: &SessionKey, seq: u64, status: u16, body: &[u8]) -> String {
    B64.encode(hmac::sign(&session.hmac(), &answer_text(seq, status, body)).as_ref())
}

/// The machine checks the answer to its request `seq`.
pub fn check_answer(session: &SessionKey, seq: u64, status: u16, body: &[u8], mac_b64: Option<&str>) -> bool {
    let Some(mac) = mac_b64.and_then(|m| B64.decode(m.trim().as_bytes()).ok()) else { return false };
    hmac::verify(&session.hmac(), &answer_text(seq, status, body), &mac).is_ok()
}

/// The sequence numbers seen in one session: the highest, and which of the [`REPLAY_WINDOW`]
/// below it were seen (bit `i` = highest − i). A number is taken once; one older than the window
/// is refused (its sender, had it been genuine, would have sent it with a fresh number).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayWindow {
    highest: u64,
    seen: u64,
}

impl ReplayWindow {
    /// Takes `seq` if it is new; false for a replay or one too old.
    pub fn take(&mut self, seq: u64) -> bool {
        if seq == 0 {
            return false;
        }
        if seq > self.highest {
            let shift = seq - self.highest;
            self.seen = if shift >= REPLAY_WINDOW { 0 } else { self.seen << shift };
            self.seen |= 1;
            self.highest = seq;
            return true;
        }
        let back = self.highest - seq;
        if back >= REPLAY_WINDOW || self.seen & (1 << back) != 0 {
            return false;
        }
        self.seen |= 1 << back;
        true
    }

    pub fn highest(&self) -> u64 {
        self.highest
    }
}
