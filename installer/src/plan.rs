//! Steps, planned before anything changes, then printed (`--dry-run`) or applied. Applying keeps
//! an undo record per change; when a step fails, the changes of this run are undone in reverse
//! order, so a failed install leaves the system as it was. Replaced and removed files are moved
//! aside (not deleted) until the whole plan has succeeded.

use crate::layout::SERVICE_USER;
use crate::system::{lookup_group, lookup_user, Runner};
use crate::InstallError;
use outpost_shared::keys::{KeyError, KeyPair};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Who owns a file or directory, once the service user exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// `root:root`: binaries, units, directories others may read.
    Root,
    /// `root:outpost`: configuration the service may read but not change.
    RootServiceGroup,
    /// `outpost:outpost`: the service's own data, keys and tokens.
    Service,
}

impl Owner {
    fn label(self) -> String {
        match self {
            Owner::Root => "root:root".to_string(),
            Owner::RootServiceGroup => format!("root:{SERVICE_USER}"),
            Owner::Service => format!("{SERVICE_USER}:{SERVICE_USER}"),
        }
    }
}

/// One change to make.
#[derive(Debug, Clone)]
pub enum Action {
    /// Nothing to do; the step's line says what was found or skipped.
    Note,
    CreateDir {
        path: PathBuf,
        mode: u32,
        owner: Owner,
    },
    /// Sets mode and owner of something that exists.
    SetPermissions {
        path: PathBuf,
        mode: u32,
        owner: Owner,
    },
    /// Writes a file atomically, replacing any previous one.
    WriteFile {
        path: PathBuf,
        contents: Vec<u8>,
        mode: u32,
        owner: Owner,
    },
    /// Copies a file atomically, replacing any previous one (the binary).
    CopyFile {
        from: PathBuf,
        to: PathBuf,
        mode: u32,
        owner: Owner,
    },
    /// Makes a machine key pair, refusing to replace one.
    CreateKey {
        path: PathBuf,
        owner: Owner,
    },
    Symlink {
        link: PathBuf,
        target: PathBuf,
    },
    /// Removes a file or symbolic link.
    RemoveFile {
        path: PathBuf,
    },
    /// Removes a directory and everything below it.
    RemoveTree {
        path: PathBuf,
    },
    /// Removes a directory if nothing is left in it.
    RemoveDirIfEmpty {
        path: PathBuf,
    },
    /// Runs a command; `undo` runs when a later step fails. `service` marks commands that change
    /// the running service, after which a rollback also runs the plan's recovery commands.
    Run {
        argv: Vec<String>,
        undo: Option<Vec<String>>,
        service: bool,
    },
}

/// A planned change with the line printed before (dry run) and after (done) it.
#[derive(Debug, Clone)]
pub struct Step {
    pub todo: String,
    pub done: String,
    pub action: Action,
}

impl Step {
    pub fn note(line: impl Into<String>) -> Step {
        let line = line.into();
        Step { todo: line.clone(), done: line, action: Action::Note }
    }

    pub fn create_dir(path: PathBuf, mode: u32, owner: Owner) -> Step {
        let what = format!("directory {}{}", path.display(), access(mode, owner));
        Step {
            todo: format!("create {what}"),
            done: format!("created {what}"),
            action: Action::CreateDir { path, mode, owner },
        }
    }

    pub fn set_permissions(path: PathBuf, mode: u32, owner: Owner) -> Step {
        let what = format!("{} to {mode:04o} {}", path.display(), owner.label());
        Step {
            todo: format!("set {what}"),
            done: format!("set {what}"),
            action: Action::SetPermissions { path, mode, owner },
        }
    }

    /// `verb` is the present tense ("write", "replace"); the past tense adds "d"/"ed".
    pub fn write_file(path: PathBuf, contents: Vec<u8>, mode: u32, owner: Owner, replacing: bool) -> Step {
        let what = format!("{}{}", path.display(), access(mode, owner));
        let (todo, done) = if replacing { ("replace", "replaced") } else { ("write", "wrote") };
        Step {
            todo: format!("{todo} {what}"),
            done: format!("{done} {what}"),
            action: Action::WriteFile { path, contents, mode, owner },
        }
    }

    pub fn copy_file(from: PathBuf, to: PathBuf, mode: u32, owner: Owner, replacing: bool) -> Step {
        let what = format!("{} to {}{}", from.display(), to.display(), access(mode, owner));
        let (todo, done) =
            if replacing { ("copy (upgrade)", "copied (upgrade)") } else { ("copy", "copied") };
        Step {
            todo: format!("{todo} {what}"),
            done: format!("{done} {what}"),
            action: Action::CopyFile { from, to, mode, owner },
        }
    }

