//! Group commit for a sled database: never more than one flush in flight, and one flush serves
//! every writer that was waiting when it started.
//!
//! Why: sled 0.34's `flush_async` deadlocks when several run at once (sled issue #1308: every
//! thread of its I/O pool ends up parked waiting for buffers queued on that same pool). The cloud
//! stopped acknowledging within seconds at 2,000 hubs because each acknowledgement flushed on its
//! own. Here one thread per database does all the flushing, with sled's blocking `flush`, one at a
//! time; writers only say "my write is done, make it durable" and wait for the flush *epoch* that
//! covers it.
//!
//! Epochs: flush number `n` starts after every writer that asked for epoch `n` had finished its
//! write, so when it completes those writes are on disk. A writer that asks while flush `n` runs
//! cannot be covered by it (it may have started before the write) and waits for `n + 1`, which
//! serves everybody who asked meanwhile. A later successful flush also covers earlier writes, so a
//! writer is told of a failure only when no flush at or after its epoch succeeded.
//!
//! Stalls: sled 0.34 does not recover from a write that fails for lack of space: its flush then
//! waits forever, even after space is freed (seen with a full disk under a hub). A writer waits
//! at most [`STALL_AFTER`] for its flush; past that the flusher counts as stalled, every waiter
//! (and every later one, at once) is told so, and [`GroupFlush::stalled`] says it. Only a restart
//! of the process reopens the database; what was flushed before stays, what was not was never
//! acknowledged.

#[cfg(test)]
mod tests;

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long a flush may take before the disk counts as stalled. Generous: a slow SD card or a
/// loaded disk takes seconds, never a minute.
pub const STALL_AFTER: Duration = Duration::from_secs(60);
/// How often a waiter looks whether the flush it waits for has stalled.
const STALL_CHECK: Duration = Duration::from_secs(1);

/// Progress of the flushing thread, as async waiters see it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Progress {
    /// The last epoch whose flush has finished (successfully or not).
    done: u64,
    /// The last epoch whose flush succeeded.
    ok: u64,
}

#[derive(Debug, Default)]
struct State {
    /// The highest epoch any writer waits for.
    requested: u64,
    /// The epoch of the flush running now, or of the last one when idle.
    started: u64,
    progress: Progress,
    /// Why the last flush failed, for the writers it leaves unserved.
    last_error: Option<String>,
    /// Set when the last handle is dropped: the thread ends after the flush it may be running.
    closed: bool,
    /// When the flush running now started (None when idle).
    running_since: Option<Instant>,
    /// A flush ran past [`STALL_AFTER`]: the database cannot be written any more.
    stalled: bool,
}

struct Shared {
    /// [`STALL_AFTER`], shorter in tests.
    stall_after: Duration,
    state: Mutex<State>,
    /// Wakes the flushing thread (work or close) and blocking waiters (progress).
    changed: Condvar,
    progress: watch::Sender<Progress>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a waiter panicked; the counters are still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a writer whose write is complete; returns the epoch that will cover it.
    fn ask(&self) -> u64 {
        let mut st = self.lock();
        let target = st.started + 1;
        st.requested = st.requested.max(target);
        drop(st);
        self.changed.notify_all();
        target
    }

    fn outcome(&self, target: u64) -> Result<(), sled::Error> {
        let st = self.lock();
        if st.progress.ok >= target {
            return Ok(());
        }
        if st.stalled {
            return Err(stall_error());
        }
        let why = st.last_error.clone().unwrap_or_else(|| "the flusher stopped".to_string());
        Err(sled::Error::Io(std::io::Error::other(format!("flushing the database to disk failed: {why}"))))
    }
}

fn stall_error() -> sled::Error {
    sled::Error::Io(std::io::Error::other(format!(
        "the disk has not completed a flush in {} s (full or failing); the database cannot be written \
         until the process restarts",
        STALL_AFTER.as_secs()
    )))
}

impl Shared {
    /// Whether the flush running now has run past [`STALL_AFTER`]; marks the flusher stalled.
    fn check_stall(&self) -> bool {
        let mut st = self.lock();
        if !st.stalled && st.running_since.is_some_and(|t| t.elapsed() >= self.stall_after) {
            st.stalled = true;
            tracing::error!(
                after_secs = STALL_AFTER.as_secs(),
                "database flush stalled; the disk is full or failing"
            );
        }
        st.stalled
    }
}

/// The one flusher of a sled database. Cheap to clone; the flushing thread ends when the last
/// clone is dropped (after finishing the flush it may be running, so the database is closed).
#[derive(Clone)]
pub struct GroupFlush {
    shared: Arc<Shared>,
    _owner: Arc<Owner>,
}

