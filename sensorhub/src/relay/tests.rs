//! The driver, the command line and the poller against the simulator on real pseudo-terminals.

use super::cli::{parse_args, run_cli, Action, Parsed, EXIT_FAIL, EXIT_USAGE};
use super::simulator::{run_simulator, run_simulator_with, SimOptions, SimulatorHandle, SIM_FIRMWARE};
use super::*;
use outpost_shared::config::{parse, Problem, Validate};
use outpost_shared::model::{Sample, State, Value};
use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tokio::sync::{mpsc, oneshot};

/// Generous bound on anything that could hang; never a timing assertion.
const HANG: Duration = Duration::from_secs(30);

async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(HANG, f).await.expect("timed out")
}

/// Short waits keep the tests that provoke timeouts quick.
fn settings(port: &Path) -> DriverSettings {
    DriverSettings {
        reply_timeout: Duration::from_millis(300),
        reconnect_min: Duration::from_millis(20),
        reconnect_max: Duration::from_millis(200),
        ..DriverSettings::new(port)
    }
}

/// A simulator behind a stable symlink in its own temp dir, like a udev name.
fn sim(cards: u8) -> (TempDir, SimulatorHandle) {
    let dir = tempfile::tempdir().unwrap();
    let sim = run_simulator(cards, Some(dir.path().join("ttyRELAY0"))).unwrap();
    (dir, sim)
}

async fn connect(sim: &SimulatorHandle) -> RelayHandle {
    within(RelayHandle::connect(settings(&sim.path()))).await.unwrap()
}

/// Waits until the driver's snapshot satisfies `cond`.
async fn wait_for(h: &RelayHandle, cond: impl Fn(&Snapshot) -> bool) -> Snapshot {
    let mut w = h.watch();
    within(async {
        loop {
            let snap = w.borrow_and_update().clone();
            if cond(&snap) {
                return snap;
            }
            w.changed().await.expect("driver stopped");
        }
    })
    .await
}

// ---------------------------------------------------------------- protocol

#[test]
fn frames_carry_an_xor_checksum_and_reply_codes_mirror_commands() {
    let f = Frame::command(Command::SetPort, 1, 5);
    assert_eq!(f.encode(), [3, 1, 5, 3 ^ 1 ^ 5]);
    assert_eq!(Frame::decode(f.encode()), Some(f));
    assert_eq!(Frame::decode([3, 1, 5, 0]), None);
    let codes: Vec<u8> = Command::ALL.iter().map(|c| c.reply_code()).collect();
    assert_eq!(codes, [255, 254, 253, 252, 251, 250, 249, 248, 247]);
    assert!(Command::ALL.iter().all(|c| Command::from_code(c.code()) == Some(*c)));
    assert_eq!(Command::from_code(9), None);
    assert_eq!(CardOptions::from_byte(1), CardOptions::default());
    for b in 0..4 {
        assert_eq!(CardOptions::from_byte(b).to_byte(), b);
    }
}

#[test]
fn the_serial_floor_is_two_frames_for_one_card() {
    // 8 bytes of 10 bits at 19200 baud.
    let floor = serial_floor(1).as_secs_f64();
    assert!((floor - 80.0 / 19200.0).abs() < 1e-5, "{floor}");
    assert!(serial_floor(3) > serial_floor(1));
}

// ---------------------------------------------------------------- driver

