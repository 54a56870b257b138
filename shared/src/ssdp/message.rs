//! A strict, allocation-free parser for SSDP datagrams (HTTP over UDP) and the writer for the ones
//! the responder sends.
//!
//! Parsing borrows from the datagram: a [`Message`] is the start line plus up to [`MAX_HEADERS`]
//! `(name, value)` pairs kept in a fixed array. Typed views ([`Search`], [`Notify`], [`Response`])
//! check what each kind needs. What is accepted, and why it is this strict (every datagram the
//! responder reads may come from anyone on the LAN):
//! - at most [`MAX_MESSAGE`] bytes; real SSDP messages are 200-500 bytes;
//! - UTF-8 text; lines end in CRLF, a bare LF is tolerated; a CR anywhere else is refused;
//! - start line exactly `M-SEARCH * HTTP/1.x`, `NOTIFY * HTTP/1.x` or `HTTP/1.x NNN reason`;
//! - header names are HTTP tokens, compared case-insensitively; no space before the colon, no
//!   folded lines, no control characters in values, no header twice (a duplicate `ST` or
//!   `LOCATION` would be ambiguous);
//! - the header block ends with an empty line or with the end of the datagram right after a line
//!   end; nothing but line ends may follow it (SSDP has no body);
//! - the last line must be terminated, so a datagram cut short is refused.

use std::fmt::Write as _;

/// Largest datagram accepted. SSDP messages are a few hundred bytes; 2 KiB leaves room for long
/// `SERVER`/`LOCATION` values and vendor headers while keeping the work per datagram small.
pub const MAX_MESSAGE: usize = 2048;
/// Most headers accepted in one message; real messages carry 5 to 12.
pub const MAX_HEADERS: usize = 32;

/// Why a datagram was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("datagram of {0} bytes is over the {MAX_MESSAGE}-byte limit")]
    TooLarge(usize),
    #[error("datagram is not UTF-8 text")]
    NotText,
    #[error("start line is not an SSDP request or response")]
    StartLine,
    #[error("line {0} is not terminated (datagram cut short)")]
    Unterminated(usize),
    #[error("line {0} is not a valid header")]
    Header(usize),
    #[error("more than {MAX_HEADERS} headers")]
    TooManyHeaders,
    #[error("header on line {0} appears twice")]
    Duplicate(usize),
    #[error("data after the header block")]
    Body,
    #[error("{kind} lacks or has an invalid `{header}` header")]
    Missing { kind: &'static str, header: &'static str },
}

/// The first line of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartLine<'a> {
    /// `M-SEARCH * HTTP/1.1`
    Search,
    /// `NOTIFY * HTTP/1.1`
    Notify,
    /// `HTTP/1.1 200 OK`; any three-digit status, the reason phrase may be empty.
    Response { status: u16, reason: &'a str },
}

/// A parsed message borrowing from its datagram.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    pub start: StartLine<'a>,
    headers: [(&'a str, &'a str); MAX_HEADERS],
    len: usize,
}

impl PartialEq for Message<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.start == other.start && self.headers() == other.headers()
    }
}

impl<'a> Message<'a> {
    /// Parses one datagram; see the module doc for what is accepted.
    pub fn parse(datagram: &'a [u8]) -> Result<Self, ParseError> {
        if datagram.len() > MAX_MESSAGE {
            return Err(ParseError::TooLarge(datagram.len()));
        }
        let text = std::str::from_utf8(datagram).map_err(|_| ParseError::NotText)?;
        let mut rest = text;
        let mut line_no = 0usize;
        let first = next_line(&mut rest, &mut line_no)?.ok_or(ParseError::StartLine)?;
        let start = parse_start_line(first)?;
        let mut msg = Message { start, headers: [("", ""); MAX_HEADERS], len: 0 };
        while let Some(line) = next_line(&mut rest, &mut line_no)? {
            if line.is_empty() {
                // End of the header block: only further line ends may follow.
                if rest.bytes().all(|b| b == b'\r' || b == b'\n') {
                    return Ok(msg);
                }
                return Err(ParseError::Body);
            }
            let (name, value) = parse_header(line).ok_or(ParseError::Header(line_no))?;
            if msg.header(name).is_some() {
                return Err(ParseError::Duplicate(line_no));
            }
            if msg.len == MAX_HEADERS {
                return Err(ParseError::TooManyHeaders);
            }
            msg.headers[msg.len] = (name, value);
            msg.len += 1;
        }
        // The datagram ended right after a line end without the empty line; accepted, since the
        // datagram boundary already delimits the message.
        Ok(msg)
    }

