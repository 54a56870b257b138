//! The hubs' command long-polls, carried to the cloud together. Each hub long-polls the connector
//! (`GET /v1/commands/poll`, signed by the hub and checked here against the network's keys, like
//! its batches); the connector asks the cloud for all the hubs waiting on it in one request
//! (`POST /v1/commands/poll-many`, signed by the connector) instead of one upstream request per
//! hub, so a thousand hubs cost the cloud a handful of requests and connections, not a thousand.
//!
//! Nothing here needs trusting the connector more than before: the envelopes are the cloud's,
//! signed and addressed to one hub, and the connector can neither forge nor alter them. It could
//! always withhold them; the cloud hands a command out again until the hub's signed result
//! arrives, so one lost on the way (a hub that stopped polling that moment, a connector restart)
//! still runs, exactly once, thanks to the hub's replay log.

use crate::Shared;
use futures_util::stream::{FuturesUnordered, StreamExt};
use outpost_shared::backoff::Backoff;
use outpost_shared::http_server::episode::Episode;
use outpost_shared::keys::{CommandEnvelope, PollManyAnswer, Signed};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;

/// Upstream requests in flight at most: one normally, more only while hubs join (a new hub gets
/// a request of its own at once instead of waiting for the running one to end).
const MAX_UPSTREAM: usize = 4;
/// How long the cloud holds an upstream poll open.
const UPSTREAM_WAIT_SECS: u64 = 25;
/// Envelopes that arrive for a hub between two of its polls wait this long for the next one; the
/// cloud hands them out again later anyway.
const MAILBOX_TTL: Duration = Duration::from_secs(60);
/// Most envelopes kept per hub, and hubs with a mailbox: bounded whatever the cloud sends.
const MAILBOX_PER_HUB: usize = 64;
const MAILBOXES: usize = 10_000;
/// A hub that just got commands is asked for upstream again at once, for this long, although its
/// next poll has not arrived yet: it comes back as soon as it has answered, and a command issued
/// meanwhile (the next relay switch of an operator) then waits in its mailbox instead of for the
/// hub's next poll and a new upstream request.
const RECENT: Duration = Duration::from_secs(5);

/// What a waiting hub poll gets.
pub(crate) enum Delivery {
    Commands(Vec<Signed<CommandEnvelope>>),
    /// The cloud will not serve this hub through this connector (not enrolled in its network).
    Refused,
}

#[derive(Default)]
struct Inner {
    /// Hubs with open polls, each with the senders of those polls.
    waiting: HashMap<String, Vec<oneshot::Sender<Delivery>>>,
    /// Hubs an upstream request in flight asks for.
    covered: HashSet<String>,
    /// Envelopes that found no open poll, with when they arrived.
    mailbox: HashMap<String, (Instant, Vec<Signed<CommandEnvelope>>)>,
    /// Hubs that got commands, with when (see [`RECENT`]); at most [`MAILBOXES`].
    recent: HashMap<String, Instant>,
}

#[derive(Default)]
pub(crate) struct Polls {
    inner: Mutex<Inner>,
    /// Wakes the upstream loop when a hub no request covers starts waiting.
    wake: Notify,
}

/// Failed upstream polls are logged once per episode: during a cloud outage they fail every
/// backoff step.
static UPSTREAM_FAILED: Episode = Episode::new("failed upstream command polls");

impl Polls {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a hub's poll: the answer arrives on the receiver (at once, when envelopes are
    /// already waiting for it). Dropping the receiver ends the poll.
    pub(crate) fn wait(&self, hub: &str) -> oneshot::Receiver<Delivery> {
        let (tx, rx) = oneshot::channel();
        let mut inner = self.lock();
        if let Some((at, list)) = inner.mailbox.remove(hub) {
            if at.elapsed() < MAILBOX_TTL {
                let _ = tx.send(Delivery::Commands(list));
                return rx;
            }
        }
        let senders = inner.waiting.entry(hub.to_string()).or_default();
        senders.retain(|s| !s.is_closed());
        senders.push(tx);
        let uncovered = !inner.covered.contains(hub);
        drop(inner);
        if uncovered {
            self.wake.notify_one();
        }
        rx
    }

