//! Load generator: N simulated hubs against a real cloud (and optionally a connector), each with a
//! real RSA-3072 machine key, enrolled with its own one-time token, authenticating like a hub:
//! straight to the cloud in a machine session (one X25519 login, then an HMAC per request; `--signed`
//! signs every request instead, as hubs did before sessions), through a connector with a signature
//! per request. Each hub starts at its own phase of the batch period (the fleet spread evenly
//! over it, as hubs started at different times are), then posts a gzip batch at a set rate with
//! strictly rising seqs and holds a command long-poll open, directly or through a connector;
//! optionally it first sends a backlog (the catch-up after an outage: then every hub starts at
//! once) as fast as it is acknowledged. Every simulated hub sends from a
//! loopback address of its own (127.x.y.z), as hubs on a network would, so the per-source limits
//! of the listeners see N sources, not one.
//!
//! It prints acknowledgement latency (p50, p99, max), errors by cause, both again for what was
//! sent after the fleet settled (`--settle`, 60 s: the start is every hub's login), the cloud's (and the
//! connector's) CPU share and peak RSS, the database server's CPU share with `--postgres`, the
//! generator's own CPU share (all of these every 5 s as well), and the upstream
//! connections the connector held; at the end it checks that every acknowledged reading is stored
//! in the cloud exactly once, and prints how long that took to become true.
//!
//! The cloud and connector are the `outpost` binary of this build, as separate processes on
//! loopback. Keys are made once into `<target>/loadgen-keys` and reused (an RSA-3072 key takes
//! about half a second to make).
//!
//! Run: `cargo bench --bench loadgen -- --hubs 1000 [--per-minute 50] [--batches-per-minute 1]
//!       [--minutes 2] [--via-connector] [--backlog 5000] [--signed] [--postgres]
//!       [--settle 60] [--cloud-config 'key = value']`
//! (`--keys-only` makes the keys of `--hubs` hubs and stops.)

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use outpost_shared::keys::{sign_request, KeyPair, SessionClient};
use outpost_shared::model::{Batch, Reading, Role, Sample, State, Value};
use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The one sensor every simulated hub reports: one readings query per hub checks it.
const SENSOR: &str = "load.value";
/// Most readings per backlog batch (a hub's default `batch_max` is 5,000; 1,000 keeps each request
/// well under the cloud's body limits while still draining fast).
const BACKLOG_BATCH: usize = 1000;

struct Args {
    hubs: usize,
    per_minute: usize,
    batches_per_minute: usize,
    minutes: f64,
    via_connector: bool,
    backlog: usize,
    cloud_config: String,
    /// Only make the keys (ahead of a run), then stop.
    keys_only: bool,
    /// Sign every request with the hub's key, as hubs did before machine sessions (straight to
    /// the cloud a real hub logs in once and then MACs each request).
    signed: bool,
    /// Run the cloud on a throwaway PostgreSQL server (unix socket, this machine) instead of sled.
    postgres: bool,
    /// Seconds from the start after which the fleet counts as settled: the latencies and errors
    /// from then on are printed apart, as the sustained figures (the start is the fleet's logins).
    settle: f64,
}

impl Args {
    fn parse() -> Args {
        let mut a = Args {
            hubs: 200,
            per_minute: 50,
            batches_per_minute: 1,
            minutes: 2.0,
            via_connector: false,
            backlog: 0,
            cloud_config: String::new(),
            keys_only: false,
            signed: false,
            postgres: false,
            settle: 60.0,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let mut value = |name: &str| it.next().unwrap_or_else(|| panic!("{name} needs a value"));
            match flag.as_str() {
                "--hubs" => a.hubs = value("--hubs").parse().expect("--hubs N"),
                "--per-minute" => a.per_minute = value("--per-minute").parse().expect("--per-minute N"),
                "--batches-per-minute" => {
                    a.batches_per_minute =
                        value("--batches-per-minute").parse().expect("--batches-per-minute N")
                }
                "--minutes" => a.minutes = value("--minutes").parse().expect("--minutes X"),
                "--via-connector" => a.via_connector = true,
                "--keys-only" => a.keys_only = true,
                "--signed" => a.signed = true,
                "--postgres" => a.postgres = true,
                "--settle" => a.settle = value("--settle").parse().expect("--settle SECONDS"),
                "--backlog" => a.backlog = value("--backlog").parse().expect("--backlog N"),
                "--cloud-config" => {
                    a.cloud_config.push_str(&value("--cloud-config"));
                    a.cloud_config.push('\n');
                }
                // What `cargo bench` passes to every bench binary.
                "--bench" => {}
                other => panic!("unknown argument {other}; see the header of benches/loadgen.rs"),
            }
        }
        assert!(a.hubs >= 1 && a.hubs <= 60_000, "--hubs must be 1..=60000");
        assert!(
            a.batches_per_minute >= 1 && a.per_minute >= a.batches_per_minute,
            "at least one reading a batch"
        );
        a
    }
}

