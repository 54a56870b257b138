//! Process sensor: how many processes of one name run, and how much memory they hold together.

use super::config::SensorConfig;
use super::probe::{lock, SharedProbe};
use super::threshold::{Thresholds, Unit};
use super::BlockingSensor;
use outpost_shared::model::{Sample, State};

pub(crate) struct Process {
    probe: SharedProbe,
    /// What reading keys say: the sensor's name, else the process name.
    label: String,
    pattern: String,
    min_count: u32,
    thresholds: Thresholds,
}

impl Process {
    pub fn new(cfg: &SensorConfig, probe: SharedProbe) -> Self {
        let pattern = cfg.process.clone().unwrap_or_default();
        Process {
            probe,
            label: cfg.name.clone().unwrap_or_else(|| pattern.clone()),
            pattern,
            min_count: cfg.min_count.unwrap_or(1),
            thresholds: cfg.thresholds(),
        }
    }
}

/// Whether a process called `name` (as the kernel reports it) is the `pattern` the user wrote.
/// Linux keeps only the first 15 bytes of a name; Windows names end in `.exe` and ignore case.
pub(crate) fn name_matches(name: &str, pattern: &str) -> bool {
    if cfg!(windows) {
        let strip = |s: &str| {
            let l = s.to_ascii_lowercase();
            l.strip_suffix(".exe").map(str::to_string).unwrap_or(l)
        };
        return strip(name) == strip(pattern);
    }
    if name == pattern {
        return true;
    }
    const COMM_LEN: usize = 15;
    name.len() == COMM_LEN && pattern.len() > COMM_LEN && pattern.as_bytes().starts_with(name.as_bytes())
}

impl BlockingSensor for Process {
    fn sample(&mut self, out: &mut Vec<Sample>) {
        let (count, rss) = {
            let mut p = lock(&self.probe);
            p.refresh_processes();
            p.system
                .processes()
                .values()
                .filter(|pr| name_matches(&pr.name().to_string_lossy(), &self.pattern))
                .fold((0u32, 0u64), |(n, m), pr| (n + 1, m + pr.memory()))
        };
        let l = &self.label;
        let (state, msg) = if count < self.min_count {
            (State::Error, format!("{}: {count} running, at least {} expected", self.pattern, self.min_count))
        } else {
            (State::Ok, format!("{}: {count} running", self.pattern))
        };
        out.push(Sample::new(format!("proc.{l}.count"), count as f64, state).message(msg));
        let rss = rss as f64;
        let (state, msg) = self.thresholds.judge(
            rss,
            Unit::Bytes,
            format!("{}: {} resident", self.pattern, Unit::Bytes.show(rss)),
        );
        out.push(
            Sample::new(format!("proc.{l}.rss"), rss, state)
                .unit("B")
                .message(msg)
                .limits(self.thresholds.limits()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_whole_or_truncated() {
        if cfg!(windows) {
            return;
        }
        assert!(name_matches("sshd", "sshd"));
        assert!(!name_matches("sshd", "ssh"));
        assert!(name_matches("systemd-journal", "systemd-journald"));
        assert!(!name_matches("systemd-journal", "systemd-journ"));
    }
}
