//! Readings in: a hub's batch (`/v1/batches`) and a connector's forward of many hubs' batches
//! (`/v1/forward`). Every path into storage goes through [`store_batch`] and [`commit`].

use super::admission::{read_signed, Intake};
use super::auth::{check_machine, connector_machine};
use super::LiveEvent;
use super::{err, internal, AppState};
use crate::trust::Refusal;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use outpost_shared::keys::SignedHeaders;
use outpost_shared::model::{
    ApiError, Batch, BatchAck, BatchProblem, ForwardAck, ForwardEnvelope, ForwardResult, RefusalCode,
    TimeWindow, Verdict,
};
use std::net::SocketAddr;

/// Most per-hub quarantine counts taken from one forward (a connector reports the hubs it has
/// put data aside for; more than this is not a real network).
const MAX_QUARANTINE_COUNTS: usize = 10_000;

/// A batch the cloud did not store: the status it answers with and the verdict body
/// (custody rule: only [`Verdict::Refused`] lets the sender put the data aside).
#[derive(Debug)]
pub(super) struct NotStored {
    status: StatusCode,
    body: ApiError,
}

impl NotStored {
    fn new(status: StatusCode, verdict: Verdict, code: RefusalCode, msg: impl Into<String>) -> NotStored {
        NotStored { status, body: ApiError::verdict(msg, verdict, code) }
    }

    fn refused(status: StatusCode, code: RefusalCode, msg: impl Into<String>) -> NotStored {
        Self::new(status, Verdict::Refused, code, msg)
    }

    /// The storage could not take it: keep it and send it again.
    fn storage(e: impl std::fmt::Display) -> NotStored {
        tracing::error!(error = %e, "cannot store a batch; the sender keeps it and retries");
        Self::new(StatusCode::SERVICE_UNAVAILABLE, Verdict::RetryLater, RefusalCode::Storage, e.to_string())
    }

    fn into_response(self) -> Response {
        let mut r = (self.status, Json(self.body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static(STORAGE_RETRY_AFTER),
            );
        }
        r
    }

    fn into_result(self) -> ForwardResult {
        ForwardResult::Refused {
            status: self.status.as_u16(),
            error: self.body.error,
            verdict: self.body.verdict,
            code: self.body.code,
            accept: self.body.accept,
        }
    }
}

/// Seconds a sender is told to wait after a storage error.
const STORAGE_RETRY_AFTER: &str = "5";

/// Parses, validates, stores and flushes one hub batch. The admission slot is given back once
/// the batch is written: what is left, waiting for the flush, holds neither the body nor CPU.
async fn take_batch(st: &AppState, intake: Intake, signer: &str, peer: &str) -> Result<BatchAck, NotStored> {
    let (json, slot) = intake.into_parts();
    let outcome = store_batch(st, json, signer, peer).await?;
    let _committing = slot.written().await;
    let ack = BatchAck { stored: outcome.stored, duplicates: outcome.duplicates };
    commit(st, vec![outcome]).await.map_err(NotStored::storage)?;
    Ok(ack)
}

/// The reading timestamps the cloud takes now: up to `ingest.max_future` ahead of its clock,
/// back to `retention.raw` (older ones would be folded away at once).
fn accepted_window(st: &AppState) -> TimeWindow {
    TimeWindow::around(Utc::now(), st.config.ingest.max_future, st.config.retention.raw)
}

/// Batches up to this size are parsed on the async worker; larger ones (about 1 ms of CPU for
/// 250 KB) on a blocking thread.
const PARSE_INLINE_MAX: usize = 64 * 1024;

fn parse_batch(json: &[u8]) -> Result<Batch, NotStored> {
    // serde_json does not check UTF-8 inside the strings it skips (unknown fields): a batch that
    // parses can still hold bytes no later reader takes.
    if let Err(e) = std::str::from_utf8(json) {
        return Err(NotStored::refused(
            StatusCode::BAD_REQUEST,
            RefusalCode::Malformed,
            format!("body is not UTF-8: {e}"),
        ));
    }
    serde_json::from_slice(json).map_err(|e| {
        NotStored::refused(
            StatusCode::BAD_REQUEST,
            RefusalCode::Malformed,
            format!("body is not a valid batch: {e}"),
        )
    })
}

