//! Keeping an agent's resident memory small on the machine it watches.
//!
//! Most of what a sensorhub holds in memory is not data but this binary's code: start-up touches
//! key handling, config parsing, TLS set-up and much more, and the kernel keeps those pages (and
//! their neighbours, which it maps in 64 KiB runs) resident long after they ran for the last time.
//! Once the hub has settled, we tell the kernel to drop the binary's clean file pages; the ones
//! still in use come back on their next touch, from the page cache, at no cost worth naming.
//! Nothing about the program's behaviour changes: these pages are read-only copies of the file.
//!
//! What it can and cannot do (measured, BENCHMARKS.md): the kernel leaves alone any page another
//! process maps too (another Outpost role run from the same file keeps those pages resident for
//! both), and from then on we ask for no read-ahead on the read-only data; recent kernels read
//! ahead around executable code whatever we ask, and map every cached page in the 64 KiB window
//! of a page touched (fault-around), so what the hub keeps touching comes back in 64 KiB runs:
//! hence the link order that keeps the steady code together (`link/README.md`). The log line says
//! how much left residency for real, measured, not the size of the ranges asked about.

// The only unsafe code in the binary: madvise calls on read-only mappings of the executable, the
// allocator settings of the hub and of the servers, and the servers' heap trim.
#![allow(unsafe_code)]

/// A small heap for the hub (glibc; elsewhere nothing), set before its threads start.
///
/// One malloc arena for the whole process: glibc gives threads that allocate at once arenas of
/// their own, each keeping freed memory for itself; a hub's dozen threads (the runtime's, sled's
/// I/O pool, flushers) allocate little and seldom, so the arenas cost more resident memory than
/// their contention would cost time (about 0.2 MB measured, with the default sensors). Arenas
/// already made stay, hence before the threads.
///
/// Blocks of 64 KiB and more from their own mappings, handed back when freed: an upload's
/// compressor state and buffers are a few hundred KiB for a moment every few seconds, and with
/// glibc's sliding threshold they came from the heap, whose pages then stayed resident between
/// uploads (0.5–0.6 MB of the hub's heap, measured, BENCHMARKS.md). A fixed threshold also stops
/// glibc from raising the point where it trims the heap's top. The price is a few dozen
/// mmap/munmap calls a minute.
pub fn small_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; glibc takes its own lock to do so.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 * 1024);
    }
}

/// The servers' heap (cloud, connector; glibc, elsewhere nothing), set before their threads start.
///
/// Blocks of 64 KiB and more from their own mappings, handed back when freed: a batch's body, its
/// inflated JSON and its parsed readings are each that large, live for a few milliseconds, and
/// with glibc's sliding threshold (which rises to 32 MiB once such a block is freed) they came
/// from the arenas, which then kept the pages. Two arenas per core instead of glibc's eight: the
/// blocking threads that write batches each took an arena of their own and kept its freed pages
/// too. With both, a thousand hubs' five-million-reading backlog peaked at 278–303 MB over four
/// runs instead of 400 MB, and drained in 52.1–58.5 s against 53.0 s (BENCHMARKS.md).
pub fn server_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let arenas = libc::c_int::try_from(cores.saturating_mul(2)).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only sets allocator parameters; glibc takes its own lock to do so.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
            libc::mallopt(libc::M_MMAP_THRESHOLD, 64 * 1024);
        }
    }
}

/// Every `period`, hands the heap's free pages back to the kernel (glibc; elsewhere nothing).
/// For the servers (cloud, connector): under a heavy write load sled replaces tree nodes by the
/// hundred thousand and frees the old ones later, and glibc keeps the freed pages inside its
/// arenas for reuse, so the resident size grew to more than twice the live heap (measured,
/// BENCHMARKS.md). `malloc_trim(0)` gives back whole free pages anywhere in each arena, not only
/// at the top; it holds each arena's lock while it walks it (not timed yet).
pub fn trim_heap_every(period: std::time::Duration) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let spawned = std::thread::Builder::new().name("heap-trim".into()).spawn(move || loop {
            std::thread::sleep(period);
            // SAFETY: malloc_trim only returns free memory to the kernel; glibc locks each arena.
            unsafe {
                libc::malloc_trim(0);
            }
        });
        if let Err(e) = spawned {
            tracing::debug!(error = %e, "no thread to trim the heap");
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = period;
}

