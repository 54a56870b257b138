//! From sensor state changes to alert mails. [`Alerter`] is pure: every call takes `now`, so tests
//! drive it with a fake clock; [`spawn_alerts`] runs it on the real clock and feeds the outbox.
//!
//! The rules:
//! - **What alerts**: a change *to* `warn` or `error`, or *back to* `ok` from `warn`/`error`.
//!   `unknown` never alerts by itself (a sensor that cannot be read is not a new problem), and a
//!   change from `unknown` to `ok` is silent.
//! - **Backlog**: a change whose reading is older than `alerts.max_age` when it arrives (a hub
//!   replaying what it buffered while offline) raises nothing; it happened long ago and a later
//!   fresh change will be compared with the state it left.
//! - **Grouping**: the first alert opens a window of `alerts.group_window`; everything queued until
//!   it closes goes out together, one mail per set of recipients.
//! - **Flapping**: once a sensor has been mailed about, its further changes during
//!   `alerts.quiet_period` are only remembered. When the period ends, one alert is sent if the
//!   sensor's state then differs from the state last mailed (noting how often it changed
//!   meanwhile), and a new quiet period starts; if it is back where it was, nothing is sent. So a
//!   sensor produces at most one alert per quiet period, and the last mail always tells its
//!   current state once things settle.
//! - **Recipients**: the `[[mail.route]]`s matching the machine (id or host name) and sensor, all
//!   of them; `mail.to` when none matches.
//! - **Told elsewhere**: [`Alerter::told`] takes a state someone else already mailed about (a
//!   connector during a cloud outage) as told: nothing is mailed for it, a quiet period starts,
//!   and later changes are compared with it.
//! - **Reminders**: a sensor still in `warn` or `error` `alerts.remind_every` after it was last
//!   mailed about is mailed about again ("STILL ERROR"), until it changes (0 turns reminders off).
//! - **Silences** ([`Silences`], the cloud's acknowledgements and maintenance windows): when the
//!   group window closes, an alert whose sensor is silenced is not mailed and the recipients
//!   count as not told. It is looked at again every [`RECHECK`]: once the silence is over (a
//!   maintenance window ended, an acknowledgement withdrawn) and the sensor is still not in the
//!   state last mailed, it goes out then. A newer change replaces it. Reminders are silenced
//!   the same way.

use super::config::{AlertTiming, MailConfig, Route};
use super::outbox::MailQueue;
use super::{glob_match, html_escape, Mail};
use crate::model::{MailedState, State, Value};
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;

/// How often a silenced alert is looked at again.
pub const RECHECK: std::time::Duration = std::time::Duration::from_secs(10);

/// Why an alert is not mailed now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Silence {
    /// Someone acknowledged the problem; ends when the sensor changes or recovers.
    Acknowledged { by: String },
    /// The machine or its network is in a maintenance window until then.
    Maintenance { until: DateTime<Utc> },
}

/// Whether a sensor's problem may be mailed now: the cloud's acknowledgements and maintenance
/// windows. Asked from inside the alert task, so it must answer from memory, at once.
pub trait Silences: Send + Sync {
    /// `state` is the state about to be mailed, `reading_ts` when the reading that brought it
    /// was taken.
    fn silence(
        &self,
        machine_id: &str,
        sensor: &str,
        state: State,
        reading_ts: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Option<Silence>;
}

/// One sensor's state changed (the cloud sees this at ingest: previous latest vs new latest).
#[derive(Debug, Clone, PartialEq)]
pub struct StateChange {
    pub machine_id: String,
    pub hostname: String,
    pub sensor: String,
    pub old: State,
    pub new: State,
    pub value: Option<Value>,
    pub unit: Option<String>,
    pub message: Option<String>,
    /// When the reading was taken (not when it arrived).
    pub ts: DateTime<Utc>,
}

/// What the alert task takes in.
#[derive(Debug, Clone, PartialEq)]
pub enum AlertEvent {
    /// A sensor's state changed.
    Change(StateChange),
    /// The recipients were already told about this state by someone else; see [`Alerter::told`].
    Told(MailedState),
}

/// What [`Alerter::observe`] did with a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// Queued for the next alert mail.
    Queued,
    /// The sensor is in its quiet period; summed up when it ends.
    Held,
    /// Older than `max_age` on arrival: replayed backlog.
    Stale,
    /// Not a change that alerts (e.g. to or from `unknown`, or no change at all).
    Ignored,
}

