//! The card's wire format, straight from its manual: RS232 at 19200 baud 8N1 without handshake;
//! every command and every reply is one 4-byte frame `code, address, data, XOR of the three`.
//! A reply's code is `255 - command`; bit 0 of a data byte is relay K1, bit 7 is K8.

use std::fmt;
use std::time::Duration;

/// The card's fixed line speed.
pub const BAUD_RATE: u32 = 19_200;

/// Bytes in every command and reply.
pub const FRAME_LEN: usize = 4;

/// Address 0 is the broadcast: every card executes the command (unless its options say no).
pub const BROADCAST: u8 = 0;

/// Time one frame occupies the line: 4 bytes of 10 bits (start, 8 data, stop) at 19200 baud.
pub const FRAME_TIME: Duration = Duration::from_nanos(4 * 10 * 1_000_000_000 / BAUD_RATE as u64);

/// The fastest a single command can possibly complete with `cards` cards in the chain. The chain is
/// a ring (PC → card 1 → … → card N → PC) and every card receives a whole frame before it sends
/// one on, so a command and its reply together cross `cards + 1` links whichever card answers:
/// one card gives 2 × 2.08 ms ≈ 4.2 ms. Benchmarks against real cards (or the simulator with baud
/// emulation on) cannot beat this; on a bare pseudo-terminal the simulator answers far faster.
pub fn serial_floor(cards: u8) -> Duration {
    FRAME_TIME * (u32::from(cards) + 1)
}

/// The nine commands a card knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Command {
    /// Does nothing; the card answers 255, the same code as a checksum error.
    Nop = 0,
    /// Numbers the cards: the first takes the frame's address, answers with its firmware version
    /// and passes SETUP with the next address on.
    Setup = 1,
    GetPort = 2,
    /// Sets all eight relays at once; the reply does not carry the new states.
    SetPort = 3,
    GetOption = 4,
    SetOption = 5,
    /// Switches on the relays whose bits are set; the reply carries the new states.
    SetSingle = 6,
    /// Switches off the relays whose bits are set; the reply carries the new states.
    DelSingle = 7,
    /// Flips the relays whose bits are set; the reply carries the new states.
    Toggle = 8,
}

impl Command {
    pub const ALL: [Command; 9] = [
        Command::Nop,
        Command::Setup,
        Command::GetPort,
        Command::SetPort,
        Command::GetOption,
        Command::SetOption,
        Command::SetSingle,
        Command::DelSingle,
        Command::Toggle,
    ];

    pub fn code(self) -> u8 {
        self as u8
    }

    /// The code a card answers this command with.
    pub fn reply_code(self) -> u8 {
        255 - self as u8
    }

    pub fn from_code(code: u8) -> Option<Command> {
        Command::ALL.get(usize::from(code)).copied()
    }

    /// Whether sending the command twice has the same effect as sending it once, so that a lost
    /// reply may simply be answered by sending it again. Only TOGGLE is not.
    pub fn is_idempotent(self) -> bool {
        self != Command::Toggle
    }

    pub fn name(self) -> &'static str {
        match self {
            Command::Nop => "NOP",
            Command::Setup => "SETUP",
            Command::GetPort => "GET PORT",
            Command::SetPort => "SET PORT",
            Command::GetOption => "GET OPTION",
            Command::SetOption => "SET OPTION",
            Command::SetSingle => "SET SINGLE",
            Command::DelSingle => "DEL SINGLE",
            Command::Toggle => "TOGGLE",
        }
    }
}

/// Reply code of a card that received a frame with a wrong checksum (and of NOP).
pub const ERROR_REPLY: u8 = 255;

/// One frame, command or reply, without its checksum (which [`Frame::encode`] adds and
/// [`Frame::decode`] checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Frame {
    pub code: u8,
    pub address: u8,
    pub data: u8,
}

impl Frame {
    pub fn new(code: u8, address: u8, data: u8) -> Frame {
        Frame { code, address, data }
    }

    pub fn command(command: Command, address: u8, data: u8) -> Frame {
        Frame::new(command.code(), address, data)
    }

    pub fn checksum(&self) -> u8 {
        self.code ^ self.address ^ self.data
    }

    pub fn encode(&self) -> [u8; FRAME_LEN] {
        [self.code, self.address, self.data, self.checksum()]
    }

    /// `None` when the checksum does not match: the frame was damaged on the line, or the reader
    /// is not aligned to frame boundaries.
    pub fn decode(bytes: [u8; FRAME_LEN]) -> Option<Frame> {
        let frame = Frame::new(bytes[0], bytes[1], bytes[2]);
        (frame.checksum() == bytes[3]).then_some(frame)
    }

    /// The command this frame carries, if it is a command rather than a reply.
    pub fn as_command(&self) -> Option<Command> {
        Command::from_code(self.code)
    }
}

/// Printed the way the classic `relais` tool prints a frame: `code address data`.
impl fmt::Display for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.code, self.address, self.data)
    }
}

/// A card's broadcast options (GET/SET OPTION). Cards come up with "execute, do not block".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CardOptions {
    /// Bit 0: the card executes (and answers) broadcast commands.
    pub execute_broadcasts: bool,
    /// Bit 1: the card passes a NOP instead of the broadcast to the cards after it.
    pub block_broadcasts: bool,
}

impl Default for CardOptions {
    fn default() -> Self {
        CardOptions { execute_broadcasts: true, block_broadcasts: false }
    }
}

impl CardOptions {
    pub fn from_byte(b: u8) -> CardOptions {
        CardOptions { execute_broadcasts: b & 1 != 0, block_broadcasts: b & 2 != 0 }
    }

    pub fn to_byte(self) -> u8 {
        u8::from(self.execute_broadcasts) | (u8::from(self.block_broadcasts) << 1)
    }
}

/// The data bit of relay `relay` (1 = K1 … 8 = K8), or `None` outside 1..=8.
pub fn relay_bit(relay: u8) -> Option<u8> {
    (1..=8).contains(&relay).then(|| 1 << (relay - 1))
}
