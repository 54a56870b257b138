//! Fault soak: five hubs, a connector and the cloud as real processes over real TLS, while faults
//! are injected at random for a bounded time: `kill -9` of any role, the cloud answering
//! 404/500/413 through a small fault proxy (a reverse proxy under maintenance), the cloud down, a
//! hub's disk full (a small tmpfs), a connector restarted mid-poll. Afterwards everything is let
//! drain and the test counts, per hub: readings produced (the seqs it handed out), stored in the
//! cloud, stored twice, counted as dropped or put aside, and lost without a count. It asserts that
//! nothing is lost without a count, nothing is stored twice and every hub's seqs are unique.
//!
//! The seed of the fault schedule is printed; `OUTPOST_SOAK_SEED=N` replays it, and
//! `OUTPOST_SOAK_SECS` sets how long faults are injected (default 60). The full-disk fault needs
//! root (to mount the tmpfs); where mounting is impossible it is left out and the test says so,
//! unless `OUTPOST_NETNS_REQUIRED=1` (set where CI runs as root) makes that a failure.

mod common;

use common::small_disk::SmallDisk;
use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const HUBS: usize = 5;
/// Two fast sensors: readings every 100 ms, so every fault hits mid-stream.
const SENSORS: &str =
    "[[sensor]]\nkind = \"memory\"\ninterval = \"100ms\"\n\n[[sensor]]\nkind = \"load\"\ninterval = \"250ms\"\n";

/// A small deterministic generator, so a failing schedule can be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from))
    }
}

/// The reverse proxy in front of the cloud. Passes requests through (TLS on both sides, with the
/// cloud's own certificate, so machines cannot tell), or answers every request with one status
/// and a body that carries no verdict, as a proxy in maintenance would.
struct FaultProxy {
    port: u16,
    /// 0: pass through; otherwise the status every request gets.
    fault: Arc<AtomicU16>,
}

impl FaultProxy {
    fn start(cloud: &CloudProc) -> FaultProxy {
        let port = free_port();
        let fault = Arc::new(AtomicU16::new(0));
        let (tls_dir, upstream, ca) = (cloud.dir.join("data/tls"), cloud.url(), cloud.ca());
        let f = fault.clone();
        std::thread::spawn(move || {
            let rt =
                tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(serve_proxy(port, &tls_dir, upstream, &ca, f));
        });
        wait_until(Duration::from_secs(10), "the fault proxy listens", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        FaultProxy { port, fault }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }
}

async fn serve_proxy(port: u16, tls_dir: &Path, upstream: String, ca: &Path, fault: Arc<AtomicU16>) {
    let tls =
        outpost_shared::tls::server_config(&tls_dir.join("cert.pem"), &tls_dir.join("key.pem")).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap())
        .tls_built_in_root_certs(false)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let app = axum::Router::new()
        .fallback(move |req: axum::extract::Request| {
            let (client, upstream, fault) = (client.clone(), upstream.clone(), fault.clone());
            async move { proxy(req, &client, &upstream, &fault).await }
        })
        .layer(axum::extract::DefaultBodyLimit::max(64 << 20));
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    listener.set_nonblocking(true).unwrap();
    axum_server::from_tcp_rustls(listener, axum_server::tls_rustls::RustlsConfig::from_config(tls))
        .serve(app.into_make_service())
        .await
        .unwrap();
}

async fn proxy(
    req: axum::extract::Request,
    client: &reqwest::Client,
    upstream: &str,
    fault: &AtomicU16,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let status = fault.load(Ordering::Relaxed);
    if status != 0 {
        let code = axum::http::StatusCode::from_u16(status).unwrap();
        return (code, "<html><body>maintenance</body></html>").into_response();
    }
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 64 << 20).await.unwrap_or_default();
    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut out = client.request(parts.method.clone(), format!("{upstream}{path}"));
    for (name, value) in &parts.headers {
        if name != "host" && name != "content-length" {
            out = out.header(name.as_str(), value.as_bytes());
        }
    }
    match out.body(body).send().await {
        Ok(r) => {
            let code = axum::http::StatusCode::from_u16(r.status().as_u16()).unwrap();
            let mut headers = axum::http::HeaderMap::new();
            for (name, value) in r.headers() {
                if matches!(name.as_str(), "content-type" | "retry-after" | "content-encoding") {
                    headers.insert(
                        axum::http::HeaderName::from_bytes(name.as_str().as_bytes()).unwrap(),
                        axum::http::HeaderValue::from_bytes(value.as_bytes()).unwrap(),
                    );
                }
            }
            (code, headers, r.bytes().await.unwrap_or_default()).into_response()
        }
        Err(_) => (axum::http::StatusCode::BAD_GATEWAY, "upstream unreachable").into_response(),
    }
}

/// The cloud as machines see it here: through the proxy.
struct ViaProxy<'a> {
    cloud: &'a CloudProc,
    url: String,
}

impl CloudApi for ViaProxy<'_> {
    fn url(&self) -> String {
        self.url.clone()
    }
    fn ca(&self) -> PathBuf {
        self.cloud.ca()
    }
    fn request(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        self.cloud.request(method, path, body)
    }
}

