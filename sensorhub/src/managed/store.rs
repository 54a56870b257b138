//! The applied document on disk (`managed-sensors.json` in the data directory): the signed
//! document exactly as the cloud sent it, so it is verified again on every start.

use outpost_shared::keys::Signed;
use outpost_shared::managed::SensorDocument;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

pub const MANAGED_FILE: &str = "managed-sensors.json";

/// A document holds at most `MAX_SENSORS` sensors of a few KiB each (sealed passwords included):
/// a bigger file is not one the hub wrote.
const MAX_FILE: u64 = 8 << 20;

pub fn path(dir: &Path) -> PathBuf {
    dir.join(MANAGED_FILE)
}

/// Writes `signed` so that the file holds either the previous document or this one, whole, even
/// if the machine stops at any point: temp file, fsync, rename, fsync of the directory.
pub fn write(dir: &Path, signed: &Signed<SensorDocument>) -> std::io::Result<()> {
    let path = path(dir);
    let tmp = dir.join(format!("{MANAGED_FILE}.tmp"));
    let json = serde_json::to_vec_pretty(signed).map_err(std::io::Error::other)?;
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&json)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, &path)?;
    // The rename itself is durable only once the directory is; Windows has no directory handle
    // to sync, and its rename is journaled by NTFS.
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// The stored document, None when there is none. An unreadable file is an error saying why; the
/// hub then runs its local sensors only.
pub fn read(dir: &Path) -> Result<Option<Signed<SensorDocument>>, String> {
    let path = path(dir);
    let f = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let mut bytes = Vec::new();
    f.take(MAX_FILE + 1).read_to_end(&mut bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(format!(
            "{} is larger than {MAX_FILE} bytes; it is not a document this hub wrote",
            path.display()
        ));
    }
    // serde_json skips unknown fields without checking their UTF-8 (see PITFALLS.md).
    std::str::from_utf8(&bytes).map_err(|e| format!("{} is not UTF-8: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map(Some).map_err(|e| format!("{} is damaged: {e}", path.display()))
}
