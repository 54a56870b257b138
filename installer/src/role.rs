use std::fmt;

/// The roles the one `outpost` binary can run as a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The agent on each monitored machine.
    Sensorhub,
    /// The LAN relay between hubs and the cloud.
    Connector,
    /// The self-hosted cloud.
    Cloud,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Sensorhub, Role::Connector, Role::Cloud];

    /// The role's name as used in file names, unit names and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Sensorhub => "sensorhub",
            Role::Connector => "connector",
            Role::Cloud => "cloud",
        }
    }

    /// `outpost-<role>`: the systemd unit (without `.service`) and Windows service name.
    pub fn service_name(self) -> String {
        format!("outpost-{}", self.as_str())
    }

    /// Roles that upload to a cloud, and so take `--enroll` and `--cloud` and write `status.json`.
    pub fn uploads(self) -> bool {
        matches!(self, Role::Sensorhub | Role::Connector)
    }

    pub(crate) fn description(self) -> &'static str {
        match self {
            Role::Sensorhub => "Outpost sensorhub (monitoring agent)",
            Role::Connector => "Outpost connector (LAN relay to the cloud)",
            Role::Cloud => "Outpost cloud (ingest, storage, dashboard)",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
