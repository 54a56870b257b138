//! Responder behaviour: decisions with a fake clock ([`Core`]), then the whole task over loopback
//! sockets (unicast only: NOTIFYs go to a test socket instead of the group, nothing is multicast).
//! Real multicast between network namespaces is tested in `shared/tests/ssdp_netns.rs`.

use super::advertisement::{server_header, Announce};
use super::message::{search_request, Message, Notify, NotifyKind, Response, MAX_MESSAGE};
use super::responder::{Core, Disposition, Responder, Setup};
use super::*;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

const UUID: &str = "6b1d3a0e-2c4f-8a5b-9c7d-0e1f2a3b4c5d";

fn ad() -> Advertisement {
    Advertisement {
        st: ST_CONNECTOR.into(),
        uuid: UUID.into(),
        location: "https://{ip}:8443/".into(),
        boot_id: 41,
        config_id: 1,
        server: server_header("0.1.0"),
    }
}

fn config(per_source_burst: u32, per_source_per_sec: u32) -> ResponderConfig {
    ResponderConfig {
        rate_limit: RateLimits {
            global_per_sec: 1000,
            global_burst: 1000,
            per_source_per_sec,
            per_source_burst,
            max_sources: 64,
        },
        ..ResponderConfig::default()
    }
}

fn eth0() -> LanInterface {
    LanInterface { name: "eth0".into(), addr: Ipv4Addr::new(192, 168, 1, 10), prefix: 24 }
}

fn core(cfg: ResponderConfig, seed: u64, t0: Instant) -> Core {
    let mut c = Core::new(cfg, vec![ad()], fastrand::Rng::with_seed(seed), t0);
    c.set_interfaces(vec![eth0()]);
    c
}

fn from(last: u8, port: u16) -> SocketAddr {
    SocketAddr::from(([192, 168, 1, last], port))
}

fn multicast_search(st: &str, mx: u32) -> Vec<u8> {
    search_request(st, mx, "239.255.255.250:1900").into_bytes()
}

#[test]
fn own_target_is_answered_after_a_random_delay_within_mx() {
    let t0 = Instant::now();
    let mut max_seen = Duration::ZERO;
    for seed in 0..40 {
        let mut c = core(config(8, 2), seed, t0);
        let Disposition::Scheduled(1, delay) =
            c.on_datagram(&multicast_search(ST_CONNECTOR, 3), from(20, 50000), t0)
        else {
            panic!("not scheduled")
        };
        assert!(delay <= Duration::from_secs(3), "{delay:?}");
        max_seen = max_seen.max(delay);
        assert_eq!(c.next_due(), Some(t0 + delay));
        if !delay.is_zero() {
            assert!(c.take_due(t0 + delay - Duration::from_millis(1)).is_empty(), "nothing before its time");
        }
        let out = c.take_due(t0 + delay);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].dest, from(20, 50000));
        assert_eq!(out[0].iface, eth0().addr);
        let m = Message::parse(out[0].payload.as_bytes()).unwrap();
        let r = Response::from_message(&m).unwrap();
        assert_eq!(r.st, ST_CONNECTOR);
        assert_eq!(r.usn, format!("uuid:{UUID}::{ST_CONNECTOR}"));
        assert_eq!(r.location, "https://192.168.1.10:8443/", "LOCATION names the interface asked on");
        assert_eq!((r.max_age, r.boot_id), (Some(1800), Some(41)));
    }
    assert!(max_seen > Duration::from_millis(500), "delays are spread over [0, MX]");
}