    /// Hubs waiting now that no request in flight covers; marks them covered.
    fn take_uncovered(&self) -> Vec<String> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        inner.waiting.retain(|_, senders| {
            senders.retain(|s| !s.is_closed());
            !senders.is_empty()
        });
        inner.recent.retain(|_, at| at.elapsed() < RECENT);
        let fresh: Vec<String> = inner
            .waiting
            .keys()
            .chain(inner.recent.keys().filter(|h| !inner.waiting.contains_key(*h)))
            .filter(|h| !inner.covered.contains(*h))
            .cloned()
            .collect();
        inner.covered.extend(fresh.iter().cloned());
        fresh
    }

    /// Hands out what the cloud answered for the hubs of one request, and uncovers them.
    fn deliver(&self, asked: &[String], answer: Option<PollManyAnswer>) {
        let mut inner = self.lock();
        for hub in asked {
            inner.covered.remove(hub);
        }
        let Some(answer) = answer else { return };
        for hub in answer.refused {
            for s in inner.waiting.remove(&hub).unwrap_or_default() {
                let _ = s.send(Delivery::Refused);
            }
        }
        for (hub, mut list) in answer.commands {
            if inner.recent.len() < MAILBOXES || inner.recent.contains_key(&hub) {
                inner.recent.insert(hub.clone(), Instant::now());
            }
            // The first open poll takes it; a poll that just timed out hands it back.
            let mut senders = inner.waiting.remove(&hub).unwrap_or_default();
            while let Some(s) = senders.pop() {
                match s.send(Delivery::Commands(list)) {
                    Ok(()) => {
                        list = Vec::new();
                        break;
                    }
                    Err(Delivery::Commands(back)) => list = back,
                    Err(Delivery::Refused) => unreachable!("sent commands"),
                }
            }
            if !senders.is_empty() {
                inner.waiting.insert(hub.clone(), senders);
            }
            if !list.is_empty() {
                let now = Instant::now();
                inner.mailbox.retain(|_, (at, _)| at.elapsed() < MAILBOX_TTL);
                if inner.mailbox.len() < MAILBOXES || inner.mailbox.contains_key(&hub) {
                    let entry = inner.mailbox.entry(hub).or_insert_with(|| (now, Vec::new()));
                    entry.0 = now;
                    let room = MAILBOX_PER_HUB.saturating_sub(entry.1.len());
                    entry.1.extend(list.into_iter().take(room));
                }
            }
        }
    }
}

/// Keeps upstream polls running for the hubs waiting on this connector, until `shutdown`.
pub(crate) async fn run(sh: Arc<Shared>, shutdown: CancellationToken) {
    let Some((client, base)) = sh.cloud.clone() else { return };
    let mut backoff =
        Backoff::new(Duration::from_secs(1), Duration::from_secs(30), 0.5).expect("valid backoff");
    let mut inflight = FuturesUnordered::new();
    loop {
        if inflight.len() < MAX_UPSTREAM {
            let hubs = sh.polls.take_uncovered();
            if !hubs.is_empty() {
                let (client, base, key) = (client.clone(), base.clone(), sh.key.clone());
                let session = sh.session.get().cloned();
                inflight.push(async move {
                    let answer = upstream(&client, &base, &key, &hubs, session.as_deref()).await;
                    (hubs, answer)
                });
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = sh.polls.wake.notified() => {}
            Some((hubs, answer)) = inflight.next(), if !inflight.is_empty() => {
                match answer {
                    Ok(a) => {
                        backoff.reset();
                        sh.polls.deliver(&hubs, Some(a));
                    }
                    Err(e) => {
                        sh.polls.deliver(&hubs, None);
                        if UPSTREAM_FAILED.hit() {
                            tracing::warn!(error = %e, hubs = hubs.len(), "command poll for the hubs failed; retrying with backoff");
                        }
                        // The hubs' own polls end empty meanwhile; nothing is lost, the cloud
                        // keeps their commands.
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(backoff.next_delay()) => {}
                        }
                    }
                }
            }
        }
    }
}

