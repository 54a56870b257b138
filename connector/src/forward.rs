//! Store-and-forward to the cloud: many hubs' batches per request, each exactly as its hub signed
//! it. Live first, as on the hub: the newest batches that carry fresh readings go ahead, so a
//! hub's latest readings are not stuck here behind a backlog (its own or other hubs'); the rest of
//! each request drains the backlog oldest first.
//!
//! Custody: a batch leaves the buffer only on the cloud's verdict for it: stored (or a
//! duplicate), or refused for good (`Verdict::Refused`), and then into the counted
//! [`crate::quarantine`]. Any other answer (retry later, no verdict, an old cloud) keeps it: it is
//! appended again behind the other batches, so one hub's refused data never blocks the others,
//! and a round in which nothing left the buffer backs off. Requests are bounded by bytes below
//! the cloud's `max_body` (learned with the network keys); a 413 halves the request, and a single
//! batch the cloud will not take at any size, or a record that cannot be framed, is put aside.

use crate::config::CloudLink;
use crate::quarantine::Entry;
use crate::{record, Shared};
use outpost_shared::backoff::Backoff;
use outpost_shared::model::{
    ApiError, BatchSignature, ForwardAck, ForwardEnvelope, ForwardResult, ForwardedBatch, UnattachedHub,
    Verdict,
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
    // are refused meanwhile unless a key list from an earlier run is on disk.
    let enrollment = loop {
        let attempt = async {
            if let Some(e) = outpost_sensorhub::trust::load(&enroll.dir, &sh.key)? {
                return Ok(e);
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
        };
        match attempt.await {
            Ok(e) => break e,
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
    };
    backoff.reset();
    let session =
        Arc::new(outpost_shared::keys::SessionClient::new(sh.key.clone(), enrollment.cloud_key.clone()));
    let _ = sh.session.set(session.clone());
    sh.hub_keys.set_session(session);
    sh.hub_keys.set_cloud_key(enrollment.cloud_key);
    // The embedded hub shares this machine's key, and so its enrollment.
    let hub_dir = enroll.dir.join("hub");
    if std::fs::create_dir_all(&hub_dir).is_ok() {
        let _ = std::fs::copy(
            enroll.dir.join(outpost_sensorhub::trust::ENROLLMENT_FILE),
            hub_dir.join(outpost_sensorhub::trust::ENROLLMENT_FILE),
        );
    }
    let mut keys_at: Option<std::time::Instant> = None;
    let mut cap = MAX_BATCHES;
    let mut failing = false;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        // The key list rides with the forwarder: fetched again every `keys_every`.
        if keys_at.is_none_or(|t| t.elapsed() >= cfg.keys_every) {
            if let Err(e) = sh.hub_keys.fetch(&client, &base, &sh.key).await {
                tracing::warn!(error = %e, "network keys not refreshed; using the list held");
            }
            keys_at = Some(std::time::Instant::now());
        }
        match round(&sh, &client, &url, cfg.max_readings, &mut cap).await {
            Round::Idle => {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = sh.forward_wake.notified() => {}
                    _ = tokio::time::sleep(cfg.keys_every) => {}
                }
                // Forward at once: what arrives while this request is on its way gathers for the
                // next one, so batches grow with load without making a lone reading (a relay that
                // switched, an alert) wait for company.
            }
            Round::Progress => {
                if failing {
                    tracing::info!("cloud reachable again; forwarding the backlog");
                    failing = false;
                }
                backoff.reset();
            }
            Round::Held => sleep_or_stop(&shutdown, backoff.next_delay()).await,
            Round::Failed(Retry::After(d)) => sleep_or_stop(&shutdown, d).await,
            Round::Failed(Retry::TooLarge(msg) | Retry::Backoff(msg)) => {
                if !failing {
                    tracing::warn!(error = %msg, buffered = sh.buffer.stats().len, "cannot reach the cloud; holding hub batches");
                    failing = true;
                }
                sleep_or_stop(&shutdown, backoff.next_delay()).await;
            }
        }
    }
}

/// How one forward round went.
pub(crate) enum Round {
    /// Nothing to send.
    Idle,
    /// Something left the buffer (or the request was made smaller): go on at once.
    Progress,
    /// The cloud answered, but kept nothing of it: every batch is to be sent again later.
    Held,
    /// No answer that settles anything.
    Failed(Retry),
}

