//! Windows: each role is a service of the Service Control Manager, running as LocalSystem.
//! Config and data live in `%ProgramData%\Outpost`, whose ACL admits SYSTEM and Administrators
//! only; the binary goes to `%ProgramFiles%\Outpost\outpost.exe`. The SCM starts
//! `outpost service --role R --config FILE`, which calls [`run_service`].
//!
//! This module cannot be compiled on the Linux build machines; it is kept small and uses
//! `windows-service` exactly as its documentation shows.
#![allow(unsafe_code)] // only inside `define_windows_service!`

use crate::args::{InstallArgs, UninstallArgs};
use crate::eventlog::{SERVICE_TARGET, SOURCE, SOURCE_KEY, TYPES_SUPPORTED};
use crate::install::{
    check_uplink, fresh_config, require_cloud_for_connector, same_contents, DefaultConfigFn, Host,
};
use crate::layout::{KEY_FILE, TOKEN_FILE};
use crate::plan::{Action, Apply, Owner, Plan, Step};
use crate::system::Runner;
use crate::{InstallError, Role};
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use windows_service::service::{
    ServiceAccess, ServiceAction, ServiceActionType, ServiceControl, ServiceControlAccept,
    ServiceErrorControl, ServiceExitCode, ServiceFailureActions, ServiceFailureResetPeriod, ServiceInfo,
    ServiceStartType, ServiceState, ServiceStatus, ServiceType,
};
use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};
use windows_service::{define_windows_service, service_dispatcher};

const ERROR_ACCESS_DENIED: i32 = 5;

fn known_folder(var: &str, fallback: &str) -> PathBuf {
    std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| PathBuf::from(fallback))
}

/// `%ProgramData%\Outpost`: configs and data directories, SYSTEM and Administrators only.
pub fn base_dir() -> PathBuf {
    known_folder("ProgramData", r"C:\ProgramData").join("Outpost")
}

pub fn config_path(role: Role) -> PathBuf {
    base_dir().join(format!("{role}.toml"))
}

pub fn data_dir(role: Role) -> PathBuf {
    base_dir().join(role.as_str())
}

pub fn bin_path() -> PathBuf {
    known_folder("ProgramFiles", r"C:\Program Files").join("Outpost").join("outpost.exe")
}

fn scm_error(e: windows_service::Error) -> InstallError {
    match &e {
        windows_service::Error::Winapi(io) if io.raw_os_error() == Some(ERROR_ACCESS_DENIED) => {
            InstallError::Unsupported(
                "access denied: run from an elevated prompt (Run as administrator)".into(),
            )
        }
        _ => InstallError::Unsupported(format!("service control manager: {e}")),
    }
}

fn manager(access: ServiceManagerAccess) -> Result<ServiceManager, InstallError> {
    ServiceManager::local_computer(None::<&str>, access).map_err(scm_error)
}

/// (installed, state) of a role's service.
pub fn query_service(role: Role) -> (bool, String) {
    let Ok(m) = manager(ServiceManagerAccess::CONNECT) else { return (false, "unknown".into()) };
    match m.open_service(role.service_name(), ServiceAccess::QUERY_STATUS) {
        Err(_) => (false, "not installed".into()),
        Ok(s) => match s.query_status() {
            Ok(st) => (true, format!("{:?}", st.current_state).to_lowercase()),
            Err(e) => (true, format!("unknown ({e})")),
        },
    }
}

