use super::*;
use std::os::unix::net::UnixDatagram;

fn recv(listener: &UnixDatagram) -> String {
    listener.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 256];
    let n = listener.recv(&mut buf).expect("a notification within 10 s");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn ready_and_stopping_reach_a_socket_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let listener = UnixDatagram::bind(&path).unwrap();
    let n = Notifier::connect(path.as_os_str()).unwrap();
    n.notify("READY=1").unwrap();
    assert_eq!(recv(&listener), "READY=1");
    n.notify("STOPPING=1").unwrap();
    assert_eq!(recv(&listener), "STOPPING=1");
}

#[cfg(target_os = "linux")]
#[test]
fn abstract_socket_names_start_with_at() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("outpost-sdnotify-test-{}-{}", std::process::id(), fastrand_suffix());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let listener = UnixDatagram::bind_addr(&addr).unwrap();
    let n = Notifier::connect(OsStr::new(&format!("@{name}"))).unwrap();
    n.notify("READY=1\nSTATUS=up").unwrap();
    assert_eq!(recv(&listener), "READY=1\nSTATUS=up");
}

fn fastrand_suffix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

#[test]
fn relative_or_empty_addresses_are_refused() {
    assert!(Notifier::connect(OsStr::new("relative/sock")).is_err());
    assert!(Notifier::connect(OsStr::new("")).is_err());
}

#[test]
fn watchdog_interval_is_half_the_timeout_and_only_for_this_process() {
    assert_eq!(watchdog_interval_from(Some("30000000"), None, 7), Some(Duration::from_secs(15)));
    assert_eq!(watchdog_interval_from(Some("30000000"), Some("7"), 7), Some(Duration::from_secs(15)));
    assert_eq!(watchdog_interval_from(Some("30000000"), Some("8"), 7), None);
    assert_eq!(watchdog_interval_from(None, None, 7), None);
    assert_eq!(watchdog_interval_from(Some("0"), None, 7), None);
    assert_eq!(watchdog_interval_from(Some("soon"), None, 7), None);
}

#[test]
fn without_notify_socket_everything_is_a_no_op() {
    // The test runner is not started by systemd; guard against a developer's shell that is.
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        return;
    }
    notify_ready();
    notify_stopping();
    assert!(Notifier::from_env().is_none());
}

#[tokio::test]
async fn watchdog_pings_keep_coming_while_the_runtime_runs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let listener = tokio::net::UnixDatagram::bind(&path).unwrap();
    let task = spawn_watchdog_with(Notifier::connect(path.as_os_str()).unwrap(), Duration::from_millis(20));
    let mut buf = [0u8; 64];
    for _ in 0..3 {
        let n = tokio::time::timeout(Duration::from_secs(10), listener.recv(&mut buf))
            .await
            .expect("a watchdog ping within 10 s")
            .unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
    }
    task.abort();
}