    /// The value of header `name` (case-insensitive), trimmed.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers().iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| *v)
    }

    /// All headers in order, names as written.
    pub fn headers(&self) -> &[(&'a str, &'a str)] {
        &self.headers[..self.len]
    }

    /// Builds a message from parts, e.g. to render it; `None` when there are too many headers.
    pub fn from_parts(start: StartLine<'a>, headers: &[(&'a str, &'a str)]) -> Option<Self> {
        if headers.len() > MAX_HEADERS {
            return None;
        }
        let mut msg = Message { start, headers: [("", ""); MAX_HEADERS], len: headers.len() };
        msg.headers[..headers.len()].copy_from_slice(headers);
        Some(msg)
    }

    /// The wire form: CRLF line ends and the closing empty line. Parsing it gives back an equal
    /// message whenever names are tokens and values are trimmed text without control characters.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(256);
        match self.start {
            StartLine::Search => out.push_str("M-SEARCH * HTTP/1.1\r\n"),
            StartLine::Notify => out.push_str("NOTIFY * HTTP/1.1\r\n"),
            StartLine::Response { status, reason } => {
                let _ = write!(out, "HTTP/1.1 {status:03} {reason}\r\n");
            }
        }
        for (name, value) in self.headers() {
            let _ = write!(out, "{name}: {value}\r\n");
        }
        out.push_str("\r\n");
        out
    }
}

/// Cuts the next line (without its CRLF or LF) off `rest`; `None` at the end of the text.
fn next_line<'a>(rest: &mut &'a str, line_no: &mut usize) -> Result<Option<&'a str>, ParseError> {
    if rest.is_empty() {
        return Ok(None);
    }
    *line_no += 1;
    let Some(end) = rest.find('\n') else {
        return Err(ParseError::Unterminated(*line_no));
    };
    let line = &rest[..end];
    *rest = &rest[end + 1..];
    Ok(Some(line.strip_suffix('\r').unwrap_or(line)))
}

fn parse_start_line(line: &str) -> Result<StartLine<'_>, ParseError> {
    let version_ok = |v: &str| v == "HTTP/1.1" || v == "HTTP/1.0";
    if let Some(version) = line.strip_prefix("M-SEARCH * ") {
        return if version_ok(version) { Ok(StartLine::Search) } else { Err(ParseError::StartLine) };
    }
    if let Some(version) = line.strip_prefix("NOTIFY * ") {
        return if version_ok(version) { Ok(StartLine::Notify) } else { Err(ParseError::StartLine) };
    }
    let (version, rest) = line.split_once(' ').ok_or(ParseError::StartLine)?;
    if !version_ok(version) {
        return Err(ParseError::StartLine);
    }
    let (code, reason) = match rest.split_once(' ') {
        Some((code, reason)) => (code, reason),
        None => (rest, ""),
    };
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) || !is_value(reason) {
        return Err(ParseError::StartLine);
    }
    let status = code.parse().map_err(|_| ParseError::StartLine)?;
    Ok(StartLine::Response { status, reason: reason.trim_matches(is_ows) })
}

fn parse_header(line: &str) -> Option<(&str, &str)> {
    let (name, value) = line.split_once(':')?;
    if !is_token(name) || !is_value(value) {
        return None;
    }
    Some((name, value.trim_matches(is_ows)))
}

fn is_ows(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// An HTTP token (RFC 9110 `tchar`): header names, no spaces, no separators.
pub fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Text allowed in a header value: no control characters except tab.
pub fn is_value(s: &str) -> bool {
    s.chars().all(|c| c == '\t' || !c.is_control())
}

/// A parsed `M-SEARCH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Search<'a> {
    pub st: &'a str,
    /// Seconds a responder may wait; `None` when absent. Values too large for `u32` saturate.
    pub mx: Option<u32>,
    pub host: &'a str,
}

impl<'a> Search<'a> {
    /// Checks the headers an M-SEARCH must carry: `HOST`, `MAN: "ssdp:discover"`, `ST`, and a
    /// numeric `MX` if present.
    pub fn from_message(m: &Message<'a>) -> Result<Self, ParseError> {
        let missing = |header| ParseError::Missing { kind: "M-SEARCH", header };
        if m.start != StartLine::Search {
            return Err(ParseError::StartLine);
        }
        let host = m.header("HOST").filter(|h| !h.is_empty()).ok_or(missing("HOST"))?;
        let man = m.header("MAN").ok_or(missing("MAN"))?;
        if man.trim_matches('"') != "ssdp:discover" {
            return Err(missing("MAN"));
        }
        let st = m.header("ST").filter(|s| !s.is_empty()).ok_or(missing("ST"))?;
        let mx = match m.header("MX") {
            None => None,
            Some(v) => Some(parse_number(v).ok_or(missing("MX"))?),
        };
        Ok(Search { st, mx, host })
    }