    pub fn run(
        line_todo: String,
        line_done: String,
        argv: &[&str],
        undo: Option<&[&str]>,
        service: bool,
    ) -> Step {
        let own = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Step {
            todo: line_todo,
            done: line_done,
            action: Action::Run { argv: own(argv), undo: undo.map(own), service },
        }
    }

    pub fn remove_file(path: PathBuf) -> Step {
        Step {
            todo: format!("remove {}", path.display()),
            done: format!("removed {}", path.display()),
            action: Action::RemoveFile { path },
        }
    }

    pub fn remove_tree(path: PathBuf) -> Step {
        Step {
            todo: format!("remove {} and everything in it", path.display()),
            done: format!("removed {} and everything in it", path.display()),
            action: Action::RemoveTree { path },
        }
    }

    pub fn remove_dir_if_empty(path: PathBuf) -> Step {
        Step {
            todo: format!("remove {} if empty", path.display()),
            done: format!("removed empty directory {}", path.display()),
            action: Action::RemoveDirIfEmpty { path },
        }
    }
}

/// What to print for a step once applied.
enum Said {
    /// The step's `done` line.
    Done,
    /// The `done` line with this added.
    Append(String),
    /// This line instead.
    Instead(String),
}

/// Makes machine keys; tests hand in a key made once instead of waiting for a new one each time.
pub type KeyGen = dyn Fn() -> Result<KeyPair, KeyError>;

/// What applying a plan needs from its surroundings.
pub struct Apply<'a> {
    pub out: &'a mut dyn Write,
    pub runner: &'a dyn Runner,
    pub keygen: &'a KeyGen,
}

/// How a step shows who may use what it makes: mode and owner on Unix; nothing on Windows, where
/// mode bits mean nothing and the data directory's ACL (a step of its own) decides who may read.
fn access(mode: u32, owner: Owner) -> String {
    if cfg!(windows) {
        String::new()
    } else {
        format!(" ({mode:04o} {})", owner.label())
    }
}

/// An ordered list of steps and how to set ownership while applying them.
#[derive(Debug, Default)]
pub struct Plan {
    pub steps: Vec<Step>,
    /// The tree user and group names are resolved in (`/etc/passwd` under it).
    pub root: PathBuf,
    /// Whether to change owners (only root can, and only to users the tree knows).
    pub chown: bool,
    /// Commands that put the service back after a rollback undid files under it (daemon-reload,
    /// then restart or stop). Run only when a step marked `service` had been applied.
    pub recover: Vec<Vec<String>>,
}

#[derive(Debug)]
enum Undo {
    RemoveFile(PathBuf),
    RemoveDir(PathBuf),
    /// Put back a file that was replaced or removed; it waits at `backup`.
    Restore {
        path: PathBuf,
        backup: PathBuf,
    },
    #[cfg(unix)]
    Permissions {
        path: PathBuf,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    /// A directory emptied by this run; removed once the plan has succeeded.
    RemoveDirAtCommit(PathBuf),
    Run(Vec<String>),
}

impl Plan {
    pub fn push(&mut self, step: Step) {
        self.steps.push(step);
    }

    /// Whether applying would change anything.
    pub fn changes_anything(&self) -> bool {
        self.steps.iter().any(|s| !matches!(s.action, Action::Note))
    }

    /// Prints every step as it would be done.
    pub fn print_dry_run(&self, out: &mut dyn Write) -> std::io::Result<()> {
        for step in &self.steps {
            match step.action {
                Action::Note => writeln!(out, "{}", step.todo)?,
                _ => writeln!(out, "would {}", step.todo)?,
            }
        }
        writeln!(out, "dry run: nothing was changed")
    }

    /// Applies every step in order, printing each when done. On the first failure, undoes what
    /// this run changed and returns [`InstallError::RolledBack`].
    pub fn apply(&self, ctx: &mut Apply<'_>) -> Result<(), InstallError> {
        let mut undo: Vec<Undo> = Vec::new();
        let mut service_touched = false;
        for step in &self.steps {
            match self.apply_step(step, ctx, &mut undo) {
                Ok(said) => {
                    let _ = match said {
                        Said::Done => writeln!(ctx.out, "{}", step.done),
                        Said::Append(more) => writeln!(ctx.out, "{}{more}", step.done),
                        Said::Instead(line) => writeln!(ctx.out, "{line}"),
                    };
                    if matches!(step.action, Action::Run { service: true, .. }) {
                        service_touched = true;
                    }
                }
                Err(cause) => {
                    let _ = writeln!(ctx.out, "failed to {}: {cause}", step.todo);
                    let leftovers = self.rollback(undo, service_touched, ctx);
                    return Err(InstallError::RolledBack { cause: Box::new(cause), leftovers });
                }
            }
        }
        // Success: what was moved aside for a rollback can go now, then the emptied directories.
        for u in &undo {
            if let Undo::Restore { backup, .. } = u {
                let _ = remove_any(backup);
            }
        }
        for u in &undo {
            if let Undo::RemoveDirAtCommit(dir) = u {
                let _ = std::fs::remove_dir(dir);
            }
        }
        Ok(())
    }