/// One request: collect, send, settle each batch by its verdict.
pub(crate) async fn round(
    sh: &Arc<Shared>,
    client: &reqwest::Client,
    url: &str,
    max_readings: usize,
    cap: &mut usize,
) -> Round {
    let collected = std::time::Instant::now();
    let limits = sh.hub_keys.limits();
    let (mut taken, env) = match collect(sh, max_readings, max_record_bytes(limits), *cap).await {
        Ok(x) => x,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the connector buffer");
            return Round::Failed(Retry::Backoff(e));
        }
    };
    let Some(mut env) = env else { return Round::Idle };
    let report = sh.quarantine.to_report();
    if let Some((_, counts)) = &report {
        env.quarantined = counts.clone();
    }
    let max_body = limits.map_or(DEFAULT_MAX_BODY, |l| l.max_body);
    match send(client, url, &sh.key, &env, max_body, sh.session.get().map(|s| s.as_ref())).await {
        Ok(ack) => {
            if let Some(w) = &sh.watch {
                w.forward_ok(collected);
                w.notes_delivered(std::mem::take(&mut taken.note_keys)).await;
            }
            if let Some((generation, _)) = report {
                sh.quarantine.reported(generation);
            }
            // The unattached list was delivered with this request.
            if !env.unattached.is_empty() {
                sh.unattached.lock().unwrap().clear();
            }
            *cap = (*cap * 2).min(MAX_BATCHES);
            let moved = settle(sh, taken, &ack.results).await;
            if moved || env.batches.is_empty() {
                Round::Progress
            } else {
                Round::Held
            }
        }
        Err(Retry::TooLarge(msg)) if env.batches.len() > 1 => {
            *cap = env.batches.len() / 2;
            tracing::info!(batches = *cap, reason = %msg, "forward too large for the cloud; sending fewer batches at once");
            Round::Progress
        }
        Err(Retry::TooLarge(msg)) if env.batches.len() == 1 => {
            // One hub batch, signed as it is: it cannot be split here, and will never fit.
            let entry = (
                taken.seqs[0],
                taken.records.swap_remove(0),
                format!("the cloud takes no request this large: {msg}"),
            );
            put_aside(sh, vec![entry]).await;
            Round::Progress
        }
        Err(e) => {
            if let Some(w) = &sh.watch {
                w.forward_failed();
            }
            Round::Failed(e)
        }
    }
}

/// Applies the cloud's verdicts: stored leaves the buffer, refused for good goes to the
/// quarantine, anything else is appended again behind the other batches. Returns whether any
/// batch left the buffer.
async fn settle(sh: &Arc<Shared>, taken: Taken, results: &[ForwardResult]) -> bool {
    let mut stored = Vec::new();
    let mut aside = Vec::new();
    let mut again = Vec::new();
    for ((seq, record), r) in taken.seqs.into_iter().zip(taken.records).zip(results) {
        match r {
            ForwardResult::Stored(_) => stored.push((seq, record)),
            ForwardResult::Refused { verdict: Some(Verdict::Refused), status, error, code, .. } => {
                let code = code.map(|c| format!("{c:?}")).unwrap_or_default();
                aside.push((
                    seq,
                    record,
                    format!("the cloud refused it for good ({status} {code}): {error}"),
                ));
            }
            ForwardResult::Refused { status, error, code, .. } => {
                tracing::warn!(status, ?code, %error, "the cloud did not take a hub batch now; kept to send again");
                again.push((seq, record));
            }
        }
    }
    let moved = !stored.is_empty() || !aside.is_empty();
    remove(sh, stored).await;
    put_aside(sh, aside).await;
    send_again_later(sh, again).await;
    moved
}

