//! Commands by mail (`[mail_commands]`, off by default): an SMTP listener on the LAN ([`smtp`])
//! takes a command from the `Subject:` of a mail and answers by mail through the connector's
//! outbox.
//!
//! Subjects, the last word always being the sender's current 6-digit TOTP code (`outpost_shared::totp`):
//! - `STATUS 123456` or `STATUS <machine> 123456`: a status mail from what the connector holds
//!   (every hub it takes readings from and their sensors' latest states), even while the cloud is
//!   unreachable;
//! - `RELAY <machine> <card> <relay> ON|OFF 123456` (write permission needed): the connector asks
//!   the cloud, with its signed request, to issue a signed `relay.set` to that machine (which must
//!   be in the connector's network); the hub verifies the cloud's signature as for any command.
//!   The cloud's audit trail names the sender. The answer tells the command's outcome.
//!
//! Who may: the connection must come from `allow_from`; envelope sender and `From:` must be one
//! configured sender (others are refused at MAIL FROM or dropped); the code must be right for the
//! current 30-second step or one either side; a code is used once (each sender's last used step is
//! remembered on disk, so a code, and any older one, is refused afterwards, and so is a mail whose
//! Message-ID was seen before); five wrong codes within 15 minutes lock the sender out for the rest
//! of that time. A refusal is logged with its reason; a configured sender gets a refusal mail, an
//! unknown or mismatched one gets nothing (no mail to forged addresses).

pub mod message;
pub mod smtp;
#[cfg(test)]
mod tests;
pub use outpost_shared::totp;

use super::config::MailCommands;
use super::outage::Watch;
use outpost_shared::keys::KeyPair;
use outpost_shared::mail::report::{self, MachineStatus, SensorStatus};
use outpost_shared::mail::{Mail, Outbox};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

/// Wrong codes allowed per sender within [`LOCKOUT`].
const MAX_FAILURES: u32 = 5;
const LOCKOUT: Duration = Duration::from_secs(15 * 60);
/// Message-IDs are remembered this long (well past any code's validity).
const REMEMBER_IDS: u64 = 7 * 86400;
/// Messages waiting for the gateway; when full the SMTP client is told to try later.
const QUEUE: usize = 32;
/// Commands carried out at once.
const RUNNING: usize = 4;
/// How long an answer waits for a relay command's outcome before saying it is still pending.
const OUTCOME_WAIT: Duration = Duration::from_secs(60);

/// A network in CIDR notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Cidr, String> {
        let (a, p) = s.trim().split_once('/').unwrap_or((s.trim(), ""));
        let addr: IpAddr = a.parse().map_err(|_| format!("`{a}` is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix =
            if p.is_empty() { max } else { p.parse().map_err(|_| format!("bad prefix length `{p}`"))? };
        if prefix > max {
            return Err(format!("prefix length {prefix} is above {max}"));
        }
        Ok(Cidr { addr, prefix })
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 client on a dual-stack socket shows as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        let bits = |ip: IpAddr| -> u128 {
            match ip {
                IpAddr::V4(v) => u32::from(v) as u128,
                IpAddr::V6(v) => u128::from(v),
            }
        };
        let width = if self.addr.is_ipv4() { 32 } else { 128 };
        if ip.is_ipv4() != self.addr.is_ipv4() {
            return false;
        }
        let shift = width - self.prefix as u32;
        let mask = if shift >= 128 { 0 } else { (!0u128) << shift };
        bits(ip) & mask == bits(self.addr) & mask
    }
}

/// A command read from a subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Status(Option<String>),
    Relay { machine: String, card: u8, relay: u8, on: bool },
}

impl Command {
    fn writes(&self) -> bool {
        matches!(self, Command::Relay { .. })
    }
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Status(None) => write!(f, "STATUS"),
            Command::Status(Some(m)) => write!(f, "STATUS {m}"),
            Command::Relay { machine, card, relay, on } => {
                write!(f, "RELAY {machine} {card} {relay} {}", if *on { "ON" } else { "OFF" })
            }
        }
    }
}

const USAGE: &str = "write the subject as `STATUS CODE`, `STATUS <machine> CODE` or \
                     `RELAY <machine> <card> <relay> ON|OFF CODE`, CODE being your current 6-digit code";