struct Hub {
    dir: PathBuf,
    config: PathBuf,
    proc: Option<Proc>,
    id: String,
}

impl Hub {
    fn restart(&mut self) {
        self.proc = Some(start_hub(&self.dir, &self.config));
    }

    fn print_log_tail(&self, lines: usize) {
        let log = std::fs::read_to_string(self.dir.join("hub.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(lines).collect();
        eprintln!(
            "soak: {} log tail:\n{}",
            self.dir.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }

    /// Restarts the hub if it stopped by itself (a stalled disk makes it exit with an error), as
    /// its service manager would. Returns whether it did.
    fn revive(&mut self) -> bool {
        let exited = self.proc.as_mut().is_some_and(|p| p.child.try_wait().ok().flatten().is_some());
        if exited {
            eprintln!("soak: hub {} had stopped by itself; restarted", self.dir.display());
            self.restart();
        }
        exited
    }
}

#[test]
fn nothing_a_hub_accepted_is_lost_or_stored_twice_whatever_fails() {
    let seed = std::env::var("OUTPOST_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| chrono::Utc::now().timestamp_micros() as u64 | 1);
    let secs = std::env::var("OUTPOST_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    eprintln!("soak: seed {seed}, {secs} s of faults (OUTPOST_SOAK_SEED={seed} replays it)");
    let mut rng = Rng(seed);

    let dir = tempfile::tempdir().unwrap();
    let mut cloud = CloudProc::start(&dir.path().join("cloud"));
    let proxy = FaultProxy::start(&cloud);
    let mut conn = ConnectorProc::start(&dir.path().join("conn"), &cloud, "");
    // The connector, too, reaches the cloud through the proxy.
    let conn_cfg = std::fs::read_to_string(&conn.config).unwrap().replace(&cloud.url(), &proxy.url());
    std::fs::write(&conn.config, conn_cfg).unwrap();
    conn.restart();

    // Hub 4's data lives on a small disk that the faults fill (its log and config stay outside,
    // so the log says what happened).
    let small = match SmallDisk::mount(&dir.path().join(format!("hub{}/data", HUBS - 1)), "24m") {
        Ok(disk) => Some(disk),
        Err(why) => {
            if std::env::var("OUTPOST_NETNS_REQUIRED").as_deref() == Ok("1") {
                panic!("OUTPOST_NETNS_REQUIRED=1 but {why}");
            }
            eprintln!("soak: no full-disk faults: {why}");
            None
        }
    };
    let via = ViaProxy { cloud: &cloud, url: proxy.url() };
    let mut hubs: Vec<Hub> = (0..HUBS)
        .map(|i| {
            let hub_dir = dir.path().join(format!("hub{i}"));
            // Hub 4 sends directly; the others through the connector, direct when it is away.
            let uplink = if i == HUBS - 1 {
                String::new()
            } else {
                format!("{}fallback_after = \"2s\"\nreprobe_every = \"3s\"\n", conn.hub_uplink())
            };
            let config = hub_config_with(&hub_dir, &via, SENSORS, &uplink);
            let proc = Some(start_hub(&hub_dir, &config));
            Hub { dir: hub_dir, config, proc, id: String::new() }
        })
        .collect();
    drop(via);
    for h in &mut hubs {
        h.id = machine_id(&h.dir);
    }
    wait_until(Duration::from_secs(60), "every hub's readings arrive", || {
        hubs.iter().all(|h| machine(&cloud, &h.id).is_some())
    });

    // Faults, one at a time, each undone before the next. Every round holds each kind once, in
    // a random order, so no kind is left out by chance; proxy statuses take turns.
    let mut counts = std::collections::BTreeMap::<&str, u32>::new();
    let end = Instant::now() + Duration::from_secs(secs);
    let mut round: Vec<u64> = Vec::new();
    let mut statuses = [404u16, 500, 413, 405, 408].into_iter().cycle();
    while Instant::now() < end {
        if round.is_empty() {
            round = (0..6).collect();
            for i in (1..round.len()).rev() {
                round.swap(i, rng.below(i as u64 + 1) as usize);
            }
        }
        let kind = round.pop().unwrap();
        std::thread::sleep(rng.millis(500, 2000));
        let fault = match kind {
            0 => {
                let h = &mut hubs[rng.below(HUBS as u64) as usize];
                h.proc.take().unwrap().kill9();
                std::thread::sleep(rng.millis(200, 2000));
                h.restart();
                "kill -9 hub"
            }
            1 => {
                conn.kill9();
                std::thread::sleep(rng.millis(500, 4000));
                conn.restart();
                "kill -9 connector"
            }
            2 => {
                // Mid-poll: hubs hold their command long-polls open through it all the time.
                conn.stop();
                conn.restart();
                "connector restart"
            }
            3 => {
                cloud.proc.take().unwrap().kill9();
                std::thread::sleep(rng.millis(500, 4000));
                cloud.restart();
                "kill -9 cloud, down a while"
            }
            4 => {
                let status = statuses.next().unwrap();
                proxy.fault.store(status, Ordering::Relaxed);
                std::thread::sleep(rng.millis(1000, 5000));
                proxy.fault.store(0, Ordering::Relaxed);
                match status {
                    404 => "proxy answers 404",
                    500 => "proxy answers 500",
                    413 => "proxy answers 413",
                    405 => "proxy answers 405",
                    _ => "proxy answers 408",
                }
            }
            _ => match &small {
                Some(disk) => {
                    disk.fill();
                    std::thread::sleep(rng.millis(1000, 4000));
                    disk.free();
                    "hub disk full"
                }
                None => continue,
            },
        };
        *counts.entry(fault).or_default() += 1;
        for h in &mut hubs {
            if h.revive() {
                *counts.entry("hub restarted after stopping by itself").or_default() += 1;
            }
        }
    }
    eprintln!("soak: faults injected: {counts:?}");

    // Everything up and healthy again: every hub catches up (its backlog drains behind the live
    // readings, which keep coming) and then hands over what it holds as it stops.
    let calm = chrono::Utc::now();
    let drained = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until(Duration::from_secs(240), "every hub uploads again with its backlog drained", || {
            for h in hubs.iter_mut() {
                h.revive();
            }
            hubs.iter().all(|h| {
                hub_status(&h.dir).is_some_and(|s| {
                    s["last_error"].is_null()
                        && s["storage_error"].is_null()
                        && s["buffered"].as_u64().is_some_and(|b| b < 100)
                        && s["last_upload"]
                            .as_str()
                            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                            .is_some_and(|t| t > calm)
                })
            })
        })
    }));
    if let Err(e) = drained {
        for h in &hubs {
            eprintln!("soak: {} status: {:?}", h.dir.display(), hub_status(&h.dir));
            h.print_log_tail(15);
        }
        std::panic::resume_unwind(e);
    }
    let mut total = Totals::default();
    let mut produced_by = Vec::new();
    for h in &mut hubs {
        let stopped = h.proc.take().unwrap().stop();
        assert!(stopped.success(), "hub {} stops cleanly", h.dir.display());
        let stats = buffer_stats(&h.dir);
        if stats["len"] != 0 {
            h.print_log_tail(40);
        }
        assert_eq!(stats["len"], 0, "{}: a clean stop hands everything over: {stats}", h.dir.display());
        produced_by.push((stats["next_seq"].as_u64().unwrap() - 1, stats["dropped"].as_u64().unwrap_or(0)));
    }
    // What hubs handed to the connector reaches the cloud within a minute, or is put aside there
    // and counted (the cloud shows that count with the hub).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = hubs.iter().zip(&produced_by).all(|(h, (produced, dropped))| {
            let put_aside = machine(&cloud, &h.id).and_then(|m| m["quarantined"].as_u64()).unwrap_or(0);
            all_seqs(&cloud, &h.id).len() as u64 + dropped + put_aside >= *produced
        });
        if done || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // Whatever the connector still holds is in its custody, not lost: said apart.
    conn.stop();
    let held = buffer_stats(&conn.dir);
    eprintln!(
        "soak: the connector still holds {} batches, its quarantine {}",
        held["len"], held["quarantine"]
    );
    for (h, (produced, dropped)) in hubs.iter().zip(&produced_by) {
        let put_aside = machine(&cloud, &h.id).and_then(|m| m["quarantined"].as_u64()).unwrap_or(0);
        let counted = dropped + put_aside;
        let (produced, counted) = (*produced, counted);
        let all = all_seqs(&cloud, &h.id);
        let unique: BTreeSet<u64> = all.iter().copied().collect();
        let stored = unique.len() as u64;
        let twice = all.len() as u64 - stored;
        let lost = produced.saturating_sub(stored + counted);
        eprintln!(
            "soak: {}: produced {produced}, stored {stored}, stored twice {twice}, counted as dropped or put aside {counted}, lost without a count {lost}",
            h.id
        );
        if lost > 0 {
            let missing: Vec<u64> = (1..=produced).filter(|s| !unique.contains(s)).take(10).collect();
            eprintln!("soak: {}: missing seqs, e.g. {missing:?}", h.id);
        }
        assert!(unique.iter().all(|s| (1..=produced).contains(s)), "{}: seqs the hub never took", h.id);
        total.add(produced, stored, twice, counted, lost);
    }
    eprintln!(
        "soak: total produced {}, stored {}, stored twice {}, counted {}, lost without a count {}",
        total.produced, total.stored, total.twice, total.counted, total.lost
    );
    assert_eq!(total.twice, 0, "a reading was stored twice");
    assert_eq!(total.lost, 0, "readings were lost without a count");
}

#[derive(Default)]
struct Totals {
    produced: u64,
    stored: u64,
    twice: u64,
    counted: u64,
    lost: u64,
}

impl Totals {
    fn add(&mut self, produced: u64, stored: u64, twice: u64, counted: u64, lost: u64) {
        self.produced += produced;
        self.stored += stored;
        self.twice += twice;
        self.counted += counted;
        self.lost += lost;
    }
}