/// Parses, validates and stores one hub batch, not yet durable: the caller must [`commit`] before
/// it acknowledges. Every path into storage goes through here.
async fn store_batch(
    st: &AppState,
    json: Vec<u8>,
    signer: &str,
    peer: &str,
) -> Result<crate::store::IngestOutcome, NotStored> {
    let batch = if json.len() <= PARSE_INLINE_MAX {
        parse_batch(&json)?
    } else {
        tokio::task::spawn_blocking(move || parse_batch(&json)).await.map_err(NotStored::storage)??
    };
    if batch.machine_id != signer {
        return Err(NotStored::refused(
            StatusCode::UNAUTHORIZED,
            RefusalCode::Forged,
            format!("batch of machine {} signed by {signer}", batch.machine_id),
        ));
    }
    if let Err(p) = batch.validate(st.config.ingest.max_readings) {
        tracing::warn!(%peer, machine = %batch.machine_id, reason = %p, "batch refused");
        return Err(match p {
            // A limit, not a fault: split and send again.
            BatchProblem::TooMany { .. } => NotStored::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                Verdict::RetryLater,
                RefusalCode::TooLarge,
                p.to_string(),
            ),
            BatchProblem::Invalid(_) => {
                NotStored::refused(StatusCode::BAD_REQUEST, RefusalCode::Malformed, p.to_string())
            }
        });
    }
    let window = accepted_window(st);
    let outside = batch.outside(&window);
    if let Some(&first) = outside.first() {
        let ts = batch.readings[first].sample.ts;
        tracing::warn!(%peer, machine = %batch.machine_id, readings = outside.len(), example = %ts,
            "batch refused: readings stamped outside the accepted window (hub clock wrong?)");
        let mut ns = NotStored::refused(
            StatusCode::UNPROCESSABLE_ENTITY,
            RefusalCode::Clock,
            format!(
                "{} readings stamped outside {} .. {} (e.g. {ts}); is the machine's clock right?",
                outside.len(),
                window.from,
                window.until
            ),
        );
        ns.body.accept = Some(window);
        return Err(ns);
    }
    st.store.ingest(batch, Utc::now()).await.map_err(NotStored::storage)
}

/// Makes everything stored so far durable (one flush for any number of batches: group commit),
/// then raises alerts and tells live dashboards what changed.
async fn commit(
    st: &AppState,
    outcomes: Vec<crate::store::IngestOutcome>,
) -> Result<(), crate::error::CloudError> {
    // Custody: acknowledge only what is on disk.
    st.store.commit().await?;
    for outcome in outcomes {
        if let (Some(silences), Some(m)) = (&st.silences, &outcome.machine) {
            // Off the acknowledgement's path: ending an acknowledgement is a store round trip per
            // change, and the alerter does not depend on it (a change after the acknowledged
            // reading is never silenced by it).
            let ended: Vec<_> =
                outcome.transitions.iter().map(|(_, l)| (l.sensor.clone(), l.state, l.ts)).collect();
            if !ended.is_empty() {
                let (st, silences, machine) = (st.clone(), silences.clone(), m.id.clone());
                tokio::spawn(async move {
                    for (sensor, state, ts) in ended {
                        end_acknowledgement(&st, &silences, &machine, &sensor, state, ts).await;
                    }
                });
            }
        }
        if let (Some(tx), Some(m)) = (&st.alerts, &outcome.machine) {
            for (old, l) in &outcome.transitions {
                let change = outpost_shared::mail::StateChange {
                    machine_id: m.id.clone(),
                    hostname: m.hostname.clone(),
                    sensor: l.sensor.clone(),
                    old: *old,
                    new: l.state,
                    value: Some(l.value.clone()),
                    unit: l.unit.clone(),
                    message: l.message.clone(),
                    ts: l.ts,
                };
                if tx.try_send(outpost_shared::mail::AlertEvent::Change(change)).is_err() {
                    tracing::warn!(machine = %m.id, sensor = %l.sensor, "alert queue full; state change not mailed");
                }
            }
        }
        if let Some(m) = outcome.machine {
            let id = m.id.clone();
            if let Some(nodes) = &st.nodes {
                let changed: Vec<String> = outcome.changed.iter().map(|l| l.sensor.clone()).collect();
                nodes.stored(&id, &changed);
            }
            let _ = st.events.send(LiveEvent::Machine(m));
            if !outcome.changed.is_empty() {
                let _ = st.events.send(LiveEvent::Sensors { machine: id, sensors: outcome.changed });
            }
        }
    }
    Ok(())
}

