//! Event records as `ReadEventLogW` returns them: a run of `EVENTLOGRECORD` structures, each a
//! fixed 56-byte header followed by the source name, computer name, user SID, insertion strings
//! and data, all located by offsets inside the record. The bytes come from another process (the
//! event log service) and are parsed as untrusted: every length and offset is checked against the
//! record, and a malformed record ends the parse with an error instead of reading past it.
//! Portable code, so the parser is tested on every platform.
// Elsewhere than on Windows only the tests use the parser.
#![cfg_attr(not(windows), allow(dead_code))]

use crate::sensors::config::EventLevel;

/// Size of the fixed part of `EVENTLOGRECORD`.
const HEADER: usize = 56;
/// `Reserved` of every record: the bytes "LfLe".
const SIGNATURE: u32 = 0x654c_664c;
/// Insertion strings kept per event: enough for a message, bounded for a hostile record.
const MAX_STRINGS: usize = 16;
/// Characters kept of one insertion string.
const MAX_STRING_CHARS: usize = 512;

/// One event, as much of it as a reading needs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Record {
    /// The log's record number: rises by one per event, per log.
    pub number: u32,
    /// When the event happened, seconds since 1970 (UTC).
    pub time: u32,
    /// The event ID as Event Viewer shows it (the low 16 bits; the rest are facility and flags).
    pub event_id: u16,
    pub level: EventLevel,
    pub source: String,
    /// The insertion strings. The full message text would need the source's message DLL; these
    /// are the variable parts, which usually say what happened.
    pub strings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum ParseError {
    #[error("event record at byte {at}: {why}")]
    Malformed { at: usize, why: &'static str },
}

/// Parses every record of `buf` (the bytes `ReadEventLogW` said it returned).
pub(crate) fn parse_records(buf: &[u8]) -> Result<Vec<Record>, ParseError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let bad = |why| ParseError::Malformed { at, why };
        let rest = &buf[at..];
        if rest.len() < HEADER {
            return Err(bad("shorter than a record header"));
        }
        let length = u32_at(rest, 0) as usize;
        if length < HEADER + 4 || length > rest.len() || length % 4 != 0 {
            return Err(bad("its length does not fit the buffer"));
        }
        let rec = &rest[..length];
        if u32_at(rec, 4) != SIGNATURE {
            return Err(bad("no LfLe signature"));
        }
        // The record repeats its length in its last four bytes.
        if u32_at(rec, length - 4) as usize != length {
            return Err(bad("its closing length differs from its opening one"));
        }
        let num_strings = u16_at(rec, 26) as usize;
        let string_offset = u32_at(rec, 36) as usize;
        // The strings region ends where the record's variable parts end (before the closing
        // length); a string that runs past it is cut there by `utf16z`.
        let body_end = length - 4;
        let source = utf16z(rec, HEADER, body_end).ok_or_else(|| bad("its source name lies outside it"))?;
        let mut strings = Vec::new();
        if num_strings > 0 {
            if string_offset < HEADER || string_offset >= body_end {
                return Err(bad("its strings lie outside it"));
            }
            let mut pos = string_offset;
            for _ in 0..num_strings.min(MAX_STRINGS) {
                let Some(s) = utf16z(rec, pos, body_end) else { break };
                pos += (s.encode_utf16().count() + 1) * 2;
                strings.push(truncate(s, MAX_STRING_CHARS));
                if pos >= body_end {
                    break;
                }
            }
        }
        out.push(Record {
            number: u32_at(rec, 8),
            time: u32_at(rec, 12),
            event_id: (u32_at(rec, 20) & 0xffff) as u16,
            level: level(u16_at(rec, 24)),
            source: truncate(source, 256),
            strings,
        });
        at += length;
    }
    Ok(out)
}

/// `EventType` to a level. 0 (`EVENTLOG_SUCCESS`) is what Event Viewer shows as Information.
fn level(event_type: u16) -> EventLevel {
    match event_type {
        1 => EventLevel::Error,
        2 => EventLevel::Warning,
        8 => EventLevel::AuditSuccess,
        16 => EventLevel::AuditFailure,
        _ => EventLevel::Information,
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// The NUL-terminated UTF-16 string at `start`, read no further than `end` (a missing NUL ends
/// it there); invalid UTF-16 becomes U+FFFD. None when `start` is not inside `..end`.
fn utf16z(b: &[u8], start: usize, end: usize) -> Option<String> {
    if start >= end || end > b.len() {
        return None;
    }
    let units: Vec<u16> = b[start..end]
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    Some(String::from_utf16_lossy(&units))
}

/// At most `max` characters of `s`, cut on a character boundary, with `…` when cut.
pub(crate) fn truncate(s: String, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s,
        Some((cut, _)) => {
            let mut t = s[..cut].to_string();
            t.push('…');
            t
        }
    }
}

/// Builds record bytes the way the event log service lays them out, for tests.
#[cfg(test)]
pub(crate) fn encode(r: &Record) -> Vec<u8> {
    let wide = |s: &str| -> Vec<u8> { s.encode_utf16().chain([0]).flat_map(u16::to_le_bytes).collect() };
    let mut var = wide(&r.source);
    var.extend(wide("HOST"));
    let string_offset = HEADER + var.len();
    for s in &r.strings {
        var.extend(wide(s));
    }
    while (HEADER + var.len() + 4) % 4 != 0 {
        var.push(0);
    }
    let length = (HEADER + var.len() + 4) as u32;
    let event_type: u16 = match r.level {
        EventLevel::Error => 1,
        EventLevel::Warning => 2,
        EventLevel::Information => 4,
        EventLevel::AuditSuccess => 8,
        EventLevel::AuditFailure => 16,
    };
    let mut b = Vec::with_capacity(length as usize);
    b.extend(length.to_le_bytes());
    b.extend(SIGNATURE.to_le_bytes());
    b.extend(r.number.to_le_bytes());
    b.extend(r.time.to_le_bytes());
    b.extend(r.time.to_le_bytes());
    // A facility in the high bits, as real event IDs often have, to be masked off.
    b.extend((0x4000_0000u32 | u32::from(r.event_id)).to_le_bytes());
    b.extend(event_type.to_le_bytes());
    b.extend((r.strings.len() as u16).to_le_bytes());
    b.extend(0u16.to_le_bytes()); // category
    b.extend(0u16.to_le_bytes()); // reserved flags
    b.extend(0u32.to_le_bytes()); // closing record number
    b.extend((string_offset as u32).to_le_bytes());
    b.extend(0u32.to_le_bytes()); // SID length
    b.extend(0u32.to_le_bytes()); // SID offset
    b.extend(0u32.to_le_bytes()); // data length
    b.extend((length - 4).to_le_bytes()); // data offset
    b.extend(var);
    b.extend(length.to_le_bytes());
    b
}