/// At each of `moments` (from now, in rising order), drops the executable's resident read-only
/// pages (Linux; elsewhere nothing). More than one because start-up does not end at once: code
/// that ran only in the first minutes stays resident after an early release if it runs again
/// after it.
pub fn release_startup_code_at(moments: &'static [std::time::Duration]) {
    #[cfg(target_os = "linux")]
    {
        let spawned = std::thread::Builder::new().name("footprint".into()).spawn(move || {
            let start = std::time::Instant::now();
            for &at in moments {
                std::thread::sleep(at.saturating_sub(start.elapsed()));
                match release_code_pages() {
                    Ok((before, after)) => tracing::debug!(
                        resident_kib_before = before,
                        resident_kib_after = after,
                        "start-up code released"
                    ),
                    Err(e) => tracing::debug!(error = %e, "cannot release start-up code"),
                }
            }
        });
        if let Err(e) = spawned {
            tracing::debug!(error = %e, "no thread to release start-up code");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = moments;
}

/// Resident KiB of the executable's mappings, before and after.
#[cfg(target_os = "linux")]
fn release_code_pages() -> std::io::Result<(u64, u64)> {
    let exe = std::fs::read_link("/proc/self/exe")?;
    let exe = exe.to_string_lossy();
    let before = resident_kib(&exe)?;
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    for line in maps.lines() {
        let Some((range, perms, path)) = mapping(line) else { continue };
        if path != exe || perms.contains('w') {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else { continue };
        let (Ok(start), Ok(end)) = (usize::from_str_radix(start, 16), usize::from_str_radix(end, 16)) else {
            continue;
        };
        let (addr, len) = (start as *mut libc::c_void, end - start);
        // SAFETY: the range is a whole mapping of our own executable that is not writable, as the
        // kernel listed it a moment ago; mappings of the executable are never unmapped while it
        // runs. MADV_RANDOM only stops read-ahead, MADV_PAGEOUT only reclaims pages: file pages
        // are read back from the file on the next access, contents and validity never change.
        // Either may fail (an old kernel without MADV_PAGEOUT): then less is released, no harm.
        unsafe {
            libc::madvise(addr, len, libc::MADV_RANDOM);
            libc::madvise(addr, len, libc::MADV_PAGEOUT);
        }
    }
    Ok((before, resident_kib(&exe)?))
}

/// "start-end perms offset dev inode path" → (range, perms, path), for mappings of a file.
#[cfg(target_os = "linux")]
fn mapping(line: &str) -> Option<(&str, &str, &str)> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [range, perms, _, _, _, path] = fields[..] else { return None };
    Some((range, perms, path))
}

/// Resident KiB of the mappings of `exe`, from `/proc/self/smaps`.
#[cfg(target_os = "linux")]
fn resident_kib(exe: &str) -> std::io::Result<u64> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let (mut ours, mut kib) = (false, 0);
    for line in smaps.lines() {
        if let Some(rest) = line.strip_prefix("Rss:") {
            if ours {
                kib += rest.trim().trim_end_matches("kB").trim().parse::<u64>().unwrap_or(0);
            }
        } else if line.split_whitespace().next().is_some_and(|f| f.contains('-') && !f.ends_with(':')) {
            ours = mapping(line).is_some_and(|(_, _, path)| path == exe);
        }
    }
    Ok(kib)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// Held by each test here: the allocator test counts the whole process's mapped blocks, and
    /// the other one reads `/proc` files into blocks large enough to be mapped.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// Bytes in blocks glibc keeps in mappings of their own, outside every heap.
    #[cfg(target_env = "gnu")]
    fn mapped_apart() -> usize {
        // SAFETY: mallinfo2 only reads the allocator's counters.
        unsafe { libc::mallinfo2() }.hblkhd
    }

    #[test]
    #[cfg(target_env = "gnu")]
    fn large_blocks_stay_out_of_the_heap_and_go_back_when_freed() {
        let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        small_heap();
        // Under glibc's sliding threshold, freeing a large mapped block raises the threshold to
        // its size, and blocks below it come from the heap from then on: an upload's buffers did.
        drop(std::hint::black_box(vec![1u8; 4 << 20]));
        let block_size = 256 << 10;
        let before = mapped_apart();
        let block = std::hint::black_box(vec![1u8; block_size]);
        let during = mapped_apart();
        drop(block);
        let after = mapped_apart();
        assert!(
            during >= before + block_size,
            "a 256 KiB block has a mapping of its own: {before} → {during}"
        );
        assert!(after + block_size <= during, "and it is handed back when freed: {during} → {after}");
    }

    #[test]
    fn the_executable_is_found_resident_and_released_without_harm() {
        let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        // Once, run right after a clean build with another build beside it, nothing was released
        // (876 → 876 KiB). Pages the kernel cannot reclaim yet are the likely cause, not proven:
        // a binary fresh from the linker has dirty pages (an installed one never has), and pages
        // faulted in a moment ago may not be on the kernel's page lists yet. So the binary is
        // written back first, and the release gets a few tries.
        std::fs::File::open(&exe).unwrap().sync_all().unwrap();
        let before = resident_kib(&exe.to_string_lossy()).unwrap();
        assert!(before > 0, "a running test binary has some of its code resident");
        let mut tries = Vec::new();
        for _ in 0..5 {
            let (_, after) = release_code_pages().unwrap();
            tries.push(after);
            if after < before {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
        eprintln!("resident code: {before} KiB, then {tries:?} KiB");
        // The code still runs after its pages were handed back, and this very function is back.
        assert!(resident_kib(&exe.to_string_lossy()).unwrap() > 0);
        // Only this process maps the test binary, so the kernel has no reason to keep its pages.
        assert!(tries.iter().any(|&after| after < before), "pages handed back: {before} → {tries:?} KiB");
    }
}