#[tokio::test]
async fn counts_and_addresses_1_3_and_255_cascaded_cards() {
    for n in [1u8, 3, 255] {
        let (_dir, sim) = sim(n);
        let h = connect(&sim).await;
        assert_eq!(h.cards(), n);
        let snap = h.snapshot();
        assert!(snap.connected);
        assert_eq!(snap.firmware, vec![SIM_FIRMWARE; usize::from(n)]);
        assert_eq!(snap.states, vec![Some(0); usize::from(n)]);
        assert_eq!(sim.address(1), Some(1));
        assert_eq!(sim.address(n), Some(n));
        // The last card in the chain is reachable and the others are untouched.
        assert_eq!(within(h.set_port(n, 0xA5)).await.unwrap(), 0xA5);
        assert_eq!(sim.states(n), 0xA5);
        assert_eq!(within(h.get(n)).await.unwrap(), 0xA5);
        if n > 1 {
            assert_eq!(sim.states(n - 1), 0);
        }
        let beyond = within(h.get(n.wrapping_add(1))).await.unwrap_err();
        match n {
            255 => assert!(matches!(beyond, RelayError::BroadcastNotACard), "{beyond}"),
            _ => assert!(matches!(beyond, RelayError::NoSuchCard { cards, .. } if cards == n), "{beyond}"),
        }
    }
}

#[tokio::test]
async fn every_command_does_what_the_manual_says() {
    let (_dir, sim) = sim(3);
    let h = connect(&sim).await;
    within(h.nop(2)).await.unwrap();
    assert_eq!(within(h.get(2)).await.unwrap(), 0);
    assert_eq!(within(h.set_port(2, 0b1010_0101)).await.unwrap(), 0xA5);
    assert_eq!(within(h.switch(2, 1, false)).await.unwrap(), 0xA4);
    assert_eq!(within(h.switch(2, 2, true)).await.unwrap(), 0xA6);
    assert_eq!(within(h.toggle(2, 8)).await.unwrap(), 0x26);
    assert_eq!(within(h.toggle_mask(2, 0x03)).await.unwrap(), 0x25);
    assert_eq!(within(h.set_single(2, 0xF0)).await.unwrap(), 0xF5);
    assert_eq!(within(h.del_single(2, 0x0F)).await.unwrap(), 0xF0);
    assert_eq!(sim.states(2), 0xF0);
    assert_eq!((sim.states(1), sim.states(3)), (0, 0));

    assert_eq!(within(h.get_option(2)).await.unwrap(), CardOptions::default());
    let blocking = CardOptions { execute_broadcasts: false, block_broadcasts: true };
    assert_eq!(within(h.set_option(2, blocking)).await.unwrap(), blocking);
    assert_eq!(sim.option(2), 2);

    assert!(matches!(within(h.switch(2, 9, true)).await, Err(RelayError::BadRelay(9))));
    assert!(matches!(within(h.get(0)).await, Err(RelayError::BroadcastNotACard)));
    assert_eq!(within(h.recount()).await.unwrap(), 3);
    assert_eq!(h.snapshot().states, vec![Some(0), Some(0xF0), Some(0)]);
    // Counting again did not switch anything and did not look like a power-up.
    assert_eq!(sim.states(2), 0xF0);
    assert_eq!(h.snapshot().power_ups, vec![1, 1, 1]);
}

#[tokio::test]
async fn broadcasts_reach_every_card_that_accepts_them() {
    let (_dir, sim) = sim(3);
    let h = connect(&sim).await;
    assert_eq!(within(h.broadcast_set_port(0x0F)).await.unwrap(), vec![0x0F; 3]);
    let replies = within(h.broadcast(Command::GetPort, 0)).await.unwrap();
    assert_eq!(replies, (1..=3).map(|a| Frame::new(253, a, 0x0F)).collect::<Vec<_>>());

    // Card 2 ignores broadcasts but passes them on.
    let ignore = CardOptions { execute_broadcasts: false, block_broadcasts: false };
    within(h.set_option(2, ignore)).await.unwrap();
    assert_eq!(within(h.broadcast_set_port(0xF0)).await.unwrap(), vec![0xF0, 0x0F, 0xF0]);

    // Card 2 executes but blocks: card 3 gets a NOP instead (and answers it with 255).
    let block = CardOptions { execute_broadcasts: true, block_broadcasts: true };
    within(h.set_option(2, block)).await.unwrap();
    let replies = within(h.broadcast(Command::SetPort, 0x33)).await.unwrap();
    assert_eq!(replies, vec![Frame::new(252, 1, 0), Frame::new(252, 2, 0), Frame::new(255, 3, 0)]);
    assert_eq!((sim.states(1), sim.states(2), sim.states(3)), (0x33, 0x33, 0xF0));

    // A broadcast TOGGLE is executed exactly once.
    within(h.broadcast(Command::Toggle, 0x01)).await.unwrap();
    assert_eq!((sim.states(1), sim.states(2), sim.states(3)), (0x32, 0x32, 0xF0));
}

