//! systemd's readiness and watchdog protocol, spoken by hand: a unit with `Type=notify` waits
//! for `READY=1`, and with `WatchdogSec=` restarts the service unless `WATCHDOG=1` arrives in
//! time. Messages are datagrams to the Unix socket named by `$NOTIFY_SOCKET` (a path, or an
//! abstract name written with a leading `@`). Without that variable (not started by systemd,
//! or not on Linux) every call here does nothing.

use std::ffi::OsStr;
use std::time::Duration;

#[cfg(all(test, unix))]
mod tests;

/// A connection to systemd's notification socket.
#[derive(Debug)]
pub struct Notifier {
    #[cfg(unix)]
    socket: std::os::unix::net::UnixDatagram,
    #[cfg(unix)]
    target: Target,
}

#[cfg(unix)]
#[derive(Debug, Clone)]
enum Target {
    Path(std::path::PathBuf),
    #[cfg(any(target_os = "linux", target_os = "android"))]
    Abstract(Vec<u8>),
}

impl Notifier {
    /// The notifier systemd asked for through `$NOTIFY_SOCKET`, if any.
    pub fn from_env() -> Option<Notifier> {
        let addr = std::env::var_os("NOTIFY_SOCKET")?;
        match Notifier::connect(&addr) {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!(socket = ?addr, error = %e, "cannot use NOTIFY_SOCKET; systemd will not hear from us");
                None
            }
        }
    }

    /// A notifier for a socket address in `$NOTIFY_SOCKET` form.
    #[cfg(unix)]
    pub fn connect(addr: &OsStr) -> std::io::Result<Notifier> {
        use std::os::unix::ffi::OsStrExt;
        let bytes = addr.as_bytes();
        let target = match bytes.first() {
            #[cfg(any(target_os = "linux", target_os = "android"))]
            Some(b'@') => Target::Abstract(bytes[1..].to_vec()),
            Some(b'/') => Target::Path(std::path::PathBuf::from(addr)),
            _ => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "NOTIFY_SOCKET must be an absolute path or an abstract name starting with @",
                ))
            }
        };
        let socket = std::os::unix::net::UnixDatagram::unbound()?;
        Ok(Notifier { socket, target })
    }

    #[cfg(not(unix))]
    pub fn connect(_addr: &OsStr) -> std::io::Result<Notifier> {
        Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "sd_notify needs Unix sockets"))
    }

    /// Sends one message of newline-separated `KEY=value` assignments.
    pub fn notify(&self, state: &str) -> std::io::Result<()> {
        #[cfg(unix)]
        {
            let sent = match &self.target {
                Target::Path(p) => self.socket.send_to(state.as_bytes(), p)?,
                #[cfg(any(target_os = "linux", target_os = "android"))]
                Target::Abstract(name) => {
                    #[cfg(target_os = "android")]
                    use std::os::android::net::SocketAddrExt;
                    #[cfg(target_os = "linux")]
                    use std::os::linux::net::SocketAddrExt;
                    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                    self.socket.send_to_addr(state.as_bytes(), &addr)?
                }
            };
            if sent != state.len() {
                return Err(std::io::Error::new(std::io::ErrorKind::WriteZero, "notification truncated"));
            }
            Ok(())
        }
        #[cfg(not(unix))]
        {
            let _ = state;
            Ok(())
        }
    }
}

fn send(state: &str) {
    if let Some(n) = Notifier::from_env() {
        if let Err(e) = n.notify(state) {
            tracing::warn!(error = %e, state, "sd_notify failed");
        }
    }
}

/// Tells systemd the service is up (its ports are bound and its buffer is open). Call once.
pub fn notify_ready() {
    send("READY=1");
}

/// Tells systemd the service is shutting down, so a slow flush is not taken for a hang.
pub fn notify_stopping() {
    send("STOPPING=1");
}

/// A one-line status `systemctl status` shows.
pub fn notify_status(text: &str) {
    send(&format!("STATUS={}", text.replace('\n', " ")));
}

/// The ping interval systemd expects, from `$WATCHDOG_USEC` and `$WATCHDOG_PID`: half the
/// timeout, so one late ping is not yet fatal. `None` when the watchdog is off or meant for
/// another process.
pub fn watchdog_interval() -> Option<Duration> {
    watchdog_interval_from(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

/// [`watchdog_interval`] from given values.
pub fn watchdog_interval_from(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != own_pid {
            return None;
        }
    }
    let usec: u64 = usec?.trim().parse().ok().filter(|u| *u > 0)?;
    Some(Duration::from_micros(usec / 2))
}

/// Starts the watchdog ping when systemd asked for one: a task that sends `WATCHDOG=1` every
/// half timeout. It runs on the caller's tokio runtime on purpose: a runtime so stuck that this
/// task cannot run also stops the pings, and systemd restarts the service. Needs a runtime;
/// returns `None` (and does nothing) when no watchdog is wanted.
pub fn spawn_watchdog() -> Option<tokio::task::JoinHandle<()>> {
    let interval = watchdog_interval()?;
    let notifier = Notifier::from_env()?;
    Some(spawn_watchdog_with(notifier, interval))
}

/// [`spawn_watchdog`] with the socket and interval given.
pub fn spawn_watchdog_with(notifier: Notifier, interval: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        // After a stall, ping once and go on; a burst of catch-up pings would hide the stall.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = notifier.notify("WATCHDOG=1") {
                tracing::warn!(error = %e, "watchdog ping failed");
            }
        }
    })
}
