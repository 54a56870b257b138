//! Installs into directory trees (`--root`) and checks what a person would: files, modes,
//! owners, a unit systemd accepts, upgrades that keep keys and data, uninstall and purge, and
//! that bad input or a failing step leaves the tree exactly as it was.

use crate::args::{InstallArgs, StatusArgs, UninstallArgs};
use crate::install::{install, Host};
use crate::layout::Layout;
use crate::plan::KeyGen;
use crate::status::{self, UplinkReport};
use crate::system::{Ran, Runner};
use crate::uninstall::uninstall;
use crate::unit::{self, UnitParams};
use crate::{InstallError, Role};
use outpost_shared::keys::{EnrollmentToken, KeyError, KeyPair};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

const UID: u32 = 4242;
const GID: u32 = 4243;

/// One RSA key for the whole test run: making one takes seconds.
fn test_key() -> Result<KeyPair, KeyError> {
    static KEY: OnceLock<KeyPair> = OnceLock::new();
    Ok(KEY.get_or_init(|| KeyPair::generate().expect("key generation")).clone())
}

fn failing_keygen() -> Result<KeyPair, KeyError> {
    Err(KeyError::Random("injected failure".into()))
}

/// Stands in for the roles' embedded defaults: commented, with a relative data_dir.
fn default_config(role: Role) -> Result<String, String> {
    Ok(match role {
        Role::Cloud => "# Outpost cloud\nlisten = \"0.0.0.0:443\"\ndata_dir = \"./cloud-data\"\n".to_string(),
        Role::Connector => {
            "# Outpost connector\ndata_dir = \"./data\"\n\n[cloud]\nurl = \"https://cloud.example\"\n"
                .to_string()
        }
        _ => format!(
            "# Outpost {role}\nname = \"{role}\"\n# keys and buffer\ndata_dir = \"./data\"\n\n[uplink]\n\
             # cloud = \"https://cloud.example\"\nfallback_after = \"5m\"\n"
        ),
    })
}

/// Records commands; answers success, and `systemctl is-*` queries as if the service were
/// enabled and running when `active`.
#[derive(Default)]
struct Recorder {
    calls: RefCell<Vec<String>>,
    active: bool,
}

impl Runner for Recorder {
    fn run(&self, program: &str, args: &[&str]) -> std::io::Result<Ran> {
        let line = format!("{program} {}", args.join(" "));
        let query = line.contains(" is-");
        self.calls.borrow_mut().push(line);
        Ok(Ran { success: !query || self.active, stdout: String::new(), stderr: String::new() })
    }
}

/// A tree with the service user and the serial group, as a prepared image would have.
fn image_root(with_user: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("etc")).unwrap();
    let mut passwd = "root:x:0:0:root:/root:/bin/bash\n".to_string();
    let mut group = "root:x:0:\ndialout:x:20:outpost\n".to_string();
    if with_user {
        passwd.push_str(&format!("outpost:x:{UID}:{GID}::/var/lib/outpost:/usr/sbin/nologin\n"));
        group.push_str(&format!("outpost:x:{GID}:\n"));
    }
    std::fs::write(dir.path().join("etc/passwd"), passwd).unwrap();
    std::fs::write(dir.path().join("etc/group"), group).unwrap();
    dir
}

fn install_args(root: &Path, role: Role) -> InstallArgs {
    InstallArgs {
        role,
        enroll: None,
        cloud: None,
        cloud_ca: None,
        config: None,
        root: Some(root.to_path_buf()),
        dry_run: false,
    }
}

/// A stand-in for the `outpost` binary (the unit must point at an executable file).
fn fake_binary(dir: &Path, version: &str) -> PathBuf {
    let path = dir.join(format!("outpost-{version}"));
    std::fs::write(&path, format!("#!/bin/sh\n# outpost {version}\nexit 0\n")).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path
}

struct Run {
    result: Result<(), InstallError>,
    out: String,
}

fn run_install_with(args: &InstallArgs, exe: &Path, keygen: &KeyGen, runner: &dyn Runner, euid: u32) -> Run {
    let mut out = Vec::new();
    let mut host = Host {
        out: &mut out,
        runner,
        keygen,
        euid: Some(euid),
        current_exe: exe.to_path_buf(),
        health_timeout: Duration::from_secs(5),
    };
    let result = install(args, &default_config, &mut host);
    Run { result, out: String::from_utf8(out).unwrap() }
}

