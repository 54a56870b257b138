//! What a responder announces, and the exact datagrams it sends for it.

use super::error::SsdpError;
use super::message::{is_value, Message, StartLine};
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use std::path::Path;
use std::str::FromStr;

/// The placeholder in [`Advertisement::location`] replaced by the address of the interface a
/// message leaves by, so one advertisement serves a machine on several LANs.
pub const LOCATION_IP: &str = "{ip}";

/// One service a responder announces and answers for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Advertisement {
    /// Search target and notification type, e.g. [`super::ST_CONNECTOR`]. Must parse as a URN
    /// (`urn:domain:service:type:version`), or ssdp-client on the other side turns every answer
    /// into an error.
    pub st: String,
    /// Stable unique id without the `uuid:` prefix; the same across restarts (derive it from the
    /// machine id with [`uuid_from_bytes`]). `USN` is `uuid:<uuid>::<st>`.
    pub uuid: String,
    /// `LOCATION`: the role's LAN API URL. `{ip}` is replaced per interface (see [`LOCATION_IP`]).
    pub location: String,
    /// `BOOTID.UPNP.ORG`: must rise on every start; see [`next_boot_id`]. At most 2^31 - 1.
    pub boot_id: u32,
    /// `CONFIGID.UPNP.ORG`: changes when what LOCATION serves changes. At most 16777215.
    pub config_id: u32,
    /// `SERVER`, e.g. from [`server_header`].
    pub server: String,
}

/// Which form of search target a reply answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum ReplyKind {
    /// `ST: <st>`, `USN: uuid:<uuid>::<st>` (for the service type and for `ssdp:all`).
    Service,
    /// `ST: uuid:<uuid>`, `USN: uuid:<uuid>` (a search for this very instance).
    Uuid,
}

/// `NTS` of a notification the responder sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Announce {
    Alive,
    ByeBye,
}

const MULTICAST_HOST: &str = "239.255.255.250:1900";

impl Advertisement {
    /// `USN` for the service type.
    pub fn usn(&self) -> String {
        format!("uuid:{}::{}", self.uuid, self.st)
    }

    /// LOCATION as sent from interface address `ip`.
    pub fn location_for(&self, ip: Ipv4Addr) -> String {
        self.location.replace(LOCATION_IP, &ip.to_string())
    }

    /// Checks every field; the responder refuses to start with a broken advertisement rather than
    /// send answers that searchers would discard.
    pub fn validate(&self) -> Result<(), SsdpError> {
        let bad = |field, reason: String| Err(SsdpError::Advertisement { field, reason });
        if ssdp_client::URN::from_str(&self.st).is_err() || !is_value(&self.st) || self.st.contains(' ') {
            return bad("st", format!("`{}` is not of the form urn:domain:service:type:version", self.st));
        }
        if self.uuid.is_empty()
            || self.uuid.len() > 64
            || !self.uuid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return bad(
                "uuid",
                format!("`{}` must be 1-64 letters, digits and dashes, without `uuid:`", self.uuid),
            );
        }
        let sample = self.location_for(Ipv4Addr::new(192, 0, 2, 1));
        let url_ok = reqwest::Url::parse(&sample)
            .map(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .unwrap_or(false);
        if !url_ok || !is_value(&sample) || sample.contains(' ') {
            return bad("location", format!("`{}` is not an http(s) URL", self.location));
        }
        if self.server.trim().is_empty() || self.server.len() > 256 || !is_value(&self.server) {
            return bad(
                "server",
                "must be 1-256 characters of text, e.g. `Linux/6.1 UPnP/1.1 outpost/1.0`".into(),
            );
        }
        if self.boot_id > BOOT_ID_MAX {
            return bad("boot_id", format!("{} is above 2^31 - 1", self.boot_id));
        }
        if self.config_id > 16_777_215 {
            return bad("config_id", format!("{} is above 16777215", self.config_id));
        }
        Ok(())
    }

    /// The `200 OK` answer to an M-SEARCH, as sent from interface address `ip`.
    pub(crate) fn response(&self, kind: ReplyKind, ip: Ipv4Addr, max_age: u32, date: &str) -> String {
        let cache = format!("max-age={max_age}");
        let location = self.location_for(ip);
        let (boot, config) = (self.boot_id.to_string(), self.config_id.to_string());
        let (st, usn) = match kind {
            ReplyKind::Service => (self.st.clone(), self.usn()),
            ReplyKind::Uuid => (format!("uuid:{}", self.uuid), format!("uuid:{}", self.uuid)),
        };
        let headers = [
            ("CACHE-CONTROL", cache.as_str()),
            ("DATE", date),
            ("EXT", ""),
            ("LOCATION", location.as_str()),
            ("SERVER", self.server.as_str()),
            ("ST", st.as_str()),
            ("USN", usn.as_str()),
            ("BOOTID.UPNP.ORG", boot.as_str()),
            ("CONFIGID.UPNP.ORG", config.as_str()),
        ];
        render(StartLine::Response { status: 200, reason: "OK" }, &headers)
    }

