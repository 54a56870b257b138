//! Round trip of one SET SINGLE and its reply through the relay driver, against the simulated
//! cards on a real pseudo-terminal. With baud emulation on, the simulator delays every answer as
//! a real chain at 19200 baud would, so the figures are comparable with `serial_floor(cards)`;
//! without it they show what the driver, the queue and the pty add on their own.
//!
//! `cargo bench -p outpost-sensorhub --bench relay` (optionally `-- SWITCHES`, default 500).

#[cfg(unix)]
fn main() {
    let switches = std::env::args().skip(1).find_map(|a| a.parse::<usize>().ok()).unwrap_or(500);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    println!("SET SINGLE + reply through RelayHandle, {switches} switches each, addressed to the last card");
    for (cards, emulate_baud) in [(1, true), (3, true), (1, false)] {
        rt.block_on(bench::run(cards, emulate_baud, switches));
    }
}

#[cfg(not(unix))]
fn main() {
    eprintln!("the relay simulator needs a Unix pseudo-terminal");
}

#[cfg(unix)]
mod bench {
    use outpost_sensorhub::relay::{
        run_simulator_with, serial_floor, DriverSettings, RelayHandle, SimOptions,
    };
    use std::time::{Duration, Instant};

    pub async fn run(cards: u8, emulate_baud: bool, switches: usize) {
        let sim = run_simulator_with(SimOptions { emulate_baud, ..SimOptions::new(cards) })
            .expect("the simulator starts");
        let relays =
            RelayHandle::connect(DriverSettings::new(sim.path())).await.expect("the driver connects");
        let card = cards;
        for _ in 0..20 {
            relays.set_single(card, 1).await.expect("warm-up");
        }
        relays.set_port(card, 0).await.expect("all off");
        let mut times = Vec::with_capacity(switches);
        for i in 0..switches {
            let bit = 1u8 << (i % 8);
            let started = Instant::now();
            let states = relays.set_single(card, bit).await.expect("SET SINGLE");
            times.push(started.elapsed());
            assert_ne!(states & bit, 0, "the card reports the relay on");
            // Every measured switch is a real change: all off again after the eighth relay.
            if bit == 0x80 {
                relays.set_port(card, 0).await.expect("all off");
            }
        }
        relays.shutdown().await;
        times.sort_unstable();
        let pct = |p: usize| times[(times.len() * p / 100).min(times.len() - 1)];
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "cards {cards}, baud emulation {}: serial floor {:.2} ms; p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            if emulate_baud { "on " } else { "off" },
            ms(serial_floor(cards)),
            ms(pct(50)),
            ms(pct(99)),
            ms(*times.last().expect("at least one switch")),
        );
    }
}