/// Reads `subject` as a command and the code at its end.
pub fn parse_subject(subject: &str) -> Result<(Command, String), String> {
    let words: Vec<&str> = subject.split_whitespace().collect();
    let Some((code, rest)) = words.split_last() else { return Err(format!("empty subject; {USAGE}")) };
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("no 6-digit code at the end; {USAGE}"));
    }
    let cmd = match rest {
        [v] if v.eq_ignore_ascii_case("STATUS") => Command::Status(None),
        [v, m] if v.eq_ignore_ascii_case("STATUS") => Command::Status(Some(m.to_string())),
        [v, m, card, relay, state] if v.eq_ignore_ascii_case("RELAY") => {
            let card: u8 = card.parse().ok().filter(|c| *c >= 1).ok_or("cards are numbered 1 to 255")?;
            let relay: u8 =
                relay.parse().ok().filter(|r| (1..=8).contains(r)).ok_or("relays are numbered 1 to 8")?;
            let on = match state.to_ascii_uppercase().as_str() {
                "ON" => true,
                "OFF" => false,
                _ => return Err("the relay state must be ON or OFF".into()),
            };
            Command::Relay { machine: m.to_string(), card, relay, on }
        }
        _ => return Err(format!("unknown command; {USAGE}")),
    };
    Ok((cmd, code.to_string()))
}

struct SenderKey {
    secret: Zeroizing<Vec<u8>>,
    write: bool,
}

/// The signed link to the cloud, for relay commands.
#[derive(Clone)]
pub(crate) struct CloudLink {
    pub client: reqwest::Client,
    pub base: String,
    pub key: Arc<KeyPair>,
}

/// What the gateway decided about a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Not answered (an unknown or mismatched sender): only logged.
    Drop(String),
    /// Answered with a refusal mail to `to`.
    Refuse { to: String, reason: String },
    /// Authenticated and allowed.
    Run { to: String, command: Command },
}

/// The gateway's state: senders, replay memory, lockouts.
pub(crate) struct Gateway {
    senders: HashMap<String, SenderKey>,
    outbox: Outbox,
    /// sender → last used step (be64).
    steps: sled::Tree,
    /// Message-ID → when seen (unix seconds, be64).
    ids: sled::Tree,
    failures: Mutex<HashMap<String, (u32, Instant)>>,
    watch: Arc<Watch>,
    cloud: Option<CloudLink>,
    /// This connector, for answers.
    name: String,
}

/// Why the gateway cannot start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("mail_commands.sender `{address}`: {detail}")]
    Secret { address: String, detail: String },
    #[error("mail gateway state: {0}")]
    Store(#[from] outpost_shared::mail::OutboxError),
    #[error("mail_commands.listen {addr}: {source}")]
    Listen { addr: std::net::SocketAddr, source: std::io::Error },
}

impl Gateway {
    pub(crate) fn new(
        cfg: &MailCommands,
        key: &KeyPair,
        outbox: Outbox,
        watch: Arc<Watch>,
        cloud: Option<CloudLink>,
        name: String,
    ) -> Result<Gateway, GatewayError> {
        let mut senders = HashMap::new();
        for s in &cfg.senders {
            let secret = if outpost_shared::keys::is_sealed(&s.secret) {
                outpost_shared::keys::unseal(key, &s.secret)
                    .map_err(|e| GatewayError::Secret { address: s.address.clone(), detail: e.to_string() })?
                    .expose()
                    .to_string()
            } else {
                s.secret.clone()
            };
            let bytes = totp::decode_secret(&secret)
                .map_err(|e| GatewayError::Secret { address: s.address.clone(), detail: e.to_string() })?;
            senders.insert(
                s.address.to_ascii_lowercase(),
                SenderKey { secret: Zeroizing::new(bytes), write: s.write },
            );
        }
        Ok(Gateway {
            senders,
            steps: outbox.tree("gateway_steps")?,
            ids: outbox.tree("gateway_message_ids")?,
            outbox,
            failures: Mutex::default(),
            watch,
            cloud,
            name,
        })
    }

