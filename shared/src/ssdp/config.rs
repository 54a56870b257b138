//! Responder settings: which interfaces to answer on, how often to advertise, and how many replies
//! it may send. A role embeds [`ResponderConfig`] in its own file (as `[ssdp]`); every field has
//! a default, so the table may be left out.

use crate::config::{Problem, Validate};
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::net::Ipv4Addr;
use std::time::Duration;

/// Responder settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResponderConfig {
    /// `"auto"`: every interface that is up, multicast-capable and has a private (RFC 1918) or
    /// link-local IPv4 address. Or a list of interface names (`"eth0"`) and addresses with prefix
    /// (`"192.168.1.10/24"`) to restrict answering to some LANs; addresses must be private or
    /// link-local too.
    pub interfaces: Interfaces,
    /// How often `ssdp:alive` is repeated. Must stay under half of `max_age`, so a listener never
    /// expires a live service because one NOTIFY was lost.
    #[serde(with = "humantime_serde")]
    pub notify_interval: Duration,
    /// `CACHE-CONTROL: max-age`: how long listeners may remember us. UPnP asks for at least 30 min.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// How often interfaces are enumerated again, to follow DHCP changes and cables plugged in.
    #[serde(with = "humantime_serde")]
    pub rescan_interval: Duration,
    /// Replies waiting for their random delay. When full, new requests are dropped (and counted):
    /// replies are cheap to lose, a searcher repeats its search.
    pub max_pending: usize,
    pub rate_limit: RateLimits,
}

impl Default for ResponderConfig {
    fn default() -> Self {
        ResponderConfig {
            interfaces: Interfaces::Auto,
            notify_interval: Duration::from_secs(300),
            max_age: Duration::from_secs(1800),
            rescan_interval: Duration::from_secs(60),
            max_pending: 256,
            rate_limit: RateLimits::default(),
        }
    }
}

/// Reply budgets, counted in reply datagrams (one M-SEARCH for `ssdp:all` costs one per
/// advertisement). Requests over budget are dropped and counted, never queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimits {
    /// Replies per second to everyone together; caps what a spoofed flood can make us send.
    pub global_per_sec: u32,
    pub global_burst: u32,
    /// Replies per second to one source address; a searcher needs one or two per search.
    pub per_source_per_sec: u32,
    pub per_source_burst: u32,
    /// Source addresses remembered; beyond this the idlest are forgotten (memory stays bounded).
    pub max_sources: usize,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            global_per_sec: 20,
            global_burst: 50,
            per_source_per_sec: 2,
            per_source_burst: 8,
            max_sources: 1024,
        }
    }
}

/// Which interfaces the responder uses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Interfaces {
    #[default]
    Auto,
    List(Vec<InterfaceSpec>),
}

/// One entry of an interface list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterfaceSpec {
    /// An interface by name; its private and link-local IPv4 addresses are used.
    Name(String),
    /// An address of this machine with its prefix length, e.g. `192.168.1.10/24`.
    Net { addr: Ipv4Addr, prefix: u8 },
}

impl InterfaceSpec {
    fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("an interface entry is empty".into());
        }
        match s.split_once('/') {
            Some((addr, prefix)) => {
                let addr: Ipv4Addr =
                    addr.parse().map_err(|_| format!("`{s}` is not an IPv4 address with prefix"))?;
                let prefix: u8 = prefix
                    .parse()
                    .ok()
                    .filter(|p| *p <= 32)
                    .ok_or_else(|| format!("`{s}` has a prefix length outside 0..=32"))?;
                Ok(InterfaceSpec::Net { addr, prefix })
            }
            None if s.parse::<Ipv4Addr>().is_ok() => {
                Err(format!("`{s}` needs its prefix length, e.g. `{s}/24`"))
            }
            None => Ok(InterfaceSpec::Name(s.to_string())),
        }
    }
}

impl std::fmt::Display for InterfaceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InterfaceSpec::Name(n) => f.write_str(n),
            InterfaceSpec::Net { addr, prefix } => write!(f, "{addr}/{prefix}"),
        }
    }
}

impl Serialize for Interfaces {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Interfaces::Auto => s.serialize_str("auto"),
            Interfaces::List(list) => s.collect_seq(list.iter().map(|i| i.to_string())),
        }
    }
}

impl<'de> Deserialize<'de> for Interfaces {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        match Raw::deserialize(d).map_err(|_| {
            de::Error::custom("expected \"auto\" or a list like [\"eth0\", \"192.168.1.10/24\"]")
        })? {
            Raw::One(s) if s == "auto" => Ok(Interfaces::Auto),
            Raw::One(s) => Err(de::Error::custom(format!(
                "expected \"auto\" or a list; write [\"{s}\"] for a single interface"
            ))),
            Raw::Many(list) => list
                .iter()
                .map(|s| InterfaceSpec::parse(s))
                .collect::<Result<Vec<_>, _>>()
                .map(Interfaces::List)
                .map_err(de::Error::custom),
        }
    }
}

/// Private (RFC 1918) or link-local: the only addresses the responder answers on. CGNAT
/// (100.64/10), public and loopback addresses are refused.
pub fn is_lan_address(addr: Ipv4Addr) -> bool {
    addr.is_private() || addr.is_link_local()
}

