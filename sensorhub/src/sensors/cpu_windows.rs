//! CPU usage on Windows without PDH. sysinfo reads it through pdh.dll, whose
//! `PdhEnumObjectsA` Wine lacks (the hub aborted there); the system's cumulative CPU times are
//! enough: `GetSystemTimes` for the machine, `NtQuerySystemInformation`
//! (`SystemProcessorPerformanceInformation`) per logical processor. Usage is the busy share of
//! the time that passed between two readings.
//!
//! The arithmetic is plain code, compiled and tested on every platform; only [`Sampler`] and
//! its system calls are Windows-only.

/// Cumulative CPU times as Windows counts them (100 ns units). Kernel time includes idle time:
/// the idle thread runs in kernel mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Times {
    pub idle: u64,
    pub kernel: u64,
    pub user: u64,
}

/// Busy share in percent (0..=100) of the time between two readings, or `None` where the
/// counters give no honest value: a counter that went backwards (wrapped, reset, a bad read), no
/// time passed, or more idle time than time at all.
pub(crate) fn busy_pct(prev: Times, now: Times) -> Option<f64> {
    let idle = now.idle.checked_sub(prev.idle)?;
    let kernel = now.kernel.checked_sub(prev.kernel)?;
    let user = now.user.checked_sub(prev.user)?;
    let total = kernel.checked_add(user)?;
    if total == 0 || idle > total {
        return None;
    }
    Some((total - idle) as f64 * 100.0 / total as f64)
}

/// [`busy_pct`] per logical processor, by position. `None` for all when the number of
/// processors changed between the readings (a processor added, or a short read): positions no
/// longer name the same processors.
pub(crate) fn per_core_pct(prev: &[Times], now: &[Times]) -> Option<Vec<Option<f64>>> {
    if prev.len() != now.len() {
        return None;
    }
    Some(prev.iter().zip(now).map(|(p, n)| busy_pct(*p, *n)).collect())
}

/// Reads the counters and keeps the last reading as the baseline of the next.
#[cfg(windows)]
pub(crate) struct Sampler {
    total: Option<Times>,
    cores: Option<Vec<Times>>,
}

#[cfg(windows)]
impl Sampler {
    pub fn new() -> Self {
        Sampler { total: None, cores: None }
    }

    /// Usage since the previous call: the machine's busy share (Err: why there is none, for an
    /// `unknown` reading), and per processor if `per_core` (a processor without a value this
    /// time is left out; all are when they cannot be read).
    pub fn sample(&mut self, per_core: bool) -> (Result<f64, String>, Vec<Option<f64>>) {
        let total = match sys::system_times() {
            Ok(now) => {
                let busy = match self.total {
                    None => Err("no earlier reading of the CPU times yet".to_string()),
                    Some(prev) => busy_pct(prev, now).ok_or_else(|| {
                        "the CPU time counters went backwards or did not advance; a value follows \
                         at the next sample"
                            .to_string()
                    }),
                };
                self.total = Some(now);
                busy
            }
            Err(code) => {
                self.total = None;
                Err(format!("GetSystemTimes failed (error {code})"))
            }
        };
        let cores = match per_core.then(sys::processor_times) {
            Some(Ok(now)) => {
                let busy = self.cores.as_deref().and_then(|prev| per_core_pct(prev, &now));
                self.cores = Some(now);
                busy
            }
            Some(Err(why)) => {
                tracing::debug!(%why, "per-core CPU times unreadable");
                self.cores = None;
                None
            }
            None => None,
        };
        (total, cores.unwrap_or_default())
    }
}

#[cfg(windows)]
mod sys {
    //! The two system calls; the only unsafe code of the cpu sensor.
    #![allow(unsafe_code)]
    use super::Times;
    use windows_sys::Wdk::System::SystemInformation::{
        NtQuerySystemInformation, SystemProcessorPerformanceInformation,
    };
    use windows_sys::Win32::Foundation::{GetLastError, FILETIME, STATUS_INFO_LENGTH_MISMATCH};
    use windows_sys::Win32::System::Threading::{
        GetActiveProcessorCount, GetSystemTimes, ALL_PROCESSOR_GROUPS,
    };
    use windows_sys::Win32::System::WindowsProgramming::SYSTEM_PROCESSOR_PERFORMANCE_INFORMATION as Perf;

    fn ticks(t: FILETIME) -> u64 {
        (u64::from(t.dwHighDateTime) << 32) | u64::from(t.dwLowDateTime)
    }

    /// The machine's times, summed over all processors; Err is the Win32 error.
    pub(super) fn system_times() -> Result<Times, u32> {
        let zero = FILETIME { dwLowDateTime: 0, dwHighDateTime: 0 };
        let (mut idle, mut kernel, mut user) = (zero, zero, zero);
        // SAFETY: three valid out-pointers to FILETIMEs that live across the call.
        if unsafe { GetSystemTimes(&mut idle, &mut kernel, &mut user) } == 0 {
            // SAFETY: no preconditions.
            return Err(unsafe { GetLastError() });
        }
        Ok(Times { idle: ticks(idle), kernel: ticks(kernel), user: ticks(user) })
    }

