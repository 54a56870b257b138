//! Machine-wide sensors read through the shared sysinfo probe: CPU (on Windows from the system's
//! CPU times instead), memory and swap, disk space, load and uptime.

use super::config::{Metric, SensorConfig};
use super::probe::{lock, SharedProbe};
use super::threshold::{Thresholds, Unit};
use super::BlockingSensor;
use outpost_shared::model::{Sample, State};
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;
#[cfg(not(windows))]
use sysinfo::CpuRefreshKind;
use sysinfo::{DiskRefreshKind, MemoryRefreshKind};

fn reading(key: String, v: f64, unit: Unit, state: State) -> Sample {
    let s = Sample::new(key, v, state);
    match unit.as_str() {
        Some(u) => s.unit(u),
        None => s,
    }
}

/// Rounds for storage: more digits than this are noise and cost bytes on every hop.
pub(crate) fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// CPU usage: `cpu.total` (judged) and `cpu.coreN`, busy percent since the previous sample. On
/// Windows the times come from the system directly ([`super::cpu_windows`]): sysinfo reads them
/// through PDH there.
pub(crate) struct Cpu {
    #[cfg(not(windows))]
    probe: SharedProbe,
    #[cfg(windows)]
    sampler: super::cpu_windows::Sampler,
    per_core: bool,
    thresholds: Thresholds,
}

/// The machine's busy share (Err: why there is none, for an `unknown` reading) and each
/// processor's by position (a processor without a value this time is `None`).
type Usage = (Result<f64, String>, Vec<Option<f64>>);

impl Cpu {
    #[cfg(not(windows))]
    pub fn new(cfg: &SensorConfig, probe: SharedProbe) -> Self {
        Cpu { probe, per_core: cfg.per_core.unwrap_or(true), thresholds: cfg.thresholds() }
    }

    #[cfg(windows)]
    pub fn new(cfg: &SensorConfig, _probe: SharedProbe) -> Self {
        Cpu {
            sampler: super::cpu_windows::Sampler::new(),
            per_core: cfg.per_core.unwrap_or(true),
            thresholds: cfg.thresholds(),
        }
    }

    #[cfg(not(windows))]
    fn refresh(&mut self) -> Usage {
        let mut p = lock(&self.probe);
        p.system.refresh_cpu_specifics(CpuRefreshKind::nothing().with_cpu_usage());
        let total = p.system.global_cpu_usage() as f64;
        let cores = if self.per_core {
            p.system.cpus().iter().map(|c| Some(c.cpu_usage() as f64)).collect()
        } else {
            Vec::new()
        };
        (Ok(total), cores)
    }

    #[cfg(windows)]
    fn refresh(&mut self) -> Usage {
        self.sampler.sample(self.per_core)
    }
}

impl BlockingSensor for Cpu {
    fn prime(&mut self) -> Option<Duration> {
        // The first reading is only a baseline.
        let _ = self.refresh();
        // Usage is the share of busy time between two refreshes; sysinfo ignores refreshes
        // closer together than this (and Windows counts CPU time in clock ticks of 15.6 ms).
        Some(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL + Duration::from_millis(50))
    }

    fn sample(&mut self, out: &mut Vec<Sample>) {
        let (total, cores) = self.refresh();
        match total {
            Ok(total) => {
                let total = round2(total.clamp(0.0, 100.0));
                let (state, msg) =
                    self.thresholds.judge(total, Unit::Percent, format!("cpu {total:.1}% busy"));
                out.push(
                    reading("cpu.total".into(), total, Unit::Percent, state)
                        .message(msg)
                        .limits(self.thresholds.limits()),
                );
            }
            Err(why) => out.push(
                Sample::new("cpu.total", "unknown".to_string(), State::Unknown)
                    .message(format!("cpu: {why}")),
            ),
        }
        for (i, c) in cores.into_iter().enumerate() {
            if let Some(c) = c {
                out.push(reading(
                    format!("cpu.core{i}"),
                    round2(c.clamp(0.0, 100.0)),
                    Unit::Percent,
                    State::Ok,
                ));
            }
        }
    }
}

pub(crate) struct Memory {
    probe: SharedProbe,
    metric: Metric,
    thresholds: Thresholds,
}

impl Memory {
    pub fn new(cfg: &SensorConfig, probe: SharedProbe) -> Self {
        Memory { probe, metric: cfg.metric().unwrap_or(Metric::UsedPct), thresholds: cfg.thresholds() }
    }
}

fn pct(part: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        round2(part as f64 * 100.0 / total as f64)
    }
}

