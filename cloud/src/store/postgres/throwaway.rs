//! A private PostgreSQL server for tests and benches: `initdb` into a temp dir, listening on a
//! unix socket only (no TCP port, nothing reachable from outside), run as an unprivileged user
//! when the caller is root (`initdb` refuses root). It never skips: when no server binaries can
//! be found or started, [`Throwaway::start`] fails saying what to install.
//!
//! The binaries are looked up in `OUTPOST_PG_BIN` if set, else the newest
//! `/usr/lib/postgresql/*/bin` (Debian's `postgresql` package), else `PATH`. The server is
//! started through a small shell that stops it when this process's end of its stdin closes, so
//! a test that panics or is killed leaves no server behind.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The port only names the socket file: the server listens on no TCP port.
const PORT: u16 = 5432;
/// The superuser `initdb` makes, and what tests connect as.
pub const USER: &str = "outpost";

/// A running (or stopped) throwaway server.
pub struct Throwaway {
    bin: PathBuf,
    /// Holds `data/` and the socket; short, for the ~100 byte socket path limit.
    dir: PathBuf,
    /// The user the server runs as, when this process is root.
    run_as: Option<(u32, u32)>,
    server: Option<Child>,
}

fn fail(what: impl std::fmt::Display) -> String {
    format!(
        "cannot start a throwaway PostgreSQL: {what}. Install Debian's `postgresql` package \
         (apt-get install postgresql) or set OUTPOST_PG_BIN to the directory holding initdb and postgres"
    )
}

/// The directory with `initdb` and `postgres`.
pub fn bin_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("OUTPOST_PG_BIN") {
        let dir = PathBuf::from(dir);
        return if dir.join("initdb").exists() {
            Ok(dir)
        } else {
            Err(fail(format!("OUTPOST_PG_BIN={} holds no initdb", dir.display())))
        };
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    if let Some((_, bin)) = found.pop() {
        return Ok(bin);
    }
    std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).find(|d| d.join("initdb").exists()))
        .ok_or_else(|| fail("no initdb in /usr/lib/postgresql/*/bin nor on PATH"))
}

/// uid and gid of `nobody`, to run the server as when we are root.
fn unprivileged() -> Result<Option<(u32, u32)>, String> {
    let me = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap_or(0);
    if me != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(|e| fail(format!("/etc/passwd: {e}")))?;
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&"nobody") && f.len() > 3)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
        })
        .flatten()
        .map(Some)
        .ok_or_else(|| fail("running as root, and there is no `nobody` user to run the server as"))
}

impl Throwaway {
    /// Makes a fresh cluster and starts it; ready to accept connections on return.
    pub fn start() -> Result<Throwaway, String> {
        let bin = bin_dir()?;
        let run_as = unprivileged()?;
        let dir = make_dir(run_as)?;
        let mut t = Throwaway { bin, dir, run_as, server: None };
        let out = t
            .command("initdb")
            .args(["-A", "trust", "-U", USER, "-E", "UTF8", "--locale=C", "-N", "-D"])
            .arg(t.dir.join("data"))
            .stdout(Stdio::null())
            .output()
            .map_err(|e| fail(format!("initdb: {e}")))?;
        if !out.status.success() {
            return Err(fail(format!("initdb failed: {}", String::from_utf8_lossy(&out.stderr).trim())));
        }
        t.resume()?;
        Ok(t)
    }

    fn command(&self, tool: &str) -> Command {
        let mut c = Command::new(self.bin.join(tool));
        if let Some((uid, gid)) = self.run_as {
            c.uid(uid).gid(gid);
        }
        c.env_remove("PGDATA");
        c
    }