    /// Each logical processor's times (those of the calling thread's processor group: all of
    /// them on machines with up to 64); Err says why there are none.
    pub(super) fn processor_times() -> Result<Vec<Times>, String> {
        // SAFETY: no preconditions.
        let mut count = unsafe { GetActiveProcessorCount(ALL_PROCESSOR_GROUPS) }.max(1) as usize;
        for _ in 0..2 {
            let mut buf = vec![Perf::default(); count];
            let size = u32::try_from(buf.len() * size_of::<Perf>())
                .map_err(|_| format!("{count} processors do not fit one call"))?;
            let mut written = 0u32;
            // SAFETY: `buf` is `size` writable bytes of plain C structs, `written` a valid
            // out-pointer; the call writes at most `size` bytes.
            let status = unsafe {
                NtQuerySystemInformation(
                    SystemProcessorPerformanceInformation,
                    buf.as_mut_ptr().cast(),
                    size,
                    &mut written,
                )
            };
            if status == STATUS_INFO_LENGTH_MISMATCH && written as usize > size as usize {
                // More processors than the count said (one was added): once more, with room.
                count = (written as usize).div_ceil(size_of::<Perf>());
                continue;
            }
            if status < 0 {
                return Err(format!("NtQuerySystemInformation: status 0x{status:08X}"));
            }
            buf.truncate((written as usize / size_of::<Perf>()).min(count));
            // LARGE_INTEGERs that count up from zero: a negative one is a bad read.
            let time = |t: i64| u64::try_from(t).map_err(|_| format!("a negative CPU time ({t})"));
            return buf
                .iter()
                .map(|p| {
                    Ok(Times {
                        idle: time(p.IdleTime)?,
                        kernel: time(p.KernelTime)?,
                        user: time(p.UserTime)?,
                    })
                })
                .collect();
        }
        Err("the number of processors kept changing".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(idle: u64, kernel: u64, user: u64) -> Times {
        Times { idle, kernel, user }
    }

    #[test]
    fn busy_share_between_two_readings() {
        // 1 s passed on one processor: 0.6 s idle, 0.3 s other kernel work, 0.1 s user.
        let prev = t(1_000, 5_000, 2_000);
        let now = t(1_000 + 6_000_000, 5_000 + 9_000_000, 2_000 + 1_000_000);
        assert_eq!(busy_pct(prev, now), Some(40.0));
    }

    #[test]
    fn all_idle_is_zero_and_no_idle_is_a_hundred() {
        assert_eq!(busy_pct(t(0, 0, 0), t(100, 100, 0)), Some(0.0));
        assert_eq!(busy_pct(t(50, 100, 100), t(50, 300, 400)), Some(100.0));
    }

    #[test]
    fn no_time_passed_gives_no_value() {
        let same = t(10, 20, 30);
        assert_eq!(busy_pct(same, same), None);
    }

    #[test]
    fn a_counter_going_backwards_gives_no_value() {
        let prev = t(1_000, 2_000, 3_000);
        assert_eq!(busy_pct(prev, t(999, 2_500, 3_500)), None);
        assert_eq!(busy_pct(prev, t(1_100, 1_999, 3_500)), None);
        assert_eq!(busy_pct(prev, t(1_100, 2_500, 2_999)), None);
        // A wrapped counter is a huge step back.
        let near_end = t(u64::MAX - 10, u64::MAX - 5, u64::MAX - 1);
        assert_eq!(busy_pct(near_end, t(5, 10, 20)), None);
    }

    #[test]
    fn more_idle_than_all_time_gives_no_value() {
        assert_eq!(busy_pct(t(0, 0, 0), t(500, 100, 100)), None);
    }

    #[test]
    fn sums_that_overflow_give_no_value() {
        assert_eq!(busy_pct(t(0, 0, 0), t(0, u64::MAX, u64::MAX)), None);
    }

    #[test]
    fn every_value_lies_between_0_and_100() {
        let mut rng = fastrand::Rng::with_seed(13);
        for _ in 0..10_000 {
            let mut r = || rng.u64(..1 << 40);
            let (prev, now) = (t(r(), r(), r()), t(r(), r(), r()));
            if let Some(v) = busy_pct(prev, now) {
                assert!((0.0..=100.0).contains(&v), "{prev:?} -> {now:?}: {v}");
            }
        }
    }

    #[test]
    fn per_core_by_position() {
        let prev = [t(0, 0, 0), t(0, 0, 0), t(10, 10, 10)];
        let now = [t(100, 100, 0), t(25, 50, 50), t(5, 20, 20)];
        assert_eq!(per_core_pct(&prev, &now), Some(vec![Some(0.0), Some(75.0), None]));
    }

    #[test]
    fn per_core_with_another_number_of_processors_gives_no_values() {
        let two = [t(0, 0, 0), t(0, 0, 0)];
        let three = [t(1, 2, 2), t(1, 2, 2), t(1, 2, 2)];
        assert_eq!(per_core_pct(&two, &three), None);
        assert_eq!(per_core_pct(&three, &two), None);
        assert_eq!(per_core_pct(&[], &[]), Some(vec![]));
    }
}