/// The loopback address simulated hub `i` sends from: 127.1.0.1, 127.1.0.2, …
fn source_of(i: usize) -> IpAddr {
    let n = i as u32 + 1;
    IpAddr::V4(Ipv4Addr::new(127, 1 + (n >> 16) as u8, (n >> 8) as u8, n as u8))
}

/// Each hub's key, made once and kept for later runs; made on both cores when missing.
fn keys(n: usize) -> Vec<Arc<KeyPair>> {
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| "target".into());
    let dir = target.join("loadgen-keys");
    std::fs::create_dir_all(&dir).unwrap();
    let made = AtomicU64::new(0);
    let next = AtomicU64::new(0);
    let out: Mutex<Vec<Option<Arc<KeyPair>>>> = Mutex::new(vec![None; n]);
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..std::thread::available_parallelism().map(|p| p.get()).unwrap_or(2) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= n {
                    return;
                }
                let (key, new) = KeyPair::load_or_create(&dir.join(format!("hub-{i}.pem"))).unwrap();
                if new {
                    made.fetch_add(1, Ordering::Relaxed);
                }
                out.lock().unwrap()[i] = Some(Arc::new(key));
            });
        }
    });
    let made = made.load(Ordering::Relaxed);
    if made > 0 {
        eprintln!(
            "made {made} new keys in {:.0?} (kept in {} for the next run)",
            started.elapsed(),
            dir.display()
        );
    }
    out.into_inner().unwrap().into_iter().map(Option::unwrap).collect()
}

/// Enrolls every key with a one-time token of its own, a few at a time.
fn enroll_all(cloud: &CloudProc, keys: &[Arc<KeyPair>]) {
    let started = Instant::now();
    let next = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                let ca = reqwest::Certificate::from_pem(&std::fs::read(cloud.ca()).unwrap()).unwrap();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(key) = keys.get(i) else { return };
                    // From the hub's own address: enrollments are limited per source.
                    let client = reqwest::blocking::Client::builder()
                        .add_root_certificate(ca.clone())
                        .tls_built_in_root_certs(false)
                        .local_address(source_of(i))
                        .timeout(Duration::from_secs(30))
                        .build()
                        .unwrap();
                    let body = serde_json::json!({"token": cloud.enroll_token(), "public_key": key.public().to_pem(),
                        "role": "sensorhub", "hostname": format!("sim-{i}")});
                    let r = client.post(format!("{}/v1/enroll", cloud.url())).json(&body).send().unwrap();
                    assert!(r.status().is_success(), "enroll of hub {i}: {}", r.status());
                }
            });
        }
    });
    eprintln!("enrolled {} hubs in {:.1?}", keys.len(), started.elapsed());
}

/// Seconds of the run whose latencies and errors are printed together, to show the start's
/// storm apart from the steady state.
const WINDOW: f64 = 30.0;

/// What the hubs saw, shared by all of them.
struct Stats {
    started: Instant,
    /// When the fleet counts as settled (see `Args::settle`).
    settled: Duration,
    /// Of each successful upload: seconds from the start when it was sent, and its
    /// acknowledgement latency in milliseconds.
    latencies: Mutex<Vec<(f64, f64)>>,
    /// Failed attempts by cause (status and verdict, or transport error kind).
    errors: Mutex<BTreeMap<String, u64>>,
    /// The same, of attempts made once the fleet had settled.
    late_errors: Mutex<BTreeMap<String, u64>>,
    /// Failed attempts by [`WINDOW`] of the run they were made in.
    window_errors: Mutex<BTreeMap<u64, u64>>,
    polls_answered: AtomicU64,
    acked_readings: AtomicU64,
}

