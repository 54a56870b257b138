//! `ssdp_probe`: drives the SSDP code by hand and prints one JSON object per line. Used by the
//! namespace tests (`shared/tests/ssdp_netns.rs`) and for checking a LAN by hand. It sends real
//! multicast: run it inside a test namespace (`tests/netns/netns.sh exec PREFIX HOST ...`), not on
//! a machine whose LAN you do not mean to probe.
//!
//! ```text
//! ssdp_probe respond --st ST --uuid UUID --location URL [--boot-id N] [--config-id N]
//!                    [--global RATE/BURST] [--per-source RATE/BURST] [--rescan DURATION]
//!                    [--expect-interfaces N] [--for DURATION]
//!     Serves until stdin closes (or DURATION passes). Prints {"event":"ready",...} once N
//!     interfaces (default 1) are joined, and {"event":"stopped","stats":{...}} after the byebye.
//! ssdp_probe search --st ST [--wait DURATION]
//!     Prints {"event":"found","found":[...]}.
//! ssdp_probe listen [--for DURATION]
//!     Joins 239.255.255.250:1900 on every LAN interface, prints {"event":"ready"}, then one
//!     {"event":"notify",...} per NOTIFY heard, until stdin closes or DURATION passes.
//! ssdp_probe flood --to IP:PORT --count N [--st ST] [--wait DURATION]
//!     Sends N unicast M-SEARCHes from one socket, then counts answers for DURATION; prints
//!     {"event":"flood","sent":N,"replies":M,"elapsed_ms":T}.
//! ```

use outpost_shared::ssdp::{self, message, Advertisement, Interfaces, RateLimits, ResponderConfig};
use serde_json::json;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

fn main() {
    std::process::exit(run(std::env::args().skip(1).collect()));
}

/// Runs one subcommand; returns the exit status (0 ok, 64 bad arguments, 1 failure).
pub fn run(args: Vec<String>) -> i32 {
    let Some((cmd, rest)) = args.split_first() else {
        eprintln!("usage: ssdp_probe respond|search|listen|flood [--flag value]...");
        return 64;
    };
    let flags = match parse_flags(rest) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("ssdp_probe: {e}");
            return 64;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ssdp_probe: cannot start runtime: {e}");
            return 1;
        }
    };
    let result = rt.block_on(async {
        match cmd.as_str() {
            "respond" => respond(&flags).await,
            "search" => search(&flags).await,
            "listen" => listen(&flags).await,
            "flood" => flood(&flags).await,
            other => Err(format!("unknown subcommand `{other}`")),
        }
    });
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("ssdp_probe {cmd}: {e}");
            1
        }
    }
}

type Flags = HashMap<String, String>;

fn parse_flags(args: &[String]) -> Result<Flags, String> {
    let mut flags = HashMap::new();
    let mut it = args.iter();
    while let Some(k) = it.next() {
        let name = k.strip_prefix("--").ok_or_else(|| format!("expected --flag, got `{k}`"))?;
        let v = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
        flags.insert(name.to_string(), v.clone());
    }
    Ok(flags)
}

fn need<'a>(f: &'a Flags, k: &str) -> Result<&'a str, String> {
    f.get(k).map(String::as_str).ok_or_else(|| format!("--{k} is required"))
}

fn duration(f: &Flags, k: &str, default: Duration) -> Result<Duration, String> {
    match f.get(k) {
        None => Ok(default),
        Some(v) => {
            let ms = if let Some(ms) = v.strip_suffix("ms") {
                ms.parse::<u64>().ok()
            } else {
                v.trim_end_matches('s').parse::<f64>().ok().map(|s| (s * 1000.0) as u64)
            };
            ms.map(Duration::from_millis).ok_or_else(|| format!("--{k} `{v}` is not a duration like 3s"))
        }
    }
}

fn number<T: std::str::FromStr>(f: &Flags, k: &str, default: T) -> Result<T, String> {
    f.get(k).map_or(Ok(default), |v| v.parse().map_err(|_| format!("--{k} `{v}` is not a number")))
}

fn rate(f: &Flags, k: &str, default: (u32, u32)) -> Result<(u32, u32), String> {
    let Some(v) = f.get(k) else { return Ok(default) };
    let (r, b) = v.split_once('/').ok_or_else(|| format!("--{k} wants RATE/BURST"))?;
    Ok((
        r.parse().map_err(|_| format!("--{k}: bad rate"))?,
        b.parse().map_err(|_| format!("--{k}: bad burst"))?,
    ))
}

fn emit(v: serde_json::Value) {
    // One object per line, on a line of its own, flushed at once: the tests read these live.
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "\n{v}");
    let _ = out.flush();
}

/// Completes when stdin reaches its end (the parent closed it or died) or `limit` passes.
async fn stop_signal(limit: Option<Duration>) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        let _ = tx.send(());
    });
    match limit {
        Some(d) => {
            let _ = tokio::time::timeout(d, rx).await;
        }
        None => {
            let _ = rx.await;
        }
    }
}