    /// The socket directory (libpq's `host` for a unix socket).
    /// Where the server keeps the databases' files (tables and write-ahead log): what a test
    /// searches to show a secret was never written in clear.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// A connection string for database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("host={} port={PORT} user={USER} dbname={db}", self.dir.display())
    }

    /// Starts the server (again, after [`Throwaway::stop`]) and waits until it takes connections.
    pub fn resume(&mut self) -> Result<(), String> {
        if self.server.is_some() {
            return Ok(());
        }
        let data = self.dir.join("data");
        // The shell waits on its stdin: a line from [`Throwaway::halt`] just ends it (the server
        // is already stopped); end of file (this process exited, panicked or was killed) stops
        // the server and removes its directory, so nothing outlives the test.
        let script = r#"
            "$0" -D "$1" -k "$2" -p "$3" -c listen_addresses= -c fsync=off -c max_connections=200 &
            pid=$!
            if read _line; then
                kill -INT $pid 2>/dev/null; wait $pid
            else
                kill -INT $pid 2>/dev/null; wait $pid; rm -rf "$2"
            fi
        "#;
        let mut cmd = Command::new("/bin/sh");
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        let child = cmd
            .args(["-c", script])
            .arg(self.bin.join("postgres"))
            .arg(&data)
            .arg(&self.dir)
            .arg(PORT.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(self.dir.join("log"))
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            )
            .spawn()
            .map_err(|e| fail(format!("postgres: {e}")))?;
        self.server = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = self
                .command("pg_isready")
                .args(["-q", "-h"])
                .arg(&self.dir)
                .args(["-p", &PORT.to_string(), "-U", USER, "-d", "postgres"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.server.as_mut().map(|c| c.try_wait()) {
                self.server = None;
                let log = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
                return Err(fail(format!("the server exited ({status}): {}", log.trim())));
            }
            if Instant::now() > deadline {
                return Err(fail("the server did not accept connections within 60 s"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server as a crash would (`SIGQUIT`: no checkpoint; the next start recovers
    /// from the write-ahead log) and waits until it is gone.
    pub fn crash(&mut self) {
        self.halt("immediate");
    }

    /// Stops the server cleanly and waits until it is gone.
    pub fn stop(&mut self) {
        self.halt("fast");
    }

    fn halt(&mut self, mode: &str) {
        let _ = self
            .command("pg_ctl")
            .args(["stop", "-w", "-m", mode, "-D"])
            .arg(self.dir.join("data"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(mut child) = self.server.take() {
            if let Some(stdin) = child.stdin.as_mut() {
                let _ = stdin.write_all(b"\n");
            }
            let _ = child.wait();
        }
    }
}

impl Drop for Throwaway {
    fn drop(&mut self) {
        self.halt("immediate");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fresh directory under `/tmp` (short: the socket path must fit ~100 bytes) that the
/// server's user owns.
fn make_dir(run_as: Option<(u32, u32)>) -> Result<PathBuf, String> {
    let base = if Path::new("/tmp").is_dir() { PathBuf::from("/tmp") } else { std::env::temp_dir() };
    for _ in 0..100 {
        let mut raw = [0u8; 6];
        getrandom::fill(&mut raw).map_err(|e| fail(format!("randomness: {e}")))?;
        let dir = base.join(format!("opg{}", hex::encode(raw)));
        match std::fs::create_dir(&dir) {
            Ok(()) => {
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                    .map_err(|e| fail(format!("{}: {e}", dir.display())))?;
                if let Some((uid, gid)) = run_as {
                    std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                        .map_err(|e| fail(format!("chown {}: {e}", dir.display())))?;
                }
                return Ok(dir);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(fail(format!("{}: {e}", dir.display()))),
        }
    }
    Err(fail("no free temp dir name"))
}

/// Creates database `name` on the server (connecting to `postgres`), retrying while the server
/// is still coming up.
pub async fn create_database(server: &Throwaway, name: &str) -> Result<String, String> {
    let (client, conn) = tokio_postgres::connect(&server.url("postgres"), tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("connect to the throwaway server: {e}"))?;
    let task = tokio::spawn(conn);
    // A name we made, not user input; quoted all the same.
    client
        .batch_execute(&format!("CREATE DATABASE \"{}\"", name.replace('"', "")))
        .await
        .map_err(|e| format!("create database {name}: {e}"))?;
    drop(client);
    let _ = task.await;
    Ok(server.url(name))
}
