//! Which local IPv4 networks the responder serves. Addresses come from `sysinfo` (getifaddrs on
//! Unix, the IP helper API on Windows: no unsafe code here); on Linux the interface flags come from
//! `/sys/class/net/NAME/flags`, so interfaces that are down or cannot multicast are left out.

use super::config::{is_lan_address, InterfaceSpec, Interfaces};
use serde::Serialize;
use std::net::{IpAddr, Ipv4Addr};

/// One local address the responder answers on, with the subnet its requesters must be in.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct LanInterface {
    pub name: String,
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl LanInterface {
    /// Whether `ip` is on this interface's subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = if self.prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(self.prefix.min(32))) };
        u32::from(ip) & mask == u32::from(self.addr) & mask
    }
}

impl std::fmt::Display for LanInterface {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.name, self.addr, self.prefix)
    }
}

/// An IPv4 address of this machine and what its interface can do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostAddr {
    pub name: String,
    pub addr: Ipv4Addr,
    pub prefix: u8,
    pub up: bool,
    pub multicast: bool,
    pub loopback: bool,
}

/// Every IPv4 address of this machine (in the current network namespace).
pub(crate) fn host_addresses() -> Vec<HostAddr> {
    let networks = sysinfo::Networks::new_with_refreshed_list();
    let mut out = Vec::new();
    for (name, data) in networks.list() {
        let flags = interface_flags(name);
        for net in data.ip_networks() {
            let IpAddr::V4(addr) = net.addr else { continue };
            let (up, multicast, loopback) = match flags {
                Some(f) => (f & IFF_UP != 0, f & IFF_MULTICAST != 0, f & IFF_LOOPBACK != 0),
                None => (true, true, addr.is_loopback()),
            };
            out.push(HostAddr { name: name.clone(), addr, prefix: net.prefix, up, multicast, loopback });
        }
    }
    out.sort_by(|a, b| (&a.name, a.addr).cmp(&(&b.name, b.addr)));
    out
}

const IFF_UP: u32 = 0x1;
const IFF_LOOPBACK: u32 = 0x8;
const IFF_MULTICAST: u32 = 0x1000;

#[cfg(target_os = "linux")]
fn interface_flags(name: &str) -> Option<u32> {
    if name.contains('/') || name.starts_with('.') {
        return None;
    }
    let text = std::fs::read_to_string(format!("/sys/class/net/{name}/flags")).ok()?;
    u32::from_str_radix(text.trim().trim_start_matches("0x"), 16).ok()
}

#[cfg(not(target_os = "linux"))]
fn interface_flags(_name: &str) -> Option<u32> {
    None
}

/// The interfaces `spec` selects among `host`, plus a line for each address left out and why (for
/// the log, and for the warning when nothing is left).
pub(crate) fn select(spec: &Interfaces, host: &[HostAddr]) -> (Vec<LanInterface>, Vec<String>) {
    let mut chosen = Vec::new();
    let mut skipped = Vec::new();
    let usable = |h: &HostAddr, skipped: &mut Vec<String>| -> bool {
        let why = if h.loopback {
            "loopback"
        } else if !h.up {
            "interface is down"
        } else if !h.multicast {
            "interface cannot multicast"
        } else if !is_lan_address(h.addr) {
            "not a private (RFC 1918) or link-local address"
        } else {
            return true;
        };
        skipped.push(format!("{} {}/{}: {why}", h.name, h.addr, h.prefix));
        false
    };
    let lan = |h: &HostAddr| LanInterface { name: h.name.clone(), addr: h.addr, prefix: h.prefix };
    match spec {
        Interfaces::Auto => {
            for h in host {
                if usable(h, &mut skipped) {
                    chosen.push(lan(h));
                }
            }
        }
        Interfaces::List(list) => {
            for entry in list {
                let matching: Vec<&HostAddr> = host
                    .iter()
                    .filter(|h| match entry {
                        InterfaceSpec::Name(n) => &h.name == n,
                        InterfaceSpec::Net { addr, .. } => h.addr == *addr,
                    })
                    .collect();
                if matching.is_empty() {
                    skipped.push(format!("{entry}: no such interface or address on this machine (yet)"));
                }
                for h in matching {
                    if usable(h, &mut skipped) {
                        let mut l = lan(h);
                        if let InterfaceSpec::Net { prefix, .. } = entry {
                            // The configured prefix wins: it may deliberately narrow who is answered.
                            l.prefix = *prefix;
                        }
                        if !chosen.contains(&l) {
                            chosen.push(l);
                        }
                    }
                }
            }
        }
    }
    (chosen, skipped)
}

/// The interfaces the responder would use now for `spec`; for logs and status pages.
pub fn lan_interfaces(spec: &Interfaces) -> Vec<LanInterface> {
    select(spec, &host_addresses()).0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, addr: &str, prefix: u8) -> HostAddr {
        HostAddr {
            name: name.into(),
            addr: addr.parse().unwrap(),
            prefix,
            up: true,
            multicast: true,
            loopback: false,
        }
    }

    fn machine() -> Vec<HostAddr> {
        let mut lo = host("lo", "127.0.0.1", 8);
        lo.loopback = true;
        let mut down = host("eth2", "10.9.0.1", 16);
        down.up = false;
        let mut tun = host("wg0", "10.8.0.2", 24);
        tun.multicast = false;
        vec![
            lo,
            host("eth0", "192.168.1.10", 24),
            host("eth1", "203.0.113.5", 24),
            down,
            tun,
            host("usb0", "169.254.7.1", 16),
            host("tail0", "100.64.3.3", 10),
        ]
    }

    #[test]
    fn auto_takes_only_lan_interfaces_that_are_up_and_multicast() {
        let (chosen, skipped) = select(&Interfaces::Auto, &machine());
        let names: Vec<&str> = chosen.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["eth0", "usb0"]);
        assert_eq!(skipped.len(), 5, "{skipped:?}");
        assert!(skipped.iter().any(|s| s.starts_with("eth1 203.0.113.5/24: not a private")));
    }

    #[test]
    fn a_list_selects_by_name_or_address_and_still_refuses_public_ones() {
        let spec = Interfaces::List(vec![
            InterfaceSpec::Name("eth1".into()),
            InterfaceSpec::Net { addr: "192.168.1.10".parse().unwrap(), prefix: 28 },
            InterfaceSpec::Name("eth9".into()),
        ]);
        let (chosen, skipped) = select(&spec, &machine());
        assert_eq!(
            chosen,
            [LanInterface { name: "eth0".into(), addr: "192.168.1.10".parse().unwrap(), prefix: 28 }]
        );
        assert!(skipped.iter().any(|s| s.contains("203.0.113.5")));
        assert!(skipped.iter().any(|s| s.starts_with("eth9: no such interface")));
    }

    #[test]
    fn subnet_membership() {
        let i = LanInterface { name: "e".into(), addr: "192.168.1.10".parse().unwrap(), prefix: 24 };
        assert!(i.contains("192.168.1.200".parse().unwrap()));
        assert!(!i.contains("192.168.2.1".parse().unwrap()));
        let host_only = LanInterface { prefix: 32, ..i.clone() };
        assert!(host_only.contains("192.168.1.10".parse().unwrap()));
        assert!(!host_only.contains("192.168.1.11".parse().unwrap()));
    }

    #[test]
    fn this_machine_can_be_enumerated() {
        // Only reads; whatever the machine has, the loopback address is never chosen.
        let all = host_addresses();
        let (chosen, _) = select(&Interfaces::Auto, &all);
        assert!(chosen.iter().all(|c| !c.addr.is_loopback() && is_lan_address(c.addr)));
    }
}
