//! Config files: TOML, parsed, then validated, then built. Every mistake becomes a [`Problem`]
//! naming the file, the line and the key, and all problems of a file are reported together.
//! A role that gets a [`ConfigError`] exits with [`EXIT_CONFIG`] before it opens any port or device.

use serde::de::DeserializeOwned;
use std::fmt;
use std::path::{Path, PathBuf};

/// Exit status for bad configuration or arguments (`EX_USAGE` of sysexits.h).
pub const EXIT_CONFIG: i32 = 64;

/// One thing wrong in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key, e.g. `uplink.cloud` or `sensor[2].interval`.
    pub key: String,
    /// 1-based line, when it could be placed.
    pub line: Option<usize>,
    pub message: String,
}

impl Problem {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Problem { key: key.into(), line: None, message: message.into() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read config: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}", render(path, problems))]
    Invalid { path: PathBuf, problems: Vec<Problem> },
}

impl ConfigError {
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid { problems, .. } => problems,
            ConfigError::Read { .. } => &[],
        }
    }
}

fn render(path: &Path, problems: &[Problem]) -> String {
    let mut out = String::new();
    for (i, p) in problems.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        match p.line {
            Some(line) => {
                out.push_str(&format!("{}:{}: key `{}`: {}", path.display(), line, p.key, p.message))
            }
            None => out.push_str(&format!("{}: key `{}`: {}", path.display(), p.key, p.message)),
        }
    }
    out
}

/// A config struct checks what serde cannot: ranges, combinations, files that must exist.
pub trait Validate {
    /// Pushes every problem found; pushing nothing means valid.
    fn validate(&self, problems: &mut Vec<Problem>);
}

/// Reads, parses and validates a config file.
pub fn load<T: DeserializeOwned + Validate>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    parse(&text, path)
}

/// Parses and validates config text; `origin` names it in errors.
pub fn parse<T: DeserializeOwned + Validate>(text: &str, origin: &Path) -> Result<T, ConfigError> {
    let value: T = toml::from_str(text).map_err(|e| ConfigError::Invalid {
        path: origin.to_path_buf(),
        problems: vec![problem_from_toml(text, &e)],
    })?;
    let mut problems = Vec::new();
    value.validate(&mut problems);
    if problems.is_empty() {
        return Ok(value);
    }
    for p in &mut problems {
        if p.line.is_none() {
            p.line = locate_key(text, &p.key);
        }
    }
    Err(ConfigError::Invalid { path: origin.to_path_buf(), problems })
}

fn problem_from_toml(text: &str, e: &toml::de::Error) -> Problem {
    let message = e.message().trim().to_string();
    let Some(span) = e.span() else {
        return Problem { key: String::from("(file)"), line: None, message };
    };
    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
    let key = key_at(text, span.start, &message);
    Problem { key, line: Some(line), message }
}

/// The dotted key at byte `pos`: the table header above it plus the key on its line (or, for an
/// unknown field, the key the span points at).
fn key_at(text: &str, pos: usize, message: &str) -> String {
    let pos = pos.min(text.len());
    let line_start = text[..pos].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line_end = text[pos..].find('\n').map(|i| pos + i).unwrap_or(text.len());
    let line = &text[line_start..line_end];
    let mut section = String::new();
    for l in text[..line_start].lines().rev() {
        let t = l.trim();
        if t.starts_with('[') {
            section = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            break;
        }
    }
    let leaf = if let Some(name) = message.strip_prefix("unknown field `") {
        name.split('`').next().unwrap_or("").to_string()
    } else if let Some((k, _)) = line.split_once('=') {
        k.trim().trim_matches('"').to_string()
    } else {
        line.trim().trim_matches(|c| c == '[' || c == ']').to_string()
    };
    match (section.is_empty(), leaf.is_empty()) {
        (true, _) => leaf,
        (false, true) => section,
        (false, false) if line.trim_start().starts_with('[') => leaf,
        (false, false) => format!("{section}.{leaf}"),
    }
}

/// Best effort: the line where the last segment of a dotted key (`sensor[2].interval` → the third
/// `[[sensor]]` table's `interval`; `relay.relays[1].relay` → the second `[[relay.relays]]`
/// table's `relay`) is set.
fn locate_key(text: &str, key: &str) -> Option<usize> {
    let mut parts: Vec<&str> = key.split('.').collect();
    let leaf = parts.pop()?;
    let leaf = leaf.split('[').next().unwrap_or(leaf);
    // Find the table the key lives in: the one its whole path names, else its top-level table
    // (a key inside an inline table or a sub-table has no header of its own).
    let mut start_line = 0usize;
    if let Some(top) = parts.first() {
        start_line = find_table(text, &parts.join(".")).or_else(|| find_table(text, top))?;
    }
    for (i, l) in text.lines().enumerate().skip(start_line) {
        let t = l.trim_start();
        if i > start_line && t.starts_with('[') && !parts.is_empty() {
            break;
        }
        if let Some(rest) = t.strip_prefix(leaf) {
            if rest.trim_start().starts_with('=') {
                return Some(i + 1);
            }
        }
    }
    if parts.is_empty() {
        None
    } else {
        Some(start_line + 1)
    }
}

