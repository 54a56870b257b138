use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error("storage failed: {0}; check disk space and permissions of the data directory")]
    Storage(#[from] sled::Error),
    /// The storage engine cannot be reached now (a database restarting, connections lost): the
    /// request is answered "retry later" and nothing of it was kept.
    #[error("storage unavailable: {0}; retry later")]
    Unavailable(String),
    /// The database refused a statement for another reason than being unreachable.
    #[error("database: {0}")]
    Database(String),
    /// A `[storage]` choice this cloud cannot serve; the text says what to change.
    #[error("{0}")]
    Config(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Tls(#[from] outpost_shared::tls::TlsError),
    #[error("cannot listen on {addr}: {source}; is another cloud running, or is the port privileged?")]
    Listen { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("mail: {0}")]
    Mail(String),
    #[error("keys: {0}")]
    Keys(String),
    /// Someone else changed the same thing first; the text says what to reload.
    #[error("{0}")]
    Conflict(String),
    /// A request that breaks a rule; the text says which and what to do.
    #[error("{0}")]
    Invalid(String),
    #[error("stored data is unreadable ({0}); restore the data directory from a backup or move it aside")]
    Corrupt(String),
}