fn run_install(args: &InstallArgs, exe: &Path) -> Run {
    let run = run_install_with(args, exe, &test_key, &Recorder::default(), 0);
    if let Err(e) = &run.result {
        panic!("install failed: {e}\n{}", run.out);
    }
    run
}

fn run_uninstall(args: &UninstallArgs) -> Run {
    let mut out = Vec::new();
    let mut host = Host {
        out: &mut out,
        runner: &Recorder::default(),
        keygen: &test_key,
        euid: Some(0),
        current_exe: PathBuf::new(),
        health_timeout: Duration::from_secs(5),
    };
    let result = uninstall(args, &mut host);
    Run { result, out: String::from_utf8(out).unwrap() }
}

fn uninstall_args(root: &Path, role: Option<Role>, purge: bool) -> UninstallArgs {
    UninstallArgs { role, purge, root: Some(root.to_path_buf()), dry_run: false }
}

/// Every entry under `root` with its kind, mode, owner and content, for before/after checks.
fn listing(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        entries.sort();
        for path in entries {
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let what = if meta.file_type().is_symlink() {
                format!("link -> {}", std::fs::read_link(&path).unwrap().display())
            } else if meta.is_dir() {
                "dir".to_string()
            } else {
                format!("file {:?}", std::fs::read(&path).unwrap())
            };
            out.insert(rel, format!("{:o} {}:{} {what}", meta.mode(), meta.uid(), meta.gid()));
            if meta.is_dir() {
                walk(root, &path, out);
            }
        }
    }
    walk(root, root, &mut out);
    out
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().mode() & 0o7777
}

fn owner(path: &Path) -> (u32, u32) {
    let m = std::fs::symlink_metadata(path).unwrap();
    (m.uid(), m.gid())
}

fn is_root() -> bool {
    crate::system::effective_uid() == Some(0)
}

