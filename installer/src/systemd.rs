//! Linux: each role is a systemd unit run by the `outpost` user (see the table in [`crate::install`]).
//! Install and uninstall are planned first, every precondition checked, then applied.

use crate::args::{InstallArgs, UninstallArgs};
use crate::config_edit;
use crate::install::{
    check_uplink, fresh_config, require_cloud_for_connector, same_contents, DefaultConfigFn, Host, Uplink,
};
use crate::layout::*;
use crate::plan::{Action, Apply, Owner, Plan, Step};
use crate::system::{lookup_group, lookup_user, nologin_shell, Runner};
use crate::unit::{self, UnitParams};
use crate::{InstallError, Role};
use outpost_shared::keys::KeyPair;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// `outpost install` on Linux: plan, then print (`--dry-run`) or apply.
pub fn install(
    args: &InstallArgs,
    default_config: &DefaultConfigFn,
    host: &mut Host<'_>,
) -> Result<(), InstallError> {
    let plan = plan_install(args, default_config, host)?;
    if args.dry_run {
        plan.print_dry_run(host.out).map_err(InstallError::io("stdout"))?;
        return Ok(());
    }
    plan.apply(&mut Apply { out: host.out, runner: host.runner, keygen: host.keygen })?;
    let service = Layout::unit_name(args.role);
    let _ = match &args.root {
        None => writeln!(host.out, "{service} is installed and running; see `outpost status`"),
        Some(root) => writeln!(
            host.out,
            "installed into {}; {service} starts when a system boots from that tree",
            root.display()
        ),
    };
    Ok(())
}

/// Plans a Linux install. Nothing is changed here; every failure is a precondition.
pub fn plan_install(
    args: &InstallArgs,
    default_config: &DefaultConfigFn,
    host: &mut Host<'_>,
) -> Result<Plan, InstallError> {
    let layout = Layout::new(args.root.as_deref());
    let role = args.role;
    let is_root = host.euid == Some(0);
    if let Some(root) = &args.root {
        if !root.is_dir() {
            return Err(InstallError::Usage(format!("--root {}: no such directory", root.display())));
        }
    }
    if layout.is_live() && !is_root && !args.dry_run {
        return Err(InstallError::NotRoot);
    }
    if layout.is_live() && !host.runner.run("systemctl", &["--version"]).is_ok_and(|r| r.success) {
        return Err(InstallError::Unsupported(
            "systemd was not found (no working `systemctl`): this installer makes systemd services; \
             use --root DIR to prepare a tree for a systemd system"
                .into(),
        ));
    }
    // systemd's own test for "booted with systemd" (sd_booted): without it nothing can start.
    let systemd_running = Path::new("/run/systemd/system").is_dir();
    if layout.is_live() && !systemd_running && !args.dry_run {
        return Err(InstallError::Unsupported(
            "systemd is not running on this machine (no /run/systemd/system), so no service can be started; \
             use --root DIR to prepare a tree for a systemd system"
                .into(),
        ));
    }
    if !host.current_exe.is_file() {
        return Err(InstallError::Unsupported(format!(
            "cannot find the running binary {}",
            host.current_exe.display()
        )));
    }
    let uplink = check_uplink(args, host)?;

    let mut p = Planner {
        plan: Plan { root: layout.root().to_path_buf(), ..Plan::default() },
        layout,
        planned: HashSet::new(),
    };
    if args.dry_run && p.layout.is_live() && !is_root {
        p.plan
            .push(Step::note("note: this is a dry run as a normal user; the real install must run as root"));
    }
    if args.dry_run && p.layout.is_live() && !systemd_running {
        p.plan.push(Step::note(
            "note: systemd is not running here; the real install would stop before any change",
        ));
    }
    p.plan_user(is_root);
    let data_dir = Layout::data_dir(role);
    p.ensure_dir(CONFIG_DIR, 0o750, Owner::RootServiceGroup, true);
    p.ensure_dir(DATA_ROOT, 0o755, Owner::Root, false);
    p.ensure_dir(&data_dir, 0o750, Owner::Service, true);

    // Config: written once, never overwritten; only an explicit --cloud edits it afterwards.
    let config_abs = Layout::config(role);
    let config_path = p.layout.host(&config_abs);
    let installed_config = match read_if_exists(&config_path)? {
        Some(existing) => {
            p.plan_existing_config(args, default_config, &config_path, existing, uplink.as_ref())?
        }
        None => {
            let (text, notes) =
                fresh_config(args, default_config, &data_dir, uplink.as_ref(), CLOUD_CA_FILE)?;
            let mut step = Step::write_file(
                config_path.clone(),
                text.clone().into_bytes(),
                0o640,
                Owner::RootServiceGroup,
                false,
            );
            step.done = format!("{}: {}", step.done, notes.join(", "));
            p.plan.push(step);
            text
        }
    };
    require_cloud_for_connector(role, &installed_config)?;
    if let Some(pem) = uplink.as_ref().and_then(|u| u.ca_pem.clone()) {
        p.write_if_changed(CLOUD_CA_FILE, pem, 0o644, Owner::Root);
    }

    let bin = p.plan_binary(&host.current_exe)?;
    p.plan_key(&data_dir, args.dry_run)?;
    if let Some(token) = uplink.as_ref().and_then(|u| u.token.as_ref()) {
        let path = p.layout.host(&format!("{data_dir}/{TOKEN_FILE}"));
        let mut step = Step::write_file(
            path,
            format!("{}\n", token.encode()).into_bytes(),
            0o600,
            Owner::Service,
            false,
        );
        step.done = format!(
            "{} for network {}: the service enrolls with it at its first start",
            step.done, token.network_id
        );
        p.plan.push(step);
    }

    let config_table: toml::Table = toml::from_str(&installed_config).unwrap_or_default();
    let bind_privileged = role == Role::Cloud && unit::config_binds_privileged_port(&config_table);
    let unit_text = unit::render(&UnitParams::new(role, &bin, bind_privileged));
    p.ensure_tree(UNIT_DIR);
    p.write_if_changed(&Layout::unit(role), unit_text.into_bytes(), 0o644, Owner::Root);
    let changed = p.plan.changes_anything();
    p.plan_service(role, host.runner, changed);
    Ok(p.plan)
}

