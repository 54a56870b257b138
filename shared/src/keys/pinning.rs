//! Certificate pinning for the LAN link: a hub talks to a connector only if the connector presents
//! exactly the certificate whose fingerprint the cloud listed for it in the enrollment receipt.
//!
//! No authority is involved, so host names and validity dates are not checked: the pin alone says
//! which certificate is right, and the cloud's list is where it changes. The handshake signature
//! is still verified, so presenting a copied certificate without its private key fails.

use super::error::KeyError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use std::fmt;
use std::sync::Arc;

/// SHA-256 over a certificate's DER encoding; shown and parsed as 64 hex characters (colons
/// between bytes, as some tools print them, are accepted on input).
#[derive(Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CertFingerprint([u8; 32]);

impl CertFingerprint {
    pub fn of_der(der: &[u8]) -> CertFingerprint {
        CertFingerprint(super::sha256(der))
    }

    /// Fingerprint of the first certificate in a PEM file (a connector's `cert.pem`).
    pub fn of_pem_file(path: &std::path::Path) -> Result<CertFingerprint, crate::tls::TlsError> {
        let certs = crate::tls::load_certs(path)?;
        Ok(CertFingerprint::of_der(&certs[0]))
    }

    pub fn parse(text: &str) -> Result<CertFingerprint, KeyError> {
        let bad = || KeyError::BadCertFingerprint(text.chars().take(120).collect());
        let compact: String = text.trim().chars().filter(|c| *c != ':').collect();
        let bytes = hex::decode(compact).map_err(|_| bad())?;
        Ok(CertFingerprint(bytes.try_into().map_err(|_| bad())?))
    }
}

impl fmt::Display for CertFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for CertFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CertFingerprint({self})")
    }
}

impl TryFrom<String> for CertFingerprint {
    type Error = KeyError;
    fn try_from(text: String) -> Result<Self, KeyError> {
        CertFingerprint::parse(&text)
    }
}

impl From<CertFingerprint> for String {
    fn from(fp: CertFingerprint) -> String {
        fp.to_string()
    }
}

impl std::str::FromStr for CertFingerprint {
    type Err = KeyError;
    fn from_str(text: &str) -> Result<Self, KeyError> {
        CertFingerprint::parse(text)
    }
}

/// Accepts a server certificate if and only if its fingerprint is the pinned one; with no pin,
/// any certificate (see [`enrollment_https_client`] for the one place that is right).
#[derive(Debug)]
pub struct PinnedCertVerifier {
    pinned: Option<CertFingerprint>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinnedCertVerifier {
    pub fn new(pinned: CertFingerprint) -> PinnedCertVerifier {
        Self::with_pin(Some(pinned))
    }

    fn with_pin(pinned: Option<CertFingerprint>) -> PinnedCertVerifier {
        PinnedCertVerifier {
            pinned,
            algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        }
    }
}

struct PinMismatch {
    presented: CertFingerprint,
    pinned: CertFingerprint,
}

impl fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "server certificate {} is not the pinned {}; the connector's certificate changed or this \
             is not the connector the cloud authorised",
            self.presented, self.pinned
        )
    }
}

// rustls shows the reason of a certificate error with `Debug`, so that is the readable form too.
impl fmt::Debug for PinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for PinMismatch {}

impl ServerCertVerifier for PinnedCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = CertFingerprint::of_der(end_entity);
        match self.pinned {
            None => Ok(ServerCertVerified::assertion()),
            Some(pinned) if presented == pinned => Ok(ServerCertVerified::assertion()),
            Some(pinned) => Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(PinMismatch { presented, pinned })),
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A TLS 1.3 client configuration that trusts exactly the pinned certificate.
pub fn pinned_client_config(pinned: CertFingerprint) -> Arc<rustls::ClientConfig> {
    client_config(Some(pinned))
}

fn client_config(pinned: Option<CertFingerprint>) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("ring supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCertVerifier::with_pin(pinned)))
        .with_no_client_auth();
    let mut cfg = cfg;
    crate::tls::offer_http2(&mut cfg);
    Arc::new(cfg)
}

/// An HTTPS client for one connector, trusting only its pinned certificate.
pub fn pinned_https_client(
    pinned: CertFingerprint,
    timeout: std::time::Duration,
) -> Result<reqwest::Client, crate::tls::TlsError> {
    https_client(Some(pinned), timeout)
}

/// An HTTPS client for enrolling through a connector, which accepts any certificate: before its
/// receipt a hub has no pin yet. That is safe only because of what crosses it: the token is sealed
/// to the cloud key whose fingerprint the token carries, bound to the hub's own key, and the
/// receipt comes back signed by that cloud key. A rogue connector sees ciphertext and can neither
/// use the token for another key nor forge the receipt. Use it for nothing else.
pub fn enrollment_https_client(
    timeout: std::time::Duration,
) -> Result<reqwest::Client, crate::tls::TlsError> {
    https_client(None, timeout)
}

fn https_client(
    pinned: Option<CertFingerprint>,
    timeout: std::time::Duration,
) -> Result<reqwest::Client, crate::tls::TlsError> {
    reqwest::Client::builder()
        .use_preconfigured_tls((*client_config(pinned)).clone())
        .https_only(true)
        .timeout(timeout)
        .connect_timeout(timeout.min(std::time::Duration::from_secs(10)))
        .pool_idle_timeout(std::time::Duration::from_secs(50))
        .build()
        .map_err(|e| crate::tls::TlsError::Roots(e.to_string()))
}