impl BlockingSensor for Memory {
    fn sample(&mut self, out: &mut Vec<Sample>) {
        let (total, used, swap_total, swap_used) = {
            let mut p = lock(&self.probe);
            p.system.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram().with_swap());
            let s = &p.system;
            (s.total_memory(), s.used_memory(), s.total_swap(), s.used_swap())
        };
        if total == 0 {
            out.push(
                Sample::new("mem.used_pct", "unreadable".to_string(), State::Unknown)
                    .message("the operating system reported no memory"),
            );
            return;
        }
        let judge = |metric: Metric, v: f64, what: String| {
            if metric == self.metric {
                self.thresholds.judge(v, Unit::Percent, what)
            } else {
                (State::Ok, what)
            }
        };
        // Lines are drawn only on the metric the limits judge.
        let limits = |metric: Metric| if metric == self.metric { self.thresholds.limits() } else { None };
        let used_pct = pct(used, total);
        let what = format!(
            "memory {used_pct:.1}% used ({} of {})",
            Unit::Bytes.show(used as f64),
            Unit::Bytes.show(total as f64)
        );
        let (state, msg) = judge(Metric::UsedPct, used_pct, what);
        out.push(
            reading("mem.used_pct".into(), used_pct, Unit::Percent, state)
                .message(msg)
                .limits(limits(Metric::UsedPct)),
        );
        out.push(reading("mem.used".into(), used as f64, Unit::Bytes, State::Ok));

        let swap_pct = pct(swap_used, swap_total);
        let what = if swap_total == 0 {
            "no swap configured".to_string()
        } else {
            format!(
                "swap {swap_pct:.1}% used ({} of {})",
                Unit::Bytes.show(swap_used as f64),
                Unit::Bytes.show(swap_total as f64)
            )
        };
        let (state, msg) = judge(Metric::SwapUsedPct, swap_pct, what);
        out.push(
            reading("swap.used_pct".into(), swap_pct, Unit::Percent, state)
                .message(msg)
                .limits(limits(Metric::SwapUsedPct)),
        );
        out.push(reading("swap.used".into(), swap_used as f64, Unit::Bytes, State::Ok));
    }
}

/// Filesystems that hold no user data: kernel interfaces, RAM-backed scratch space, read-only
/// images. Their "usage" is meaningless or always 100%.
const PSEUDO_FS: &[&str] = &[
    "proc",
    "sysfs",
    "devtmpfs",
    "devpts",
    "tmpfs",
    "ramfs",
    "rootfs",
    "cgroup",
    "cgroup2",
    "pstore",
    "bpf",
    "debugfs",
    "tracefs",
    "securityfs",
    "configfs",
    "fusectl",
    "hugetlbfs",
    "mqueue",
    "binfmt_misc",
    "autofs",
    "nsfs",
    "efivarfs",
    "rpc_pipefs",
    "squashfs",
    "iso9660",
    "udf",
    "selinuxfs",
];

fn is_pseudo(fs: &str) -> bool {
    // FUSE mounts are mostly views (lxcfs, gvfs, snapfuse) or remote (sshfs, whose statvfs can
    // hang); block-device FUSE filesystems such as ntfs-3g report as `fuseblk` and are kept.
    PSEUDO_FS.contains(&fs) || fs.starts_with("fuse.") || fs == "fuse"
}

/// (mount, device) of a disk: how readings name it, and what tells two mounts of one filesystem
/// apart from two filesystems.
#[cfg(not(windows))]
fn disk_names(d: &sysinfo::Disk) -> (String, String) {
    (d.mount_point().to_string_lossy().into_owned(), d.name().to_string_lossy().into_owned())
}

/// Windows: readings are named by drive letter (`disk.C:.used_pct`), as admins name drives. The
/// name sysinfo gives there is the volume label, which many volumes share (or leave empty), so it
/// cannot tell volumes apart: the drive itself does.
#[cfg(windows)]
fn disk_names(d: &sysinfo::Disk) -> (String, String) {
    let mount = d.mount_point().to_string_lossy();
    let drive = mount.trim_end_matches('\\').to_string();
    (drive.clone(), drive)
}

/// Compares mount points the way people write them: `/data/` is `/data`, `C:` is `C:\`.
fn same_mount(a: &str, b: &str) -> bool {
    let t = |s: &str| {
        let s = s.trim_end_matches(['/', '\\']);
        if s.is_empty() {
            "/".to_string()
        } else {
            s.to_string()
        }
    };
    if cfg!(windows) {
        t(a).eq_ignore_ascii_case(&t(b))
    } else {
        t(a) == t(b)
    }
}

pub(crate) struct Disk {
    probe: SharedProbe,
    mounts: Option<Vec<String>>,
    metric: Metric,
    thresholds: Thresholds,
}

struct Space {
    mount: String,
    device: String,
    total: u64,
    available: u64,
}

impl Disk {
    pub fn new(cfg: &SensorConfig, probe: SharedProbe) -> Self {
        Disk {
            probe,
            mounts: cfg.mounts.clone(),
            metric: cfg.metric().unwrap_or(Metric::UsedPct),
            thresholds: cfg.thresholds(),
        }
    }

