//! The sensorhub's footprint: the real release binary with 50 sensors at 10 s intervals,
//! buffering to disk (no uplink, so the figure is the hub's own). After a warm-up minute it
//! measures resident memory (VmRSS, VmHWM) and CPU time (utime + stime from /proc) over the next
//! two minutes. Linux only. Run: `cargo bench --bench hub_footprint`

use std::time::{Duration, Instant};

fn proc_stat(pid: u32) -> (f64, u64, u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap()
            .parse()
            .unwrap()
    };
    (ticks / 100.0, kb("VmRSS:"), kb("VmHWM:"), kb("RssAnon:"))
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    // Targets for the checks, all on this machine: a listener, files, a process.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut cfg = format!(
        "data_dir = \"{}\"\n[uplink]\ndiscover = false\nadvertise = false\n",
        dir.path().join("data").display()
    );
    let mut n = 0;
    for kind in ["cpu", "memory", "disk", "diskio", "network", "load"] {
        cfg += &format!("[[sensor]]\nkind = \"{kind}\"\ninterval = \"10s\"\n");
        n += 1;
    }
    for i in 0..15 {
        cfg += &format!("[[sensor]]\nkind = \"tcp\"\nname = \"t{i}\"\nhost = \"127.0.0.1\"\nport = {port}\ninterval = \"10s\"\n");
        let f = dir.path().join(format!("f{i}"));
        std::fs::write(&f, b"x").unwrap();
        cfg += &format!(
            "[[sensor]]\nkind = \"file\"\nname = \"f{i}\"\npath = \"{}\"\ninterval = \"10s\"\n",
            f.display()
        );
        n += 2;
    }
    for i in 0..14 {
        cfg += &format!("[[sensor]]\nkind = \"process\"\nname = \"p{i}\"\nprocess = \"init\"\nmin_count = 0\ninterval = \"10s\"\n");
        n += 1;
    }
    assert_eq!(n, 50);
    let path = dir.path().join("hub.toml");
    std::fs::write(&path, cfg).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["sensorhub", "--config", path.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let pid = child.id();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            drop(s)
        }
    });
    std::thread::sleep(Duration::from_secs(60));
    let (cpu0, _, _, _) = proc_stat(pid);
    let t0 = Instant::now();
    let mut rss_max = 0;
    while t0.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_secs(5));
        rss_max = rss_max.max(proc_stat(pid).1);
    }
    let (cpu1, rss, hwm, anon) = proc_stat(pid);
    let cpu_pct = (cpu1 - cpu0) / t0.elapsed().as_secs_f64() * 100.0;
    println!(
        "sensorhub, 50 sensors at 10 s, release build: RSS {:.1} MB now ({:.1} MB of it private, the rest shared code and libraries), {:.1} MB max while measured, {:.1} MB peak since start; CPU {:.3} % of one core over {:.0} s",
        rss as f64 / 1024.0,
        anon as f64 / 1024.0,
        rss_max as f64 / 1024.0,
        hwm as f64 / 1024.0,
        cpu_pct,
        t0.elapsed().as_secs_f64()
    );
    let _ = child.kill();
    let _ = child.wait();
}
