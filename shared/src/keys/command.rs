//! The hub's gate for commands: [`CommandVerifier`] accepts a [`Signed<CommandEnvelope>`] only if
//! the pinned cloud key signed it (itself, or through the command key it certified, see
//! [`super::command_key`]), it is addressed to this machine, it is within its validity
//! window, and its id has never been accepted before, on this run or any earlier one.
//!
//! An id is recorded durably (appended and synced) *before* the command is handed out, so a
//! command runs at most once even if the hub crashes while running it. Ids are kept until their
//! command has expired (plus the clock-skew allowance), after which the expiry check alone
//! refuses a replay, so the log stays as small as the set of live commands.

use super::document::{CommandEnvelope, Signed};
use super::error::{CommandRefused, KeyError};
use super::machine::{MachineId, PublicKey};
use super::request::DEFAULT_MAX_SKEW;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// Longest validity (expiry minus issue time) a hub accepts by default. It bounds how long a
/// leaked envelope stays dangerous and how many ids the replay log holds.
pub const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

/// Verifies commands for one machine. Shareable (`Arc<CommandVerifier>`): the replay log sits
/// behind a mutex.
#[derive(Debug)]
pub struct CommandVerifier {
    cloud_key: PublicKey,
    own_id: MachineId,
    max_skew: Duration,
    max_lifetime: Duration,
    replay: Mutex<ReplayLog>,
    checked: super::command_key::CheckedCertificates,
}

impl CommandVerifier {
    /// `cloud_key` is the pinned cloud signing key; `replay_path` is the replay log file (made if
    /// missing, pruned of expired ids on open).
    pub fn open(
        cloud_key: PublicKey,
        own_id: MachineId,
        replay_path: &Path,
        now: DateTime<Utc>,
    ) -> Result<CommandVerifier, KeyError> {
        let replay = ReplayLog::open(replay_path, now)?;
        Ok(CommandVerifier {
            cloud_key,
            own_id,
            max_skew: DEFAULT_MAX_SKEW,
            max_lifetime: DEFAULT_MAX_LIFETIME,
            replay: Mutex::new(replay),
            checked: Default::default(),
        })
    }

    /// Clock difference tolerated between cloud and hub (default 5 minutes), applied to both the
    /// issue and the expiry time.
    pub fn with_max_skew(mut self, max_skew: Duration) -> Self {
        self.max_skew = max_skew;
        self
    }

    /// Longest validity accepted (default 24 hours); longer-lived envelopes are malformed.
    pub fn with_max_lifetime(mut self, max_lifetime: Duration) -> Self {
        self.max_lifetime = max_lifetime;
        self
    }

    /// Accepts the command (and records its id) or says why not. Checks in this order: the
    /// signature, the form, the target, the time window, then replay, so only authentic,
    /// current commands for this machine ever take room in the replay log.
    pub fn verify(
        &self,
        signed: &Signed<CommandEnvelope>,
        now: DateTime<Utc>,
    ) -> Result<CommandEnvelope, CommandRefused> {
        let command = super::command_key::verify_command(signed, &self.cloud_key, &self.checked).map_err(
            |e| match e {
                super::DocumentError::Malformed(m) => CommandRefused::Malformed(m),
                other => CommandRefused::Forged(other),
            },
        )?;
        command.validate()?;
        if command.target != self.own_id {
            return Err(CommandRefused::WrongTarget {
                id: command.id,
                target: command.target,
                own: self.own_id.clone(),
            });
        }
        let skew = chrono::Duration::from_std(self.max_skew).unwrap_or(chrono::Duration::MAX);
        if command.issued_at > now + skew {
            return Err(CommandRefused::IssuedInFuture { id: command.id, issued_at: command.issued_at, now });
        }
        let keep_until = command.expires_at.checked_add_signed(skew).unwrap_or(DateTime::<Utc>::MAX_UTC);
        if now > keep_until {
            return Err(CommandRefused::Expired { id: command.id, expires_at: command.expires_at, now });
        }
        let lifetime = (command.expires_at - command.issued_at).to_std().unwrap_or(Duration::MAX);
        if lifetime > self.max_lifetime {
            return Err(CommandRefused::Malformed(format!(
                "command {} is valid for {} s, longer than the {} s this machine accepts",
                command.id,
                lifetime.as_secs(),
                self.max_lifetime.as_secs()
            )));
        }
        let mut replay = self.replay.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match replay.record(&command.id, keep_until, now) {
            Ok(true) => Ok(command),
            Ok(false) => Err(CommandRefused::Replayed { id: command.id }),
            Err(KeyError::Io { path, source }) => Err(CommandRefused::Storage { path, source }),
            Err(other) => Err(CommandRefused::Storage {
                path: replay.path.clone(),
                source: std::io::Error::other(other),
            }),
        }
    }

