//! Where an installed role's files live. Every path exists twice: as the running system will see
//! it (written into the unit and the config) and as this process reaches it now, under `--root`.

use crate::Role;
use std::path::{Path, PathBuf};

/// The binary as `outpost install` places it.
pub const BIN: &str = "/usr/local/bin/outpost";
/// The binary as the Debian package places it; an install run from there uses it in place.
pub const PACKAGED_BIN: &str = "/usr/bin/outpost";
pub const CONFIG_DIR: &str = "/etc/outpost";
pub const DATA_ROOT: &str = "/var/lib/outpost";
pub const UNIT_DIR: &str = "/etc/systemd/system";
pub const WANTS_DIR: &str = "/etc/systemd/system/multi-user.target.wants";
/// The system user (and its group) every role runs as.
pub const SERVICE_USER: &str = "outpost";
/// The group that may open serial ports on Debian-like systems.
pub const SERIAL_GROUP: &str = "dialout";
/// Machine key file name inside the role's data directory.
pub const KEY_FILE: &str = "machine.key";
/// Enrollment token file name inside the role's data directory, read by the role at first start.
pub const TOKEN_FILE: &str = "enroll-token";
/// Status file the hub rewrites at least every 10 s.
pub const STATUS_FILE: &str = "status.json";
/// The cloud's authority, when given with `--cloud-ca`.
pub const CLOUD_CA_FILE: &str = "/etc/outpost/cloud-ca.pem";

/// Paths of an installation under a root directory (`/` on a live system).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(root: Option<&Path>) -> Layout {
        Layout { root: root.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/")) }
    }

    /// Whether this is the live system rather than a directory tree.
    pub fn is_live(&self) -> bool {
        self.root == Path::new("/")
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the system path `abs` (absolute, `/`-separated) is reached from here.
    pub fn host(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }

    pub fn config(role: Role) -> String {
        format!("{CONFIG_DIR}/{role}.toml")
    }

    pub fn data_dir(role: Role) -> String {
        format!("{DATA_ROOT}/{role}")
    }

    pub fn unit_name(role: Role) -> String {
        format!("{}.service", role.service_name())
    }

    pub fn unit(role: Role) -> String {
        format!("{UNIT_DIR}/{}", Layout::unit_name(role))
    }

    pub fn wants_link(role: Role) -> String {
        format!("{WANTS_DIR}/{}", Layout::unit_name(role))
    }

    /// Roles whose unit file is present in this tree.
    pub fn installed_roles(&self) -> Vec<Role> {
        Role::ALL.into_iter().filter(|r| self.host(&Layout::unit(*r)).exists()).collect()
    }
}
