//! Rate sensors: disk I/O and network traffic. Both read ever-rising kernel counters and report
//! the change per second since the previous sample. On Linux they read `/proc/diskstats` and
//! `/proc/net/dev` directly (one small file each, cheaper than sysinfo's per-device files);
//! elsewhere the counters come from sysinfo.

use super::config::SensorConfig;
#[cfg(not(target_os = "linux"))]
use super::probe::lock;
use super::probe::SharedProbe;
use super::system::round2;
use super::threshold::{Thresholds, Unit};
use super::BlockingSensor;
use outpost_shared::model::{Sample, State};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The wait after the first reading of counters, so the first sample already has a rate.
const FIRST_RATE_WINDOW: Duration = Duration::from_secs(1);

/// Counters of several devices at one instant, and the rates since the previous instant.
struct Rates<const N: usize> {
    prev: HashMap<String, [u64; N]>,
    at: Option<Instant>,
}

impl<const N: usize> Rates<N> {
    fn new() -> Self {
        Rates { prev: HashMap::new(), at: None }
    }

    /// Stores `now`'s counters and returns, per device seen last time too, the per-second
    /// change and the raw change. A counter that went down (device re-created, wrapped) gives
    /// no rate this time rather than a huge bogus one.
    fn update(&mut self, current: Vec<(String, [u64; N])>) -> Vec<(String, [f64; N], [u64; N])> {
        let now = Instant::now();
        let secs = self.at.map(|t| now.duration_since(t).as_secs_f64()).filter(|s| *s > 0.0);
        self.at = Some(now);
        let mut rates = Vec::with_capacity(current.len());
        if let Some(secs) = secs {
            for (name, cur) in &current {
                let Some(prev) = self.prev.get(name) else { continue };
                let mut delta = [0u64; N];
                let mut ok = true;
                for i in 0..N {
                    match cur[i].checked_sub(prev[i]) {
                        Some(d) => delta[i] = d,
                        None => ok = false,
                    }
                }
                if ok {
                    rates.push((name.clone(), delta.map(|d| d as f64 / secs), delta));
                }
            }
        }
        self.prev = current.into_iter().collect();
        rates
    }
}

/// Keeps the devices the sensor watches: the configured ones, or every one that has counted
/// anything at all (idle virtual devices would only add noise).
fn select<const N: usize>(all: &mut Vec<(String, [u64; N])>, wanted: Option<&[String]>) {
    match wanted {
        Some(w) => all.retain(|(name, _)| w.iter().any(|x| x == name)),
        None => all.retain(|(_, c)| c.iter().any(|v| *v > 0)),
    }
}

/// This round's counters of the watched devices, with a sample for each configured one that is
/// missing; `None` (and an `unreadable` sample) when the counters cannot be read at all.
fn observe<const N: usize>(
    read: std::io::Result<Vec<(String, [u64; N])>>,
    kind: &str,
    key: &str,
    counters: &str,
    wanted: Option<&[String]>,
    out: &mut Vec<Sample>,
) -> Option<Vec<(String, [u64; N])>> {
    let mut now = match read {
        Ok(n) => n,
        Err(e) => {
            out.push(
                Sample::new(kind, "unreadable".to_string(), State::Unknown)
                    .message(format!("cannot read {counters} counters: {e}")),
            );
            return None;
        }
    };
    select(&mut now, wanted);
    missing(kind, key, wanted, &now, out);
    Some(now)
}

/// Reports a configured device that is not there: a disk or link that vanished is a fault.
fn missing<const N: usize>(
    kind: &str,
    key: &str,
    wanted: Option<&[String]>,
    present: &[(String, [u64; N])],
    out: &mut Vec<Sample>,
) {
    for w in wanted.unwrap_or_default() {
        if !present.iter().any(|(n, _)| n == w) {
            out.push(
                Sample::new(format!("{kind}.{w}.{key}"), "missing".to_string(), State::Error)
                    .message(format!("{kind} device {w} not found")),
            );
        }
    }
}

pub(crate) struct DiskIo {
    #[cfg_attr(target_os = "linux", allow(dead_code))]
    probe: SharedProbe,
    devices: Option<Vec<String>>,
    thresholds: Thresholds,
    rates: Rates<2>,
    /// Reused between reads so a sample does not allocate the file's text anew.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    buf: String,
}

impl DiskIo {
    pub fn new(cfg: &SensorConfig, probe: SharedProbe) -> Self {
        DiskIo {
            probe,
            devices: cfg.devices.clone(),
            thresholds: cfg.thresholds(),
            rates: Rates::new(),
            buf: String::new(),
        }
    }