/// One upstream long-poll for `hubs`.
async fn upstream(
    client: &reqwest::Client,
    base: &str,
    key: &outpost_shared::keys::KeyPair,
    hubs: &[String],
    session: Option<&outpost_shared::keys::SessionClient>,
) -> Result<PollManyAnswer, String> {
    const PATH: &str = "/v1/commands/poll-many";
    let body = serde_json::to_vec(&serde_json::json!({"machines": hubs, "wait": UPSTREAM_WAIT_SECS}))
        .expect("serialises");
    if let Some(session) = session {
        // The envelopes inside are the cloud's signed ones; the hubs check each.
        let answer = session
            .send(client, base, reqwest::Method::POST, PATH, &body, body.clone(), |r| {
                r.header(reqwest::header::CONTENT_TYPE, "application/json")
                    .timeout(Duration::from_secs(UPSTREAM_WAIT_SECS + 15))
            })
            .await?;
        if !answer.status.is_success() {
            let text = String::from_utf8_lossy(&answer.body);
            return Err(format!("{}: {}", answer.status, text.chars().take(200).collect::<String>()));
        }
        return serde_json::from_slice(&answer.body).map_err(|e| e.to_string());
    }
    let sig = outpost_shared::keys::sign_request(key, "POST", PATH, &body, chrono::Utc::now())
        .map_err(|e| format!("cannot sign: {e}"))?;
    let mut req = client
        .post(format!("{base}{PATH}"))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .timeout(Duration::from_secs(UPSTREAM_WAIT_SECS + 15));
    for (name, value) in sig.to_pairs() {
        req = req.header(name, value);
    }
    let resp = req.body(body).send().await.map_err(|e| outpost_shared::error_chain(&e))?;
    let status = resp.status();
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        return Err(format!("{status}: {}", text.chars().take(200).collect::<String>()));
    }
    resp.json::<PollManyAnswer>().await.map_err(|e| outpost_shared::error_chain(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(n: u8) -> Signed<CommandEnvelope> {
        let key = outpost_shared::keys::KeyPair::generate().unwrap();
        let env = CommandEnvelope::new(
            key.machine_id().clone(),
            "ping",
            serde_json::Value::Null,
            chrono::Utc::now(),
            Duration::from_secs(60 + u64::from(n)),
        )
        .unwrap();
        Signed::sign(&key, &env).unwrap()
    }

    #[tokio::test]
    async fn hubs_are_covered_once_and_answers_reach_their_poll() {
        let polls = Polls::default();
        let mut a = polls.wait("a");
        let _b = polls.wait("b");
        let mut asked = polls.take_uncovered();
        asked.sort();
        assert_eq!(asked, ["a", "b"]);
        // A second poll of a covered hub needs no new upstream request.
        let _a2 = polls.wait("a");
        assert!(polls.take_uncovered().is_empty(), "covered hubs are not asked for twice");

        let env = envelope(1);
        let answer = PollManyAnswer {
            commands: [("a".to_string(), vec![env.clone()])].into_iter().collect(),
            refused: vec!["b".into()],
        };
        polls.deliver(&asked, Some(answer));
        // One of a's polls got it (the newest); the other stays open.
        let got = tokio::time::timeout(Duration::from_millis(100), &mut a).await;
        assert!(got.is_err(), "the older poll of a is still open");
        assert!(matches!(_a2.await, Ok(Delivery::Commands(l)) if l == vec![env]));
        assert!(matches!(_b.await, Ok(Delivery::Refused)));
        // Delivered hubs are uncovered: a is still waiting, so it is asked for again.
        assert_eq!(polls.take_uncovered(), ["a"]);
    }

    #[tokio::test]
    async fn a_hub_that_just_got_a_command_is_asked_for_again_before_its_next_poll() {
        let polls = Polls::default();
        let first = polls.wait("a");
        let _idle = polls.wait("b");
        let mut asked = polls.take_uncovered();
        asked.sort();
        let answer = PollManyAnswer {
            commands: [("a".to_string(), vec![envelope(4)])].into_iter().collect(),
            refused: vec![],
        };
        polls.deliver(&asked, Some(answer));
        assert!(matches!(first.await, Ok(Delivery::Commands(_))));
        // a has no poll open (it is running the command), yet it is covered again at once, so
        // the next command finds an upstream request waiting for it.
        let mut again = polls.take_uncovered();
        again.sort();
        assert_eq!(again, ["a", "b"]);
        let next = envelope(5);
        let answer = PollManyAnswer {
            commands: [("a".to_string(), vec![next.clone()])].into_iter().collect(),
            refused: vec![],
        };
        polls.deliver(&again, Some(answer));
        match polls.wait("a").await {
            Ok(Delivery::Commands(l)) => assert_eq!(l, vec![next]),
            _ => panic!("the hub's next poll gets it from its mailbox at once"),
        }
        // A hub that got nothing lately and has no poll open is not asked for.
        drop(_idle);
        polls.lock().recent.clear();
        assert!(polls.take_uncovered().is_empty());
    }

    #[tokio::test]
    async fn envelopes_for_a_hub_between_polls_wait_in_its_mailbox() {
        let polls = Polls::default();
        drop(polls.wait("a")); // a poll that ended
        let env = envelope(2);
        let answer = PollManyAnswer {
            commands: [("a".to_string(), vec![env.clone()])].into_iter().collect(),
            refused: vec![],
        };
        polls.deliver(&["a".to_string()], Some(answer));
        match polls.wait("a").await {
            Ok(Delivery::Commands(l)) => assert_eq!(l, vec![env]),
            _ => panic!("the next poll gets the mailbox at once"),
        }
    }

    #[test]
    fn a_mailbox_holds_a_bounded_number_of_envelopes() {
        let polls = Polls::default();
        let env = envelope(3);
        for _ in 0..3 {
            let answer = PollManyAnswer {
                commands: [("a".to_string(), vec![env.clone(); MAILBOX_PER_HUB])].into_iter().collect(),
                refused: vec![],
            };
            polls.deliver(&[], Some(answer));
        }
        assert_eq!(polls.lock().mailbox["a"].1.len(), MAILBOX_PER_HUB);
    }
}
