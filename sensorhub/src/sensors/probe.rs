//! The one sysinfo handle every machine-wide sensor shares. Each sensor refreshes only the part
//! it reads (CPU times, memory, mounts, processes), so a hub without a process sensor never walks
//! `/proc/<pid>` and one without a disk sensor never calls `statvfs`.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use sysinfo::{Disks, ProcessRefreshKind, ProcessesToUpdate, System};

pub(crate) type SharedProbe = Arc<Mutex<Probe>>;

pub(crate) struct Probe {
    pub system: System,
    pub disks: Disks,
    #[cfg(not(target_os = "linux"))]
    pub networks: sysinfo::Networks,
    /// When the process table was last walked: several process sensors due at about the same
    /// time share one walk instead of each reading every process.
    processes_at: Option<Instant>,
}

/// Process tables younger than this are reused.
const PROCESS_REUSE: Duration = Duration::from_secs(1);

impl Probe {
    pub fn shared() -> SharedProbe {
        // sysinfo otherwise keeps every `/proc/<pid>/stat` open between refreshes: hundreds of
        // descriptors and their buffers, for a speed-up a 10 s sensor does not need.
        sysinfo::set_open_files_limit(0);
        Arc::new(Mutex::new(Probe {
            system: System::new(),
            disks: Disks::new(),
            #[cfg(not(target_os = "linux"))]
            networks: sysinfo::Networks::new(),
            processes_at: None,
        }))
    }

    /// Walks the process table for names and resident memory only (no threads, command lines,
    /// environments or CPU times).
    pub fn refresh_processes(&mut self) {
        if self.processes_at.is_some_and(|t| t.elapsed() < PROCESS_REUSE) {
            return;
        }
        self.system.refresh_processes_specifics(
            ProcessesToUpdate::All,
            true,
            ProcessRefreshKind::nothing().with_memory().without_tasks(),
        );
        self.processes_at = Some(Instant::now());
    }
}

/// Locks the probe. A panic in another sensor while it held the lock leaves sysinfo's data
/// merely stale, never unsafe to read, so a poisoned lock is taken over rather than spread.
pub(crate) fn lock(probe: &SharedProbe) -> MutexGuard<'_, Probe> {
    probe.lock().unwrap_or_else(PoisonError::into_inner)
}
