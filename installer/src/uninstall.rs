//! `outpost uninstall`: stop and disable the service, remove its unit and (when no other role
//! still uses it) the binary. Config, keys and buffered data stay unless `--purge`.

use crate::args::UninstallArgs;
use crate::install::Host;
use crate::layout::*;
use crate::plan::{Action, Apply, Plan, Step};
use crate::system::{effective_uid, lookup_user, SystemRunner};
use crate::{InstallError, Role};
use outpost_shared::keys::KeyPair;
use std::path::Path;

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
    #[cfg(windows)]
    {
        crate::windows::uninstall(args, host)
    }
    #[cfg(not(windows))]
    {
        let plan = plan_uninstall(args, host)?;
        if args.dry_run {
            return plan.print_dry_run(host.out).map_err(InstallError::io("stdout"));
        }
        plan.apply(&mut Apply { out: host.out, runner: host.runner, keygen: host.keygen })
    }
}

/// Plans an uninstall on Linux. Nothing is changed here.
#[cfg(not(windows))]
pub fn plan_uninstall(args: &UninstallArgs, host: &mut Host<'_>) -> Result<Plan, InstallError> {
    let layout = Layout::new(args.root.as_deref());
    if let Some(root) = &args.root {
        if !root.is_dir() {
            return Err(InstallError::Usage(format!("--root {}: no such directory", root.display())));
        }
    }
    let is_root = host.euid == Some(0);
    if layout.is_live() && !is_root && !args.dry_run {
        return Err(InstallError::NotRoot);
    }
    let installed = layout.installed_roles();
    let roles: Vec<Role> = match args.role {
        Some(r) => vec![r],
        None => installed.clone(),
    };
    let remaining: Vec<Role> = installed.iter().copied().filter(|r| !roles.contains(r)).collect();
    let mut plan = Plan { root: layout.root().to_path_buf(), chown: false, ..Plan::default() };
    if roles.is_empty() {
        plan.push(Step::note("no Outpost service is installed here"));
    }

    let live = layout.is_live();
    let mut touched_service = false;
    for &role in &roles {
        let unit = Layout::unit_name(role);
        let unit_path = layout.host(&Layout::unit(role));
        if !unit_path.exists() {
            plan.push(Step::note(format!("{unit} is not installed")));
            continue;
        }
        if live {
            let asked = |what: &str| {
                host.runner.run("systemctl", &[what, "--quiet", &unit]).map(|r| r.success).unwrap_or(false)
            };
            let (enabled, active) = (asked("is-enabled"), asked("is-active"));
            let mut undo: Vec<&str> = vec!["systemctl"];
            undo.extend(if enabled { ["enable", "--now"].as_slice() } else { ["start"].as_slice() });
            undo.push(&unit);
            plan.push(Step::run(
                format!("stop and disable {unit}"),
                format!("stopped and disabled {unit}"),
                &["systemctl", "disable", "--now", "--quiet", &unit],
                (enabled || active).then_some(undo.as_slice()),
                true,
            ));
            touched_service = true;
        } else {
            let link = layout.host(&Layout::wants_link(role));
            if std::fs::symlink_metadata(&link).is_ok() {
                plan.push(Step::remove_file(link));
            }
        }
        plan.push(Step::remove_file(unit_path));
    }
    if live && touched_service {
        plan.push(Step::run(
            "reload systemd".into(),
            "reloaded systemd".into(),
            &["systemctl", "daemon-reload"],
            None,
            true,
        ));
        // A rollback put units back: let systemd see them again.
        plan.recover = vec![vec!["systemctl".into(), "daemon-reload".into()]];
    }

    // The binary serves every role: it goes with the last one. The packaged one belongs to dpkg.
    let bin = layout.host(BIN);
    if bin.exists() && !roles.is_empty() {
        if remaining.is_empty() {
            plan.push(Step::remove_file(bin));
        } else {
            let users: Vec<String> = remaining.iter().map(|r| Layout::unit_name(*r)).collect();
            plan.push(Step::note(format!("kept {} (still used by {})", bin.display(), users.join(", "))));
        }
    }

    for &role in &roles {
        let config = layout.host(&Layout::config(role));
        let data = layout.host(&Layout::data_dir(role));
        if !args.purge {
            let kept: Vec<String> =
                [&config, &data].iter().filter(|p| p.exists()).map(|p| p.display().to_string()).collect();
            if !kept.is_empty() {
                plan.push(Step::note(format!(
                    "kept {} (config, keys, buffered data); --purge removes them",
                    kept.join(" and ")
                )));
            }
            continue;
        }
        if config.exists() {
            plan.push(Step::remove_file(config));
        }
        if data.exists() {
            plan.push(Step::remove_tree(data));
        }
    }
    if args.purge && remaining.is_empty() {
        let ca = layout.host(CLOUD_CA_FILE);
        if ca.exists() {
            plan.push(Step::remove_file(ca));
        }
        for dir in [CONFIG_DIR, DATA_ROOT] {
            let path = layout.host(dir);
            if path.exists() {
                plan.push(Step::remove_dir_if_empty(path));
            }
        }
        if live && lookup_user(Path::new("/"), SERVICE_USER).is_some() {
            // Last: nothing of this run needs the user any more, and it cannot be recreated
            // with the same id if an earlier step failed.
            plan.push(Step {
                todo: format!("remove user {SERVICE_USER}"),
                done: format!("removed user {SERVICE_USER}"),
                action: Action::Run {
                    argv: vec!["userdel".into(), SERVICE_USER.into()],
                    undo: None,
                    service: false,
                },
            });
        }
    }
    Ok(plan)
}