#[tokio::test]
async fn damaged_frames_and_garbage_are_retried() {
    let (_dir, sim) = sim(1);
    let h = connect(&sim).await;
    sim.set_states(1, 0x42);
    sim.corrupt_next_replies(1);
    assert_eq!(within(h.get(1)).await.unwrap(), 0x42);

    // The card sees a damaged command and answers 255; the driver sends it again.
    sim.corrupt_next_commands(1);
    assert_eq!(within(h.switch(1, 1, true)).await.unwrap(), 0x43);

    // Noise on the line, including a half frame, does not shift later frames.
    sim.inject_garbage(&[0x12, 0x34, 0x56]);
    assert_eq!(within(h.get(1)).await.unwrap(), 0x43);

    // A lost TOGGLE answer: the card toggled once, and the driver does not toggle again.
    sim.corrupt_next_replies_to(Command::Toggle, 1);
    assert_eq!(within(h.toggle(1, 3)).await.unwrap(), 0x47);
    assert_eq!(sim.states(1), 0x47);

    // A line that stays bad ends in a clear error; the next good exchange works again.
    sim.corrupt_next_replies(1000);
    let err = within(h.get(1)).await.unwrap_err();
    assert!(matches!(err, RelayError::BadReply { card: 1, attempts: 3, .. }), "{err}");
    assert!(err.to_string().contains("check the cable"), "{err}");
    sim.corrupt_next_replies(0);
    assert_eq!(within(h.get(1)).await.unwrap(), 0x47);
}