/// A sensor changed: an acknowledgement of an earlier reading ends (see `crate::silences`), and
/// the trail says so. A failure is logged; the reading is stored either way.
async fn end_acknowledgement(
    st: &AppState,
    silences: &crate::silences::Silences,
    machine: &str,
    sensor: &str,
    state: outpost_shared::model::State,
    ts: chrono::DateTime<Utc>,
) {
    match silences.changed(machine, sensor, ts).await {
        Ok(Some(ack)) => {
            let params = serde_json::json!({"sensor": sensor, "state": ack.state, "acknowledged_by": ack.by});
            let mut entry =
                crate::commands::AuditEntry::action(machine, "ack-ended", "outpost".into(), params);
            entry.detail = serde_json::json!({"now": state});
            super::access::audit(st, entry).await;
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(%machine, %sensor, error = %e, "cannot end the acknowledgement of a changed sensor")
        }
    }
}

pub(super) async fn batches(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    // Sender known and admitted before the body is read; the slot is held until the answer.
    let intake = match read_signed(&st, &headers, body, "/v1/batches", false).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    let signer =
        match check_machine(&st, &headers, "POST", "/v1/batches", &intake.json, Some(crate::trust::MAX_SKEW))
            .await
        {
            Ok(m) => m,
            Err(r) => return r,
        };
    let answer = match take_batch(&st, intake, &signer.key.machine_id, &peer.to_string()).await {
        Ok(ack) => Json(ack).into_response(),
        Err(ns) => ns.into_response(),
    };
    signer.seal(answer).await
}

/// A connector's forward: many hubs' batches in one request, each taken as if the hub had sent it
/// directly. A batch refused for good gets its own result and does not hold up the others.
pub(super) async fn forward(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let intake = match read_signed(&st, &headers, body, "/v1/forward", true).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    let signer = match connector_machine(&st, &headers, "POST", "/v1/forward", &intake.json).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    let answer = take_forward(&st, &signer.key, intake, peer).await;
    signer.seal(answer).await
}