/// The line (0-based) of the header of table `spec`, honouring a trailing array index like
/// `sensor[2]` (the third `[[sensor]]`).
fn find_table(text: &str, spec: &str) -> Option<usize> {
    let (name, index) = match spec.strip_suffix(']').and_then(|s| s.rsplit_once('[')) {
        Some((n, i)) => (n, i.parse::<usize>().ok()),
        None => (spec, None),
    };
    let mut seen = 0usize;
    for (i, l) in text.lines().enumerate() {
        let t = l.trim();
        let header = t.trim_matches(|c| c == '[' || c == ']').trim();
        if t.starts_with('[') && header == name {
            if index.is_none_or(|idx| idx == seen) {
                return Some(i);
            }
            seen += 1;
        }
    }
    None
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key `{}`: {}", self.key, self.message)
    }
}

/// Parses a human size such as `256MiB`, `1 GiB`, `500kB` or a plain byte count.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num.parse().map_err(|_| format!("`{s}` is not a size; write e.g. `256MiB`"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "kib" | "k" => 1024.0,
        "mb" => 1e6,
        "mib" | "m" => 1024.0 * 1024.0,
        "gb" => 1e9,
        "gib" | "g" => 1024.0 * 1024.0 * 1024.0,
        other => return Err(format!("unknown size unit `{other}` in `{s}`; use B, KiB, MiB or GiB")),
    };
    Ok((num * mult) as u64)
}

/// Serde helper for byte sizes written as `"256MiB"` or as a plain integer.
pub mod size {
    use serde::{de, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(*v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(n),
            Raw::S(s) => super::parse_size(&s).map_err(de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Conf {
        name: String,
        #[serde(default)]
        section: Section,
    }

    #[derive(Debug, Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    struct Section {
        #[serde(default)]
        port: u16,
    }

    impl Validate for Conf {
        fn validate(&self, problems: &mut Vec<Problem>) {
            if self.name.is_empty() {
                problems.push(Problem::new("name", "must not be empty"));
            }
            if self.section.port == 1 {
                problems.push(Problem::new("section.port", "port 1 is reserved"));
            }
        }
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let text = "name = \"x\"\n\n[section]\nport = 3\nprot = 4\n";
        let err = parse::<Conf>(text, Path::new("hub.toml")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("hub.toml:5: key `section.prot`"), "{msg}");
        assert!(msg.contains("unknown field"), "{msg}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let text = "name = \"x\"\n[section]\nport = \"eighty\"\n";
        let err = parse::<Conf>(text, Path::new("c.toml")).unwrap_err();
        assert!(err.to_string().starts_with("c.toml:3: key `section.port`"), "{err}");
    }

    #[test]
    fn all_validation_problems_come_together_with_lines() {
        let text = "name = \"\"\n[section]\nport = 1\n";
        let err = parse::<Conf>(text, Path::new("c.toml")).unwrap_err();
        assert_eq!(err.problems().len(), 2);
        let msg = err.to_string();
        assert!(msg.contains("c.toml:1: key `name`: must not be empty"), "{msg}");
        assert!(msg.contains("c.toml:3: key `section.port`: port 1 is reserved"), "{msg}");
    }

    #[test]
    fn keys_in_nested_arrays_of_tables_are_found() {
        let text = "[relay]\nport = 1\n\n[[relay.relays]]\nrelay = 1\n\n[[relay.relays]]\nrelay = 9\n";
        assert_eq!(locate_key(text, "relay.relays[1].relay"), Some(8));
        assert_eq!(locate_key(text, "relay.relays[0].relay"), Some(5));
        assert_eq!(locate_key(text, "relay.port"), Some(2));
        let text = "[[sensor]]\nkind = 1\n[[sensor]]\nkind = 2\n";
        assert_eq!(locate_key(text, "sensor[1].kind"), Some(4));
        assert_eq!(locate_key(text, "sensor[1].http.url"), Some(3), "the table when the key is not there");
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("256MiB").unwrap(), 256 << 20);
        assert_eq!(parse_size("1 GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert!(parse_size("12 parsecs").is_err());
    }
}