#[tokio::test]
async fn a_card_that_stops_answering_gives_a_clear_error() {
    let (_dir, sim) = sim(3);
    let h = connect(&sim).await;
    sim.set_mute(2, true);
    let err = within(h.get(2)).await.unwrap_err();
    assert!(matches!(err, RelayError::NoReply { card: 2, .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.starts_with("no reply from card 2 within ") && msg.contains("check cabling and power"),
        "{msg}"
    );
    // The others still work.
    assert_eq!(within(h.set_port(3, 7)).await.unwrap(), 7);
    assert_eq!(within(h.get(1)).await.unwrap(), 0);
    sim.set_mute(2, false);
    assert_eq!(within(h.get(2)).await.unwrap(), 0);

    // A dead card breaks the ring: nobody's answer comes back.
    sim.set_dead(2, true);
    let err = within(h.get(1)).await.unwrap_err();
    assert!(matches!(err, RelayError::NoReply { card: 1, .. }), "{err}");
    assert!(h.snapshot().last_error.is_some());
    sim.set_dead(2, false);
    assert_eq!(within(h.get(3)).await.unwrap(), 7);
    assert_eq!(h.snapshot().last_error, None);
}

#[tokio::test]
async fn unplug_and_replug_recovers_and_rereads_states() {
    let (_dir, sim) = sim(3);
    let h = connect(&sim).await;
    within(h.set_port(1, 0x81)).await.unwrap();
    within(h.set_port(3, 0x18)).await.unwrap();
    let first_pty = sim.device().unwrap();

    sim.unplug();
    assert!(!sim.path().exists());
    let err = within(h.get(1)).await.unwrap_err();
    assert!(err.is_port_problem(), "{err}");
    assert!(!h.snapshot().connected);
    assert_eq!(h.snapshot().states, vec![None; 3], "no state is reported while it cannot be read");

    let new_pty = sim.replug().unwrap();
    assert!(sim.path().exists());
    assert_ne!(sim.device(), None);
    let _ = (first_pty, new_pty);
    // The driver comes back by itself, without a request, and reads every card again.
    let snap = wait_for(&h, |s| s.connected && s.states.iter().all(Option::is_some)).await;
    assert_eq!(snap.states, vec![Some(0x81), Some(0), Some(0x18)]);
    assert_eq!(snap.power_ups, vec![1, 1, 1], "the cards kept power: nothing restored");
    assert_eq!(within(h.switch(2, 4, true)).await.unwrap(), 0x08);
}

#[tokio::test]
async fn a_missing_port_is_an_error_that_says_so_and_a_busy_port_too() {
    let dir = tempfile::tempdir().unwrap();
    let err = within(RelayHandle::connect(settings(&dir.path().join("ttyNONE")))).await.err().unwrap();
    assert!(matches!(err, RelayError::PortMissing { .. }), "{err}");
    assert!(err.to_string().contains("does not exist"), "{err}");

    let (_dir, sim) = sim(1);
    let _h = connect(&sim).await;
    let err = within(RelayHandle::connect(settings(&sim.path()))).await.err().unwrap();
    assert!(matches!(err, RelayError::PortBusy { .. }), "{err}");
}

#[tokio::test]
async fn a_handle_started_without_cards_connects_when_they_appear() {
    let (_dir, sim) = sim(2);
    sim.unplug();
    let h = RelayHandle::spawn(settings(&sim.path()));
    assert!(within(h.get(1)).await.is_err());
    sim.replug().unwrap();
    let snap = wait_for(&h, |s| s.connected).await;
    assert_eq!(snap.cards, 2);
}

fn restore_config(port: &Path) -> RelayConfig {
    let mut cfg = RelayConfig::new(port);
    let relay = |card, relay, restore| RelaySettings { card, relay, name: None, locked: false, restore };
    cfg.relays = vec![relay(1, 1, Restore::On), relay(1, 2, Restore::Off), relay(2, 8, Restore::On)];
    cfg
}

fn restore_settings(cfg: &RelayConfig) -> DriverSettings {
    DriverSettings { restore: cfg.restore_masks(), ..settings(&cfg.port) }
}

#[tokio::test]
async fn power_cycled_cards_are_restored_by_the_config() {
    let (_dir, sim) = sim(3);
    let cfg = restore_config(&sim.path());
    // A fresh simulator is a chain that just got power: the first start restores it.
    let h = within(RelayHandle::connect(restore_settings(&cfg))).await.unwrap();
    assert_eq!((sim.states(1), sim.states(2), sim.states(3)), (0x01, 0x80, 0));
    assert_eq!(h.snapshot().power_ups, vec![1, 1, 1]);

    // Card 1 loses power during operation: the next command notices and restores it first.
    within(h.set_port(1, 0x06)).await.unwrap();
    within(h.set_port(3, 0x10)).await.unwrap();
    sim.power_cycle(1);
    assert_eq!(within(h.get(1)).await.unwrap(), 0x01);
    assert_eq!((sim.states(1), sim.states(2), sim.states(3)), (0x01, 0x80, 0x10));
    assert_eq!(h.snapshot().power_ups, vec![2, 1, 1]);

    // All cards lose power while the port is unplugged.
    sim.unplug();
    sim.power_cycle_all();
    sim.replug().unwrap();
    // The idle driver notices at its next exchange (the poller makes one every poll interval).
    assert_eq!(within(h.get(3)).await.unwrap(), 0);
    let snap = h.snapshot();
    assert_eq!(snap.states, vec![Some(0x01), Some(0x80), Some(0)]);
    assert_eq!(snap.power_ups, vec![3, 2, 2]);
    within(h.shutdown()).await;
    assert!(matches!(within(h.get(1)).await, Err(RelayError::Stopped)));

    // A restarted hub finds the cards still numbered: nothing is switched.
    sim.set_states(1, 0x04);
    let h = within(RelayHandle::connect(restore_settings(&cfg))).await.unwrap();
    assert_eq!(h.snapshot().power_ups, vec![0, 0, 0]);
    assert_eq!(h.snapshot().states[0], Some(0x04));
    assert_eq!(sim.states(1), 0x04);
}

#[tokio::test]
async fn emulated_baud_rate_is_never_faster_than_the_serial_floor() {
    let dir = tempfile::tempdir().unwrap();
    let sim = run_simulator_with(SimOptions {
        link: Some(dir.path().join("ttyRELAY0")),
        emulate_baud: true,
        ..SimOptions::new(1)
    })
    .unwrap();
    let h = connect(&sim).await;
    let n = 10;
    let start = Instant::now();
    for _ in 0..n {
        within(h.get(1)).await.unwrap();
    }
    assert!(start.elapsed() >= serial_floor(1) * n, "{:?}", start.elapsed());
}

// ---------------------------------------------------------------- readings

#[test]
fn states_become_one_sample_per_card_and_per_relay() {
    let mut cfg = RelayConfig::new("/dev/null");
    cfg.relays.push(RelaySettings {
        card: 2,
        relay: 3,
        name: Some("pump".into()),
        locked: false,
        restore: Restore::Unset,
    });
    let s = state_samples(2, 0b0000_0101, Some(&cfg));
    assert_eq!(s.len(), 9);
    assert_eq!((s[0].sensor.as_str(), &s[0].value), ("relay.2", &Value::Number(5.0)));
    let k: Vec<(&str, &Value)> = s[1..].iter().map(|x| (x.sensor.as_str(), &x.value)).collect();
    assert_eq!(k[0], ("relay.2.k1", &Value::Bool(true)));
    assert_eq!(k[1], ("relay.2.k2", &Value::Bool(false)));
    assert_eq!(k[2], ("relay.2.k3", &Value::Bool(true)));
    assert_eq!(k[7], ("relay.2.k8", &Value::Bool(false)));
    assert_eq!(s[3].message.as_deref(), Some("pump: on"));
    assert!(s.iter().all(|x| x.state == State::Ok));
    let e = error_sample(2, &RelayError::NoReply { card: 2, timeout: Duration::from_millis(200) });
    assert_eq!((e.sensor.as_str(), e.state), ("relay.2", State::Error));
}

fn find<'a>(batch: &'a [Sample], sensor: &str) -> &'a Sample {
    batch.iter().find(|s| s.sensor == sensor).unwrap_or_else(|| panic!("no {sensor} in {batch:?}"))
}

