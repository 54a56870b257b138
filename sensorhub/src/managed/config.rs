//! `[managed]` in the hub's config: what the machine's owner lets the cloud change.

use outpost_shared::config::Problem;
use serde::{Deserialize, Serialize};

/// The local rules for sensors managed from the cloud. They live in the machine's own file, so
/// a cloud (or anyone holding its key) cannot loosen them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ManagedConfig {
    /// Apply sensor documents from the cloud. `false` refuses every one (the hub then runs its
    /// local `[[sensor]]` tables only, and says so to the cloud).
    pub enabled: bool,
    /// Sensor ids (`cpu`, `tcp.db`, `proc.nginx`) the cloud may not add, change or remove.
    pub protected: Vec<String>,
    /// Accept `command` (Nagios plugin) sensors from the cloud. Such a sensor runs a program on
    /// this machine as the hub's user, so the owner must allow it here; off by default.
    pub allow_commands: bool,
}

impl Default for ManagedConfig {
    fn default() -> Self {
        ManagedConfig { enabled: true, protected: Vec::new(), allow_commands: false }
    }
}

impl ManagedConfig {
    pub fn validate(&self, problems: &mut Vec<Problem>) {
        let mut seen = std::collections::HashSet::new();
        for (i, id) in self.protected.iter().enumerate() {
            let usable = !id.is_empty()
                && id.len() <= 256
                && id.chars().all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !usable {
                problems.push(Problem::new(
                    format!("managed.protected[{i}]"),
                    format!("`{id}` is not a sensor id; use the name `sample-now` takes, e.g. `cpu`, `tcp.db` or `proc.nginx`"),
                ));
            } else if !seen.insert(id.as_str()) {
                problems
                    .push(Problem::new(format!("managed.protected[{i}]"), format!("`{id}` is listed twice")));
            }
        }
    }

    pub fn is_protected(&self, id: &str) -> bool {
        self.protected.iter().any(|p| p == id)
    }
}
