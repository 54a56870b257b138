//! The sensorhub beside its peer, in one run on one machine: `outpost sensorhub` with its default
//! sensors, enrolled with and uploading to a local `outpost cloud` (the release binary, on
//! loopback), and Debian's `zabbix_agent2` with its packaged configuration (passive checks from
//! and active checks to 127.0.0.1), started together. After a warm-up minute both are measured for
//! two minutes: CPU time (utime + stime) as a share of one core, and memory as RSS, PSS and
//! anonymous (private) from `/proc/PID/smaps_rollup`; then the ratios, and the hub's CPU by thread.
//!
//! Needs the `zabbix-agent2` package (`apt-get install zabbix-agent2`); without it the bench fails
//! and says so, rather than print a figure with nothing beside it. Linux only.
//! Run: `cargo bench --bench beside_zabbix` (`OUTPOST_BENCH_SECS` changes the two minutes).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ZABBIX: &str = "/usr/sbin/zabbix_agent2";

/// CPU seconds used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // USER_HZ is 100 on every Linux this runs on.
    ticks / 100.0
}

/// Per thread (by id): its group (the thread's name without its number, `sled-io-3` →
/// `sled-io-*`), nanoseconds on a CPU so far (`/proc/PID/task/TID/schedstat`, exact, not in 10 ms
/// ticks) and context switches (each one a wake-up of a sleeping thread, or a preemption).
fn threads(pid: u32) -> std::collections::HashMap<String, (String, u64, u64)> {
    let mut out = std::collections::HashMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return out };
    for task in tasks.flatten() {
        let p = task.path();
        let read = |f: &str| std::fs::read_to_string(p.join(f)).unwrap_or_default();
        let comm = read("comm").trim().to_string();
        let group = match comm.trim_end_matches(|c: char| c.is_ascii_digit()) {
            stem if stem.len() < comm.len() => format!("{stem}*"),
            _ => comm,
        };
        let ns: u64 = read("schedstat").split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0);
        let switches: u64 = read("status")
            .lines()
            .filter(|l| l.contains("_ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum();
        out.insert(task.file_name().to_string_lossy().into_owned(), (group, ns, switches));
    }
    out
}

/// What each thread group used between two [`threads`] snapshots: (threads alive at the end,
/// nanoseconds, context switches). A thread started in between counts from zero; one that ended
/// in between is missing (what it used since the first snapshot is not counted).
fn by_group(
    before: &std::collections::HashMap<String, (String, u64, u64)>,
    after: &std::collections::HashMap<String, (String, u64, u64)>,
) -> std::collections::BTreeMap<String, (usize, u64, u64)> {
    let mut out = std::collections::BTreeMap::new();
    for (tid, (group, ns, sw)) in after {
        let (ns0, sw0) = before.get(tid).map_or((0, 0), |(_, n, s)| (*n, *s));
        let e = out.entry(group.clone()).or_insert((0, 0, 0));
        e.0 += 1;
        e.1 += ns.saturating_sub(ns0);
        e.2 += sw.saturating_sub(sw0);
    }
    out
}

/// (RSS, PSS, anonymous) in kB.
fn memory(pid: u32) -> (u64, u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    let kb = |name: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (kb("Rss:"), kb("Pss:"), kb("Anonymous:"))
}

/// A free port zabbix_agent2 accepts (its ListenPort must be 1024–32767, below the ephemeral range).
fn free_agent_port() -> u16 {
    (20_000..32_000).find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok()).expect("a free port")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out waiting until {what}");
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Resident kB of the mappings of `path` in process `pid`, from `/proc/PID/smaps`.
fn resident_of(pid: u32, path: &Path) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let (mut ours, mut total) = (false, 0);
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        match fields.next() {
            // A mapping's header: "start-end perms offset dev inode [path]".
            Some(first) if first.contains('-') && !first.ends_with(':') => {
                ours = fields.nth(4).is_some_and(|p| Path::new(p) == path);
            }
            Some("Rss:") if ours => total += fields.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0),
            _ => {}
        }
    }
    total
}

fn outpost(args: &[&str], log: &Path) -> Killed {
    outpost_from(Path::new(env!("CARGO_BIN_EXE_outpost")), args, log)
}

fn outpost_from(exe: &Path, args: &[&str], log: &Path) -> Killed {
    let out = std::fs::File::create(log).unwrap();
    Killed(
        Command::new(exe)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap(),
    )
}