#[tokio::test]
async fn the_poller_sends_all_states_then_each_change_at_once() {
    let (_dir, sim) = sim(2);
    let mut cfg = RelayConfig::new(sim.path());
    cfg.poll_interval = Duration::from_secs(3600);
    cfg.relays.push(RelaySettings {
        card: 1,
        relay: 3,
        name: Some("pump".into()),
        locked: false,
        restore: Restore::Unset,
    });
    let h = connect(&sim).await;
    let (tx, mut rx) = mpsc::channel(8);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = spawn_poller(h.clone(), crate::relay::LiveSettings::new(cfg), tx, async {
        let _ = stopped.await;
    });

    let first = within(rx.recv()).await.unwrap().samples;
    assert_eq!(first.len(), 18);
    assert_eq!(find(&first, "relay.1").value, Value::Number(0.0));
    assert_eq!(find(&first, "relay.1.k3").message.as_deref(), Some("pump: off"));

    // Well before the next poll, a switch is reported at once, for the card that changed.
    assert_eq!(within(h.switch(1, 3, true)).await.unwrap(), 4);
    let change = within(rx.recv()).await.unwrap().samples;
    assert_eq!(change.len(), 9);
    assert_eq!(find(&change, "relay.1").value, Value::Number(4.0));
    assert_eq!(find(&change, "relay.1.k3").value, Value::Bool(true));
    assert_eq!(find(&change, "relay.1.k3").message.as_deref(), Some("pump: on"));

    stop.send(()).unwrap();
    within(task).await.unwrap();
}

