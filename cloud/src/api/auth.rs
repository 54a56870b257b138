//! Who is asking: people (a session cookie, an API token, or the CLI's host-side admin token) and
//! machines (signatures). [`authenticate`] turns a person's credential into the request's
//! [`Actor`], which every people route then asks ([`Actor::can`]); it also refuses cross-site
//! state changes made with the cookie.

use super::{err, internal, AppState};
use crate::people::Actor;
use crate::trust::Refusal;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use outpost_shared::http_server::episode::Episode;
use outpost_shared::keys::session::{SessionKey, HEADER_ANSWER_MAC};
use outpost_shared::keys::{SessionError, SessionHeaders, SignedHeaders, VerifyError};
use outpost_shared::model::{ApiError, RefusalCode, Verdict};
use std::net::SocketAddr;

/// The session cookie. `__Host-`: browsers accept it only with `Secure`, `Path=/` and no
/// `Domain`, so no other host (or plain-HTTP page) can set or shadow it.
pub(super) const SESSION_COOKIE: &str = "__Host-outpost_session";

/// `Set-Cookie` for a new session: never readable by scripts, never sent cross-site. No
/// `Max-Age`: the browser forgets it when closed, the cloud ends it when idle or old.
pub(super) fn session_cookie(value: &str) -> String {
    format!("{SESSION_COOKIE}={value}; Path=/; Secure; HttpOnly; SameSite=Strict")
}

/// `Set-Cookie` that removes the session cookie (sign-out).
pub(super) fn cleared_cookie() -> String {
    format!("{SESSION_COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0")
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    v.strip_prefix("Bearer ").map(str::trim)
}

/// The session cookie's value, if the request carries one (at most 128 bytes are looked at).
pub(super) fn presented_session(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(SESSION_COOKIE)?.strip_prefix('=').map(str::to_string))
        .filter(|v| !v.is_empty() && v.len() <= 128)
}

/// Does the request come from the cloud's own host: over loopback, or from the very address the
/// cloud listens on (a TCP connection cannot be opened with that source from elsewhere: the
/// handshake's answer would go to the cloud itself).
fn from_this_host<B>(req: &Request<B>, listen: std::net::IpAddr) -> bool {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .is_some_and(|ConnectInfo(a)| a.ip().is_loopback() || (!listen.is_unspecified() && a.ip() == listen))
}

/// Is this request from a page of this very origin? `Sec-Fetch-Site` where the browser sends it,
/// else `Origin` against the host the request was sent to. `strict`: a request with neither
/// header is refused too (every browser sends `Origin` on a cross-origin or non-GET fetch).
pub(super) fn same_origin(headers: &HeaderMap, uri: &axum::http::Uri, strict: bool) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return site.as_bytes() == b"same-origin";
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else { return !strict };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()));
    host.is_some_and(|h| origin.eq_ignore_ascii_case(&format!("https://{h}")))
}

/// Authenticates a person and puts the [`Actor`] into the request. In order: the CLI's admin
/// token (from the cloud's own host only, see [`from_this_host`]), an API token, the session
/// cookie. A state-changing
/// request authenticated by the cookie must come from this origin (`SameSite=Strict` already
/// keeps the cookie off cross-site requests; this is the second lock).
pub(super) async fn authenticate(
    State(st): State<AppState>,
    mut req: Request<axum::body::Body>,
    next: Next,
) -> Response {
    let now = chrono::Utc::now();
    let actor = match bearer(req.headers()) {
        Some(t) if crate::people::secret::same(t, &st.admin_token) => {
            if !from_this_host(&req, st.config.listen.ip()) {
                return err(
                    StatusCode::UNAUTHORIZED,
                    "the admin token works only on the cloud's own host (for the outpost CLI); sign in, or use an API token",
                );
            }
            Actor::local_admin()
        }
        Some(t) => match st.people.api_token(t, now).await {
            Ok(Some(a)) => a,
            Ok(None) => {
                return err(StatusCode::UNAUTHORIZED, "unknown, expired or revoked API token; make a new one")
            }
            Err(e) => return internal(e),
        },
        None => match presented_session(req.headers()) {
            Some(c) => match st.people.session(&c, now).await {
                Ok(Some(u)) if st.people.lacks_required_totp(&u) => Actor::without_second_factor(&u, true),
                Ok(Some(u)) => Actor::user(&u, true),
                Ok(None) => {
                    return err(StatusCode::UNAUTHORIZED, "signed out or session expired; sign in again")
                }
                Err(e) => return internal(e),
            },
            None => {
                return err(
                    StatusCode::UNAUTHORIZED,
                    "sign in on the dashboard, or send `Authorization: Bearer <API token>`",
                )
            }
        },
    };
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if actor.by_cookie && !safe && !same_origin(req.headers(), req.uri(), true) {
        tracing::warn!(who = %actor.label(), method = %req.method(), path = %req.uri().path(), "cross-site request refused");
        return err(
            StatusCode::FORBIDDEN,
            "cross-site request refused: state changes come from the dashboard's own pages",
        );
    }
    req.extensions_mut().insert(actor);
    next.run(req).await
}

