//! A chain of simulated cards behind a real pseudo-terminal, so tests, demos and `outpost up`
//! exercise the real serial code path without hardware.
//!
//! The simulator holds the pty's master side and speaks the card protocol on it; the driver opens
//! the slave side (`/dev/pts/N`) like any serial port. A stable symlink (e.g. `<dir>/ttyRELAY0`)
//! can point at it: unplugging removes the symlink and closes the pty, replugging opens a new pty
//! and points the symlink at it, as udev does for a USB adapter.
//!
//! Behaviour the card manual leaves open, as simulated here: a card keeps the address SETUP gave
//! it until it loses power; a card without an address passes every frame except SETUP on
//! unchanged; options and states reset to their defaults (option 1, all relays off) at power-up;
//! a half frame followed by a pause of [`RESYNC_GAP`] is discarded.

use super::error::RelayError;
use super::protocol::{Command, Frame, BROADCAST, ERROR_REPLY, FRAME_LEN, FRAME_TIME};
use serialport::{SerialPort, TTYPort};
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Bytes of an unfinished frame are dropped after this much silence, so one stray byte cannot
/// shift every later frame.
pub const RESYNC_GAP: Duration = Duration::from_millis(20);

/// Firmware version byte the simulated cards answer SETUP with, unless set otherwise.
pub const SIM_FIRMWARE: u8 = 11;

/// How often the simulator thread looks at its controls while the line is idle.
const POLL: Duration = Duration::from_millis(10);

#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Cards in the chain; 0 makes a plain loopback (every frame comes back unchanged).
    pub cards: u8,
    /// Stable path to keep pointing at the current pty.
    pub link: Option<PathBuf>,
    pub firmware: u8,
    /// Delay answers as a real chain at 19200 baud would (one frame time per link of the ring).
    pub emulate_baud: bool,
}

impl SimOptions {
    pub fn new(cards: u8) -> SimOptions {
        SimOptions { cards, link: None, firmware: SIM_FIRMWARE, emulate_baud: false }
    }
}

/// Starts `cards` cascaded cards on a new pseudo-terminal; `link`, if given, becomes a symlink
/// to it. The returned handle's [`path`](SimulatorHandle::path) is what to give the driver.
pub fn run_simulator(cards: u8, link: Option<PathBuf>) -> Result<SimulatorHandle, RelayError> {
    run_simulator_with(SimOptions { link, ..SimOptions::new(cards) })
}

pub fn run_simulator_with(options: SimOptions) -> Result<SimulatorHandle, RelayError> {
    let shared = Arc::new(Mutex::new(Chain {
        cards: (0..options.cards).map(|_| SimCard::new(options.firmware)).collect(),
        corrupt_replies: 0,
        corrupt_only: None,
        corrupt_commands: 0,
        emulate_baud: options.emulate_baud,
        frames_in: 0,
    }));
    let pty = Pty::open(options.link.as_deref())?;
    let current = Arc::new(Mutex::new(Some(pty.path.clone())));
    let (control, rx) = mpsc::channel();
    let thread = {
        let shared = shared.clone();
        let current = current.clone();
        let link = options.link.clone();
        std::thread::Builder::new()
            .name("relay-sim".into())
            .spawn(move || serve(shared, rx, Some(pty), link, current))
            .map_err(|e| RelayError::Simulator(format!("cannot start its thread: {e}")))?
    };
    Ok(SimulatorHandle { shared, control, thread: Some(thread), link: options.link, current })
}

/// Controls a running simulator; dropping it stops the simulator and removes its symlink.
/// Methods taking a card number panic if it is not in `1..=cards`.
pub struct SimulatorHandle {
    shared: Arc<Mutex<Chain>>,
    control: mpsc::Sender<Control>,
    thread: Option<JoinHandle<()>>,
    link: Option<PathBuf>,
    current: Arc<Mutex<Option<PathBuf>>>,
}

impl SimulatorHandle {
    /// The device path to open: the symlink if there is one, else the current pty.
    pub fn path(&self) -> PathBuf {
        match &self.link {
            Some(l) => l.clone(),
            None => lock(&self.current).clone().unwrap_or_default(),
        }
    }

    /// The pty behind the simulator right now (`None` while unplugged).
    pub fn device(&self) -> Option<PathBuf> {
        lock(&self.current).clone()
    }

