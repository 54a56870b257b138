//! TLS for every link (rustls, TLS 1.3 preferred). Servers load a certificate from config or, on
//! first start, make a private authority and a server certificate signed by it; clients trust a
//! configured CA file or the system roots, and check host names either way.

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: no PEM certificate found; give a PEM file with a `BEGIN CERTIFICATE` block")]
    NoCertificate { path: PathBuf },
    #[error("{path}: no PEM private key found; give a PEM file with a `BEGIN PRIVATE KEY` block")]
    NoKey { path: PathBuf },
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("no usable trust roots: {0}")]
    Roots(String),
}

/// Where a server's certificate material lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPaths {
    /// The authority hubs must trust (`ca.pem`); for a bought certificate, the issuer chain.
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertPaths {
    pub fn in_dir(dir: &Path) -> Self {
        CertPaths { ca: dir.join("ca.pem"), cert: dir.join("cert.pem"), key: dir.join("key.pem") }
    }
}

/// Makes a private CA and a server certificate for `names` (host names or IP addresses) in `dir`,
/// unless they are already there. Returns the paths either way. The private key is written 0600.
pub fn ensure_self_signed(dir: &Path, names: &[String], common_name: &str) -> Result<CertPaths, TlsError> {
    let paths = CertPaths::in_dir(dir);
    if paths.cert.exists() && paths.key.exists() && paths.ca.exists() {
        return Ok(paths);
    }
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Io { path: dir.to_path_buf(), source })?;
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, format!("{common_name} authority"));
    ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    // Validity by calendar year: a little slack backwards for hosts whose clocks lag behind.
    let year = chrono::Datelike::year(&chrono::Utc::now());
    ca_params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    ca_params.not_after = rcgen::date_time_ymd(year + 20, 1, 1);
    let ca = ca_params.self_signed(&ca_key)?;

    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(names.to_vec())?;
    params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + 10, 1, 1);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &ca, &ca_key)?;

    write_file(&paths.ca, ca.pem().as_bytes(), 0o644)?;
    write_file(&paths.cert, cert.pem().as_bytes(), 0o644)?;
    write_file(&paths.key, key.serialize_pem().as_bytes(), 0o600)?;
    Ok(paths)
}

/// Writes a file with `mode` on Unix (ignored elsewhere, where the data directory's ACL rules).
pub fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    let io = |source| TlsError::Io { path: path.to_path_buf(), source };
    #[cfg(unix)]
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(path)
            .map_err(io)?;
        f.write_all(bytes).map_err(io)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io)?;
    }
    #[cfg(not(unix))]
    {
        let _ = mode;
        std::fs::write(path, bytes).map_err(io)?;
    }
    Ok(())
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Io { path: path.to_path_buf(), source })?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::Io { path: path.to_path_buf(), source })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: path.to_path_buf() });
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Io { path: path.to_path_buf(), source })?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|source| TlsError::Io { path: path.to_path_buf(), source })?
        .ok_or_else(|| TlsError::NoKey { path: path.to_path_buf() })
}

/// A server configuration from PEM files, HTTP/1.1 and HTTP/2 offered.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    crate::install_crypto_provider();
    let mut cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(load_certs(cert)?, load_key(key)?)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Trust roots: the CA file when given, else the operating system's store.
pub fn root_store(ca_file: Option<&Path>) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in load_certs(path)? {
                roots.add(cert)?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(TlsError::Roots(format!(
                    "the system trust store is empty or unreadable ({:?}); set a CA file",
                    found.errors
                )));
            }
        }
    }
    Ok(roots)
}

/// Offers HTTP/2 first in the TLS handshake (our servers speak it), so a hub's uploads and its
/// command long-poll share one connection, as do a connector's forwards and polls. A client
/// given a preconfigured TLS setup gets no ALPN from reqwest, and would stay on HTTP/1.1 with a
/// connection per request in flight.
pub(crate) fn offer_http2(cfg: &mut rustls::ClientConfig) {
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
}

/// An HTTPS client that trusts `ca_file` (or the system roots) and nothing else: no plain HTTP.
pub fn https_client(
    ca_file: Option<&Path>,
    timeout: std::time::Duration,
) -> Result<reqwest::Client, TlsError> {
    crate::install_crypto_provider();
    let mut cfg =
        rustls::ClientConfig::builder().with_root_certificates(root_store(ca_file)?).with_no_client_auth();
    offer_http2(&mut cfg);
    reqwest::Client::builder()
        .use_preconfigured_tls(cfg)
        .https_only(true)
        .timeout(timeout)
        .connect_timeout(timeout.min(std::time::Duration::from_secs(10)))
        .pool_idle_timeout(std::time::Duration::from_secs(50))
        .build()
        .map_err(|e| TlsError::Roots(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_material_is_made_once_with_a_private_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let p = ensure_self_signed(dir.path(), &names, "outpost cloud").unwrap();
        let first = std::fs::read(&p.cert).unwrap();
        ensure_self_signed(dir.path(), &names, "outpost cloud").unwrap();
        assert_eq!(std::fs::read(&p.cert).unwrap(), first, "existing certificate must be kept");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&p.key).unwrap().permissions().mode() & 0o777, 0o600);
        }
        server_config(&p.cert, &p.key).unwrap();
        assert_eq!(root_store(Some(&p.ca)).unwrap().len(), 1);
    }
}