fn read_if_exists(path: &Path) -> Result<Option<String>, InstallError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(InstallError::io(path)(e)),
    }
}

/// Builds the plan; remembers directories already planned so each is created once.
struct Planner {
    plan: Plan,
    layout: Layout,
    planned: HashSet<PathBuf>,
}

impl Planner {
    fn exists(&self, path: &Path) -> bool {
        path.exists() || self.planned.contains(path)
    }

    /// Plans the directory `abs` and its missing ancestors (0755 root).
    fn ensure_tree(&mut self, abs: &str) {
        let target = self.layout.host(abs);
        let mut missing = Vec::new();
        let mut dir = target.as_path();
        while !self.exists(dir) && dir != self.layout.root() {
            missing.push(dir.to_path_buf());
            match dir.parent() {
                Some(parent) => dir = parent,
                None => break,
            }
        }
        for dir in missing.into_iter().rev() {
            self.planned.insert(dir.clone());
            self.plan.push(Step::create_dir(dir, 0o755, Owner::Root));
        }
    }

    /// Plans `abs` as a directory with `mode` and `owner`; with `fix`, an existing one whose
    /// mode or owner differ is corrected (the service could not use it otherwise).
    fn ensure_dir(&mut self, abs: &str, mode: u32, owner: Owner, fix: bool) {
        let path = self.layout.host(abs);
        if let Some(parent) = Path::new(abs).parent() {
            self.ensure_tree(&parent.to_string_lossy());
        }
        if !self.exists(&path) {
            self.planned.insert(path.clone());
            self.plan.push(Step::create_dir(path, mode, owner));
            return;
        }
        if fix && self.differs(&path, mode, owner) {
            self.plan.push(Step::set_permissions(path, mode, owner));
        }
    }

