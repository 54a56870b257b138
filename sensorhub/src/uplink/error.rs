/// Why an upload did not go through; decides what the uplink does next.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Network trouble, timeouts, 5xx: try again later with backoff.
    #[error("cloud unreachable: {0}")]
    Unreachable(String),
    /// The receiver is full and asks us to hold our data for a while (503 + Retry-After).
    #[error("receiver busy, retry after {0:?}")]
    Busy(std::time::Duration),
    /// The receiver refuses the batch itself (400, 413): retrying it unchanged cannot help.
    #[error("batch refused ({status}): {message}")]
    Refused { status: u16, message: String },
    /// Not enrolled, or refused by the receiver: retry slowly, an operator must act.
    #[error("not authorised ({status}): {message}; is this machine enrolled with this cloud (uplink.enroll_token)?")]
    Unauthorised { status: u16, message: String },
}

#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error(transparent)]
    Buffer(#[from] outpost_shared::buffer::BufferError),
    #[error(transparent)]
    Tls(#[from] outpost_shared::tls::TlsError),
}
