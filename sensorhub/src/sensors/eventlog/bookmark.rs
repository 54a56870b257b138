//! The durable bookmark of an `eventlog` sensor: per log, the number of the last record already
//! reported. It lives in the hub's data directory and is written (temp file, sync, rename) only
//! after the readings carrying those events are durable in the hub's buffer, so a restart neither
//! reports an event twice (after a clean stop) nor skips one (ever; after a crash between the
//! buffer's flush and this write, the events of that one sample are reported again).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A bookmark file bigger than this is not ours (one entry per log is a few dozen bytes).
const MAX_FILE: u64 = 64 * 1024;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    /// Log name → last record number reported.
    logs: BTreeMap<String, u64>,
}

pub(crate) struct Bookmarks {
    /// None: kept in memory only (dry runs and tests without a data directory).
    path: Option<PathBuf>,
    /// What the file holds now.
    pub durable: BTreeMap<String, u64>,
}

impl Bookmarks {
    /// Loads the bookmark at `path`. A missing file is a first start; an unreadable one is moved
    /// aside (kept for a person to look at) and the sensor starts afresh, with the returned note
    /// saying so.
    pub fn load(path: Option<PathBuf>) -> (Bookmarks, Option<String>) {
        let Some(p) = path else { return (Bookmarks { path: None, durable: BTreeMap::new() }, None) };
        let fresh = |note| (Bookmarks { path: Some(p.clone()), durable: BTreeMap::new() }, note);
        let problem = match read(&p) {
            Ok(None) => return fresh(None),
            Ok(Some(logs)) => return (Bookmarks { path: Some(p), durable: logs }, None),
            Err(why) => why,
        };
        let aside = p.with_extension("json.unreadable");
        let moved = match std::fs::rename(&p, &aside) {
            Ok(()) => format!("moved to {}", aside.display()),
            Err(e) => format!("and cannot be moved aside: {e}"),
        };
        tracing::error!(path = %p.display(), %problem, "the event log bookmark is unreadable; reading from the newest events on");
        fresh(Some(format!(
            "the bookmark {} was unreadable ({problem}; {moved}): events written while it was lost are not reported",
            p.display()
        )))
    }

    /// Makes `logs` the durable bookmark.
    pub fn save(&mut self, logs: &BTreeMap<String, u64>) -> Result<(), String> {
        if let Some(path) = &self.path {
            write(path, logs).map_err(|e| format!("cannot write the bookmark {}: {e}", path.display()))?;
        }
        self.durable = logs.clone();
        Ok(())
    }
}

fn read(path: &Path) -> Result<Option<BTreeMap<String, u64>>, String> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    if meta.len() > MAX_FILE {
        return Err(format!("{} bytes, more than a bookmark ever holds", meta.len()));
    }
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    // serde_json skips invalid UTF-8 in ignored fields; there are none here, but check first anyway.
    let text = std::str::from_utf8(&bytes).map_err(|e| format!("not UTF-8: {e}"))?;
    let file: File = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if file.logs.values().any(|&n| n > u64::from(u32::MAX)) {
        return Err("a record number beyond what an event log counts to".into());
    }
    Ok(Some(file.logs))
}

fn write(path: &Path, logs: &BTreeMap<String, u64>) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec(&File { logs: logs.clone() }).expect("a map of numbers serialises");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
    }
    // Rename replaces the old file in one step (also on Windows, where std uses MoveFileEx with
    // REPLACE_EXISTING): a crash leaves the old bookmark or the new one, never half of one.
    std::fs::rename(&tmp, path)
}
