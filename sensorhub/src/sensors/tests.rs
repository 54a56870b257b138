//! Sensors against real things on this machine: loopback servers, real scripts, real files,
//! the real /proc. Nothing leaves the machine.

use super::*;
use outpost_shared::config::{Problem, Validate};
use outpost_shared::model::{State, Value};
use std::path::Path;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

/// Bound for every await that could hang.
const LIMIT: Duration = Duration::from_secs(30);

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f).await.expect("test step timed out")
}

fn cfg(kind: SensorKind, name: &str) -> SensorConfig {
    SensorConfig { name: Some(name.to_string()), ..SensorConfig::new(kind) }
}

async fn sample(configs: &[SensorConfig]) -> Vec<Sample> {
    let mut set = SensorSet::build(configs).expect("sensors build");
    within(set.sample_all()).await
}

fn find<'a>(samples: &'a [Sample], key: &str) -> &'a Sample {
    samples.iter().find(|s| s.sensor == key).unwrap_or_else(|| panic!("no `{key}` in {samples:#?}"))
}

fn num(s: &Sample) -> f64 {
    s.value.as_f64().unwrap_or_else(|| panic!("not a number: {s:?}"))
}

// ---------------------------------------------------------------- config

#[derive(Debug, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct Hub {
    #[serde(default)]
    sensor: Vec<SensorConfig>,
}

impl Validate for Hub {
    fn validate(&self, problems: &mut Vec<Problem>) {
        validate_sensors(&self.sensor, problems);
    }
}

fn parse(text: &str) -> Result<Hub, outpost_shared::config::ConfigError> {
    outpost_shared::config::parse::<Hub>(text, Path::new("hub.toml"))
}

fn problems(configs: &[SensorConfig]) -> Vec<Problem> {
    let mut p = Vec::new();
    validate_sensors(configs, &mut p);
    p
}

#[test]
fn a_full_config_parses() {
    let text = r#"
[[sensor]]
kind = "cpu"
interval = "5s"
warn = 70
error = 90

[[sensor]]
kind = "disk"
metric = "free"
warn = 10e9
error = 2e9
mounts = ["/"]

[[sensor]]
kind = "http"
name = "intranet"
url = "https://intranet.example/health"
expect_status = [200, 204]
expect_text = "ok"
username = "monitor"
password = "hunter2"
timeout = "5s"

[[sensor]]
kind = "command"
name = "load"
command = ["/usr/lib/nagios/plugins/check_load", "-w", "5,4,3", "-c", "10,8,6"]

[[sensor]]
kind = "command"
name = "shell"
command = "echo OK | x=1"
"#;
    let hub = parse(text).unwrap();
    assert_eq!(hub.sensor.len(), 5);
    assert_eq!(hub.sensor[0].interval(), Duration::from_secs(5));
    assert_eq!(hub.sensor[1].thresholds(), Thresholds { warn: Some(10e9), error: Some(2e9), below: true });
    assert_eq!(hub.sensor[2].id(), "http.intranet");
    assert_eq!(hub.sensor[2].password.as_ref().unwrap().expose(), "hunter2");
    assert!(matches!(hub.sensor[3].command, Some(CommandLine::Argv(ref v)) if v.len() == 5));
    assert!(matches!(hub.sensor[4].command, Some(CommandLine::Shell(_))));
}

#[test]
fn unknown_key_is_rejected_with_its_line() {
    let err = parse("[[sensor]]\nkind = \"cpu\"\nintervall = \"5s\"\n").unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("hub.toml:3"), "{msg}");
    assert!(msg.contains("unknown field `intervall`"), "{msg}");
}

#[test]
fn a_key_of_another_kind_is_rejected() {
    let err = parse("[[sensor]]\nkind = \"cpu\"\n\n[[sensor]]\nkind = \"memory\"\nurl = \"http://x\"\n")
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("hub.toml:6: key `sensor[1].url`"), "{msg}");
    assert!(msg.contains("does not apply to kind `memory`") && msg.contains("http"), "{msg}");
}