fn main() {
    assert!(
        Path::new(ZABBIX).exists(),
        "{ZABBIX} is missing: install Debian's zabbix-agent2 (`apt-get install zabbix-agent2`); \
         this bench measures the hub beside it and has no figure without it"
    );
    let secs: u64 = std::env::var("OUTPOST_BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(120);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // The cloud, and a token for the hub.
    let port = free_port();
    let cloud_cfg = d.join("cloud.toml");
    std::fs::write(
        &cloud_cfg,
        format!("listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n", d.join("cloud").display()),
    )
    .unwrap();
    let _cloud = outpost(&["cloud", "--config", cloud_cfg.to_str().unwrap()], &d.join("cloud.log"));
    let ca = d.join("cloud/tls/ca.pem");
    let url = format!("https://127.0.0.1:{port}");
    wait_until(Duration::from_secs(30), "the cloud answers", || {
        ca.exists() && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let client = reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap())
        .tls_built_in_root_certs(false)
        .build()
        .unwrap();
    let admin = std::fs::read_to_string(d.join("cloud/admin-token")).unwrap();
    let token: serde_json::Value = client
        .post(format!("{url}/v1/enrollment-tokens"))
        .bearer_auth(admin.trim())
        .json(&serde_json::json!({"network": "bench", "ttl": "1h"}))
        .send()
        .unwrap()
        .json()
        .unwrap();

    // The hub: default sensors, uploading directly.
    let hub_cfg = d.join("hub.toml");
    std::fs::write(
        &hub_cfg,
        format!(
            "data_dir = \"{}\"\n[uplink]\ncloud = \"{url}\"\nca_file = \"{}\"\nenroll_token = \"{}\"\ndiscover = false\nadvertise = false\n",
            d.join("hub").display(),
            ca.display(),
            token["token"].as_str().unwrap()
        ),
    )
    .unwrap();
    // The hub runs from a copy of the binary of its own, as on a monitored machine where no other
    // Outpost process maps it: run from the cloud's file, the pages both touch would be shared
    // (halving them in the hub's PSS, a flattering figure) and the kernel would keep them resident
    // for the cloud however little the hub needs them. Beside the original in the target directory,
    // on the disk the build lives on, not on a /tmp that may be tmpfs.
    let hub_exe = Path::new(env!("CARGO_BIN_EXE_outpost")).with_file_name("outpost-bench-hub");
    std::fs::copy(env!("CARGO_BIN_EXE_outpost"), &hub_exe).unwrap();
    let hub =
        outpost_from(&hub_exe, &["sensorhub", "--config", hub_cfg.to_str().unwrap()], &d.join("hub.log"));

    // The peer: the packaged configuration, with its files in the bench's directory and a free
    // passive port (the packaged agent may be running as a service on 10050).
    let zcfg = d.join("zabbix_agent2.conf");
    std::fs::write(
        &zcfg,
        format!(
            "LogFile={}\nLogFileSize=0\nPidFile={}\nServer=127.0.0.1\nServerActive=127.0.0.1\nHostname=Zabbix server\n\
             ListenPort={}\nControlSocket={}\nInclude=/etc/zabbix/zabbix_agent2.d/plugins.d/*.conf\n",
            d.join("zabbix.log").display(),
            d.join("zabbix.pid").display(),
            free_agent_port(),
            d.join("agent.sock").display()
        ),
    )
    .unwrap();
    let zout = std::fs::File::create(d.join("zabbix.out")).unwrap();
    let zabbix = Killed(
        Command::new(ZABBIX)
            .args(["-c", zcfg.to_str().unwrap(), "-f"])
            .stdin(Stdio::null())
            .stdout(zout.try_clone().unwrap())
            .stderr(zout)
            .spawn()
            .unwrap(),
    );

    wait_until(Duration::from_secs(60), "the hub's readings reach the cloud", || {
        client
            .get(format!("{url}/v1/machines"))
            .bearer_auth(admin.trim())
            .send()
            .ok()
            .and_then(|r| r.json::<serde_json::Value>().ok())
            .is_some_and(|v| v.as_array().is_some_and(|a| !a.is_empty()))
    });
    eprintln!("warming up for a minute, then measuring for {secs} s …");
    std::thread::sleep(Duration::from_secs(60));
    let (mut hub, mut zabbix) = (hub, zabbix);
    let alive = |name: &str, c: &mut Killed, log: &Path| {
        if let Ok(Some(st)) = c.0.try_wait() {
            panic!(
                "{name} exited ({st}) before the measurement:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
    };
    alive("the hub", &mut hub, &d.join("hub.log"));
    alive("zabbix_agent2", &mut zabbix, &d.join("zabbix.out"));
    let (hub_pid, zbx_pid) = (hub.0.id(), zabbix.0.id());
    let (h0, z0, t0) = (cpu_seconds(hub_pid), cpu_seconds(zbx_pid), Instant::now());
    let hub_threads0 = threads(hub_pid);
    std::thread::sleep(Duration::from_secs(secs));
    let wall = t0.elapsed().as_secs_f64();
    let hub_threads1 = threads(hub_pid);
    alive("the hub", &mut hub, &d.join("hub.log"));
    alive("zabbix_agent2", &mut zabbix, &d.join("zabbix.out"));
    let hub_cpu = (cpu_seconds(hub_pid) - h0) / wall * 100.0;
    let zbx_cpu = (cpu_seconds(zbx_pid) - z0) / wall * 100.0;
    let (hr, hp, ha) = memory(hub_pid);
    let hub_code = resident_of(hub_pid, &hub_exe);
    let (zr, zp, za) = memory(zbx_pid);

    let mb = |kb: u64| kb as f64 / 1024.0;
    println!(
        "measured over {wall:.0} s after a 60 s warm-up, on {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("{:<24} {:>10} {:>10} {:>10} {:>10}", "", "CPU %core", "RSS MB", "PSS MB", "anon MB");
    println!(
        "{:<24} {:>10.3} {:>10.1} {:>10.1} {:>10.1}",
        "outpost sensorhub",
        hub_cpu,
        mb(hr),
        mb(hp),
        mb(ha)
    );
    println!(
        "{:<24} {:>10.3} {:>10.1} {:>10.1} {:>10.1}",
        "zabbix_agent2 6.0",
        zbx_cpu,
        mb(zr),
        mb(zp),
        mb(za)
    );
    println!(
        "of the hub's RSS, {:.1} MB are pages of its own executable ({:.1} MB file)",
        mb(hub_code),
        std::fs::metadata(&hub_exe).map_or(0.0, |m| m.len() as f64 / 1_048_576.0)
    );
    match code_order_found(&hub_exe) {
        Some((found, listed)) => println!(
            "code order (link/hub-code.order): {found} of its {listed} functions are in this binary{}",
            // Matched as the link matched them, hashes left out, so new hashes alone do not lose
            // them; functions the hub no longer calls, or that are inlined now, do.
            if found * 4 < listed * 3 {
                "; many are not: the hub's code has changed, regenerate the order with link/make-hub-code-order"
            } else {
                ""
            }
        ),
        None => println!("code order: cannot tell (`nm` did not run)"),
    }
    println!("where the hub's CPU went, by thread (share of one core, wake-ups per second):");
    for (group, (n, ns, switches)) in by_group(&hub_threads0, &hub_threads1) {
        println!(
            "  {:<22} {:>2} thread(s) {:>9.4} %  {:>6.2} wake-ups/s",
            group,
            n,
            ns as f64 / 1e9 / wall * 100.0,
            switches as f64 / wall
        );
    }
    let ratio = |a: f64, b: f64| if b > 0.0 { format!("{:.2}", a / b) } else { "n/a".into() };
    println!(
        "{:<24} {:>10} {:>10} {:>10} {:>10}",
        "ratio outpost/zabbix",
        ratio(hub_cpu, zbx_cpu),
        ratio(hr as f64, zr as f64),
        ratio(hp as f64, zp as f64),
        ratio(ha as f64, za as f64)
    );
}

/// How many of the functions `link/hub-code.order` lists this binary has, matched as
/// `link/ordered-cc` matches them at link time: by name without ThinLTO's `.llvm.` suffix, else by
/// the name with every hash left out where that names no more functions than the order lists.
fn code_order_found(exe: &Path) -> Option<(usize, usize)> {
    let order = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/link/hub-code.order")).ok()?;
    let out = Command::new("nm").arg(exe).output().ok().filter(|o| o.status.success())?;
    let out = String::from_utf8(out.stdout).ok()?;
    let mut names = HashSet::new();
    let mut by_key: HashMap<String, usize> = HashMap::new();
    // Functions only (text and weak symbols), as the link counts them.
    let functions = out.lines().filter_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
        [_, "t" | "T" | "w" | "W", name] => Some(name),
        _ => None,
    });
    for name in functions {
        names.insert(without_lto_suffix(name));
        *by_key.entry(hashless(name)).or_default() += 1;
    }
    let listed: Vec<&str> =
        order.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    let mut listed_by_key: HashMap<String, usize> = HashMap::new();
    for name in &listed {
        *listed_by_key.entry(hashless(name)).or_default() += 1;
    }
    let found = listed
        .iter()
        .filter(|n| {
            let key = hashless(n);
            names.contains(without_lto_suffix(n))
                || by_key.get(&key).is_some_and(|&built| built <= listed_by_key[&key])
        })
        .count();
    Some((found, listed.len()))
}

/// A name without the `.llvm.<number>` suffix ThinLTO gives functions it shares between units.
fn without_lto_suffix(name: &str) -> &str {
    match name.rsplit_once(".llvm.") {
        Some((base, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => base,
        _ => name,
    }
}

/// A name with its hashes left out: the legacy mangling's `17h<16 hex digits>E` at the end and
/// the crate disambiguators (`Cs<base 62>_`) of the v0 mangling.
fn hashless(name: &str) -> String {
    let mut name = without_lto_suffix(name);
    if let Some(base) = name.strip_suffix('E').and_then(|n| n.get(..n.len().checked_sub(19)?)) {
        let hash = &name[base.len()..];
        if hash.starts_with("17h") && hash[3..19].bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            name = base;
        }
    }
    let mut key = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(at) = rest.find("Cs") {
        key.push_str(&rest[..at + 2]);
        rest = &rest[at + 2..];
        let hash = rest.bytes().take_while(u8::is_ascii_alphanumeric).count();
        if hash > 0 && rest.as_bytes().get(hash) == Some(&b'_') {
            rest = &rest[hash..];
        }
    }
    key.push_str(rest);
    key
}
