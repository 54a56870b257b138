//! Command check: runs a Nagios-compatible plugin. Exit code 0..3 is the state, the first line
//! of output the message, and every performance value becomes a reading of its own.

use super::config::{CommandLine, SensorConfig};
use super::perfdata::parse_output;
use outpost_shared::model::{Sample, State};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Plugins print a line or a few; more is kept out of memory (the rest is read and dropped so
/// the plugin does not block on a full pipe).
const STDOUT_LIMIT: usize = 64 * 1024;
const STDERR_LIMIT: usize = 4 * 1024;

pub(crate) struct Command {
    prefix: String,
    line: CommandLine,
    timeout: Duration,
}

impl Command {
    pub fn new(cfg: &SensorConfig) -> Self {
        Command {
            prefix: cfg.id(),
            line: cfg.command.clone().unwrap_or(CommandLine::Argv(Vec::new())),
            timeout: cfg.timeout(),
        }
    }

    fn build(&self) -> Option<tokio::process::Command> {
        let mut cmd = match &self.line {
            CommandLine::Shell(s) => {
                #[cfg(windows)]
                let mut c = tokio::process::Command::new("cmd");
                #[cfg(windows)]
                c.arg("/C").arg(s);
                #[cfg(not(windows))]
                let mut c = tokio::process::Command::new("sh");
                #[cfg(not(windows))]
                c.arg("-c").arg(s);
                c
            }
            CommandLine::Argv(argv) => {
                let (program, args) = argv.split_first()?;
                let mut c = tokio::process::Command::new(program);
                c.args(args);
                c
            }
        };
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        // Its own process group, so a timeout can kill the plugin and everything it started.
        #[cfg(unix)]
        cmd.process_group(0);
        Some(cmd)
    }

    pub async fn sample(&mut self, out: &mut Vec<Sample>) {
        let key = self.prefix.clone();
        let unknown =
            |msg: String| Sample::new(key.clone(), "unknown".to_string(), State::Unknown).message(msg);
        let Some(mut cmd) = self.build() else {
            out.push(unknown("no command configured".into()));
            return;
        };
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                out.push(unknown(format!("cannot start the command: {e}")));
                return;
            }
        };
        let pid = child.id();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let run = tokio::time::timeout(self.timeout, async {
            tokio::join!(read_capped(stdout, STDOUT_LIMIT), read_capped(stderr, STDERR_LIMIT), child.wait())
        })
        .await;
        let (stdout, stderr, status) = match run {
            Ok(r) => r,
            Err(_) => {
                kill_group(pid);
                let _ = child.start_kill();
                // Reap it so no zombie is left; a process that ignores SIGKILL does not exist,
                // but do not hang on one either.
                let _ = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
                out.push(Sample::new(key.clone(), "timeout".to_string(), State::Unknown).message(format!(
                    "timed out after {} and was killed",
                    humantime::format_duration(self.timeout)
                )));
                return;
            }
        };
        let status = match status {
            Ok(s) => s,
            Err(e) => {
                out.push(unknown(format!("lost track of the command: {e}")));
                return;
            }
        };
        let Some(code) = status.code() else {
            out.push(unknown(format!("ended by a signal ({status})")));
            return;
        };
        let parsed = parse_output(&String::from_utf8_lossy(&stdout));
        let message = if !parsed.text.is_empty() {
            parsed.text.clone()
        } else {
            // Nothing on stdout: the shell's "not found" or the plugin's complaint is on stderr.
            let err = String::from_utf8_lossy(&stderr);
            let first = err.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
            if first.is_empty() {
                format!("exit code {code}, no output")
            } else {
                first.to_string()
            }
        };
        out.push(Sample::new(key.clone(), code as f64, State::from_nagios_exit(code)).message(message));
        for p in parsed.perf {
            // Labels become key segments; spaces would make keys awkward in URLs and queries.
            let label: String = p.label.chars().map(|c| if c.is_whitespace() { '_' } else { c }).collect();
            let state = p.state();
            let sample = match p.value {
                Some(v) => Sample::new(format!("{key}.{label}"), v, state),
                None => Sample::new(format!("{key}.{label}"), "U".to_string(), state)
                    .message("the plugin could not determine this value"),
            };
            out.push(if p.uom.is_empty() { sample } else { sample.unit(&p.uom) });
        }
    }
}

/// Reads a pipe to its end, keeping at most `limit` bytes.
async fn read_capped(pipe: Option<impl AsyncRead + Unpin>, limit: usize) -> Vec<u8> {
    let Some(mut pipe) = pipe else { return Vec::new() };
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = limit.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    kept
}

#[cfg(unix)]
fn kill_group(pid: Option<u32>) {
    // The child leads its own group (process_group(0)), so its id is the group's id. Never
    // signal group 0 or 1: that would reach the hub itself or every process on the machine.
    let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()).filter(|p| *p > 1) else { return };
    if let Some(pid) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

#[cfg(not(unix))]
fn kill_group(_pid: Option<u32>) {
    // Windows: `start_kill` (TerminateProcess) ends the plugin itself; what it started lives on.
}