async fn respond(f: &Flags) -> Result<(), String> {
    let defaults = RateLimits::default();
    let (global_per_sec, global_burst) = rate(f, "global", (defaults.global_per_sec, defaults.global_burst))?;
    let (per_source_per_sec, per_source_burst) =
        rate(f, "per-source", (defaults.per_source_per_sec, defaults.per_source_burst))?;
    let cfg = ResponderConfig {
        rescan_interval: duration(f, "rescan", ResponderConfig::default().rescan_interval)?,
        rate_limit: RateLimits {
            global_per_sec,
            global_burst,
            per_source_per_sec,
            per_source_burst,
            ..defaults
        },
        ..ResponderConfig::default()
    };
    let ad = Advertisement {
        st: need(f, "st")?.to_string(),
        uuid: need(f, "uuid")?.to_string(),
        location: need(f, "location")?.to_string(),
        boot_id: number(f, "boot-id", 1)?,
        config_id: number(f, "config-id", 1)?,
        server: ssdp::server_header(env!("CARGO_PKG_VERSION")),
    };
    let limit = f.contains_key("for").then(|| duration(f, "for", Duration::ZERO)).transpose()?;
    let responder = ssdp::Responder::bind(cfg, vec![ad]).await.map_err(|e| e.to_string())?;
    let stats = responder.stats();
    let task = tokio::spawn(responder.run(stop_signal(limit)));
    let expected: u64 = number(f, "expect-interfaces", 1)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while stats.snapshot().interfaces < expected && Instant::now() < deadline && !task.is_finished() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    emit(json!({"event": "ready", "interfaces": ssdp::lan_interfaces(&Interfaces::Auto)}));
    let final_stats = task.await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
    emit(json!({"event": "stopped", "stats": final_stats}));
    Ok(())
}

async fn search(f: &Flags) -> Result<(), String> {
    let wait = duration(f, "wait", Duration::from_secs(3))?;
    let found = ssdp::search(need(f, "st")?, wait).await.map_err(|e| e.to_string())?;
    emit(json!({"event": "found", "found": found}));
    Ok(())
}

async fn listen(f: &Flags) -> Result<(), String> {
    let limit = duration(f, "for", Duration::from_secs(3600))?;
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))
        .map_err(|e| e.to_string())?;
    s.set_reuse_address(true).map_err(|e| e.to_string())?;
    #[cfg(unix)]
    s.set_reuse_port(true).map_err(|e| e.to_string())?;
    s.set_nonblocking(true).map_err(|e| e.to_string())?;
    s.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, ssdp::SSDP_PORT).into()).map_err(|e| e.to_string())?;
    let ifaces = ssdp::lan_interfaces(&Interfaces::Auto);
    for i in &ifaces {
        s.join_multicast_v4(&ssdp::SSDP_GROUP, &i.addr).map_err(|e| format!("join on {i}: {e}"))?;
    }
    let sock = tokio::net::UdpSocket::from_std(s.into()).map_err(|e| e.to_string())?;
    emit(json!({"event": "ready", "interfaces": ifaces}));
    let stop = stop_signal(Some(limit));
    tokio::pin!(stop);
    let mut buf = vec![0u8; message::MAX_MESSAGE + 1];
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(()),
            r = sock.recv_from(&mut buf) => {
                let (n, src) = r.map_err(|e| e.to_string())?;
                let Ok(m) = message::Message::parse(&buf[..n]) else { continue };
                let Ok(notify) = message::Notify::from_message(&m) else { continue };
                let nts = match notify.kind {
                    message::NotifyKind::Alive => "ssdp:alive",
                    message::NotifyKind::ByeBye => "ssdp:byebye",
                    message::NotifyKind::Update => "ssdp:update",
                };
                emit(json!({
                    "event": "notify", "source": src.to_string(), "nts": nts, "nt": notify.nt,
                    "usn": notify.usn, "location": notify.location, "max_age": notify.max_age,
                    "boot_id": notify.boot_id, "server": m.header("SERVER"),
                }));
            }
        }
    }
}

async fn flood(f: &Flags) -> Result<(), String> {
    let to: SocketAddr = need(f, "to")?.parse().map_err(|_| "--to wants IP:PORT".to_string())?;
    let count: u32 = number(f, "count", 100)?;
    let st = f.get("st").map(String::as_str).unwrap_or(ssdp::ST_CONNECTOR);
    let wait = duration(f, "wait", Duration::from_secs(2))?;
    let sock = tokio::net::UdpSocket::bind("0.0.0.0:0").await.map_err(|e| e.to_string())?;
    let req = message::search_request(st, 1, &to.to_string());
    let started = Instant::now();
    for _ in 0..count {
        sock.send_to(req.as_bytes(), to).await.map_err(|e| e.to_string())?;
    }
    let mut replies = 0u32;
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(r) = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await {
        let (n, _) = r.map_err(|e| e.to_string())?;
        if message::Message::parse(&buf[..n]).is_ok() {
            replies += 1;
        }
    }
    let elapsed_ms = started.elapsed().as_millis() as u64;
    emit(json!({"event": "flood", "sent": count, "replies": replies, "elapsed_ms": elapsed_ms}));
    Ok(())
}
