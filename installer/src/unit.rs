//! The systemd unit of a role, rendered from one template. `outpost install` writes it for the
//! binary it installed; the Debian package ships [`UnitParams::packaged`] renderings from
//! `installer/assets/`, which a test compares with this template so the two never drift.

use crate::layout::{Layout, PACKAGED_BIN, SERIAL_GROUP, SERVICE_USER};
use crate::Role;
use std::fmt::Write;

/// How long systemd waits for a watchdog ping before it restarts the service. The role pings at
/// half this interval (see [`crate::sdnotify::spawn_watchdog`]).
pub const WATCHDOG_SEC: u32 = 30;

/// What varies between renderings of a role's unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitParams {
    pub role: Role,
    /// Absolute path of the `outpost` binary on the target system.
    pub bin: String,
    /// Absolute path of the role's config on the target system.
    pub config: String,
    /// The one directory the service may write to.
    pub data_dir: String,
    /// Keep `CAP_NET_BIND_SERVICE`, for a cloud listening on a port below 1024 (443).
    pub bind_privileged: bool,
}

impl UnitParams {
    /// The unit as `outpost install` writes it for a binary at `bin`.
    pub fn new(role: Role, bin: &str, bind_privileged: bool) -> UnitParams {
        UnitParams {
            role,
            bin: bin.to_string(),
            config: Layout::config(role),
            data_dir: Layout::data_dir(role),
            bind_privileged,
        }
    }

    /// The unit the Debian package ships: binary in `/usr/bin`, and a cloud that may bind 443
    /// (its default listening port).
    pub fn packaged(role: Role) -> UnitParams {
        UnitParams::new(role, PACKAGED_BIN, role == Role::Cloud)
    }
}

/// Renders the unit file text.
pub fn render(p: &UnitParams) -> String {
    let role = p.role;
    let mut u = String::new();
    // `writeln!` into a String cannot fail; the results are ignored on purpose below.
    let _ =
        writeln!(u, "# Outpost {role} service. Replaced on every upgrade: put local changes in a drop-in");
    let _ = writeln!(u, "# (`systemctl edit {}`), not here.", role.service_name());
    u.push_str("[Unit]\n");
    let _ = writeln!(u, "Description={}", role.description());
    // The role talks to the network from its first second; wait until an address is up.
    u.push_str("Wants=network-online.target\nAfter=network-online.target\n");
    // A monitoring agent must never give up restarting; the restart delay keeps it gentle.
    u.push_str("StartLimitIntervalSec=0\n\n");

    u.push_str("[Service]\n");
    u.push_str("Type=notify\n");
    let _ = writeln!(u, "ExecStart={} {} --config {}", p.bin, role, p.config);
    u.push_str("Restart=on-failure\nRestartSec=5s\n");
    // Exit status 64 means bad configuration: restarting cannot fix it, an operator must.
    u.push_str("RestartPreventExitStatus=64\n");
    let _ = writeln!(u, "WatchdogSec={WATCHDOG_SEC}s");
    let _ = writeln!(u, "User={SERVICE_USER}\nGroup={SERVICE_USER}");
    if role == Role::Sensorhub {
        let _ = writeln!(u, "SupplementaryGroups={SERIAL_GROUP}");
    }
    u.push_str("UMask=0027\n");
    if role != Role::Sensorhub {
        // Connectors and clouds hold one or two connections per hub: the default of 1,024
        // descriptors filled up at a few hundred hubs.
        u.push_str("LimitNOFILE=65536\n");
    }

    u.push_str("\n# Hardening: the service writes only to its data directory and holds no privilege.\n");
    u.push_str("NoNewPrivileges=yes\nProtectSystem=strict\nProtectHome=yes\nPrivateTmp=yes\n");
    let _ = writeln!(u, "ReadWritePaths={}", p.data_dir);
    u.push_str(
        "ProtectKernelTunables=yes\nProtectKernelModules=yes\nProtectKernelLogs=yes\n\
         ProtectControlGroups=yes\nProtectClock=yes\nProtectHostname=yes\n\
         RestrictNamespaces=yes\nRestrictRealtime=yes\nRestrictSUIDSGID=yes\nLockPersonality=yes\n\
         MemoryDenyWriteExecute=yes\nSystemCallArchitectures=native\n",
    );
    u.push_str("# Netlink is for listing network interfaces (sensors, SSDP).\n");
    u.push_str("RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK\n");
    if p.bind_privileged {
        u.push_str("# The cloud listens on 443: binding a port below 1024 is its one privilege.\n");
        u.push_str("CapabilityBoundingSet=CAP_NET_BIND_SERVICE\nAmbientCapabilities=CAP_NET_BIND_SERVICE\n");
    } else {
        u.push_str("CapabilityBoundingSet=\nAmbientCapabilities=\n");
    }
    if role == Role::Sensorhub {
        u.push_str("# Serial ports only, for relay cards and serial sensors.\n");
        u.push_str("DevicePolicy=closed\n");
        for dev in ["ttyS", "ttyUSB", "ttyACM"] {
            let _ = writeln!(u, "DeviceAllow=char-{dev} rw");
        }
    } else {
        u.push_str("PrivateDevices=yes\n");
    }

    u.push_str("\n[Install]\nWantedBy=multi-user.target\n");
    u
}

/// Whether a config listens on a privileged port: any `listen`/`bind`/`addr` value anywhere in
/// it of the form `host:port` with a port below 1024. Reading the config generically keeps this
/// crate independent of the roles' config types.
pub fn config_binds_privileged_port(config: &toml::Table) -> bool {
    fn walk(table: &toml::Table) -> bool {
        table.iter().any(|(key, value)| match value {
            toml::Value::Table(t) => walk(t),
            toml::Value::Array(items) => items.iter().any(|i| i.as_table().is_some_and(walk)),
            toml::Value::String(s) if is_address_key(key) => port_of(s).is_some_and(|p| p < 1024),
            _ => false,
        })
    }
    fn is_address_key(key: &str) -> bool {
        ["listen", "bind", "addr"].iter().any(|k| key.contains(k))
    }
    fn port_of(s: &str) -> Option<u16> {
        s.rsplit_once(':')?.1.parse().ok()
    }
    walk(config)
}