    fn rollback(&self, undo: Vec<Undo>, service_touched: bool, ctx: &mut Apply<'_>) -> Vec<String> {
        let mut leftovers = Vec::new();
        for u in undo.into_iter().rev() {
            let (what, result) = match &u {
                Undo::RemoveFile(p) => {
                    (format!("removed {}", p.display()), std::fs::remove_file(p).map_err(|e| e.to_string()))
                }
                Undo::RemoveDir(p) => {
                    (format!("removed {}", p.display()), std::fs::remove_dir(p).map_err(|e| e.to_string()))
                }
                Undo::RemoveDirAtCommit(_) => continue,
                Undo::Restore { path, backup } => (
                    format!("restored {}", path.display()),
                    remove_any(path)
                        .or(Ok(()))
                        .and_then(|()| std::fs::rename(backup, path))
                        .map_err(|e| e.to_string()),
                ),
                #[cfg(unix)]
                Undo::Permissions { path, mode, uid, gid } => (
                    format!("restored permissions of {}", path.display()),
                    set_mode(path, *mode)
                        .and_then(|()| std::os::unix::fs::lchown(path, Some(*uid), Some(*gid)))
                        .map_err(|e| e.to_string()),
                ),
                Undo::Run(argv) => (
                    format!("ran {}", argv.join(" ")),
                    run_argv(ctx.runner, argv).map(|_| ()).map_err(|e| e.to_string()),
                ),
            };
            match result {
                Ok(()) => {
                    let _ = writeln!(ctx.out, "rolled back: {what}");
                }
                Err(e) => leftovers.push(format!("{what}: {e}")),
            }
        }
        if service_touched {
            for argv in &self.recover {
                match run_argv(ctx.runner, argv) {
                    Ok(_) => {
                        let _ = writeln!(ctx.out, "rolled back: ran {}", argv.join(" "));
                    }
                    Err(e) => leftovers.push(format!("{}: {e}", argv.join(" "))),
                }
            }
        }
        leftovers
    }

    /// The numeric owner for `owner`, or `None` when ownership is left alone.
    fn ids(&self, owner: Owner) -> Result<Option<(u32, u32)>, InstallError> {
        if !self.chown {
            return Ok(None);
        }
        let missing = |what: &str| {
            InstallError::Unsupported(format!(
                "{what} {SERVICE_USER} not found in {}",
                self.root.join("etc").display()
            ))
        };
        Ok(Some(match owner {
            Owner::Root => (0, 0),
            Owner::RootServiceGroup => {
                (0, lookup_group(&self.root, SERVICE_USER).ok_or_else(|| missing("group"))?.gid)
            }
            Owner::Service => {
                let a = lookup_user(&self.root, SERVICE_USER).ok_or_else(|| missing("user"))?;
                (a.uid, a.gid)
            }
        }))
    }

    /// Applies one step and says what to print for it.
    fn apply_step(
        &self,
        step: &Step,
        ctx: &mut Apply<'_>,
        undo: &mut Vec<Undo>,
    ) -> Result<Said, InstallError> {
        self.apply_action(&step.action, ctx, undo)
    }