/// Runs `systemd-analyze verify --root` on a unit of the tree. The standard units the unit
/// depends on (sysinit.target, network-online.target …) are copied into the tree first.
fn systemd_verify(root: &Path, unit_abs: &str) {
    let system_units = ["/usr/lib/systemd/system", "/lib/systemd/system"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.join("multi-user.target").exists())
        .expect("systemd's unit directory is missing: install the Debian package `systemd`");
    let dest = root.join("usr/lib/systemd/system");
    if !dest.exists() {
        std::fs::create_dir_all(&dest).unwrap();
        for entry in std::fs::read_dir(system_units).unwrap() {
            let entry = entry.unwrap();
            let target = dest.join(entry.file_name());
            if let Ok(link) = std::fs::read_link(entry.path()) {
                std::os::unix::fs::symlink(link, target).unwrap();
            } else if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .arg(unit_abs)
        .output()
        .expect("systemd-analyze is missing: install the Debian package `systemd`");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let about_ours: Vec<&str> = stderr.lines().filter(|l| l.contains("outpost")).collect();
    assert!(out.status.success() && about_ours.is_empty(), "systemd-analyze verify {unit_abs}:\n{stderr}");
}

#[test]
fn install_into_a_root_gives_files_owners_and_a_unit_systemd_accepts() {
    let root = image_root(true);
    let bins = tempfile::tempdir().unwrap();
    let exe = fake_binary(bins.path(), "1");
    let run = run_install(&install_args(root.path(), Role::Sensorhub), &exe);
    let r = root.path();
    let at = |p: &str| r.join(p.trim_start_matches('/'));

    // Printed step by step.
    for line in [
        "user outpost exists in",
        "created directory",
        "wrote ",
        "sensorhub.toml (0640 root:outpost): config from the sensorhub default, \
         data_dir = /var/lib/outpost/sensorhub (was ./data)",
        "created machine key",
        "enabled outpost-sensorhub.service",
        "service not started (--root)",
    ] {
        assert!(run.out.contains(line), "missing {line:?} in:\n{}", run.out);
    }

    let bin = at("/usr/local/bin/outpost");
    assert_eq!(std::fs::read(&bin).unwrap(), std::fs::read(&exe).unwrap());
    assert_eq!(mode(&bin), 0o755);

    let config_path = at("/etc/outpost/sensorhub.toml");
    let config = std::fs::read_to_string(&config_path).unwrap();
    let parsed: toml::Table = toml::from_str(&config).unwrap();
    assert_eq!(parsed["data_dir"].as_str(), Some("/var/lib/outpost/sensorhub"));
    assert!(config.contains("# keys and buffer"), "comments must survive:\n{config}");
    assert_eq!(mode(&config_path), 0o640);
    assert_eq!(mode(&at("/etc/outpost")), 0o750);

    let data = at("/var/lib/outpost/sensorhub");
    let key = data.join("machine.key");
    assert_eq!(mode(&data), 0o750);
    assert_eq!(mode(&key), 0o600);
    let id = KeyPair::load(&key).unwrap().machine_id().clone();
    assert!(run.out.contains(&format!("machine id {id}")), "{}", run.out);
    if is_root() {
        assert_eq!(owner(&data), (UID, GID));
        assert_eq!(owner(&key), (UID, GID));
        assert_eq!(owner(&config_path), (0, GID));
        assert_eq!(owner(&at("/etc/outpost")), (0, GID));
        assert_eq!(owner(&bin), (0, 0));
    }

    let unit_text = std::fs::read_to_string(at("/etc/systemd/system/outpost-sensorhub.service")).unwrap();
    for line in [
        "Type=notify",
        "ExecStart=/usr/local/bin/outpost sensorhub --config /etc/outpost/sensorhub.toml",
        "Restart=on-failure",
        "WatchdogSec=30s",
        "Wants=network-online.target",
        "After=network-online.target",
        "User=outpost",
        "Group=outpost",
        "SupplementaryGroups=dialout",
        "ReadWritePaths=/var/lib/outpost/sensorhub",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "DeviceAllow=char-ttyUSB rw",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK",
    ] {
        assert!(unit_text.contains(line), "unit lacks {line:?}:\n{unit_text}");
    }
    let link = at("/etc/systemd/system/multi-user.target.wants/outpost-sensorhub.service");
    assert_eq!(std::fs::read_link(link).unwrap(), Path::new("/etc/systemd/system/outpost-sensorhub.service"));
    systemd_verify(r, "/etc/systemd/system/outpost-sensorhub.service");
}

#[test]
fn every_role_installs_side_by_side_with_the_units_it_needs() {
    let root = image_root(true);
    let bins = tempfile::tempdir().unwrap();
    let exe = fake_binary(bins.path(), "1");
    for role in Role::ALL {
        run_install(&install_args(root.path(), role), &exe);
    }
    let unit = |role: Role| {
        std::fs::read_to_string(root.path().join(format!("etc/systemd/system/outpost-{role}.service")))
            .unwrap()
    };
    // The cloud's default listens on 443: it keeps exactly that one capability.
    assert!(unit(Role::Cloud).contains("AmbientCapabilities=CAP_NET_BIND_SERVICE\n"));
    assert!(unit(Role::Cloud).contains("PrivateDevices=yes"));
    assert!(!unit(Role::Connector).contains("CAP_NET_BIND_SERVICE"));
    assert!(!unit(Role::Connector).contains("dialout"));
    assert!(unit(Role::Connector).contains("ReadWritePaths=/var/lib/outpost/connector"));
    for role in Role::ALL {
        systemd_verify(root.path(), &Layout::unit(role));
    }
}

#[test]
fn installing_again_upgrades_binary_and_keeps_key_config_edits_and_data() {
    let root = image_root(true);
    let bins = tempfile::tempdir().unwrap();
    let r = root.path();
    run_install(&install_args(r, Role::Sensorhub), &fake_binary(bins.path(), "1"));
    let data = r.join("var/lib/outpost/sensorhub");
    let id = KeyPair::load(&data.join("machine.key")).unwrap().machine_id().clone();
    // The operator edits the config; the hub has buffered readings.
    let config_path = r.join("etc/outpost/sensorhub.toml");
    let edited = std::fs::read_to_string(&config_path)
        .unwrap()
        .replace("fallback_after = \"5m\"", "fallback_after = \"10m\" # ours");
    std::fs::write(&config_path, &edited).unwrap();
    std::fs::create_dir_all(data.join("buffer")).unwrap();
    std::fs::write(data.join("buffer/db"), b"buffered readings").unwrap();

    let v2 = fake_binary(bins.path(), "2");
    let run = run_install(&install_args(r, Role::Sensorhub), &v2);
    assert!(
        run.out
            .contains(&format!("kept existing key {} (machine id {id})", data.join("machine.key").display())),
        "{}",
        run.out
    );
    assert!(run.out.contains("kept existing config"), "{}", run.out);
    assert!(run.out.contains("copied (upgrade)"), "{}", run.out);
    assert!(run.out.contains("outpost-sensorhub.service is up to date"), "{}", run.out);
    assert_eq!(std::fs::read(r.join("usr/local/bin/outpost")).unwrap(), std::fs::read(&v2).unwrap());
    assert_eq!(KeyPair::load(&data.join("machine.key")).unwrap().machine_id(), &id);
    assert_eq!(std::fs::read_to_string(&config_path).unwrap(), edited);
    assert_eq!(std::fs::read(data.join("buffer/db")).unwrap(), b"buffered readings");
    // Nothing left behind from the atomic replacements.
    let leftovers: Vec<String> = listing(r).into_keys().filter(|k| k.contains(".outpost-")).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A third run with nothing new changes nothing at all.
    let before = listing(r);
    run_install(&install_args(r, Role::Sensorhub), &v2);
    assert_eq!(listing(r), before);
}

#[test]
fn uninstall_keeps_data_unless_purged() {
    let root = image_root(true);
    let r = root.path();
    let pristine = listing(r);
    let bins = tempfile::tempdir().unwrap();
    let exe = fake_binary(bins.path(), "1");
    run_install(&install_args(r, Role::Sensorhub), &exe);
    std::fs::write(r.join("var/lib/outpost/sensorhub/buffered"), b"readings").unwrap();

    let run = run_uninstall(&uninstall_args(r, None, false));
    run.result.unwrap();
    assert!(!r.join("etc/systemd/system/outpost-sensorhub.service").exists(), "{}", run.out);
    assert!(!r.join("etc/systemd/system/multi-user.target.wants/outpost-sensorhub.service").exists());
    assert!(!r.join("usr/local/bin/outpost").exists());
    assert!(r.join("etc/outpost/sensorhub.toml").exists());
    assert!(r.join("var/lib/outpost/sensorhub/machine.key").exists());
    assert_eq!(std::fs::read(r.join("var/lib/outpost/sensorhub/buffered")).unwrap(), b"readings");
    assert!(run.out.contains("--purge removes them"), "{}", run.out);

    // Reinstalling finds the same identity again.
    let id = KeyPair::load(&r.join("var/lib/outpost/sensorhub/machine.key")).unwrap().machine_id().clone();
    let again = run_install(&install_args(r, Role::Sensorhub), &exe);
    assert!(again.out.contains(&format!("machine id {id}")), "{}", again.out);

    run_uninstall(&uninstall_args(r, Some(Role::Sensorhub), true)).result.unwrap();
    // What remains is what was there before the first install (empty system dirs aside).
    let mut now = listing(r);
    now.retain(|k, v| !(v.contains(" dir") && !pristine.contains_key(k) && !k.contains("outpost")));
    assert_eq!(now, pristine);
}

#[test]
fn uninstalling_one_role_keeps_the_binary_the_other_uses() {
    let root = image_root(true);
    let r = root.path();
    let bins = tempfile::tempdir().unwrap();
    let exe = fake_binary(bins.path(), "1");
    run_install(&install_args(r, Role::Sensorhub), &exe);
    run_install(&install_args(r, Role::Connector), &exe);
    let run = run_uninstall(&uninstall_args(r, Some(Role::Connector), true));
    run.result.unwrap();
    assert!(run.out.contains("still used by outpost-sensorhub.service"), "{}", run.out);
    assert!(r.join("usr/local/bin/outpost").exists());
    assert!(!r.join("var/lib/outpost/connector").exists());
    assert!(r.join("var/lib/outpost/sensorhub/machine.key").exists());
    assert!(r.join("etc/outpost").exists(), "the sensorhub still needs its config directory");
}

#[test]
fn dry_run_prints_every_step_and_changes_nothing() {
    let root = image_root(true);
    let r = root.path();
    let bins = tempfile::tempdir().unwrap();
    let before = listing(r);
    let mut args = install_args(r, Role::Sensorhub);
    args.dry_run = true;
    let run = run_install(&args, &fake_binary(bins.path(), "1"));
    for line in [
        "would create directory",
        "would write",
        "would copy",
        "would create machine key",
        "would enable",
        "dry run: nothing was changed",
    ] {
        assert!(run.out.contains(line), "missing {line:?} in:\n{}", run.out);
    }
    assert_eq!(listing(r), before);

    run_install(&install_args(r, Role::Sensorhub), &fake_binary(bins.path(), "1"));
    let installed = listing(r);
    let run = run_uninstall(&UninstallArgs { dry_run: true, ..uninstall_args(r, None, true) });
    run.result.unwrap();
    assert!(run.out.contains("would remove"), "{}", run.out);
    assert_eq!(listing(r), installed);
}

#[test]
fn without_the_user_in_the_tree_ownership_is_skipped_and_said() {
    let root = image_root(false);
    let bins = tempfile::tempdir().unwrap();
    let run = run_install(&install_args(root.path(), Role::Connector), &fake_binary(bins.path(), "1"));
    assert!(run.out.contains("skipped user creation and ownership (--root)"), "{}", run.out);
    let key = root.path().join("var/lib/outpost/connector/machine.key");
    assert_eq!(mode(&key), 0o600, "the key is private even without its owner");

    // Not root: no owners are set even where the tree knows the user.
    let root = image_root(true);
    let run = run_install_with(
        &install_args(root.path(), Role::Connector),
        &fake_binary(bins.path(), "1"),
        &test_key,
        &Recorder::default(),
        1000,
    );
    run.result.unwrap();
    assert!(
        run.out.contains("skipped user creation and ownership (--root, not running as root)"),
        "{}",
        run.out
    );
    if is_root() {
        assert_eq!(owner(&root.path().join("var/lib/outpost/connector")), (0, 0));
    }
}

fn assert_refused(root: &Path, args: &InstallArgs, expect: &str) {
    let before = listing(root);
    let bins = tempfile::tempdir().unwrap();
    let run = run_install_with(args, &fake_binary(bins.path(), "1"), &test_key, &Recorder::default(), 0);
    let err = run.result.expect_err("install must refuse");
    assert!(err.to_string().contains(expect), "expected {expect:?}, got: {err}\n{}", run.out);
    assert_eq!(listing(root), before, "the tree changed after: {err}");
}

#[test]
fn bad_input_stops_before_any_change() {
    let root = image_root(true);
    let r = root.path();
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let token = valid_token();

    let mut a = install_args(r, Role::Sensorhub);
    a.enroll = Some("OPT1.net.not-a-secret".into());
    a.cloud = Some("https://127.0.0.1:1".into());
    assert_refused(r, &a, "bad token: malformed token");

    let mut a = install_args(r, Role::Sensorhub);
    a.enroll = Some(token.clone());
    a.cloud = Some(format!("https://127.0.0.1:{closed_port}"));
    assert_refused(r, &a, "is not reachable");

    let mut a = install_args(r, Role::Sensorhub);
    a.cloud = Some("http://cloud.example".into());
    assert_refused(r, &a, "over HTTPS only");

    let mut a = install_args(r, Role::Cloud);
    a.enroll = Some(token);
    a.cloud = Some("https://cloud.example".into());
    assert_refused(r, &a, "for the sensorhub and connector roles");

    let broken = r.join("broken.toml");
    std::fs::write(&broken, "data_dir = [").unwrap();
    let mut a = install_args(r, Role::Sensorhub);
    a.config = Some(broken);
    assert_refused(r, &a, "not valid TOML");

    let mut live = install_args(r, Role::Sensorhub);
    live.root = None;
    let run = run_install_with(&live, Path::new("/bin/true"), &test_key, &Recorder::default(), 1000);
    let err = run.result.unwrap_err();
    assert!(matches!(err, InstallError::NotRoot), "{err}");
    assert!(err.to_string().contains("run as root or use --root DIR"), "{err}");

    // A key others can read is no identity: refused before anything changes.
    let key_dir = r.join("var/lib/outpost/sensorhub");
    std::fs::create_dir_all(&key_dir).unwrap();
    test_key().unwrap().save_new(&key_dir.join("machine.key")).unwrap();
    std::fs::set_permissions(
        key_dir.join("machine.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    assert_refused(r, &install_args(r, Role::Sensorhub), "chmod 600");
}

#[test]
fn a_failing_step_rolls_back_every_change_of_the_run() {
    // First install: the key cannot be made, after directories, config and binary were written.
    let root = image_root(true);
    let r = root.path();
    let bins = tempfile::tempdir().unwrap();
    let before = listing(r);
    let run = run_install_with(
        &install_args(r, Role::Sensorhub),
        &fake_binary(bins.path(), "1"),
        &failing_keygen,
        &Recorder::default(),
        0,
    );
    let err = run.result.unwrap_err();
    assert!(matches!(err, InstallError::RolledBack { ref leftovers, .. } if leftovers.is_empty()), "{err}");
    assert!(err.to_string().contains("the system is as it was"), "{err}");
    assert!(run.out.contains("rolled back: removed"), "{}", run.out);
    assert_eq!(listing(r), before);

    // Upgrade: the token cannot be written (a directory is in the way) after the binary and the
    // config were replaced; both come back as they were.
    run_install(&install_args(r, Role::Sensorhub), &fake_binary(bins.path(), "1"));
    std::fs::create_dir(r.join("var/lib/outpost/sensorhub/enroll-token")).unwrap();
    let (url, _server) = health_server(200);
    let before = listing(r);
    let mut a = install_args(r, Role::Sensorhub);
    a.enroll = Some(valid_token());
    a.cloud = Some(url.clone());
    a.cloud_ca = Some(_server.ca.clone());
    let run = run_install_with(&a, &fake_binary(bins.path(), "2"), &test_key, &Recorder::default(), 0);
    assert!(matches!(run.result, Err(InstallError::RolledBack { .. })), "{:?}\n{}", run.result, run.out);
    assert!(run.out.contains("rolled back: restored"), "{}", run.out);
    assert_eq!(listing(r), before);
}

#[test]
fn live_install_plans_user_systemd_and_start_without_touching_anything_in_a_dry_run() {
    let runner = Recorder::default();
    let mut a = install_args(Path::new("/"), Role::Sensorhub);
    a.root = None;
    a.dry_run = true;
    let run = run_install_with(&a, Path::new("/bin/true"), &test_key, &runner, 0);
    run.result.unwrap();
    for line in [
        "would reload systemd",
        "would enable outpost-sensorhub.service",
        "would start outpost-sensorhub.service",
    ] {
        assert!(run.out.contains(line), "missing {line:?} in:\n{}", run.out);
    }
    if crate::system::lookup_user(Path::new("/"), "outpost").is_none() {
        assert!(run.out.contains("would create system user outpost"), "{}", run.out);
    }
    // Only questions were asked of the system.
    for call in runner.calls.borrow().iter() {
        assert!(call == "systemctl --version" || call.contains(" is-"), "a dry run ran {call}");
    }

    // Over a running service, an install is an upgrade: restart, no second enable.
    let running = Recorder { active: true, ..Recorder::default() };
    let run = run_install_with(&a, Path::new("/bin/true"), &test_key, &running, 0);
    run.result.unwrap();
    assert!(run.out.contains("would restart outpost-sensorhub.service (upgrade)"), "{}", run.out);
    assert!(run.out.contains("outpost-sensorhub.service is enabled\n"), "{}", run.out);
}

// ---- enrollment against a real HTTPS server on 127.0.0.1 ----

fn valid_token() -> String {
    let cloud_key = test_key().unwrap().machine_id().clone();
    EnrollmentToken::generate("plant-7", cloud_key, chrono::Utc::now() + chrono::Duration::hours(1))
        .unwrap()
        .encode()
}

struct HealthServer {
    ca: PathBuf,
    _dir: tempfile::TempDir,
    _rt: tokio::runtime::Runtime,
}

/// An HTTPS server answering `GET /v1/health` with `status`, and the CA that signed it.
fn health_server(status: u16) -> (String, HealthServer) {
    let dir = tempfile::tempdir().unwrap();
    let names = vec!["127.0.0.1".to_string()];
    let paths = outpost_shared::tls::ensure_self_signed(dir.path(), &names, "test cloud").unwrap();
    let tls = outpost_shared::tls::server_config(&paths.cert, &paths.key).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let code = axum::http::StatusCode::from_u16(status).unwrap();
    let app =
        axum::Router::new().route("/v1/health", axum::routing::get(move || async move { (code, "ok") }));
    rt.spawn(async move {
        let config = axum_server::tls_rustls::RustlsConfig::from_config(tls);
        let _ = axum_server::from_tcp_rustls(listener, config).serve(app.into_make_service()).await;
    });
    (format!("https://127.0.0.1:{port}"), HealthServer { ca: paths.ca, _dir: dir, _rt: rt })
}

#[test]
fn enrollment_checks_the_cloud_and_leaves_token_and_uplink_for_the_first_start() {
    let root = image_root(true);
    let r = root.path();
    let bins = tempfile::tempdir().unwrap();
    let (url, server) = health_server(200);
    let token = valid_token();
    let mut a = install_args(r, Role::Sensorhub);
    a.enroll = Some(token.clone());
    a.cloud = Some(format!("{url}/"));
    a.cloud_ca = Some(server.ca.clone());
    let run = run_install(&a, &fake_binary(bins.path(), "1"));
    assert!(run.out.contains(&format!("cloud {url} answers its health check")), "{}", run.out);
    assert!(run.out.contains("enrollment token for network plant-7 is valid until"), "{}", run.out);
    assert!(!run.out.contains(&token), "the token's secret must not be printed:\n{}", run.out);

    let token_file = r.join("var/lib/outpost/sensorhub/enroll-token");
    assert_eq!(std::fs::read_to_string(&token_file).unwrap().trim(), token);
    assert_eq!(mode(&token_file), 0o600);
    if is_root() {
        assert_eq!(owner(&token_file), (UID, GID));
    }
    let config: toml::Table =
        toml::from_str(&std::fs::read_to_string(r.join("etc/outpost/sensorhub.toml")).unwrap()).unwrap();
    assert_eq!(config["uplink"]["cloud"].as_str(), Some(url.as_str()));
    assert_eq!(config["uplink"]["ca_file"].as_str(), Some("/etc/outpost/cloud-ca.pem"));
    assert_eq!(config["uplink"]["fallback_after"].as_str(), Some("5m"));
    assert_eq!(
        std::fs::read(r.join("etc/outpost/cloud-ca.pem")).unwrap(),
        std::fs::read(&server.ca).unwrap()
    );

    // A cloud that answers but is not healthy is refused too.
    let (sick, sick_server) = health_server(503);
    let mut a = install_args(r, Role::Connector);
    a.cloud = Some(sick);
    a.cloud_ca = Some(sick_server.ca.clone());
    assert_refused(r, &a, "503");

    // Without its CA the self-signed cloud is not trusted: the check fails, clearly.
    let mut a = install_args(r, Role::Connector);
    a.cloud = Some(url);
    assert_refused(r, &a, "--cloud-ca");
}

// ---- the Debian package's units ----

#[test]
fn packaged_units_in_assets_match_the_template() {
    let assets = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets");
    let mut stale = Vec::new();
    for role in Role::ALL {
        let path = assets.join(Layout::unit_name(role));
        let rendered = unit::render(&UnitParams::packaged(role));
        if std::env::var_os("OUTPOST_UPDATE_ASSETS").is_some() {
            std::fs::write(&path, &rendered).unwrap();
        }
        if std::fs::read_to_string(&path).ok().as_deref() != Some(rendered.as_str()) {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "{stale:?} differ from the template; run the tests with OUTPOST_UPDATE_ASSETS=1"
    );
}

#[test]
fn packaged_units_pass_systemd_verification() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    std::fs::create_dir_all(r.join("usr/bin")).unwrap();
    std::fs::copy(fake_binary(r, "pkg"), r.join("usr/bin/outpost")).unwrap();
    std::fs::create_dir_all(r.join("etc/systemd/system")).unwrap();
    for role in Role::ALL {
        let name = Layout::unit_name(role);
        std::fs::write(r.join("etc/systemd/system").join(&name), unit::render(&UnitParams::packaged(role)))
            .unwrap();
        systemd_verify(r, &format!("/etc/systemd/system/{name}"));
    }
}

#[test]
fn maintainer_scripts_are_valid_shell_that_keeps_data_on_remove() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("debian");
    for name in ["postinst", "prerm", "postrm"] {
        let path = dir.join(name);
        assert_eq!(mode(&path) & 0o111, 0o111, "{name} must be executable");
        let out = std::process::Command::new("sh").arg("-n").arg(&path).output().unwrap();
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let postrm = std::fs::read_to_string(dir.join("postrm")).unwrap();
    let remove = postrm.split("remove)").nth(1).unwrap().split(";;").next().unwrap();
    assert!(!remove.contains("rm "), "removing the package must keep config and data:\n{remove}");
}

// ---- status ----

fn write_status(root: &Path, role: Role, age: chrono::Duration) -> crate::HubStatus {
    let now = chrono::Utc::now();
    let s = crate::HubStatus {
        machine_id: "0123456789abcdef0123456789abcdef".into(),
        pid: 4321,
        uplink: "connector:c0ffee".into(),
        buffered: 17,
        last_upload: Some(now - age - chrono::Duration::seconds(5)),
        last_error: None,
        updated_at: now - age,
        managed_version: Some(7),
        managed_problem: None,
        storage_error: None,
    };
    s.write(&root.join(format!("var/lib/outpost/{role}"))).unwrap();
    s
}

#[test]
fn status_reports_uplink_buffer_and_staleness() {
    let root = image_root(true);
    let r = root.path();
    let bins = tempfile::tempdir().unwrap();
    let exe = fake_binary(bins.path(), "1");
    run_install(&install_args(r, Role::Sensorhub), &exe);
    run_install(&install_args(r, Role::Connector), &exe);
    let args = StatusArgs { role: None, root: Some(r.to_path_buf()), json: false };
    let runner = Recorder::default();

    // The hub has not written its status yet.
    let reports = status::collect(&args, &runner, chrono::Utc::now());
    assert_eq!(reports.iter().map(|r| r.role).collect::<Vec<_>>(), [Role::Sensorhub, Role::Connector]);
    assert!(
        matches!(&reports[0].uplink, Some(UplinkReport::Unknown { error }) if error.contains("no status yet"))
    );
    assert!(runner.calls.borrow().is_empty(), "a tree's service state is not asked of this system's systemd");

    write_status(r, Role::Sensorhub, chrono::Duration::seconds(3));
    write_status(r, Role::Connector, chrono::Duration::seconds(75));
    let reports = status::collect(&args, &runner, chrono::Utc::now());
    assert!(reports[0].healthy());
    assert!(!reports[1].healthy(), "75 s old is stale");
    let text = status::render_text(&reports);
    assert!(
        text.contains("outpost-sensorhub: installed (state not queried under --root), enabled"),
        "{text}"
    );
    assert!(text.contains("uplink       connector:c0ffee"), "{text}");
    assert!(text.contains("buffered     17 readings"), "{text}");
    assert!(text.contains("managed      sensors v7 from the cloud"), "{text}");
    assert!(text.contains("STALE"), "{text}");
    let json = serde_json::to_value(&reports).unwrap();
    assert_eq!(json[0]["uplink"]["buffered"], 17);
    assert_eq!(json[0]["uplink"]["uplink"], "connector:c0ffee");
    assert_eq!(json[0]["uplink"]["stale"], false);
    assert_eq!(json[1]["uplink"]["stale"], true);
    assert_eq!(json[0]["role"], "sensorhub");

    // A hub whose buffer cannot write is running but not healthy, and says why.
    let mut failing = write_status(r, Role::Sensorhub, chrono::Duration::seconds(1));
    failing.storage_error = Some("buffer storage failed: No space left on device".into());
    failing.write(&r.join("var/lib/outpost/sensorhub")).unwrap();
    let reports = status::collect(&args, &runner, chrono::Utc::now());
    assert!(!reports[0].healthy(), "a buffer that cannot write is not healthy");
    let text = status::render_text(&reports);
    assert!(text.contains("BUFFER FAILS buffer storage failed: No space left on device"), "{text}");

    // A role not installed is said so.
    let cloud = status::collect(&StatusArgs { role: Some(Role::Cloud), ..args }, &runner, chrono::Utc::now());
    assert!(!cloud[0].installed && !cloud[0].healthy());
    assert!(status::render_text(&cloud).contains("outpost-cloud: not installed"));
}

#[test]
fn unit_capability_follows_the_cloud_listening_port() {
    let t = |s: &str| unit::config_binds_privileged_port(&toml::from_str(s).unwrap());
    assert!(t("listen = \"0.0.0.0:443\""));
    assert!(t("[http]\nlisten_addr = \"[::]:80\""));
    assert!(!t("listen = \"0.0.0.0:8443\""));
    assert!(!t("name = \"a:1\""));
}