impl Stats {
    fn new(settled: Duration) -> Stats {
        Stats {
            started: Instant::now(),
            settled,
            latencies: Mutex::default(),
            errors: Mutex::default(),
            late_errors: Mutex::default(),
            window_errors: Mutex::default(),
            polls_answered: AtomicU64::new(0),
            acked_readings: AtomicU64::new(0),
        }
    }

    fn error(&self, cause: String) {
        let window = (self.started.elapsed().as_secs_f64() / WINDOW) as u64;
        *self.window_errors.lock().unwrap().entry(window).or_default() += 1;
        if self.started.elapsed() >= self.settled {
            *self.late_errors.lock().unwrap().entry(cause.clone()).or_default() += 1;
        }
        *self.errors.lock().unwrap().entry(cause).or_default() += 1;
    }

    fn acked(&self, sent: Instant) {
        let at = sent.duration_since(self.started).as_secs_f64();
        self.latencies.lock().unwrap().push((at, sent.elapsed().as_secs_f64() * 1000.0));
    }
}

/// One simulated hub.
struct Hub {
    index: usize,
    key: Arc<KeyPair>,
    id: String,
    client: reqwest::Client,
    /// Where it sends: the cloud, or the connector's LAN API.
    base: String,
    /// Its machine session with the cloud, straight to the cloud unless `--signed` (through a
    /// connector hubs sign every request: the connector checks them).
    session: Option<Arc<SessionClient>>,
}

/// An answer: status, Retry-After, body.
type Answered = Result<(u16, Option<u64>, Vec<u8>), NoAnswer>;

/// Why a request got no answer a hub could act on.
enum NoAnswer {
    /// The signed path's transport failed.
    Transport(reqwest::Error),
    /// The session client's request failed (it says why in words).
    Session(String),
    /// A success answer in a session without a valid MAC: not believed, the batch is kept.
    Unbelieved,
}

impl NoAnswer {
    /// What the run's error tally counts it as.
    fn kind(&self) -> String {
        match self {
            NoAnswer::Transport(e) if e.is_timeout() => "timeout error".into(),
            NoAnswer::Transport(e) if e.is_connect() => "connect error".into(),
            NoAnswer::Transport(_) => "transport error".into(),
            NoAnswer::Session(why) if why.contains("timed out") => "session: timeout error".into(),
            NoAnswer::Session(_) => "session: transport error".into(),
            NoAnswer::Unbelieved => "answer without a valid session MAC".into(),
        }
    }
}

impl Hub {
    fn batch(&self, seqs: std::ops::Range<u64>, ts: impl Fn(u64) -> chrono::DateTime<chrono::Utc>) -> Batch {
        let readings = seqs
            .map(|seq| Reading {
                machine_id: self.id.clone(),
                seq,
                sample: Sample::new(SENSOR, Value::Number((seq % 100) as f64), State::Ok).at(ts(seq)),
            })
            .collect();
        Batch {
            machine_id: self.id.clone(),
            hostname: format!("sim-{}", self.index),
            role: Role::Sensorhub,
            uplink: "direct".into(),
            buffered: 0,
            dropped: 0,
            version: "loadgen".into(),
            quarantined: 0,
            clock_problem: None,
            features: Vec::new(),
            readings,
        }
    }