    #[cfg(unix)]
    fn differs(&self, path: &Path, mode: u32, owner: Owner) -> bool {
        use std::os::unix::fs::MetadataExt;
        let Ok(meta) = std::fs::metadata(path) else { return false };
        if meta.mode() & 0o7777 != mode {
            return true;
        }
        if !self.plan.chown {
            return false;
        }
        let root = self.layout.root();
        let want = match owner {
            Owner::Root => Some((0, 0)),
            Owner::RootServiceGroup => lookup_group(root, SERVICE_USER).map(|g| (0, g.gid)),
            Owner::Service => lookup_user(root, SERVICE_USER).map(|a| (a.uid, a.gid)),
        };
        want.is_some_and(|w| w != (meta.uid(), meta.gid()))
    }

    #[cfg(not(unix))]
    fn differs(&self, _path: &Path, _mode: u32, _owner: Owner) -> bool {
        false
    }

    fn write_if_changed(&mut self, abs: &str, contents: Vec<u8>, mode: u32, owner: Owner) {
        let path = self.layout.host(abs);
        match std::fs::read(&path) {
            Ok(old) if old == contents => {
                self.plan.push(Step::note(format!("{} is up to date", path.display())))
            }
            Ok(_) => self.plan.push(Step::write_file(path, contents, mode, owner, true)),
            Err(_) => self.plan.push(Step::write_file(path, contents, mode, owner, false)),
        }
    }

    /// The service user: created on a live system; in a tree, used if the tree has it.
    fn plan_user(&mut self, is_root: bool) {
        let root = self.layout.root().to_path_buf();
        let user = lookup_user(&root, SERVICE_USER);
        if !self.layout.is_live() {
            self.plan.chown = is_root && user.is_some();
            let line = match (is_root, user) {
                (true, Some(a)) => {
                    format!(
                        "user {SERVICE_USER} exists in {} (uid {}): files get their owners",
                        root.display(),
                        a.uid
                    )
                }
                (false, _) => "skipped user creation and ownership (--root, not running as root): files \
                               belong to the installing user"
                    .to_string(),
                (true, None) => format!(
                    "skipped user creation and ownership (--root): {} has no user {SERVICE_USER}; create it \
                     in the image (useradd --system --user-group --no-create-home --shell /usr/sbin/nologin \
                     {SERVICE_USER}) and give it {DATA_ROOT}",
                    root.join("etc/passwd").display()
                ),
            };
            self.plan.push(Step::note(line));
            return;
        }
        self.plan.chown = is_root;
        let dialout = lookup_group(&root, SERIAL_GROUP);
        match user {
            Some(a) => self.plan.push(Step::note(format!("user {SERVICE_USER} exists (uid {})", a.uid))),
            None => {
                let shell = nologin_shell(&root);
                // An existing group of that name (left by an earlier removal) is reused.
                let group_opt =
                    if lookup_group(&root, SERVICE_USER).is_some() { "--gid" } else { "--user-group" };
                let mut argv = vec![
                    "useradd",
                    "--system",
                    "--no-create-home",
                    "--home-dir",
                    DATA_ROOT,
                    "--shell",
                    shell,
                ];
                argv.push(group_opt);
                if group_opt == "--gid" {
                    argv.push(SERVICE_USER);
                }
                argv.push(SERVICE_USER);
                self.plan.push(Step::run(
                    format!("create system user {SERVICE_USER}"),
                    format!("created user {SERVICE_USER}"),
                    &argv,
                    Some(&["userdel", SERVICE_USER]),
                    false,
                ));
            }
        }
        match dialout {
            Some(g) if g.members.iter().any(|m| m == SERVICE_USER) => {}
            Some(_) => self.plan.push(Step::run(
                format!("add user {SERVICE_USER} to group {SERIAL_GROUP} (serial ports)"),
                format!("added user {SERVICE_USER} to group {SERIAL_GROUP} (serial ports)"),
                &["usermod", "--append", "--groups", SERIAL_GROUP, SERVICE_USER],
                Some(&["gpasswd", "--delete", SERVICE_USER, SERIAL_GROUP]),
                false,
            )),
            None => self.plan.push(Step::note(format!(
                "group {SERIAL_GROUP} does not exist here: serial ports stay closed to the service"
            ))),
        }
    }

