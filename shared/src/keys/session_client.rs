//! The machine's side of a [session](super::session): one holder per link to the cloud, shared by
//! everything that talks over it (a hub's uploads and command polls, a connector's forwards, polls
//! and key fetches).
//!
//! It opens a session lazily on the first request, renews it at 80 % of its lifetime, and on a
//! `session_expired` answer opens a new one and sends the request once more. Whenever a session
//! cannot be had (an older cloud without the endpoints, a refused or failed open) the request is
//! signed with the machine key as before, and opening is tried again a minute later: a session
//! is a saving, never a condition for delivery.

use super::command_key::{CheckedCertificates, CommandKey};
use super::document::Signed;
use super::session::{
    check_answer, check_opened, finish_open_x25519, mac_request, open_request, open_request_x25519,
    ChallengeAnswer, OpenAnswer, SessionKey, HEADER_ANSWER_MAC,
};
use super::{sign_request, KeyPair, PublicKey};
use crate::model::{ApiError, RefusalCode};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long after a failed open requests are signed before opening is tried again (half to one
/// and a half times this, at random).
const RETRY_OPEN: Duration = Duration::from_secs(60);
/// The same for a peer that has no session endpoints (an older cloud).
const RETRY_OPEN_UNSUPPORTED: Duration = Duration::from_secs(600);
/// Deadline of each of the two open requests.
const OPEN_TIMEOUT: Duration = Duration::from_secs(20);

struct Live {
    ticket: String,
    key: SessionKey,
    renew_at: Instant,
    /// The last sequence number used; the next request takes the one after.
    seq: AtomicU64,
}

#[derive(Default)]
struct State {
    live: Option<Arc<Live>>,
    /// No open attempt before this instant (the last one failed).
    quiet_until: Option<Instant>,
}

/// A session with one cloud, see the module doc.
pub struct SessionClient {
    key: Arc<KeyPair>,
    cloud: PublicKey,
    state: tokio::sync::Mutex<State>,
    /// Sessions opened so far (for tests and logs).
    opened: AtomicU64,
    /// Share of a session's lifetime after which it is renewed before the next request.
    renew_at: f64,
    /// Command-key certificates already checked against `cloud` (X25519 logins).
    checked: CheckedCertificates,
}

impl std::fmt::Debug for SessionClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SessionClient({})", self.key.machine_id())
    }
}

/// An answer read in full, with whether its session MAC checked.
#[derive(Debug)]
pub struct Answer {
    pub status: reqwest::StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
    /// `None`: the request was signed with the machine key (no session), so the answer carries no
    /// MAC. `Some(true)`: the answer's MAC proves it comes from the session's cloud.
    pub authentic: Option<bool>,
}

impl Answer {
    /// Whether a data-bearing success may be believed: always on the signature path (as before
    /// sessions), only with a valid MAC on the session path.
    pub fn trusted(&self) -> bool {
        self.authentic != Some(false)
    }
}