    fn apply_action(
        &self,
        action: &Action,
        ctx: &mut Apply<'_>,
        undo: &mut Vec<Undo>,
    ) -> Result<Said, InstallError> {
        let done = |r: Result<(), InstallError>| r.map(|()| Said::Done);
        match action {
            Action::Note => Ok(Said::Done),
            Action::CreateDir { path, mode, owner } => {
                std::fs::create_dir(path).map_err(InstallError::io(path))?;
                undo.push(Undo::RemoveDir(path.clone()));
                done(self.finish_file(path, *mode, *owner))
            }
            Action::SetPermissions { path, mode, owner } => {
                #[cfg(unix)]
                {
                    use std::os::unix::fs::MetadataExt;
                    let meta = std::fs::symlink_metadata(path).map_err(InstallError::io(path))?;
                    undo.push(Undo::Permissions {
                        path: path.clone(),
                        mode: meta.mode() & 0o7777,
                        uid: meta.uid(),
                        gid: meta.gid(),
                    });
                }
                done(self.finish_file(path, *mode, *owner))
            }
            Action::WriteFile { path, contents, mode, owner } => {
                done(self.replace_file(path, *mode, *owner, undo, |tmp| std::fs::write(tmp, contents)))
            }
            Action::CopyFile { from, to, mode, owner } => {
                done(self.replace_file(to, *mode, *owner, undo, |tmp| std::fs::copy(from, tmp).map(|_| ())))
            }
            Action::CreateKey { path, owner } => {
                let (pair, created) = KeyPair::load_or_create_with(path, || (ctx.keygen)())?;
                if created {
                    undo.push(Undo::RemoveFile(path.clone()));
                    self.finish_file(path, 0o600, *owner)?;
                }
                let id = pair.machine_id();
                Ok(Said::Append(if created {
                    format!(", machine id {id}")
                } else {
                    format!(" (kept the key already there, machine id {id})")
                }))
            }
            Action::Symlink { link, target } => {
                symlink(target, link).map_err(InstallError::io(link))?;
                undo.push(Undo::RemoveFile(link.clone()));
                Ok(Said::Done)
            }
            // Removed files and trees wait aside until the plan has succeeded.
            Action::RemoveFile { path } | Action::RemoveTree { path } => {
                let backup = aside(path, "removed");
                let _ = remove_any(&backup);
                std::fs::rename(path, &backup).map_err(InstallError::io(path))?;
                undo.push(Undo::Restore { path: path.clone(), backup });
                Ok(Said::Done)
            }
            Action::RemoveDirIfEmpty { path } => {
                let entries = std::fs::read_dir(path).map_err(InstallError::io(path))?;
                let mut only_aside = true;
                for entry in entries {
                    let name = entry.map_err(InstallError::io(path))?.file_name();
                    only_aside &= name.to_string_lossy().ends_with(".outpost-removed");
                }
                if !only_aside {
                    // Something else lives there, so it stays.
                    return Ok(Said::Instead(format!("kept {} (not empty)", path.display())));
                }
                // What is left waits aside for a rollback: the directory goes at commit.
                undo.push(Undo::RemoveDirAtCommit(path.clone()));
                Ok(Said::Done)
            }
            Action::Run { argv, undo: undo_argv, .. } => {
                run_argv(ctx.runner, argv)?;
                if let Some(u) = undo_argv {
                    undo.push(Undo::Run(u.clone()));
                }
                Ok(Said::Done)
            }
        }
    }

    /// Writes a new file next to `path` with `fill`, sets mode and owner, then swaps it in. An
    /// existing file is kept aside as a hard link until the plan has succeeded.
    fn replace_file(
        &self,
        path: &Path,
        mode: u32,
        owner: Owner,
        undo: &mut Vec<Undo>,
        fill: impl FnOnce(&Path) -> std::io::Result<()>,
    ) -> Result<(), InstallError> {
        let tmp = aside(path, "new");
        let _ = std::fs::remove_file(&tmp);
        let written = fill(&tmp)
            .map_err(InstallError::io(&tmp))
            .and_then(|()| self.finish_file(&tmp, mode, owner))
            .and_then(|()| {
                // Windows flushes only a handle opened for writing (FlushFileBuffers on a read-only
                // one is "Access denied"); Unix syncs any descriptor, and a 0400 file opens read-only.
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(cfg!(windows))
                    .open(&tmp)
                    .and_then(|f| f.sync_all())
                    .map_err(InstallError::io(&tmp))
            });
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        if path.exists() {
            let backup = aside(path, "old");
            let _ = std::fs::remove_file(&backup);
            let kept =
                std::fs::hard_link(path, &backup).or_else(|_| std::fs::copy(path, &backup).map(|_| ()));
            if let Err(e) = kept {
                let _ = std::fs::remove_file(&tmp);
                return Err(InstallError::io(path)(e));
            }
            undo.push(Undo::Restore { path: path.to_path_buf(), backup });
        } else {
            undo.push(Undo::RemoveFile(path.to_path_buf()));
        }
        // Rename replaces atomically, and works even for a binary that is running right now.
        std::fs::rename(&tmp, path).map_err(InstallError::io(path))
    }

    fn finish_file(&self, path: &Path, mode: u32, owner: Owner) -> Result<(), InstallError> {
        set_mode(path, mode).map_err(InstallError::io(path))?;
        #[cfg(unix)]
        if let Some((uid, gid)) = self.ids(owner)? {
            std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(InstallError::io(path))?;
        }
        #[cfg(not(unix))]
        let _ = self.ids(owner)?;
        Ok(())
    }
}

/// A sibling name for temporary, replaced or removed copies: hidden, and on the same file system
/// so renames are atomic.
fn aside(path: &Path, what: &str) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.outpost-{what}"))
}

fn remove_any(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    }
}

fn run_argv(runner: &dyn Runner, argv: &[String]) -> Result<String, InstallError> {
    let args: Vec<&str> = argv[1..].iter().map(String::as_str).collect();
    runner.run_ok(&argv[0], &args)
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
    }
    #[cfg(not(unix))]
    {
        // Windows: the data directory's ACL decides who may read, not a mode.
        let _ = (path, mode);
        Ok(())
    }
}

fn symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(target, link)
    }
    #[cfg(not(unix))]
    {
        let _ = (target, link);
        Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "symbolic links are a systemd matter"))
    }
}