#[derive(Debug, Default)]
struct Track {
    /// The state the recipients were last told about.
    told: State,
    quiet_until: Option<DateTime<Utc>>,
    held: Option<StateChange>,
    /// Changes seen during the quiet period.
    flips: u32,
    /// A change not mailed because the sensor was silenced, with when to look again.
    silenced: Option<(StateChange, DateTime<Utc>)>,
    /// The change last mailed, and when to remind of it (while it is a problem).
    reminder: Option<(StateChange, DateTime<Utc>)>,
}

#[derive(Debug)]
struct Pending {
    change: StateChange,
    was: State,
    flips: u32,
    /// A reminder that the sensor is still in the state mailed before.
    again: bool,
}

/// The alert state machine; see the module doc for the rules.
pub struct Alerter {
    timing: AlertTiming,
    routes: Vec<Route>,
    default_to: Vec<String>,
    pending: Vec<Pending>,
    window_start: Option<DateTime<Utc>>,
    tracks: HashMap<(String, String), Track>,
    /// Who sends, when it is not the cloud: `(subject tag, sentence on top of the mail)`.
    origin: Option<(String, String)>,
    silences: Option<Arc<dyn Silences>>,
}

impl std::fmt::Debug for Alerter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alerter")
            .field("pending", &self.pending.len())
            .field("tracks", &self.tracks.len())
            .field("silences", &self.silences.is_some())
            .finish()
    }
}

fn alertable(from: State, to: State) -> bool {
    from != to && (matches!(to, State::Warn | State::Error) || (to == State::Ok && from != State::Unknown))
}

