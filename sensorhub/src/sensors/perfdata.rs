//! Output of Nagios-compatible plugins, as the Monitoring Plugins Development Guidelines define it:
//!
//! ```text
//! TEXT OUTPUT | OPTIONAL PERFDATA
//! LONG TEXT LINE 1
//! LONG TEXT LINE 2 | PERFDATA LINE 2
//! PERFDATA LINE 3
//! ```
//!
//! Performance data is a space-separated list of `'label'=value[UOM];[warn];[crit];[min];[max]`;
//! a label with spaces or `=` is single-quoted, a quote inside it doubled. `warn` and `crit` are
//! ranges (`10`, `10:`, `~:10`, `10:20`, `@10:20`).

use outpost_shared::model::State;

/// What a plugin printed on stdout.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PluginOutput {
    /// The first line before any `|`: the status message.
    pub text: String,
    /// Further lines of text.
    pub long_text: Vec<String>,
    pub perf: Vec<Perf>,
}

/// One performance value.
#[derive(Debug, Clone, PartialEq)]
pub struct Perf {
    pub label: String,
    /// `None` when the plugin printed `U`: the value could not be determined.
    pub value: Option<f64>,
    /// Unit of measurement as printed (`s`, `ms`, `%`, `B`, `KB`, `c`, ...); empty for none.
    pub uom: String,
    pub warn: Option<Range>,
    pub crit: Option<Range>,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

impl Perf {
    /// The value's state by its own ranges: the plugin's exit code judges the check as a whole,
    /// this judges each graph line.
    pub fn state(&self) -> State {
        match self.value {
            None => State::Unknown,
            Some(v) if self.crit.is_some_and(|r| r.alerts(v)) => State::Error,
            Some(v) if self.warn.is_some_and(|r| r.alerts(v)) => State::Warn,
            Some(_) => State::Ok,
        }
    }
}

/// A threshold range: alert when the value is outside `start..=end` (or inside, with `@`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Range {
    pub start: f64,
    pub end: f64,
    pub inside: bool,
}

impl Range {
    pub fn parse(s: &str) -> Option<Range> {
        let s = s.trim();
        if s.is_empty() {
            return None;
        }
        let (inside, s) = match s.strip_prefix('@') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let (start, end) = match s.split_once(':') {
            None => (0.0, s.parse().ok()?),
            Some((a, b)) => {
                let start = match a {
                    "~" => f64::NEG_INFINITY,
                    "" => 0.0,
                    a => a.parse().ok()?,
                };
                let end = if b.is_empty() { f64::INFINITY } else { b.parse().ok()? };
                (start, end)
            }
        };
        Some(Range { start, end, inside })
    }

    pub fn alerts(&self, v: f64) -> bool {
        let within = self.start <= v && v <= self.end;
        if self.inside {
            within
        } else {
            !within
        }
    }
}

/// Splits plugin stdout into text, long text and performance data.
pub fn parse_output(stdout: &str) -> PluginOutput {
    let mut lines = stdout.lines();
    let first = lines.next().unwrap_or("");
    let (text, first_perf) = match first.split_once('|') {
        Some((t, p)) => (t, p),
        None => (first, ""),
    };
    let mut perf_text = first_perf.to_string();
    let mut long_text = Vec::new();
    let mut in_perf = false;
    for line in lines {
        if in_perf {
            perf_text.push(' ');
            perf_text.push_str(line);
            continue;
        }
        match line.split_once('|') {
            Some((t, p)) => {
                long_text.push(t.trim_end().to_string());
                perf_text.push(' ');
                perf_text.push_str(p);
                in_perf = true;
            }
            None => long_text.push(line.to_string()),
        }
    }
    while long_text.last().is_some_and(|l| l.trim().is_empty()) {
        long_text.pop();
    }
    PluginOutput { text: text.trim().to_string(), long_text, perf: parse_perfdata(&perf_text) }
}

/// Parses performance data; malformed entries are skipped, the rest kept.
pub fn parse_perfdata(s: &str) -> Vec<Perf> {
    let chars: Vec<char> = s.chars().collect();
    let n = chars.len();
    let mut i = 0;
    let mut out = Vec::new();
    loop {
        while i < n && chars[i].is_whitespace() {
            i += 1;
        }
        if i >= n {
            break;
        }
        let mut label = String::new();
        if chars[i] == '\'' {
            i += 1;
            let mut closed = false;
            while i < n {
                if chars[i] == '\'' {
                    if i + 1 < n && chars[i + 1] == '\'' {
                        label.push('\'');
                        i += 2;
                        continue;
                    }
                    i += 1;
                    closed = true;
                    break;
                }
                label.push(chars[i]);
                i += 1;
            }
            if !closed {
                break;
            }
        } else {
            while i < n && chars[i] != '=' && !chars[i].is_whitespace() {
                label.push(chars[i]);
                i += 1;
            }
        }
        if i >= n || chars[i] != '=' || label.is_empty() {
            // Not `label=...`: skip this word and go on with the next.
            while i < n && !chars[i].is_whitespace() {
                i += 1;
            }
            continue;
        }
        i += 1;
        let start = i;
        while i < n && !chars[i].is_whitespace() {
            i += 1;
        }
        let data: String = chars[start..i].iter().collect();
        if let Some(p) = parse_value(label, &data) {
            out.push(p);
        }
    }
    out
}