    /// Decides about one message at Unix time `now`. Remembers a code (and Message-ID) it accepted
    /// as used; the caller makes that durable with [`Outbox::flush`] before acting.
    pub(crate) fn decide(&self, env: &smtp::Envelope, now: u64) -> Decision {
        let h = match message::parse(&env.data) {
            Ok(h) => h,
            Err(e) => return self.refuse_or_drop(&env.mail_from, format!("unreadable message: {e}")),
        };
        let Some(from) = h.from.clone() else { return Decision::Drop("no From: address".into()) };
        if from != env.mail_from {
            return Decision::Drop(format!(
                "From: {from} differs from the envelope sender {}",
                env.mail_from
            ));
        }
        let Some(sender) = self.senders.get(&from) else {
            return Decision::Drop(format!("unknown sender {from}"));
        };
        let refuse = |reason: String| Decision::Refuse { to: from.clone(), reason };
        if self.locked_out(&from) {
            return refuse("too many wrong codes; wait 15 minutes".into());
        }
        let Some(subject) = h.subject.as_deref() else { return refuse(format!("no subject; {USAGE}")) };
        let (command, code) = match parse_subject(subject) {
            Ok(x) => x,
            Err(e) => return refuse(e),
        };
        let Some(step) = totp::verify(&sender.secret, &code, now) else {
            self.failed(&from);
            return refuse("wrong code (check the clock of the device that makes it)".into());
        };
        // Both checks are atomic, so two copies of one mail handled at once cannot both pass.
        if let Some(id) = &h.message_id {
            if !matches!(self.ids.insert(id.as_bytes(), &now.to_be_bytes()), Ok(None)) {
                return refuse(format!("this mail (Message-ID {id}) was already used; a mail is taken once"));
            }
        }
        let last = self.steps.get(from.as_bytes()).ok().flatten();
        let last_step = last.as_ref().and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes));
        // Used from now on, whatever comes next: a captured code is worth nothing.
        let taken = last_step.is_none_or(|l| step > l)
            && matches!(
                self.steps.compare_and_swap(from.as_bytes(), last.as_deref(), Some(&step.to_be_bytes()[..])),
                Ok(Ok(()))
            );
        if !taken {
            return refuse("this code was already used; wait for the next code".into());
        }
        if command.writes() && !sender.write {
            return refuse(format!("{from} may not switch relays (no write permission)"));
        }
        Decision::Run { to: from, command }
    }

    fn refuse_or_drop(&self, from: &str, reason: String) -> Decision {
        if self.senders.contains_key(from) {
            Decision::Refuse { to: from.to_string(), reason }
        } else {
            Decision::Drop(reason)
        }
    }

    fn locked_out(&self, sender: &str) -> bool {
        let f = self.failures.lock().unwrap();
        f.get(sender).is_some_and(|(n, since)| *n >= MAX_FAILURES && since.elapsed() < LOCKOUT)
    }

    fn failed(&self, sender: &str) {
        let mut f = self.failures.lock().unwrap();
        let e = f.entry(sender.to_string()).or_insert((0, Instant::now()));
        if e.1.elapsed() >= LOCKOUT {
            *e = (0, Instant::now());
        }
        e.0 += 1;
    }

    /// Forgets Message-IDs older than [`REMEMBER_IDS`] (their codes are long invalid).
    fn prune(&self, now: u64) {
        for item in self.ids.iter() {
            let Ok((k, v)) = item else { break };
            let seen = v.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(0);
            if now.saturating_sub(seen) > REMEMBER_IDS {
                let _ = self.ids.remove(k);
            }
        }
    }

    async fn send(&self, mail: Mail) {
        if let Err(e) = self.outbox.enqueue(&mail).await {
            tracing::error!(error = %e, subject = %mail.subject, "mail gateway: answer lost, outbox failed");
        }
    }

    /// The answer to STATUS: every hub the connector knows, or one.
    fn status(&self, to: String, machine: Option<&str>) -> Mail {
        let hubs = self.watch.hubs();
        let mut machines: Vec<MachineStatus> = hubs
            .iter()
            .filter(|(id, h)| machine.is_none_or(|m| *id == m || h.hostname.eq_ignore_ascii_case(m)))
            .map(|(id, h)| MachineStatus {
                machine_id: id.clone(),
                hostname: h.hostname.clone(),
                last_seen: h.last_seen,
                sensors: h
                    .sensors
                    .iter()
                    .map(|(k, s)| SensorStatus {
                        sensor: k.clone(),
                        state: s.state,
                        value: Some(s.value.clone()),
                        unit: s.unit.clone(),
                        ts: s.ts,
                    })
                    .collect(),
            })
            .collect();
        machines.sort_by(|a, b| (&a.hostname, &a.machine_id).cmp(&(&b.hostname, &b.machine_id)));
        let cloud = if self.watch.in_outage() {
            "the cloud is unreachable (the connector mails alerts itself)"
        } else {
            "the cloud is reachable"
        };
        let now = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC");
        let summary = match machine {
            Some(m) if machines.is_empty() => {
                let mut known: Vec<&str> = hubs.values().map(|h| h.hostname.as_str()).collect();
                known.sort();
                format!(
                    "No machine `{m}` sends through connector {} ({now}). Known: {}.",
                    self.name,
                    known.join(", ")
                )
            }
            _ => format!(
                "Status from connector {} at {now}: {} machine(s); {cloud}.",
                self.name,
                machines.len()
            ),
        };
        let title = format!("connector {}", self.name);
        let subject = match machine {
            Some(m) => format!("[Outpost] STATUS {m}"),
            None => "[Outpost] STATUS".to_string(),
        };
        report::status(subject, &title, &summary, &machines, vec![to])
    }

    /// Asks the cloud to issue the relay command and waits (bounded) for its outcome.
    async fn relay(&self, sender: &str, message_id: Option<&str>, cmd: &Command) -> String {
        let Command::Relay { machine, card, relay, on } = cmd else { return String::new() };
        let Some(cloud) = &self.cloud else {
            return "refused: this connector has no cloud configured".into();
        };
        let body = serde_json::json!({"machine": machine, "card": card, "relay": relay, "on": on,
            "sender": sender, "message_id": message_id});
        let created = match signed(cloud, "POST", "/v1/mail-commands", Some(&body)).await {
            Ok(v) => v,
            Err(e) => return format!("not done: {e}"),
        };
        let Some(id) = created["command_id"].as_str().map(str::to_string) else {
            return format!("not done: the cloud answered {created}");
        };
        tracing::info!(sender, command = %cmd, command_id = %id, "mail command issued by the cloud");
        let deadline = Instant::now() + OUTCOME_WAIT;
        let mut last = serde_json::Value::Null;
        while Instant::now() < deadline {
            match signed(cloud, "GET", &format!("/v1/mail-commands/{id}"), None).await {
                Ok(v) => {
                    let status = v["status"].as_str().unwrap_or("").to_string();
                    last = v;
                    if matches!(status.as_str(), "done" | "failed" | "refused" | "expired") {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, command_id = %id, "mail gateway: cannot read the command's status")
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let status = last["status"].as_str().unwrap_or("pending");
        format!("{status} (command {id}; result {})", last["result"])
    }

    /// Handles one accepted message: decides, logs, answers, acts.
    pub(crate) async fn handle(self: Arc<Self>, env: smtp::Envelope) {
        let now = chrono::Utc::now().timestamp().max(0) as u64;
        let h = message::parse(&env.data).ok();
        let message_id = h.as_ref().and_then(|h| h.message_id.clone());
        let subject = h.as_ref().and_then(|h| h.subject.clone()).unwrap_or_default();
        let decision = self.decide(&env, now);
        // The used code and Message-ID are on disk before anything is done or answered.
        if let Err(e) = self.outbox.flush().await {
            tracing::error!(error = %e, "mail gateway: cannot store used codes; command not run");
            return;
        }
        self.prune(now);
        let (peer, sender) = (env.peer, env.mail_from.as_str());
        let id_shown = message_id.as_deref().unwrap_or("-");
        match decision {
            Decision::Drop(reason) => {
                tracing::warn!(%peer, sender, message_id = id_shown, %reason, "mail command refused (no answer)");
            }
            Decision::Refuse { to, reason } => {
                tracing::warn!(%peer, sender, message_id = id_shown, %reason, "mail command refused");
                let text = format!(
                    "Your mail command was refused: {reason}.\n\nSubject: {subject}\nMessage-ID: {}\nConnector: {}\n",
                    message_id.as_deref().unwrap_or("-"),
                    self.name
                );
                self.send(Mail {
                    to: vec![to],
                    subject: "[Outpost] Mail command refused".into(),
                    text,
                    html: None,
                    attachments: vec![],
                })
                .await;
            }
            Decision::Run { to, command } => {
                tracing::info!(%peer, sender, message_id = id_shown, command = %command, "mail command accepted");
                let answer = match &command {
                    Command::Status(m) => self.status(to, m.as_deref()),
                    Command::Relay { .. } => {
                        let outcome = self.relay(&to, message_id.as_deref(), &command).await;
                        tracing::info!(sender, command = %command, %outcome, "mail command finished");
                        Mail {
                            to: vec![to],
                            subject: format!(
                                "[Outpost] {command}: {}",
                                outcome.split(' ').next().unwrap_or("")
                            ),
                            text: format!("{command}: {outcome}\n\nConnector: {}\n", self.name),
                            html: None,
                            attachments: vec![],
                        }
                    }
                };
                self.send(answer).await;
            }
        }
    }
}

/// A request to the cloud signed with the connector's key; the JSON answer, or why not.
async fn signed(
    cloud: &CloudLink,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<serde_json::Value, String> {
    let bytes = body.map(|b| serde_json::to_vec(b).expect("serialises")).unwrap_or_default();
    let sig = outpost_shared::keys::sign_request(&cloud.key, method, path, &bytes, chrono::Utc::now())
        .map_err(|e| e.to_string())?;
    let url = format!("{}{path}", cloud.base);
    let mut req = match method {
        "POST" => cloud.client.post(url).header("content-type", "application/json").body(bytes),
        _ => cloud.client.get(url),
    };
    for (name, value) in sig.to_pairs() {
        req = req.header(name, value);
    }
    let resp = req.send().await.map_err(|e| {
        format!(
            "the cloud cannot be reached ({}); commands need the cloud to sign them, try again later",
            outpost_shared::error_chain(&e)
        )
    })?;
    let status = resp.status();
    let v: serde_json::Value = resp.json().await.unwrap_or(serde_json::Value::Null);
    if status.is_success() {
        Ok(v)
    } else {
        Err(format!("the cloud refused: {}", v["error"].as_str().unwrap_or(status.as_str())))
    }
}

/// Starts the listener and the worker; returns the address bound.
pub(crate) async fn start(
    cfg: &MailCommands,
    gateway: Gateway,
    tls: Option<Arc<rustls::ServerConfig>>,
    hostname: String,
    shutdown: CancellationToken,
) -> Result<std::net::SocketAddr, GatewayError> {
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| GatewayError::Listen { addr: cfg.listen, source })?;
    let addr = listener.local_addr().map_err(|source| GatewayError::Listen { addr: cfg.listen, source })?;
    let settings = smtp::Settings {
        hostname,
        max_message_size: cfg.max_message_size as usize,
        max_connections: cfg.max_connections,
        idle_timeout: cfg.idle_timeout,
        session_timeout: cfg.session_timeout,
        allow_from: cfg.allow_from.iter().filter_map(|a| a.parse().ok()).collect(),
        require_tls: cfg.require_tls,
    };
    let gateway = Arc::new(gateway);
    let (tx, mut rx) = tokio::sync::mpsc::channel(QUEUE);
    let acceptor = tls.filter(|_| cfg.starttls).map(tokio_rustls::TlsAcceptor::from);
    smtp::serve(listener, settings, acceptor, gateway.clone(), tx, shutdown.clone());
    tokio::spawn(async move {
        let running = Arc::new(tokio::sync::Semaphore::new(RUNNING));
        loop {
            let env = tokio::select! {
                _ = shutdown.cancelled() => return,
                e = rx.recv() => match e { Some(e) => e, None => return },
            };
            let Ok(permit) = running.clone().acquire_owned().await else { return };
            let g = gateway.clone();
            tokio::spawn(async move {
                g.handle(env).await;
                drop(permit);
            });
        }
    });
    tracing::info!(%addr, "mail commands: listening");
    Ok(addr)
}

impl smtp::Policy for Gateway {
    fn known_sender(&self, address: &str) -> bool {
        self.senders.contains_key(address)
    }
}