#[test]
fn mx_above_five_counts_as_five_and_unicast_is_answered_at_once() {
    let t0 = Instant::now();
    for seed in 0..40 {
        let mut c = core(config(8, 2), seed, t0);
        match c.on_datagram(&multicast_search(ST_CONNECTOR, 120), from(20, 50000), t0) {
            Disposition::Scheduled(1, d) => assert!(d <= Duration::from_secs(5), "{d:?}"),
            other => panic!("{other:?}"),
        }
    }
    let mut c = core(config(8, 2), 1, t0);
    let unicast =
        b"M-SEARCH * HTTP/1.1\r\nHOST: 192.168.1.10:1900\r\nMAN: \"ssdp:discover\"\r\nST: ssdp:all\r\n\r\n";
    assert_eq!(c.on_datagram(unicast, from(20, 50000), t0), Disposition::Scheduled(1, Duration::ZERO));
    let no_mx = b"M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: \"ssdp:discover\"\r\nST: ssdp:all\r\n\r\n";
    assert_eq!(
        c.on_datagram(no_mx, from(20, 50000), t0),
        Disposition::Malformed,
        "UPnP: drop multicast without MX"
    );
}

#[test]
fn which_targets_are_answered() {
    let t0 = Instant::now();
    let mut c = core(config(100, 100), 7, t0);
    let by_uuid = format!("uuid:{UUID}");
    assert!(matches!(
        c.on_datagram(&multicast_search("ssdp:all", 1), from(2, 4000), t0),
        Disposition::Scheduled(1, _)
    ));
    assert!(matches!(
        c.on_datagram(&multicast_search(&by_uuid, 1), from(2, 4000), t0),
        Disposition::Scheduled(1, _)
    ));
    for other in
        ["upnp:rootdevice", ST_SENSORHUB, "uuid:someone-else", "urn:schemas-upnp-org:device:MediaServer:1"]
    {
        assert_eq!(
            c.on_datagram(&multicast_search(other, 1), from(2, 4000), t0),
            Disposition::Ignored,
            "{other}"
        );
    }
    let out = c.take_due(t0 + Duration::from_secs(2));
    let sts: Vec<String> = out
        .iter()
        .map(|o| Message::parse(o.payload.as_bytes()).unwrap().header("ST").unwrap().to_string())
        .collect();
    assert!(sts.contains(&ST_CONNECTOR.to_string()) && sts.contains(&by_uuid), "{sts:?}");
    let notify = ad().notify(Announce::Alive, Ipv4Addr::new(192, 168, 1, 77), 1800);
    assert_eq!(c.on_datagram(notify.as_bytes(), from(77, 1900), t0), Disposition::Ignored);
}

#[test]
fn only_sources_on_served_subnets_with_unprivileged_ports_are_answered() {
    let t0 = Instant::now();
    let mut c = core(config(100, 100), 7, t0);
    let req = multicast_search(ST_CONNECTOR, 1);
    let outsiders = [
        SocketAddr::from(([192, 168, 2, 20], 50000)),
        SocketAddr::from(([8, 8, 8, 8], 50000)),
        SocketAddr::from(([127, 0, 0, 1], 50000)),
        from(20, 53),
        from(20, 0),
        "[fe80::1]:50000".parse().unwrap(),
    ];
    for src in outsiders {
        assert_eq!(c.on_datagram(&req, src, t0), Disposition::Foreign, "{src}");
    }
    assert!(c.next_due().is_none());
    c.set_interfaces(vec![]);
    assert_eq!(c.on_datagram(&req, from(20, 50000), t0), Disposition::Foreign, "no interface, no answer");
}

