use outpost_shared::model::{RefusalCode, TimeWindow};

/// Why an upload did not go through; decides what the uplink does next. The custody rule: only an
/// explicit `Refused` verdict lets readings leave the queue (into the quarantine); every other
/// failure keeps them.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Network trouble, timeouts, and any HTTP error that carries no verdict (a reverse proxy's
    /// 404/405/408 during maintenance, a 500, an old peer), or a `RetryLater` verdict: keep the
    /// data and try again later with backoff.
    #[error("cloud unreachable: {0}")]
    Unreachable(String),
    /// The receiver is full and asks us to hold our data for a while (503 + Retry-After).
    #[error("receiver busy, retry after {0:?}")]
    Busy(std::time::Duration),
    /// Too big for the receiver (413, or the `TooLarge` code): send it again in smaller parts.
    #[error("batch too large for the receiver: {0}")]
    TooLarge(String),
    /// The receiver's explicit `Refused` verdict: sending these readings again can never help.
    /// With [`RefusalCode::Clock`], `accept` is the window of timestamps it takes.
    #[error("batch refused ({status}, {code:?}): {message}")]
    Refused { status: u16, message: String, code: Option<RefusalCode>, accept: Option<TimeWindow> },
    /// Not enrolled, or refused by the receiver: retry slowly, an operator must act.
    #[error("not authorised ({status}): {message}; is this machine enrolled with this cloud (uplink.enroll_token)?")]
    Unauthorised { status: u16, message: String },
    /// Delivered, but the local buffer refuses to forget what was delivered (full or failing
    /// disk): wait as after a failure, the readings go again later and are stored once.
    #[error("{0}")]
    Storage(String),
}

#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error(transparent)]
    Buffer(#[from] outpost_shared::buffer::BufferError),
    #[error(transparent)]
    Tls(#[from] outpost_shared::tls::TlsError),
}