// The error side of these helpers is the finished HTTP response; it lives for one request.
#[allow(clippy::result_large_err)]
/// Checks a machine request against the signer's enrolled key: an RSA signature, or a MAC in a
/// machine session. `skew` as in [`Trust::verify`] (session requests are always live, so always
/// checked against the window).
pub(super) async fn check_signed(
    st: &AppState,
    headers: &HeaderMap,
    method: &str,
    path: &str,
    body: &[u8],
    skew: Option<std::time::Duration>,
) -> Result<crate::trust::MachineKey, Response> {
    check_machine(st, headers, method, path, body, skew).await.map(|s| s.key)
}

/// Who sent a machine request, and how to authenticate the answer to it.
pub(super) struct Signer {
    pub(super) key: crate::trust::MachineKey,
    /// The session key and the request's sequence number, when it came in a session.
    session: Option<(SessionKey, u64)>,
}

impl Signer {
    /// Whether the request came in a machine session (a MAC under the session key), not signed.
    pub(super) fn in_session(&self) -> bool {
        self.session.is_some()
    }

    /// The answer as it goes out: in a session, with [`HEADER_ANSWER_MAC`] over its sequence
    /// number, status and body, so the machine can tell the cloud's acknowledgement from any
    /// other (it deletes data only on one that checks).
    pub(super) async fn seal(&self, response: Response) -> Response {
        let Some((key, seq)) = &self.session else { return response };
        let (mut parts, body) = response.into_parts();
        let bytes = match axum::body::to_bytes(body, usize::MAX).await {
            Ok(b) => b,
            Err(e) => return super::internal(e),
        };
        let mac = outpost_shared::keys::session::answer_mac(key, *seq, parts.status.as_u16(), &bytes);
        if let Ok(v) = header::HeaderValue::from_str(&mac) {
            parts.headers.insert(HEADER_ANSWER_MAC, v);
        }
        Response::from_parts(parts, axum::body::Body::from(bytes))
    }
}

#[allow(clippy::result_large_err)]
/// [`check_signed`], keeping what [`Signer::seal`] needs to authenticate the answer.
pub(super) async fn check_machine(
    st: &AppState,
    headers: &HeaderMap,
    method: &str,
    path: &str,
    body: &[u8],
    skew: Option<std::time::Duration>,
) -> Result<Signer, Response> {
    match SessionHeaders::from_header_map(headers) {
        Ok(Some(h)) => {
            let (key, ticket) = st.trust.verify_session(&h, method, path, body).await.map_err(refused)?;
            Ok(Signer { key, session: Some((ticket.key, h.seq)) })
        }
        Ok(None) => {
            let sig = SignedHeaders::from_header_map(headers).map_err(|e| refused(Refusal::Unsigned(e)))?;
            let key = st.trust.verify(&sig, method, path, body, skew).await.map_err(refused)?;
            Ok(Signer { key, session: None })
        }
        Err(e) => Err(refused(Refusal::Session(e))),
    }
}

/// Refused machine requests are logged once per episode: anyone can send unsigned requests, or
/// claim a known machine's id, as fast as they like, and must not flood the log with them.
static REFUSED: Episode = Episode::new("refused machine requests");

pub(super) fn refused(r: Refusal) -> Response {
    if REFUSED.hit() {
        tracing::warn!(reason = %r, "machine request refused; more are counted until 10 s pass without one");
    }
    let (status, verdict, code) = verdict_of(&r);
    let mut response = (status, axum::Json(ApiError::verdict(r.to_string(), verdict, code))).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static(super::RETRY_AFTER));
    }
    response
}