#[test]
fn defaults_are_valid_and_local() {
    let d = default_sensors();
    assert!(problems(&d).is_empty(), "{:?}", problems(&d));
    let kinds: Vec<SensorKind> = d.iter().map(|c| c.kind).collect();
    assert_eq!(
        kinds,
        [
            SensorKind::Cpu,
            SensorKind::Memory,
            SensorKind::Disk,
            SensorKind::Diskio,
            SensorKind::Network,
            SensorKind::Load
        ]
    );
    let names: Vec<String> = d.iter().map(SensorConfig::id).collect();
    assert_eq!(names, ["cpu", "memory", "disk", "diskio", "network", "load"]);
    // The defaults survive a TOML round trip unchanged.
    let text = toml::to_string(&Hub { sensor: d.clone() }).unwrap();
    assert_eq!(parse(&text).unwrap().sensor, d);
}

#[test]
fn validation_names_the_key() {
    let mut short = SensorConfig::new(SensorKind::Cpu);
    short.interval = Some(Duration::from_millis(50));
    let mut order = SensorConfig::new(SensorKind::Memory);
    order.warn = Some(95.0);
    order.error = Some(90.0);
    let mut below = cfg(SensorKind::Disk, "free");
    below.metric = Some(Metric::Free);
    below.warn = Some(1e9);
    below.error = Some(5e9);
    let tcp = cfg(SensorKind::Tcp, "db"); // no host, no port
    let nameless =
        SensorConfig { url: Some("http://127.0.0.1/".into()), ..SensorConfig::new(SensorKind::Http) };
    let dup = SensorConfig::new(SensorKind::Cpu);
    let mut pct = cfg(SensorKind::Cpu, "cpu2");
    pct.warn = Some(150.0);
    let mut metric = cfg(SensorKind::Memory, "mem2");
    metric.metric = Some(Metric::Age);
    let file = SensorConfig { path: Some("relative.txt".into()), ..cfg(SensorKind::File, "f") };
    let all = [short, order, below, tcp, nameless, dup, pct, metric, file];
    let p = problems(&all);
    let has = |key: &str, words: &str| {
        assert!(
            p.iter().any(|x| x.key == key && x.message.contains(words)),
            "no `{key}` ~ `{words}` in {p:#?}"
        )
    };
    has("sensor[0].interval", "minimum is 100ms");
    has("sensor[1].warn", "must not be above error");
    has("sensor[2].warn", "below = true");
    has("sensor[3].host", "needs `host`");
    has("sensor[3].port", "needs `port`");
    has("sensor[4].name", "needs a `name`");
    has("sensor[5].name", "already defined by sensor[0]");
    has("sensor[6].warn", "percentage");
    has("sensor[7].metric", "not a metric of kind `memory`; use one of: used_pct, swap_used_pct");
    has("sensor[8].path", "absolute");
    assert_eq!(p.len(), 10, "{p:#?}");
}

#[test]
fn secrets_do_not_print() {
    let s = Secret::new("hunter2");
    assert_eq!(format!("{s} {s:?}"), "*** ***");
    let c = SensorConfig { password: Some(s), ..SensorConfig::new(SensorKind::Http) };
    assert!(!format!("{c:?}").contains("hunter2"));
}

#[test]
fn sensor_names_default_per_kind() {
    let p = SensorConfig { process: Some("nginx".into()), ..SensorConfig::new(SensorKind::Process) };
    assert_eq!(p.id(), "proc.nginx");
    let s = SensorConfig { unit: Some("ssh.service".into()), ..SensorConfig::new(SensorKind::Service) };
    assert_eq!(s.id(), "service.ssh.service");
    assert_eq!(cfg(SensorKind::Tcp, "db").id(), "tcp.db");
    assert_eq!(cfg(SensorKind::Command, "x").id(), "cmd.x");
    assert_eq!(cfg(SensorKind::Load, "myload").id(), "myload");
}

// ---------------------------------------------------------------- this machine

