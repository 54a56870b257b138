//! Command-line arguments of `outpost install`, `outpost uninstall` and `outpost status`, as
//! clap structs the binary embeds as subcommands.

use crate::Role;
use std::path::PathBuf;

/// Make a role a service: user, directories, config, keys, binary, unit; start it.
#[derive(Debug, Clone, clap::Args)]
pub struct InstallArgs {
    /// Which role to install.
    #[arg(long, value_enum)]
    pub role: Role,
    /// Enrollment token from the cloud (`OPT1.…`); needs `--cloud`.
    #[arg(long, value_name = "TOKEN", requires = "cloud")]
    pub enroll: Option<String>,
    /// Base URL of the cloud, `https://…`; checked with `GET /v1/health` before anything changes.
    #[arg(long, value_name = "URL")]
    pub cloud: Option<String>,
    /// PEM file of the authority that signed the cloud's certificate, for a self-hosted cloud
    /// with its own authority. Copied next to the config.
    #[arg(long, value_name = "FILE", requires = "cloud")]
    pub cloud_ca: Option<PathBuf>,
    /// Config to install instead of the role's default (used only when none is installed yet).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Install into this directory tree instead of `/` (image building, tests): no user is
    /// created and the service is not started.
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Print every step without changing anything.
    #[arg(long)]
    pub dry_run: bool,
}

/// Stop and remove a role's service; data and config stay unless `--purge`.
#[derive(Debug, Clone, clap::Args)]
pub struct UninstallArgs {
    /// Which role to remove (default: every installed role).
    #[arg(long, value_enum)]
    pub role: Option<Role>,
    /// Also delete the role's config, keys and buffered data.
    #[arg(long)]
    pub purge: bool,
    /// Uninstall from this directory tree instead of `/`.
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Print every step without changing anything.
    #[arg(long)]
    pub dry_run: bool,
}

/// Is the service running, and how does it upload?
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// Which role to show (default: every installed role).
    #[arg(long, value_enum)]
    pub role: Option<Role>,
    /// Look at this directory tree instead of `/` (the service state is then not queried).
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Run a role as a Windows service. Only the Service Control Manager starts this (the service
/// `outpost install` registers runs `outpost service --role R --config FILE`).
#[cfg(windows)]
#[derive(Debug, Clone, clap::Args)]
pub struct ServiceArgs {
    #[arg(long, value_enum)]
    pub role: Role,
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
}
