//! Store-and-forward to the cloud: many hubs' batches per request, each exactly as its hub signed
//! it. Live first, as on the hub: the newest batches that carry fresh readings go ahead, so a
//! hub's latest readings are not stuck here behind a backlog (its own or other hubs'); the rest of
//! each request drains the backlog oldest first. A batch leaves the buffer only after the cloud's
//! answer for it: stored, or refused for good (then it is logged; resending could never help).

use crate::config::CloudLink;
use crate::{record, Shared};
use outpost_shared::backoff::Backoff;
use outpost_shared::model::{
    ApiError, BatchSignature, ForwardAck, ForwardEnvelope, ForwardResult, ForwardedBatch, UnattachedHub,
};
use outpost_shared::ssdp::Found;
use serde_json::value::RawValue;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Most hub batches one request may carry, whatever their size.
const MAX_BATCHES: usize = 1000;
/// Generous bytes of record per reading (typically 100-200), for sizing buffer reads.
const BYTES_PER_READING: u64 = 256;
/// A hub that sent through this connector within this window counts as attached.
const ATTACHED_WINDOW: chrono::Duration = chrono::Duration::minutes(10);

/// What the connector needs to enroll itself.
pub(crate) struct Enroll {
    pub dir: std::path::PathBuf,
    /// Fingerprint of the LAN certificate, which the cloud lists for hubs to pin.
    pub lan_cert: String,
    pub hostname: String,
}

pub(crate) async fn run(
    sh: Arc<Shared>,
    client: reqwest::Client,
    cfg: CloudLink,
    enroll: Enroll,
    shutdown: CancellationToken,
) {
    let Some(base) = cfg.url.as_ref().map(|u| u.trim_end_matches('/').to_string()) else { return };
    let url = format!("{base}/v1/forward");
    let mut backoff = Backoff::new(cfg.retry_min, cfg.retry_max, 0.5).expect("validated with the config");
    // Enrolled first: the cloud takes nothing from a connector it does not know. Hub batches
    // are taken into custody meanwhile.
    loop {
        let attempt = async {
            if outpost_sensorhub::trust::load(&enroll.dir, &sh.key)?.is_some() {
                return Ok(());
            }
            let token = outpost_sensorhub::trust::token(cfg.enroll_token.as_deref(), &enroll.dir)?;
            outpost_sensorhub::trust::enroll(
                &client,
                &base,
                &enroll.dir,
                &sh.key,
                &token,
                outpost_shared::model::Role::Connector,
                &enroll.hostname,
                Some(enroll.lan_cert.clone()),
            )
            .await
            .map(|_| ())
        };
        match attempt.await {
            Ok(()) => break,
            Err(e) => {
                if let Some(w) = &sh.watch {
                    w.forward_failed();
                }
                if backoff.attempts() == 0 {
                    tracing::error!(error = %e, "connector not enrolled yet; holding hub batches until it is");
                }
                sleep_or_stop(&shutdown, backoff.next_delay()).await;
                if shutdown.is_cancelled() {
                    return;
                }
            }
        }
    }
    backoff.reset();
    // The embedded hub shares this machine's key, and so its enrollment.
    let hub_dir = enroll.dir.join("hub");
    if std::fs::create_dir_all(&hub_dir).is_ok() {
        let _ = std::fs::copy(
            enroll.dir.join(outpost_sensorhub::trust::ENROLLMENT_FILE),
            hub_dir.join(outpost_sensorhub::trust::ENROLLMENT_FILE),
        );
    }
    let mut failing = false;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let collected = std::time::Instant::now();
        let (mut taken, env) = match collect(&sh, cfg.max_readings).await {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the connector buffer");
                sleep_or_stop(&shutdown, backoff.next_delay()).await;
                continue;
            }
        };
        let Some(env) = env else {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = sh.forward_wake.notified() => {}
            }
            // Forward at once: what arrives while this request is on its way gathers for the
            // next one, so batches grow with load without making a lone reading (a relay that
            // switched, an alert) wait for company.
            continue;
        };
        match send(&client, &url, &sh.key, &env).await {
            Ok(ack) => {
                if let Some(w) = &sh.watch {
                    w.forward_ok(collected);
                    w.notes_delivered(std::mem::take(&mut taken.note_keys)).await;
                }
                if failing {
                    tracing::info!("cloud reachable again; forwarding the backlog");
                    failing = false;
                }
                backoff.reset();
                for (r, fb) in ack.results.iter().zip(&env.batches) {
                    if let ForwardResult::Refused { status, error, .. } = r {
                        tracing::error!(status, %error, hub = %fb.sig.machine_id, "cloud refuses a hub batch for good; dropped");
                    }
                }
                remove(&sh, taken).await;
                // The unattached list was delivered with this request.
                if !env.unattached.is_empty() {
                    sh.unattached.lock().unwrap().clear();
                }
            }
            Err(Retry::After(d)) => {
                if let Some(w) = &sh.watch {
                    w.forward_failed();
                }
                sleep_or_stop(&shutdown, d).await
            }
            Err(Retry::Backoff(msg)) => {
                if let Some(w) = &sh.watch {
                    w.forward_failed();
                }
                if !failing {
                    tracing::warn!(error = %msg, buffered = sh.buffer.stats().len, "cannot reach the cloud; holding hub batches");
                    failing = true;
                }
                sleep_or_stop(&shutdown, backoff.next_delay()).await;
            }
        }
    }
}

