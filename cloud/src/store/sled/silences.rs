//! [`SilenceStore`] on the embedded database. Trees:
//! - `acks`: `machine \0 sensor` → json(Ack).
//! - `maintenance`: `id` → json(Window).

use crate::error::CloudError;
use crate::store::silences::{Ack, SilenceStore, Window};
use chrono::{DateTime, Utc};
use outpost_shared::group_flush::GroupFlush;

#[derive(Clone)]
pub struct SledSilences {
    acks: sled::Tree,
    windows: sled::Tree,
    /// The database's one flusher (never a second flush beside it: sled #1308).
    flusher: GroupFlush,
}

fn ack_key(machine: &str, sensor: &str) -> Vec<u8> {
    let mut k = machine.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(sensor.as_bytes());
    k
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, CloudError> {
    serde_json::from_slice(bytes).map_err(|e| CloudError::Corrupt(format!("{what}: {e}")))
}

fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("silences serialise")
}

impl SledSilences {
    pub fn open(db: &sled::Db, flusher: GroupFlush) -> Result<SledSilences, CloudError> {
        Ok(SledSilences { acks: db.open_tree("acks")?, windows: db.open_tree("maintenance")?, flusher })
    }
}

#[async_trait::async_trait]
impl SilenceStore for SledSilences {
    async fn acks(&self) -> Result<Vec<Ack>, CloudError> {
        self.acks.iter().values().map(|v| parse("acknowledgement", &v?)).collect()
    }

    async fn put_ack(&self, ack: &Ack) -> Result<(), CloudError> {
        self.acks.insert(ack_key(&ack.machine, &ack.sensor), json(ack))?;
        self.flusher.flush().await?;
        Ok(())
    }

    async fn remove_ack(
        &self,
        machine: &str,
        sensor: &str,
        before: Option<DateTime<Utc>>,
    ) -> Result<Option<Ack>, CloudError> {
        let key = ack_key(machine, sensor);
        loop {
            let Some(old) = self.acks.get(&key)? else { return Ok(None) };
            let ack: Ack = parse("acknowledgement", &old)?;
            if before.is_some_and(|b| ack.reading_ts >= b) {
                return Ok(None);
            }
            // Only the one read: a newer acknowledgement made meanwhile stays.
            if self.acks.compare_and_swap(&key, Some(old), None::<&[u8]>)?.is_ok() {
                self.flusher.flush().await?;
                return Ok(Some(ack));
            }
        }
    }

    async fn windows(&self) -> Result<Vec<Window>, CloudError> {
        self.windows.iter().values().map(|v| parse("maintenance window", &v?)).collect()
    }

    async fn put_window(&self, window: &Window) -> Result<(), CloudError> {
        self.windows.insert(window.id.as_bytes(), json(window))?;
        self.flusher.flush().await?;
        Ok(())
    }

    async fn remove_window(&self, id: &str) -> Result<Option<Window>, CloudError> {
        let old = self.windows.remove(id.as_bytes())?;
        self.flusher.flush().await?;
        old.map(|v| parse("maintenance window", &v)).transpose()
    }
}
