//! Performance counter sensor (Windows): one counter by path, e.g.
//! `\Processor(_Total)\% Processor Time`, read through PDH with English names
//! (`PdhAddEnglishCounterW`), so a config works on every language of Windows. Rate counters need
//! two collections: the sensor collects once when it starts and then once per sample, so every
//! sample has a rate over the last interval. A path the machine does not know is an `unknown`
//! reading that says which part is missing; the sensor tries to add it again at every sample
//! (counters appear when the software that provides them is installed).

use super::config::SensorConfig;
use super::threshold::Thresholds;
#[cfg(windows)]
use super::threshold::Unit;
use super::BlockingSensor;
use outpost_shared::model::{Sample, State};
use std::time::Duration;

pub(crate) struct PerfCounter {
    key: String,
    path: String,
    #[cfg_attr(not(windows), allow(dead_code))]
    thresholds: Thresholds,
    #[cfg(windows)]
    query: Option<pdh::Query>,
}

impl PerfCounter {
    pub fn new(cfg: &SensorConfig) -> Self {
        PerfCounter {
            key: cfg.id(),
            path: cfg.counter.clone().unwrap_or_default(),
            thresholds: cfg.thresholds(),
            #[cfg(windows)]
            query: None,
        }
    }

    fn unknown(&self, why: String) -> Sample {
        Sample::new(self.key.clone(), "unknown".to_string(), State::Unknown)
            .message(format!("{}: {why}", self.path))
    }
}

/// What PDH's status codes mean for the person who wrote the path.
#[cfg_attr(not(windows), allow(dead_code))]
pub(crate) fn explain(status: u32) -> String {
    // The PDH_* codes of pdhmsg.h; the same on every Windows.
    match status {
        0xC000_0BB8 => "no such object on this machine (the part after the first backslash)".into(),
        0xC000_0BB9 => "the object has no such counter (the part after the last backslash)".into(),
        0x8000_07D1 => "the object has no such instance (the part in parentheses)".into(),
        0xC000_0BC0 | 0xC000_0BBF => r"not a counter path; write \Object(Instance)\Counter".into(),
        0xC000_0BC6 | 0xC000_0BBA => "no valid data (yet): a rate counter needs two samples".into(),
        0x8000_07D5 => "no data: the counter's provider answered nothing".into(),
        other => format!("PDH status 0x{other:08X}"),
    }
}

impl BlockingSensor for PerfCounter {
    fn prime(&mut self) -> Option<Duration> {
        self.start()
    }

    fn sample(&mut self, out: &mut Vec<Sample>) {
        out.push(self.read());
    }
}

#[cfg(not(windows))]
impl PerfCounter {
    fn start(&mut self) -> Option<Duration> {
        None
    }

    fn read(&mut self) -> Sample {
        self.unknown("performance counters exist on Windows only".into())
    }
}

#[cfg(windows)]
impl PerfCounter {
    fn start(&mut self) -> Option<Duration> {
        if let Ok(q) = pdh::Query::open(&self.path) {
            // The first collection is the baseline of a rate counter; its value means nothing.
            let _ = q.collect();
            self.query = Some(q);
        }
        Some(Duration::from_secs(1))
    }

    fn read(&mut self) -> Sample {
        let Some(q) = self.query.take() else {
            return match pdh::Query::open(&self.path) {
                Ok(q) => {
                    // Just added: a rate counter has its baseline now and a value next time.
                    let _ = q.collect();
                    self.query = Some(q);
                    self.unknown("added; the first value follows at the next sample".into())
                }
                Err(status) => self.unknown(format!("cannot add the counter: {}", explain(status))),
            };
        };
        let value = q.collect().and_then(|()| q.value());
        self.query = Some(q);
        match value {
            Ok(v) => {
                let shown = format!("{} = {}", self.path, Unit::None.show(v));
                let (state, msg) = self.thresholds.judge(v, Unit::None, shown);
                Sample::new(self.key.clone(), v, state).message(msg).limits(self.thresholds.limits())
            }
            Err(status) => self.unknown(explain(status)),
        }
    }
}

#[cfg(windows)]
mod pdh {
    //! The PDH calls; the only unsafe code of this sensor.
    #![allow(unsafe_code)]
    use windows_sys::Win32::System::Performance::{
        PdhAddEnglishCounterW, PdhCloseQuery, PdhCollectQueryData, PdhGetFormattedCounterValue,
        PDH_FMT_COUNTERVALUE, PDH_FMT_DOUBLE, PDH_HCOUNTER, PDH_HQUERY,
    };

    const PDH_CSTATUS_VALID_DATA: u32 = 0;
    const PDH_CSTATUS_NEW_DATA: u32 = 1;

    pub(super) struct Query {
        query: PDH_HQUERY,
        counter: PDH_HCOUNTER,
    }

    // SAFETY: PDH query and counter handles may be used from any thread; the sensor uses them
    // from one thread at a time (it sits behind the sensor's mutex).
    unsafe impl Send for Query {}

    impl Drop for Query {
        fn drop(&mut self) {
            // SAFETY: the query was opened by PdhOpenQueryW and is closed once, here (which also
            // frees its counters).
            unsafe { PdhCloseQuery(self.query) };
        }
    }

    impl Query {
        /// Opens a query with the one counter at `path` (English names); Err is the PDH status.
        pub(super) fn open(path: &str) -> Result<Query, u32> {
            let mut query: PDH_HQUERY = std::ptr::null_mut();
            // SAFETY: a null data source is the live machine; `query` is a valid out-pointer.
            let status = unsafe {
                windows_sys::Win32::System::Performance::PdhOpenQueryW(std::ptr::null(), 0, &mut query)
            };
            if status != 0 {
                return Err(status);
            }
            // From here on the query is closed on every way out (Drop).
            let mut q = Query { query, counter: std::ptr::null_mut() };
            let wide: Vec<u16> = path.encode_utf16().chain([0]).collect();
            // SAFETY: `wide` is NUL-terminated and outlives the call; `q.query` is open and
            // `q.counter` a valid out-pointer.
            let status = unsafe { PdhAddEnglishCounterW(q.query, wide.as_ptr(), 0, &mut q.counter) };
            if status != 0 {
                return Err(status);
            }
            Ok(q)
        }

        pub(super) fn collect(&self) -> Result<(), u32> {
            // SAFETY: `self.query` is an open query.
            match unsafe { PdhCollectQueryData(self.query) } {
                0 => Ok(()),
                status => Err(status),
            }
        }

        pub(super) fn value(&self) -> Result<f64, u32> {
            // SAFETY: an all-zero PDH_FMT_COUNTERVALUE is a valid value of this plain C struct.
            let mut v: PDH_FMT_COUNTERVALUE = unsafe { std::mem::zeroed() };
            // Plain PDH_FMT_DOUBLE: percentages are capped at 100, as PDH does by default. (Wine's
            // PDH writes an integer into the double with or without PDH_FMT_NOCAP100.)
            // SAFETY: `self.counter` belongs to the open query; `v` is a valid out-pointer and a
            // null type pointer is allowed.
            let status = unsafe {
                PdhGetFormattedCounterValue(self.counter, PDH_FMT_DOUBLE, std::ptr::null_mut(), &mut v)
            };
            if status != 0 {
                return Err(status);
            }
            if v.CStatus != PDH_CSTATUS_VALID_DATA && v.CStatus != PDH_CSTATUS_NEW_DATA {
                return Err(v.CStatus);
            }
            // SAFETY: PDH_FMT_DOUBLE was asked for, so the union holds the double.
            Ok(unsafe { v.Anonymous.doubleValue })
        }
    }
}