#[test]
fn oversized_malformed_and_excess_input_is_dropped_and_counted() {
    let t0 = Instant::now();
    let mut cfg = config(1000, 1000);
    cfg.max_pending = 3;
    let mut c = core(cfg, 7, t0);
    let mut big = multicast_search(ST_CONNECTOR, 1);
    big.resize(MAX_MESSAGE + 1, b' ');
    assert_eq!(c.on_datagram(&big, from(2, 4000), t0), Disposition::Oversized);
    assert_eq!(c.on_datagram(b"\x00\x01garbage", from(2, 4000), t0), Disposition::Malformed);
    let no_st =
        b"M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: \"ssdp:discover\"\r\nMX: 1\r\n\r\n";
    assert_eq!(c.on_datagram(no_st, from(2, 4000), t0), Disposition::Malformed);
    for _ in 0..3 {
        assert!(matches!(
            c.on_datagram(&multicast_search(ST_CONNECTOR, 5), from(2, 4000), t0),
            Disposition::Scheduled(..)
        ));
    }
    assert_eq!(c.on_datagram(&multicast_search(ST_CONNECTOR, 5), from(2, 4000), t0), Disposition::QueueFull);
    let s = responder_stats(&c);
    assert_eq!((s.received, s.dropped_oversized, s.dropped_malformed, s.dropped_queue_full), (7, 1, 2, 1));
}

fn responder_stats(c: &Core) -> ResponderStats {
    c.stats_handle().snapshot()
}

#[test]
fn a_flood_is_answered_at_the_rate_limit_not_more() {
    let t0 = Instant::now();
    let mut c = core(config(5, 2), 3, t0);
    let req = multicast_search(ST_CONNECTOR, 1);
    // 1000 searches in 10 s (one per 10 ms) from one source: the burst, then 2 a second.
    let mut scheduled = 0;
    for i in 0..1000u64 {
        if let Disposition::Scheduled(n, _) =
            c.on_datagram(&req, from(30, 40000), t0 + Duration::from_millis(10 * i))
        {
            scheduled += n;
        }
    }
    let sent = c.take_due(t0 + Duration::from_secs(20)).len();
    assert_eq!(sent, scheduled);
    // 5 (burst) + 2/s * 9.99 s, give or take the token being fractional at the last instant.
    assert!((24..=25).contains(&sent), "{sent} replies");
    let s = responder_stats(&c);
    assert_eq!(s.dropped_rate_limited, 1000 - sent as u64);
    // A second source still gets its own answers.
    assert!(matches!(
        c.on_datagram(&req, from(31, 40000), t0 + Duration::from_secs(10)),
        Disposition::Scheduled(..)
    ));
}

#[test]
fn replies_for_an_interface_that_went_away_are_not_sent() {
    let t0 = Instant::now();
    let mut c = core(config(8, 2), 3, t0);
    c.on_datagram(&multicast_search(ST_CONNECTOR, 1), from(30, 40000), t0);
    c.set_interfaces(vec![]);
    assert!(c.take_due(t0 + Duration::from_secs(2)).is_empty());
    assert_eq!(responder_stats(&c).send_errors, 1);
}

#[test]
fn bad_settings_are_refused_before_binding() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let cfg = ResponderConfig { max_age: Duration::from_secs(60), ..ResponderConfig::default() };
        assert!(matches!(Responder::bind(cfg, vec![ad()]).await, Err(SsdpError::Config(_))));
        let mut bad = ad();
        bad.st = "connector".into();
        let err = Responder::bind(ResponderConfig::default(), vec![bad]).await.err().unwrap();
        assert!(matches!(err, SsdpError::Advertisement { field: "st", .. }), "{err}");
        assert!(Responder::bind(ResponderConfig::default(), vec![]).await.is_err());
    });
}

// --- the whole responder over loopback sockets -------------------------------------------------

struct Running {
    target: SocketAddr,
    group: UdpSocket,
    stats: StatsHandle,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<ResponderStats, SsdpError>>,
}

/// A responder on 127.0.0.1 that treats loopback as its LAN and sends NOTIFYs to a test socket.
async fn start(cfg: ResponderConfig) -> Running {
    let group = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let setup = Setup {
        spec: None,
        fixed: vec![LanInterface { name: "lo".into(), addr: Ipv4Addr::LOCALHOST, prefix: 8 }],
        recv_addr: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0),
        join: false,
        group: group.local_addr().unwrap(),
    };
    let responder = Responder::bind_with(cfg, vec![ad()], setup, fastrand::Rng::with_seed(5)).unwrap();
    let target = responder.local_addr().unwrap();
    let stats = responder.stats();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(responder.run(async move {
        let _ = stopped.await;
    }));
    Running { target, group, stats, stop, task }
}

