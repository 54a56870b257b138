//! The blocking driver: one owner of the serial port, speaking the card protocol frame by frame.
//! It runs on its own thread behind [`RelayHandle`](super::RelayHandle) (serialport is blocking)
//! and directly in `outpost relay`, which has nothing else to do while it waits.

use super::config::{DriverSettings, RestoreMask};
use super::error::RelayError;
use super::protocol::{
    CardOptions, Command, Frame, BAUD_RATE, BROADCAST, ERROR_REPLY, FRAME_LEN, FRAME_TIME,
};
use outpost_shared::backoff::Backoff;
use serialport::{ClearBuffer, DataBits, FlowControl, Parity, SerialPort, StopBits};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::sync::watch;

#[cfg(unix)]
type NativePort = serialport::TTYPort;
#[cfg(windows)]
type NativePort = serialport::COMPort;

/// What the driver knows about the chain, published after every exchange. Only states read back
/// from a card appear here; a state the driver merely asked for never does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The port is open and the cards were counted.
    pub connected: bool,
    /// Cards counted by the last SETUP (kept while disconnected, so readers know what is missing).
    pub cards: u8,
    /// Firmware version byte of each card (index = card - 1), as answered to SETUP.
    pub firmware: Vec<u8>,
    /// Relay states last read back from each card; `None` until read since the last (re)connect.
    pub states: Vec<Option<u8>>,
    /// Power-ups noticed per card since the driver started (see the rule in the module docs).
    pub power_ups: Vec<u32>,
    /// The last communication problem, cleared by the next success.
    pub last_error: Option<String>,
}

/// The open port, claimed exclusively (TIOCEXCL and flock, by serialport). serialport gives up
/// the claim when the port is dropped; that matters on a pseudo-terminal, whose exclusive flag
/// would otherwise outlive us while the simulator keeps the other side open.
struct Link {
    port: NativePort,
}

enum Read4 {
    Frame([u8; FRAME_LEN]),
    /// Nothing, or only part of a frame, arrived in time.
    Timeout {
        partial: bool,
    },
}

impl Link {
    fn open(path: &Path) -> Result<Link, RelayError> {
        let port = serialport::new(path.to_string_lossy(), BAUD_RATE)
            .data_bits(DataBits::Eight)
            .parity(Parity::None)
            .stop_bits(StopBits::One)
            .flow_control(FlowControl::None)
            .timeout(Duration::from_millis(50))
            .open_native()
            .map_err(|source| match source.kind() {
                serialport::ErrorKind::NoDevice => RelayError::PortBusy { path: path.to_path_buf() },
                serialport::ErrorKind::Io(io::ErrorKind::NotFound) => {
                    RelayError::PortMissing { path: path.to_path_buf() }
                }
                serialport::ErrorKind::Io(io::ErrorKind::PermissionDenied) => {
                    RelayError::PortDenied { path: path.to_path_buf() }
                }
                _ => RelayError::Open { path: path.to_path_buf(), source },
            })?;
        Ok(Link { port })
    }

    fn clear_input(&mut self) -> io::Result<()> {
        self.port.clear(ClearBuffer::Input).map_err(io::Error::from)
    }

    fn send(&mut self, frame: Frame) -> io::Result<()> {
        self.port.write_all(&frame.encode())
    }

    /// Reads exactly one frame's worth of bytes, never more, so the next frame stays aligned.
    fn read4(&mut self, deadline: Instant) -> io::Result<Read4> {
        let mut buf = [0u8; FRAME_LEN];
        let mut got = 0;
        while got < FRAME_LEN {
            let now = Instant::now();
            if now >= deadline {
                return Ok(Read4::Timeout { partial: got > 0 });
            }
            self.port.set_timeout(deadline - now).map_err(io::Error::from)?;
            match self.port.read(&mut buf[got..]) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "serial port closed")),
                Ok(n) => got += n,
                Err(e) if matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::Interrupted) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Read4::Frame(buf))
    }

    /// Throws away whatever arrives until the line has been quiet for `quiet`: the way back to
    /// frame boundaries after garbage, a half frame or a card's power-up noise.
    fn drain(&mut self, quiet: Duration) -> io::Result<()> {
        self.clear_input()?;
        let give_up = Instant::now() + Duration::from_millis(500);
        let mut buf = [0u8; 64];
        while Instant::now() < give_up {
            self.port.set_timeout(quiet).map_err(io::Error::from)?;
            match self.port.read(&mut buf) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "serial port closed")),
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::TimedOut => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// How one command/reply exchange ended.
enum Outcome {
    /// The addressed card answered with the expected code.
    Reply(Frame),
    /// Our own frame came back: no card in the chain has that address.
    Echo,
    /// Nothing arrived in time.
    Silent,
    /// Bytes that are no frame, or a card's error answer (255: it got a damaged frame).
    Garbage(Option<Frame>),
}

