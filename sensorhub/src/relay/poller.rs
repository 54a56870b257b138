//! Relay states as readings: one sensor per card plus one per relay, sent every poll interval and
//! at once whenever the driver reads back a changed state.

use super::config::RelayConfig;
use super::driver::Snapshot;
use super::error::RelayError;
use super::handle::RelayHandle;
use super::hub::LiveSettings;
use chrono::Utc;
use outpost_shared::model::{Sample, State, Value};
use std::future::Future;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

/// `relay.<card>` with the state byte as a number, and `relay.<card>.k1` … `k8` as flags; a relay
/// named in the config carries its name in the message (`pump: on`).
pub fn state_samples(card: u8, state: u8, cfg: Option<&RelayConfig>) -> Vec<Sample> {
    let ts = Utc::now();
    let mut out = Vec::with_capacity(9);
    out.push(Sample::new(format!("relay.{card}"), f64::from(state), State::Ok).at(ts));
    for relay in 1..=8u8 {
        let on = state & (1 << (relay - 1)) != 0;
        let mut s = Sample::new(format!("relay.{card}.k{relay}"), on, State::Ok).at(ts);
        if let Some(name) = cfg.and_then(|c| c.name(card, relay)) {
            s = s.message(format!("{name}: {}", if on { "on" } else { "off" }));
        }
        out.push(s);
    }
    out
}

/// `relay.<card>` when the card could not be read: an error reading, never a guessed state.
pub fn error_sample(card: u8, error: &RelayError) -> Sample {
    Sample::new(format!("relay.{card}"), Value::Text("unavailable".into()), State::Error)
        .message(error.to_string())
}

/// Reads every card each `cfg.poll_interval` and sends the readings to `out`; between polls,
/// any state the driver reads back that differs from the last one sent (a switch command, a
/// restore after a power-up, a reconnect) is sent at once. When `out` is full the poller waits;
/// changes made meanwhile are coalesced, the latest state wins. Ends on `shutdown` or when `out`
/// is closed.
pub fn spawn_poller(
    handle: RelayHandle,
    cfg: LiveSettings,
    out: mpsc::Sender<crate::writer::Batch>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(poll_loop(handle, cfg, out, shutdown))
}

async fn poll_loop(
    handle: RelayHandle,
    live: LiveSettings,
    out: mpsc::Sender<crate::writer::Batch>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(live.current().poll_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut watch = handle.watch();
    // What the driver knew before we started is covered by the first poll, sent at once.
    watch.borrow_and_update();
    let mut watching = true;
    // The state last sent per card (index card - 1), to send changes only once.
    let mut sent: Vec<Option<u8>> = Vec::new();
    loop {
        // A change the driver has already seen becomes readings even when the hub stops at that
        // very moment (a random pick would drop it half the time); a stopping hub starts no new
        // poll.
        let batch = tokio::select! {
            biased;
            changed = watch.changed(), if watching => {
                if changed.is_err() {
                    watching = false;
                    continue;
                }
                let snap = watch.borrow_and_update().clone();
                changed_samples(&snap, &live.current(), &mut sent)
            }
            _ = &mut shutdown => break,
            _ = tick.tick() => poll_once(&handle, &live.current(), &mut sent).await,
        };
        if batch.is_empty() {
            continue;
        }
        tokio::select! {
            biased;
            permit = out.reserve() => match permit {
                Ok(p) => p.send(batch.into()),
                Err(_) => break,
            },
            _ = &mut shutdown => {
                // Readings already taken go to the writer, which drains until every sender is
                // gone; only a full queue loses them (and then stopping cannot wait anyway).
                let _ = out.try_send(batch.into());
                break;
            }
        }
    }
}

async fn poll_once(handle: &RelayHandle, cfg: &RelayConfig, sent: &mut Vec<Option<u8>>) -> Vec<Sample> {
    let mut batch = Vec::new();
    match handle.read_all().await {
        Ok(results) => {
            sent.resize(results.len(), None);
            for (i, result) in results.into_iter().enumerate() {
                let card = i as u8 + 1;
                match result {
                    Ok(state) => {
                        batch.extend(state_samples(card, state, Some(cfg)));
                        sent[i] = Some(state);
                    }
                    Err(e) => {
                        batch.push(error_sample(card, &e));
                        sent[i] = None;
                    }
                }
            }
        }
        Err(e) => {
            let cards = handle.cards().max(1);
            for card in 1..=cards {
                batch.push(error_sample(card, &e));
            }
            sent.iter_mut().for_each(|s| *s = None);
        }
    }
    batch
}

fn changed_samples(snap: &Snapshot, cfg: &RelayConfig, sent: &mut Vec<Option<u8>>) -> Vec<Sample> {
    if sent.len() < snap.states.len() {
        sent.resize(snap.states.len(), None);
    }
    let mut batch = Vec::new();
    for (i, state) in snap.states.iter().enumerate() {
        if let Some(state) = *state {
            if sent[i] != Some(state) {
                batch.extend(state_samples(i as u8 + 1, state, Some(cfg)));
                sent[i] = Some(state);
            }
        }
    }
    batch
}