async fn sleep_or_stop(shutdown: &CancellationToken, d: Duration) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(d) => {}
    }
}

enum Retry {
    After(Duration),
    Backoff(String),
}

/// What one forward request takes besides the envelope: the buffer seqs and the outage note keys
/// to delete once the cloud has them, and the bytes each hub gets back in its fair share then.
#[derive(Default)]
pub(crate) struct Taken {
    pub seqs: Vec<u64>,
    pub note_keys: Vec<sled::IVec>,
    pub freed: Vec<(String, u64)>,
}

/// Up to `max_readings` (at least one batch): first the freshest batches among those that came
/// in last (at most half the request, so the backlog keeps moving), then the oldest; the pending
/// unattached hubs; and the outage notes not yet delivered.
pub(crate) async fn collect(
    sh: &Arc<Shared>,
    max_readings: usize,
) -> Result<(Taken, Option<ForwardEnvelope>), String> {
    // Batches and notes read together, with no intake half-way (see `Shared::custody`).
    let custody = sh.custody.write().await;
    let (note_keys, mailed) = sh.watch.as_ref().map(|w| w.pending_notes()).unwrap_or_default();
    let buffer = sh.buffer.clone();
    let n = records_for(&buffer.stats(), max_readings);
    let (live, oldest) = tokio::task::spawn_blocking(move || {
        // Newest first: after an outage the latest of each hub leads, not the first to arrive.
        let live: Vec<_> = buffer
            .newest((2 * n).min(MAX_BATCHES))?
            .into_iter()
            .filter(|(_, b)| record::decode(b).is_some_and(|r| r.fresh))
            .collect();
        let oldest = buffer.oldest(n)?;
        Ok::<_, outpost_shared::buffer::BufferError>((live, oldest))
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;

    let mut taken = Taken { note_keys, ..Default::default() };
    let mut batches = Vec::new();
    let mut readings = 0usize;
    let live_budget = (max_readings / 2).max(1);
    let mut in_request = HashSet::new();
    let candidates = live.into_iter().map(|r| (true, r)).chain(oldest.into_iter().map(|r| (false, r)));
    for (is_live, (seq, bytes)) in candidates {
        if batches.len() >= MAX_BATCHES {
            break;
        }
        if !in_request.insert(seq) {
            continue;
        }
        let Some(r) = record::decode(&bytes) else {
            tracing::error!(seq, "unreadable record in the connector buffer; dropped");
            taken.seqs.push(seq);
            continue;
        };
        let budget = if is_live { live_budget } else { max_readings };
        if !batches.is_empty() && readings + r.readings as usize > budget {
            if is_live {
                // Too big for the live share: it goes with the backlog, in order.
                in_request.remove(&seq);
                continue;
            }
            break;
        }
        readings += r.readings as usize;
        let json = String::from_utf8(r.json.to_vec()).map_err(|e| e.to_string())?;
        batches.push(ForwardedBatch {
            sig: BatchSignature {
                machine_id: r.machine_id.to_string(),
                timestamp: r.timestamp,
                signature: r.signature.to_string(),
            },
            body: RawValue::from_string(json).map_err(|e| e.to_string())?,
        });
        taken.seqs.push(seq);
        taken.freed.push((r.machine_id.to_string(), bytes.len() as u64));
    }
    drop(custody);
    let unattached = sh.unattached.lock().unwrap().clone();
    if batches.is_empty() && unattached.is_empty() && mailed.is_empty() {
        if !taken.seqs.is_empty() {
            remove(sh, taken).await;
        }
        return Ok((Taken::default(), None));
    }
    let env = ForwardEnvelope { connector: sh.machine_id.clone(), batches, unattached, mailed };
    Ok((taken, Some(env)))
}

/// How many records one read should take to fill a request of `max_readings`, from the
/// buffer's average record size: records range from a few hundred bytes (a hub's live trickle)
/// to megabytes (a hub draining its backlog), and copying a thousand of the big ones to send
/// four would cost far more than the request itself.
fn records_for(st: &outpost_shared::buffer::BufferStats, max_readings: usize) -> usize {
    let avg = st.bytes.checked_div(st.len).unwrap_or(1).max(1);
    let wanted = max_readings as u64 * BYTES_PER_READING;
    (wanted / avg + 1).min(MAX_BATCHES as u64) as usize
}

async fn send(
    client: &reqwest::Client,
    url: &str,
    key: &outpost_shared::keys::KeyPair,
    env: &ForwardEnvelope,
) -> Result<ForwardAck, Retry> {
    let json = serde_json::to_vec(env).map_err(|e| Retry::Backoff(e.to_string()))?;
    let sig = outpost_shared::keys::sign_request(key, "POST", "/v1/forward", &json, chrono::Utc::now())
        .map_err(|e| Retry::Backoff(e.to_string()))?;
    let body = outpost_shared::wire::gzip(&json);
    let mut req = client.post(url);
    for (name, value) in sig.to_pairs() {
        req = req.header(name, value);
    }
    let resp = req
        .header(reqwest::header::CONTENT_ENCODING, outpost_shared::wire::GZIP)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| Retry::Backoff(outpost_shared::error_chain(&e)))?;
    let status = resp.status();
    if status.is_success() {
        let ack: ForwardAck =
            resp.json().await.map_err(|e| Retry::Backoff(outpost_shared::error_chain(&e)))?;
        if ack.results.len() != env.batches.len() {
            return Err(Retry::Backoff(format!(
                "cloud answered {} results for {} batches",
                ack.results.len(),
                env.batches.len()
            )));
        }
        return Ok(ack);
    }
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let msg = resp.json::<ApiError>().await.map(|e| e.error).unwrap_or_default();
    match (status.as_u16(), retry_after) {
        (503 | 429, Some(s)) => Err(Retry::After(Duration::from_secs(s))),
        (code, _) => Err(Retry::Backoff(format!("cloud answered {code}: {msg}"))),
    }
}

async fn remove(sh: &Arc<Shared>, taken: Taken) {
    let buffer = sh.buffer.clone();
    let Taken { seqs, freed, .. } = taken;
    match tokio::task::spawn_blocking(move || buffer.remove(&seqs)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::error!(error = %e, "could not remove forwarded batches; the cloud will see them again and store them once");
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "could not remove forwarded batches");
            return;
        }
    }
    // Recount fair shares for what left.
    let mut per_hub = sh.per_hub.lock().unwrap();
    for (m, b) in freed {
        if let Some(v) = per_hub.get_mut(&m) {
            *v = v.saturating_sub(b);
        }
    }
}

/// Hubs answering SSDP that have not sent through this connector recently are reported as
/// unattached with the next forward.
pub(crate) fn note_found_hubs(sh: &Shared, found: Vec<Found>) {
    let now = chrono::Utc::now();
    let attached = sh.attached.lock().unwrap();
    let mut list = sh.unattached.lock().unwrap();
    for f in found {
        let Some(id) = hub_id_from_location(&f.location) else { continue };
        if attached.get(&id).is_some_and(|t| now - *t < ATTACHED_WINDOW) {
            continue;
        }
        list.retain(|h| h.machine_id != id);
        list.push(UnattachedHub {
            machine_id: id,
            location: f.location,
            server: f.server,
            connector: String::new(),
            seen_at: now,
        });
    }
    if !list.is_empty() {
        sh.forward_wake.notify_one();
    }
}

/// A hub's LOCATION ends in `/outpost/hub/<machine id>` (see the sensorhub's advertisement).
fn hub_id_from_location(location: &str) -> Option<String> {
    let id = location.trim_end_matches('/').rsplit_once("/outpost/hub/")?.1;
    (!id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric())).then(|| id.to_string())
}