    fn chain(&self) -> MutexGuard<'_, Chain> {
        lock(&self.shared)
    }

    fn with_card<T>(&self, card: u8, f: impl FnOnce(&mut SimCard) -> T) -> T {
        let mut chain = self.chain();
        let n = chain.cards.len();
        let c = chain
            .cards
            .get_mut(usize::from(card).wrapping_sub(1))
            .unwrap_or_else(|| panic!("simulated card {card} does not exist (1..={n})"));
        f(c)
    }

    pub fn cards(&self) -> u8 {
        self.chain().cards.len() as u8
    }

    /// The relay states of `card`, bit 0 = K1.
    pub fn states(&self, card: u8) -> u8 {
        self.with_card(card, |c| c.states)
    }

    /// Switches relays behind the driver's back (someone at the card's test buttons).
    pub fn set_states(&self, card: u8, states: u8) {
        self.with_card(card, |c| c.states = states)
    }

    pub fn option(&self, card: u8) -> u8 {
        self.with_card(card, |c| c.option)
    }

    /// The address SETUP gave `card`, `None` since its last power-up.
    pub fn address(&self, card: u8) -> Option<u8> {
        self.with_card(card, |c| c.address)
    }

    /// Frames received from the PC so far.
    pub fn frames_received(&self) -> u64 {
        self.chain().frames_in
    }

    /// Damages the checksum of the next `n` frames sent to the PC.
    pub fn corrupt_next_replies(&self, n: u32) {
        let mut chain = self.chain();
        chain.corrupt_replies = n;
        chain.corrupt_only = None;
    }

    /// Damages the checksum of the next `n` answers to `command` only.
    pub fn corrupt_next_replies_to(&self, command: Command, n: u32) {
        let mut chain = self.chain();
        chain.corrupt_replies = n;
        chain.corrupt_only = Some(command.reply_code());
    }

    /// Damages the next `n` frames from the PC before card 1 checks them (it answers 255).
    pub fn corrupt_next_commands(&self, n: u32) {
        self.chain().corrupt_commands = n;
    }

    /// Sends raw bytes to the PC at once, as line noise would.
    pub fn inject_garbage(&self, bytes: &[u8]) {
        let _ = self.control.send(Control::Garbage(bytes.to_vec()));
    }

    /// A mute card neither executes nor passes on frames addressed to it (a hung card);
    /// everything else still goes through.
    pub fn set_mute(&self, card: u8, mute: bool) {
        self.with_card(card, |c| c.mute = mute)
    }

    /// A dead card swallows every frame (no power, broken cable): the ring is broken.
    pub fn set_dead(&self, card: u8, dead: bool) {
        self.with_card(card, |c| c.dead = dead)
    }

    /// Power-cycles one card: relays off, options back to default, address forgotten.
    pub fn power_cycle(&self, card: u8) {
        self.with_card(card, SimCard::power_up)
    }

    pub fn power_cycle_all(&self) {
        self.chain().cards.iter_mut().for_each(SimCard::power_up)
    }

    pub fn set_emulate_baud(&self, on: bool) {
        self.chain().emulate_baud = on;
    }

    /// Pulls the plug: the pty closes (the driver's reads fail) and the symlink disappears.
    pub fn unplug(&self) {
        let (tx, rx) = mpsc::channel();
        if self.control.send(Control::Unplug(tx)).is_ok() {
            let _ = rx.recv();
        }
    }

    /// Plugs back in: a new pty, the symlink pointed at it. Returns the new pty's path.
    pub fn replug(&self) -> Result<PathBuf, RelayError> {
        let (tx, rx) = mpsc::channel();
        self.control.send(Control::Replug(tx)).map_err(|_| RelayError::Simulator("it has stopped".into()))?;
        rx.recv().map_err(|_| RelayError::Simulator("it has stopped".into()))?
    }
}