fn dur(d: std::time::Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

impl Alerter {
    pub fn new(cfg: &MailConfig) -> Alerter {
        Alerter {
            timing: cfg.alerts,
            routes: cfg.route.clone(),
            default_to: cfg.to.clone(),
            pending: Vec::new(),
            window_start: None,
            tracks: HashMap::new(),
            origin: None,
            silences: None,
        }
    }

    /// Asks `silences` before each mail; see the module doc.
    pub fn with_silences(mut self, silences: Arc<dyn Silences>) -> Alerter {
        self.silences = Some(silences);
        self
    }

    fn silence(&self, c: &StateChange, now: DateTime<Utc>) -> Option<Silence> {
        self.silences.as_ref()?.silence(&c.machine_id, &c.sensor, c.new, c.ts, now)
    }

    /// Marks every mail as sent by someone other than the cloud: `tag` goes into the subject
    /// (`[Outpost TAG]`), `note` on top of the text and the HTML.
    pub fn with_origin(mut self, tag: &str, note: &str) -> Alerter {
        self.origin = Some((tag.to_string(), note.to_string()));
        self
    }

    /// Takes `state` as already told to the recipients: a pending alert for the same state is
    /// dropped, a quiet period starts (changes meanwhile are held and summed up after it, as after
    /// a mail of our own), and the next change is compared with this state.
    pub fn told(&mut self, m: &MailedState, now: DateTime<Utc>) {
        if let Some(i) = self
            .pending
            .iter()
            .position(|p| p.change.machine_id == m.machine_id && p.change.sensor == m.sensor)
        {
            if self.pending[i].change.new == m.state {
                self.pending.remove(i);
            } else {
                self.pending[i].was = m.state;
            }
            if self.pending.is_empty() {
                self.window_start = None;
            }
        }
        let t = self.tracks.entry((m.machine_id.clone(), m.sensor.clone())).or_default();
        t.told = m.state;
        t.held = None;
        t.flips = 0;
        t.silenced = None;
        t.reminder = None;
        t.quiet_until = Some(now + dur(self.timing.quiet_period));
    }

    /// Takes one change in; call [`Alerter::poll`] at [`Alerter::next_deadline`] for the mails.
    pub fn observe(&mut self, change: StateChange, now: DateTime<Utc>) -> Observed {
        if now - change.ts > dur(self.timing.max_age) {
            return Observed::Stale;
        }
        let key = (change.machine_id.clone(), change.sensor.clone());
        if let Some(t) = self.tracks.get_mut(&key) {
            // What was silenced is old news now: this change is the sensor's state.
            if t.silenced.as_ref().is_some_and(|(s, _)| s.ts <= change.ts) {
                t.silenced = None;
            }
            if t.quiet_until.is_some_and(|q| q > now) {
                t.flips += 1;
                t.held = Some(change);
                return Observed::Held;
            }
        }
        let baseline = self.tracks.get(&key).map(|t| t.told).unwrap_or(change.old);
        if !alertable(baseline, change.new) {
            return Observed::Ignored;
        }
        let new = change.new;
        self.queue(change, baseline, 0, false, now);
        let quiet_until = now + dur(self.timing.quiet_period);
        let t = self.tracks.entry(key).or_insert_with(|| Track { told: baseline, ..Track::default() });
        t.told = new;
        t.quiet_until = Some(quiet_until);
        Observed::Queued
    }

    fn queue(&mut self, change: StateChange, was: State, flips: u32, again: bool, now: DateTime<Utc>) {
        // With a quiet period shorter than the window the same sensor can come twice: keep one line.
        if let Some(i) = self
            .pending
            .iter()
            .position(|p| p.change.machine_id == change.machine_id && p.change.sensor == change.sensor)
        {
            let was = self.pending[i].was;
            if was == change.new {
                self.pending.remove(i);
            } else {
                self.pending[i] = Pending { change, was, flips: self.pending[i].flips + flips + 1, again };
            }
        } else {
            self.pending.push(Pending { change, was, flips, again });
        }
        if self.pending.is_empty() {
            self.window_start = None;
        } else {
            self.window_start.get_or_insert(now);
        }
    }

    /// When [`Alerter::poll`] has something to do: the group window closing, a quiet period
    /// ending with held changes, a silenced alert to look at again, a reminder.
    pub fn next_deadline(&self) -> Option<DateTime<Utc>> {
        let window = self.window_start.map(|w| w + dur(self.timing.group_window));
        let tracks = self.tracks.values().flat_map(|t| {
            let quiet = t.held.as_ref().and(t.quiet_until);
            [quiet, t.silenced.as_ref().map(|s| s.1), t.reminder.as_ref().map(|r| r.1)]
        });
        window.into_iter().chain(tracks.flatten()).min()
    }

    /// Ends due quiet periods and returns the mails whose group window has closed.
    pub fn poll(&mut self, now: DateTime<Utc>) -> Vec<Mail> {
        let quiet = dur(self.timing.quiet_period);
        let mut released = Vec::new();
        for t in self.tracks.values_mut() {
            if t.quiet_until.is_none_or(|q| q > now) {
                continue;
            }
            match t.held.take() {
                Some(h) if alertable(t.told, h.new) => {
                    let was = t.told;
                    t.told = h.new;
                    t.quiet_until = Some(now + quiet);
                    released.push((h, was, std::mem::take(&mut t.flips)));
                }
                _ => {
                    t.quiet_until = None;
                    t.flips = 0;
                }
            }
        }
        for (h, was, flips) in released {
            self.queue(h, was, flips, false, now);
        }
        self.recheck_silenced(now);
        self.remind(now);
        // Forget calm sensors (memory stays bounded by the sensors in trouble); a sensor in warn or
        // error is remembered so its recovery is mailed even across an `unknown` in between.
        self.tracks.retain(|_, t| {
            t.quiet_until.is_some() || t.silenced.is_some() || matches!(t.told, State::Warn | State::Error)
        });
        match self.window_start {
            Some(w) if now >= w + dur(self.timing.group_window) => {
                self.window_start = None;
                let pending = std::mem::take(&mut self.pending);
                let pending = self.hush(pending, now);
                self.compose(pending)
            }
            _ => Vec::new(),
        }
    }

    /// Takes silenced alerts out of `pending` (the recipients count as not told) and notes when
    /// each mailed sensor is due for a reminder.
    fn hush(&mut self, pending: Vec<Pending>, now: DateTime<Utc>) -> Vec<Pending> {
        let remind = dur(self.timing.remind_every);
        let recheck = dur(RECHECK);
        let mut out = Vec::with_capacity(pending.len());
        for p in pending {
            let silenced = self.silence(&p.change, now);
            let key = (p.change.machine_id.clone(), p.change.sensor.clone());
            let t =
                self.tracks.entry(key).or_insert_with(|| Track { told: p.change.new, ..Track::default() });
            match silenced {
                Some(why) => {
                    tracing::info!(machine = %p.change.hostname, sensor = %p.change.sensor, state = %p.change.new, ?why, "alert silenced");
                    if p.again {
                        t.reminder = Some((p.change, now + recheck));
                    } else {
                        t.told = p.was;
                        t.reminder = None;
                        t.silenced = Some((p.change, now + recheck));
                    }
                }
                None => {
                    let due = matches!(p.change.new, State::Warn | State::Error) && !remind.is_zero();
                    t.reminder = due.then(|| (p.change.clone(), now + remind));
                    out.push(p);
                }
            }
        }
        out
    }

    /// Silenced alerts whose silence is over go out now, if the sensor is still not in the state
    /// last mailed.
    fn recheck_silenced(&mut self, now: DateTime<Utc>) {
        let due: Vec<((String, String), StateChange)> = self
            .tracks
            .iter()
            .filter_map(|(k, t)| match &t.silenced {
                Some((c, at)) if *at <= now => Some((k.clone(), c.clone())),
                _ => None,
            })
            .collect();
        for (key, change) in due {
            let still = self.silence(&change, now).is_some();
            let Some(t) = self.tracks.get_mut(&key) else { continue };
            if still {
                t.silenced = Some((change, now + dur(RECHECK)));
                continue;
            }
            t.silenced = None;
            let was = t.told;
            if alertable(was, change.new) {
                t.told = change.new;
                self.queue(change, was, 0, false, now);
            }
        }
    }

    /// Queues a reminder for each sensor still in the problem last mailed `remind_every` ago.
    fn remind(&mut self, now: DateTime<Utc>) {
        let due: Vec<StateChange> = self
            .tracks
            .values_mut()
            .filter(|t| t.held.is_none() && t.silenced.is_none())
            .filter_map(|t| match t.reminder.take() {
                Some((c, at)) if at <= now && c.new == t.told => Some(c),
                Some((c, at)) if at > now => {
                    t.reminder = Some((c, at));
                    None
                }
                _ => None,
            })
            .collect();
        for c in due {
            // Not if an alert about it is about to go out anyway.
            if !self
                .pending
                .iter()
                .any(|p| p.change.machine_id == c.machine_id && p.change.sensor == c.sensor)
            {
                let was = c.new;
                self.queue(c, was, 0, true, now);
            }
        }
    }

    /// Sends everything pending now, window or not (at shutdown).
    pub fn flush(&mut self) -> Vec<Mail> {
        self.window_start = None;
        let pending = std::mem::take(&mut self.pending);
        self.compose(pending)
    }

    /// Everyone who gets alerts about this sensor.
    pub fn recipients(&self, machine_id: &str, hostname: &str, sensor: &str) -> Vec<String> {
        let mut to = BTreeSet::new();
        for r in &self.routes {
            let machine_ok = r.machines.is_empty()
                || r.machines.iter().any(|p| glob_match(p, machine_id) || glob_match(p, hostname));
            let sensor_ok = r.sensors.is_empty() || r.sensors.iter().any(|p| glob_match(p, sensor));
            if machine_ok && sensor_ok {
                to.extend(r.to.iter().cloned());
            }
        }
        if to.is_empty() {
            to.extend(self.default_to.iter().cloned());
        }
        to.into_iter().collect()
    }

    fn compose(&self, pending: Vec<Pending>) -> Vec<Mail> {
        let mut groups: BTreeMap<Vec<String>, Vec<Pending>> = BTreeMap::new();
        for p in pending {
            let to = self.recipients(&p.change.machine_id, &p.change.hostname, &p.change.sensor);
            if to.is_empty() {
                tracing::warn!(machine = %p.change.hostname, sensor = %p.change.sensor, "alert has no recipient");
                continue;
            }
            groups.entry(to).or_default().push(p);
        }
        groups.into_iter().map(|(to, items)| alert_mail(to, items, self.origin.as_ref())).collect()
    }
}

fn rank(s: State) -> u8 {
    match s {
        State::Error => 0,
        State::Warn => 1,
        State::Unknown => 2,
        State::Ok => 3,
    }
}

fn label(p: &Pending) -> &'static str {
    match (p.change.new, p.again) {
        (State::Error, false) => "ERROR",
        (State::Error, true) => "STILL ERROR",
        (State::Warn, false) => "WARN",
        (State::Warn, true) => "STILL WARN",
        (State::Ok, _) => "OK again",
        (State::Unknown, _) => "UNKNOWN",
    }
}