/// Picks a forward request's batches from the candidates (see [`collect`]): fresh ones up to
/// half the readings, then the oldest in order, within `max_readings` and `max_bytes` (at least
/// one batch). The reading count is in each record's header, so a batch over the readings budget
/// is passed over before it is inflated; only what may go is inflated. Also returns what cannot
/// be framed, to be put aside.
#[allow(clippy::type_complexity)]
fn select(
    live: Vec<(u64, Vec<u8>)>,
    oldest: Vec<(u64, Vec<u8>)>,
    max_readings: usize,
    max_bytes: u64,
    max_batches: usize,
) -> (Taken, Vec<ForwardedBatch>, Vec<(u64, Vec<u8>, String)>) {
    let mut taken = Taken::default();
    let mut unframeable = Vec::new();
    let mut batches = Vec::new();
    let mut readings = 0usize;
    let mut bytes = 0u64;
    let live_budget = (max_readings / 2).max(1);
    let mut in_request = HashSet::new();
    let candidates = live.into_iter().map(|r| (true, r)).chain(oldest.into_iter().map(|r| (false, r)));
    for (is_live, (seq, rec)) in candidates {
        if batches.len() >= max_batches {
            break;
        }
        if !in_request.insert(seq) {
            continue;
        }
        let Some(r) = record::decode(&rec) else {
            unframeable.push((seq, rec, "cannot be forwarded: unreadable record".to_string()));
            continue;
        };
        let budget = if is_live { live_budget } else { max_readings };
        let over = |cost: u64| {
            !batches.is_empty() && (readings + r.readings as usize > budget || bytes + cost > max_bytes)
        };
        // The readings alone already over: not inflated at all.
        if over(0) {
            if is_live {
                // Too big for the live share: it goes with the backlog, in order.
                in_request.remove(&seq);
                continue;
            }
            break;
        }
        let framed = r.json().map_err(|e| format!("packed batch: {e}")).and_then(|json| {
            let json =
                String::from_utf8(json.into_owned()).map_err(|e| format!("batch is not UTF-8: {e}"))?;
            RawValue::from_string(json).map_err(|e| format!("batch is not JSON: {e}"))
        });
        let body = match framed {
            Ok(body) => body,
            Err(reason) => {
                unframeable.push((seq, rec, format!("cannot be forwarded: {reason}")));
                continue;
            }
        };
        let cost = body.get().len() as u64 + PER_BATCH_OVERHEAD;
        if over(cost) {
            if is_live {
                in_request.remove(&seq);
                continue;
            }
            break;
        }
        readings += r.readings as usize;
        bytes += cost;
        batches.push(ForwardedBatch {
            sig: BatchSignature {
                machine_id: r.machine_id.to_string(),
                timestamp: r.timestamp,
                signature: r.signature.to_string(),
            },
            body,
        });
        taken.freed.push((r.machine_id.to_string(), rec.len() as u64));
        taken.seqs.push(seq);
        taken.records.push(rec);
    }
    (taken, batches, unframeable)
}

/// Moves records from the buffer into the quarantine, counted; on a quarantine error they stay
/// in the buffer (never dropped uncounted).
pub(crate) async fn put_aside(sh: &Arc<Shared>, items: Vec<(u64, Vec<u8>, String)>) {
    if items.is_empty() {
        return;
    }
    let kept: Vec<(u64, Vec<u8>)> = items.iter().map(|(s, r, _)| (*s, r.clone())).collect();
    let entries: Vec<Entry> = items
        .into_iter()
        .map(|(_, record, reason)| {
            let (hub, readings) = record::decode(&record)
                .map(|r| (r.machine_id.to_string(), u64::from(r.readings)))
                .unwrap_or_else(|| (crate::quarantine::UNKNOWN_HUB.to_string(), 0));
            Entry { record, hub, readings, reason }
        })
        .collect();
    let shared = sh.clone();
    match tokio::task::spawn_blocking(move || shared.quarantine.put(&entries)).await {
        Ok(Ok(())) => remove(sh, kept).await,
        Ok(Err(e)) => tracing::error!(error = %e, "cannot put batches aside; they stay in the buffer"),
        Err(e) => tracing::error!(error = %e, "cannot put batches aside; they stay in the buffer"),
    }
}

/// Appends records again (no longer fresh) and removes their old place, so they go behind what
/// waits now. A full buffer leaves them where they are.
async fn send_again_later(sh: &Arc<Shared>, items: Vec<(u64, Vec<u8>)>) {
    if items.is_empty() {
        return;
    }
    let buffer = sh.buffer.clone();
    let done = tokio::task::spawn_blocking(move || {
        let (old, records): (Vec<u64>, Vec<Vec<u8>>) = items
            .into_iter()
            .map(|(seq, bytes)| {
                let again = record::decode(&bytes)
                    .and_then(|r| record::encode(&record::Record { fresh: false, ..r }).ok())
                    .unwrap_or(bytes);
                (seq, again)
            })
            .unzip();
        // In first, then out: a crash in between sends a batch twice, which the cloud stores once.
        buffer.append(&records)?;
        buffer.remove(&old)
    })
    .await;
    let failed = match done {
        Ok(Ok(())) => return,
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    };
    tracing::warn!(error = %failed, "could not move held batches behind the others; they are sent again in place");
}

