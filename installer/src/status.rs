//! `outpost status`: is each installed role's service running, and for hubs and connectors, how
//! do they upload? The latter comes from `<data_dir>/status.json`, which the role rewrites at
//! least every [`STATUS_INTERVAL`]; a file older than [`STALE_AFTER`] means the role is hung or
//! gone, and is reported as stale.

use crate::args::StatusArgs;
use crate::config_edit;
use crate::layout::{Layout, STATUS_FILE};
use crate::system::{Runner, SystemRunner};
use crate::{InstallError, Role};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often a role rewrites its status file.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(10);
/// A status file older than this is stale.
pub const STALE_AFTER: Duration = Duration::from_secs(60);

/// What a hub or connector says about itself in `<data_dir>/status.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubStatus {
    pub machine_id: String,
    pub pid: u32,
    /// `direct`, `connector:<id>` or `offline`.
    pub uplink: String,
    /// Readings waiting in the local buffer.
    pub buffered: u64,
    pub last_upload: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub updated_at: DateTime<Utc>,
    /// Hubs: the version of the sensor document from the cloud that runs (none before the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_version: Option<u64>,
    /// Hubs: why the last sensor document from the cloud was not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_problem: Option<String>,
    /// Hubs: why the local buffer refused its latest write (full or failing disk), until one
    /// succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_error: Option<String>,
}

impl HubStatus {
    /// Writes the status file atomically (a reader never sees half a file), readable by all:
    /// it holds no secret and `outpost status` may run as any user.
    pub fn write(&self, data_dir: &Path) -> std::io::Result<()> {
        let path = data_dir.join(STATUS_FILE);
        let tmp = data_dir.join(format!(".{STATUS_FILE}.tmp"));
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, json)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
        }
        std::fs::rename(&tmp, &path)
    }
}

/// The state of one role on this machine.
#[derive(Debug, Clone, Serialize)]
pub struct RoleReport {
    pub role: Role,
    /// Whether its unit (or Windows service) is installed.
    pub installed: bool,
    /// `active`, `inactive`, `failed`, … as the service manager says; `None` when not asked
    /// (`--root`).
    pub service: Option<String>,
    pub enabled: Option<bool>,
    pub config: PathBuf,
    pub data_dir: PathBuf,
    /// For hubs and connectors: their status file, or why it could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uplink: Option<UplinkReport>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum UplinkReport {
    Known {
        #[serde(flatten)]
        status: HubStatus,
        /// Seconds since `updated_at`.
        age_secs: i64,
        stale: bool,
    },
    Unknown {
        error: String,
    },
}

impl RoleReport {
    /// Running, and (where a status file is expected) reporting freshly.
    pub fn healthy(&self) -> bool {
        let running = self.service.as_deref().is_none_or(|s| s == "active" || s == "running");
        let fresh = !matches!(self.uplink, Some(UplinkReport::Known { stale: true, .. }));
        // A buffer that cannot write loses what the sensors read: not healthy, whatever else.
        let writes = !matches!(&self.uplink, Some(UplinkReport::Known { status, .. }) if status.storage_error.is_some());
        self.installed && running && fresh && writes
    }
}

/// `outpost status`: prints text or JSON and returns the exit status: 0 when every role shown
/// is installed, running and (for hubs and connectors) not stale, else 3 (as `systemctl status`).
pub fn run_status(args: &StatusArgs) -> Result<i32, InstallError> {
    let reports = collect(args, &SystemRunner, Utc::now());
    let text = if args.json {
        serde_json::to_string_pretty(&serde_json::json!({ "roles": reports }))
            .map_err(|e| InstallError::Unsupported(e.to_string()))?
    } else {
        render_text(&reports)
    };
    println!("{}", text.trim_end());
    Ok(if !reports.is_empty() && reports.iter().all(RoleReport::healthy) { 0 } else { 3 })
}

/// Looks at each role asked for (or every installed role).
pub fn collect(args: &StatusArgs, runner: &dyn Runner, now: DateTime<Utc>) -> Vec<RoleReport> {
    let layout = Layout::new(args.root.as_deref());
    let roles = match args.role {
        Some(r) => vec![r],
        None => installed_roles(&layout),
    };
    roles.into_iter().map(|role| report(&layout, role, runner, now)).collect()
}

#[cfg(not(windows))]
fn installed_roles(layout: &Layout) -> Vec<Role> {
    layout.installed_roles()
}

#[cfg(windows)]
fn installed_roles(_layout: &Layout) -> Vec<Role> {
    Role::ALL.into_iter().filter(|r| crate::windows::query_service(*r).0).collect()
}

fn report(layout: &Layout, role: Role, runner: &dyn Runner, now: DateTime<Utc>) -> RoleReport {
    let config = role_config_path(layout, role);
    let data_dir = std::fs::read_to_string(&config)
        .ok()
        .and_then(|t| toml::from_str::<toml::Table>(&t).ok())
        .and_then(|t| config_edit::find_data_dir(&t))
        .map(|d| layout.host(&d))
        .unwrap_or_else(|| default_data_dir(layout, role));
    let (installed, service, enabled) = query_service(layout, role, runner);
    let uplink = role.uploads().then(|| read_uplink(&data_dir.join(STATUS_FILE), now));
    RoleReport { role, installed, service, enabled, config, data_dir, uplink }
}

#[cfg(not(windows))]
fn role_config_path(layout: &Layout, role: Role) -> PathBuf {
    layout.host(&Layout::config(role))
}