    /// A NOTIFY for the multicast group, as sent from interface address `ip`.
    pub(crate) fn notify(&self, announce: Announce, ip: Ipv4Addr, max_age: u32) -> String {
        let usn = self.usn();
        let (boot, config) = (self.boot_id.to_string(), self.config_id.to_string());
        match announce {
            Announce::Alive => {
                let cache = format!("max-age={max_age}");
                let location = self.location_for(ip);
                let headers = [
                    ("HOST", MULTICAST_HOST),
                    ("CACHE-CONTROL", cache.as_str()),
                    ("LOCATION", location.as_str()),
                    ("NT", self.st.as_str()),
                    ("NTS", "ssdp:alive"),
                    ("SERVER", self.server.as_str()),
                    ("USN", usn.as_str()),
                    ("BOOTID.UPNP.ORG", boot.as_str()),
                    ("CONFIGID.UPNP.ORG", config.as_str()),
                ];
                render(StartLine::Notify, &headers)
            }
            Announce::ByeBye => {
                let headers = [
                    ("HOST", MULTICAST_HOST),
                    ("NT", self.st.as_str()),
                    ("NTS", "ssdp:byebye"),
                    ("USN", usn.as_str()),
                    ("BOOTID.UPNP.ORG", boot.as_str()),
                    ("CONFIGID.UPNP.ORG", config.as_str()),
                ];
                render(StartLine::Notify, &headers)
            }
        }
    }
}

fn render(start: StartLine<'_>, headers: &[(&str, &str)]) -> String {
    Message::from_parts(start, headers).map(|m| m.render()).unwrap_or_default()
}

/// `SERVER` as UPnP wants it: `<OS>/<version> UPnP/1.1 outpost/<product_version>`, e.g.
/// `Linux/6.1.0-18-amd64 UPnP/1.1 outpost/0.1.0`.
pub fn server_header(product_version: &str) -> String {
    let os = match std::env::consts::OS {
        "linux" => "Linux".to_string(),
        "windows" => "Windows".to_string(),
        "macos" => "macOS".to_string(),
        other => other.to_string(),
    };
    let version = sysinfo::System::kernel_version().unwrap_or_else(|| "unknown".into());
    let clean = |s: &str| -> String {
        s.chars().map(|c| if c.is_whitespace() || c == '/' || c.is_control() { '-' } else { c }).collect()
    };
    format!("{}/{} UPnP/1.1 outpost/{}", clean(&os), clean(&version), clean(product_version))
}

