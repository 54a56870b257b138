//! What a machine runs of its managed sensors, read from the results of the commands that carried
//! its versions ([`ApplyReport`]), and the background task that delivers the latest version again
//! to a machine that missed it (offline past the command's expiry).

use super::ManagedSensors;
use crate::error::CloudError;
use chrono::Utc;
use outpost_shared::managed::ApplyReport;
use serde::Serialize;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the cloud looks for machines behind their latest version.
pub const REDELIVER_EVERY: Duration = Duration::from_secs(15);

/// Deliveries looked at for a machine's status.
const LOOKED_AT: usize = 20;

#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Status {
    /// The newest version saved for the machine; none before the first.
    pub version: Option<u64>,
    /// The version the machine said it runs, from its newest answer.
    pub running: Option<u64>,
    /// `none` (nothing managed), `applied`, `pending` (on its way, or waiting for the machine),
    /// `refused` (the machine refused the newest version; `problems` says why).
    pub state: &'static str,
    /// What the dashboard shows: "applied v7", "pending v8", "refused v8: …".
    pub text: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// The newest command carrying the newest version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Whether a command carrying the newest version can still reach the machine.
    #[serde(skip)]
    pub in_flight: bool,
}

/// A machine's answer to one apply command: the report, or the refusal of the command itself
/// (bad signature, expired…), which carries `{"error": …}` instead.
fn report_of(output: &serde_json::Value) -> (Option<ApplyReport>, Vec<String>) {
    match serde_json::from_value::<ApplyReport>(output.clone()) {
        Ok(r) => {
            let p = r.problems.clone();
            (Some(r), p)
        }
        Err(_) => {
            let why = output.get("error").and_then(|e| e.as_str()).unwrap_or("the machine gave no reason");
            (None, vec![why.to_string()])
        }
    }
}

impl ManagedSensors {
    /// The machine's status, from the newest deliveries and their commands' results.
    pub async fn status(&self, machine: &str) -> Result<Status, CloudError> {
        let Some(latest) = self.store.latest_version(machine).await? else {
            return Ok(Status { state: "none", text: "no managed sensors".into(), ..Default::default() });
        };
        let v = latest.version;
        let now = Utc::now();
        let mut st = Status { version: Some(v), ..Default::default() };
        let mut newest_answer_for_v: Option<(&'static str, Vec<String>)> = None;
        for d in self.store.deliveries(machine, LOOKED_AT).await? {
            let Some(rec) = self.commands.get(&d.command).await? else { continue };
            if d.version == v && st.command.is_none() {
                st.command = Some(rec.id.clone());
            }
            match rec.effective_status(now) {
                "pending" | "delivered" => st.in_flight |= d.version == v,
                "expired" => {}
                status => {
                    let (report, problems) =
                        report_of(rec.result.as_ref().unwrap_or(&serde_json::Value::Null));
                    if st.running.is_none() {
                        st.running = report.as_ref().and_then(|r| r.running);
                    }
                    if d.version == v && newest_answer_for_v.is_none() {
                        let state =
                            if status == "done" && problems.is_empty() { "applied" } else { "refused" };
                        newest_answer_for_v = Some((state, problems));
                    }
                }
            }
        }
        match newest_answer_for_v {
            _ if st.running.is_some_and(|r| r >= v) => {
                st.state = "applied";
                st.text = format!("applied v{v}");
            }
            Some(("refused", problems)) if !st.in_flight => {
                st.state = "refused";
                st.text = format!("refused v{v}: {}", problems.join("; "));
                st.problems = problems;
            }
            _ => {
                st.state = "pending";
                st.text = match st.running {
                    Some(r) => format!("pending v{v} (runs v{r})"),
                    None => format!("pending v{v}"),
                };
            }
        }
        Ok(st)
    }

    /// Delivers the newest version again to every machine that has not applied it and has no
    /// command carrying it that can still reach it (offline past its expiry, or the command
    /// could not be made). A refused version is not sent again: the operator's change fixes it.
    pub async fn redeliver_due(&self) -> Result<usize, CloudError> {
        let mut sent = 0;
        for machine in self.store.managed_machines().await? {
            if self.trust.machine_key(&machine).await?.is_none() {
                continue; // revoked: nothing goes to it any more
            }
            let st = self.status(&machine).await?;
            if st.state != "pending" || st.in_flight {
                continue;
            }
            let Some(latest) = self.store.latest_version(&machine).await? else { continue };
            tracing::info!(machine = %machine, version = latest.version, "delivering the newest sensor document again");
            self.deliver(&latest, "cloud:redelivery").await?;
            sent += 1;
        }
        Ok(sent)
    }
}

/// Runs [`ManagedSensors::redeliver_due`] every [`REDELIVER_EVERY`] until `shutdown`.
/// A once-only job: with several cloud nodes only the one holding the jobs lock redelivers, so a
/// machine is not sent one document twice by two nodes.
pub fn spawn_redelivery(
    service: ManagedSensors,
    leader: crate::nodes::Leader,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(REDELIVER_EVERY);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if !leader.holds() {
                continue;
            }
            if let Err(e) = service.redeliver_due().await {
                tracing::warn!(error = %e, "redelivery of sensor documents failed; retried next round");
            }
        }
    })
}