/// A reading's value with its unit, for people.
pub fn format_value(value: Option<&Value>, unit: Option<&str>) -> String {
    let v = match value {
        None => return String::new(),
        Some(Value::Number(n)) if n.fract() == 0.0 && n.abs() < 1e15 => format!("{n:.0}"),
        Some(Value::Number(n)) => format!("{n:.2}"),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Text(t)) => t.clone(),
    };
    match unit {
        Some(u) if !u.is_empty() => format!("{v} {u}"),
        _ => v,
    }
}

fn alert_mail(to: Vec<String>, mut items: Vec<Pending>, origin: Option<&(String, String)>) -> Mail {
    items.sort_by(|a, b| {
        (rank(a.change.new), &a.change.hostname, &a.change.sensor).cmp(&(
            rank(b.change.new),
            &b.change.hostname,
            &b.change.sensor,
        ))
    });
    let tag = origin.map(|(t, _)| format!("[Outpost {t}]")).unwrap_or_else(|| "[Outpost]".into());
    let subject = if let [p] = items.as_slice() {
        if p.again {
            let since = p.change.ts.format("%Y-%m-%d %H:%M UTC");
            format!("{tag} {} {}: {} (since {since})", label(p), p.change.hostname, p.change.sensor)
        } else {
            format!("{tag} {} {}: {} (was {})", label(p), p.change.hostname, p.change.sensor, p.was)
        }
    } else {
        let mut counts: BTreeMap<u8, (usize, &str)> = BTreeMap::new();
        for p in &items {
            counts.entry(rank(p.change.new)).or_insert((0, label(p))).0 += 1;
        }
        let summary: Vec<String> =
            counts.values().map(|(n, l)| format!("{n} {}", l.to_lowercase())).collect();
        let hosts: BTreeSet<&str> = items.iter().map(|p| p.change.hostname.as_str()).collect();
        let mut host_list: Vec<&str> = hosts.iter().copied().take(3).collect();
        if hosts.len() > 3 {
            host_list.push("...");
        }
        format!("{tag} {} alerts: {} ({})", items.len(), summary.join(", "), host_list.join(", "))
    };
    let note = origin.map(|(_, n)| n.as_str()).unwrap_or("");
    let mut text = format!("Outpost: {} sensor state change(s)\n\n", items.len());
    if !note.is_empty() {
        text = format!("{note}\n\n{text}");
    }
    let mut rows = String::new();
    for p in &items {
        let c = &p.change;
        let value = format_value(c.value.as_ref(), c.unit.as_deref());
        let ts = c.ts.format("%Y-%m-%d %H:%M:%S UTC");
        if p.again {
            text.push_str(&format!(
                "{:<8} {} / {}: {} since the reading below",
                label(p),
                c.hostname,
                c.sensor,
                c.new
            ));
        } else {
            text.push_str(&format!("{:<8} {} / {}: {} -> {}", label(p), c.hostname, c.sensor, p.was, c.new));
        }
        if !value.is_empty() {
            text.push_str(&format!(", value {value}"));
        }
        if let Some(m) = &c.message {
            text.push_str(&format!(", \"{m}\""));
        }
        text.push_str(&format!(" (at {ts}, machine {})", c.machine_id));
        if p.flips > 0 {
            text.push_str(&format!(" [changed {} more time(s) meanwhile]", p.flips));
        }
        text.push('\n');
        let colour = match c.new {
            State::Error => "#c62828",
            State::Warn => "#ef6c00",
            State::Ok => "#2e7d32",
            State::Unknown => "#616161",
        };
        rows.push_str(&format!(
            "<tr><td style=\"color:{colour};font-weight:bold\">{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td></tr>\n",
            html_escape(label(p)),
            html_escape(&c.hostname),
            html_escape(&c.sensor),
            html_escape(p.was.as_str()),
            html_escape(&value),
            html_escape(c.message.as_deref().unwrap_or("")),
            ts,
        ));
    }
    let html = format!(
        "<!DOCTYPE html><html><body style=\"font-family:sans-serif\">\
         {}<p>Outpost: {} sensor state change(s)</p>\
         <table border=\"1\" cellpadding=\"4\" cellspacing=\"0\">\
         <tr><th>State</th><th>Machine</th><th>Sensor</th><th>Was</th><th>Value</th><th>Message</th><th>Time</th></tr>\n\
         {rows}</table></body></html>",
        if note.is_empty() { String::new() } else { format!("<p><b>{}</b></p>", html_escape(note)) },
        items.len()
    );
    Mail { to, subject, text, html: Some(html), attachments: Vec::new() }
}

