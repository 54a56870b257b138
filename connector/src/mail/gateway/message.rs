//! Just enough of RFC 5322 to read a command mail: the header fields (unfolded), the address in
//! `From:`, and the `Subject:` with RFC 2047 encoded-words (`=?UTF-8?B?...?=` and `?Q?`, also
//! US-ASCII and ISO-8859-1) decoded. Other charsets are refused in words, not guessed.

use base64::Engine;

/// What the gateway needs of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Headers {
    /// The address of `From:`, lower case.
    pub from: Option<String>,
    pub subject: Option<String>,
    pub message_id: Option<String>,
}

/// Why a message cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("the header is not valid text")]
    NotText,
    #[error("Subject: encoded in `{0}`, which is not understood; send it in UTF-8")]
    Charset(String),
    #[error("Subject: a malformed encoded word")]
    Encoding,
    #[error("more than one {0} header")]
    Duplicate(&'static str),
}

/// Reads the header of `data` (everything before the first empty line).
pub fn parse(data: &[u8]) -> Result<Headers, MessageError> {
    let end = find_blank_line(data).unwrap_or(data.len());
    let head = std::str::from_utf8(&data[..end]).map_err(|_| MessageError::NotText)?;
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in head.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.starts_with([' ', '\t']) {
            // A folded continuation of the previous field.
            if let Some((_, v)) = fields.last_mut() {
                v.push_str(line);
            }
        } else if let Some((name, value)) = line.split_once(':') {
            fields.push((name.trim().to_ascii_lowercase(), value.to_string()));
        }
    }
    let one = |name: &'static str| -> Result<Option<&str>, MessageError> {
        let mut it = fields.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str());
        let first = it.next();
        if it.next().is_some() {
            return Err(MessageError::Duplicate(name));
        }
        Ok(first)
    };
    let subject = one("subject")?.map(decode_words).transpose()?;
    let from = one("from")?.and_then(address);
    let message_id = one("message-id")?.map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
    Ok(Headers { from, subject, message_id })
}

fn find_blank_line(data: &[u8]) -> Option<usize> {
    let crlf = data.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = data.windows(2).position(|w| w == b"\n\n");
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The address of a `From:` value: inside `<...>` when present, else the bare value, lower case.
pub fn address(value: &str) -> Option<String> {
    let v = value.trim();
    let a = match (v.rfind('<'), v.rfind('>')) {
        (Some(l), Some(r)) if l < r => &v[l + 1..r],
        _ => v,
    };
    let a = a.trim().to_ascii_lowercase();
    (a.contains('@') && !a.contains(char::is_whitespace)).then_some(a)
}

/// Decodes the RFC 2047 encoded-words of an unstructured header value. Whitespace between two
/// adjacent encoded-words is dropped, as the RFC says.
pub fn decode_words(value: &str) -> Result<String, MessageError> {
    let mut out = String::new();
    let mut rest = value;
    let mut last_was_word = false;
    while !rest.is_empty() {
        match rest.find("=?") {
            Some(start) => {
                let (before, from_start) = rest.split_at(start);
                match parse_word(from_start)? {
                    Some((text, used)) => {
                        if !(last_was_word && before.trim().is_empty()) {
                            out.push_str(before);
                        }
                        out.push_str(&text);
                        rest = &from_start[used..];
                        last_was_word = true;
                    }
                    None => {
                        out.push_str(before);
                        out.push_str("=?");
                        rest = &from_start[2..];
                        last_was_word = false;
                    }
                }
            }
            None => {
                out.push_str(rest);
                break;
            }
        }
    }
    Ok(out.trim().to_string())
}

/// One encoded-word at the start of `s`: its text and its length, or `None` if `s` does not
/// start with one.
fn parse_word(s: &str) -> Result<Option<(String, usize)>, MessageError> {
    let inner = &s[2..];
    let mut parts = inner.splitn(3, '?');
    let (Some(charset), Some(enc), Some(rest)) = (parts.next(), parts.next(), parts.next()) else {
        return Ok(None);
    };
    let Some(text_end) = rest.find("?=") else { return Ok(None) };
    if charset.is_empty() || charset.contains(char::is_whitespace) || enc.len() != 1 {
        return Ok(None);
    }
    let encoded = &rest[..text_end];
    let used = 2 + charset.len() + 1 + enc.len() + 1 + text_end + 2;
    // RFC 2231 allows a language after `*`: `UTF-8*en`.
    let charset = charset.split('*').next().unwrap_or("").to_ascii_lowercase();
    let bytes = match enc {
        "B" | "b" => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(encoded))
            .map_err(|_| MessageError::Encoding)?,
        "Q" | "q" => q_decode(encoded)?,
        _ => return Ok(None),
    };
    let text = match charset.as_str() {
        "utf-8" | "utf8" | "us-ascii" => String::from_utf8(bytes).map_err(|_| MessageError::Encoding)?,
        // Latin-1 bytes are the first 256 code points.
        "iso-8859-1" | "latin1" => bytes.iter().map(|b| *b as char).collect(),
        other => return Err(MessageError::Charset(other.to_string())),
    };
    Ok(Some((text, used)))
}

fn q_decode(s: &str) -> Result<Vec<u8>, MessageError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'_' => out.push(b' '),
            b'=' => {
                let hex = b.get(i + 1..i + 3).ok_or(MessageError::Encoding)?;
                let hex = std::str::from_utf8(hex).map_err(|_| MessageError::Encoding)?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| MessageError::Encoding)?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    Ok(out)
}
