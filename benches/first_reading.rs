//! Time from a new hub's start to its first reading in the cloud through a connector it found by
//! SSDP, with the release binary as separate processes between network namespaces (real
//! multicast, nothing on this machine's own interfaces; see `tests/netns`). Cloud, connector and
//! each hub sit in namespaces of their own; every hub is new (no connector configured or
//! remembered) and enrolls at start. Prints each round and the median, first for hubs whose key
//! was made beforehand (as `outpost install` does), then for hubs that make their key at start.
//! Needs root and iproute2.
//! Run: `cargo bench --bench first_reading`

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/netns/mod.rs"]
mod netns;

use common::ns_cloud::{self, NsCloud};
use common::*;
use std::time::{Duration, Instant};

/// Rounds with the key made at install, then rounds with the key made at start.
const ROUNDS: [(&str, usize); 2] = [("key made at install", 5), ("key made at start", 3)];

fn main() {
    ns_cloud::serve_if_helper();
    let net = match netns::TestNet::create(
        "first",
        &[("cloud", "10.78.0.10/24"), ("conn", "10.78.0.1/24"), ("hub", "10.78.0.2/24")],
    ) {
        Ok(net) => net,
        Err(reason) => {
            eprintln!("first_reading needs network namespaces: {reason}");
            std::process::exit(1);
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cloud = NsCloud::start(&d.join("cloud"), "10.78.0.10", |p| net.command("cloud", p), &[]);
    let (_conn, conn_id) = cloud.start_connector(
        &d.join("conn"),
        |p| net.command("conn", p),
        "monitor_self = false\nssdp.search_hubs = false\n",
    );
    let via = format!("connector:{conn_id}");

    let mut round = 0;
    for (what, n) in ROUNDS {
        let mut times = Vec::new();
        for _ in 0..n {
            let hub_dir = d.join(format!("hub{round}"));
            round += 1;
            let cfg = hub_config_with(
                &hub_dir,
                &cloud,
                "[[sensor]]\nkind = \"memory\"\ninterval = \"1s\"\n",
                "discover = true\n",
            );
            let id = if what == "key made at install" {
                let key = outpost_shared::keys::KeyPair::generate().unwrap();
                std::fs::create_dir_all(hub_dir.join("data")).unwrap();
                key.save_new(&hub_dir.join("data/machine.key")).unwrap();
                Some(key.machine_id().to_string())
            } else {
                None
            };
            let mut cmd = net.command("hub", BIN);
            cmd.args(["sensorhub", "--config", cfg.to_str().unwrap()]);
            let t = Instant::now();
            let hub = Proc::start_cmd(cmd, &hub_dir.join("hub.log"));
            let id = id.unwrap_or_else(|| machine_id(&hub_dir));
            loop {
                if machine(&cloud, &id).is_some_and(|m| m["uplink"] == via.as_str()) {
                    break;
                }
                assert!(t.elapsed() < Duration::from_secs(60), "no reading through the connector in 60 s");
                std::thread::sleep(Duration::from_millis(10));
            }
            let took = t.elapsed();
            println!("  {what}: hub start to first reading in the cloud through the connector: {took:.2?}");
            times.push(took);
            assert!(hub.stop().success());
        }
        times.sort();
        println!(
            "{what}: median {:.2?} over {n} new hubs (min {:.2?}, max {:.2?})",
            times[n / 2],
            times[0],
            times[n - 1]
        );
    }
}