impl Drop for SimulatorHandle {
    fn drop(&mut self) {
        let _ = self.control.send(Control::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

enum Control {
    Unplug(mpsc::Sender<()>),
    Replug(mpsc::Sender<Result<PathBuf, RelayError>>),
    Garbage(Vec<u8>),
    Stop,
}

struct Pty {
    master: TTYPort,
    /// Kept open so the pty stays usable while no driver has it open (a master whose slave was
    /// never or is no longer open reports hang-up on every read).
    _slave: TTYPort,
    path: PathBuf,
}

impl Pty {
    fn open(link: Option<&Path>) -> Result<Pty, RelayError> {
        let (mut master, slave) = TTYPort::pair()
            .map_err(|e| RelayError::Simulator(format!("cannot create a pseudo-terminal: {e}")))?;
        master.set_timeout(POLL).map_err(|e| RelayError::Simulator(e.to_string()))?;
        let path = slave
            .name()
            .map(PathBuf::from)
            .ok_or_else(|| RelayError::Simulator("the pseudo-terminal has no name".into()))?;
        if let Some(link) = link {
            point_link(link, &path)?;
        }
        Ok(Pty { master, _slave: slave, path })
    }
}

/// Replaces `link` with a symlink to `target` atomically, so a reader never finds it missing
/// while it is re-pointed.
fn point_link(link: &Path, target: &Path) -> Result<(), RelayError> {
    let name = link.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = link.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).and_then(|()| std::fs::rename(&tmp, link)).map_err(|e| {
        RelayError::Simulator(format!("cannot point {} at {}: {e}", link.display(), target.display()))
    })
}

fn remove_link(link: Option<&Path>) {
    if let Some(link) = link {
        if std::fs::symlink_metadata(link).is_ok_and(|m| m.file_type().is_symlink()) {
            let _ = std::fs::remove_file(link);
        }
    }
}

/// The simulator thread: reads frames from the PC, runs them through the chain, writes back
/// what comes out of the last card.
fn serve(
    shared: Arc<Mutex<Chain>>,
    control: mpsc::Receiver<Control>,
    mut pty: Option<Pty>,
    link: Option<PathBuf>,
    current: Arc<Mutex<Option<PathBuf>>>,
) {
    let mut pending: Vec<u8> = Vec::with_capacity(16);
    let mut last_byte = Instant::now();
    loop {
        let command = match pty {
            Some(_) => match control.try_recv() {
                Ok(c) => Some(c),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Disconnected) => Some(Control::Stop),
            },
            None => match control.recv_timeout(Duration::from_secs(1)) {
                Ok(c) => Some(c),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => Some(Control::Stop),
            },
        };
        match command {
            Some(Control::Stop) => break,
            Some(Control::Unplug(ack)) => {
                pty = None;
                pending.clear();
                remove_link(link.as_deref());
                *lock(&current) = None;
                let _ = ack.send(());
                continue;
            }
            Some(Control::Replug(ack)) => {
                if pty.is_none() {
                    match Pty::open(link.as_deref()) {
                        Ok(p) => {
                            *lock(&current) = Some(p.path.clone());
                            pty = Some(p);
                        }
                        Err(e) => {
                            let _ = ack.send(Err(e));
                            continue;
                        }
                    }
                }
                let path = pty.as_ref().map(|p| p.path.clone()).unwrap_or_default();
                let _ = ack.send(Ok(path));
                continue;
            }
            Some(Control::Garbage(bytes)) => {
                if let Some(p) = pty.as_mut() {
                    let _ = p.master.write_all(&bytes);
                }
                continue;
            }
            None => {}
        }
        let Some(p) = pty.as_mut() else { continue };
        let mut buf = [0u8; 256];
        match p.master.read(&mut buf) {
            Ok(n) => {
                if !pending.is_empty() && last_byte.elapsed() > RESYNC_GAP {
                    pending.clear();
                }
                last_byte = Instant::now();
                pending.extend_from_slice(&buf[..n]);
                while pending.len() >= FRAME_LEN {
                    let mut frame = [0u8; FRAME_LEN];
                    frame.copy_from_slice(&pending[..FRAME_LEN]);
                    pending.drain(..FRAME_LEN);
                    let (out, delay_links) = {
                        let mut chain = lock(&shared);
                        let out = chain.process(frame);
                        let links = chain.emulate_baud.then(|| chain.cards.len() as u32 + 1);
                        (out, links)
                    };
                    for (i, f) in out.iter().enumerate() {
                        if let Some(links) = delay_links {
                            std::thread::sleep(if i == 0 { FRAME_TIME * links } else { FRAME_TIME });
                        }
                        if let Err(e) = p.master.write_all(f) {
                            tracing::debug!(error = %e, "relay simulator cannot write");
                        }
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::TimedOut || e.kind() == ErrorKind::Interrupted => {
                if !pending.is_empty() && last_byte.elapsed() > RESYNC_GAP {
                    pending.clear();
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "relay simulator read failed");
                std::thread::sleep(POLL);
            }
        }
    }
    drop(pty);
    remove_link(link.as_deref());
}

/// The cards and the faults waiting to be injected.
struct Chain {
    cards: Vec<SimCard>,
    corrupt_replies: u32,
    /// Reply code the corruption is limited to, if any.
    corrupt_only: Option<u8>,
    corrupt_commands: u32,
    emulate_baud: bool,
    frames_in: u64,
}

impl Chain {
    /// Runs one frame from the PC through every card in order; returns what reaches the PC.
    /// Each card handles its input frames in order and its output feeds the next card, which is
    /// exactly the order a real chain of UARTs produces.
    fn process(&mut self, mut frame: [u8; FRAME_LEN]) -> Vec<[u8; FRAME_LEN]> {
        self.frames_in += 1;
        if self.corrupt_commands > 0 {
            self.corrupt_commands -= 1;
            frame[3] ^= 0xFF;
        }
        let mut frames = vec![frame];
        for card in &mut self.cards {
            let mut next = Vec::with_capacity(frames.len() + 1);
            for f in frames {
                card.receive(f, &mut next);
            }
            frames = next;
            if frames.is_empty() {
                break;
            }
        }
        for f in &mut frames {
            if self.corrupt_replies > 0 && self.corrupt_only.is_none_or(|code| f[0] == code) {
                self.corrupt_replies -= 1;
                f[3] ^= 0xFF;
            }
        }
        frames
    }
}

#[derive(Debug, Clone)]
struct SimCard {
    address: Option<u8>,
    states: u8,
    option: u8,
    firmware: u8,
    mute: bool,
    dead: bool,
}

impl SimCard {
    fn new(firmware: u8) -> SimCard {
        SimCard { address: None, states: 0, option: 1, firmware, mute: false, dead: false }
    }

    fn power_up(&mut self) {
        self.address = None;
        self.states = 0;
        self.option = 1;
    }

    fn receive(&mut self, bytes: [u8; FRAME_LEN], out: &mut Vec<[u8; FRAME_LEN]>) {
        if self.dead {
            return;
        }
        let Some(f) = Frame::decode(bytes) else {
            // Damaged: answer the error and pass nothing on.
            out.push(Frame::new(ERROR_REPLY, self.address.unwrap_or(0), 0).encode());
            return;
        };
        let Some(command) = f.as_command() else {
            // Answers of the cards before this one, and codes it does not know, travel on.
            out.push(bytes);
            return;
        };
        if command == Command::Setup && f.address != BROADCAST {
            self.address = Some(f.address);
            out.push(Frame::new(Command::Setup.reply_code(), f.address, self.firmware).encode());
            out.push(Frame::command(Command::Setup, f.address.wrapping_add(1), f.data).encode());
            return;
        }
        let Some(own) = self.address else {
            out.push(bytes);
            return;
        };
        if f.address == BROADCAST {
            if self.option & 1 != 0 {
                let data = self.execute(command, f.data);
                out.push(Frame::new(command.reply_code(), own, data).encode());
            }
            if self.option & 2 != 0 {
                out.push(Frame::command(Command::Nop, BROADCAST, 0).encode());
            } else {
                out.push(bytes);
            }
            return;
        }
        if f.address != own {
            out.push(bytes);
            return;
        }
        if self.mute {
            return;
        }
        let data = self.execute(command, f.data);
        out.push(Frame::new(command.reply_code(), own, data).encode());
    }

    /// Executes a command; returns the reply's data byte.
    fn execute(&mut self, command: Command, data: u8) -> u8 {
        match command {
            Command::Nop | Command::Setup => 0,
            Command::GetPort => self.states,
            Command::SetPort => {
                self.states = data;
                0
            }
            Command::GetOption => self.option,
            Command::SetOption => {
                self.option = data & 3;
                0
            }
            Command::SetSingle => {
                self.states |= data;
                self.states
            }
            Command::DelSingle => {
                self.states &= !data;
                self.states
            }
            Command::Toggle => {
                self.states ^= data;
                self.states
            }
        }
    }
}
