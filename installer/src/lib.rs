//! Makes an Outpost role a service, in one command, and takes it away again.
//!
//! `outpost install --role R` plans every step first ([`plan`]), checks the preconditions
//! (root, a valid enrollment token, a reachable cloud, a default config that is valid TOML), and
//! only then applies the steps, rolling back the files of this run if a later step fails. Running
//! it again upgrades in place: binary and unit are replaced, while keys, config edits and buffered
//! data stay. `outpost uninstall` removes the service and keeps data unless `--purge`;
//! `outpost status` says whether the service runs and, for hubs and connectors, how it uploads.
//!
//! - [`args`]: the clap argument structs the binary embeds as subcommands.
//! - [`layout`]: where everything goes, relative to `/` or to an image tree (`--root DIR`).
//! - [`unit`]: the systemd unit, rendered from one template (the Debian package ships the same
//!   text, kept in `assets/` and checked against the template by a test).
//! - [`config_edit`]: edits of the role's TOML config that keep the operator's comments.
//! - [`enroll`]: token and cloud checks done before anything is changed.
//! - [`plan`]: steps, dry-run printing, applying and rollback.
//! - [`install`], [`uninstall`], [`status`]: the three commands, shared by both systems.
//! - `systemd` (Linux) and `windows` (Windows only): what each system's service manager needs;
//!   the commands call whichever is built.
//! - [`eventlog`]: warnings, errors and the service's start and stop in the Windows event log
//!   (the layer itself is Windows only; its text and rate limit are tested everywhere).
//! - [`sdnotify`]: `READY=1`, `STOPPING=1` and the watchdog ping for `Type=notify` units.
//! - `windows` (Windows only): the same commands against the Service Control Manager, and the
//!   service dispatcher the binary calls when Windows starts it as a service.
// Windows' service entry points are `extern "system"` functions made by a macro that contains
// `unsafe` blocks; everywhere else no unsafe code is allowed at all.
#![cfg_attr(not(windows), forbid(unsafe_code))]
#![cfg_attr(windows, deny(unsafe_code))]

pub mod args;
pub mod config_edit;
pub mod enroll;
mod error;
pub mod eventlog;
pub mod install;
pub mod layout;
pub mod plan;
mod role;
pub mod sdnotify;
pub mod status;
pub mod system;
#[cfg(not(windows))]
pub mod systemd;
pub mod uninstall;
pub mod unit;
#[cfg(windows)]
pub mod windows;

/// The one place that picks the service manager: systemd, or Windows' Service Control Manager.
#[cfg(not(windows))]
use systemd as service_manager;
#[cfg(windows)]
use windows as service_manager;

#[cfg(all(test, unix))]
mod tests;

pub use args::{InstallArgs, StatusArgs, UninstallArgs};
pub use error::InstallError;
pub use install::{default_config_from_binary, run_install, DefaultConfigFn};
pub use role::Role;
pub use status::{run_status, HubStatus};
pub use uninstall::run_uninstall;