#[tokio::test]
async fn machine_sensors_read_plausible_values() {
    let s = sample(&default_sensors()).await;
    let cpu = num(find(&s, "cpu.total"));
    assert!((0.0..=100.0).contains(&cpu), "{cpu}");
    assert_eq!(find(&s, "cpu.total").unit.as_deref(), Some("%"));
    let cores: Vec<&Sample> = s.iter().filter(|x| x.sensor.starts_with("cpu.core")).collect();
    assert!(!cores.is_empty() && cores.iter().all(|c| (0.0..=100.0).contains(&num(c))), "{cores:?}");

    let mem = num(find(&s, "mem.used_pct"));
    assert!(mem > 0.0 && mem <= 100.0, "{mem}");
    assert!(num(find(&s, "mem.used")) > 1e6);
    assert!((0.0..=100.0).contains(&num(find(&s, "swap.used_pct"))));

    let root = find(&s, "disk./.used_pct");
    assert!(num(root) > 0.0 && num(root) < 100.0, "{root:?}");
    assert!(root.message.as_deref().unwrap().starts_with("disk / "), "{root:?}");
    assert!(num(find(&s, "disk./.free")) > 0.0);
    // Pseudo filesystems are skipped.
    assert!(!s.iter().any(|x| x.sensor.starts_with("disk./proc") || x.sensor.starts_with("disk./sys")));
    assert!(!s.iter().any(|x| x.sensor.starts_with("disk./dev")), "tmpfs/devtmpfs must be skipped");

    assert!(num(find(&s, "load.1")) >= 0.0);
    assert!(num(find(&s, "uptime")) > 0.0);
    for x in s.iter().filter(|x| x.sensor.ends_with("_bps")) {
        assert!(num(x) >= 0.0, "{x:?}");
        assert_eq!(x.unit.as_deref(), Some("B/s"));
    }
    assert!(!s.iter().any(|x| x.sensor.starts_with("net.lo.")), "loopback is not watched by default");
}