    /// An installed config is never replaced; `--cloud` edits only `[uplink]`, and `--config`
    /// is refused when it would change what is there.
    fn plan_existing_config(
        &mut self,
        args: &InstallArgs,
        default_config: &DefaultConfigFn,
        path: &Path,
        existing: String,
        uplink: Option<&Uplink>,
    ) -> Result<String, InstallError> {
        let parsed: toml::Table = toml::from_str(&existing).map_err(|e| InstallError::Config {
            path: path.to_path_buf(),
            reason: format!(
                "not valid TOML ({}); fix it, or move it away to install a fresh one",
                e.message()
            ),
        })?;
        let data_dir = Layout::data_dir(args.role);
        if args.config.is_some() {
            let (wanted, _) = fresh_config(args, default_config, &data_dir, uplink, CLOUD_CA_FILE)?;
            if wanted != existing {
                return Err(InstallError::Usage(format!(
                    "{} already exists and an installed config is never overwritten: edit it, or move it \
                     away to install {}",
                    path.display(),
                    args.config.as_deref().unwrap_or(Path::new("")).display()
                )));
            }
        }
        let mut text = existing.clone();
        match uplink {
            Some(u)
                if config_edit::find_cloud(&parsed).as_deref() != Some(&u.cloud) || u.ca_pem.is_some() =>
            {
                let ca = u.ca_pem.as_ref().map(|_| CLOUD_CA_FILE);
                text = config_edit::set_uplink(&existing, &u.cloud, ca)
                    .map_err(|reason| InstallError::Config { path: path.to_path_buf(), reason })?;
            }
            _ => {}
        }
        if text == existing {
            self.plan.push(Step::note(format!("kept existing config {}", path.display())));
        } else {
            let mut step = Step::write_file(
                path.to_path_buf(),
                text.clone().into_bytes(),
                0o640,
                Owner::RootServiceGroup,
                true,
            );
            step.todo = format!("set [uplink] in {} (everything else kept)", path.display());
            step.done = format!("set [uplink] in {} (everything else kept)", path.display());
            self.plan.push(step);
        }
        match config_edit::find_data_dir(&parsed) {
            Some(d) if d == data_dir => {}
            other => self.plan.push(Step::note(format!(
                "warning: {} sets data_dir = {}, but the service may write only to {data_dir}",
                path.display(),
                other.as_deref().unwrap_or("(nothing)")
            ))),
        }
        Ok(text)
    }

    /// The binary: copied to /usr/local/bin, or used in place when this is the packaged one.
    /// Returns the path the unit runs.
    fn plan_binary(&mut self, current: &Path) -> Result<String, InstallError> {
        if self.layout.is_live() && current == Path::new(PACKAGED_BIN) {
            self.plan.push(Step::note(format!("using the packaged binary {PACKAGED_BIN} in place")));
            return Ok(PACKAGED_BIN.to_string());
        }
        self.ensure_tree("/usr/local/bin");
        let target = self.layout.host(BIN);
        let same_file = match (std::fs::canonicalize(current), std::fs::canonicalize(&target)) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        if same_file {
            self.plan
                .push(Step::note(format!("{} is the binary running this install: kept", target.display())));
        } else if same_contents(current, &target) {
            self.plan.push(Step::note(format!("{} is up to date", target.display())));
        } else {
            let replacing = target.exists();
            self.plan.push(Step::copy_file(current.to_path_buf(), target, 0o755, Owner::Root, replacing));
        }
        Ok(BIN.to_string())
    }

