//! `outpost install`: plan every step, check the preconditions, then apply (or print) the plan.
//!
//! What an install leaves on Linux (paths under `--root DIR` when given):
//!
//! | path | mode, owner | kept on upgrade |
//! |---|---|---|
//! | `/usr/local/bin/outpost` | 0755 root | replaced |
//! | `/etc/outpost/<role>.toml` | 0640 root:outpost | kept (only `--cloud` edits `[uplink]`) |
//! | `/var/lib/outpost/<role>/` | 0750 outpost | kept, with everything in it |
//! | `…/<role>/machine.key` | 0600 outpost | kept: it is the machine's identity |
//! | `…/<role>/enroll-token` | 0600 outpost | replaced by a new `--enroll` |
//! | `/etc/systemd/system/outpost-<role>.service` | 0644 root | replaced |

use crate::args::InstallArgs;
use crate::config_edit;
use crate::enroll;
use crate::plan::KeyGen;
use crate::system::{effective_uid, Runner, SystemRunner};
use crate::{InstallError, Role};
use outpost_shared::keys::KeyPair;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Gives a role's default config text. The binary passes a closure over the role crates'
/// embedded defaults, so this crate does not depend on them; [`default_config_from_binary`]
/// asks an `outpost` binary instead.
pub type DefaultConfigFn = dyn Fn(Role) -> Result<String, String>;