#[tokio::test]
async fn explicit_devices_and_interfaces_see_traffic() {
    let mut net = SensorConfig::new(SensorKind::Network);
    net.interfaces = Some(vec!["lo".into(), "nosuch0".into()]);
    let mut set = SensorSet::build(&[net]).unwrap();
    // Loopback traffic for longer than the one-second rate window, wherever it falls.
    let traffic = tokio::spawn(async {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let reader = tokio::spawn(async move {
            let (mut c, _) = l.accept().await.unwrap();
            let mut sink = [0u8; 65536];
            while c.read(&mut sink).await.unwrap_or(0) > 0 {}
        });
        let mut w = tokio::net::TcpStream::connect(addr).await.unwrap();
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(2) {
            w.write_all(&[7u8; 65536]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(w);
        reader.await.unwrap();
    });
    let s = within(set.sample_all()).await;
    within(traffic).await.unwrap();
    let rx = num(find(&s, "net.lo.rx_bps"));
    assert!(rx > 0.0, "megabytes went over loopback, yet rx is {rx}");
    assert_eq!(num(find(&s, "net.lo.errors")), 0.0);
    let missing = find(&s, "net.nosuch0.rx_bps");
    assert_eq!(missing.state, State::Error);
}

#[tokio::test]
async fn disk_thresholds_count_down_for_free_space() {
    let mut free = SensorConfig::new(SensorKind::Disk);
    free.metric = Some(Metric::Free);
    free.mounts = Some(vec!["/".into(), "/no/such/mount".into()]);
    free.warn = Some(1e18); // more than any disk has: always reached
    free.error = Some(1.0);
    let s = sample(&[free]).await;
    let f = find(&s, "disk./.free");
    assert_eq!(f.state, State::Warn, "{f:?}");
    assert!(f.message.as_deref().unwrap().contains("(warn below 888.2 PiB)"), "{f:?}");
    assert_eq!(find(&s, "disk./.used_pct").state, State::Ok, "thresholds apply to the chosen metric only");
    assert_eq!(find(&s, "disk./no/such/mount.used_pct").state, State::Error);
    // The dashboard draws the limits of the judged metric only, the right way up.
    let limits = outpost_shared::model::Limits { warn: Some(1e18), error: Some(1.0), below: true };
    assert_eq!(f.limits, Some(limits));
    assert_eq!(find(&s, "disk./.used_pct").limits, None);
}

#[tokio::test]
async fn process_sensor_counts_and_requires_a_minimum() {
    let mut children: Vec<_> =
        (0..2).map(|_| std::process::Command::new("sleep").arg("30").spawn().expect("sleep runs")).collect();
    let mut sleeps = SensorConfig::new(SensorKind::Process);
    sleeps.process = Some("sleep".into());
    sleeps.min_count = Some(2);
    let mut none = SensorConfig::new(SensorKind::Process);
    none.process = Some("outpost-nosuch".into());
    let s = sample(&[sleeps, none]).await;
    for c in &mut children {
        let _ = c.kill();
        let _ = c.wait();
    }
    let count = find(&s, "proc.sleep.count");
    assert!(num(count) >= 2.0 && count.state == State::Ok, "{count:?}");
    assert!(num(find(&s, "proc.sleep.rss")) > 0.0);
    let gone = find(&s, "proc.outpost-nosuch.count");
    assert_eq!((num(gone), gone.state), (0.0, State::Error));
    assert!(gone.message.as_deref().unwrap().contains("at least 1 expected"), "{gone:?}");
}

// ---------------------------------------------------------------- file

#[tokio::test]
async fn file_age_and_size() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("backup.tar");
    std::fs::write(&path, vec![0u8; 2048]).unwrap();
    let f = std::fs::File::options().write(true).open(&path).unwrap();
    f.set_modified(std::time::SystemTime::now() - Duration::from_secs(7200)).unwrap();
    drop(f);

    let age = SensorConfig {
        path: Some(path.clone()),
        warn: Some(3600.0),
        error: Some(86400.0),
        ..cfg(SensorKind::File, "backup")
    };
    let size = SensorConfig {
        path: Some(path.clone()),
        metric: Some(Metric::Size),
        warn: Some(4096.0),
        below: Some(true),
        ..cfg(SensorKind::File, "backup_size")
    };
    let missing = SensorConfig { path: Some(dir.path().join("nope")), ..cfg(SensorKind::File, "gone") };
    let s = sample(&[age, size, missing]).await;

    let a = find(&s, "file.backup.age");
    assert!((7190.0..7300.0).contains(&num(a)), "{a:?}");
    assert_eq!((a.state, a.unit.as_deref()), (State::Warn, Some("s")));
    assert!(a.message.as_deref().unwrap().contains("(warn above 1h)"), "{a:?}");
    assert_eq!(num(find(&s, "file.backup.size")), 2048.0);
    let sz = find(&s, "file.backup_size.size");
    assert_eq!(sz.state, State::Warn, "2 KiB is below the 4 KiB warning: {sz:?}");
    assert_eq!(find(&s, "file.backup_size.age").state, State::Ok);
    let g = find(&s, "file.gone.age");
    assert_eq!((g.state, &g.value), (State::Error, &Value::Text("missing".into())));
    assert!(g.message.as_deref().unwrap().ends_with("not found"), "{g:?}");
}

// ---------------------------------------------------------------- tcp

#[tokio::test]
async fn tcp_check_open_and_closed_ports() {
    let open = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let open_port = open.local_addr().unwrap().port();
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let tcp = |name: &str, port: u16| SensorConfig {
        host: Some("127.0.0.1".into()),
        port: Some(port),
        timeout: Some(Duration::from_secs(5)),
        ..cfg(SensorKind::Tcp, name)
    };
    let s = sample(&[tcp("up", open_port), tcp("down", closed_port)]).await;
    let up = find(&s, "tcp.up");
    assert_eq!((up.state, up.unit.as_deref()), (State::Ok, Some("ms")), "{up:?}");
    assert!(num(up) >= 0.0);
    let down = find(&s, "tcp.down");
    assert_eq!((down.state, &down.value), (State::Error, &Value::Text("refused".into())), "{down:?}");
    assert!(down.message.as_deref().unwrap().contains("refused"), "{down:?}");
    drop(open);
}

// ---------------------------------------------------------------- http

/// A minimal HTTP/1.1 server: `/ok` says hello, `/down` is 503, `/auth` wants user:s3cr3t.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16384 {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let target = head.split_whitespace().nth(1).unwrap_or("/");
    let path = target.split('?').next().unwrap_or("/").to_string();
    let authorized = head.lines().any(|l| l.eq_ignore_ascii_case("authorization: Basic dXNlcjpzM2NyM3Q="));
    let (status, body) = match path.as_str() {
        "/ok" => ("200 OK", "<html>hello outpost</html>"),
        "/down" => ("503 Service Unavailable", "maintenance"),
        "/auth" if authorized => ("200 OK", "welcome"),
        "/auth" => ("401 Unauthorized", "who are you"),
        _ => ("404 Not Found", "no"),
    };
    let reply =
        format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
    let _ = s.write_all(reply.as_bytes()).await;
    let _ = s.shutdown().await;
}