    /// `(device, [bytes read, bytes written])` of every whole disk.
    #[cfg(target_os = "linux")]
    fn read(&mut self) -> std::io::Result<Vec<(String, [u64; 2])>> {
        use std::io::Read;
        self.buf.clear();
        std::fs::File::open("/proc/diskstats")?.read_to_string(&mut self.buf)?;
        // Partitions repeat their disk's traffic; /sys/block lists whole disks only.
        let whole: Vec<String> =
            std::fs::read_dir("/sys/block")?.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
        Ok(parse_diskstats(&self.buf, |name| {
            self.devices.is_some()
                || whole.iter().any(|w| w == name)
                    && !["loop", "ram", "zram", "fd", "sr"].iter().any(|p| name.starts_with(p))
        }))
    }

    #[cfg(not(target_os = "linux"))]
    fn read(&mut self) -> std::io::Result<Vec<(String, [u64; 2])>> {
        let mut p = lock(&self.probe);
        p.disks.refresh_specifics(true, sysinfo::DiskRefreshKind::nothing().with_io_usage());
        let all = p
            .disks
            .list()
            .iter()
            .map(|d| {
                let u = d.usage();
                (d.mount_point().to_string_lossy().into_owned(), [u.total_read_bytes, u.total_written_bytes])
            })
            .collect();
        Ok(all)
    }
}

/// Parses `/proc/diskstats`: sectors there are always 512 bytes, whatever the device's own size.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) fn parse_diskstats(text: &str, keep: impl Fn(&str) -> bool) -> Vec<(String, [u64; 2])> {
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 || !keep(f[2]) {
            continue;
        }
        let n = |i: usize| f[i].parse::<u64>().unwrap_or(0);
        out.push((f[2].to_string(), [n(5).saturating_mul(512), n(9).saturating_mul(512)]));
    }
    out
}

impl BlockingSensor for DiskIo {
    fn prime(&mut self) -> Option<Duration> {
        let mut now = self.read().unwrap_or_default();
        select(&mut now, self.devices.as_deref());
        self.rates.update(now);
        Some(FIRST_RATE_WINDOW)
    }

    fn sample(&mut self, out: &mut Vec<Sample>) {
        let read = self.read();
        let Some(now) = observe(read, "diskio", "read_bps", "disk", self.devices.as_deref(), out) else {
            return;
        };
        for (dev, [r, w], _) in self.rates.update(now) {
            for (what, v) in [("read", r), ("write", w)] {
                let v = round2(v);
                let (state, msg) = self.thresholds.judge(
                    v,
                    Unit::BytesPerSec,
                    format!("{dev} {what} {}", Unit::BytesPerSec.show(v)),
                );
                out.push(
                    Sample::new(format!("diskio.{dev}.{what}_bps"), v, state)
                        .unit("B/s")
                        .message(msg)
                        .limits(self.thresholds.limits()),
                );
            }
        }
    }
}

pub(crate) struct Network {
    #[cfg_attr(target_os = "linux", allow(dead_code))]
    probe: SharedProbe,
    interfaces: Option<Vec<String>>,
    thresholds: Thresholds,
    rates: Rates<3>,
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    buf: String,
}

impl Network {
    pub fn new(cfg: &SensorConfig, probe: SharedProbe) -> Self {
        Network {
            probe,
            interfaces: cfg.interfaces.clone(),
            thresholds: cfg.thresholds(),
            rates: Rates::new(),
            buf: String::new(),
        }
    }

    /// `(interface, [bytes received, bytes sent, errors both ways])`, loopback and virtual
    /// interfaces left out unless asked for by name.
    #[cfg(target_os = "linux")]
    fn read(&mut self) -> std::io::Result<Vec<(String, [u64; 3])>> {
        use std::io::Read;
        self.buf.clear();
        std::fs::File::open("/proc/net/dev")?.read_to_string(&mut self.buf)?;
        let explicit = self.interfaces.is_some();
        Ok(parse_net_dev(&self.buf, |name| explicit || !is_virtual(name)))
    }

    #[cfg(not(target_os = "linux"))]
    fn read(&mut self) -> std::io::Result<Vec<(String, [u64; 3])>> {
        let mut p = lock(&self.probe);
        p.networks.refresh(true);
        let explicit = self.interfaces.is_some();
        let all = p
            .networks
            .list()
            .iter()
            .filter(|(name, _)| {
                explicit || (!name.to_ascii_lowercase().contains("loopback") && *name != "lo0")
            })
            .map(|(name, d)| {
                let errors = d.total_errors_on_received() + d.total_errors_on_transmitted();
                (name.clone(), [d.total_received(), d.total_transmitted(), errors])
            })
            .collect();
        Ok(all)
    }
}

/// Interfaces that carry no traffic of the machine's own beyond what a physical one already counts:
/// loopback, container and VM plumbing (a veth pair per container, docker and libvirt bridges).
/// On a container host there can be hundreds, each a sensor that comes and goes with a container.
/// (Linux names; elsewhere the interface list comes from sysinfo as it is.)
#[cfg(any(target_os = "linux", test))]
pub(crate) fn is_virtual(name: &str) -> bool {
    name == "lo" || ["veth", "docker", "br-", "virbr"].iter().any(|prefix| name.starts_with(prefix))
}

