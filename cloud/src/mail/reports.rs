//! The periodic status report: one mail per network every `mail.report_every`, counted from
//! `mail.report_at`, to the network's `mail.report_to` (else `mail.to`), covering the period that
//! just ended (machines, their sensors' latest states, and the period's raw readings as CSV).
//!
//! Each network's last reported period end is remembered ([`crate::store::mail::ReportRuns`]), written after
//! the mail is durable in the outbox: a restart never skips a report that was due while the cloud
//! was down (the most recent missed period is sent at start), and a crash between the two writes
//! sends one report twice rather than none.

use crate::error::CloudError;
use crate::store::mail::{Outbox, Reports};
use crate::store::Store;
use crate::trust::Trust;
use chrono::{DateTime, Utc};
use outpost_shared::mail::report::{self, MachineStatus, ReportReading, SensorStatus, MAX_CSV_ROWS};
use outpost_shared::mail::{Mail, MailConfig, MailQueue};
use tokio_util::sync::CancellationToken;

/// The report of `network` for `[from, until)`, or `None` when no enrolled machine belongs to it.
pub async fn report_for(
    store: &Store,
    trust: &Trust,
    network: &str,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
    to: Vec<String>,
) -> Result<Option<Mail>, CloudError> {
    let networks = trust.networks().await?;
    let Some(keys) = networks.get(network) else { return Ok(None) };
    let mut machines = Vec::new();
    let mut readings = Vec::new();
    for k in keys {
        let info = store.machine(&k.machine_id).await?;
        let hostname = info.as_ref().map(|m| m.hostname.clone()).unwrap_or_else(|| k.hostname.clone());
        let sensors = store
            .sensors(&k.machine_id)
            .await?
            .into_iter()
            .map(|l| SensorStatus {
                sensor: l.sensor,
                state: l.state,
                value: Some(l.value),
                unit: l.unit,
                ts: l.ts,
            })
            .collect();
        // One row more than fits, so the report can say it was cut.
        let room = (MAX_CSV_ROWS + 1).saturating_sub(readings.len());
        for r in store.period(&k.machine_id, from, until, room).await? {
            readings.push(ReportReading {
                machine_id: k.machine_id.clone(),
                hostname: hostname.clone(),
                sensor: r.sensor,
                ts: r.ts,
                value: r.value,
                unit: r.unit,
                state: r.state,
            });
        }
        machines.push(MachineStatus {
            machine_id: k.machine_id.clone(),
            hostname,
            last_seen: info.map(|m| m.last_seen),
            sensors,
        });
    }
    machines.sort_by(|a, b| (&a.hostname, &a.machine_id).cmp(&(&b.hostname, &b.machine_id)));
    Ok(Some(report::build(network, from, until, &machines, &readings, to)))
}

/// Runs the schedule until `shutdown`, while this node is the `leader` (on a shared database
/// one node mails the reports). A node that takes over catches up on the most recent period
/// within a few seconds; networks already reported for it are skipped.
pub(super) fn spawn(
    store: Store,
    trust: Trust,
    mail: MailConfig,
    outbox: Outbox,
    runs: Reports,
    leader: crate::nodes::Leader,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Some(at) = mail.daily_report_at() else { return };
        let every = chrono::Duration::from_std(mail.report_every).unwrap_or(chrono::Duration::days(1));
        // The most recent period end already passed: sent now if it was missed while down.
        let mut due = report::next_run(Utc::now(), at, mail.report_every) - every;
        let mut catch_up = true;
        loop {
            if leader.holds() {
                if let Err(e) = run(&store, &trust, &mail, &outbox, &runs, due, every, catch_up).await {
                    tracing::error!(error = %e, "status report failed; it is tried again at the next period");
                }
            }
            let next = report::next_run(Utc::now().max(due), at, mail.report_every);
            let until_next = (next - Utc::now()).to_std().unwrap_or_default();
            // Not the leader: look again soon, in case this node takes over.
            let wait = if leader.holds() { until_next } else { until_next.min(crate::nodes::TAKE_OVER) };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            if Utc::now() >= next {
                due = next;
                catch_up = false;
            } else {
                catch_up = true;
            }
        }
    })
}

