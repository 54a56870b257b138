//! A buffer for unit tests that fails on demand: appends or removals refused the way a full or
//! failing disk refuses them, with a free-space figure to match, and a log of append sizes.

use outpost_shared::buffer::{BufferError, BufferStats, MemoryBuffer, Quarantined, Storage, WhenFull};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

pub struct FaultyBuffer {
    inner: MemoryBuffer,
    /// How many samples each append carried (failed ones too).
    sizes: Mutex<Vec<usize>>,
    pub fail_appends: AtomicBool,
    pub fail_removes: AtomicBool,
    /// What [`Storage::free_space`] answers.
    pub free: Mutex<Option<u64>>,
}

impl FaultyBuffer {
    pub fn new() -> Self {
        FaultyBuffer {
            inner: MemoryBuffer::new(16 << 20, WhenFull::DropOldest),
            sizes: Mutex::default(),
            fail_appends: AtomicBool::new(false),
            fail_removes: AtomicBool::new(false),
            free: Mutex::new(None),
        }
    }

    pub fn sizes(&self) -> Vec<usize> {
        self.sizes.lock().unwrap().clone()
    }

    fn refuse(flag: &AtomicBool) -> Result<(), BufferError> {
        if flag.load(Ordering::Acquire) {
            let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
            return Err(BufferError::Storage(sled::Error::Io(full)));
        }
        Ok(())
    }
}

impl Storage for FaultyBuffer {
    fn append(&self, records: &[Vec<u8>]) -> Result<Range<u64>, BufferError> {
        self.sizes.lock().unwrap().push(records.len());
        Self::refuse(&self.fail_appends)?;
        self.inner.append(records)
    }
    fn oldest(&self, n: usize) -> Result<Vec<(u64, Vec<u8>)>, BufferError> {
        self.inner.oldest(n)
    }
    fn newest(&self, n: usize) -> Result<Vec<(u64, Vec<u8>)>, BufferError> {
        self.inner.newest(n)
    }
    fn remove(&self, seqs: &[u64]) -> Result<(), BufferError> {
        Self::refuse(&self.fail_removes)?;
        self.inner.remove(seqs)
    }
    fn delete_through(&self, through: u64) -> Result<u64, BufferError> {
        self.inner.delete_through(through)
    }
    fn stats(&self) -> BufferStats {
        self.inner.stats()
    }
    fn quarantine(&self, items: &[(u64, String)]) -> Result<u64, BufferError> {
        self.inner.quarantine(items)
    }
    fn quarantined(&self, n: usize) -> Result<Vec<Quarantined>, BufferError> {
        self.inner.quarantined(n)
    }
    fn requeue(&self) -> Result<u64, BufferError> {
        self.inner.requeue()
    }
    fn free_space(&self) -> Option<u64> {
        *self.free.lock().unwrap()
    }
}