#[tokio::test]
async fn the_poller_reports_a_lost_port_as_errors_and_recovers() {
    let (_dir, sim) = sim(1);
    let mut cfg = RelayConfig::new(sim.path());
    cfg.poll_interval = Duration::from_millis(100);
    let h = within(RelayHandle::connect(settings(&sim.path()))).await.unwrap();
    within(h.set_port(1, 9)).await.unwrap();
    let (tx, mut rx) = mpsc::channel(64);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = spawn_poller(h.clone(), crate::relay::LiveSettings::new(cfg), tx, async {
        let _ = stopped.await;
    });
    within(rx.recv()).await.unwrap();

    sim.unplug();
    within(async {
        loop {
            let batch = rx.recv().await.unwrap().samples;
            let card = find(&batch, "relay.1");
            if card.state == State::Error {
                assert_eq!(card.value, Value::Text("unavailable".into()));
                assert!(card.message.as_deref().unwrap().contains("does not exist"), "{card:?}");
                break;
            }
        }
    })
    .await;

    sim.replug().unwrap();
    within(async {
        loop {
            let batch = rx.recv().await.unwrap().samples;
            let card = find(&batch, "relay.1");
            if card.state == State::Ok {
                assert_eq!(card.value, Value::Number(9.0));
                break;
            }
        }
    })
    .await;
    stop.send(()).unwrap();
    within(task).await.unwrap();
}

// ---------------------------------------------------------------- config

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct HubLike {
    relay: RelayConfig,
}

impl Validate for HubLike {
    fn validate(&self, problems: &mut Vec<Problem>) {
        self.relay.validate(problems);
    }
}

#[test]
fn the_example_config_parses_and_bad_values_are_all_reported() {
    let cfg = parse::<HubLike>(config::EXAMPLE, Path::new("hub.toml")).unwrap().relay;
    assert_eq!(cfg.port, Path::new("/dev/ttyUSB0"));
    assert_eq!(cfg.poll_interval, Duration::from_secs(5));
    assert_eq!(cfg.restore_masks().get(&1), Some(&RestoreMask { on: 1, off: 0 }));

    let text = "[relay]\nport = \"/dev/ttyS1\"\npoll_interval = \"10ms\"\n\n\
                [[relay.relays]]\ncard = 0\nrelay = 9\n\n\
                [[relay.relays]]\nrelay = 2\n[[relay.relays]]\nrelay = 2\n";
    let err = parse::<HubLike>(text, Path::new("hub.toml")).unwrap_err();
    let keys: Vec<&str> = err.problems().iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        ["relay.poll_interval", "relay.relays[0].card", "relay.relays[0].relay", "relay.relays[2].relay"],
        "{err}"
    );

    let err = parse::<HubLike>("[relay]\nport = \"x\"\nbaud = 9600\n", Path::new("hub.toml")).unwrap_err();
    assert!(err.to_string().contains("unknown field `baud`"), "{err}");
    let err = parse::<HubLike>(
        "[relay]\nport = \"x\"\nrelays = [{ relay = 1, restore = \"maybe\" }]\n",
        Path::new("h"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("unknown variant `maybe`"), "{err}");
}

#[test]
fn locked_relays_refuse_remote_switching() {
    let mut cfg = RelayConfig::new("/dev/ttyS0");
    cfg.relays.push(RelaySettings { card: 1, relay: 4, name: None, locked: true, restore: Restore::Unset });
    assert_eq!(cfg.locked_mask(1), 0x08);
    assert!(cfg.check_remote(1, 0x07).is_ok());
    assert!(cfg.check_remote(2, 0xFF).is_ok());
    let err = cfg.check_remote(1, 0x0C).unwrap_err();
    assert!(matches!(err, RelayError::Locked { card: 1, relay: 4 }), "{err}");
}

// ---------------------------------------------------------------- command line

fn cli(args: &[&str], env_port: Option<&str>) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = run_cli(&args, env_port, &mut out, &mut err);
    (code, String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap())
}

