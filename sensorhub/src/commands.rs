//! The command channel, hub side: long-polls the path readings take (connector or cloud) for
//! commands, verifies each (cloud signature, target, expiry, replay — ids remembered on disk),
//! runs it, and returns its result: in the hub's machine session with the cloud (the session MAC
//! proves the sender), or signed with the machine key. A refused command runs nothing and
//! its refusal is reported back, so the cloud's audit trail shows it.

use crate::uplink::{CommandPath, PathTransport};
use chrono::Utc;
use outpost_shared::backoff::Backoff;
use outpost_shared::keys::{
    sign_request, CommandEnvelope, CommandResult, CommandStatus, CommandVerifier, KeyPair, SessionClient,
    Signed,
};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long one poll may be held open by the other side.
const POLL_WAIT_SECS: u64 = 25;
/// How long one signature of the (always identical) command poll is used again. A poll changes
/// nothing and a connector takes any signature younger than the clock-skew window (5 minutes),
/// so a signature sent again within a minute lets no one do more than before, and spares the hub
/// an RSA signature (about 2 ms) after every command and every 25-second poll.
const POLL_SIGNATURE_REUSE: Duration = Duration::from_secs(60);
/// How long `sample-now` waits for its sample: a check's default timeout (10 s) and some room.
/// Commands run one at a time, so a hung check must not hold the channel for long.
const SAMPLE_NOW_WAIT: Duration = Duration::from_secs(15);

/// What commands act on.
pub struct Executor {
    pub key: Arc<KeyPair>,
    pub verifier: CommandVerifier,
    pub sensors: crate::sensors::SensorHandle,
    /// The relay cards; `locked` is read from their settings in force at each command.
    pub relays: Option<crate::relay::Relays>,
    /// The config file to re-read on `reload-config`, when the hub was started from one.
    pub config_path: Option<std::path::PathBuf>,
    /// Applies `sensors.apply` documents; None where sensors are not managed (some tests).
    pub managed: Option<Arc<crate::managed::Managed>>,
    /// Results of commands run on this start, by envelope digest: the cloud hands a command out
    /// again until its result arrives, and a redelivery is answered with the first result
    /// instead of running twice or being reported as a replay.
    pub answered: Answered,
}

/// The last [`ANSWERED`] results, oldest dropped first (a redelivery comes within a minute; the
/// bound keeps a flood of commands from growing memory).
#[derive(Default)]
pub struct Answered(std::sync::Mutex<std::collections::VecDeque<(String, CommandResult)>>);

const ANSWERED: usize = 256;

impl Answered {
    fn get(&self, digest: &str) -> Option<CommandResult> {
        let list = self.0.lock().unwrap_or_else(|p| p.into_inner());
        list.iter().find(|(d, _)| d == digest).map(|(_, r)| r.clone())
    }

    fn put(&self, digest: String, result: &CommandResult) {
        let mut list = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if list.len() >= ANSWERED {
            list.pop_front();
        }
        list.push_back((digest, result.clone()));
    }
}