#[cfg(windows)]
fn role_config_path(_layout: &Layout, role: Role) -> PathBuf {
    crate::windows::config_path(role)
}

#[cfg(not(windows))]
fn default_data_dir(layout: &Layout, role: Role) -> PathBuf {
    layout.host(&Layout::data_dir(role))
}

#[cfg(windows)]
fn default_data_dir(_layout: &Layout, role: Role) -> PathBuf {
    crate::windows::data_dir(role)
}

/// (installed, state, enabled) of the role's service.
#[cfg(not(windows))]
fn query_service(layout: &Layout, role: Role, runner: &dyn Runner) -> (bool, Option<String>, Option<bool>) {
    let installed = layout.host(&Layout::unit(role)).exists();
    if !layout.is_live() {
        let enabled = std::fs::symlink_metadata(layout.host(&Layout::wants_link(role))).is_ok();
        return (installed, None, Some(enabled));
    }
    let unit = Layout::unit_name(role);
    // `is-active` prints the state and exits non-zero for anything but active: read the text.
    let state = match runner.run("systemctl", &["is-active", &unit]) {
        Ok(ran) if !ran.stdout.trim().is_empty() => ran.stdout.trim().to_string(),
        Ok(ran) => format!("unknown ({})", ran.stderr.trim()),
        Err(e) => format!("unknown (cannot run systemctl: {e})"),
    };
    let enabled = runner.run("systemctl", &["is-enabled", "--quiet", &unit]).ok().map(|r| r.success);
    (installed, Some(state), enabled)
}

#[cfg(windows)]
fn query_service(_layout: &Layout, role: Role, _runner: &dyn Runner) -> (bool, Option<String>, Option<bool>) {
    let (installed, state) = crate::windows::query_service(role);
    (installed, Some(state), None)
}

/// Reads and judges a status file.
pub fn read_uplink(path: &Path, now: DateTime<Utc>) -> UplinkReport {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return UplinkReport::Unknown {
                error: format!(
                    "no status yet ({} does not exist; the service writes it once running)",
                    path.display()
                ),
            }
        }
        Err(e) => return UplinkReport::Unknown { error: format!("{}: {e}", path.display()) },
    };
    match serde_json::from_str::<HubStatus>(&text) {
        Ok(status) => {
            let age_secs = (now - status.updated_at).num_seconds();
            let stale = age_secs > STALE_AFTER.as_secs() as i64;
            UplinkReport::Known { status, age_secs, stale }
        }
        Err(e) => UplinkReport::Unknown { error: format!("{}: unreadable status: {e}", path.display()) },
    }
}

fn ago(secs: i64) -> String {
    match secs {
        s if s < 0 => "in the future: check this machine's clock".to_string(),
        s if s < 120 => format!("{s} s ago"),
        s if s < 7200 => format!("{} min ago", s / 60),
        s if s < 172_800 => format!("{} h ago", s / 3600),
        s => format!("{} days ago", s / 86_400),
    }
}

/// The human-readable form.
pub fn render_text(reports: &[RoleReport]) -> String {
    let mut out = String::new();
    if reports.is_empty() {
        out.push_str("no Outpost service is installed here (install one with `outpost install --role …`)\n");
    }
    for r in reports {
        let name = r.role.service_name();
        let state = match (&r.service, r.installed) {
            (_, false) => "not installed".to_string(),
            (Some(s), true) => s.clone(),
            (None, true) => "installed (state not queried under --root)".to_string(),
        };
        let enabled = match r.enabled {
            Some(true) => ", enabled",
            Some(false) => ", not enabled",
            None => "",
        };
        let _ = writeln!(out, "{name}: {state}{enabled}");
        let _ = writeln!(out, "  config       {}", r.config.display());
        let _ = writeln!(out, "  data         {}", r.data_dir.display());
        match &r.uplink {
            None => {}
            Some(UplinkReport::Unknown { error }) => {
                let _ = writeln!(out, "  uplink       unknown: {error}");
            }
            Some(UplinkReport::Known { status, age_secs, stale }) => {
                let _ = writeln!(out, "  machine id   {}", status.machine_id);
                let _ = writeln!(out, "  uplink       {}", status.uplink);
                let _ = writeln!(out, "  buffered     {} readings", status.buffered);
                let last = match status.last_upload {
                    Some(t) => format!(
                        "{} ({})",
                        t.to_rfc3339(),
                        ago((status.updated_at - t).num_seconds() + age_secs)
                    ),
                    None => "never".to_string(),
                };
                let _ = writeln!(out, "  last upload  {last}");
                if let Some(e) = &status.last_error {
                    let _ = writeln!(out, "  last error   {e}");
                }
                if let Some(e) = &status.storage_error {
                    let _ = writeln!(out, "  BUFFER FAILS {e}");
                }
                if let Some(v) = status.managed_version {
                    let _ = writeln!(out, "  managed      sensors v{v} from the cloud");
                }
                if let Some(p) = &status.managed_problem {
                    let _ = writeln!(out, "  managed      not applied: {p}");
                }
                let _ = writeln!(out, "  updated      {} (pid {})", ago(*age_secs), status.pid);
                if *stale {
                    let _ = writeln!(
                        out,
                        "  STALE: the status is older than {} s; the service is not updating it (hung or stopped?)",
                        STALE_AFTER.as_secs()
                    );
                }
            }
        }
    }
    out
}
