//! The operator's side of the API for command-line tools on the cloud's own host: `outpost token`
//! makes and lists enrollment tokens, `outpost user` and `outpost customer` make people and
//! customers, through the running cloud, with the admin token and the certificate authority it
//! finds in the cloud's data directory. The cloud takes that token only from its own host
//! (loopback) and records what it does as `local-admin`. Going through the API (not the
//! database) is deliberate: sled allows one process, and the running cloud is that process.

use crate::config::CloudConfig;
use std::path::PathBuf;
use std::time::Duration;

/// Why an admin call failed, phrased so the operator knows what to check.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot read {path}: {source}; is this the cloud's config, and has the cloud started once?")]
    Read { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Tls(#[from] outpost_shared::tls::TlsError),
    #[error("cannot reach the cloud at {url}: {cause}; is it running?")]
    Unreachable { url: String, cause: String },
    #[error("the cloud answered {status}: {body}")]
    Refused { status: u16, body: String },
}

/// An authenticated connection to the cloud's admin API.
pub struct AdminClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl AdminClient {
    /// Reaches the cloud that `config` describes, over loopback when it listens on every address.
    pub fn from_config(config: &CloudConfig) -> Result<AdminClient, AdminError> {
        let dir = &config.data_dir;
        let token_file = dir.join("admin-token");
        let token = std::fs::read_to_string(&token_file)
            .map_err(|source| AdminError::Read { path: token_file.clone(), source })?
            .trim()
            .to_string();
        // The same trust anchor hubs are given: the configured certificate or the self-made CA.
        let ca = match &config.tls {
            Some(t) => t.cert.clone(),
            None => outpost_shared::tls::CertPaths::in_dir(&dir.join("tls")).ca,
        };
        if let Err(source) = std::fs::metadata(&ca) {
            return Err(AdminError::Read { path: ca, source });
        }
        let http = outpost_shared::tls::https_client(Some(&ca), Duration::from_secs(15))?;
        let host = match config.listen.ip() {
            ip if ip.is_unspecified() => "127.0.0.1".to_string(),
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
            ip => ip.to_string(),
        };
        Ok(AdminClient { base: format!("https://{host}:{}", config.listen.port()), token, http })
    }

    /// A new one-time enrollment token for one machine of `network` in `role`, valid for `ttl`.
    /// Answers the API's `{"token","id","network","role","expires_at"}`.
    pub async fn new_token(
        &self,
        network: &str,
        role: outpost_shared::model::Role,
        ttl: Duration,
        label: &str,
    ) -> Result<serde_json::Value, AdminError> {
        let body = serde_json::json!({
            "network": network, "role": role, "label": label,
            "ttl": humantime::format_duration(ttl).to_string(),
        });
        self.send(self.http.post(self.url("/v1/enrollment-tokens")).json(&body)).await
    }

    /// Cancels an open token by its id (as `open_tokens` lists it).
    pub async fn cancel_token(&self, id: &str) -> Result<serde_json::Value, AdminError> {
        self.send(self.http.delete(self.url(&format!("/v1/enrollment-tokens/{id}")))).await
    }

    /// The tokens not yet used and not expired (never their secret: the cloud keeps only a hash).
    pub async fn open_tokens(&self) -> Result<serde_json::Value, AdminError> {
        self.send(self.http.get(self.url("/v1/enrollment-tokens"))).await
    }

    /// Makes a user (`owner`, and/or grants as `{"customer","role"}`); the cloud hashes the password.
    pub async fn add_user(
        &self,
        name: &str,
        password: &str,
        owner: bool,
        grants: &[crate::store::people::Grant],
    ) -> Result<serde_json::Value, AdminError> {
        let body = serde_json::json!({"name": name, "password": password, "owner": owner, "grants": grants});
        self.send(self.http.post(self.url("/v1/users")).json(&body)).await
    }

    /// Every user, with grants and lock state (never a password hash).
    pub async fn users(&self) -> Result<serde_json::Value, AdminError> {
        self.send(self.http.get(self.url("/v1/users"))).await
    }

    /// Sets (`Some`) or removes (`None`) a user's role in one customer (`*`: all).
    pub async fn set_grant(
        &self,
        user: &str,
        customer: &str,
        role: Option<crate::store::people::Role>,
    ) -> Result<serde_json::Value, AdminError> {
        let body = serde_json::json!({"role": role});
        self.send(self.http.put(self.url(&format!("/v1/users/{user}/grants/{customer}"))).json(&body)).await
    }

    /// Makes a customer holding `networks`.
    pub async fn add_customer(
        &self,
        id: &str,
        name: &str,
        networks: &[String],
    ) -> Result<serde_json::Value, AdminError> {
        let body = serde_json::json!({"id": id, "name": name, "networks": networks});
        self.send(self.http.post(self.url("/v1/customers")).json(&body)).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<serde_json::Value, AdminError> {
        let unreachable = |e: reqwest::Error| AdminError::Unreachable {
            url: self.base.clone(),
            cause: outpost_shared::error_chain(&e),
        };
        let resp = req.bearer_auth(&self.token).send().await.map_err(unreachable)?;
        let status = resp.status();
        let text = resp.text().await.map_err(unreachable)?;
        if !status.is_success() {
            return Err(AdminError::Refused { status: status.as_u16(), body: text });
        }
        serde_json::from_str(&text).map_err(|e| AdminError::Refused {
            status: status.as_u16(),
            body: format!("not JSON ({e}): {text}"),
        })
    }
}