/// What a failed signature check means for data the request carried (custody rule): a signature
/// that does not check is forged for good, but a signer the cloud does not know (yet, or any more:
/// enrolled after a restore, revoked by mistake) or a signing time off the cloud's clock can
/// change, so the sender keeps its data and retries.
pub(super) fn verdict_of(r: &Refusal) -> (StatusCode, Verdict, RefusalCode) {
    match r {
        Refusal::Enroll(_) => (StatusCode::FORBIDDEN, Verdict::Refused, RefusalCode::Other),
        Refusal::NotEnrolled(_) => (StatusCode::UNAUTHORIZED, Verdict::RetryLater, RefusalCode::NotEnrolled),
        Refusal::Revoked(..) => (StatusCode::UNAUTHORIZED, Verdict::RetryLater, RefusalCode::Revoked),
        Refusal::Bad(VerifyError::Stale { .. }) => {
            (StatusCode::UNAUTHORIZED, Verdict::RetryLater, RefusalCode::Other)
        }
        // The ticket cannot be used (expired, or not this cloud's): the sender opens a new
        // session and sends again; nothing is decided about the data.
        Refusal::Session(e) if e.is_reopen() => {
            (StatusCode::UNAUTHORIZED, Verdict::RetryLater, RefusalCode::SessionExpired)
        }
        // A replay: the genuine request was answered already; a genuine sender never gets this
        // (every send takes a new sequence number) and would keep its data if it did.
        Refusal::Session(SessionError::Replayed { .. }) => {
            (StatusCode::CONFLICT, Verdict::RetryLater, RefusalCode::Other)
        }
        Refusal::Session(SessionError::Stale { .. } | SessionError::BadChallenge) => {
            (StatusCode::UNAUTHORIZED, Verdict::RetryLater, RefusalCode::Other)
        }
        Refusal::Session(SessionError::Full) => {
            (StatusCode::SERVICE_UNAVAILABLE, Verdict::RetryLater, RefusalCode::Busy)
        }
        Refusal::Unsigned(_) | Refusal::Bad(_) | Refusal::Session(_) => {
            (StatusCode::UNAUTHORIZED, Verdict::Refused, RefusalCode::Forged)
        }
        // Nothing was decided: the records could not be read now.
        Refusal::Storage(_) => (StatusCode::SERVICE_UNAVAILABLE, Verdict::RetryLater, RefusalCode::Storage),
        Refusal::Busy => (StatusCode::SERVICE_UNAVAILABLE, Verdict::RetryLater, RefusalCode::Busy),
    }
}

#[allow(clippy::result_large_err)]
/// The signer of a machine request, which must be an enrolled connector.
pub(super) async fn connector_signed(
    st: &AppState,
    headers: &HeaderMap,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<crate::trust::MachineKey, Response> {
    connector_machine(st, headers, method, path, body).await.map(|s| s.key)
}

#[allow(clippy::result_large_err)]
/// [`connector_signed`], keeping what [`Signer::seal`] needs.
pub(super) async fn connector_machine(
    st: &AppState,
    headers: &HeaderMap,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<Signer, Response> {
    match check_machine(st, headers, method, path, body, Some(crate::trust::MAX_SKEW)).await? {
        s if s.key.role == outpost_shared::model::Role::Connector => Ok(s),
        s => Err(err(StatusCode::FORBIDDEN, format!("{} is not enrolled as a connector", s.key.machine_id))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(peer: [u8; 4]) -> Request<()> {
        let mut r = Request::new(());
        r.extensions_mut().insert(ConnectInfo(SocketAddr::from((peer, 40000))));
        r
    }

    #[test]
    fn the_admin_token_is_local_to_the_cloud_host() {
        let any: std::net::IpAddr = [0, 0, 0, 0].into();
        let own: std::net::IpAddr = [10, 9, 0, 1].into();
        assert!(from_this_host(&from([127, 0, 0, 1]), any));
        assert!(!from_this_host(&from([10, 9, 0, 1]), any), "unknown own addresses count as remote");
        assert!(from_this_host(&from([10, 9, 0, 1]), own), "the listening address itself");
        assert!(!from_this_host(&from([10, 9, 0, 2]), own));
        assert!(!from_this_host(&Request::new(()), own), "no peer known: not local");
    }
}