/// A [`DefaultConfigFn`] that runs `<exe> config default --role <role>` and takes its output.
pub fn default_config_from_binary(exe: PathBuf) -> impl Fn(Role) -> Result<String, String> {
    move |role| {
        let out = std::process::Command::new(&exe)
            .args(["config", "default", "--role", role.as_str()])
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
        if !out.status.success() {
            return Err(format!(
                "`{} config default --role {role}` failed: {}",
                exe.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        String::from_utf8(out.stdout).map_err(|_| "the default config is not UTF-8".to_string())
    }
}

/// Everything outside the arguments that an install depends on, so tests can replace it.
pub struct Host<'a> {
    pub out: &'a mut dyn Write,
    pub runner: &'a dyn Runner,
    pub keygen: &'a KeyGen,
    /// `None` where the platform does not say.
    pub euid: Option<u32>,
    /// The binary to install.
    pub current_exe: PathBuf,
    pub health_timeout: Duration,
}

/// `outpost install`: prints each step to stdout as it is done.
pub fn run_install(args: &InstallArgs, default_config: &DefaultConfigFn) -> Result<(), InstallError> {
    let current_exe = std::env::current_exe().map_err(InstallError::io("the running binary"))?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut host = Host {
        out: &mut out,
        runner: &SystemRunner,
        keygen: &KeyPair::generate,
        euid: effective_uid(),
        current_exe,
        health_timeout: enroll::HEALTH_TIMEOUT,
    };
    install(args, default_config, &mut host)
}

/// [`run_install`] with its surroundings given.
pub fn install(
    args: &InstallArgs,
    default_config: &DefaultConfigFn,
    host: &mut Host<'_>,
) -> Result<(), InstallError> {
    crate::service_manager::install(args, default_config, host)
}

/// Checked enrollment inputs.
pub(crate) struct Uplink {
    pub cloud: String,
    pub token: Option<outpost_shared::keys::EnrollmentToken>,
    pub ca_pem: Option<Vec<u8>>,
}

/// A hub can do without a cloud URL (it finds a connector); a connector has no one else to forward
/// to and would only fill its buffer. Refused while planning, before anything is changed.
pub(crate) fn require_cloud_for_connector(role: Role, config_text: &str) -> Result<(), InstallError> {
    if role != Role::Connector {
        return Ok(());
    }
    let table: toml::Table = toml::from_str(config_text).unwrap_or_default();
    match config_edit::find_cloud(&table) {
        Some(_) => Ok(()),
        None => Err(InstallError::Usage(
            "a connector forwards to a cloud: give --cloud URL (with --enroll TOKEN for a new connector), \
             or set [cloud] url in the config"
                .into(),
        )),
    }
}

/// The checks every platform makes before it changes anything: role and flags fit together, the
/// token parses, the cloud URL is HTTPS and the cloud answers its health check.
pub(crate) fn check_uplink(args: &InstallArgs, host: &mut Host<'_>) -> Result<Option<Uplink>, InstallError> {
    if !args.role.uploads() && (args.enroll.is_some() || args.cloud.is_some()) {
        return Err(InstallError::Usage(format!(
            "--enroll and --cloud are for the sensorhub and connector roles, not for {}",
            args.role
        )));
    }
    let token = args.enroll.as_deref().map(enroll::check_token).transpose()?;
    let Some(cloud) = args.cloud.as_deref() else { return Ok(None) };
    let cloud = enroll::check_cloud_url(cloud)?;
    let ca_pem = match &args.cloud_ca {
        Some(path) => {
            outpost_shared::tls::load_certs(path)
                .map_err(|e| InstallError::Usage(format!("--cloud-ca: {e}")))?;
            Some(std::fs::read(path).map_err(InstallError::io(path))?)
        }
        None => None,
    };
    enroll::check_cloud_reachable(&cloud, args.cloud_ca.as_deref(), host.health_timeout)?;
    let _ = writeln!(host.out, "cloud {cloud} answers its health check");
    if let Some(t) = &token {
        let _ = writeln!(
            host.out,
            "enrollment token for network {} is valid until {}",
            t.network_id,
            t.expires_at.to_rfc3339()
        );
    }
    Ok(Some(Uplink { cloud, token, ca_pem }))
}

/// The role's config as it should be installed, when none is there yet: the given file or the
/// role's default, with `data_dir` pointing at the service's data directory and the uplink set.
/// Returns the text and what was changed, for the printed lines.
pub(crate) fn fresh_config(
    args: &InstallArgs,
    default_config: &DefaultConfigFn,
    data_dir: &str,
    uplink: Option<&Uplink>,
    ca_path: &str,
) -> Result<(String, Vec<String>), InstallError> {
    let (text, origin) = match &args.config {
        Some(path) => {
            (std::fs::read_to_string(path).map_err(InstallError::io(path))?, path.display().to_string())
        }
        None => (
            default_config(args.role)
                .map_err(|reason| InstallError::DefaultConfig { role: args.role, reason })?,
            format!("the {} default", args.role),
        ),
    };
    let bad = |reason: String| InstallError::Config { path: PathBuf::from(&origin), reason };
    let (mut text, previous) = config_edit::set_data_dir(&text, data_dir).map_err(bad)?;
    let mut notes = vec![format!("config from {origin}")];
    if previous.as_deref() != Some(data_dir) {
        notes.push(match previous {
            Some(p) => format!("data_dir = {data_dir} (was {p})"),
            None => format!("data_dir = {data_dir}"),
        });
    }
    if let Some(u) = uplink {
        text = config_edit::set_uplink(&text, &u.cloud, u.ca_pem.as_ref().map(|_| ca_path)).map_err(bad)?;
        notes.push(format!("[uplink] cloud = {}", u.cloud));
    }
    toml::from_str::<toml::Table>(&text).map_err(|e| bad(format!("not valid TOML after editing: {e}")))?;
    Ok((text, notes))
}

/// Files are equal byte for byte (read in chunks: the binary is large).
pub(crate) fn same_contents(a: &Path, b: &Path) -> bool {
    use std::io::Read;
    let (Ok(fa), Ok(fb)) = (std::fs::File::open(a), std::fs::File::open(b)) else { return false };
    match (fa.metadata(), fb.metadata()) {
        (Ok(ma), Ok(mb)) if ma.len() == mb.len() => {}
        _ => return false,
    }
    let (mut ra, mut rb) = (std::io::BufReader::new(fa), std::io::BufReader::new(fb));
    let (mut ba, mut bb) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let n = match ra.read(&mut ba) {
            Ok(n) => n,
            Err(_) => return false,
        };
        if n == 0 {
            return true;
        }
        if rb.read_exact(&mut bb[..n]).is_err() || ba[..n] != bb[..n] {
            return false;
        }
    }
}
