//! The host system as the installer sees it: external commands (behind [`Runner`], so tests can
//! record them), the effective user, and accounts read from a root's `/etc/passwd` and
//! `/etc/group` (read from the tree itself, so `--root` images are judged by their own files).

use crate::InstallError;
use std::path::Path;

/// What a finished command left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ran {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs external programs (`useradd`, `systemctl`, `icacls` …).
pub trait Runner {
    /// Runs `program` with `args` and waits; `Err` only when it could not be started.
    fn run(&self, program: &str, args: &[&str]) -> std::io::Result<Ran>;

    /// Runs and insists on success, turning failure into a message with the command's stderr.
    fn run_ok(&self, program: &str, args: &[&str]) -> Result<String, InstallError> {
        let command = std::iter::once(program).chain(args.iter().copied()).collect::<Vec<_>>().join(" ");
        match self.run(program, args) {
            Ok(ran) if ran.success => Ok(ran.stdout),
            Ok(ran) => {
                let detail = if ran.stderr.trim().is_empty() { ran.stdout } else { ran.stderr };
                Err(InstallError::Command { command, detail: detail.trim().to_string() })
            }
            Err(e) => Err(InstallError::Command { command, detail: format!("cannot start: {e}") }),
        }
    }
}

/// Runs programs for real.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemRunner;

impl Runner for SystemRunner {
    fn run(&self, program: &str, args: &[&str]) -> std::io::Result<Ran> {
        let out =
            std::process::Command::new(program).args(args).stdin(std::process::Stdio::null()).output()?;
        Ok(Ran {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// The effective user id of this process, where the platform tells it (`None` elsewhere).
/// Read from `/proc` rather than asked of libc, so this crate needs no unsafe code.
pub fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// A user as `/etc/passwd` of a root lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Account {
    pub uid: u32,
    pub gid: u32,
}

/// Looks `name` up in `<root>/etc/passwd`.
pub fn lookup_user(root: &Path, name: &str) -> Option<Account> {
    let text = std::fs::read_to_string(root.join("etc/passwd")).ok()?;
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 4 && f[0] == name)
            .then(|| Some(Account { uid: f[2].parse().ok()?, gid: f[3].parse().ok()? }))?
    })
}

/// A group as `<root>/etc/group` lists it: its id and its supplementary members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub gid: u32,
    pub members: Vec<String>,
}

pub fn lookup_group(root: &Path, name: &str) -> Option<Group> {
    let text = std::fs::read_to_string(root.join("etc/group")).ok()?;
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 || f[0] != name {
            return None;
        }
        let members = f[3].split(',').filter(|m| !m.is_empty()).map(str::to_string).collect();
        Some(Group { gid: f[2].parse().ok()?, members })
    })
}

/// The first login shell that refuses logins and exists in the root.
pub fn nologin_shell(root: &Path) -> &'static str {
    ["/usr/sbin/nologin", "/sbin/nologin"]
        .into_iter()
        .find(|s| root.join(s.trim_start_matches('/')).exists())
        .unwrap_or("/bin/false")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_are_read_from_the_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/bash\noutpost:x:998:997::/var/lib/outpost:/usr/sbin/nologin\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\ndialout:x:20:alice,outpost\noutpost:x:997:\n",
        )
        .unwrap();
        assert_eq!(lookup_user(dir.path(), "outpost"), Some(Account { uid: 998, gid: 997 }));
        assert_eq!(lookup_user(dir.path(), "nobody"), None);
        let dialout = lookup_group(dir.path(), "dialout").unwrap();
        assert_eq!(dialout.gid, 20);
        assert_eq!(dialout.members, ["alice", "outpost"]);
        assert!(lookup_group(dir.path(), "outpost").unwrap().members.is_empty());
    }

    #[test]
    fn effective_uid_is_known_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(effective_uid().is_some());
        }
    }
}