async fn http_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((c, _)) = l.accept().await {
            tokio::spawn(serve(c));
        }
    });
    port
}

async fn https_server(dir: &Path) -> (u16, std::path::PathBuf) {
    let names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
    let paths = outpost_shared::tls::ensure_self_signed(dir, &names, "sensor test").unwrap();
    let acceptor =
        tokio_rustls::TlsAcceptor::from(outpost_shared::tls::server_config(&paths.cert, &paths.key).unwrap());
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((c, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(c).await {
                    serve(tls).await;
                }
            });
        }
    });
    (port, paths.ca)
}

fn http(name: &str, url: String) -> SensorConfig {
    SensorConfig { url: Some(url), timeout: Some(Duration::from_secs(10)), ..cfg(SensorKind::Http, name) }
}

#[tokio::test]
async fn http_check_status_text_latency_and_auth() {
    let port = http_server().await;
    let base = format!("http://127.0.0.1:{port}");
    let ok = SensorConfig { expect_text: Some("hello outpost".into()), ..http("ok", format!("{base}/ok")) };
    let wrong_text =
        SensorConfig { expect_text: Some("goodbye".into()), ..http("text", format!("{base}/ok")) };
    let down = http("down", format!("{base}/down"));
    let maintenance =
        SensorConfig { expect_status: Some(vec![503]), ..http("maint", format!("{base}/down")) };
    let auth = SensorConfig {
        username: Some("user".into()),
        password: Some(Secret::new("s3cr3t")),
        ..http("auth", format!("{base}/auth?token=abc"))
    };
    let noauth = http("noauth", format!("{base}/auth"));
    let s = sample(&[ok, wrong_text, down, maintenance, auth, noauth]).await;

    let st = find(&s, "http.ok.status");
    assert_eq!((num(st), st.state), (200.0, State::Ok), "{st:?}");
    let lat = find(&s, "http.ok.latency_ms");
    assert!(num(lat) >= 0.0 && lat.unit.as_deref() == Some("ms"), "{lat:?}");
    assert!(!s.iter().any(|x| x.sensor == "http.ok.cert_days"), "plain http has no certificate");

    let t = find(&s, "http.text.status");
    assert_eq!(t.state, State::Error);
    assert!(t.message.as_deref().unwrap().contains("`goodbye` is not in the body"), "{t:?}");

    let d = find(&s, "http.down.status");
    assert_eq!((num(d), d.state), (503.0, State::Error));
    assert!(d.message.as_deref().unwrap().contains("expected below 400"), "{d:?}");
    assert_eq!(find(&s, "http.maint.status").state, State::Ok);

    let a = find(&s, "http.auth.status");
    assert_eq!((num(a), a.state), (200.0, State::Ok), "{a:?}");
    assert!(!a.message.as_deref().unwrap().contains("token"), "query strings stay out of messages");
    assert_eq!(num(find(&s, "http.noauth.status")), 401.0);
}