    /// Whether the request was sent to the multicast group (judged by `HOST`, which must name the
    /// address the request was sent to). Only timing depends on this, so a lying sender gains
    /// nothing: the rate limits apply either way.
    pub fn is_multicast(&self) -> bool {
        let host = self.host.strip_suffix(":1900").unwrap_or(self.host);
        host == "239.255.255.250"
    }
}

/// `NTS` of a NOTIFY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyKind {
    Alive,
    ByeBye,
    Update,
}

/// A parsed `NOTIFY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Notify<'a> {
    pub nt: &'a str,
    pub kind: NotifyKind,
    pub usn: &'a str,
    /// Present on `ssdp:alive` and `ssdp:update`.
    pub location: Option<&'a str>,
    pub max_age: Option<u32>,
    pub boot_id: Option<u32>,
}

impl<'a> Notify<'a> {
    pub fn from_message(m: &Message<'a>) -> Result<Self, ParseError> {
        let missing = |header| ParseError::Missing { kind: "NOTIFY", header };
        if m.start != StartLine::Notify {
            return Err(ParseError::StartLine);
        }
        let nt = m.header("NT").filter(|s| !s.is_empty()).ok_or(missing("NT"))?;
        let kind = match m.header("NTS").ok_or(missing("NTS"))? {
            "ssdp:alive" => NotifyKind::Alive,
            "ssdp:byebye" => NotifyKind::ByeBye,
            "ssdp:update" => NotifyKind::Update,
            _ => return Err(missing("NTS")),
        };
        let usn = m.header("USN").filter(|s| !s.is_empty()).ok_or(missing("USN"))?;
        let location = m.header("LOCATION");
        if kind != NotifyKind::ByeBye && location.is_none_or(str::is_empty) {
            return Err(missing("LOCATION"));
        }
        Ok(Notify {
            nt,
            kind,
            usn,
            location,
            max_age: max_age(m),
            boot_id: m.header("BOOTID.UPNP.ORG").and_then(parse_number),
        })
    }
}

/// A parsed `200 OK` answer to an M-SEARCH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response<'a> {
    pub st: &'a str,
    pub usn: &'a str,
    pub location: &'a str,
    pub server: Option<&'a str>,
    pub max_age: Option<u32>,
    pub boot_id: Option<u32>,
}

impl<'a> Response<'a> {
    pub fn from_message(m: &Message<'a>) -> Result<Self, ParseError> {
        let missing = |header| ParseError::Missing { kind: "response", header };
        if !matches!(m.start, StartLine::Response { status: 200, .. }) {
            return Err(ParseError::StartLine);
        }
        Ok(Response {
            st: m.header("ST").filter(|s| !s.is_empty()).ok_or(missing("ST"))?,
            usn: m.header("USN").filter(|s| !s.is_empty()).ok_or(missing("USN"))?,
            location: m.header("LOCATION").filter(|s| !s.is_empty()).ok_or(missing("LOCATION"))?,
            server: m.header("SERVER"),
            max_age: max_age(m),
            boot_id: m.header("BOOTID.UPNP.ORG").and_then(parse_number),
        })
    }
}

/// `max-age=N` from `CACHE-CONTROL`.
fn max_age(m: &Message<'_>) -> Option<u32> {
    m.header("CACHE-CONTROL")?.split(',').find_map(|directive| {
        let (k, v) = directive.split_once('=')?;
        if k.trim().eq_ignore_ascii_case("max-age") {
            parse_number(v.trim())
        } else {
            None
        }
    })
}

/// A decimal number of at most 10 digits; larger values saturate at `u32::MAX`.
fn parse_number(v: &str) -> Option<u32> {
    if v.is_empty() || v.len() > 10 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(v.parse::<u64>().ok()?.min(u64::from(u32::MAX)) as u32)
}

