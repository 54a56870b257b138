//! `outpost uninstall`: stop and disable the service, remove its unit and (when no other role
//! still uses it) the binary. Config, keys and buffered data stay unless `--purge`.

use crate::args::UninstallArgs;
use crate::install::Host;
use crate::system::{effective_uid, SystemRunner};
use crate::InstallError;
use outpost_shared::keys::KeyPair;

/// `outpost uninstall`: prints each step to stdout as it is done.
pub fn run_uninstall(args: &UninstallArgs) -> Result<(), InstallError> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut host = Host {
        out: &mut out,
        runner: &SystemRunner,
        keygen: &KeyPair::generate,
        euid: effective_uid(),
        current_exe: std::env::current_exe().unwrap_or_default(),
        health_timeout: crate::enroll::HEALTH_TIMEOUT,
    };
    uninstall(args, &mut host)
}

/// [`run_uninstall`] with its surroundings given.
pub fn uninstall(args: &UninstallArgs, host: &mut Host<'_>) -> Result<(), InstallError> {
    crate::service_manager::uninstall(args, host)
}