/// Capacity of the channel into [`spawn_alerts`]. When it is full the producer's `try_send` fails
/// and that change is dropped (and should be logged there): ingest must never wait on mail.
pub const CHANNEL_CAPACITY: usize = 1024;

/// Runs `alerter` on the real clock: takes changes from `rx`, puts finished mails in `outbox`.
/// Pending alerts are flushed to the outbox on shutdown, so a restart does not swallow them.
pub fn spawn_alerts(
    mut alerter: Alerter,
    mut rx: tokio::sync::mpsc::Receiver<AlertEvent>,
    outbox: impl MailQueue,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tokio::pin!(shutdown);
        let far = std::time::Duration::from_secs(3600);
        loop {
            let wait =
                alerter.next_deadline().map(|d| (d - Utc::now()).to_std().unwrap_or_default()).unwrap_or(far);
            tokio::select! {
                event = rx.recv() => match event {
                    Some(AlertEvent::Change(c)) => {
                        alerter.observe(c, Utc::now());
                    }
                    Some(AlertEvent::Told(m)) => alerter.told(&m, Utc::now()),
                    None => break,
                },
                _ = tokio::time::sleep(wait) => {}
                _ = &mut shutdown => break,
            }
            for mail in alerter.poll(Utc::now()) {
                if let Err(e) = outbox.enqueue(&mail).await {
                    tracing::error!(error = %e, subject = %mail.subject, "alert mail lost: outbox failed");
                }
            }
        }
        // Close the window early rather than lose what is pending.
        for mail in alerter.flush() {
            if let Err(e) = outbox.enqueue(&mail).await {
                tracing::error!(error = %e, subject = %mail.subject, "alert mail lost: outbox failed");
            }
        }
    })
}
