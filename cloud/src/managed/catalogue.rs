//! The sensor catalogue the dashboard builds its forms from: every kind, the keys it takes (from
//! the shared rules, [`SensorKind::keys`], so cloud and hub never disagree on them), each with
//! its type, default and help text.

use outpost_shared::sensor_config::{
    SensorConfig, SensorKind, DEFAULT_CERT_ERROR_DAYS, DEFAULT_CERT_WARN_DAYS,
};
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct KindEntry {
    pub kind: &'static str,
    /// Whether the kind needs a `name` (it names its readings).
    pub needs_name: bool,
    pub fields: Vec<Field>,
}

#[derive(Debug, Serialize)]
pub struct Field {
    pub key: &'static str,
    /// `text`, `number`, `integer`, `bool`, `duration` ("30s"), `list` (of text), `choice`
    /// (one of `choices`), `choices` (several of them), `command` (text, or a list: program and
    /// arguments), `password` (write-only).
    #[serde(rename = "type")]
    pub ty: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<&'static str>,
    pub required: bool,
    pub help: &'static str,
}

/// Every kind the hub has, with its fields. Relay cards are not part of a sensor document yet.
pub fn catalogue() -> Vec<KindEntry> {
    SensorKind::ALL.iter().map(|&k| entry(k)).collect()
}

fn needs_name(kind: SensorKind) -> bool {
    // The rule lives in the shared crate: a targeted kind without a name is a validation error.
    let mut problems = Vec::new();
    outpost_shared::sensor_config::validate_sensors(&[SensorConfig::new(kind)], &mut problems);
    problems.iter().any(|p| p.key.ends_with(".name"))
}

fn required(kind: SensorKind, key: &str) -> bool {
    matches!(
        (kind, key),
        (SensorKind::Process, "process")
            | (SensorKind::Service, "unit")
            | (SensorKind::Tcp, "host" | "port")
            | (SensorKind::Http, "url")
            | (SensorKind::Command, "command")
            | (SensorKind::File, "path")
            | (SensorKind::Perfcounter, "counter")
    )
}

fn entry(kind: SensorKind) -> KindEntry {
    let needs = needs_name(kind);
    let defaults = SensorConfig::new(kind);
    let th = defaults.thresholds();
    let mut fields = vec![
        Field {
            key: "name",
            ty: "text",
            default: None,
            choices: vec![],
            required: needs,
            help: "Names the sensor and its readings: letters, digits, - and _.",
        },
        Field {
            key: "interval",
            ty: "duration",
            default: Some(humantime::format_duration(kind.default_interval()).to_string().into()),
            choices: vec![],
            required: false,
            help: "How often to sample, e.g. 30s or 5m (at least 100ms).",
        },
    ];
    for &key in kind.keys() {
        let (ty, default, choices, help): (&str, Option<serde_json::Value>, Vec<&str>, &str) = match key {
            "warn" => ("number", th.warn.map(Into::into), vec![], "Value at which the sensor turns Warning."),
            "error" => ("number", th.error.map(Into::into), vec![], "Value at which the sensor turns Error."),
            "below" => (
                "bool",
                Some(th.below.into()),
                vec![],
                "Thresholds count downwards: the value is bad when it falls below them.",
            ),
            "metric" => (
                "choice",
                kind.metrics().first().map(|m| m.as_str().into()),
                kind.metrics().iter().map(|m| m.as_str()).collect(),
                "Which reading the thresholds apply to.",
            ),
            "per_core" => ("bool", Some(true.into()), vec![], "Also report every core."),
            "mounts" => ("list", None, vec![], "Mount points to watch; empty: every real file system."),
            "devices" => ("list", None, vec![], "Disks as /proc/diskstats names them; empty: every whole disk."),
            "interfaces" => ("list", None, vec![], "Network interfaces; empty: every one with traffic."),
            "process" => ("text", None, vec![], "Process name to count, as `ps -e` shows it."),
            "min_count" => ("integer", Some(1.into()), vec![], "Fewer running processes than this is an error."),
            "unit" => ("text", None, vec![], "The systemd unit (ssh.service) or Windows service name."),
            "host" => ("text", None, vec![], "Host name or address to connect to."),
            "port" => ("integer", None, vec![], "Port to connect to (1 to 65535)."),
            "timeout" => ("duration", Some("10s".into()), vec![], "Give up after this long."),
            "url" => ("text", None, vec![], "The http or https URL to GET."),
            "expect_status" => ("list", None, vec![], "Status codes that count as healthy; empty: any below 400."),
            "expect_text" => ("text", None, vec![], "Text that must appear in the first MiB of the body."),
            "ca_file" => ("text", None, vec![], "PEM file on the machine of the authority to trust instead of the system's."),
            "username" => ("text", None, vec![], "User for basic authentication."),
            "password" => (
                "password",
                None,
                vec![],
                "Password for basic authentication. Sealed to the machine's key when saved; never shown again.",
            ),
            "cert_warn_days" => (
                "number",
                Some(DEFAULT_CERT_WARN_DAYS.into()),
                vec![],
                "Certificate days left at which the check warns.",
            ),
            "cert_error_days" => (
                "number",
                Some(DEFAULT_CERT_ERROR_DAYS.into()),
                vec![],
                "Certificate days left at which the check is an error.",
            ),
            "command" => (
                "command",
                None,
                vec![],
                "A Nagios-compatible plugin: a string runs through the shell, a list runs the program directly.",
            ),
            "path" => ("text", None, vec![], "Absolute path of the file whose age and size to watch."),
            "logs" => ("list", Some(serde_json::json!(["System", "Application"])), vec![], "Event logs to read."),
            "sources" => ("list", None, vec![], "Only events of these sources; empty: every source."),
            "levels" => (
                "choices",
                Some(serde_json::json!(["error", "warning"])),
                vec!["error", "warning", "information", "audit_failure", "audit_success"],
                "Event types to report.",
            ),
            "max_messages" => ("integer", Some(3.into()), vec![], "Newest event texts a reading carries (1 to 10)."),
            "counter" => ("text", None, vec![], r"The counter path, e.g. \Processor(_Total)\% Processor Time."),
            other => ("text", None, vec![], if other.is_empty() { "" } else { "See the README's sensor table." }),
        };
        fields.push(Field { key, ty, default, choices, required: required(kind, key), help });
    }
    KindEntry { kind: kind.as_str(), needs_name: needs, fields }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_and_every_key_of_the_shared_rules_is_described() {
        let all = catalogue();
        assert_eq!(all.len(), SensorKind::ALL.len());
        for (entry, kind) in all.iter().zip(SensorKind::ALL) {
            let keys: Vec<&str> = entry.fields.iter().map(|f| f.key).collect();
            for k in kind.keys() {
                assert!(keys.contains(k), "{kind}: {k} missing");
            }
            for f in &entry.fields {
                assert!(!f.help.is_empty() && f.help != "See the README's sensor table.", "{kind}.{}", f.key);
            }
        }
        let http = all.iter().find(|e| e.kind == "http").unwrap();
        assert!(http.needs_name);
        assert_eq!(http.fields.iter().find(|f| f.key == "password").unwrap().ty, "password");
        assert!(http.fields.iter().find(|f| f.key == "url").unwrap().required);
        let cpu = all.iter().find(|e| e.kind == "cpu").unwrap();
        assert!(!cpu.needs_name);
        assert_eq!(cpu.fields.iter().find(|f| f.key == "warn").unwrap().default, Some(90.0.into()));
    }
}
