//! What the installer checks about enrollment before it changes anything: the token's form and
//! expiry, the cloud URL, and that the cloud answers `GET /v1/health` over verified HTTPS.
//! The enrollment exchange itself is the role's job at its first start: it reads the token the
//! installer leaves in its data directory.

use crate::InstallError;
use outpost_shared::keys::EnrollmentToken;
use std::path::Path;
use std::time::Duration;

/// How long the reachability check waits for the cloud.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(10);

/// Parses and checks an enrollment token.
pub fn check_token(text: &str) -> Result<EnrollmentToken, InstallError> {
    EnrollmentToken::parse(text).map_err(InstallError::BadToken)
}

/// Checks a cloud base URL and returns it without a trailing slash: `https://host[:port][/prefix]`.
pub fn check_cloud_url(url: &str) -> Result<String, InstallError> {
    let bad = |reason: &str| InstallError::BadCloudUrl { url: url.to_string(), reason: reason.to_string() };
    let parsed = reqwest::Url::parse(url.trim()).map_err(|e| bad(&e.to_string()))?;
    if parsed.scheme() != "https" {
        return Err(bad("the cloud is reached over HTTPS only; write https://…"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host name"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() || !parsed.username().is_empty() {
        return Err(bad("give the base URL only, without user, query or fragment"));
    }
    Ok(parsed.as_str().trim_end_matches('/').to_string())
}

/// `GET {base}/v1/health` must answer 2xx over HTTPS, trusting `ca_file` or the system roots.
/// Runs on a thread of its own with its own runtime, so it works whether or not the caller is
/// inside a tokio runtime.
pub fn check_cloud_reachable(
    base: &str,
    ca_file: Option<&Path>,
    timeout: Duration,
) -> Result<(), InstallError> {
    let url = format!("{base}/v1/health");
    let unreachable = |reason: String| InstallError::CloudUnreachable { url: base.to_string(), reason };
    let client =
        outpost_shared::tls::https_client(ca_file, timeout).map_err(|e| unreachable(e.to_string()))?;
    let probe = url.clone();
    let outcome = std::thread::spawn(move || -> Result<reqwest::StatusCode, String> {
        let rt =
            tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        rt.block_on(async {
            // reqwest's own timeout covers the whole request; this one guards the runtime too.
            match tokio::time::timeout(timeout + Duration::from_secs(1), client.get(&probe).send()).await {
                Ok(Ok(resp)) => Ok(resp.status()),
                Ok(Err(e)) => Err(outpost_shared::error_chain(&e)),
                Err(_) => Err(format!("no answer within {} s", timeout.as_secs())),
            }
        })
    })
    .join()
    .map_err(|_| unreachable("the check panicked".into()))?;
    match outcome {
        Ok(status) if status.is_success() => Ok(()),
        Ok(status) => Err(unreachable(format!("GET {url} answered {status}"))),
        Err(reason) => Err(unreachable(reason)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloud_urls_are_checked_and_normalised() {
        assert_eq!(check_cloud_url("https://cloud.example/").unwrap(), "https://cloud.example");
        assert_eq!(check_cloud_url("https://c.example:8443/op/").unwrap(), "https://c.example:8443/op");
        for bad in ["http://cloud.example", "cloud.example", "https://c.example/?a=b", "https://u@c.example"]
        {
            let err = check_cloud_url(bad).unwrap_err();
            assert!(matches!(err, InstallError::BadCloudUrl { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn bad_tokens_say_so() {
        let err = check_token("hello").unwrap_err();
        assert!(err.to_string().starts_with("bad token: malformed token"), "{err}");
    }
}