#[test]
fn relais_arguments_switch_and_print_like_the_classic_tool() {
    let (_dir, sim) = sim(1);
    let port = sim.path().to_string_lossy().into_owned();
    sim.set_states(1, 0xFF);
    assert_eq!(cli(&["--port", &port, "-off", "-s1", "-s3"], None), (0, "OK: 5\n".into(), String::new()));
    assert_eq!(sim.states(1), 5);
    assert_eq!(cli(&["--port", &port, "-stat"], None), (0, "5\n".into(), String::new()));
    // The port may come from the environment.
    assert_eq!(cli(&["-stat"], Some(&port)), (0, "5\n".into(), String::new()));
    assert_eq!(cli(&[&format!("--port={port}"), "-on", "-r8", "-stat"], None).1, "127\nOK: 127\n");
    assert_eq!(sim.states(1), 127);
}

#[test]
fn relais_picks_a_cascaded_card_and_fails_clearly() {
    let (_dir, sim) = sim(3);
    let port = sim.path().to_string_lossy().into_owned();
    assert_eq!(cli(&["--port", &port, "--card", "2", "-s2"], None).1, "OK: 2\n");
    assert_eq!((sim.states(1), sim.states(2)), (0, 2));

    let (code, out, _) = cli(&["--port", &port, "--card", "4", "-stat"], None);
    assert_eq!(code, EXIT_FAIL);
    assert!(out.starts_with("FAIL: card 4 does not exist: 3 card(s)"), "{out}");

    // A card that answers with an error: the reply is printed as the classic tool does.
    sim.corrupt_next_commands(1000);
    assert_eq!(cli(&["--port", &port, "-s1"], None), (EXIT_FAIL, "FAIL: 255 1 0\n".into(), String::new()));
}

#[test]
fn relais_rejects_bad_arguments_and_missing_ports() {
    for bad in [&["-s9"][..], &["-x"], &[], &["--card", "0", "-on"], &["--port"], &["-r"]] {
        let (code, out, err) = cli(bad, Some("/dev/null"));
        assert_eq!(code, EXIT_USAGE, "{bad:?}");
        assert!(out.is_empty() && err.contains("usage: outpost relay"), "{bad:?}: {err}");
    }
    assert!(cli(&["-s9"], None).2.contains("relays are numbered 1 to 8"));

    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("ttyUSB9").to_string_lossy().into_owned();
    let (code, out, _) = cli(&["--port", &missing, "-stat"], None);
    assert_eq!(code, EXIT_FAIL);
    assert!(out.starts_with(&format!("FAIL: serial port {missing} does not exist")), "{out}");

    assert_eq!(cli(&["--help"], None).0, 0);
    let parsed = parse_args(&["-on".to_string()], None).unwrap();
    assert_eq!(
        parsed,
        Parsed::Run(super::cli::CliArgs {
            port: cli::DEFAULT_PORT.into(),
            card: 1,
            actions: vec![Action::AllOn]
        })
    );
}

// ---------------------------------------------------------------- in the hub