pub(crate) struct Driver {
    settings: DriverSettings,
    link: Option<Link>,
    snap: Snapshot,
    published: watch::Sender<Snapshot>,
    backoff: Backoff,
    next_attempt: Instant,
    /// Set by [`Driver::close`]: the port stays closed for good.
    closed: bool,
    /// Set while (re)counting the chain, so that an echo there is an answer, not a reason to
    /// start counting again.
    establishing: bool,
}

impl Driver {
    pub(crate) fn set_restore(&mut self, restore: BTreeMap<u8, RestoreMask>) {
        self.settings.restore = restore;
    }

    pub(crate) fn new(settings: DriverSettings) -> Driver {
        let min = settings.reconnect_min.max(Duration::from_millis(1));
        let backoff = Backoff::new(min, settings.reconnect_max.max(min), 0.2)
            .expect("backoff bounds are ordered and jitter is in range");
        Driver {
            settings,
            link: None,
            snap: Snapshot::default(),
            published: watch::channel(Snapshot::default()).0,
            backoff,
            next_attempt: Instant::now(),
            establishing: false,
            closed: false,
        }
    }

    /// Closes the port for good; later requests fail with [`RelayError::Stopped`].
    pub(crate) fn close(&mut self) {
        self.closed = true;
        self.link = None;
        self.snap.connected = false;
        self.snap.states.iter_mut().for_each(|s| *s = None);
        self.publish();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.published.subscribe()
    }

    pub(crate) fn port(&self) -> &Path {
        &self.settings.port
    }

    /// True while the port is closed and a background attempt to reopen it is due or pending.
    pub(crate) fn is_disconnected(&self) -> bool {
        self.link.is_none()
    }

    pub(crate) fn until_next_attempt(&self) -> Duration {
        self.next_attempt.saturating_duration_since(Instant::now())
    }

    fn publish(&self) {
        self.published.send_if_modified(|s| {
            if *s == self.snap {
                return false;
            }
            *s = self.snap.clone();
            true
        });
    }

    /// Worst-case wait for an answer: the configured slack plus one frame time per link of the
    /// ring, which is what a real chain needs at 19200 baud. Before the cards are counted, the
    /// longest chain (255 cards) is assumed.
    fn timeout(&self) -> Duration {
        let links = match self.snap.cards {
            0 => 256,
            n => u32::from(n) + 1,
        };
        self.settings.reply_timeout + FRAME_TIME * links
    }

    fn quiet(&self) -> Duration {
        (FRAME_TIME * 4).max(Duration::from_millis(10))
    }

    /// The port failed under us: forget it (and every state, which is no longer known) and let
    /// the next request or the background loop reopen it.
    fn lost(&mut self, source: io::Error) -> RelayError {
        let err = RelayError::Disconnected { path: self.settings.port.clone(), source };
        if self.link.take().is_some() {
            tracing::warn!(port = %self.settings.port.display(), error = %err, "relay port lost");
        }
        self.snap.connected = false;
        self.snap.states.iter_mut().for_each(|s| *s = None);
        self.snap.last_error = Some(err.to_string());
        self.next_attempt = Instant::now();
        self.publish();
        err
    }

    fn link(&mut self) -> Result<&mut Link, RelayError> {
        match self.link {
            Some(ref mut l) => Ok(l),
            None => Err(RelayError::Disconnected {
                path: self.settings.port.clone(),
                source: io::Error::new(io::ErrorKind::NotConnected, "port not open"),
            }),
        }
    }

    fn drain(&mut self) -> Result<(), RelayError> {
        let quiet = self.quiet();
        let r = self.link()?.drain(quiet);
        r.map_err(|e| self.lost(e))
    }