    /// The machine key: kept when present (it is the machine's identity), else made.
    fn plan_key(&mut self, data_dir: &str, dry_run: bool) -> Result<(), InstallError> {
        let path = self.layout.host(&format!("{data_dir}/{KEY_FILE}"));
        if path.exists() {
            // Checked now, so a key the service could not use stops the install before any change.
            let pair = KeyPair::load(&path)?;
            self.plan.push(Step::note(format!(
                "kept existing key {} (machine id {})",
                path.display(),
                pair.machine_id()
            )));
            return Ok(());
        }
        let what = format!("machine key {} (0600 {SERVICE_USER})", path.display());
        let todo = if dry_run {
            format!("create {what} (RSA-{})", outpost_shared::keys::KEY_BITS)
        } else {
            format!("create {what}")
        };
        self.plan.push(Step {
            todo,
            done: format!("created {what}"),
            action: Action::CreateKey { path, owner: Owner::Service },
        });
        Ok(())
    }

    /// Enables and (re)starts the service on a live system; in a tree, only enables it.
    /// `changed`: whether the steps before change anything (else a running service is left be).
    fn plan_service(&mut self, role: Role, runner: &dyn Runner, changed: bool) {
        let unit = Layout::unit_name(role);
        if !self.layout.is_live() {
            let link = self.layout.host(&Layout::wants_link(role));
            if std::fs::symlink_metadata(&link).is_ok() {
                self.plan.push(Step::note(format!("{unit} is enabled")));
            } else {
                self.ensure_tree(WANTS_DIR);
                let target = PathBuf::from(Layout::unit(role));
                self.plan.push(Step {
                    todo: format!("enable {unit} ({} -> {})", link.display(), target.display()),
                    done: format!("enabled {unit} (starts at boot)"),
                    action: Action::Symlink { link, target },
                });
            }
            self.plan.push(Step::note(format!(
                "service not started (--root): {unit} starts at the tree's next boot"
            )));
            return;
        }
        let asked = |what: &str| {
            runner.run("systemctl", &[what, "--quiet", &unit]).map(|r| r.success).unwrap_or(false)
        };
        let (was_enabled, was_active) = (asked("is-enabled"), asked("is-active"));
        if !changed && was_enabled && was_active {
            self.plan.push(Step::note(format!("{unit} is enabled and running; nothing changed")));
            return;
        }
        self.plan.push(Step::run(
            "reload systemd".into(),
            "reloaded systemd".into(),
            &["systemctl", "daemon-reload"],
            None,
            true,
        ));
        if was_enabled {
            self.plan.push(Step::note(format!("{unit} is enabled")));
        } else {
            self.plan.push(Step::run(
                format!("enable {unit}"),
                format!("enabled {unit} (starts at boot)"),
                &["systemctl", "enable", "--quiet", &unit],
                Some(&["systemctl", "disable", "--quiet", &unit]),
                true,
            ));
        }
        let (todo, done) = if was_active {
            (format!("restart {unit} (upgrade)"), format!("restarted {unit}"))
        } else {
            (format!("start {unit}"), format!("started {unit}"))
        };
        self.plan.push(Step::run(todo, done, &["systemctl", "restart", &unit], None, true));
        // After a rollback put the files back: reload, and run the old service again (or not).
        let again = if was_active { "restart" } else { "stop" };
        self.plan.recover = vec![
            vec!["systemctl".into(), "daemon-reload".into()],
            vec!["systemctl".into(), again.into(), unit.clone()],
        ];
    }
}

/// `outpost uninstall` on Linux: plan, then print (`--dry-run`) or apply.
pub fn uninstall(args: &UninstallArgs, host: &mut Host<'_>) -> Result<(), InstallError> {
    let plan = plan_uninstall(args, host)?;
    if args.dry_run {
        return plan.print_dry_run(host.out).map_err(InstallError::io("stdout"));
    }
    plan.apply(&mut Apply { out: host.out, runner: host.runner, keygen: host.keygen })
}

/// Plans an uninstall on Linux. Nothing is changed here.
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