#[tokio::test]
async fn http_check_unreachable_is_an_error() {
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let s = sample(&[http("gone", format!("http://127.0.0.1:{closed_port}/"))]).await;
    let g = find(&s, "http.gone.status");
    assert_eq!((g.state, &g.value), (State::Error, &Value::Text("unreachable".into())), "{g:?}");
    assert!(g.message.as_deref().unwrap().to_lowercase().contains("refused"), "{g:?}");
}

#[tokio::test]
async fn https_check_reads_certificate_days() {
    let dir = tempfile::tempdir().unwrap();
    let (port, ca) = https_server(dir.path()).await;
    let other = tempfile::tempdir().unwrap();
    let other_ca =
        outpost_shared::tls::ensure_self_signed(other.path(), &["127.0.0.1".to_string()], "stranger")
            .unwrap()
            .ca;

    let good = SensorConfig {
        ca_file: Some(ca),
        expect_text: Some("hello".into()),
        ..http("tls", format!("https://127.0.0.1:{port}/ok"))
    };
    let untrusted =
        SensorConfig { ca_file: Some(other_ca), ..http("untrusted", format!("https://127.0.0.1:{port}/ok")) };
    let s = sample(&[good, untrusted]).await;

    let st = find(&s, "http.tls.status");
    assert_eq!((num(st), st.state), (200.0, State::Ok), "{st:?}");
    let days = find(&s, "http.tls.cert_days");
    // The test certificate runs to 1 January, ten years on: between 9 and 10 years from now.
    assert!((9.0 * 365.0..=10.0 * 366.0).contains(&num(days)), "{days:?}");
    assert_eq!((days.state, days.unit.as_deref()), (State::Ok, Some("d")));
    assert!(num(find(&s, "http.tls.latency_ms")) >= 0.0);

    let u = find(&s, "http.untrusted.status");
    assert_eq!(u.state, State::Error, "{u:?}");
    assert!(u.message.as_deref().unwrap().to_lowercase().contains("certificate"), "{u:?}");
}

#[test]
fn certificate_days_cross_thresholds() {
    let c = http("x", "https://127.0.0.1/".into());
    let t = c.cert_thresholds();
    assert_eq!(t.state(30.0), State::Ok);
    assert_eq!(t.state(10.0), State::Warn);
    assert_eq!(t.state(-1.0), State::Error);
}

// ---------------------------------------------------------------- command

#[cfg(unix)]
fn script(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    path.to_string_lossy().into_owned()
}

#[cfg(unix)]
fn command(name: &str, line: CommandLine) -> SensorConfig {
    SensorConfig {
        command: Some(line),
        timeout: Some(Duration::from_secs(10)),
        ..cfg(SensorKind::Command, name)
    }
}

#[cfg(unix)]
#[tokio::test]
async fn command_exit_codes_map_to_states() {
    let dir = tempfile::tempdir().unwrap();
    let mut configs = Vec::new();
    for (code, word) in [(0, "OK"), (1, "WARNING"), (2, "CRITICAL"), (3, "UNKNOWN"), (7, "ODD")] {
        let p = script(dir.path(), &format!("c{code}"), &format!("echo '{word} - exit {code}'\nexit {code}"));
        configs.push(command(&format!("c{code}"), CommandLine::Argv(vec![p])));
    }
    configs.push(command("missing", CommandLine::Argv(vec!["/no/such/plugin".into()])));
    configs.push(command("shell", CommandLine::Shell("echo 'shell OK' && exit 0".into())));
    let s = sample(&configs).await;
    for (code, state) in
        [(0, State::Ok), (1, State::Warn), (2, State::Error), (3, State::Unknown), (7, State::Unknown)]
    {
        let r = find(&s, &format!("cmd.c{code}"));
        assert_eq!((num(r), r.state), (code as f64, state), "{r:?}");
        assert!(r.message.as_deref().unwrap().ends_with(&format!("exit {code}")), "{r:?}");
    }
    let m = find(&s, "cmd.missing");
    assert_eq!(m.state, State::Unknown);
    assert!(m.message.as_deref().unwrap().contains("cannot start"), "{m:?}");
    assert_eq!(find(&s, "cmd.shell").message.as_deref(), Some("shell OK"));
}