    /// Sends `sent` once and waits for its answer. Late answers to earlier commands are skipped.
    fn exchange(&mut self, sent: Frame, timeout: Duration) -> Result<Outcome, RelayError> {
        let expected = Command::from_code(sent.code).map(Command::reply_code);
        let link = self.link()?;
        let result = (|| {
            link.clear_input()?;
            link.send(sent)?;
            let deadline = Instant::now() + timeout;
            loop {
                let bytes = match link.read4(deadline)? {
                    Read4::Frame(b) => b,
                    Read4::Timeout { partial: true } => return Ok(Outcome::Garbage(None)),
                    Read4::Timeout { partial: false } => return Ok(Outcome::Silent),
                };
                let Some(f) = Frame::decode(bytes) else { return Ok(Outcome::Garbage(None)) };
                if f == sent {
                    return Ok(Outcome::Echo);
                }
                if Some(f.code) == expected && f.address == sent.address {
                    return Ok(Outcome::Reply(f));
                }
                if f.code == ERROR_REPLY {
                    return Ok(Outcome::Garbage(Some(f)));
                }
                tracing::debug!(frame = %f, "skipping a stale frame");
            }
        })();
        result.map_err(|e| self.lost(e))
    }

    fn ok(&mut self) {
        if self.snap.last_error.take().is_some() {
            self.publish();
        }
    }

    fn record(&mut self, card: u8, state: u8) -> u8 {
        if let Some(s) = self.snap.states.get_mut(usize::from(card) - 1) {
            *s = Some(state);
        }
        self.snap.last_error = None;
        self.publish();
        state
    }

    fn check_card(&self, card: u8) -> Result<(), RelayError> {
        if card == BROADCAST {
            return Err(RelayError::BroadcastNotACard);
        }
        if card > self.snap.cards {
            return Err(RelayError::NoSuchCard { card, cards: self.snap.cards });
        }
        Ok(())
    }

    fn ready(&mut self) -> Result<(), RelayError> {
        if self.link.is_none() {
            self.establish()?;
        }
        Ok(())
    }

