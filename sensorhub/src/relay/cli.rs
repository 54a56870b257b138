//! `outpost relay`: the classic `relais` command line. Actions run left to right on one card;
//! after switching it prints `OK: <states>` (decimal, bit 0 = K1), or `FAIL: …` and exits 1.

use super::config::DriverSettings;
use super::driver::Driver;
use super::error::RelayError;
use super::protocol::relay_bit;
use outpost_shared::config::EXIT_CONFIG;
use std::io::Write;
use std::path::PathBuf;

/// Environment variable naming the default port.
pub const PORT_ENV: &str = "OUTPOST_RELAY_PORT";
/// Port used when neither `--port` nor [`PORT_ENV`] is given.
pub const DEFAULT_PORT: &str = "/dev/ttyS0";
/// Exit status when the card did not do what was asked (or could not be reached).
pub const EXIT_FAIL: i32 = 1;
/// Exit status for bad arguments.
pub const EXIT_USAGE: i32 = EXIT_CONFIG;

pub const USAGE: &str = "\
usage: outpost relay [--port PATH] [--card N] ACTION...

Switches a Conrad 8-relay serial card, like the classic `relais` tool.

actions (run left to right):
  -stat    print the relay states as a decimal number (bit 0 = K1 ... bit 7 = K8)
  -on      switch all relays on
  -off     switch all relays off
  -sN      switch relay N (1..8) on
  -rN      switch relay N (1..8) off

options:
  --port PATH   serial port (default: $OUTPOST_RELAY_PORT, else /dev/ttyS0)
  --card N      card in the chain, 1 = the one at the PC (default 1)

After switching, prints `OK: <states>`; on failure prints `FAIL: <reply> <address> <data>`
(or `FAIL: <reason>`) and exits 1. Bad arguments exit 64.
example: outpost relay -off -s1 -s3   prints  OK: 5";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Stat,
    AllOn,
    AllOff,
    On(u8),
    Off(u8),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliArgs {
    pub port: PathBuf,
    pub card: u8,
    pub actions: Vec<Action>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Run(CliArgs),
    Help,
}

/// Parses the arguments after `outpost relay`. `env_port` is the value of [`PORT_ENV`], if set.
pub fn parse_args(args: &[String], env_port: Option<&str>) -> Result<Parsed, String> {
    let mut port: Option<PathBuf> = None;
    let mut card: u8 = 1;
    let mut actions = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            inline.clone().or_else(|| it.next().cloned()).ok_or_else(|| format!("{name} needs a value"))
        };
        match flag {
            "-h" | "--help" | "-help" => return Ok(Parsed::Help),
            "--port" => {
                let v = value("--port")?;
                if v.is_empty() {
                    return Err("--port needs a path".into());
                }
                port = Some(PathBuf::from(v));
            }
            "--card" => {
                let v = value("--card")?;
                card = match v.parse::<u8>() {
                    Ok(n) if n >= 1 => n,
                    _ => return Err(format!("--card {v}: cards are numbered 1 to 255")),
                };
            }
            "-stat" => actions.push(Action::Stat),
            "-on" => actions.push(Action::AllOn),
            "-off" => actions.push(Action::AllOff),
            other => {
                let (on, n) = if let Some(n) = other.strip_prefix("-s") {
                    (true, n)
                } else if let Some(n) = other.strip_prefix("-r") {
                    (false, n)
                } else {
                    return Err(format!("unknown argument `{other}`"));
                };
                let relay = n.parse::<u8>().ok().filter(|r| relay_bit(*r).is_some()).ok_or_else(|| {
                    format!("`{other}`: relays are numbered 1 to 8, e.g. {}", if on { "-s3" } else { "-r3" })
                })?;
                actions.push(if on { Action::On(relay) } else { Action::Off(relay) });
            }
        }
    }
    if actions.is_empty() {
        return Err("nothing to do: give at least one action".into());
    }
    let port = port.or_else(|| env_port.filter(|p| !p.is_empty()).map(PathBuf::from));
    Ok(Parsed::Run(CliArgs { port: port.unwrap_or_else(|| PathBuf::from(DEFAULT_PORT)), card, actions }))
}

/// `outpost relay` with the process's stdout, stderr and environment. Blocking; call it outside
/// an async context (or from `spawn_blocking`). Returns the exit status.
pub fn relay_cli(args: &[String]) -> i32 {
    let env_port = std::env::var(PORT_ENV).ok();
    run_cli(args, env_port.as_deref(), &mut std::io::stdout(), &mut std::io::stderr())
}

/// [`relay_cli`] with its outputs and environment passed in, for tests.
pub fn run_cli(args: &[String], env_port: Option<&str>, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let args = match parse_args(args, env_port) {
        Ok(Parsed::Run(a)) => a,
        Ok(Parsed::Help) => {
            let _ = writeln!(out, "{USAGE}");
            return 0;
        }
        Err(msg) => {
            let _ = writeln!(err, "outpost relay: {msg}\n\n{USAGE}");
            return EXIT_USAGE;
        }
    };
    match execute(&args, out) {
        Ok(()) => 0,
        Err(e) => {
            let _ = match e.reply() {
                Some(frame) => writeln!(out, "FAIL: {frame}"),
                None => writeln!(out, "FAIL: {e}"),
            };
            EXIT_FAIL
        }
    }
}

/// Runs the actions; prints `-stat` results as they come and `OK: <states>` after switching.
pub fn execute(args: &CliArgs, out: &mut dyn Write) -> Result<(), RelayError> {
    let mut driver = Driver::new(DriverSettings::new(&args.port));
    driver.establish()?;
    let card = args.card;
    let mut switched = None;
    for action in &args.actions {
        let bit = |r: u8| relay_bit(r).ok_or(RelayError::BadRelay(r));
        match *action {
            Action::Stat => {
                let states = driver.get_port(card)?;
                let _ = writeln!(out, "{states}");
            }
            Action::AllOn => switched = Some(driver.set_port(card, 0xFF)?),
            Action::AllOff => switched = Some(driver.set_port(card, 0)?),
            Action::On(r) => switched = Some(driver.set_single(card, bit(r)?)?),
            Action::Off(r) => switched = Some(driver.del_single(card, bit(r)?)?),
        }
    }
    if let Some(states) = switched {
        let _ = writeln!(out, "OK: {states}");
    }
    Ok(())
}