/// Queues the report for the period ending at `until` for every network that has not had it.
/// With `catch_up`, only networks that had an earlier report get one (a new cloud, or a network
/// enrolled since, waits for the next period rather than mailing at start).
#[allow(clippy::too_many_arguments)]
async fn run(
    store: &Store,
    trust: &Trust,
    mail: &MailConfig,
    outbox: &Outbox,
    runs: &Reports,
    until: DateTime<Utc>,
    every: chrono::Duration,
    catch_up: bool,
) -> Result<(), CloudError> {
    let networks: Vec<String> = trust.networks().await?.into_keys().collect();
    for network in networks {
        match runs.last(&network).await? {
            Some(last) if last >= until => continue,
            None if catch_up => continue,
            _ => {}
        }
        let to = mail.report_recipients(&network);
        let Some(report) = report_for(store, trust, &network, until - every, until, to).await? else {
            continue;
        };
        outbox.enqueue(&report).await.map_err(|e| CloudError::Mail(e.to_string()))?;
        runs.set(&network, until).await?;
        tracing::info!(%network, %until, subject = %report.subject, "status report queued");
    }
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use crate::store::testing::Keep;
    use crate::store::Engines;
    use outpost_shared::model::{Batch, Reading, Role, Sample, State};
    use std::time::Duration;

    crate::both_engines!(a_report_is_queued_once_per_network_and_period);

    async fn a_report_is_queued_once_per_network_and_period(e: Engines, k: &Keep) {
        let trust = Trust::open(k.dir.path(), e.trust.clone()).unwrap();
        let now = Utc::now();
        let key = outpost_shared::keys::KeyPair::generate().unwrap();
        let (token, _) =
            trust.new_token("plant", Role::Sensorhub, Duration::from_secs(60), "", "t", now).await.unwrap();
        let req = crate::trust::EnrollRequest {
            token: Some(token.encode()),
            sealed_token: None,
            public_key: key.public().to_pem(),
            role: Role::Sensorhub,
            hostname: "pump-3".into(),
            lan_cert: None,
        };
        trust.enroll(&req, now).await.unwrap();
        let id = key.machine_id().to_string();
        let taken = now - chrono::Duration::minutes(10);
        let batch = Batch {
            machine_id: id.clone(),
            hostname: "pump-3".into(),
            role: Role::Sensorhub,
            uplink: "direct".into(),
            buffered: 0,
            dropped: 0,
            version: "t".into(),
            quarantined: 0,
            clock_problem: None,
            features: Vec::new(),
            readings: vec![Reading {
                machine_id: id.clone(),
                seq: 1,
                sample: Sample::new("cpu.total", 97.5, State::Error).at(taken),
            }],
        };
        e.readings.ingest(batch, now).await.unwrap();
        e.readings.commit().await.unwrap();

        let mut mail = MailConfig::new("localhost", 587, "o@example.org");
        mail.to = vec!["ops@example.org".into()];
        let outbox = e.outbox.clone().unwrap();
        let every = chrono::Duration::hours(1);
        // Period ends fall on whole seconds (the schedule's anchor), as here.
        let until = DateTime::from_timestamp(now.timestamp(), 0).unwrap();
        run(&e.readings, &trust, &mail, &outbox, &e.reports, until, every, false).await.unwrap();
        assert_eq!(e.reports.last("plant").await.unwrap(), Some(until));
        // The same period again (another node, a restart): not queued twice.
        run(&e.readings, &trust, &mail, &outbox, &e.reports, until, every, true).await.unwrap();
        use outpost_shared::mail::MailQueue;
        assert_eq!(outbox.waiting().await, 1);
        let queued = outbox.first().await.unwrap().unwrap().mail;
        assert_eq!(queued.to, vec!["ops@example.org".to_string()]);
        let csv = String::from_utf8(queued.attachments[0].data.clone()).unwrap();
        assert!(csv.contains(&id) && csv.contains("cpu.total") && csv.contains("97.5"), "{csv}");
    }
}