    fn read(&self) -> Vec<Space> {
        let mut p = lock(&self.probe);
        // Re-list mounts every time: a disk mounted later shows up, an unmounted one goes.
        p.disks.refresh_specifics(true, DiskRefreshKind::nothing().with_storage());
        let mut found: Vec<Space> = p
            .disks
            .list()
            .iter()
            .filter(|d| self.mounts.is_some() || !is_pseudo(&d.file_system().to_string_lossy()))
            .map(|d| {
                let (mount, device) = disk_names(d);
                Space { mount, device, total: d.total_space(), available: d.available_space() }
            })
            .collect();
        drop(p);
        if self.mounts.is_none() {
            // Bind mounts (a container's /etc/hosts, btrfs subvolumes) repeat one filesystem
            // under many paths; report it once, at its shortest path. Mounted files are no disks.
            found.retain(|s| s.total > 0 && Path::new(&s.mount).is_dir());
            found.sort_by(|a, b| a.mount.len().cmp(&b.mount.len()).then_with(|| a.mount.cmp(&b.mount)));
            let mut seen: HashMap<String, ()> = HashMap::new();
            found.retain(|s| seen.insert(s.device.clone(), ()).is_none());
            found.sort_by(|a, b| a.mount.cmp(&b.mount));
        }
        found
    }

    fn report(&self, s: &Space, out: &mut Vec<Sample>) {
        let used = s.total.saturating_sub(s.available);
        // Space reserved for root counts as used: it is not there for the services we watch.
        let used_pct = pct(used, s.total);
        let free = s.available as f64;
        let m = &s.mount;
        let (pct_state, pct_msg, free_state, free_msg) = {
            let pct_what = format!("disk {m} {used_pct:.1}% used");
            let free_what =
                format!("disk {m} {} free of {}", Unit::Bytes.show(free), Unit::Bytes.show(s.total as f64));
            match self.metric {
                Metric::Free => {
                    let (st, msg) = self.thresholds.judge(free, Unit::Bytes, free_what);
                    (State::Ok, pct_what, st, msg)
                }
                _ => {
                    let (st, msg) = self.thresholds.judge(used_pct, Unit::Percent, pct_what);
                    (st, msg, State::Ok, free_what)
                }
            }
        };
        let (pct_limits, free_limits) = match self.metric {
            Metric::Free => (None, self.thresholds.limits()),
            _ => (self.thresholds.limits(), None),
        };
        out.push(
            reading(format!("disk.{m}.used_pct"), used_pct, Unit::Percent, pct_state)
                .message(pct_msg)
                .limits(pct_limits),
        );
        out.push(
            reading(format!("disk.{m}.free"), free, Unit::Bytes, free_state)
                .message(free_msg)
                .limits(free_limits),
        );
    }
}

impl BlockingSensor for Disk {
    fn sample(&mut self, out: &mut Vec<Sample>) {
        let found = self.read();
        match &self.mounts {
            None => {
                for s in &found {
                    self.report(s, out);
                }
            }
            Some(wanted) => {
                for w in wanted {
                    match found.iter().find(|s| same_mount(&s.mount, w)) {
                        Some(s) => self.report(s, out),
                        None => out.push(
                            Sample::new(format!("disk.{w}.used_pct"), "missing".to_string(), State::Error)
                                .message(format!("disk {w} is not mounted")),
                        ),
                    }
                }
            }
        }
    }
}

pub(crate) struct Load {
    #[cfg_attr(windows, allow(dead_code))]
    thresholds: Thresholds,
    #[cfg_attr(windows, allow(dead_code))]
    cores: usize,
}

impl Load {
    pub fn new(cfg: &SensorConfig) -> Self {
        Load {
            thresholds: cfg.thresholds(),
            cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        }
    }
}

impl BlockingSensor for Load {
    fn sample(&mut self, out: &mut Vec<Sample>) {
        // Windows has no load average: report uptime only. (sysinfo's load average there is a PDH
        // query; the Windows build never calls it.)
        #[cfg(not(windows))]
        {
            let l = sysinfo::System::load_average();
            let (one, five, fifteen) = (round2(l.one), round2(l.five), round2(l.fifteen));
            let what = format!("load {one:.2} {five:.2} {fifteen:.2} on {} cores", self.cores);
            let (state, msg) = self.thresholds.judge(one, Unit::None, what);
            out.push(Sample::new("load.1", one, state).message(msg).limits(self.thresholds.limits()));
            out.push(Sample::new("load.5", five, State::Ok));
            out.push(Sample::new("load.15", fifteen, State::Ok));
        }
        let up = sysinfo::System::uptime() as f64;
        out.push(
            reading("uptime".into(), up, Unit::Secs, State::Ok)
                .message(format!("up {}", Unit::Secs.show(up))),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudo_filesystems_are_recognised() {
        for fs in ["proc", "tmpfs", "cgroup2", "fuse.lxcfs", "squashfs"] {
            assert!(is_pseudo(fs), "{fs}");
        }
        for fs in ["ext4", "xfs", "btrfs", "overlay", "NTFS", "fuseblk", "zfs"] {
            assert!(!is_pseudo(fs), "{fs}");
        }
    }

    #[test]
    fn mount_points_compare_as_written() {
        assert!(same_mount("/", "/"));
        assert!(same_mount("/data", "/data/"));
        assert!(!same_mount("/data", "/"));
    }
}