    pub fn own_id(&self) -> &MachineId {
        &self.own_id
    }

    /// The pinned cloud key, for other documents the cloud signs (managed sensor documents).
    pub fn cloud_key(&self) -> &PublicKey {
        &self.cloud_key
    }
}

/// Ids of accepted commands with the time until which each must be remembered, in an
/// append-only text file: one `<unix seconds> <id>` line per command. Rewritten without the
/// expired lines when opened and whenever dead lines outnumber live ones.
#[derive(Debug)]
pub struct ReplayLog {
    path: PathBuf,
    file: std::fs::File,
    /// Id -> unix second until which it is kept.
    live: HashMap<String, i64>,
    /// Lines in the file, live or not.
    lines: usize,
    /// Line count at which the file is next rewritten: twice what the last rewrite kept, so
    /// rewriting costs amortised constant time per command.
    compact_at: usize,
}

/// Compaction waits until the file has at least this many lines, so a quiet hub never rewrites.
const COMPACT_MIN_LINES: usize = 1024;

impl ReplayLog {
    /// Opens (or creates) the log, dropping ids whose time has passed.
    pub fn open(path: &Path, now: DateTime<Utc>) -> Result<ReplayLog, KeyError> {
        let io = |source| KeyError::Io { path: path.to_path_buf(), source };
        let mut live = HashMap::new();
        match std::fs::File::open(path) {
            Ok(file) => {
                for line in std::io::BufReader::new(file).lines() {
                    let line = line.map_err(io)?;
                    // A torn last line is an append that never finished syncing, so its command
                    // was never accepted: skipping it is safe.
                    if let Some((until, id)) = line.split_once(' ') {
                        if let (Ok(until), false) = (until.parse::<i64>(), id.is_empty()) {
                            let entry = live.entry(id.to_string()).or_insert(until);
                            *entry = (*entry).max(until);
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(io)?;
                }
            }
            Err(e) => return Err(io(e)),
        }
        live.retain(|_, until| *until >= now.timestamp());
        let file = rewrite(path, &live)?;
        let lines = live.len();
        Ok(ReplayLog { path: path.to_path_buf(), file, lines, compact_at: compact_at(lines), live })
    }

    /// Remembers `id` until `keep_until`. Returns `false` if it was already known. The id is on
    /// disk (synced) when this returns `true`.
    pub fn record(
        &mut self,
        id: &str,
        keep_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, KeyError> {
        if self.live.get(id).is_some_and(|until| *until >= now.timestamp()) {
            return Ok(false);
        }
        if id.is_empty() || id.contains(['\n', '\r', ' ']) {
            return Err(KeyError::Io {
                path: self.path.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "id with whitespace"),
            });
        }
        let io = |source| KeyError::Io { path: self.path.clone(), source };
        let until = keep_until.timestamp();
        self.file.write_all(format!("{until} {id}\n").as_bytes()).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.live.insert(id.to_string(), until);
        self.lines += 1;
        if self.lines >= self.compact_at {
            self.live.retain(|_, until| *until >= now.timestamp());
            self.file = rewrite(&self.path, &self.live)?;
            self.lines = self.live.len();
            self.compact_at = compact_at(self.lines);
        }
        Ok(true)
    }

    /// Ids currently remembered.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }
}

fn compact_at(live_lines: usize) -> usize {
    (2 * live_lines).max(COMPACT_MIN_LINES)
}

/// Replaces the log with exactly `live` (temporary file, sync, rename, sync directory) and
/// returns it opened for appending.
fn rewrite(path: &Path, live: &HashMap<String, i64>) -> Result<std::fs::File, KeyError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| KeyError::Io { path: p, source }
    };
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut text = String::new();
    for (id, until) in live {
        text.push_str(&format!("{until} {id}\n"));
    }
    let mut file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    file.write_all(text.as_bytes()).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io(path))?;
    #[cfg(unix)]
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    std::fs::OpenOptions::new().append(true).open(path).map_err(io(path))
}