    /// One command to one card, with its answer checked. Damaged and missing answers are retried
    /// (idempotent commands only); an echo means the card lost its address at a power-up, so the
    /// chain is counted again (restoring what the config says) and the command sent once more.
    fn transact(&mut self, command: Command, card: u8, data: u8) -> Result<Frame, RelayError> {
        if card == BROADCAST {
            return Err(RelayError::BroadcastNotACard);
        }
        self.ready()?;
        self.check_card(card)?;
        let sent = Frame::command(command, card, data);
        let attempts = if command.is_idempotent() { self.settings.retries + 1 } else { 1 };
        let mut tries = 0;
        let mut recovered = false;
        let mut silent = false;
        let mut last_reply = None;
        while tries < attempts {
            tries += 1;
            let outcome = match self.exchange(sent, self.timeout()) {
                Ok(o) => o,
                // The port vanished: reopen at once (a quick replug), resend only if harmless.
                Err(e) if e.is_port_problem() && !recovered && !self.establishing => {
                    recovered = true;
                    self.establish()?;
                    self.check_card(card)?;
                    if !command.is_idempotent() {
                        return Err(e);
                    }
                    tries -= 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            match outcome {
                Outcome::Reply(f) => {
                    self.ok();
                    return Ok(f);
                }
                Outcome::Echo if recovered || self.establishing => {
                    return Err(RelayError::NoSuchCard { card, cards: self.snap.cards });
                }
                Outcome::Echo => {
                    tracing::warn!(card, "card no longer knows its address; counting the cards again");
                    recovered = true;
                    self.recount_after_echo()?;
                    self.check_card(card)?;
                    // Nobody executed the lost attempt, so it does not count.
                    tries -= 1;
                }
                Outcome::Silent => {
                    silent = true;
                    tracing::debug!(card, command = command.name(), tries, "no reply");
                }
                Outcome::Garbage(f) => {
                    silent = false;
                    last_reply = f.or(last_reply);
                    tracing::debug!(card, command = command.name(), tries, "damaged reply; resynchronising");
                    self.drain()?;
                }
            }
        }
        let err = if silent {
            RelayError::NoReply { card, timeout: self.timeout() }
        } else {
            RelayError::BadReply { card, attempts, reply: last_reply }
        };
        self.snap.last_error = Some(err.to_string());
        self.publish();
        Err(err)
    }

    fn recount_after_echo(&mut self) -> Result<(), RelayError> {
        self.establish().map(|_| ())
    }

    /// Opens the port if needed, finds out which cards lost power since the last SETUP, counts
    /// the cards with SETUP, restores what the config says on the cards that lost power and reads
    /// every card's states. Used at start, after the port came back and after an echo.
    pub(crate) fn establish(&mut self) -> Result<u8, RelayError> {
        if self.closed {
            return Err(RelayError::Stopped);
        }
        self.establishing = true;
        let result = self.try_establish();
        self.establishing = false;
        match &result {
            Ok(cards) => {
                self.backoff.reset();
                self.snap.connected = true;
                self.snap.last_error = None;
                tracing::info!(port = %self.settings.port.display(), cards, "relay cards counted");
            }
            Err(e) => {
                self.link = None;
                self.snap.connected = false;
                self.snap.states.iter_mut().for_each(|s| *s = None);
                self.snap.last_error = Some(e.to_string());
                self.next_attempt = Instant::now() + self.backoff.next_delay();
            }
        }
        self.publish();
        result
    }

    fn try_establish(&mut self) -> Result<u8, RelayError> {
        if self.link.is_none() {
            self.link = Some(Link::open(&self.settings.port)?);
            tracing::info!(port = %self.settings.port.display(), "relay port opened");
        }
        self.drain()?;
        let fresh = self.find_power_ups()?;
        let firmware = self.setup()?;
        let cards = firmware.len() as u8;
        self.snap.cards = cards;
        self.snap.firmware = firmware;
        self.snap.states = vec![None; usize::from(cards)];
        self.snap.power_ups.resize(usize::from(cards), 0);
        for card in 1..=cards {
            if !fresh.contains(card) {
                continue;
            }
            self.snap.power_ups[usize::from(card) - 1] += 1;
            let mask = self.settings.restore.get(&card).copied().unwrap_or_default();
            if mask == RestoreMask::default() {
                // Every card is "powered up" for a one-shot `outpost relay` after the cards were
                // switched on; with nothing to restore that is no news worth a warning.
                tracing::info!(card, "relay card was powered up; nothing to restore");
                continue;
            }
            tracing::warn!(card, on = mask.on, off = mask.off, "relay card was powered up; restoring");
            self.restore(card, mask)?;
        }
        for card in 1..=cards {
            match self.transact(Command::GetPort, card, 0) {
                Ok(f) => {
                    self.record(card, f.data);
                }
                Err(e) if e.is_port_problem() => return Err(e),
                Err(e) => tracing::warn!(card, error = %e, "cannot read relay states"),
            }
        }
        Ok(cards)
    }

    fn restore(&mut self, card: u8, mask: RestoreMask) -> Result<(), RelayError> {
        let mut result = Ok(());
        if mask.on != 0 {
            result = self.transact(Command::SetSingle, card, mask.on).map(|_| ());
        }
        if mask.off != 0 && result.is_ok() {
            result = self.transact(Command::DelSingle, card, mask.off).map(|_| ());
        }
        match result {
            Err(e) if e.is_port_problem() => Err(e),
            Err(e) => {
                tracing::error!(card, error = %e, "could not restore relays after power-up");
                Ok(())
            }
            Ok(()) => Ok(()),
        }
    }

    /// The power-up rule: a card keeps the address SETUP gave it until it loses power, and a card
    /// without an address passes every frame on unchanged. So before counting again, a GET PORT
    /// to each address tells which cards came up since: their frame comes back as sent. Addresses
    /// up to the last known count are all probed; beyond it, probing stops at the first address
    /// that echoes, and that card and every card after it count as powered up (at the very first
    /// start, that is all cards after a site-wide power loss, none after a mere hub restart).
    fn find_power_ups(&mut self) -> Result<PowerUps, RelayError> {
        let known = self.snap.cards;
        let mut fresh = PowerUps::default();
        let timeout = self.timeout();
        for address in 1..=255u8 {
            let sent = Frame::command(Command::GetPort, address, 0);
            let mut outcome = self.exchange(sent, timeout)?;
            if matches!(outcome, Outcome::Garbage(_)) {
                self.drain()?;
                outcome = self.exchange(sent, timeout)?;
            }
            match outcome {
                Outcome::Reply(_) => {}
                Outcome::Echo if address <= known => {
                    fresh.cards.insert(address);
                }
                Outcome::Echo => {
                    fresh.from = Some(address);
                    break;
                }
                // A silent card proves nothing; only probing beyond the known chain stops here.
                Outcome::Silent | Outcome::Garbage(_) if address > known => break,
                Outcome::Silent | Outcome::Garbage(_) => {}
            }
        }
        self.drain()?;
        Ok(fresh)
    }

    /// SETUP to address 1: every card answers with its firmware version and the frame comes back
    /// with address N + 1. Returns the firmware byte of each card.
    fn setup(&mut self) -> Result<Vec<u8>, RelayError> {
        enum End {
            Counted(Vec<u8>),
            Silent,
            Bad(Option<Frame>),
        }
        let sent = Frame::command(Command::Setup, 1, 0);
        // The first answer crosses the whole ring, whose length is what SETUP finds out; the
        // others follow one frame time apart.
        let first_answer = self.settings.reply_timeout + FRAME_TIME * 256;
        let next_answer = self.settings.reply_timeout + FRAME_TIME * 2;
        let mut heard_anything = false;
        let mut last_reply = None;
        for _ in 0..=self.settings.retries {
            let link = self.link()?;
            let result = (|| -> io::Result<End> {
                link.clear_input()?;
                link.send(sent)?;
                let mut firmware: Vec<u8> = Vec::new();
                loop {
                    let wait = if firmware.is_empty() { first_answer } else { next_answer };
                    let bytes = match link.read4(Instant::now() + wait)? {
                        Read4::Frame(b) => b,
                        Read4::Timeout { partial: false } if !firmware.is_empty() => {
                            tracing::warn!(
                                cards = firmware.len(),
                                "SETUP did not come back after the last card"
                            );
                            return Ok(End::Counted(firmware));
                        }
                        Read4::Timeout { partial: false } => return Ok(End::Silent),
                        Read4::Timeout { partial: true } => return Ok(End::Bad(None)),
                    };
                    match Frame::decode(bytes) {
                        Some(f) if f.code == Command::Setup.code() => return Ok(End::Counted(firmware)),
                        Some(f)
                            if f.code == Command::Setup.reply_code()
                                && usize::from(f.address) == firmware.len() + 1 =>
                        {
                            firmware.push(f.data)
                        }
                        Some(f) if f.code == ERROR_REPLY => return Ok(End::Bad(Some(f))),
                        Some(f) => tracing::debug!(frame = %f, "skipping a stale frame during SETUP"),
                        None => return Ok(End::Bad(None)),
                    }
                }
            })();
            match result.map_err(|e| self.lost(e))? {
                End::Counted(fw) if fw.is_empty() => {
                    return Err(RelayError::NoCards { path: self.settings.port.clone() })
                }
                End::Counted(fw) => return Ok(fw),
                End::Silent => {}
                End::Bad(reply) => {
                    heard_anything = true;
                    last_reply = reply.or(last_reply);
                    self.drain()?;
                }
            }
        }
        if heard_anything {
            Err(RelayError::BadReply { card: 1, attempts: self.settings.retries + 1, reply: last_reply })
        } else {
            Err(RelayError::NoCards { path: self.settings.port.clone() })
        }
    }

    pub(crate) fn nop(&mut self, card: u8) -> Result<(), RelayError> {
        self.transact(Command::Nop, card, 0).map(|_| ())
    }

    pub(crate) fn get_port(&mut self, card: u8) -> Result<u8, RelayError> {
        let f = self.transact(Command::GetPort, card, 0)?;
        Ok(self.record(card, f.data))
    }

    /// SET PORT does not answer with the new states, so they are read back.
    pub(crate) fn set_port(&mut self, card: u8, states: u8) -> Result<u8, RelayError> {
        self.transact(Command::SetPort, card, states)?;
        let now = self.get_port(card)?;
        if now != states {
            tracing::warn!(card, wanted = states, read_back = now, "relay states differ from what was set");
        }
        Ok(now)
    }

    pub(crate) fn set_single(&mut self, card: u8, mask: u8) -> Result<u8, RelayError> {
        let f = self.transact(Command::SetSingle, card, mask)?;
        Ok(self.record(card, f.data))
    }

    pub(crate) fn del_single(&mut self, card: u8, mask: u8) -> Result<u8, RelayError> {
        let f = self.transact(Command::DelSingle, card, mask)?;
        Ok(self.record(card, f.data))
    }

    /// TOGGLE must not simply be sent again when its answer is lost: the card may have executed
    /// it. So the states are read first, and after a failure read again to see whether it did.
    pub(crate) fn toggle(&mut self, card: u8, mask: u8) -> Result<u8, RelayError> {
        let before = self.get_port(card)?;
        let mut tries = 0;
        loop {
            tries += 1;
            match self.transact(Command::Toggle, card, mask) {
                Ok(f) => return Ok(self.record(card, f.data)),
                Err(e) => {
                    let now = self.get_port(card)?;
                    if now == before ^ mask {
                        return Ok(now);
                    }
                    if now != before || tries > self.settings.retries {
                        return Err(e);
                    }
                }
            }
        }
    }

    pub(crate) fn get_option(&mut self, card: u8) -> Result<CardOptions, RelayError> {
        let f = self.transact(Command::GetOption, card, 0)?;
        Ok(CardOptions::from_byte(f.data))
    }

    /// SET OPTION does not echo the options, so they are read back.
    pub(crate) fn set_option(&mut self, card: u8, options: CardOptions) -> Result<CardOptions, RelayError> {
        self.transact(Command::SetOption, card, options.to_byte())?;
        self.get_option(card)
    }

    /// Sends `command` to address 0 once (a broadcast TOGGLE sent twice would undo itself) and
    /// returns every card's answer, in chain order. The exchange ends when the broadcast, or the
    /// NOP a blocking card passes on instead, comes back.
    pub(crate) fn broadcast(&mut self, command: Command, data: u8) -> Result<Vec<Frame>, RelayError> {
        self.ready()?;
        let sent = Frame::command(command, BROADCAST, data);
        let timeout = self.timeout();
        let link = self.link()?;
        let result = (|| -> io::Result<Result<Vec<Frame>, usize>> {
            link.clear_input()?;
            link.send(sent)?;
            let mut replies = Vec::new();
            loop {
                let bytes = match link.read4(Instant::now() + timeout)? {
                    Read4::Frame(b) => b,
                    Read4::Timeout { .. } => return Ok(Err(replies.len())),
                };
                match Frame::decode(bytes) {
                    Some(f) if f.address == BROADCAST && f.as_command().is_some() => return Ok(Ok(replies)),
                    Some(f) => replies.push(f),
                    None => return Ok(Err(replies.len())),
                }
            }
        })();
        match result.map_err(|e| self.lost(e))? {
            Ok(replies) => {
                self.ok();
                Ok(replies)
            }
            Err(replies) => {
                self.drain()?;
                let err = RelayError::BroadcastIncomplete { replies, timeout };
                self.snap.last_error = Some(err.to_string());
                self.publish();
                Err(err)
            }
        }
    }

    /// Broadcast SET PORT, then every card read back (cards whose options refuse broadcasts
    /// simply keep their states).
    pub(crate) fn broadcast_set_port(&mut self, states: u8) -> Result<Vec<u8>, RelayError> {
        self.broadcast(Command::SetPort, states)?;
        (1..=self.snap.cards).map(|card| self.get_port(card)).collect()
    }

    /// Every card's states, each with its own result; the outer error means no card could be
    /// reached at all.
    pub(crate) fn read_all(&mut self) -> Result<Vec<Result<u8, RelayError>>, RelayError> {
        self.ready()?;
        let mut out = Vec::with_capacity(usize::from(self.snap.cards));
        for card in 1..=self.snap.cards {
            out.push(self.get_port(card));
        }
        Ok(out)
    }
}

/// Cards found to have lost power since the last SETUP.
#[derive(Debug, Default)]
struct PowerUps {
    cards: BTreeSet<u8>,
    /// Every card from this address on (only set beyond the known chain).
    from: Option<u8>,
}

impl PowerUps {
    fn contains(&self, card: u8) -> bool {
        self.cards.contains(&card) || self.from.is_some_and(|f| card >= f)
    }
}