/// The forward of an authenticated connector, stored and committed. As for a hub's batch, the
/// admission slot is given back once every batch is written, before the flush.
async fn take_forward(
    st: &AppState,
    connector: &crate::trust::MachineKey,
    intake: Intake,
    peer: SocketAddr,
) -> Response {
    let (json, slot) = intake.into_parts();
    // Parsing up to `max_decompressed` bytes of JSON is CPU work: off the async workers.
    let mut env =
        match tokio::task::spawn_blocking(move || serde_json::from_slice::<ForwardEnvelope>(&json)).await {
            Ok(Ok(e)) => e,
            Ok(Err(e)) => {
                return err(StatusCode::BAD_REQUEST, format!("body is not a valid forward envelope: {e}"))
            }
            Err(e) => return internal(e),
        };
    // Changes the connector mailed about during an outage are taken as told before its batches
    // bring them, so they are not mailed a second time.
    if let Some(tx) = &st.alerts {
        for m in env.mailed {
            match st.trust.machine_key(&m.machine_id).await {
                Ok(Some(k)) if k.network_id == connector.network_id => {
                    if tx.try_send(outpost_shared::mail::AlertEvent::Told(m)).is_err() {
                        tracing::warn!("alert queue full; a connector's outage note is lost");
                    }
                }
                _ => tracing::warn!(connector = %connector.machine_id, machine = %m.machine_id,
                    "outage note about a machine outside the connector's network ignored"),
            }
        }
    }
    let via = format!("{peer} via connector {}", connector.machine_id);
    let mut results = Vec::with_capacity(env.batches.len());
    let mut outcomes = Vec::with_capacity(env.batches.len());
    for fb in std::mem::take(&mut env.batches) {
        let body = fb.body.get().as_bytes();
        // Each batch must carry its hub's own signature over exactly these bytes: a connector
        // cannot alter or invent readings. Held batches are old, so no time window here.
        let sig = SignedHeaders::from_values(
            Some(&fb.sig.machine_id),
            Some(&fb.sig.timestamp.to_string()),
            Some(&fb.sig.signature),
        );
        let verified = match sig {
            Ok(s) => st.trust.verify(&s, "POST", "/v1/batches", body, None).await,
            Err(e) => Err(Refusal::Unsigned(e)),
        };
        let hub = match verified {
            Ok(h) if h.network_id == connector.network_id => h,
            Ok(h) => {
                results.push(
                    NotStored::refused(
                        StatusCode::FORBIDDEN,
                        RefusalCode::Forged,
                        format!("hub {} is not in this connector's network", h.machine_id),
                    )
                    .into_result(),
                );
                continue;
            }
            Err(e) => {
                tracing::warn!(connector = %connector.machine_id, reason = %e, "forwarded batch refused");
                let (status, verdict, code) = super::auth::verdict_of(&e);
                results.push(NotStored::new(status, verdict, code, e.to_string()).into_result());
                continue;
            }
        };
        let body = Box::<str>::from(fb.body).into_boxed_bytes().into_vec();
        match store_batch(st, body, &hub.machine_id, &via).await {
            Ok(o) => {
                results.push(ForwardResult::Stored(BatchAck { stored: o.stored, duplicates: o.duplicates }));
                outcomes.push(o);
            }
            // Each batch has its own verdict: a storage error on one is "retry later" for it alone.
            Err(ns) => results.push(ns.into_result()),
        }
    }
    let _committing = slot.written().await;
    // One flush for the whole forward, before any of it is acknowledged.
    if let Err(e) = commit(st, outcomes).await {
        return NotStored::storage(e).into_response();
    }
    if !env.quarantined.is_empty() {
        // Only counts about this connector's own network, and a bounded number of them.
        let named: Vec<String> =
            env.quarantined.iter().take(MAX_QUARANTINE_COUNTS).map(|(h, _)| h.clone()).collect();
        let network: std::collections::HashSet<String> = match st.trust.machine_keys_of(&named).await {
            Ok(keys) => keys
                .into_iter()
                .filter(|k| k.network_id == connector.network_id)
                .map(|k| k.machine_id)
                .collect(),
            Err(e) => return internal(e),
        };
        let counts: Vec<(String, u64)> = env
            .quarantined
            .iter()
            .take(MAX_QUARANTINE_COUNTS)
            .filter(|(hub, _)| network.contains(hub.as_str()))
            .map(|(h, n)| (h.clone(), *n))
            .collect();
        if let Err(e) = st.store.note_relay_quarantine(&connector.machine_id, &counts).await {
            return internal(e);
        }
    }
    if !env.unattached.is_empty() {
        let mut hubs = env.unattached;
        for h in &mut hubs {
            h.connector = connector.machine_id.clone();
        }
        if let Err(e) = st.store.note_unattached(&hubs).await {
            return internal(e);
        }
    }
    Json(ForwardAck { results }).into_response()
}