pub async fn run(transport: Arc<PathTransport>, exec: Executor, shutdown: CancellationToken) {
    let mut backoff =
        Backoff::new(Duration::from_secs(1), Duration::from_secs(30), 0.5).expect("constant settings");
    let path = format!("/v1/commands/poll?wait={POLL_WAIT_SECS}");
    let mut poll_signature = PollSignature::default();
    loop {
        let current = tokio::select! {
            _ = shutdown.cancelled() => return,
            c = transport.current() => c,
        };
        let Some(CommandPath { client, base, poll_session, result_session }) = current else {
            sleep_or_stop(&shutdown, Duration::from_secs(1)).await;
            if shutdown.is_cancelled() {
                return;
            }
            continue;
        };
        let polled = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = poll(&client, &base, &path, &exec.key, poll_session.as_deref(), &mut poll_signature) => r,
        };
        match polled {
            Ok(list) => {
                backoff.reset();
                for signed in list {
                    let Some(result) = exec.handle(&signed).await else { continue };
                    if let Err(e) =
                        report(&client, &base, &exec.key, &result, result_session.as_deref()).await
                    {
                        tracing::warn!(command = %result.command_id, error = %e, "cannot report a command result");
                    }
                }
            }
            Err(e) => {
                // The next poll is signed afresh: a refusal may mean this one was too old for
                // the other side's clock.
                poll_signature = PollSignature::default();
                tracing::debug!(error = %e, "command poll failed");
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

fn signed_request(
    client: &reqwest::Client,
    method: reqwest::Method,
    base: &str,
    path: &str,
    body: &[u8],
    key: &KeyPair,
) -> Result<reqwest::RequestBuilder, String> {
    let sig = sign_request(key, method.as_str(), path, body, Utc::now()).map_err(|e| e.to_string())?;
    let mut req = client.request(method, format!("{}{path}", base.trim_end_matches('/')));
    for (name, value) in sig.to_pairs() {
        req = req.header(name, value);
    }
    Ok(req)
}

/// The three signature headers of a request.
type SignatureHeaders = [(&'static str, String); 3];

/// The headers of the last signed command poll (when made, for which base), to use again for
/// [`POLL_SIGNATURE_REUSE`].
#[derive(Default)]
struct PollSignature(Option<(std::time::Instant, String, SignatureHeaders)>);

impl PollSignature {
    /// Signature headers for `GET path` on `base`: the last ones if still young enough. A new
    /// one is made on a blocking thread: an RSA signature would hold the hub's one runtime thread
    /// for milliseconds.
    async fn headers(
        &mut self,
        key: &Arc<KeyPair>,
        base: &str,
        path: &str,
    ) -> Result<SignatureHeaders, String> {
        match &self.0 {
            Some((made, for_base, pairs)) if for_base == base && made.elapsed() < POLL_SIGNATURE_REUSE => {
                Ok(pairs.clone())
            }
            _ => {
                let (key, p) = (key.clone(), path.to_string());
                let sig = tokio::task::spawn_blocking(move || sign_request(&key, "GET", &p, b"", Utc::now()))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?;
                let pairs = sig.to_pairs();
                self.0 = Some((std::time::Instant::now(), base.to_string(), pairs.clone()));
                Ok(pairs)
            }
        }
    }
}

async fn poll(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    key: &Arc<KeyPair>,
    session: Option<&SessionClient>,
    signature: &mut PollSignature,
) -> Result<Vec<Signed<CommandEnvelope>>, String> {
    if let Some(session) = session {
        // The envelopes are signed by the cloud key and checked one by one; the session only
        // spares the hub its RSA signature.
        let answer = session
            .send(client, base, reqwest::Method::GET, path, b"", Vec::new(), |r| {
                r.timeout(Duration::from_secs(POLL_WAIT_SECS + 10))
            })
            .await?;
        if !answer.status.is_success() {
            return Err(format!("poll answered {}", answer.status));
        }
        return serde_json::from_slice(&answer.body).map_err(|e| e.to_string());
    }
    let mut req = client.get(format!("{}{path}", base.trim_end_matches('/')));
    for (name, value) in signature.headers(key, base, path).await? {
        req = req.header(name, value);
    }
    let resp = req
        .timeout(Duration::from_secs(POLL_WAIT_SECS + 10))
        .send()
        .await
        .map_err(|e| outpost_shared::error_chain(&e))?;
    if !resp.status().is_success() {
        return Err(format!("poll answered {}", resp.status()));
    }
    resp.json().await.map_err(|e| e.to_string())
}

async fn report(
    client: &reqwest::Client,
    base: &str,
    key: &KeyPair,
    result: &CommandResult,
    session: Option<&SessionClient>,
) -> Result<(), String> {
    if let Some(session) = session {
        // In a session the result travels bare: the session MAC over the request proves who sent
        // it, end to end (a connector only relays it), and spares an RSA signature per command.
        // If no session can be had right now the request is signed, and so is the document.
        let body = |in_session: bool| {
            let json = if in_session {
                serde_json::to_vec(result).map_err(|e| e.to_string())?
            } else {
                let signed = Signed::sign(key, result).map_err(|e| e.to_string())?;
                serde_json::to_vec(&signed).map_err(|e| e.to_string())?
            };
            Ok((json.clone(), json))
        };
        let answer = session
            .send_with(client, base, reqwest::Method::POST, "/v1/commands/result", body, |r| {
                r.header(reqwest::header::CONTENT_TYPE, "application/json")
            })
            .await?;
        let bare = answer.authentic.is_some();
        if answer.status.is_success() {
            return Ok(());
        }
        // A cloud older than bare results in a session answers 400 ("not a signed command
        // result"): the same result goes once more as a signed document, as before sessions.
        if !(bare && answer.status == reqwest::StatusCode::BAD_REQUEST) {
            return Err(format!("result answered {}", answer.status));
        }
        tracing::debug!(command = %result.command_id, "bare result refused; sending it signed");
    }
    let signed = Signed::sign(key, result).map_err(|e| e.to_string())?;
    let body = serde_json::to_vec(&signed).map_err(|e| e.to_string())?;
    let resp = signed_request(client, reqwest::Method::POST, base, "/v1/commands/result", &body, key)?
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| outpost_shared::error_chain(&e))?;
    if !resp.status().is_success() {
        return Err(format!("result answered {}", resp.status()));
    }
    Ok(())
}

impl Executor {
    /// Verifies and runs one command and returns the result to report. A redelivery of an
    /// envelope already answered on this start gets its first result again and runs nothing. A
    /// replay of one accepted before a restart runs nothing and is not answered: its first result
    /// may have been lost, and "refused" would misreport a command that ran.
    pub async fn handle(&self, signed: &Signed<CommandEnvelope>) -> Option<CommandResult> {
        let digest = signed.digest();
        if let Some(first) = self.answered.get(&digest) {
            tracing::debug!(command = %first.command_id, "command delivered again; first result reported again");
            return Some(first);
        }
        let now = Utc::now();
        let me = self.key.machine_id().clone();
        let command = match self.verifier.verify(signed, now) {
            Ok(c) => c,
            Err(refusal @ outpost_shared::keys::CommandRefused::Replayed { .. }) => {
                tracing::warn!(reason = %refusal, "command seen before; nothing was done, nothing reported");
                return None;
            }
            Err(refusal) => {
                // Reported under the id it claims and bound to the exact envelope received, so
                // the cloud records it only against an envelope it really issued.
                let id = signed.peek_unverified().map(|c| c.id).unwrap_or_else(|_| "unreadable".into());
                tracing::warn!(command = %id, reason = %refusal, "command refused; nothing was done");
                return Some(CommandResult::refused(id, me, &refusal, now, digest));
            }
        };
        tracing::info!(command = %command.id, action = %command.action, "running command");
        let (status, output) = match self.run(&command).await {
            Ok(out) => (CommandStatus::Done, out),
            Err(Outcome::Refused(why)) => {
                tracing::warn!(command = %command.id, reason = %why, "command refused");
                (CommandStatus::Refused, json!({"error": why}))
            }
            // Logged where it was decided, with its details.
            Err(Outcome::RefusedWith(output)) => (CommandStatus::Refused, output),
            Err(Outcome::Failed(why)) => {
                tracing::warn!(command = %command.id, error = %why, "command failed");
                (CommandStatus::Failed, json!({"error": why}))
            }
        };
        let result = CommandResult {
            command_id: command.id,
            machine_id: me,
            status,
            output,
            finished_at: Utc::now(),
            envelope: Some(digest.clone()),
        };
        self.answered.put(digest, &result);
        Some(result)
    }

    async fn run(&self, c: &CommandEnvelope) -> Result<Value, Outcome> {
        let p = &c.parameters;
        match c.action.as_str() {
            "ping" => Ok(json!({"pong": true, "version": env!("CARGO_PKG_VERSION")})),
            "sample-now" => {
                let name = p["sensor"]
                    .as_str()
                    .ok_or_else(|| Outcome::Failed("parameter `sensor` is missing".into()))?;
                self.sample_now(name).await
            }
            outpost_shared::managed::APPLY_ACTION => {
                let Some(managed) = &self.managed else {
                    return Err(Outcome::Failed("this hub does not take managed sensors".into()));
                };
                let report = managed.apply(self.verifier.cloud_key(), p).await;
                match report {
                    Ok(r) => Ok(serde_json::to_value(r).expect("a report serialises")),
                    Err(r) => {
                        Err(Outcome::RefusedWith(serde_json::to_value(r).expect("a report serialises")))
                    }
                }
            }
            "reload-config" => {
                let Some(path) = &self.config_path else {
                    return Err(Outcome::Failed("this hub was not started from a config file".into()));
                };
                // Checked now; a valid file takes effect on the next start of the service.
                match outpost_shared::config::load::<crate::HubConfig>(path) {
                    Ok(_) => Ok(
                        json!({"valid": true, "note": "restart the service to apply uplink and buffer changes"}),
                    ),
                    Err(e) => Err(Outcome::Failed(e.to_string())),
                }
            }
            "relay.set" | "relay.toggle" | "relay.set_port" => self.relay(c).await,
            other => Err(Outcome::Refused(format!("unknown action `{other}`"))),
        }
    }

    /// Samples `name` now and answers with that sample's readings, so the cloud's "test now"
    /// shows them; they also reach the buffer like any other.
    async fn sample_now(&self, name: &str) -> Result<Value, Outcome> {
        let Some(answer) = self.sensors.sample_now(name) else {
            return Err(Outcome::Failed(format!(
                "no sensor named `{name}`; known: {}",
                self.sensors.names().join(", ")
            )));
        };
        let samples = match tokio::time::timeout(SAMPLE_NOW_WAIT, answer).await {
            Ok(Ok(samples)) => samples,
            Ok(Err(_)) => {
                return Err(Outcome::Failed(format!("sensor `{name}` was stopped before it sampled")))
            }
            Err(_) => {
                return Err(Outcome::Failed(format!(
                    "sensor `{name}` did not finish its sample within {} s; its readings still arrive \
                     with the others when it does",
                    SAMPLE_NOW_WAIT.as_secs()
                )))
            }
        };
        let readings: Vec<Value> = samples
            .iter()
            .map(|s| json!({"key": s.sensor, "value": s.value, "state": s.state, "unit": s.unit, "message": s.message}))
            .collect();
        Ok(json!({"sampled": name, "readings": readings}))
    }

    async fn relay(&self, c: &CommandEnvelope) -> Result<Value, Outcome> {
        let Some(crate::relay::Relays { handle, settings }) = &self.relays else {
            return Err(Outcome::Failed("no relay card is configured on this hub".into()));
        };
        let p = &c.parameters;
        let card = p["card"]
            .as_u64()
            .filter(|c| (1..=255).contains(c))
            .ok_or_else(|| Outcome::Failed("`card` must be 1 to 255".into()))? as u8;
        let mask = match c.action.as_str() {
            // Only the relays that would change need to be free to move.
            "relay.set_port" => {
                let want = p["state"]
                    .as_u64()
                    .filter(|s| *s <= 255)
                    .ok_or_else(|| Outcome::Failed("`state` must be 0 to 255".into()))?
                    as u8;
                let now = handle.get(card).await.map_err(|e| Outcome::Failed(e.to_string()))?;
                now ^ want
            }
            _ => {
                let relay = p["relay"]
                    .as_u64()
                    .filter(|r| (1..=8).contains(r))
                    .ok_or_else(|| Outcome::Failed("`relay` must be 1 to 8".into()))?;
                1u8 << (relay - 1)
            }
        };
        settings.current().check_remote(card, mask).map_err(|e| Outcome::Refused(e.to_string()))?;
        let state = match c.action.as_str() {
            "relay.set" => {
                let on =
                    p["on"].as_bool().ok_or_else(|| Outcome::Failed("`on` must be true or false".into()))?;
                let relay = mask.trailing_zeros() as u8 + 1;
                handle.switch(card, relay, on).await
            }
            "relay.toggle" => handle.toggle_mask(card, mask).await,
            _ => {
                let s = p["state"]
                    .as_u64()
                    .filter(|s| *s <= 255)
                    .ok_or_else(|| Outcome::Failed("`state` must be 0 to 255".into()))?;
                handle.set_port(card, s as u8).await
            }
        }
        .map_err(|e| Outcome::Failed(e.to_string()))?;
        // The state read back from the card, never the one asked for.
        Ok(json!({"card": card, "state": state}))
    }
}

enum Outcome {
    Refused(String),
    /// Refused, with a structured answer (a `sensors.apply` report) as the result's output.
    RefusedWith(Value),
    Failed(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sensors::{SensorConfig, SensorKind, SensorSet};
    use outpost_shared::keys::MachineId;
    use std::sync::OnceLock;

    #[tokio::test]
    async fn a_poll_signature_is_used_again_for_a_minute_on_one_path_only() {
        let (_, _, hub) = keys();
        let path = "/v1/commands/poll?wait=25";
        let mut sig = PollSignature::default();
        let first = sig.headers(hub, "https://connector:8443", path).await.unwrap();
        assert_eq!(sig.headers(hub, "https://connector:8443", path).await.unwrap(), first);
        // It checks out for that request: a connector takes it as the hub's.
        let mut map = reqwest::header::HeaderMap::new();
        for (name, value) in &first {
            map.insert(*name, value.parse().unwrap());
        }
        let signed = outpost_shared::keys::SignedHeaders::from_header_map(&map).unwrap();
        outpost_shared::keys::verify_request(
            hub.public(),
            &signed,
            "GET",
            path,
            b"",
            Utc::now(),
            outpost_shared::keys::DEFAULT_MAX_SKEW,
        )
        .unwrap();
        // Another hop, or an old one: signed afresh.
        let other = sig.headers(hub, "https://cloud:443", path).await.unwrap();
        assert_ne!(other[2], first[2]);
        if let Some((made, _, _)) = &mut sig.0 {
            *made -= POLL_SIGNATURE_REUSE;
        }
        assert_ne!(sig.headers(hub, "https://cloud:443", path).await.unwrap()[2], other[2]);
    }

    /// Keys are slow to make: one cloud, one impostor and one hub key for all tests.
    fn keys() -> &'static (KeyPair, KeyPair, Arc<KeyPair>) {
        static K: OnceLock<(KeyPair, KeyPair, Arc<KeyPair>)> = OnceLock::new();
        K.get_or_init(|| {
            (
                KeyPair::generate().unwrap(),
                KeyPair::generate().unwrap(),
                Arc::new(KeyPair::generate().unwrap()),
            )
        })
    }

    /// An executor whose only sensor samples solely when triggered, and the channel that shows it.
    async fn executor(
        dir: &std::path::Path,
    ) -> (Executor, tokio::sync::mpsc::Receiver<crate::writer::Batch>) {
        let (cloud, _, hub) = keys();
        let file = dir.join("watched");
        std::fs::write(&file, b"x").unwrap();
        let mut cfg = SensorConfig::new(SensorKind::File);
        cfg.name = Some("f".into());
        cfg.path = Some(file);
        cfg.interval = Some(Duration::from_secs(3600));
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let sensors = SensorSet::build(&[cfg]).unwrap().spawn(tx, CancellationToken::new());
        // The first sample comes at once; what follows can only be a triggered one.
        tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap();
        let verifier = CommandVerifier::open(
            cloud.public().clone(),
            hub.machine_id().clone(),
            &dir.join("replay.log"),
            Utc::now(),
        )
        .unwrap();
        let exec = Executor {
            key: hub.clone(),
            verifier,
            sensors,
            relays: None,
            config_path: None,
            managed: None,
            answered: Answered::default(),
        };
        (exec, rx)
    }

    fn command(signer: &KeyPair, target: &MachineId, ttl: Duration) -> Signed<CommandEnvelope> {
        let env =
            CommandEnvelope::new(target.clone(), "sample-now", json!({"sensor": "file.f"}), Utc::now(), ttl)
                .unwrap();
        Signed::sign(signer, &env).unwrap()
    }

    async fn sampled(rx: &mut tokio::sync::mpsc::Receiver<crate::writer::Batch>) -> bool {
        tokio::time::timeout(Duration::from_millis(1500), rx.recv()).await.is_ok()
    }

    /// A cloud from before bare results: it opens sessions but wants every result signed, and
    /// answers a bare one 400 (with its answer MAC, as it seals every session answer).
    #[tokio::test]
    async fn a_cloud_that_refuses_a_bare_result_gets_it_signed() {
        use axum::http::{HeaderMap, StatusCode};
        use axum::response::IntoResponse;
        use outpost_shared::keys::session::{self, ChallengeAnswer, OpenRequest, TicketKeys};
        let (cloud, _, hub) = keys();
        #[derive(Default)]
        struct Seen {
            bare: usize,
            signed: Vec<CommandResult>,
        }
        let seen = Arc::new(std::sync::Mutex::new(Seen::default()));
        let tickets = Arc::new(TicketKeys::derive(cloud));
        let app = axum::Router::new()
            .route(
                "/v1/machine-session/challenge",
                axum::routing::get({
                    let tickets = tickets.clone();
                    move || async move {
                        // A cloud of an earlier version: RSA-OAEP logins only.
                        axum::Json(ChallengeAnswer {
                            challenge: tickets.challenge(Utc::now().timestamp()).unwrap(),
                            exchange_key: None,
                        })
                    }
                }),
            )
            .route(
                "/v1/machine-session",
                axum::routing::post({
                    let tickets = tickets.clone();
                    move |axum::Json(req): axum::Json<OpenRequest>| async move {
                        let (answer, _) = session::accept_open(
                            cloud,
                            &tickets,
                            &req,
                            hub.public(),
                            Utc::now().timestamp(),
                            Duration::from_secs(3600),
                        )
                        .unwrap();
                        axum::Json(answer)
                    }
                }),
            )
            .route(
                "/v1/commands/result",
                axum::routing::post({
                    let (tickets, seen) = (tickets.clone(), seen.clone());
                    move |headers: HeaderMap, body: axum::body::Bytes| async move {
                        let signed = serde_json::from_slice::<Signed<CommandResult>>(&body);
                        match session::SessionHeaders::from_header_map(&headers).unwrap() {
                            Some(h) => {
                                assert!(signed.is_err(), "in a session the result comes bare first");
                                seen.lock().unwrap().bare += 1;
                                let ticket = tickets.open(&h.ticket, Utc::now().timestamp()).unwrap();
                                let text = b"{\"error\":\"not a signed command result\"}";
                                let mac = session::answer_mac(&ticket.key, h.seq, 400, text);
                                (StatusCode::BAD_REQUEST, [(session::HEADER_ANSWER_MAC, mac)], text.to_vec())
                                    .into_response()
                            }
                            None => {
                                let result = signed.unwrap().verify(hub.public()).unwrap();
                                seen.lock().unwrap().signed.push(result);
                                StatusCode::OK.into_response()
                            }
                        }
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let result = CommandResult {
            command_id: "c1".into(),
            machine_id: hub.machine_id().clone(),
            status: CommandStatus::Done,
            output: json!({"pong": true}),
            finished_at: Utc::now(),
            envelope: Some("digest".into()),
        };
        let sessions = SessionClient::new(hub.clone(), cloud.public().clone());
        let client = reqwest::Client::new();
        report(&client, &base, hub, &result, Some(&sessions)).await.unwrap();
        assert_eq!(sessions.opened(), 1, "the result was first sent in a session");
        let seen = seen.lock().unwrap();
        assert_eq!((seen.bare, seen.signed.clone()), (1, vec![result]));
    }

    #[tokio::test]
    async fn forged_replayed_mistargeted_and_expired_commands_are_refused_and_run_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (cloud, impostor, hub) = keys();
        let (exec, mut rx) = executor(dir.path()).await;
        let me = hub.machine_id().clone();

        let forged = command(impostor, &me, Duration::from_secs(60));
        let r = exec.handle(&forged).await.unwrap();
        assert_eq!(r.status, CommandStatus::Refused, "{r:?}");
        assert_eq!(r.envelope, Some(forged.digest()), "the refusal names the envelope it refuses");
        assert!(!sampled(&mut rx).await, "a forged command ran");

        let elsewhere = command(cloud, impostor.machine_id(), Duration::from_secs(60));
        assert_eq!(exec.handle(&elsewhere).await.unwrap().status, CommandStatus::Refused);
        assert!(!sampled(&mut rx).await, "a command for another machine ran");

        let mut env = CommandEnvelope::new(
            me.clone(),
            "sample-now",
            json!({"sensor": "file.f"}),
            Utc::now(),
            Duration::from_secs(60),
        )
        .unwrap();
        // Expired beyond the 5 minutes of clock skew a hub tolerates.
        env.issued_at -= chrono::Duration::minutes(20);
        env.expires_at = Utc::now() - chrono::Duration::minutes(10);
        let expired = Signed::sign(cloud, &env).unwrap();
        assert_eq!(exec.handle(&expired).await.unwrap().status, CommandStatus::Refused);
        assert!(!sampled(&mut rx).await, "an expired command ran");

        let valid = command(cloud, &me, Duration::from_secs(60));
        let r = exec.handle(&valid).await.unwrap();
        assert_eq!(r.status, CommandStatus::Done, "{r:?}");
        assert_eq!(r.envelope, Some(valid.digest()));
        assert!(sampled(&mut rx).await, "the valid command ran");
        // The answer carries the readings of that sample, for the dashboard's "test now".
        assert_eq!(r.output["sampled"], "file.f");
        let keys: Vec<&str> =
            r.output["readings"].as_array().unwrap().iter().filter_map(|x| x["key"].as_str()).collect();
        assert_eq!(keys, ["file.f.age", "file.f.size"], "{}", r.output);
        // Delivered again (its first answer was lost): the same result, and it does not run again.
        let again = exec.handle(&valid).await.unwrap();
        assert_eq!(again, r, "a redelivery is answered with the first result");
        assert!(!sampled(&mut rx).await, "the redelivered command ran twice");
        // The same id under another signature (a forged copy of a real command) is no redelivery.
        let mut copy = valid.clone();
        copy.signature = forged.signature.clone();
        assert_eq!(exec.handle(&copy).await.unwrap().status, CommandStatus::Refused);
        assert!(!sampled(&mut rx).await, "the forged copy ran");

        // After a restart the replay log still knows the id: nothing runs, nothing is reported.
        drop(exec);
        let (exec, mut rx) = executor(dir.path()).await;
        assert!(exec.handle(&valid).await.is_none());
        assert!(!sampled(&mut rx).await, "the replay after restart ran");
    }
}