async fn sleep_or_stop(shutdown: &CancellationToken, d: Duration) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(d) => {}
    }
}

pub(crate) enum Retry {
    After(Duration),
    /// 413: the request was too large for the cloud (or would be, by its `max_body`).
    TooLarge(String),
    Backoff(String),
}

/// What one forward request takes besides the envelope: the buffer seqs and records of its
/// batches (in the envelope's order), the outage note keys to delete once the cloud has them.
#[derive(Default)]
pub(crate) struct Taken {
    pub seqs: Vec<u64>,
    pub records: Vec<Vec<u8>>,
    pub note_keys: Vec<sled::IVec>,
    /// Hub of each batch, and its bytes (for the fair share once it leaves).
    pub freed: Vec<(String, u64)>,
}

/// The cloud's `max_body` until it has told its own.
const DEFAULT_MAX_BODY: u64 = 8 << 20;
/// Envelope bytes per batch besides the record's JSON (signature, field names).
const PER_BATCH_OVERHEAD: u64 = 1024;

/// The most JSON one forward carries, and so the largest hub batch this connector takes: below
/// the cloud's `max_body` even before compression (gzip never grows JSON by more than a few
/// bytes per 32 KiB), with room for the envelope around it.
pub(crate) fn max_record_bytes(limits: Option<outpost_shared::keys::IngestLimits>) -> u64 {
    let max_body = limits.map_or(DEFAULT_MAX_BODY, |l| l.max_body);
    (max_body / 16 * 15).saturating_sub(4096)
}