/// Formats 16 bytes (e.g. the start of the machine id's hash) as a UUID, marked as version 8
/// (custom, RFC 9562) with the RFC variant, so the same machine always gets the same USN.
pub fn uuid_from_bytes(mut b: [u8; 16]) -> String {
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// The stable SSDP uuid of a machine: its id (hex) as the uuid's 16 bytes.
pub fn uuid_for_machine(machine_id: &str) -> String {
    let mut b = [0u8; 16];
    let raw = hex::decode(machine_id).unwrap_or_else(|_| machine_id.as_bytes().to_vec());
    for (i, x) in raw.iter().take(16).enumerate() {
        b[i] = *x;
    }
    uuid_from_bytes(b)
}

/// Largest `BOOTID.UPNP.ORG` UPnP allows.
pub const BOOT_ID_MAX: u32 = (1 << 31) - 1;

/// The boot id for this start, persisted in `path`: one more than the stored one, and at least
/// the current Unix time in seconds, so it rises even if the file was lost. A missing or garbled
/// file is not an error (it is rewritten); failing to write it is, because then the next start
/// could repeat this id. Written to a temporary file and renamed, so a crash leaves the old value.
pub fn next_boot_id(path: &Path) -> Result<u32, SsdpError> {
    let io = |source| SsdpError::BootId { path: path.to_path_buf(), source };
    let stored = match std::fs::read_to_string(path) {
        Ok(text) => match text.trim().parse::<u32>() {
            Ok(n) => Some(n),
            Err(_) => {
                tracing::warn!(path = %path.display(), "boot counter file is garbled; starting from the clock");
                None
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(e)),
    };
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let now = u32::try_from(now % u64::from(BOOT_ID_MAX)).unwrap_or(0);
    let next = match stored {
        Some(n) if n >= BOOT_ID_MAX => 1,
        Some(n) => (n + 1).max(now),
        None => now.max(1),
    };
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(format!("{next}\n").as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::super::message::{Notify, NotifyKind, Response};
    use super::*;

    fn ad() -> Advertisement {
        Advertisement {
            st: super::super::ST_CONNECTOR.into(),
            uuid: "0f1e2d3c-4b5a-8987-b6a5-aabbccddeeff".into(),
            location: "https://{ip}:8443/".into(),
            boot_id: 12,
            config_id: 3,
            server: server_header("0.1.0"),
        }
    }

    #[test]
    fn a_good_advertisement_validates_and_each_bad_field_is_named() {
        ad().validate().unwrap();
        type Breaker = fn(&mut Advertisement);
        let cases: [(&str, Breaker); 7] = [
            ("st", |a| a.st = "connector".into()),
            ("uuid", |a| a.uuid = "uuid:x".into()),
            ("location", |a| a.location = "ftp://{ip}/".into()),
            ("location", |a| a.location = "http://x/\r\nEVIL: 1".into()),
            ("server", |a| a.server = String::new()),
            ("boot_id", |a| a.boot_id = u32::MAX),
            ("config_id", |a| a.config_id = 1 << 24),
        ];
        for (field, break_it) in cases {
            let mut a = ad();
            break_it(&mut a);
            match a.validate() {
                Err(SsdpError::Advertisement { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn response_and_notifications_carry_the_upnp_headers() {
        let a = ad();
        let ip = Ipv4Addr::new(10, 1, 2, 3);
        let text = a.response(ReplyKind::Service, ip, 1800, "Thu, 01 Jan 2026 00:00:00 GMT");
        let m = Message::parse(text.as_bytes()).unwrap();
        let r = Response::from_message(&m).unwrap();
        assert_eq!(r.st, a.st);
        assert_eq!(r.usn, format!("uuid:{}::{}", a.uuid, a.st));
        assert_eq!(r.location, "https://10.1.2.3:8443/");
        assert_eq!((r.max_age, r.boot_id), (Some(1800), Some(12)));
        assert_eq!(m.header("EXT"), Some(""));
        assert_eq!(m.header("CONFIGID.UPNP.ORG"), Some("3"));
        assert!(r.server.unwrap().contains(" UPnP/1.1 outpost/0.1.0"));

        let by_uuid = a.response(ReplyKind::Uuid, ip, 1800, "d");
        let m = Message::parse(by_uuid.as_bytes()).unwrap();
        assert_eq!(m.header("ST"), Some("uuid:0f1e2d3c-4b5a-8987-b6a5-aabbccddeeff"));
        assert_eq!(m.header("USN"), m.header("ST"));

        let alive = a.notify(Announce::Alive, ip, 1800);
        let n = Notify::from_message(&Message::parse(alive.as_bytes()).unwrap()).unwrap();
        assert_eq!(
            (n.kind, n.nt, n.location),
            (NotifyKind::Alive, a.st.as_str(), Some("https://10.1.2.3:8443/"))
        );
        let bye = a.notify(Announce::ByeBye, ip, 1800);
        let n = Notify::from_message(&Message::parse(bye.as_bytes()).unwrap()).unwrap();
        assert_eq!((n.kind, n.boot_id, n.location), (NotifyKind::ByeBye, Some(12), None));
    }

    #[test]
    fn server_header_has_three_tokens() {
        let s = server_header("1.2 beta");
        let parts: Vec<&str> = s.split(' ').collect();
        assert_eq!(parts.len(), 3, "{s}");
        assert_eq!(parts[1], "UPnP/1.1");
        assert_eq!(parts[2], "outpost/1.2-beta");
        assert_eq!(parts[0].matches('/').count(), 1, "{s}");
    }

    #[test]
    fn uuid_is_stable_and_well_formed() {
        let u = uuid_from_bytes([0xff; 16]);
        assert_eq!(u, "ffffffff-ffff-8fff-bfff-ffffffffffff");
        assert_eq!(uuid_from_bytes([7; 16]), uuid_from_bytes([7; 16]));
    }

    #[test]
    fn boot_id_rises_on_every_start_and_survives_a_garbled_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bootid");
        let a = next_boot_id(&path).unwrap();
        let b = next_boot_id(&path).unwrap();
        let c = next_boot_id(&path).unwrap();
        assert!(a < b && b < c, "{a} {b} {c}");
        std::fs::write(&path, "garbage").unwrap();
        let d = next_boot_id(&path).unwrap();
        assert!((1..=BOOT_ID_MAX).contains(&d));
        std::fs::write(&path, format!("{BOOT_ID_MAX}")).unwrap();
        assert_eq!(next_boot_id(&path).unwrap(), 1, "wraps within the UPnP range");
        assert!(next_boot_id(&dir.path().join("missing-dir/bootid")).is_err());
    }
}
