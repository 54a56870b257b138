//! File sensor: the age and size of one file, e.g. a backup that must be fresh.

use super::config::{Metric, SensorConfig};
use super::threshold::{Thresholds, Unit};
use super::BlockingSensor;
use outpost_shared::model::{Sample, State};
use std::path::PathBuf;
use std::time::SystemTime;

pub(crate) struct File {
    name: String,
    path: PathBuf,
    metric: Metric,
    thresholds: Thresholds,
}

impl File {
    pub fn new(cfg: &SensorConfig) -> Self {
        File {
            name: cfg.name.clone().unwrap_or_default(),
            path: cfg.path.clone().unwrap_or_default(),
            metric: cfg.metric().unwrap_or(Metric::Age),
            thresholds: cfg.thresholds(),
        }
    }
}

impl BlockingSensor for File {
    fn sample(&mut self, out: &mut Vec<Sample>) {
        let n = &self.name;
        let shown = self.path.display();
        let meta = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) => {
                // A missing file is the failure this sensor exists to catch; an unreadable one
                // says nothing about the file, only about our access to it.
                let (value, state, msg) = if e.kind() == std::io::ErrorKind::NotFound {
                    ("missing", State::Error, format!("{shown}: not found"))
                } else {
                    ("unreadable", State::Unknown, format!("{shown}: {e}"))
                };
                out.push(Sample::new(format!("file.{n}.age"), value.to_string(), state).message(msg));
                return;
            }
        };
        let age = meta
            .modified()
            .ok()
            .map(|m| SystemTime::now().duration_since(m).map(|d| d.as_secs_f64()).unwrap_or(0.0));
        let size = meta.len() as f64;
        let judge = |metric: Metric, v: f64, unit: Unit, what: String| {
            if metric == self.metric {
                self.thresholds.judge(v, unit, what)
            } else {
                (State::Ok, what)
            }
        };
        let limits = |metric: Metric| if metric == self.metric { self.thresholds.limits() } else { None };
        match age {
            Some(age) => {
                let age = age.round();
                let (state, msg) = judge(
                    Metric::Age,
                    age,
                    Unit::Secs,
                    format!("{shown} modified {} ago", Unit::Secs.show(age)),
                );
                out.push(
                    Sample::new(format!("file.{n}.age"), age, state)
                        .unit("s")
                        .message(msg)
                        .limits(limits(Metric::Age)),
                );
            }
            None => out.push(
                Sample::new(format!("file.{n}.age"), "unknown".to_string(), State::Unknown)
                    .message(format!("{shown}: this system keeps no modification time")),
            ),
        }
        let (state, msg) =
            judge(Metric::Size, size, Unit::Bytes, format!("{shown} is {}", Unit::Bytes.show(size)));
        out.push(
            Sample::new(format!("file.{n}.size"), size, state)
                .unit("B")
                .message(msg)
                .limits(limits(Metric::Size)),
        );
    }
}
