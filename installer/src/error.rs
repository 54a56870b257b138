use std::path::PathBuf;

/// Why an install, uninstall or status command stopped. Every message says what to do; when
/// changes had been made, [`InstallError::RolledBack`] says they were undone.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("installing into / needs root: run as root or use --root DIR")]
    NotRoot,
    #[error("bad token: {0}")]
    BadToken(#[source] outpost_shared::keys::TokenError),
    #[error("bad cloud URL {url:?}: {reason}")]
    BadCloudUrl { url: String, reason: String },
    #[error(
        "cloud {url} is not reachable: {reason}. Check the URL and this machine's network; \
         for a cloud with its own certificate authority give its CA with --cloud-ca FILE"
    )]
    CloudUnreachable { url: String, reason: String },
    #[error("{0}")]
    Usage(String),
    #[error("cannot get the default config of the {role} role: {reason}")]
    DefaultConfig { role: crate::Role, reason: String },
    #[error("{path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
    #[error("machine key: {0}")]
    Key(#[from] outpost_shared::keys::KeyError),
    #[error("{0}")]
    Unsupported(String),
    /// A step failed after others had changed the system; those were undone. `leftovers` lists
    /// what could not be undone (empty when the system is as it was).
    #[error("{}", rolled_back_message(cause, leftovers))]
    RolledBack { cause: Box<InstallError>, leftovers: Vec<String> },
}

fn rolled_back_message(cause: &InstallError, leftovers: &[String]) -> String {
    if leftovers.is_empty() {
        format!("{cause}\nevery change of this run was rolled back; the system is as it was")
    } else {
        format!("{cause}\nrolled back, but these could not be undone:\n  {}", leftovers.join("\n  "))
    }
}

impl InstallError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> InstallError {
        let path = path.into();
        move |source| InstallError::Io { path, source }
    }

    /// A process exit status for this error (sysexits.h), so scripts can tell bad input from a
    /// missing permission from an unreachable cloud.
    pub fn exit_code(&self) -> i32 {
        match self {
            InstallError::BadToken(_)
            | InstallError::BadCloudUrl { .. }
            | InstallError::Usage(_)
            | InstallError::Config { .. } => outpost_shared::config::EXIT_CONFIG,
            InstallError::NotRoot => 77,                 // EX_NOPERM
            InstallError::CloudUnreachable { .. } => 69, // EX_UNAVAILABLE
            InstallError::RolledBack { cause, .. } => cause.exit_code(),
            _ => 1,
        }
    }
}
