//! Service sensor: the state of a systemd unit (Linux), asked of `systemctl show` so no D-Bus
//! binding is needed, or of a Windows service, asked of the Service Control Manager itself
//! (state and start type; `sc query` output is localised and has no start type).

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
    let name = unit.to_string();
    // The SCM calls block (a hung service manager must not hold a runtime worker).
    match tokio::task::spawn_blocking(move || scm::query(&name)).await {
        Ok(s) => s,
        Err(e) => unknown(unit, format!("the query failed: {e}")),
    }
}

#[cfg(windows)]
mod scm {
    use super::{judge_windows, unknown, UnitState};
    use outpost_shared::model::State;
    use windows_service::service::ServiceAccess;
    use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};

    const ERROR_SERVICE_DOES_NOT_EXIST: i32 = 1060;

    pub(super) fn query(unit: &str) -> UnitState {
        let m = match ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT) {
            Ok(m) => m,
            Err(e) => return unknown(unit, format!("cannot reach the service control manager: {e}")),
        };
        let service = match m.open_service(unit, ServiceAccess::QUERY_STATUS | ServiceAccess::QUERY_CONFIG) {
            Ok(s) => s,
            Err(windows_service::Error::Winapi(e))
                if e.raw_os_error() == Some(ERROR_SERVICE_DOES_NOT_EXIST) =>
            {
                return UnitState {
                    value: "not-found".into(),
                    state: State::Error,
                    message: format!("{unit}: no such service"),
                }
            }
            Err(e) => return unknown(unit, format!("cannot open the service: {e}")),
        };
        let state = match service.query_status() {
            Ok(s) => s.current_state as u32,
            Err(e) => return unknown(unit, format!("cannot query its state: {e}")),
        };
        // Without the start type the state alone still answers the question.
        let start = service.query_config().ok().map(|c| c.start_type as u32);
        judge_windows(unit, state, start)
    }
}

/// Judges a Windows service by the SCM's numeric codes (`SERVICE_RUNNING` = 4, …; start types
/// `SERVICE_AUTO_START` = 2, …), which are the same on every Windows and every language.
/// A disabled service that runs now is a warning: it will not come back after a reboot.
#[cfg_attr(not(windows), allow(dead_code))]
pub(crate) fn judge_windows(unit: &str, state: u32, start_type: Option<u32>) -> UnitState {
    let (value, mut verdict) = match state {
        4 => ("running", State::Ok),
        2 => ("start_pending", State::Warn),
        3 => ("stop_pending", State::Warn),
        5 => ("continue_pending", State::Warn),
        6 => ("pause_pending", State::Warn),
        7 => ("paused", State::Error),
        1 => ("stopped", State::Error),
        other => return unknown(unit, format!("unknown service state {other}")),
    };
    let start = start_type.map(|t| match t {
        0 => "boot",
        1 => "system",
        2 => "automatic",
        3 => "manual",
        4 => "disabled",
        _ => "unknown",
    });
    if start == Some("disabled") && verdict == State::Ok {
        verdict = State::Warn;
    }
    let message = match start {
        Some("disabled") if value == "running" => {
            format!("{unit}: running, but disabled: it will not start again after a reboot")
        }
        Some(start) => format!("{unit}: {value} (start: {start})"),
        None => format!("{unit}: {value}"),
    };
    UnitState { value: value.into(), state: verdict, message }
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
    fn windows_states_map() {
        let s = judge_windows("Spooler", 4, Some(2));
        assert_eq!((s.state, s.value.as_str()), (State::Ok, "running"));
        assert_eq!(s.message, "Spooler: running (start: automatic)");
        let s = judge_windows("Spooler", 1, Some(3));
        assert_eq!((s.state, s.value.as_str()), (State::Error, "stopped"));
        assert_eq!(s.message, "Spooler: stopped (start: manual)");
        let s = judge_windows("Spooler", 4, Some(4));
        assert_eq!(s.state, State::Warn);
        assert!(s.message.contains("disabled"), "{}", s.message);
        assert_eq!(judge_windows("x", 2, None).state, State::Warn);
        assert_eq!(judge_windows("x", 99, None).state, State::Unknown);
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