/// Parses `/proc/net/dev`: two header lines, then `name: rx_bytes rx_packets rx_errs ... tx_bytes
/// tx_packets tx_errs ...`.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) fn parse_net_dev(text: &str, keep: impl Fn(&str) -> bool) -> Vec<(String, [u64; 3])> {
    let mut out = Vec::new();
    for line in text.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else { continue };
        let name = name.trim();
        if !keep(name) {
            continue;
        }
        let f: Vec<u64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
        if f.len() < 11 {
            continue;
        }
        out.push((name.to_string(), [f[0], f[8], f[2] + f[10]]));
    }
    out
}

impl BlockingSensor for Network {
    fn prime(&mut self) -> Option<Duration> {
        let mut now = self.read().unwrap_or_default();
        select(&mut now, self.interfaces.as_deref());
        self.rates.update(now);
        Some(FIRST_RATE_WINDOW)
    }

    fn sample(&mut self, out: &mut Vec<Sample>) {
        let read = self.read();
        let Some(now) = observe(read, "net", "rx_bps", "network", self.interfaces.as_deref(), out) else {
            return;
        };
        for (name, [rx, tx, _], [_, _, errors]) in self.rates.update(now) {
            for (what, v) in [("rx", rx), ("tx", tx)] {
                let v = round2(v);
                let (state, msg) = self.thresholds.judge(
                    v,
                    Unit::BytesPerSec,
                    format!("{name} {what} {}", Unit::BytesPerSec.show(v)),
                );
                out.push(
                    Sample::new(format!("net.{name}.{what}_bps"), v, state)
                        .unit("B/s")
                        .message(msg)
                        .limits(self.thresholds.limits()),
                );
            }
            // Any new error on a link is worth a look; a healthy link counts none.
            let (state, msg) = if errors > 0 {
                (State::Warn, format!("{name}: {errors} new receive/transmit errors"))
            } else {
                (State::Ok, format!("{name}: no errors"))
            };
            out.push(Sample::new(format!("net.{name}.errors"), errors as f64, state).message(msg));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diskstats_give_bytes_from_sectors() {
        let text =
            "   8       0 sda 100 0 2048 10 50 0 4096 20 0 30 30\n   8       1 sda1 1 0 8 0 1 0 8 0 0 0 0\n";
        let all = parse_diskstats(text, |n| n == "sda");
        assert_eq!(all, vec![("sda".to_string(), [2048 * 512, 4096 * 512])]);
    }

    #[test]
    fn net_dev_gives_bytes_and_errors() {
        let text = "Inter-|   Receive |  Transmit\n face |bytes packets errs drop fifo frame compressed multicast|bytes packets errs\n    lo:    3193      29    0    0    0     0          0         0     3193      29    0    0    0     0       0          0\n  eth0: 72397091    3976    2    0    0     0          0         0   369744    2850    1    0    0     0       0          0\n";
        let all = parse_net_dev(text, |n| n != "lo");
        assert_eq!(all, vec![("eth0".to_string(), [72397091, 369744, 3])]);
    }

    #[test]
    fn virtual_interfaces_are_left_out_by_default() {
        for v in ["lo", "veth1a2b3c", "docker0", "br-5f1c2d3e4a5b", "virbr0", "virbr0-nic"] {
            assert!(is_virtual(v), "{v}");
        }
        for real in ["eth0", "enp3s0", "wlan0", "wlp2s0", "bond0", "eno1", "ens18", "lower0"] {
            assert!(!is_virtual(real), "{real}");
        }
        let line = |n: &str| format!("  {n}: 100 1 0 0 0 0 0 0 200 2 0 0 0 0 0 0\n");
        let text = format!("h1\nh2\n{}{}{}{}", line("eth0"), line("veth9"), line("docker0"), line("br-1"));
        let names: Vec<String> =
            parse_net_dev(&text, |n| !is_virtual(n)).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, vec!["eth0"]);
    }

    #[test]
    fn rates_are_per_second_and_skip_resets() {
        let mut r: Rates<1> = Rates::new();
        assert!(r.update(vec![("a".into(), [1000]), ("b".into(), [500])]).is_empty());
        std::thread::sleep(Duration::from_millis(100));
        let rates = r.update(vec![("a".into(), [2000]), ("b".into(), [10])]);
        assert_eq!(rates.len(), 1, "b went backwards and must give no rate");
        let (name, [per_sec], [delta]) = &rates[0];
        assert_eq!(name, "a");
        assert_eq!(*delta, 1000);
        assert!(*per_sec > 0.0 && *per_sec <= 10_000.0, "{per_sec}");
    }
}
