use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything that stops the responder or a search. Problems with single datagrams (malformed,
/// oversized, rate-limited, foreign) are not errors: they are dropped and counted in
/// [`super::ResponderStats`].
#[derive(Debug, thiserror::Error)]
pub enum SsdpError {
    #[error("invalid SSDP settings:\n{0}")]
    Config(String),
    #[error("invalid SSDP advertisement: {field}: {reason}")]
    Advertisement { field: &'static str, reason: String },
    #[error(
        "cannot bind UDP {addr}: {source}; another program holds the port without \
         SO_REUSEADDR/SO_REUSEPORT, or this process lacks the right to bind it"
    )]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot set up the SSDP socket ({what}): {source}")]
    Socket { what: &'static str, source: std::io::Error },
    #[error("`{st}` is not a search target ssdp-client accepts; use `ssdp:all`, `uuid:...` or `urn:domain:service:type:version`")]
    SearchTarget { st: String },
    #[error("SSDP search failed: {0}; check that a LAN interface is up and has a route for 239.255.255.250")]
    Search(#[source] ssdp_client::Error),
    #[error(
        "cannot read or write the boot counter {path}: {source}; check permissions of the data directory"
    )]
    BootId { path: PathBuf, source: std::io::Error },
}
