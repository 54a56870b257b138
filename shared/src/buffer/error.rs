use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    #[error("buffer is full ({bytes} of {quota} bytes used, {needed} more needed); the records stay with the sender")]
    Full { bytes: u64, quota: u64, needed: u64 },
    #[error("buffer storage failed: {0}; check free disk space and permissions of the data directory")]
    Storage(#[from] sled::Error),
    #[error("buffer at {path} is unreadable ({reason}); it was moved to {moved_to} and a fresh one started")]
    Recovered { path: PathBuf, moved_to: PathBuf, reason: String },
    /// The disk stopped completing flushes (full or failing) and the database cannot recover in
    /// this process: the owner must stop and be restarted.
    #[error("the buffer's disk stalled ({0}); free space or fix the disk; the process must restart to write again")]
    Stalled(String),
    #[error("buffer record is malformed: {0}")]
    Malformed(String),
    #[error("cannot prepare buffer directory {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}