async fn recv_text(sock: &UdpSocket) -> String {
    let mut buf = [0u8; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .expect("a datagram within 5 s")
        .unwrap();
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

/// Reads NOTIFYs until one of `kind` arrives (the start-up repeat of alive may come in between).
async fn next_notify(sock: &UdpSocket, kind: NotifyKind) -> String {
    loop {
        let text = recv_text(sock).await;
        let m = Message::parse(text.as_bytes()).unwrap();
        if Notify::from_message(&m).unwrap().kind == kind {
            return text;
        }
    }
}

#[tokio::test]
async fn announces_answers_and_says_goodbye_over_real_sockets() {
    let r = start(config(8, 2)).await;
    let alive = next_notify(&r.group, NotifyKind::Alive).await;
    let m = Message::parse(alive.as_bytes()).unwrap();
    let n = Notify::from_message(&m).unwrap();
    assert_eq!((n.nt, n.location), (ST_CONNECTOR, Some("https://127.0.0.1:8443/")));
    assert_eq!((n.max_age, n.boot_id), (Some(1800), Some(41)));
    assert_eq!(m.header("HOST"), Some("239.255.255.250:1900"));

    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let host = r.target.to_string();
    client.send_to(search_request(ST_CONNECTOR, 1, &host).as_bytes(), r.target).await.unwrap();
    let answer = recv_text(&client).await;
    let m = Message::parse(answer.as_bytes()).unwrap();
    let resp = Response::from_message(&m).unwrap();
    assert_eq!((resp.st, resp.location), (ST_CONNECTOR, "https://127.0.0.1:8443/"));
    assert!(m.header("DATE").is_some_and(|d| d.ends_with(" GMT")));

    // Junk gets no answer; it only shows up in the counters.
    client.send_to(b"hello", r.target).await.unwrap();
    client.send_to(&vec![b'x'; MAX_MESSAGE + 100], r.target).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while r.stats.snapshot().received < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut buf = [0u8; 64];
    assert!(tokio::time::timeout(Duration::from_millis(200), client.recv_from(&mut buf)).await.is_err());

    r.stop.send(()).unwrap();
    next_notify(&r.group, NotifyKind::ByeBye).await;
    let stats = tokio::time::timeout(Duration::from_secs(5), r.task).await.unwrap().unwrap().unwrap();
    assert_eq!(stats.received, 3);
    assert_eq!((stats.answered, stats.dropped_malformed, stats.dropped_oversized), (1, 1, 1));
    assert!(stats.notifies_sent >= 2, "{stats:?}");
    assert_eq!(stats.interfaces, 1);
}

#[tokio::test]
async fn a_unicast_flood_gets_the_burst_and_the_rate_over_real_sockets() {
    let r = start(config(3, 1)).await;
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let req = search_request(ST_CONNECTOR, 1, &r.target.to_string());
    let started = Instant::now();
    for _ in 0..50 {
        client.send_to(req.as_bytes(), r.target).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while r.stats.snapshot().received < 50 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut replies = 0u64;
    let mut buf = [0u8; 4096];
    while tokio::time::timeout(Duration::from_millis(300), client.recv_from(&mut buf)).await.is_ok() {
        replies += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Burst of 3 plus 1 a second for however long this busy machine took.
    assert!(replies >= 3 && replies as f64 <= 3.0 + elapsed.ceil(), "{replies} replies in {elapsed:.2} s");
    let s = r.stats.snapshot();
    assert_eq!(s.received, 50);
    assert_eq!(s.answered, replies);
    assert_eq!(s.answered + s.dropped_rate_limited, 50);
    r.stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), r.task).await.unwrap().unwrap().unwrap();
}
