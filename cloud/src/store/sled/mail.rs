//! [`ReportRuns`] on sled: the `report_runs` tree, network → end of its last report
//! (milliseconds, be64). The outbox on sled is `outpost_shared::mail::Outbox`, its own database in
//! `data_dir/mail-outbox`.

use crate::error::CloudError;
use crate::store::mail::ReportRuns;
use chrono::{DateTime, TimeZone, Utc};
use outpost_shared::group_flush::GroupFlush;

#[derive(Clone)]
pub struct SledReportRuns {
    tree: sled::Tree,
    /// The database's one flusher: a flush of its own here would break the one-flush-in-flight
    /// rule that keeps sled from deadlocking.
    flusher: GroupFlush,
}

impl SledReportRuns {
    pub fn open(db: &sled::Db, flusher: GroupFlush) -> Result<SledReportRuns, CloudError> {
        Ok(SledReportRuns { tree: db.open_tree("report_runs")?, flusher })
    }
}

#[async_trait::async_trait]
impl ReportRuns for SledReportRuns {
    async fn last(&self, network: &str) -> Result<Option<DateTime<Utc>>, CloudError> {
        Ok(self.tree.get(network.as_bytes())?.and_then(|v| {
            let ms = i64::from_be_bytes(v.as_ref().try_into().ok()?);
            Utc.timestamp_millis_opt(ms).single()
        }))
    }

    async fn set(&self, network: &str, until: DateTime<Utc>) -> Result<(), CloudError> {
        self.tree.insert(network.as_bytes(), &until.timestamp_millis().to_be_bytes())?;
        self.flusher.flush().await?;
        Ok(())
    }
}
