//! Two `outpost cloud` processes on one PostgreSQL behind a real load balancer (Debian's
//! haproxy), twenty hubs (a real `outpost sensorhub` and simulated ones that enroll and sign
//! like it) sending through the balancer: one node is killed with SIGKILL mid-load, then the
//! database is crashed and restarted mid-load. Nothing acknowledged is lost, nothing is stored
//! twice, and commands issued on the surviving node reach hubs that were polling the dead one.
//! No PostgreSQL or no haproxy fails the test with what to install; it never skips.
#![cfg(unix)]

mod common;

use common::cloud_nodes::{another_node, database, long_client, storage, Answer, Balanced, Balancer, SimHub};
use common::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Simulated hubs; with the real one, twenty.
const SIMULATED: usize = 19;
/// Readings per simulated upload.
const PER_BATCH: u64 = 10;

/// What one simulated hub did: the last seq the cloud acknowledged, and the answers that were
/// not acknowledgements.
#[derive(Default)]
struct Tally {
    acked: AtomicU64,
    retry_later: AtomicU64,
    lost: AtomicU64,
}

/// Sends batch after batch through `base` until `stop`, each one again until it is
/// acknowledged, as a hub does (it keeps what was not acknowledged).
fn load(hub: Arc<SimHub>, ca: std::path::PathBuf, base: String, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let client = ca_client(&ca);
    let mut next = 1;
    while !stop.load(Ordering::SeqCst) {
        loop {
            match hub.upload(&client, &base, next..next + PER_BATCH) {
                Answer::Taken => break,
                Answer::RetryLater => tally.retry_later.fetch_add(1, Ordering::SeqCst),
                Answer::Lost => tally.lost.fetch_add(1, Ordering::SeqCst),
                Answer::Other(s) => {
                    panic!("hub {}: refused with {s}; only retry-later is expected", hub.id())
                }
            };
            std::thread::sleep(Duration::from_millis(50));
        }
        next += PER_BATCH;
        tally.acked.store(next - 1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Issues `ping` for `hub` on one node, directly (not through the balancer).
fn command_on(node: &CloudProc, hub: &str) -> String {
    let (status, v) =
        node.api_post(&format!("/v1/machines/{hub}/commands"), serde_json::json!({"action": "ping"}));
    assert_eq!(status, 201, "{v}");
    v["command_id"].as_str().unwrap().to_string()
}

#[test]
fn two_nodes_behind_haproxy_survive_a_killed_node_and_a_database_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, url) = database();
    let (pa, pb, plb) = (free_port(), free_port(), free_port());
    let a = CloudProc::start_on(&dir.path().join("a"), pa, &storage(&url));
    let b = another_node(&a, &dir.path().join("b"), pb, &url);
    let lb = Balancer::start(&dir.path().join("lb"), plb, &[pa, pb]);
    let cloud = Balanced::new(&lb, &a);

    // Twenty hubs through the balancer: one real, the others simulated.
    let hub_dir = dir.path().join("hub");
    let fast = "[[sensor]]\nkind = \"cpu\"\ninterval = \"100ms\"\n";
    let real = start_hub(&hub_dir, &hub_config_with(&hub_dir, &cloud, fast, ""));
    let real_id = machine_id(&hub_dir);
    let sims: Vec<Arc<SimHub>> = std::thread::scope(|s| {
        let made: Vec<_> = (0..SIMULATED).map(|_| s.spawn(|| SimHub::enroll(&cloud))).collect();
        made.into_iter().map(|h| Arc::new(h.join().unwrap())).collect()
    });

    // Across nodes: a poll held on node A gets a command issued on node B at once.
    let long = long_client(&cloud.ca());
    let a_url = format!("https://127.0.0.1:{pa}");
    let poller = {
        let (hub, long, a_url) = (sims[0].clone(), long.clone(), a_url.clone());
        std::thread::spawn(move || hub.poll(&long, &a_url, 25))
    };
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let id = command_on(&b, &sims[0].id());
    let got = poller.join().unwrap().expect("node A answers the poll");
    assert_eq!(got, vec![id], "node A handed out node B's command");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "at once, not at the poll's deadline: {:?}",
        started.elapsed()
    );

    // Load through the balancer.
    let stop = Arc::new(AtomicBool::new(false));
    let tallies: Vec<Arc<Tally>> = sims.iter().map(|_| Arc::new(Tally::default())).collect();
    let loaders: Vec<_> = sims
        .iter()
        .zip(&tallies)
        .map(|(hub, t)| {
            let (hub, ca, base, stop, t) = (hub.clone(), cloud.ca(), cloud.url(), stop.clone(), t.clone());
            std::thread::spawn(move || load(hub, ca, base, stop, t))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));

    // A hub long-polls node A; node A dies (SIGKILL) under load.
    let poller = {
        let (hub, long, a_url) = (sims[1].clone(), long.clone(), a_url.clone());
        std::thread::spawn(move || hub.poll(&long, &a_url, 25))
    };
    std::thread::sleep(Duration::from_millis(300));
    let acked_before: u64 = tallies.iter().map(|t| t.acked.load(Ordering::SeqCst)).sum();
    assert!(acked_before > 0, "the load was taken before the kill");
    let mut a = a;
    a.proc.take().unwrap().kill9();
    assert_eq!(poller.join().unwrap(), None, "the poll held on the dead node got no answer");
    // The hub polls again, through the balancer (the survivor); the command is issued there.
    let poller = {
        let (hub, long, base) = (sims[1].clone(), long.clone(), cloud.url());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                // An empty answer is a poll that ended before the command; a failed one, a
                // connection still routed to the dead node: poll again either way.
                if let Some(ids) = hub.poll(&long, &base, 20).filter(|ids| !ids.is_empty()) {
                    return ids;
                }
                assert!(Instant::now() < deadline, "the hub never got its command");
            }
        })
    };
    std::thread::sleep(Duration::from_millis(800));
    let id = command_on(&b, &sims[1].id());
    assert_eq!(poller.join().unwrap(), vec![id], "the survivor handed the command to the dead node's hub");
    std::thread::sleep(Duration::from_millis(1500));

    // The database crashes (no checkpoint) and comes back under load: retry later meanwhile.
    let retry_before: u64 = tallies.iter().map(|t| t.retry_later.load(Ordering::SeqCst)).sum();
    server.crash();
    std::thread::sleep(Duration::from_secs(2));
    server.resume().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let acked_after_restart = tallies.iter().map(|t| t.acked.load(Ordering::SeqCst)).sum::<u64>();
    while tallies.iter().map(|t| t.acked.load(Ordering::SeqCst)).sum::<u64>() < acked_after_restart + 200 {
        assert!(Instant::now() < deadline, "ingest did not resume after the database came back");
        std::thread::sleep(Duration::from_millis(100));
    }
    let retry_during: u64 =
        tallies.iter().map(|t| t.retry_later.load(Ordering::SeqCst)).sum::<u64>() - retry_before;
    assert!(retry_during > 0, "the outage was answered 503 + Retry-After");
    stop.store(true, Ordering::SeqCst);
    for l in loaders {
        l.join().unwrap();
    }

    // Everything acknowledged is stored, once: each simulated hub's seqs are exactly 1..=acked.
    for (hub, t) in sims.iter().zip(&tallies) {
        let acked = t.acked.load(Ordering::SeqCst);
        let seqs = cloud.seqs(&hub.id(), "load");
        assert_eq!(seqs, (1..=acked).collect::<Vec<_>>(), "hub {}: each acknowledged reading once", hub.id());
    }
    // The real hub hands over what it holds on a clean stop; the cloud has each reading once.
    assert!(real.stop().success());
    let stats = buffer_stats(&hub_dir);
    assert_eq!(stats["len"], 0, "the real hub handed everything over: {stats}");
    assert_exactly_once(&cloud, &real_id, stats["next_seq"].as_u64().unwrap());
    let lost: u64 = tallies.iter().map(|t| t.lost.load(Ordering::SeqCst)).sum();
    eprintln!(
        "acknowledged readings: {}, retry-later answers: {}, unanswered requests: {lost}",
        tallies.iter().map(|t| t.acked.load(Ordering::SeqCst)).sum::<u64>(),
        tallies.iter().map(|t| t.retry_later.load(Ordering::SeqCst)).sum::<u64>(),
    );
    drop(lb);
    drop(b);
}