impl ResponderConfig {
    /// Pushes every problem, with keys under `prefix` (the table the role embeds this in).
    pub fn check(&self, prefix: &str, problems: &mut Vec<Problem>) {
        let key = |k: &str| format!("{prefix}.{k}");
        if let Interfaces::List(list) = &self.interfaces {
            if list.is_empty() {
                problems.push(Problem::new(key("interfaces"), "list is empty; use \"auto\" or name one"));
            }
            for spec in list {
                if let InterfaceSpec::Net { addr, .. } = spec {
                    if !is_lan_address(*addr) {
                        problems.push(Problem::new(
                            key("interfaces"),
                            format!("{spec} is not a private (RFC 1918) or link-local address; SSDP is only answered on a LAN"),
                        ));
                    }
                }
            }
        }
        if self.max_age < Duration::from_secs(1800) || self.max_age > Duration::from_secs(86400) {
            problems.push(Problem::new(key("max_age"), "must be between 30m (UPnP minimum) and 1day"));
        }
        if self.notify_interval < Duration::from_secs(10) || self.notify_interval >= self.max_age / 2 {
            problems.push(Problem::new(
                key("notify_interval"),
                format!("must be at least 10s and under half of max_age ({:?})", self.max_age / 2),
            ));
        }
        if self.rescan_interval < Duration::from_secs(1) {
            problems.push(Problem::new(key("rescan_interval"), "must be at least 1s"));
        }
        if !(1..=65536).contains(&self.max_pending) {
            problems.push(Problem::new(key("max_pending"), "must be between 1 and 65536"));
        }
        let r = &self.rate_limit;
        for (name, v) in [
            ("global_per_sec", r.global_per_sec),
            ("global_burst", r.global_burst),
            ("per_source_per_sec", r.per_source_per_sec),
            ("per_source_burst", r.per_source_burst),
        ] {
            if v == 0 {
                problems.push(Problem::new(key(&format!("rate_limit.{name}")), "must be at least 1"));
            }
        }
        if !(1..=1_000_000).contains(&r.max_sources) {
            problems.push(Problem::new(key("rate_limit.max_sources"), "must be between 1 and 1000000"));
        }
    }
}

impl Validate for ResponderConfig {
    fn validate(&self, problems: &mut Vec<Problem>) {
        self.check("ssdp", problems);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        #[serde(default)]
        ssdp: ResponderConfig,
    }

    impl Validate for File {
        fn validate(&self, problems: &mut Vec<Problem>) {
            self.ssdp.validate(problems);
        }
    }

    #[test]
    fn defaults_are_valid_and_an_absent_table_means_defaults() {
        let f: File = crate::config::parse("", Path::new("t.toml")).unwrap();
        assert_eq!(f.ssdp, ResponderConfig::default());
    }

    #[test]
    fn a_full_table_parses() {
        let text = "[ssdp]\ninterfaces = [\"eth0\", \"192.168.1.10/24\"]\nnotify_interval = \"2m\"\n\
                    max_age = \"1h\"\n[ssdp.rate_limit]\nglobal_per_sec = 5\n";
        let f: File = crate::config::parse(text, Path::new("t.toml")).unwrap();
        assert_eq!(
            f.ssdp.interfaces,
            Interfaces::List(vec![
                InterfaceSpec::Name("eth0".into()),
                InterfaceSpec::Net { addr: Ipv4Addr::new(192, 168, 1, 10), prefix: 24 }
            ])
        );
        assert_eq!(f.ssdp.notify_interval, Duration::from_secs(120));
        assert_eq!(f.ssdp.rate_limit.global_per_sec, 5);
        assert_eq!(f.ssdp.rate_limit.per_source_burst, RateLimits::default().per_source_burst);
        #[derive(Serialize)]
        struct Out<'a> {
            ssdp: &'a ResponderConfig,
        }
        let back: File = toml::from_str(&toml::to_string(&Out { ssdp: &f.ssdp }).unwrap()).unwrap();
        assert_eq!(back.ssdp, f.ssdp);
    }

    #[test]
    fn mistakes_are_reported_together_with_keys() {
        let text = "[ssdp]\ninterfaces = [\"8.8.8.0/24\"]\nmax_age = \"10m\"\nnotify_interval = \"20m\"\n\
                    [ssdp.rate_limit]\nglobal_burst = 0\n";
        let err = crate::config::parse::<File>(text, Path::new("t.toml")).unwrap_err();
        let msg = err.to_string();
        assert_eq!(err.problems().len(), 4, "{msg}");
        assert!(msg.contains("t.toml:2: key `ssdp.interfaces`: 8.8.8.0/24 is not a private"), "{msg}");
        assert!(msg.contains("key `ssdp.max_age`"), "{msg}");
        assert!(msg.contains("key `ssdp.notify_interval`"), "{msg}");
        assert!(msg.contains("key `ssdp.rate_limit.global_burst`"), "{msg}");
    }

    #[test]
    fn unknown_keys_and_bad_entries_are_refused() {
        for text in [
            "[ssdp]\ninterface = \"auto\"\n",
            "[ssdp]\ninterfaces = \"eth0\"\n",
            "[ssdp]\ninterfaces = [\"192.168.1.10\"]\n",
            "[ssdp]\ninterfaces = [\"192.168.1.10/33\"]\n",
            "[ssdp.rate_limit]\nburst = 3\n",
        ] {
            assert!(crate::config::parse::<File>(text, Path::new("t.toml")).is_err(), "{text}");
        }
    }

    #[test]
    fn lan_addresses() {
        for a in ["10.1.2.3", "172.16.0.1", "172.31.255.1", "192.168.0.1", "169.254.3.4"] {
            assert!(is_lan_address(a.parse().unwrap()), "{a}");
        }
        for a in ["127.0.0.1", "100.64.0.1", "172.32.0.1", "8.8.8.8", "0.0.0.0", "239.255.255.250"] {
            assert!(!is_lan_address(a.parse().unwrap()), "{a}");
        }
    }
}