/// Up to `max_readings` and `max_bytes` (at least one batch), at most `max_batches`: first the
/// freshest batches among those that came in last (at most half the request, so the backlog
/// keeps moving), then the oldest; the pending unattached hubs; and the outage notes not yet
/// delivered. A record that cannot be read or framed is put aside on the way.
pub(crate) async fn collect(
    sh: &Arc<Shared>,
    max_readings: usize,
    max_bytes: u64,
    max_batches: usize,
) -> Result<(Taken, Option<ForwardEnvelope>), String> {
    let max_batches = max_batches.clamp(1, MAX_BATCHES);
    // Batches and notes read together, with no intake half-way (see `Shared::custody`).
    let custody = sh.custody.write().await;
    let (note_keys, mailed) = sh.watch.as_ref().map(|w| w.pending_notes()).unwrap_or_default();
    let buffer = sh.buffer.clone();
    let n = records_for(&buffer.stats(), max_readings).min(max_batches);
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

    // Inflating packed batches is CPU work: off the async workers, like the reads.
    let (mut taken, batches, unframeable) =
        tokio::task::spawn_blocking(move || select(live, oldest, max_readings, max_bytes, max_batches))
            .await
            .map_err(|e| e.to_string())?;
    taken.note_keys = note_keys;
    drop(custody);
    put_aside(sh, unframeable).await;
    let unattached = sh.unattached.lock().unwrap().clone();
    if batches.is_empty() && unattached.is_empty() && mailed.is_empty() {
        return Ok((Taken::default(), None));
    }
    let env = ForwardEnvelope {
        connector: sh.machine_id.clone(),
        batches,
        unattached,
        mailed,
        quarantined: Default::default(),
    };
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

pub(crate) async fn send(
    client: &reqwest::Client,
    url: &str,
    key: &outpost_shared::keys::KeyPair,
    env: &ForwardEnvelope,
    max_body: u64,
    session: Option<&outpost_shared::keys::SessionClient>,
) -> Result<ForwardAck, Retry> {
    let json = serde_json::to_vec(env).map_err(|e| Retry::Backoff(e.to_string()))?;
    let body = outpost_shared::wire::gzip(&json);
    if body.len() as u64 > max_body {
        return Err(Retry::TooLarge(format!("{} bytes, the cloud takes {max_body}", body.len())));
    }
    if let Some(session) = session {
        return send_in_session(client, url, session, env, &json, body).await;
    }
    let sig = outpost_shared::keys::sign_request(key, "POST", "/v1/forward", &json, chrono::Utc::now())
        .map_err(|e| Retry::Backoff(e.to_string()))?;
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
    let answer = resp.json::<ApiError>().await.ok();
    let said_too_large =
        answer.as_ref().is_some_and(|e| e.code == Some(outpost_shared::model::RefusalCode::TooLarge));
    let msg = answer.map(|e| e.error).unwrap_or_default();
    match (status.as_u16(), retry_after) {
        // Only the cloud's own verdict says a request is too large; a 413 without one (a proxy in
        // front of it, in maintenance) is no reason to split, let alone to put a batch aside.
        (413, _) if said_too_large => Err(Retry::TooLarge(format!("cloud answered 413: {msg}"))),
        (413, _) => Err(Retry::Backoff(format!("413 without the cloud's verdict (a proxy?): {msg}"))),
        (503 | 429, Some(s)) => Err(Retry::After(asked_wait(s))),
        (code, _) => Err(Retry::Backoff(format!("cloud answered {code}: {msg}"))),
    }
}

/// A wait the cloud (or whatever answers in its place) asked for, at most an hour: an answer
/// carries no MAC, and one asking for years must not stop the forwarding.
fn asked_wait(secs: u64) -> Duration {
    Duration::from_secs(secs).min(outpost_shared::backoff::MAX_ASKED_WAIT)
}

/// [`send`] in the connector's machine session: a MAC instead of a signature, and an
/// acknowledgement believed only with the cloud's MAC over it (custody).
async fn send_in_session(
    client: &reqwest::Client,
    url: &str,
    session: &outpost_shared::keys::SessionClient,
    env: &ForwardEnvelope,
    json: &[u8],
    body: Vec<u8>,
) -> Result<ForwardAck, Retry> {
    let base = url.strip_suffix("/v1/forward").unwrap_or(url);
    let answer = session
        .send(client, base, reqwest::Method::POST, "/v1/forward", json, body, |r| {
            r.header(reqwest::header::CONTENT_ENCODING, outpost_shared::wire::GZIP)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
        })
        .await
        .map_err(Retry::Backoff)?;
    let status = answer.status;
    if status.is_success() {
        if !answer.trusted() {
            return Err(Retry::Backoff("acknowledgement without a valid session MAC; batches kept".into()));
        }
        let ack: ForwardAck =
            serde_json::from_slice(&answer.body).map_err(|e| Retry::Backoff(e.to_string()))?;
        if ack.results.len() != env.batches.len() {
            return Err(Retry::Backoff(format!(
                "cloud answered {} results for {} batches",
                ack.results.len(),
                env.batches.len()
            )));
        }
        return Ok(ack);
    }
    let retry_after = answer
        .headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let said = std::str::from_utf8(&answer.body).ok().and_then(|t| serde_json::from_str::<ApiError>(t).ok());
    let said_too_large =
        said.as_ref().is_some_and(|e| e.code == Some(outpost_shared::model::RefusalCode::TooLarge));
    let msg = said.map(|e| e.error).unwrap_or_default();
    match (status.as_u16(), retry_after) {
        (413, _) if said_too_large => Err(Retry::TooLarge(format!("cloud answered 413: {msg}"))),
        (413, _) => Err(Retry::Backoff(format!("413 without the cloud's verdict (a proxy?): {msg}"))),
        (503 | 429, Some(s)) => Err(Retry::After(asked_wait(s))),
        (code, _) => Err(Retry::Backoff(format!("cloud answered {code}: {msg}"))),
    }
}

/// Removes batches that left custody (stored, or put aside) and gives their bytes back to their
/// hubs' fair shares.
async fn remove(sh: &Arc<Shared>, records: Vec<(u64, Vec<u8>)>) {
    if records.is_empty() {
        return;
    }
    let freed: Vec<(String, u64)> = records
        .iter()
        .filter_map(|(_, r)| record::decode(r).map(|d| (d.machine_id.to_string(), r.len() as u64)))
        .collect();
    let seqs: Vec<u64> = records.into_iter().map(|(s, _)| s).collect();
    let buffer = sh.buffer.clone();
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