/// Stops every running Outpost service (the binary cannot be replaced while one runs) and
/// returns the roles that were running.
fn stop_running(out: &mut dyn Write) -> Result<Vec<Role>, InstallError> {
    let m = manager(ServiceManagerAccess::CONNECT)?;
    let mut stopped = Vec::new();
    for role in Role::ALL {
        let Ok(s) = m.open_service(role.service_name(), ServiceAccess::QUERY_STATUS | ServiceAccess::STOP)
        else {
            continue;
        };
        if s.query_status().map_err(scm_error)?.current_state == ServiceState::Stopped {
            continue;
        }
        s.stop().map_err(scm_error)?;
        for _ in 0..60 {
            if s.query_status().map_err(scm_error)?.current_state == ServiceState::Stopped {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let _ = writeln!(out, "stopped {}", role.service_name());
        stopped.push(role);
    }
    Ok(stopped)
}

fn start(role: Role, out: &mut dyn Write) -> Result<(), InstallError> {
    let m = manager(ServiceManagerAccess::CONNECT)?;
    let s = m.open_service(role.service_name(), ServiceAccess::START).map_err(scm_error)?;
    s.start::<&str>(&[]).map_err(scm_error)?;
    let _ = writeln!(out, "started {}", role.service_name());
    Ok(())
}

pub fn install(
    args: &InstallArgs,
    default_config: &DefaultConfigFn,
    host: &mut Host<'_>,
) -> Result<(), InstallError> {
    if args.root.is_some() {
        return Err(InstallError::Usage(
            "--root is for Linux trees; on Windows install into the running system".into(),
        ));
    }
    // Opening the SCM for creation fails early, before any change, without administrator rights.
    manager(ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE)?;
    let uplink = check_uplink(args, host)?;
    let role = args.role;
    let mut plan = Plan::default();
    for dir in [base_dir(), data_dir(role), bin_path().parent().map(PathBuf::from).unwrap_or_default()] {
        if !dir.exists() {
            plan.push(Step::create_dir(dir, 0o700, Owner::Service));
        }
    }
    let base = base_dir().display().to_string();
    // SIDs, not names: "Administrators" is spelled differently on localised systems.
    plan.push(Step::run(
        format!("restrict {base} to SYSTEM and Administrators"),
        format!("restricted {base} to SYSTEM and Administrators"),
        &["icacls", &base, "/inheritance:r", "/grant:r", "*S-1-5-18:(OI)(CI)F", "*S-1-5-32-544:(OI)(CI)F"],
        None,
        false,
    ));
    let config = config_path(role);
    if config.exists() {
        let text = std::fs::read_to_string(&config).map_err(InstallError::io(&config))?;
        require_cloud_for_connector(role, &text)?;
        plan.push(Step::note(format!("kept existing config {}", config.display())));
    } else {
        let data = data_dir(role).display().to_string();
        let ca = base_dir().join("cloud-ca.pem").display().to_string();
        let (text, notes) = fresh_config(args, default_config, &data, uplink.as_ref(), &ca)?;
        require_cloud_for_connector(role, &text)?;
        let mut step = Step::write_file(config.clone(), text.into_bytes(), 0o600, Owner::Service, false);
        step.done = format!("{}: {}", step.done, notes.join(", "));
        plan.push(step);
        if let Some(pem) = uplink.as_ref().and_then(|u| u.ca_pem.clone()) {
            plan.push(Step::write_file(PathBuf::from(ca), pem, 0o600, Owner::Service, false));
        }
    }
    let bin = bin_path();
    let exe = &host.current_exe;
    let same = matches!((std::fs::canonicalize(exe), std::fs::canonicalize(&bin)), (Ok(a), Ok(b)) if a == b);
    if same || same_contents(exe, &bin) {
        plan.push(Step::note(format!("{} is up to date", bin.display())));
    } else {
        plan.push(Step::copy_file(exe.clone(), bin.clone(), 0o755, Owner::Root, bin.exists()));
    }
    plan.steps.extend(event_source_steps(&bin, host.runner));
    let key = data_dir(role).join(KEY_FILE);
    if !key.exists() {
        plan.push(Step {
            todo: format!("create machine key {}", key.display()),
            done: format!("created machine key {}", key.display()),
            action: Action::CreateKey { path: key, owner: Owner::Service },
        });
    }
    if let Some(token) = uplink.as_ref().and_then(|u| u.token.as_ref()) {
        let path = data_dir(role).join(TOKEN_FILE);
        plan.push(Step::write_file(
            path,
            format!("{}\n", token.encode()).into_bytes(),
            0o600,
            Owner::Service,
            true,
        ));
    }
    let service = role.service_name();
    plan.push(Step::note(format!("register service {service}, restarted by Windows on failure")));
    if args.dry_run {
        return plan.print_dry_run(host.out).map_err(InstallError::io("stdout"));
    }

    let was_running = stop_running(host.out)?;
    if let Err(e) = plan.apply(&mut Apply { out: host.out, runner: host.runner, keygen: host.keygen }) {
        for r in was_running {
            let _ = start(r, host.out);
        }
        return Err(e);
    }
    let warnings = register(role, &bin, &config).map_err(scm_error)?;
    let _ = writeln!(host.out, "registered service {service} (automatic start, restart on failure)");
    for w in warnings {
        let _ = writeln!(host.out, "warning: {w}");
    }
    for r in was_running.into_iter().filter(|r| *r != role) {
        start(r, host.out)?;
    }
    start(role, host.out)?;
    Ok(())
}

/// The event source's key as `reg.exe` spells it.
fn event_source_key() -> String {
    format!(r"HKLM\{SOURCE_KEY}")
}

fn event_source_registered(runner: &dyn Runner) -> bool {
    runner.run("reg", &["query", &event_source_key()]).is_ok_and(|r| r.success)
}

/// Registers the event source the services log to (see [`crate::eventlog`]): its messages are in
/// `bin`'s message table. Set again on every install, so an upgrade that moved the binary is
/// followed; a rollback removes the key only if this run made it.
fn event_source_steps(bin: &Path, runner: &dyn Runner) -> Vec<Step> {
    let key = event_source_key();
    let bin = bin.display().to_string();
    let undo = ["reg", "delete", key.as_str(), "/f"];
    let undo = (!event_source_registered(runner)).then_some(&undo[..]);
    let types = TYPES_SUPPORTED.to_string();
    vec![
        Step::run(
            format!("register the event log source {SOURCE} (Application log, messages in {bin})"),
            format!("registered the event log source {SOURCE} (Application log, messages in {bin})"),
            &["reg", "add", &key, "/v", "EventMessageFile", "/t", "REG_EXPAND_SZ", "/d", &bin, "/f"],
            undo,
            false,
        ),
        Step::run(
            format!("let {SOURCE} write errors, warnings and information events"),
            format!("{SOURCE} may write errors, warnings and information events"),
            &["reg", "add", &key, "/v", "TypesSupported", "/t", "REG_DWORD", "/d", &types, "/f"],
            None,
            false,
        ),
    ]
}

/// Creates the service or updates its configuration, then sets its recovery actions. Returns what
/// could not be set but leaves a working service: every Windows since Vista takes the delayed
/// start and the restart on an error exit, but Wine's service manager refuses both, and a service
/// without them still runs, starts at boot and is restarted when it crashes.
fn register(
    role: Role,
    bin: &std::path::Path,
    config: &std::path::Path,
) -> windows_service::Result<Vec<String>> {
    let m = ServiceManager::local_computer(
        None::<&str>,
        ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE,
    )?;
    let info = ServiceInfo {
        name: OsString::from(role.service_name()),
        display_name: OsString::from(format!("Outpost {role}")),
        service_type: ServiceType::OWN_PROCESS,
        start_type: ServiceStartType::AutoStart,
        error_control: ServiceErrorControl::Normal,
        executable_path: bin.to_path_buf(),
        launch_arguments: vec![
            OsString::from("service"),
            OsString::from("--role"),
            OsString::from(role.as_str()),
            OsString::from("--config"),
            config.as_os_str().to_os_string(),
        ],
        dependencies: vec![],
        account_name: None, // LocalSystem
        account_password: None,
    };
    let access = ServiceAccess::QUERY_STATUS | ServiceAccess::CHANGE_CONFIG | ServiceAccess::START;
    let service = match m.open_service(role.service_name(), access) {
        Ok(s) => {
            s.change_config(&info)?;
            s
        }
        Err(_) => m.create_service(&info, access)?,
    };
    service.set_description(role.description())?;
    let mut warnings = Vec::new();
    // Starting a little after boot lets the network come up first.
    if let Err(e) = service.set_delayed_auto_start(true) {
        warnings.push(format!(
            "the service manager refused the delayed start ({e}): it starts as soon as Windows does"
        ));
    }
    let restart =
        |secs| ServiceAction { action_type: ServiceActionType::Restart, delay: Duration::from_secs(secs) };
    service.update_failure_actions(ServiceFailureActions {
        reset_period: ServiceFailureResetPeriod::After(Duration::from_secs(86_400)),
        reboot_msg: None,
        command: None,
        actions: Some(vec![restart(5), restart(5), restart(30)]),
    })?;
    // Also restart when the service stops with an error code, not only when it crashes.
    if let Err(e) = service.set_failure_actions_on_non_crash_failures(true) {
        warnings.push(format!(
            "the service manager refused restarts after an error exit ({e}): only a crash restarts it"
        ));
    }
    Ok(warnings)
}

pub fn uninstall(args: &UninstallArgs, host: &mut Host<'_>) -> Result<(), InstallError> {
    if args.root.is_some() {
        return Err(InstallError::Usage("--root is for Linux trees".into()));
    }
    let roles: Vec<Role> = match args.role {
        Some(r) => vec![r],
        None => Role::ALL.into_iter().filter(|r| query_service(*r).0).collect(),
    };
    let remaining: Vec<Role> =
        Role::ALL.into_iter().filter(|r| !roles.contains(r) && query_service(*r).0).collect();
    if args.dry_run {
        for r in &roles {
            let _ = writeln!(host.out, "would stop and delete service {}", r.service_name());
        }
        let _ = writeln!(host.out, "dry run: nothing was changed");
        return Ok(());
    }
    let m = manager(ServiceManagerAccess::CONNECT)?;
    for role in &roles {
        let access = ServiceAccess::QUERY_STATUS | ServiceAccess::STOP | ServiceAccess::DELETE;
        let Ok(s) = m.open_service(role.service_name(), access) else {
            let _ = writeln!(host.out, "{} is not installed", role.service_name());
            continue;
        };
        if s.query_status().map_err(scm_error)?.current_state != ServiceState::Stopped {
            s.stop().map_err(scm_error)?;
            for _ in 0..60 {
                if s.query_status().map_err(scm_error)?.current_state == ServiceState::Stopped {
                    break;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        s.delete().map_err(scm_error)?;
        let _ = writeln!(host.out, "stopped and deleted service {}", role.service_name());
    }
    let mut plan = Plan::default();
    if remaining.is_empty() && bin_path().exists() {
        plan.push(Step::remove_file(bin_path()));
    }
    for role in &roles {
        if args.purge {
            if config_path(*role).exists() {
                plan.push(Step::remove_file(config_path(*role)));
            }
            if data_dir(*role).exists() {
                plan.push(Step::remove_tree(data_dir(*role)));
            }
        } else {
            plan.push(Step::note(format!(
                "kept {} and {}; --purge removes them",
                config_path(*role).display(),
                data_dir(*role).display()
            )));
        }
    }
    // The source names the binary's message table: both go with the last role.
    if remaining.is_empty() && event_source_registered(host.runner) {
        let key = event_source_key();
        plan.push(Step::run(
            format!("remove the event log source {SOURCE}"),
            format!("removed the event log source {SOURCE} (its past events stay in the log)"),
            &["reg", "delete", &key, "/f"],
            None,
            false,
        ));
    }
    if args.purge && remaining.is_empty() {
        plan.push(Step::remove_dir_if_empty(base_dir()));
    }
    plan.apply(&mut Apply { out: host.out, runner: host.runner, keygen: host.keygen })
}

/// What the service runs: the role, until the token is cancelled (Stop or system shutdown).
pub type ServiceBody = Box<dyn FnOnce(CancellationToken) -> Result<(), String> + Send>;

/// The body waiting for the SCM to call `service_main` (which takes no closure).
static PENDING: Mutex<Option<(String, ServiceBody)>> = Mutex::new(None);

define_windows_service!(ffi_service_main, service_main);

/// Runs `body` as the Windows service of `role`. Blocks until the service has stopped. Call it
/// from `outpost service`, which only the SCM should start.
pub fn run_service(role: Role, body: ServiceBody) -> Result<(), InstallError> {
    *PENDING.lock().unwrap_or_else(|e| e.into_inner()) = Some((role.service_name(), body));
    service_dispatcher::start(role.service_name(), ffi_service_main).map_err(|e| {
        InstallError::Unsupported(format!(
            "cannot reach the service control manager ({e}); `outpost service` runs only when Windows starts it"
        ))
    })
}

fn service_main(_arguments: Vec<OsString>) {
    let Some((name, body)) = PENDING.lock().unwrap_or_else(|e| e.into_inner()).take() else { return };
    if let Err(e) = serve(&name, body) {
        tracing::error!(service = %name, error = %e, "service control failed");
    }
}

fn serve(name: &str, body: ServiceBody) -> windows_service::Result<()> {
    let shutdown = CancellationToken::new();
    let on_stop = shutdown.clone();
    let stop_name = name.to_string();
    let handle = service_control_handler::register(name, move |control| match control {
        ServiceControl::Stop | ServiceControl::Shutdown => {
            let why = if control == ServiceControl::Stop { "stop" } else { "system shutdown" };
            tracing::info!(target: SERVICE_TARGET, service = %stop_name, "{why} requested; stopping");
            on_stop.cancel();
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
        _ => ServiceControlHandlerResult::NotImplemented,
    })?;
    let status = |state, accepted, wait_hint, exit_code| ServiceStatus {
        service_type: ServiceType::OWN_PROCESS,
        current_state: state,
        controls_accepted: accepted,
        exit_code,
        checkpoint: 0,
        wait_hint,
        process_id: None,
    };
    handle.set_service_status(status(
        ServiceState::StartPending,
        ServiceControlAccept::empty(),
        Duration::from_secs(30),
        ServiceExitCode::Win32(0),
    ))?;
    handle.set_service_status(status(
        ServiceState::Running,
        ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN,
        Duration::default(),
        ServiceExitCode::Win32(0),
    ))?;
    tracing::info!(
        target: SERVICE_TARGET,
        service = %name,
        version = env!("CARGO_PKG_VERSION"),
        pid = std::process::id(),
        "service started"
    );
    let result = body(shutdown);
    // A non-zero code counts as a failure, so the recovery actions restart the service.
    let exit = match &result {
        Ok(()) => {
            tracing::info!(target: SERVICE_TARGET, service = %name, "service stopped");
            ServiceExitCode::Win32(0)
        }
        Err(e) => {
            tracing::error!(service = %name, error = %e, "service stopped with an error");
            ServiceExitCode::ServiceSpecific(1)
        }
    };
    handle.set_service_status(status(
        ServiceState::Stopped,
        ServiceControlAccept::empty(),
        Duration::default(),
        exit,
    ))
}