/// Stops and joins the thread when the last [`GroupFlush`] goes: the thread holds a handle on the
/// database, and sled refuses to reopen a path while any handle is alive.
struct Owner {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        let stalled = {
            let mut st = self.shared.lock();
            st.closed = true;
            st.stalled
        };
        self.shared.changed.notify_all();
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            // A stalled flush never returns: waiting for its thread would hang the exit.
            if !stalled {
                let _ = t.join();
            }
        }
    }
}

impl std::fmt::Debug for GroupFlush {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.shared.lock();
        f.debug_struct("GroupFlush").field("started", &st.started).field("done", &st.progress.done).finish()
    }
}

impl GroupFlush {
    /// Starts the flushing thread of `db`. Make one per database and share it: two flushers on one
    /// database could again flush concurrently.
    pub fn new(db: sled::Db) -> GroupFlush {
        GroupFlush::with(move || db.flush().map(|_| ()), STALL_AFTER)
    }

    /// A flusher around any flush function, with its own stall deadline (tests use a flush that
    /// never returns, as sled's does on a full disk).
    fn with(
        flush: impl Fn() -> Result<(), sled::Error> + Send + 'static,
        stall_after: Duration,
    ) -> GroupFlush {
        let (progress, _) = watch::channel(Progress::default());
        let shared = Arc::new(Shared {
            stall_after,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            progress,
        });
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("sled-group-flush".into())
            .spawn(move || run(&worker, flush))
            .expect("the OS can start a thread");
        let owner = Owner { shared: shared.clone(), thread: Mutex::new(Some(thread)) };
        GroupFlush { shared, _owner: Arc::new(owner) }
    }

    /// Returns once every write this task made before the call is on disk. Never blocks a runtime
    /// worker: the flush runs on the flusher's own thread.
    pub async fn flush(&self) -> Result<(), sled::Error> {
        if self.stalled() {
            return Err(stall_error());
        }
        let mut rx = self.shared.progress.subscribe();
        let target = self.shared.ask();
        loop {
            // `wait_for` looks at the current value first, so a flush that ended in between counts.
            let waited = tokio::time::timeout(STALL_CHECK, rx.wait_for(|p| p.done >= target)).await;
            match waited {
                Ok(_) => return self.shared.outcome(target),
                Err(_) if self.shared.check_stall() => return Err(stall_error()),
                Err(_) => {}
            }
        }
    }

    /// [`GroupFlush::flush`] for blocking code (e.g. inside `spawn_blocking`).
    pub fn flush_blocking(&self) -> Result<(), sled::Error> {
        if self.stalled() {
            return Err(stall_error());
        }
        let target = self.shared.ask();
        let mut st = self.shared.lock();
        while st.progress.done < target && !st.closed {
            let (next, timeout) =
                self.shared.changed.wait_timeout(st, STALL_CHECK).unwrap_or_else(|p| p.into_inner());
            st = next;
            if timeout.timed_out() && st.progress.done < target {
                drop(st);
                if self.shared.check_stall() {
                    return Err(stall_error());
                }
                st = self.shared.lock();
            }
        }
        drop(st);
        self.shared.outcome(target)
    }

    /// Whether a flush has run past [`STALL_AFTER`]: the database takes no more durable writes in
    /// this process. A hub then stops and is restarted by its service manager.
    pub fn stalled(&self) -> bool {
        self.shared.lock().stalled
    }

    /// How many flushes have completed: lets tests (and metrics) see that flushes are shared.
    pub fn flushes(&self) -> u64 {
        self.shared.lock().progress.done
    }
}

fn run(shared: &Shared, flush: impl Fn() -> Result<(), sled::Error>) {
    loop {
        let epoch = {
            let mut st = shared.lock();
            while st.requested <= st.started && !st.closed {
                st = shared.changed.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            if st.requested <= st.started {
                // Closed with nothing left to do.
                return;
            }
            // Everyone who asked so far wrote before this point: this flush covers them all.
            st.started = st.requested;
            st.running_since = Some(Instant::now());
            st.started
        };
        let result = flush();
        let progress = {
            let mut st = shared.lock();
            st.running_since = None;
            st.progress.done = epoch;
            match result {
                Ok(_) => {
                    st.progress.ok = epoch;
                    st.last_error = None;
                }
                Err(e) => {
                    tracing::error!(error = %e, "database flush failed; writers waiting on it are told");
                    st.last_error = Some(e.to_string());
                }
            }
            st.progress
        };
        shared.changed.notify_all();
        shared.progress.send_replace(progress);
    }
}
