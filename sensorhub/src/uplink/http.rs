use super::{SendError, Transport};
use outpost_shared::keys::{KeyPair, SessionClient};
use outpost_shared::model::{ApiError, Batch, BatchAck, RefusalCode, Verdict};
use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use reqwest::StatusCode;
use std::sync::Arc;
use std::time::Duration;

/// When a busy receiver does not say how long to wait.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(5);

/// Largest upload (JSON bytes) compressed on the runtime's thread; larger ones go to a blocking
/// thread. A sampling round is a few KiB; a backlog upload of 5,000 readings about a megabyte.
const COMPRESS_INLINE_MAX: usize = 64 * 1024;

/// Uploads over HTTPS to `POST {base}/v1/batches`, gzip-compressed JSON signed with the
/// machine key (the signature covers the JSON itself, so it survives a connector unchanged), or,
/// straight to the cloud, authenticated in a machine session (one login, then a MAC per request).
#[derive(Clone)]
pub struct HttpTransport {
    client: reqwest::Client,
    url: String,
    key: Arc<KeyPair>,
    label: String,
    /// The machine session with the cloud, on the direct path only: a connector verifies hub
    /// batches itself and forwards them with the hub's own signature, which it cannot forge.
    session: Option<Arc<SessionClient>>,
}

impl HttpTransport {
    /// `label` is the path reported with each batch: `direct` or `connector:<id>`.
    pub fn new(client: reqwest::Client, base: &str, key: Arc<KeyPair>, label: String) -> Self {
        HttpTransport {
            client,
            url: format!("{}/v1/batches", base.trim_end_matches('/')),
            key,
            label,
            session: None,
        }
    }

    /// Sends through `session` from now on (the direct path to the cloud).
    pub fn with_session(mut self, session: Arc<SessionClient>) -> Self {
        self.session = Some(session);
        self
    }

    /// The machine session this transport uses, if any.
    pub fn session(&self) -> Option<&Arc<SessionClient>> {
        self.session.as_ref()
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// The receiver's base URL.
    pub fn base(&self) -> &str {
        self.url.trim_end_matches("/v1/batches")
    }

    /// Whether the receiver answers its health check now.
    pub async fn probe(&self) -> bool {
        let url = format!("{}/v1/health", self.base());
        matches!(self.client.get(url).send().await, Ok(r) if r.status().is_success())
    }
}

impl Transport for HttpTransport {
    async fn send(&self, batch: &mut Batch) -> Result<BatchAck, SendError> {
        batch.uplink = self.label.clone();
        let json = serde_json::to_vec(batch)
            .map_err(|e| SendError::Unreachable(format!("cannot encode batch: {e}")))?;
        if let Some(session) = &self.session {
            return self.send_in_session(session, json).await;
        }
        // An RSA signature takes milliseconds: not on the runtime's one thread.
        let key = self.key.clone();
        let (sig, body) = tokio::task::spawn_blocking(move || {
            let sig =
                outpost_shared::keys::sign_request(&key, "POST", "/v1/batches", &json, chrono::Utc::now());
            (sig, outpost_shared::wire::gzip(&json))
        })
        .await
        .expect("signing does not panic");
        let sig = sig.map_err(|e| SendError::Unreachable(format!("cannot sign: {e}")))?;
        let mut req = self
            .client
            .post(&self.url)
            .header(CONTENT_ENCODING, outpost_shared::wire::GZIP)
            .header(CONTENT_TYPE, "application/json");
        for (name, value) in sig.to_pairs() {
            req = req.header(name, value);
        }
        let resp = req
            .body(body)
            .send()
            .await
            .map_err(|e| SendError::Unreachable(outpost_shared::error_chain(&e)))?;
        let status = resp.status();
        if status.is_success() {
            return resp
                .json::<BatchAck>()
                .await
                .map_err(|e| SendError::Unreachable(outpost_shared::error_chain(&e)));
        }
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|secs| Duration::from_secs(secs).min(outpost_shared::backoff::MAX_ASKED_WAIT));
        let body = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => return Err(SendError::Unreachable(outpost_shared::error_chain(&e))),
        };
        Err(classify(status, retry_after, &body))
    }

    fn path(&self) -> String {
        self.label.clone()
    }
}

impl HttpTransport {
    async fn send_in_session(&self, session: &SessionClient, json: Vec<u8>) -> Result<BatchAck, SendError> {
        // A round's few readings compress in microseconds; a backlog's megabyte takes
        // milliseconds, which would hold up commands on the runtime's one thread.
        let (json, body) = if json.len() <= COMPRESS_INLINE_MAX {
            let body = outpost_shared::wire::gzip(&json);
            (json, body)
        } else {
            tokio::task::spawn_blocking(move || {
                let body = outpost_shared::wire::gzip(&json);
                (json, body)
            })
            .await
            .expect("compressing does not panic")
        };
        let answer = session
            .send(&self.client, self.base(), reqwest::Method::POST, "/v1/batches", &json, body, |r| {
                r.header(CONTENT_ENCODING, outpost_shared::wire::GZIP)
                    .header(CONTENT_TYPE, "application/json")
            })
            .await
            .map_err(SendError::Unreachable)?;
        if answer.status.is_success() {
            // Custody: only an acknowledgement the cloud authenticated lets the hub delete.
            if !answer.trusted() {
                return Err(SendError::Unreachable(
                    "acknowledgement without a valid session MAC; the batch is kept and sent again".into(),
                ));
            }
            return serde_json::from_slice::<BatchAck>(&answer.body)
                .map_err(|e| SendError::Unreachable(format!("unreadable acknowledgement: {e}")));
        }
        let retry_after = answer
            .headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|secs| Duration::from_secs(secs).min(outpost_shared::backoff::MAX_ASKED_WAIT));
        Err(classify(answer.status, retry_after, &answer.body))
    }
}

/// What a failed answer means for the readings in it (the custody rule). Only an explicit
/// verdict in the API's error body counts: a proxy, a load balancer or an old peer can answer any
/// status, and none of that is a decision about the data.
pub(super) fn classify(status: StatusCode, retry_after: Option<Duration>, body: &[u8]) -> SendError {
    // Invalid UTF-8 inside a string serde skips is accepted by `from_slice`; check it first.
    let api = std::str::from_utf8(body).ok().and_then(|t| serde_json::from_str::<ApiError>(t).ok());
    let message = match &api {
        Some(e) => e.error.clone(),
        None => String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
    };
    let (verdict, code, accept) = match &api {
        Some(e) => (e.verdict, e.code, e.accept),
        None => (None, None, None),
    };
    if status == StatusCode::PAYLOAD_TOO_LARGE || code == Some(RefusalCode::TooLarge) {
        return SendError::TooLarge(format!("{status}: {message}"));
    }
    match verdict {
        Some(Verdict::Refused) => SendError::Refused { status: status.as_u16(), message, code, accept },
        Some(Verdict::RetryLater)
            if code == Some(RefusalCode::Busy)
                || matches!(status, StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS) =>
        {
            SendError::Busy(retry_after.unwrap_or(DEFAULT_RETRY_AFTER))
        }
        Some(Verdict::RetryLater) => SendError::Unreachable(format!("{status}, retry later: {message}")),
        None => match status {
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => {
                SendError::Busy(retry_after.unwrap_or(DEFAULT_RETRY_AFTER))
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                SendError::Unauthorised { status: status.as_u16(), message }
            }
            s => SendError::Unreachable(format!("{s} without a verdict (kept, retrying later): {message}")),
        },
    }
}