/// The `M-SEARCH` a searcher multicasts ([`super::search`], tests and the probe).
pub fn search_request(st: &str, mx: u32, host: &str) -> String {
    let mx = mx.to_string();
    let headers = [("HOST", host), ("MAN", "\"ssdp:discover\""), ("MX", mx.as_str()), ("ST", st)];
    Message::from_parts(StartLine::Search, &headers).map(|m| m.render()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEARCH: &[u8] = b"M-SEARCH * HTTP/1.1\r\nHost:239.255.255.250:1900\r\nMan:\"ssdp:discover\"\r\nST: urn:outpost-dev:service:connector:1\r\nMX: 2\r\n\r\n";

    #[test]
    fn search_from_ssdp_client_parses() {
        let m = Message::parse(SEARCH).unwrap();
        let s = Search::from_message(&m).unwrap();
        assert_eq!(s.st, "urn:outpost-dev:service:connector:1");
        assert_eq!(s.mx, Some(2));
        assert!(s.is_multicast());
        assert_eq!(m.header("st"), Some("urn:outpost-dev:service:connector:1"));
    }

    #[test]
    fn bare_lf_and_missing_final_empty_line_are_tolerated() {
        let m = Message::parse(b"NOTIFY * HTTP/1.1\nNT: a\nNTS: ssdp:byebye\nUSN: uuid:x\n").unwrap();
        let n = Notify::from_message(&m).unwrap();
        assert_eq!((n.nt, n.kind, n.usn, n.location), ("a", NotifyKind::ByeBye, "uuid:x", None));
    }

    #[test]
    fn response_fields_and_cache_control() {
        let m = Message::parse(
            b"HTTP/1.1 200 OK\r\nCACHE-CONTROL: no-cache, max-age = 1800\r\nST: s\r\nUSN: u\r\nLOCATION: http://10.0.0.1/\r\nBOOTID.UPNP.ORG: 7\r\n\r\n",
        )
        .unwrap();
        let r = Response::from_message(&m).unwrap();
        assert_eq!((r.st, r.usn, r.location, r.server), ("s", "u", "http://10.0.0.1/", None));
        assert_eq!((r.max_age, r.boot_id), (Some(1800), Some(7)));
    }

    #[test]
    fn malformed_input_is_refused_with_a_reason() {
        let cases: &[(&[u8], ParseError)] = &[
            (b"", ParseError::StartLine),
            (b"GET / HTTP/1.1\r\n\r\n", ParseError::StartLine),
            (b"M-SEARCH * HTTP/2\r\n\r\n", ParseError::StartLine),
            (b"M-SEARCH  * HTTP/1.1\r\n\r\n", ParseError::StartLine),
            (b"HTTP/1.1 20 OK\r\n\r\n", ParseError::StartLine),
            (b"M-SEARCH * HTTP/1.1\r\nST: x", ParseError::Unterminated(2)),
            (b"M-SEARCH * HTTP/1.1\r\nST : x\r\n", ParseError::Header(2)),
            (b"M-SEARCH * HTTP/1.1\r\n folded\r\n", ParseError::Header(2)),
            (b"M-SEARCH * HTTP/1.1\r\nST: a\rb\r\n", ParseError::Header(2)),
            (b"M-SEARCH * HTTP/1.1\r\nST: a\r\nst: b\r\n", ParseError::Duplicate(3)),
            (b"M-SEARCH * HTTP/1.1\r\nST: a\r\n\r\nbody", ParseError::Body),
            (b"M-SEARCH * HTTP/1.1\r\nST: \xff\r\n", ParseError::NotText),
        ];
        for (input, want) in cases {
            assert_eq!(Message::parse(input).unwrap_err(), *want, "{:?}", String::from_utf8_lossy(input));
        }
        let big = vec![b'a'; MAX_MESSAGE + 1];
        assert_eq!(Message::parse(&big).unwrap_err(), ParseError::TooLarge(MAX_MESSAGE + 1));
        let mut many = String::from("NOTIFY * HTTP/1.1\r\n");
        for i in 0..=MAX_HEADERS {
            many.push_str(&format!("X-{i}: v\r\n"));
        }
        assert_eq!(Message::parse(many.as_bytes()).unwrap_err(), ParseError::TooManyHeaders);
    }

    #[test]
    fn search_semantics_are_checked() {
        let no_man = b"M-SEARCH * HTTP/1.1\r\nHOST: h\r\nST: s\r\n\r\n";
        let m = Message::parse(no_man).unwrap();
        assert_eq!(
            Search::from_message(&m).unwrap_err(),
            ParseError::Missing { kind: "M-SEARCH", header: "MAN" }
        );
        let bad_mx = b"M-SEARCH * HTTP/1.1\r\nHOST: h\r\nMAN: \"ssdp:discover\"\r\nST: s\r\nMX: -1\r\n\r\n";
        assert!(Search::from_message(&Message::parse(bad_mx).unwrap()).is_err());
        let huge_mx = b"M-SEARCH * HTTP/1.1\r\nHOST: 10.0.0.1:1900\r\nMAN: \"ssdp:discover\"\r\nST: s\r\nMX: 9999999999\r\n\r\n";
        let s = Search::from_message(&Message::parse(huge_mx).unwrap()).unwrap();
        assert_eq!(s.mx, Some(u32::MAX));
        assert!(!s.is_multicast());
    }

    #[test]
    fn rendered_search_request_parses_back() {
        let text = search_request("ssdp:all", 3, "239.255.255.250:1900");
        let m = Message::parse(text.as_bytes()).unwrap();
        let s = Search::from_message(&m).unwrap();
        assert_eq!((s.st, s.mx, s.is_multicast()), ("ssdp:all", Some(3), true));
    }
}