    /// One request as a real hub makes it: in its session, or signed with its key.
    async fn send(&self, method: reqwest::Method, path: &str, json: &[u8], wire: Vec<u8>) -> Answered {
        let gzipped = !wire.is_empty();
        let decorate = |r: reqwest::RequestBuilder| {
            if gzipped {
                r.header("content-encoding", "gzip").header("content-type", "application/json")
            } else {
                r
            }
        };
        if let Some(session) = &self.session {
            return match session.send(&self.client, &self.base, method, path, json, wire, decorate).await {
                Ok(a) => {
                    let retry = a
                        .headers
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok());
                    if a.status.is_success() && !a.trusted() {
                        return Err(NoAnswer::Unbelieved);
                    }
                    Ok((a.status.as_u16(), retry, a.body))
                }
                Err(why) => Err(NoAnswer::Session(why)),
            };
        }
        let sig = sign_request(&self.key, method.as_str(), path, json, chrono::Utc::now()).unwrap();
        let mut req = decorate(self.client.request(method, format!("{}{path}", self.base)));
        for (name, value) in sig.to_pairs() {
            req = req.header(name, value);
        }
        let r = req.body(wire).send().await.map_err(NoAnswer::Transport)?;
        let status = r.status().as_u16();
        let retry = r.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        Ok((status, retry, r.bytes().await.map_err(NoAnswer::Transport)?.to_vec()))
    }

    /// Sends one batch until it is acknowledged (a busy receiver's "retry later" is obeyed, a
    /// transport error retried after a second), or until `stop` for good. Returns whether it was.
    async fn deliver(&self, batch: &Batch, stats: &Stats, stop: &AtomicBool) -> bool {
        let json = serde_json::to_vec(batch).unwrap();
        let body = outpost_shared::wire::gzip(&json);
        loop {
            let sent = Instant::now();
            let wait = match self.send(reqwest::Method::POST, "/v1/batches", &json, body.clone()).await {
                Ok((status, _, _)) if (200..300).contains(&status) => {
                    stats.acked(sent);
                    stats.acked_readings.fetch_add(batch.readings.len() as u64, Ordering::Relaxed);
                    return true;
                }
                Ok((status, retry_after, body)) => {
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    let verdict = v["verdict"].as_str().unwrap_or("-").to_string();
                    let code = v["code"].as_str().unwrap_or("-").to_string();
                    stats.error(format!("HTTP {status} verdict {verdict} code {code}"));
                    if verdict == "refused" {
                        // Refused for good is a bug of the generator or the cloud: say it loudly.
                        eprintln!("hub {}: batch refused for good: {v}", self.index);
                        return false;
                    }
                    // As a hub does: at least the asked wait, spread.
                    outpost_shared::backoff::spread(Duration::from_secs(retry_after.unwrap_or(1).max(1)))
                }
                Err(e) => {
                    stats.error(e.kind());
                    Duration::from_secs(1)
                }
            };
            if stop.load(Ordering::Relaxed) {
                return false;
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// When in each `period` this hub sends its batch: the fleet spread evenly over it.
    fn phase(&self, period: Duration) -> Duration {
        period.mul_f64((self.index as f64 * 0.618_033_988_7).fract())
    }

    /// The hub's command long-poll, its first after `start`, held open until `stop`.
    async fn poll(&self, start: Duration, stats: &Stats, stop: &AtomicBool) {
        let path = "/v1/commands/poll?wait=25";
        tokio::time::sleep(start).await;
        while !stop.load(Ordering::Relaxed) {
            match self.send(reqwest::Method::GET, path, b"", Vec::new()).await {
                Ok((status, _, _)) if (200..300).contains(&status) => {
                    stats.polls_answered.fetch_add(1, Ordering::Relaxed);
                }
                Ok((status, _, _)) => {
                    stats.error(format!("poll: HTTP {status}"));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => {
                    stats.error(format!("poll: {}", e.kind()));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

/// CPU seconds a process has used (utime + stime; USER_HZ is 100 on every Linux this runs on).
fn cpu_seconds(pid: u32) -> f64 {
    stat_fields(pid, &[11, 12]) / 100.0
}

/// The sum of fields of `/proc/<pid>/stat`, counted after the command name (0 is the state).
fn stat_fields(pid: u32, fields: &[usize]) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some((_, rest)) = stat.rsplit_once(')') else { return 0.0 };
    let f: Vec<&str> = rest.split_whitespace().collect();
    fields.iter().filter_map(|&i| f.get(i)?.parse::<f64>().ok()).sum()
}

/// CPU seconds of a process and its children (a database server: the postmaster and its
/// backends, which come and go with their connections): the live ones', and the reaped ones' as
/// the kernel adds them to their parent (cutime + cstime).
fn tree_cpu_seconds(pid: u32) -> f64 {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    cpu_seconds(pid)
        + stat_fields(pid, &[13, 14]) / 100.0
        + children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()).map(cpu_seconds).sum::<f64>()
}

/// Peak resident set (VmHWM) and current RSS of a process, in MB.
fn memory_mb(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |name: &str| -> f64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kb("VmHWM:") / 1024.0, kb("VmRSS:") / 1024.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// A sampled process: its CPU at the start of the window, its peak memory over it.
struct Watched {
    name: &'static str,
    pid: u32,
    cpu0: f64,
    /// Counted with its children (the database server).
    tree: bool,
}

impl Watched {
    fn cpu(&self) -> f64 {
        if self.tree {
            tree_cpu_seconds(self.pid)
        } else {
            cpu_seconds(self.pid)
        }
    }
}

/// What a sampled process used over the load window: its CPU share (% of a core) and, for one
/// process, its peak and current RSS in MB.
struct Figure {
    name: &'static str,
    cpu: f64,
    memory: Option<(f64, f64)>,
}

/// Lets each process of the test raise its descriptor limit: the cloud holds two connections per
/// directly attached hub, the generator as many. (Windows has no such per-process limit to raise;
/// the figures here come from Linux, where /proc is read.)
#[cfg(not(unix))]
fn raise_nofile() {}

#[cfg(unix)]
fn raise_nofile() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn main() {
    let args = Args::parse();
    raise_nofile();
    let machine = format!(
        "{} cores, load average {}",
        std::thread::available_parallelism().map(|p| p.get()).unwrap_or(0),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    eprintln!(
        "loadgen: {} hubs, {} readings/min in {} batch(es)/min each, {} min, {}, backlog {} ({machine})",
        args.hubs,
        args.per_minute,
        args.batches_per_minute,
        args.minutes,
        match (args.via_connector, args.signed) {
            (true, _) => "through one connector, every request signed",
            (false, true) => "straight to the cloud, every request signed",
            (false, false) => "straight to the cloud in machine sessions",
        },
        args.backlog
    );
    eprintln!(
        "loadgen: cloud storage {}",
        if args.postgres { "PostgreSQL (throwaway server)" } else { "sled" }
    );
    let keys = keys(args.hubs);
    if args.keys_only {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Room for the whole fleet on the listener: each hub holds a long-poll open and sends its
    // uploads, so connections and requests in flight grow with the fleet.
    let room = (args.hubs * 3).max(16_384);
    // On PostgreSQL: a private server on a unix socket, kept until the end of the run.
    #[cfg(unix)]
    let database = args.postgres.then(cloud_nodes::database);
    #[cfg(not(unix))]
    let database: Option<((), String)> = {
        assert!(!args.postgres, "--postgres starts a throwaway server, which needs a unix machine");
        None
    };
    // The engine's defaults otherwise (pool size, connection wait), as an operator would start.
    let storage =
        database.as_ref().map(|(_, url)| format!("[storage]\npostgres = \"{url}\"\n")).unwrap_or_default();
    let cloud_extra =
        format!("[server]\nmax_connections = {room}\nmax_requests = {room}\n{}{storage}", args.cloud_config);
    let cloud = CloudProc::start_on(&dir.path().join("cloud"), free_port(), &cloud_extra);
    let connector = args.via_connector.then(|| ConnectorProc::start(&dir.path().join("conn"), &cloud, ""));
    enroll_all(&cloud, &keys);

    let (base, ca) = match &connector {
        Some(c) => (c.url(), c.dir.join("data/tls/ca.pem")),
        None => (cloud.url(), cloud.ca()),
    };
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap();
    let sessions = connector.is_none() && !args.signed;
    let cloud_key =
        outpost_shared::keys::KeyPair::load(&cloud.dir.join("data/cloud.key")).unwrap().public().clone();
    let hubs: Vec<Arc<Hub>> = keys
        .iter()
        .enumerate()
        .map(|(index, key)| {
            let client = reqwest::Client::builder()
                .add_root_certificate(ca.clone())
                .tls_built_in_root_certs(false)
                .local_address(source_of(index))
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap();
            Arc::new(Hub {
                index,
                key: key.clone(),
                id: key.machine_id().to_string(),
                client,
                base: base.clone(),
                session: sessions.then(|| Arc::new(SessionClient::new(key.clone(), cloud_key.clone()))),
            })
        })
        .collect();

    let stats = Arc::new(Stats::new(Duration::from_secs_f64(args.settle)));
    let stop = Arc::new(AtomicBool::new(false));
    let rt = tokio::runtime::Runtime::new().unwrap();
    #[cfg(unix)]
    let database_pid = database.as_ref().and_then(|(server, _)| {
        let pid = std::fs::read_to_string(server.data_dir().join("postmaster.pid")).ok()?;
        pid.lines().next()?.trim().parse::<u32>().ok()
    });
    #[cfg(not(unix))]
    let database_pid: Option<u32> = None;
    let watched: Vec<Watched> = [("cloud", cloud.proc.as_ref().map(|p| p.child.id()), false)]
        .into_iter()
        .chain(connector.iter().map(|c| ("connector", c.proc.as_ref().map(|p| p.child.id()), false)))
        .chain([("database", database_pid, true)])
        .filter_map(|(name, pid, tree)| pid.map(|pid| Watched { name, pid, cpu0: 0.0, tree }))
        .map(|w| Watched { cpu0: w.cpu(), ..w })
        .collect();
    let me = std::process::id();
    let my_cpu0 = cpu_seconds(me);
    let started = Instant::now();
    let duration = Duration::from_secs_f64(args.minutes * 60.0);
    let period = Duration::from_secs_f64(60.0 / args.batches_per_minute as f64);
    let per_batch = (args.per_minute / args.batches_per_minute) as u64;

    // Every hub: its backlog first (as fast as acknowledged), then its live batches on its own
    // phase of the period; its long-poll throughout.
    let backlog_done = Arc::new(Mutex::new(Vec::<Duration>::new()));
    let acked: Arc<Mutex<Vec<u64>>> = Arc::new(Mutex::new(vec![0; hubs.len()]));
    let peak_connections = Arc::new(AtomicU64::new(0));
    let (wall, my_cpu, figures) = rt.block_on(async {
        let mut polls = tokio::task::JoinSet::new();
        for hub in &hubs {
            let (h, s, st) = (hub.clone(), stats.clone(), stop.clone());
            // A live fleet's hubs started at different times: each logs in, polls and sends its
            // first batch at its own phase of the batch period (a real hub signs its login on its
            // own machine; here the generator signs them all, so 10,000 logins crowded into a
            // shorter spread measure the generator). After an outage every hub is back at once:
            // then the polls spread over one poll period.
            let start = if args.backlog == 0 {
                h.phase(period)
            } else {
                Duration::from_secs(25).mul_f64((h.index as f64 * 0.381_966_011_3).fract())
            };
            polls.spawn(async move { h.poll(start, &s, &st).await });
        }
        let mut tasks = tokio::task::JoinSet::new();
        for hub in &hubs {
            let (h, s, st, bd, ack) =
                (hub.clone(), stats.clone(), stop.clone(), backlog_done.clone(), acked.clone());
            let backlog = args.backlog as u64;
            tasks.spawn(async move {
                let mut next_seq = 1u64;
                if backlog > 0 {
                    // The outage's readings, one every few seconds over the hour before now.
                    let now = chrono::Utc::now();
                    let step = chrono::Duration::milliseconds((3_600_000 / backlog.max(1)) as i64);
                    let t0 = Instant::now();
                    while next_seq <= backlog {
                        let end = (next_seq + BACKLOG_BATCH as u64).min(backlog + 1);
                        let batch = h.batch(next_seq..end, |seq| now - step * (backlog + 1 - seq) as i32);
                        if !h.deliver(&batch, &s, &st).await {
                            return;
                        }
                        next_seq = end;
                        ack.lock().unwrap()[h.index] = next_seq - 1;
                    }
                    bd.lock().unwrap().push(t0.elapsed());
                }
                // Spread the fleet over the period, as real hubs started at different times are.
                let mut tick =
                    tokio::time::interval_at(tokio::time::Instant::now() + h.phase(period), period);
                loop {
                    tick.tick().await;
                    if st.load(Ordering::Relaxed) {
                        return;
                    }
                    let batch = h.batch(next_seq..next_seq + per_batch, |_| chrono::Utc::now());
                    if !h.deliver(&batch, &s, &st).await {
                        return;
                    }
                    next_seq += per_batch;
                    ack.lock().unwrap()[h.index] = next_seq - 1;
                }
            });
        }
        let conn_pid = connector.as_ref().and_then(|c| c.proc.as_ref()).map(|p| p.child.id());
        let cloud_port = cloud.port;
        let peak = peak_connections.clone();
        let deadline = tokio::time::Instant::now() + duration;
        // CPU per tick too: whether the generator's own work (its hubs' logins) crowds the cloud
        // out shows only here, not in the averages over the whole run.
        let mut last: Vec<f64> = watched.iter().map(|w| w.cpu0).chain([my_cpu0]).collect();
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_secs(5)).await;
            if let Some(pid) = conn_pid {
                peak.fetch_max(connections_to(pid, cloud_port) as u64, Ordering::Relaxed);
            }
            let now: Vec<f64> = watched.iter().map(Watched::cpu).chain([cpu_seconds(me)]).collect();
            let shares: Vec<String> = watched
                .iter()
                .map(|w| w.name)
                .chain(["generator"])
                .zip(now.iter().zip(&last))
                .map(|(name, (n, l))| format!("{name} {:.0} %", (n - l) / 5.0 * 100.0))
                .collect();
            last = now;
            eprintln!(
                "  {:>4.0} s: {} readings acknowledged, {} errors; CPU {}",
                started.elapsed().as_secs_f64(),
                stats.acked_readings.load(Ordering::Relaxed),
                stats.errors.lock().unwrap().values().sum::<u64>(),
                shares.join(", ")
            );
        }
        // The figures cover the load window, not the wind-down.
        let wall = started.elapsed().as_secs_f64();
        let my_cpu = cpu_seconds(me) - my_cpu0;
        // A database server's memory is its shared buffers and each backend's: not one figure.
        let figures: Vec<Figure> = watched
            .iter()
            .map(|w| Figure {
                name: w.name,
                cpu: (w.cpu() - w.cpu0) / wall * 100.0,
                memory: (!w.tree).then(|| memory_mb(w.pid)),
            })
            .collect();
        stop.store(true, Ordering::Relaxed);
        polls.abort_all();
        // Uploads in flight finish (or give up at their next failure).
        let _ = tokio::time::timeout(Duration::from_secs(40), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        tasks.abort_all();
        (wall, my_cpu, figures)
    });

    // Every acknowledged reading in the cloud exactly once: each hub's stored seqs are exactly
    // 1..=acked. Through a connector the cloud may still be catching up: checked until it holds,
    // which is the drain time after the load stopped.
    let acked = acked.lock().unwrap().clone();
    let verify_started = Instant::now();
    let mut pending: Vec<usize> = (0..hubs.len()).filter(|&i| acked[i] > 0).collect();
    let mut twice = 0usize;
    let mut extra = 0usize;
    while !pending.is_empty() && verify_started.elapsed() < Duration::from_secs(600) {
        let client = cloud.client();
        let token = cloud.admin_token();
        pending.retain(|&i| {
            let url =
                format!("{}/v1/machines/{}/readings?sensor={SENSOR}&limit=100000", cloud.url(), hubs[i].id);
            let Ok(r) = client.get(url).bearer_auth(&token).send() else { return true };
            let Ok(rows) = r.json::<serde_json::Value>() else { return true };
            let seqs: Vec<u64> = rows
                .as_array()
                .map(|a| a.iter().filter_map(|r| r["seq"].as_u64()).collect())
                .unwrap_or_default();
            let unique: HashSet<u64> = seqs.iter().copied().collect();
            if unique.len() != seqs.len() {
                twice += seqs.len() - unique.len();
            }
            let missing = (1..=acked[i]).filter(|s| !unique.contains(s)).count();
            if missing > 0 {
                return true;
            }
            extra += unique.iter().filter(|&&s| s > acked[i]).count();
            false
        });
        if !pending.is_empty() {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    let stored_in = verify_started.elapsed();
    // Through a connector the cloud may still have been taking in the backlog after the load
    // window: its peak over the drain as well.
    let peaks_at_end: Vec<(&str, f64)> =
        watched.iter().filter(|w| !w.tree).map(|w| (w.name, memory_mb(w.pid).0)).collect();

    let all = stats.latencies.lock().unwrap().clone();
    let mut lat: Vec<f64> = all.iter().map(|&(_, ms)| ms).collect();
    lat.sort_by(f64::total_cmp);
    let mut late: Vec<f64> = all.iter().filter(|&&(at, _)| at >= args.settle).map(|&(_, ms)| ms).collect();
    late.sort_by(f64::total_cmp);
    println!(
        "\n== loadgen: {} hubs, {}, {machine} ==",
        args.hubs,
        if args.via_connector { "through one connector" } else { "straight to the cloud" }
    );
    println!(
        "uploads acknowledged: {} ({} readings); ack latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        lat.len(),
        stats.acked_readings.load(Ordering::Relaxed),
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN)
    );
    println!("command polls answered: {}", stats.polls_answered.load(Ordering::Relaxed));
    let errors = stats.errors.lock().unwrap();
    if errors.is_empty() {
        println!("errors: none");
    }
    for (cause, n) in errors.iter() {
        println!("errors: {n} × {cause}");
    }
    println!(
        "sent from {:.0} s on (settled): {} uploads acknowledged, ack latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        args.settle,
        late.len(),
        percentile(&late, 0.50),
        percentile(&late, 0.99),
        late.last().copied().unwrap_or(f64::NAN)
    );
    let window_errors = stats.window_errors.lock().unwrap();
    let windows = (wall / WINDOW).ceil() as u64;
    for w in 0..windows {
        let mut in_window: Vec<f64> =
            all.iter().filter(|&&(at, _)| (at / WINDOW) as u64 == w).map(|&(_, ms)| ms).collect();
        in_window.sort_by(f64::total_cmp);
        println!(
            "  sent in {:>3.0}–{:<3.0} s: {:>6} acknowledged, p50 {:>8.1} ms, p99 {:>8.1} ms; {} errors",
            w as f64 * WINDOW,
            (w + 1) as f64 * WINDOW,
            in_window.len(),
            percentile(&in_window, 0.50),
            percentile(&in_window, 0.99),
            window_errors.get(&w).copied().unwrap_or(0)
        );
    }
    let late_errors = stats.late_errors.lock().unwrap();
    if late_errors.is_empty() {
        println!("errors from {:.0} s on: none", args.settle);
    }
    for (cause, n) in late_errors.iter() {
        println!("errors from {:.0} s on: {n} × {cause}", args.settle);
    }
    for Figure { name, cpu, memory } in &figures {
        match memory {
            Some((peak, now)) => {
                println!(
                    "{name}: {cpu:.1} % of a core over {wall:.0} s, peak RSS {peak:.0} MB (now {now:.0} MB)"
                )
            }
            None => println!("{name}: {cpu:.1} % of a core over {wall:.0} s"),
        }
    }
    println!("generator: {:.1} % of a core", my_cpu / wall * 100.0);
    if connector.is_some() {
        println!(
            "connector → cloud connections held (peak of 5 s samples): {}",
            peak_connections.load(Ordering::Relaxed)
        );
    }
    if args.backlog > 0 {
        let mut done = backlog_done.lock().unwrap().clone();
        done.sort();
        println!(
            "backlog of {} readings per hub acknowledged: {} of {} hubs, the last after {:.1?}",
            args.backlog,
            done.len(),
            hubs.len(),
            done.last().copied().unwrap_or_default()
        );
    }
    println!(
        "stored exactly once: {} ({} hubs still missing acknowledged readings, {} stored twice, {} beyond what was acknowledged); checked in {:.1?} after the load stopped",
        if pending.is_empty() && twice == 0 { "yes" } else { "NO" },
        pending.len(),
        twice,
        extra,
        stored_in
    );
    for (name, peak) in peaks_at_end {
        println!("{name}: peak RSS {peak:.0} MB by the time that was checked");
    }
    if !pending.is_empty() || twice > 0 {
        std::process::exit(1);
    }
}