#[test]
fn the_hub_config_takes_a_relay_section_and_names_file_line_and_key_of_its_problems() {
    let text = "data_dir = \"d\"\n\n[relay]\nport = \"/dev/ttyUSB0\"\npoll_interval = \"1s\"\n\n\
                [[relay.relays]]\nrelay = 1\nname = \"pump\"\nrestore = \"on\"\n\n\
                [[relay.relays]]\ncard = 2\nrelay = 8\nname = \"siren\"\nlocked = true\n";
    let cfg = parse::<crate::HubConfig>(text, Path::new("hub.toml")).unwrap();
    let relay = cfg.relay.expect("[relay] is kept");
    assert_eq!(relay.poll_interval, Duration::from_secs(1));
    assert_eq!(relay.name(2, 8), Some("siren"));
    assert_eq!(relay.locked_mask(2), 0x80);
    assert!(parse::<crate::HubConfig>("data_dir = \"d\"\n", Path::new("h")).unwrap().relay.is_none());

    let bad = "data_dir = \"d\"\n\n[relay]\nport = \"\"\npoll_interval = \"1ms\"\n\n\
               [[relay.relays]]\nrelay = 1\n\n[[relay.relays]]\ncard = 2\nrelay = 9\n";
    let err = parse::<crate::HubConfig>(bad, Path::new("hub.toml")).unwrap_err().to_string();
    for expected in [
        "hub.toml:4: key `relay.port`",
        "hub.toml:5: key `relay.poll_interval`",
        "hub.toml:12: key `relay.relays[1].relay`",
    ] {
        assert!(err.contains(expected), "{expected} in:\n{err}");
    }
    let err = parse::<crate::HubConfig>("[relay]\nport = \"x\"\nspeed = 9600\n", Path::new("hub.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("hub.toml:3: key `relay.speed`"), "{err}");
}

/// What a stopped hub's buffer holds, decoded.
fn buffered_samples(data_dir: &Path) -> Vec<Sample> {
    use outpost_shared::buffer::{SledBuffer, Storage, WhenFull};
    let (buffer, _) = SledBuffer::open(&data_dir.join("buffer"), u64::MAX, WhenFull::Reject).unwrap();
    let records = buffer.oldest(1_000_000).unwrap();
    records.iter().map(|(_, r)| serde_json::from_slice(r).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_with_a_relay_section_buffers_relay_readings_and_frees_the_port_when_stopped() {
    let (_sim_dir, sim) = sim(2);
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "data_dir = {:?}\n\n[[sensor]]\nkind = \"memory\"\ninterval = \"1h\"\n\n\
         [uplink]\ndiscover = false\nadvertise = false\n\n\
         [relay]\nport = {:?}\npoll_interval = \"200ms\"\n\n\
         [[relay.relays]]\ncard = 2\nrelay = 8\nname = \"siren\"\nlocked = true\n",
        dir.path().join("data"),
        sim.path()
    );
    let cfg = parse::<crate::HubConfig>(&text, Path::new("hub.toml")).unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let hub = within(crate::start(cfg, stop.clone())).await.unwrap();
    let relays = hub.relays.clone().expect("the hub runs the relay driver");
    wait_for(&relays.handle, |s| s.states == [Some(0), Some(0)]).await;

    // What the command executor needs to honour the lock comes with the handle.
    assert!(matches!(
        relays.settings.current().check_remote(2, 0x80),
        Err(RelayError::Locked { card: 2, relay: 8 })
    ));
    // A switch through the hub's driver is buffered at once (not only at the next poll).
    assert_eq!(within(relays.handle.switch(1, 3, true)).await.unwrap(), 4);
    assert_eq!(sim.states(1), 4);
    // Locally (the card's own buttons) the locked relay may change; the next poll reads it.
    sim.set_states(2, 0x80);
    wait_for(&relays.handle, |s| s.states.get(1) == Some(&Some(0x80))).await;

    stop.cancel();
    within(hub.join()).await;
    // Stopping the hub closed the port: it can be opened again at once.
    let again = within(RelayHandle::connect(settings(&sim.path()))).await.expect("the port is free");
    again.shutdown().await;

    let samples = buffered_samples(&dir.path().join("data"));
    let has = |sensor: &str, value: Value| samples.iter().any(|s| s.sensor == sensor && s.value == value);
    assert!(has("relay.1", Value::Number(4.0)), "the switched state was buffered");
    assert!(has("relay.1.k3", Value::Bool(true)));
    assert!(has("relay.2", Value::Number(128.0)), "the polled change was buffered");
    let siren: Vec<_> = samples.iter().filter(|s| s.sensor == "relay.2.k8").collect();
    assert!(siren.iter().any(|s| s.message.as_deref() == Some("siren: off")));
    assert!(siren.iter().any(|s| s.message.as_deref() == Some("siren: on")));
}