#[cfg(unix)]
#[tokio::test]
async fn command_perfdata_becomes_readings() {
    let dir = tempfile::tempdir().unwrap();
    let body = r#"echo "DISK WARNING - / is filling | '/ used'=93.1%;90;95;0;100 time=0.012s"
echo "/boot is fine"
echo "/home is fine | 'home free'=1200MB;;;0"
echo "inodes=12c"
exit 1"#;
    let p = script(dir.path(), "check_disk", body);
    let s = sample(&[command("disk", CommandLine::Argv(vec![p]))]).await;
    let main = find(&s, "cmd.disk");
    assert_eq!(main.state, State::Warn);
    assert_eq!(main.message.as_deref(), Some("DISK WARNING - / is filling"));
    let used = find(&s, "cmd.disk./_used");
    assert_eq!((num(used), used.unit.as_deref(), used.state), (93.1, Some("%"), State::Warn));
    let t = find(&s, "cmd.disk.time");
    assert_eq!((num(t), t.unit.as_deref()), (0.012, Some("s")));
    let h = find(&s, "cmd.disk.home_free");
    assert_eq!((num(h), h.unit.as_deref(), h.state), (1200.0, Some("MB"), State::Ok));
    let i = find(&s, "cmd.disk.inodes");
    assert_eq!((num(i), i.unit.as_deref()), (12.0, Some("c")));
    assert_eq!(s.len(), 5, "{s:#?}");
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn command_timeout_kills_the_plugin_and_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let body = format!("sleep 60 &\necho $$ $! > {}\nwait", pids.display());
    let p = script(dir.path(), "hang", &body);
    let c =
        SensorConfig { timeout: Some(Duration::from_secs(1)), ..command("hang", CommandLine::Argv(vec![p])) };
    let s = sample(&[c]).await;
    let r = find(&s, "cmd.hang");
    assert_eq!((r.state, &r.value), (State::Unknown, &Value::Text("timeout".into())), "{r:?}");
    assert!(r.message.as_deref().unwrap().contains("killed"), "{r:?}");

    let text = std::fs::read_to_string(&pids).unwrap();
    for pid in text.split_whitespace() {
        // Gone, or a zombie waiting for a parent that is not us: either way no longer running.
        let mut dead = false;
        for _ in 0..50 {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat.rsplit(')').next().unwrap_or("").split_whitespace().next().unwrap_or("");
            if stat.is_empty() || state == "Z" || state == "X" {
                dead = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(dead, "process {pid} outlived the timeout");
    }
}

// ---------------------------------------------------------------- running

#[tokio::test]
async fn build_refuses_invalid_configs() {
    let err = SensorSet::build(&[SensorConfig::new(SensorKind::Tcp)]).err().expect("invalid");
    let msg = err.to_string();
    assert!(msg.contains("sensor[0].name") && msg.contains("sensor[0].host"), "{msg}");
}

// ---------------------------------------------------------------- Windows kinds

#[test]
fn eventlog_and_perfcounter_configs_parse_and_bad_keys_are_named() {
    let text = r#"
[[sensor]]
kind = "eventlog"
logs = ["System", "Application"]
sources = ["Service Control Manager"]
levels = ["error", "warning", "audit_failure"]
max_messages = 5

[[sensor]]
kind = "perfcounter"
name = "cpu"
counter = '\Processor(_Total)\% Processor Time'
warn = 90
"#;
    let hub = parse(text).expect("valid");
    assert_eq!(hub.sensor[0].id(), "eventlog");
    assert_eq!(hub.sensor[1].id(), "perf.cpu");
    assert_eq!(hub.sensor[1].counter.as_deref(), Some(r"\Processor(_Total)\% Processor Time"));

    let bad = r#"
[[sensor]]
kind = "eventlog"
logs = ["Sys.tem", "System", "system"]
sources = []
levels = []
max_messages = 0

[[sensor]]
kind = "perfcounter"
name = "a"
counter = 'Processor\% Processor Time'

[[sensor]]
kind = "perfcounter"
name = "b"
counter = '\Processor(*)\% Processor Time'

[[sensor]]
kind = "perfcounter"
name = "c"
counter = '\\otherhost\Processor(_Total)\% Processor Time'

[[sensor]]
kind = "perfcounter"
name = "d"

[[sensor]]
kind = "cpu"
logs = ["System"]
"#;
    let msg = parse(bad).unwrap_err().to_string();
    for want in [
        "sensor[0].logs`: `Sys.tem` is not a classic event log name",
        "`system` is listed twice",
        "sensor[0].sources",
        "sensor[0].levels",
        "sensor[0].max_messages`: 0 is out of range; use 1 to 10",
        "sensor[1].counter`: `Processor\\% Processor Time` is not a counter path: it starts with a backslash",
        "sensor[2].counter`: `\\Processor(*)\\% Processor Time` has a wildcard",
        "sensor[3].counter`: `\\\\otherhost",
        "sensor[4].counter`: a `perfcounter` sensor needs `counter`",
        "sensor[5].logs`: `logs` does not apply to kind `cpu`; it is a key of: eventlog",
    ] {
        assert!(msg.contains(want), "missing {want:?} in:\n{msg}");
    }
    let levels = parse("[[sensor]]\nkind = \"eventlog\"\nlevels = [\"critical\"]\n").unwrap_err().to_string();
    assert!(levels.contains("unknown variant `critical`") && levels.contains("audit_failure"), "{levels}");
}

#[cfg(not(windows))]
#[tokio::test]
async fn windows_sensors_elsewhere_read_unknown_and_say_why() {
    let eventlog =
        SensorConfig { logs: Some(vec!["System".into()]), ..SensorConfig::new(SensorKind::Eventlog) };
    let perf = SensorConfig {
        counter: Some(r"\Memory\Available Bytes".into()),
        ..cfg(SensorKind::Perfcounter, "mem")
    };
    let s = sample(&[eventlog, perf]).await;
    let e = find(&s, "eventlog.System");
    assert_eq!(e.state, State::Unknown);
    assert!(e.message.as_deref().unwrap().contains("Windows only"), "{e:?}");
    let p = find(&s, "perf.mem");
    assert_eq!(p.state, State::Unknown);
    assert!(p.message.as_deref().unwrap().contains("Windows only"), "{p:?}");
}

/// The event log sensor moves its bookmark only when the writer says the readings are durable:
/// the channel, the real writer and a buffer.
#[tokio::test]
async fn the_writer_tells_a_sensor_when_its_samples_are_durable() {
    use outpost_shared::buffer::{MemoryBuffer, Storage, WhenFull};
    let buffer: Arc<dyn Storage> = Arc::new(MemoryBuffer::new(1 << 20, WhenFull::DropOldest));
    let (tx, rx) = mpsc::channel(4);
    let feed = Arc::new(crate::uplink::Feed::default());
    let stop = CancellationToken::new();
    let writer = tokio::spawn(crate::writer::run(
        buffer.clone(),
        rx,
        feed,
        stop.clone(),
        Arc::new(std::sync::OnceLock::new()),
    ));
    let (durable, stored) = tokio::sync::oneshot::channel();
    tx.send(Batch { samples: vec![Sample::new("x", 1.0, State::Ok)], durable: Some(durable) }).await.unwrap();
    within(stored).await.expect("told once stored");
    assert_eq!(buffer.stats().len, 1, "told only after the append");
    drop(tx);
    within(writer).await.unwrap();
}
