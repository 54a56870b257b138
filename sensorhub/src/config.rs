//! The hub's configuration (`sensorhub.toml`). Parsed, then validated as a whole (every problem
//! reported at once, with file, line and key), then built into running parts.

use crate::relay::RelayConfig;
use crate::sensors::SensorConfig;
use crate::uplink::UplinkConfig;
use outpost_shared::config::{Problem, Validate};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The embedded default configuration, printed by `outpost config default`.
pub const DEFAULT_CONFIG: &str = include_str!("../default.toml");

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HubConfig {
    /// The buffer and the machine identity live here.
    pub data_dir: PathBuf,
    /// Name shown on the dashboard; the system host name when absent.
    pub hostname: Option<String>,
    pub uplink: UplinkConfig,
    pub buffer: BufferConfig,
    /// The sensors; when the file has no `[[sensor]]` at all, the defaults (CPU, memory, disks,
    /// disk I/O, network, load and uptime of this machine).
    #[serde(rename = "sensor")]
    pub sensors: Vec<SensorConfig>,
    /// SSDP: answer connectors' searches for hubs, so they can list this hub when it is not
    /// attached (UDP 1900 multicast on LAN interfaces only).
    pub ssdp: outpost_shared::ssdp::ResponderConfig,
    /// The machine's private key; `<data_dir>/machine.key` by default. Made on first start,
    /// readable by the service alone; the machine id is the fingerprint of its public key.
    pub key_file: Option<PathBuf>,
    /// The file this configuration was read from, for `reload-config`. Set by the binary.
    #[serde(skip)]
    pub config_path: Option<PathBuf>,
    /// Conrad relay cards on a serial port (`[relay]`): their states become readings
    /// (`relay.<card>`, `relay.<card>.k1`…`k8`). Absent: no serial port is touched.
    pub relay: Option<RelayConfig>,
    /// What the cloud may change (`[managed]`): sensors managed from the cloud run beside the
    /// local `[[sensor]]` tables, within these rules.
    pub managed: crate::managed::ManagedConfig,
    /// Who runs this hub: a plain sensorhub, or a connector monitoring its own machine. Not
    /// configurable: the connector sets it for its embedded hub.
    #[serde(skip)]
    pub role: outpost_shared::model::Role,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BufferConfig {
    /// Most disk space the buffer may take; when full, the oldest readings are dropped and
    /// counted (the count reaches the cloud).
    #[serde(with = "outpost_shared::config::size")]
    pub quota: u64,
}

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig { quota: 256 << 20 }
    }
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            data_dir: PathBuf::from("outpost-data/sensorhub"),
            hostname: None,
            uplink: UplinkConfig::default(),
            buffer: BufferConfig::default(),
            sensors: Vec::new(),
            ssdp: Default::default(),
            key_file: None,
            config_path: None,
            relay: None,
            managed: Default::default(),
            role: Default::default(),
        }
    }
}

impl HubConfig {
    /// The sensors to run: the configured ones, or the defaults when none are configured.
    pub fn effective_sensors(&self) -> Vec<SensorConfig> {
        if self.sensors.is_empty() {
            crate::sensors::default_sensors()
        } else {
            self.sensors.clone()
        }
    }
}

impl Validate for HubConfig {
    fn validate(&self, problems: &mut Vec<Problem>) {
        self.uplink.validate(problems);
        if self.buffer.quota < 16 << 10 {
            problems.push(Problem::new("buffer.quota", "must be at least 16KiB"));
        }
        if self.hostname.as_deref().is_some_and(|h| h.trim().is_empty()) {
            problems.push(Problem::new(
                "hostname",
                "must not be empty; leave it out to use the system host name",
            ));
        }
        crate::sensors::validate_sensors(&self.sensors, problems);
        self.ssdp.check("ssdp", problems);
        if let Some(relay) = &self.relay {
            relay.validate(problems);
        }
        self.managed.validate(problems);
    }
}
