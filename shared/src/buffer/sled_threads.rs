//! sled 0.34 keeps seven I/O threads for the life of the process, each of which wakes once a
//! second to look for work it would be woken for anyway. On an idle hub those wake-ups were a
//! third of its CPU time (BENCHMARKS.md), and sled has no setting for them.
//!
//! A thread starts with the timer slack of the thread that created it, and sled creates its
//! pool from the first thread that hands it I/O work. So the buffer opens sled, and makes its
//! first write, with a long slack on the opening thread ([`with_idle_pool_slack`]): the kernel may
//! then fire the pool's one-second timeouts up to [`IDLE_POOL_SLACK`] late, together with other
//! timers, instead of on the dot. Work handed to the pool wakes it at once as before; only the
//! idle look-around is late. The opening thread gets its own slack back afterwards.
//!
//! Linux only: elsewhere a thread has no slack of its own, and this does nothing.

use std::time::Duration;

/// How late sled's idle I/O threads may wake. At 10 s their wake-ups fell from 9 to 2.3 a
/// second on an idle machine; their work is never waiting on this timer.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(super) const IDLE_POOL_SLACK: Duration = Duration::from_secs(10);

/// Runs `open` (which must start sled's I/O pool: open a database and write to it) with the
/// calling thread's timer slack at [`IDLE_POOL_SLACK`], and puts the slack back after it, also
/// when `open` panics. A pool already started earlier in the process keeps its slack.
#[cfg(target_os = "linux")]
pub(super) fn with_idle_pool_slack<T>(open: impl FnOnce() -> T) -> T {
    use rustix::thread::{current_timer_slack, set_current_timer_slack};
    use std::num::NonZeroU64;

    struct Restore(Option<u64>);
    impl Drop for Restore {
        fn drop(&mut self) {
            if let Some(before) = self.0 {
                // Zero would mean "the process default", not the value it had: keep any other.
                let _ = set_current_timer_slack(NonZeroU64::new(before));
            }
        }
    }
    let _restore = Restore(current_timer_slack().ok());
    let slack = u64::try_from(IDLE_POOL_SLACK.as_nanos()).ok().and_then(NonZeroU64::new);
    // Not fatal: without it the pool only wakes more often.
    if let Err(e) = set_current_timer_slack(slack) {
        tracing::debug!(error = %e, "cannot lengthen the timer slack for sled's I/O threads");
    }
    open()
}

/// Elsewhere a thread has no timer slack of its own to pass on.
#[cfg(not(target_os = "linux"))]
pub(super) fn with_idle_pool_slack<T>(open: impl FnOnce() -> T) -> T {
    open()
}
