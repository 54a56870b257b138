//! Service sensor: the state of a systemd unit (Linux) or a Windows service, asked of the
//! system's own tool (`systemctl show`, `sc query`) so no D-Bus or Win32 binding is needed.

use super::config::SensorConfig;
use outpost_shared::model::{Sample, State};
use std::time::Duration;

pub(crate) struct Service {
    key: String,
    unit: String,
    timeout: Duration,
}

/// What the system said about a unit.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct UnitState {
    /// Short state word, the reading's value: `active`, `failed`, `running`, `stopped`.
    pub value: String,
    pub state: State,
    pub message: String,
}

impl Service {
    pub fn new(cfg: &SensorConfig) -> Self {
        let unit = cfg.unit.clone().unwrap_or_default();
        Service { key: cfg.id(), unit, timeout: cfg.timeout() }
    }

    pub async fn sample(&mut self, out: &mut Vec<Sample>) {
        let s = match tokio::time::timeout(self.timeout, query(&self.unit)).await {
            Ok(s) => s,
            Err(_) => UnitState {
                value: "unknown".into(),
                state: State::Unknown,
                message: format!(
                    "{}: no answer from the service manager within {:?}",
                    self.unit, self.timeout
                ),
            },
        };
        out.push(Sample::new(self.key.clone(), s.value, s.state).message(s.message));
    }
}

fn unknown(unit: &str, why: String) -> UnitState {
    UnitState { value: "unknown".into(), state: State::Unknown, message: format!("{unit}: {why}") }
}

#[cfg(not(windows))]
async fn query(unit: &str) -> UnitState {
    if !cfg!(target_os = "linux") {
        return unknown(unit, "service checks need systemd (Linux) or Windows".into());
    }
    let out = tokio::process::Command::new("systemctl")
        .args(["show", "-p", "LoadState", "-p", "ActiveState", "-p", "SubState", "--", unit])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await;
    match out {
        Err(e) => unknown(unit, format!("cannot run systemctl: {e}")),
        Ok(o) if !o.status.success() => {
            let err = String::from_utf8_lossy(&o.stderr);
            unknown(unit, format!("systemctl failed: {}", err.lines().next().unwrap_or("no message").trim()))
        }
        Ok(o) => parse_systemctl_show(unit, &String::from_utf8_lossy(&o.stdout)),
    }
}

/// Reads `systemctl show -p LoadState -p ActiveState -p SubState` output.
#[cfg_attr(windows, allow(dead_code))]
pub(crate) fn parse_systemctl_show(unit: &str, text: &str) -> UnitState {
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
            .map(str::trim)
            .unwrap_or("")
    };
    let (load, active, sub) = (get("LoadState"), get("ActiveState"), get("SubState"));
    if load == "not-found" {
        return UnitState {
            value: "not-found".into(),
            state: State::Error,
            message: format!("{unit}: no such unit"),
        };
    }
    if active.is_empty() {
        return unknown(unit, "systemctl reported no state".into());
    }
    let state = match active {
        "active" => State::Ok,
        "activating" | "deactivating" | "reloading" | "refreshing" => State::Warn,
        "inactive" | "failed" => State::Error,
        _ => State::Unknown,
    };
    let message =
        if sub.is_empty() { format!("{unit}: {active}") } else { format!("{unit}: {active} ({sub})") };
    UnitState { value: active.to_string(), state, message }
}

#[cfg(windows)]
async fn query(unit: &str) -> UnitState {
    let out = tokio::process::Command::new("sc")
        .args(["query", unit])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await;
    match out {
        Err(e) => unknown(unit, format!("cannot run sc: {e}")),
        // 1060: ERROR_SERVICE_DOES_NOT_EXIST.
        Ok(o) if o.status.code() == Some(1060) => UnitState {
            value: "not-found".into(),
            state: State::Error,
            message: format!("{unit}: no such service"),
        },
        Ok(o) => parse_sc_query(unit, &String::from_utf8_lossy(&o.stdout)),
    }
}

/// Reads `sc query NAME` output, by the numeric state code (the words around it are localised).
#[cfg_attr(not(windows), allow(dead_code))]
pub(crate) fn parse_sc_query(unit: &str, text: &str) -> UnitState {
    let code = text.lines().find(|l| l.trim_start().starts_with("STATE")).and_then(|l| {
        let (_, rest) = l.split_once(':')?;
        rest.split_whitespace().next()?.parse::<u32>().ok()
    });
    let (value, state) = match code {
        Some(4) => ("running", State::Ok),
        Some(2) => ("start_pending", State::Warn),
        Some(3) => ("stop_pending", State::Warn),
        Some(5) => ("continue_pending", State::Warn),
        Some(6) => ("pause_pending", State::Warn),
        Some(7) => ("paused", State::Error),
        Some(1) => ("stopped", State::Error),
        _ => return unknown(unit, "sc query gave no state".into()),
    };
    UnitState { value: value.into(), state, message: format!("{unit}: {value}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemctl_states_map() {
        let s =
            parse_systemctl_show("ssh.service", "LoadState=loaded\nActiveState=active\nSubState=running\n");
        assert_eq!(s.state, State::Ok);
        assert_eq!(s.value, "active");
        assert_eq!(s.message, "ssh.service: active (running)");
        let s = parse_systemctl_show("x.service", "LoadState=loaded\nActiveState=failed\nSubState=failed\n");
        assert_eq!(s.state, State::Error);
        let s = parse_systemctl_show(
            "nope.service",
            "LoadState=not-found\nActiveState=inactive\nSubState=dead\n",
        );
        assert_eq!((s.state, s.value.as_str()), (State::Error, "not-found"));
        assert!(s.message.contains("no such unit"), "{}", s.message);
        assert_eq!(parse_systemctl_show("y", "").state, State::Unknown);
    }

    #[test]
    fn sc_query_states_map() {
        let text = "\nSERVICE_NAME: Spooler\n        TYPE               : 110  WIN32_OWN_PROCESS\n        STATE              : 4  RUNNING\n                                (STOPPABLE, NOT_PAUSABLE)\n        WIN32_EXIT_CODE    : 0  (0x0)\n";
        let s = parse_sc_query("Spooler", text);
        assert_eq!((s.state, s.value.as_str()), (State::Ok, "running"));
        let s = parse_sc_query("Spooler", &text.replace("4  RUNNING", "1  STOPPED"));
        assert_eq!(s.state, State::Error);
        assert_eq!(parse_sc_query("x", "garbage").state, State::Unknown);
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn asks_the_real_service_manager() {
        // Works with or without systemd running: either a real answer or a clear unknown.
        let cfg = SensorConfig {
            unit: Some("outpost-no-such-unit.service".into()),
            ..SensorConfig::new(super::super::SensorKind::Service)
        };
        let mut out = Vec::new();
        Service::new(&cfg).sample(&mut out).await;
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].sensor, "service.outpost-no-such-unit.service");
        assert!(matches!(out[0].state, State::Error | State::Unknown), "{:?}", out[0]);
        assert!(out[0].message.as_deref().unwrap_or("").contains("outpost-no-such-unit"), "{:?}", out[0]);
    }
}