enum Auth {
    Session { live: Arc<Live>, seq: u64, pairs: [(&'static str, String); 4] },
    Signed([(&'static str, String); 3]),
}

impl SessionClient {
    /// `cloud` is the cloud key pinned at enrollment: the login's exchange must be signed by a key
    /// it certified (or, with a cloud of an earlier version, the session key is sealed to it).
    pub fn new(key: Arc<KeyPair>, cloud: PublicKey) -> SessionClient {
        SessionClient {
            key,
            cloud,
            state: Default::default(),
            opened: AtomicU64::new(0),
            renew_at: 0.8,
            checked: CheckedCertificates::default(),
        }
    }

    /// Renews a session after `fraction` of its lifetime (0.8 unless changed). Above 1 a session
    /// is used until the cloud says it expired, which is how tests reach that path.
    pub fn renew_at(mut self, fraction: f64) -> SessionClient {
        self.renew_at = fraction;
        self
    }

    /// Sessions opened so far.
    pub fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// Sends one request to `base` + `path`: `signed` is what the MAC or signature covers (the JSON
    /// before compression), `wire` what goes on the wire; `decorate` adds content headers and a
    /// timeout. On a `session_expired` answer the session is opened again and the request sent
    /// once more with it.
    #[allow(clippy::too_many_arguments)]
    pub async fn send(
        &self,
        client: &reqwest::Client,
        base: &str,
        method: reqwest::Method,
        path: &str,
        signed: &[u8],
        wire: Vec<u8>,
        decorate: impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<Answer, String> {
        self.send_with(client, base, method, path, |_| Ok((signed.to_vec(), wire.clone())), decorate).await
    }

    /// [`SessionClient::send`] for a request whose body depends on how it is authenticated:
    /// `body(in_session)` gives what the MAC or signature covers and what goes on the wire. A
    /// command result, for one, travels bare in a session (the MAC proves its sender) and as a
    /// signed document otherwise.
    pub async fn send_with(
        &self,
        client: &reqwest::Client,
        base: &str,
        method: reqwest::Method,
        path: &str,
        body: impl Fn(bool) -> Result<(Vec<u8>, Vec<u8>), String>,
        decorate: impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<Answer, String> {
        let base = base.trim_end_matches('/');
        for attempt in 0..2 {
            let live = self.live(client, base).await;
            let (signed, wire) = body(live.is_some())?;
            let auth = self.authorize(live, method.as_str(), path, &signed).await?;
            let mut req = decorate(client.request(method.clone(), format!("{base}{path}")));
            match &auth {
                Auth::Session { pairs, .. } => {
                    for (n, v) in pairs {
                        req = req.header(*n, v);
                    }
                }
                Auth::Signed(pairs) => {
                    for (n, v) in pairs {
                        req = req.header(*n, v);
                    }
                }
            }
            let resp = req.body(wire).send().await.map_err(|e| crate::error_chain(&e))?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = resp.bytes().await.map_err(|e| crate::error_chain(&e))?.to_vec();
            let authentic = match &auth {
                Auth::Signed(_) => None,
                Auth::Session { live, seq, .. } => {
                    let mac = headers.get(HEADER_ANSWER_MAC).and_then(|v| v.to_str().ok());
                    Some(check_answer(&live.key, *seq, status.as_u16(), &body, mac))
                }
            };
            if let Auth::Session { live, .. } = &auth {
                if status.is_success() && !headers.contains_key(HEADER_ANSWER_MAC) {
                    // Something between here and the cloud (a proxy that passes only the headers
                    // it knows) drops the answer's MAC: no answer could ever be believed in a
                    // session, and a hub would resend the same batch for good. This answer is not
                    // believed; later requests are signed, as without sessions.
                    self.give_up(live, RETRY_OPEN_UNSUPPORTED).await;
                    tracing::warn!(machine = %self.key.machine_id(), header = HEADER_ANSWER_MAC,
                        "answers arrive without their session MAC (does a proxy drop the header?); signing requests with the machine key instead");
                }
                if status == reqwest::StatusCode::UNAUTHORIZED && session_expired(&body) {
                    self.drop_session(live).await;
                    if attempt == 0 {
                        tracing::debug!(machine = %self.key.machine_id(), "session ended at the cloud; opening a new one");
                        continue;
                    }
                }
            }
            return Ok(Answer { status, headers, body, authentic });
        }
        unreachable!("the loop returns on its second pass")
    }

    /// Forgets `live` if it is still the current session, and opens none for `quiet`.
    async fn give_up(&self, live: &Arc<Live>, quiet: Duration) {
        let mut st = self.state.lock().await;
        if st.live.as_ref().is_some_and(|l| Arc::ptr_eq(l, live)) {
            st.live = None;
            st.quiet_until = Some(Instant::now() + quiet);
        }
    }

    /// Forgets `live` if it is still the current session.
    async fn drop_session(&self, live: &Arc<Live>) {
        let mut st = self.state.lock().await;
        if st.live.as_ref().is_some_and(|l| Arc::ptr_eq(l, live)) {
            st.live = None;
        }
    }

    /// The session to send in: the current one, a new one if it is due for renewal, or none
    /// (opening failed lately: the request is signed instead).
    async fn live(&self, client: &reqwest::Client, base: &str) -> Option<Arc<Live>> {
        let now = Instant::now();
        // Held across the open so concurrent requests wait for one open instead of racing.
        let mut st = self.state.lock().await;
        match &st.live {
            Some(l) if l.renew_at > now => Some(l.clone()),
            _ if st.quiet_until.is_some_and(|q| q > now) => None,
            _ => match self.open(client, base).await {
                Ok(l) => {
                    st.quiet_until = None;
                    st.live = Some(l.clone());
                    Some(l)
                }
                Err((why, unsupported)) => {
                    tracing::info!(machine = %self.key.machine_id(), reason = %why,
                        "no session with the cloud; signing requests with the machine key for now");
                    st.live = None;
                    // Jittered: after a cloud restart (or one that refused logins while busy)
                    // thousands of machines must not all try again in the same second.
                    let quiet = if unsupported { RETRY_OPEN_UNSUPPORTED } else { RETRY_OPEN };
                    st.quiet_until = Some(now + quiet.mul_f64(0.5 + fastrand::f64()));
                    None
                }
            },
        }
    }

    /// The headers for one request: a MAC in `live`, or the machine key's signature without one.
    async fn authorize(
        &self,
        live: Option<Arc<Live>>,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<Auth, String> {
        let unix = chrono::Utc::now().timestamp();
        match live {
            Some(live) => {
                let seq = live.seq.fetch_add(1, Ordering::Relaxed) + 1;
                let h = mac_request(
                    &live.key,
                    self.key.machine_id(),
                    &live.ticket,
                    seq,
                    method,
                    path,
                    body,
                    unix,
                );
                Ok(Auth::Session { live, seq, pairs: h.to_pairs() })
            }
            None => {
                // An RSA private-key operation: off the async workers.
                let (key, method, path, body) =
                    (self.key.clone(), method.to_string(), path.to_string(), body.to_vec());
                let sig = tokio::task::spawn_blocking(move || {
                    sign_request(&key, &method, &path, &body, chrono::Utc::now())
                })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("cannot sign: {e}"))?;
                Ok(Auth::Signed(sig.to_pairs()))
            }
        }
    }

    /// The Ed25519 key to check the cloud's half of an X25519 login with, or None for an RSA-OAEP
    /// login. A cloud that offers an X25519 login proves its command key with a certificate by
    /// the pinned cloud key; one that does not (an earlier version) gets an RSA-OAEP login, unless
    /// this client has already seen a certificate: then the offer was more likely stripped on the
    /// way (a relaying connector sees the challenge answer in clear) than the cloud downgraded, and
    /// the machine signs its requests instead, trying again later.
    pub(super) fn exchange_key(
        &self,
        offered: Option<&Signed<CommandKey>>,
    ) -> Result<Option<[u8; 32]>, String> {
        match offered {
            Some(cert) => self.checked.key_of(cert, &self.cloud).map(Some).map_err(|e| {
                format!("the cloud's exchange key is not certified by the cloud key this machine enrolled with: {e}")
            }),
            None if self.checked.any() => Err(
                "the cloud offered an X25519 login before and this challenge answer offers none (removed on the way?)"
                    .into(),
            ),
            None => Ok(None),
        }
    }

    /// Challenge, then open. The error says whether the peer lacks the endpoints altogether.
    async fn open(&self, client: &reqwest::Client, base: &str) -> Result<Arc<Live>, (String, bool)> {
        let resp = client
            .get(format!("{base}/v1/machine-session/challenge"))
            .timeout(OPEN_TIMEOUT)
            .send()
            .await
            .map_err(|e| (crate::error_chain(&e), false))?;
        if matches!(resp.status(), reqwest::StatusCode::NOT_FOUND | reqwest::StatusCode::METHOD_NOT_ALLOWED) {
            return Err((format!("{} has no session endpoint ({})", base, resp.status()), true));
        }
        if !resp.status().is_success() {
            return Err((format!("challenge answered {}", resp.status()), false));
        }
        let challenge: ChallengeAnswer = resp.json().await.map_err(|e| (e.to_string(), false))?;
        let exchange_key = self.exchange_key(challenge.exchange_key.as_ref()).map_err(|e| (e, false))?;
        let (key, cloud) = (self.key.clone(), self.cloud.clone());
        let (req, pending) = tokio::task::spawn_blocking(move || match exchange_key {
            Some(_) => open_request_x25519(&key, &challenge.challenge).map(|(r, p)| (r, Pending::X25519(p))),
            None => open_request(&key, &cloud, &challenge.challenge).map(|(r, s)| (r, Pending::Sealed(s))),
        })
        .await
        .map_err(|e| (e.to_string(), false))?
        .map_err(|e| (e.to_string(), false))?;
        let started = Instant::now();
        let resp = client
            .post(format!("{base}/v1/machine-session"))
            .timeout(OPEN_TIMEOUT)
            .json(&req)
            .send()
            .await
            .map_err(|e| (crate::error_chain(&e), false))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            return Err((
                format!("opening answered {status}: {}", text.chars().take(200).collect::<String>()),
                false,
            ));
        }
        let answer: OpenAnswer = resp.json().await.map_err(|e| (e.to_string(), false))?;
        let not_the_cloud =
            || ("the session answer is not from the cloud this machine enrolled with".to_string(), false);
        let (session, login) = match (pending, exchange_key) {
            (Pending::X25519(p), Some(exchange_key)) => (
                finish_open_x25519(p, &answer, &exchange_key)
                    .map_err(|e| (format!("{}: {e}", not_the_cloud().0), false))?,
                "x25519",
            ),
            (Pending::Sealed(session), _) if check_opened(&session, &answer) => (session, "rsa-oaep"),
            _ => return Err(not_the_cloud()),
        };
        let lifetime = Duration::from_secs(answer.lifetime_secs);
        self.opened.fetch_add(1, Ordering::Relaxed);
        // Once per lifetime (an hour): worth a line, it says the cheap path is in use.
        tracing::info!(machine = %self.key.machine_id(), through = %base, lifetime_secs = answer.lifetime_secs, login, "machine session with the cloud opened");
        Ok(Arc::new(Live {
            ticket: answer.ticket,
            key: session,
            renew_at: started + lifetime.mul_f64(self.renew_at),
            seq: AtomicU64::new(0),
        }))
    }
}

/// A login between request and answer.
enum Pending {
    X25519(super::session::PendingExchange),
    Sealed(SessionKey),
}

/// Whether an answer body is the cloud's "open a new session" verdict.
pub fn session_expired(body: &[u8]) -> bool {
    std::str::from_utf8(body)
        .ok()
        .and_then(|t| serde_json::from_str::<ApiError>(t).ok())
        .is_some_and(|e| e.code == Some(RefusalCode::SessionExpired))
}
