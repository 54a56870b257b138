//! The classic event log API (advapi32): `OpenEventLogW`, `GetOldestEventLogRecord`,
//! `GetNumberOfEventLogRecords`, `ReadEventLogW` with a seek to a record number. The only unsafe
//! code of the sensor; the bytes it returns are parsed by [`super::record`].
#![allow(unsafe_code)]

use super::record::{parse_records, Record};
use super::Source;
use std::collections::HashMap;
use windows_sys::Win32::Foundation::{GetLastError, ERROR_HANDLE_EOF, ERROR_INSUFFICIENT_BUFFER, HANDLE};
use windows_sys::Win32::System::EventLog::{
    CloseEventLog, GetNumberOfEventLogRecords, GetOldestEventLogRecord, OpenEventLogW, ReadEventLogW,
    EVENTLOG_SEEK_READ,
};

/// `EVENTLOG_FORWARDS_READ`: windows-sys keeps it in `SystemServices`, a large module for one
/// constant.
const EVENTLOG_FORWARDS_READ: u32 = 4;
/// A first read asks for this much; one record rarely needs more.
const READ_BUFFER: usize = 64 * 1024;
/// A record needing more than this is refused rather than allocated for (the classic log caps a
/// record far below it).
const MAX_RECORD: usize = 1024 * 1024;

/// An open log.
struct Log(HANDLE);

// SAFETY: an event log handle is not tied to the thread that opened it; the sensor uses it from
// one thread at a time (it sits behind the sensor's mutex).
unsafe impl Send for Log {}

impl Drop for Log {
    fn drop(&mut self) {
        // SAFETY: the handle came from OpenEventLogW and is closed once, here.
        unsafe { CloseEventLog(self.0) };
    }
}

#[derive(Default)]
pub(super) struct EventLogApi {
    open: HashMap<String, Log>,
}

fn last_error() -> u32 {
    // SAFETY: reads the calling thread's last-error value; no preconditions.
    unsafe { GetLastError() }
}

fn describe(code: u32) -> String {
    std::io::Error::from_raw_os_error(code as i32).to_string()
}

impl EventLogApi {
    fn handle(&mut self, log: &str) -> Result<HANDLE, String> {
        if let Some(l) = self.open.get(log) {
            return Ok(l.0);
        }
        let name: Vec<u16> = log.encode_utf16().chain([0]).collect();
        // SAFETY: `name` is NUL-terminated and outlives the call; a null server is this machine.
        let h = unsafe { OpenEventLogW(std::ptr::null(), name.as_ptr()) };
        if h.is_null() {
            return Err(format!("cannot open it: {}", describe(last_error())));
        }
        self.open.insert(log.to_string(), Log(h));
        Ok(h)
    }

    /// After a failure the handle may be stale (the log was cleared or replaced, which the API
    /// reports as ERROR_EVENTLOG_FILE_CHANGED on the old handle): open it afresh next time.
    fn forget(&mut self, log: &str) {
        self.open.remove(log);
    }
}

impl Source for EventLogApi {
    fn extent(&mut self, log: &str) -> Result<(u32, u32), String> {
        let h = self.handle(log)?;
        let (mut oldest, mut count) = (0u32, 0u32);
        // SAFETY: `h` is an open event log handle and the out-pointers are valid u32s.
        let ok = unsafe {
            GetOldestEventLogRecord(h, &mut oldest) != 0 && GetNumberOfEventLogRecords(h, &mut count) != 0
        };
        if !ok {
            let e = last_error();
            self.forget(log);
            return Err(format!("cannot count its records: {}", describe(e)));
        }
        Ok((oldest, count))
    }

    fn read(&mut self, log: &str, from: u32, out: &mut Vec<Record>) -> Result<(), String> {
        let h = self.handle(log)?;
        let mut buf = vec![0u8; READ_BUFFER];
        loop {
            let (mut got, mut needed) = (0u32, 0u32);
            // SAFETY: `buf` is writable for its whole length, which is what we pass; the
            // out-pointers are valid u32s; `h` is an open event log handle.
            let ok = unsafe {
                ReadEventLogW(
                    h,
                    EVENTLOG_SEEK_READ | EVENTLOG_FORWARDS_READ,
                    from,
                    buf.as_mut_ptr().cast(),
                    buf.len() as u32,
                    &mut got,
                    &mut needed,
                )
            };
            if ok != 0 {
                let got = (got as usize).min(buf.len());
                let records = parse_records(&buf[..got]).map_err(|e| e.to_string())?;
                out.extend(records);
                return Ok(());
            }
            match last_error() {
                ERROR_HANDLE_EOF => return Ok(()),
                ERROR_INSUFFICIENT_BUFFER
                    if (needed as usize) > buf.len() && (needed as usize) <= MAX_RECORD =>
                {
                    buf = vec![0u8; needed as usize];
                }
                ERROR_INSUFFICIENT_BUFFER => {
                    return Err(format!("record {from} needs {needed} bytes, more than {MAX_RECORD} allowed"))
                }
                e => {
                    self.forget(log);
                    return Err(describe(e));
                }
            }
        }
    }
}