fn parse_value(label: String, data: &str) -> Option<Perf> {
    let mut fields = data.split(';');
    let first = fields.next()?;
    let (value, uom) = if first == "U" {
        (None, String::new())
    } else {
        let end = number_end(first);
        if end == 0 {
            return None;
        }
        (Some(first[..end].parse::<f64>().ok()?), first[end..].to_string())
    };
    let warn = fields.next().and_then(Range::parse);
    let crit = fields.next().and_then(Range::parse);
    let min = fields.next().and_then(|m| m.trim().parse().ok());
    let max = fields.next().and_then(|m| m.trim().parse().ok());
    Some(Perf { label, value, uom, warn, crit, min, max })
}

/// Length of the number at the start of `s`: sign, digits, point, digits, and an exponent
/// only when digits follow it (so a unit such as `EB` is not taken for one).
fn number_end(s: &str) -> usize {
    let b = s.as_bytes();
    let mut i = 0;
    if i < b.len() && (b[i] == b'-' || b[i] == b'+') {
        i += 1;
    }
    let digits_start = i;
    while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
        i += 1;
    }
    if i == digits_start {
        return 0;
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        let mut j = i + 1;
        if j < b.len() && (b[j] == b'-' || b[j] == b'+') {
            j += 1;
        }
        if j < b.len() && b[j].is_ascii_digit() {
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            i = j;
        }
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_line_with_perfdata() {
        let o = parse_output("DISK OK - free space: / 3326 MB (56%); | /=2643MB;5948;5958;0;5968\n");
        assert_eq!(o.text, "DISK OK - free space: / 3326 MB (56%);");
        assert!(o.long_text.is_empty());
        assert_eq!(o.perf.len(), 1);
        let p = &o.perf[0];
        assert_eq!((p.label.as_str(), p.value, p.uom.as_str()), ("/", Some(2643.0), "MB"));
        assert_eq!(p.warn, Some(Range { start: 0.0, end: 5948.0, inside: false }));
        assert_eq!((p.min, p.max), (Some(0.0), Some(5968.0)));
        assert_eq!(p.state(), State::Ok);
    }

    #[test]
    fn multi_line_output_per_guidelines() {
        let text = "DISK OK - free space: / 3326 MB (56%); | /=2643MB;5948;5958;0;5968\n\
                    / 15272 MB (77%);\n\
                    /boot 68 MB (69%);\n\
                    /home 69357 MB (27%);\n\
                    /var/log 819 MB (84%); | /boot=68MB;88;93;0;98\n\
                    /home=69357MB;253404;253409;0;253414 \n\
                    /var/log=818MB;970;975;0;980\n";
        let o = parse_output(text);
        assert_eq!(o.text, "DISK OK - free space: / 3326 MB (56%);");
        assert_eq!(o.long_text.len(), 4);
        assert_eq!(o.long_text[3], "/var/log 819 MB (84%);");
        let labels: Vec<&str> = o.perf.iter().map(|p| p.label.as_str()).collect();
        assert_eq!(labels, ["/", "/boot", "/home", "/var/log"]);
        assert_eq!(o.perf[3].value, Some(818.0));
    }

    #[test]
    fn quoted_labels_units_and_undetermined() {
        let p =
            parse_perfdata("'in use'=42% 'it''s=odd'=1.5e3ms;;;0 time=0.002s;1;2 c=17c x=U;1;2 junk 'open");
        let labels: Vec<&str> = p.iter().map(|p| p.label.as_str()).collect();
        assert_eq!(labels, ["in use", "it's=odd", "time", "c", "x"]);
        assert_eq!((p[0].value, p[0].uom.as_str()), (Some(42.0), "%"));
        assert_eq!((p[1].value, p[1].uom.as_str(), p[1].min), (Some(1500.0), "ms", Some(0.0)));
        assert_eq!((p[2].value, p[2].uom.as_str()), (Some(0.002), "s"));
        assert_eq!((p[3].value, p[3].uom.as_str()), (Some(17.0), "c"));
        assert_eq!((p[4].value, p[4].state()), (None, State::Unknown));
    }

    #[test]
    fn ranges_follow_the_guidelines() {
        let r = |s| Range::parse(s).unwrap();
        assert!(r("10").alerts(11.0) && r("10").alerts(-1.0) && !r("10").alerts(5.0));
        assert!(r("10:").alerts(9.0) && !r("10:").alerts(1e9));
        assert!(r("~:10").alerts(11.0) && !r("~:10").alerts(-1e9));
        assert!(r("10:20").alerts(9.0) && !r("10:20").alerts(15.0) && r("10:20").alerts(21.0));
        assert!(r("@10:20").alerts(15.0) && !r("@10:20").alerts(9.0));
        assert!(Range::parse("abc").is_none() && Range::parse("").is_none());
        let p = &parse_perfdata("load=7;5;10")[0];
        assert_eq!(p.state(), State::Warn);
        let p = &parse_perfdata("load=12;5;10")[0];
        assert_eq!(p.state(), State::Error);
    }
}
