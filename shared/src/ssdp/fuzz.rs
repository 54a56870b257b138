//! Property and fuzz-style tests of the parser, with a small hand-written generator on `fastrand`
//! (seeded, so a failure names the seed that reproduces it). Properties:
//! - well-formed messages round-trip: `parse(render(m)) == m`, also with bare LF line ends and
//!   without the closing empty line;
//! - random bytes and mutated valid messages never panic the parser, the typed views or the
//!   responder's decision code; whatever parses renders to something that parses the same.

use super::message::{Message, Notify, Response, Search, StartLine, MAX_HEADERS, MAX_MESSAGE};
use super::responder::Core;
use super::*;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Instant;

const TCHAR: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~";
const VALUE_EXTRA: &[char] = &['é', 'ü', '中', '€', ':', '"', '\t', ' ', '/', '='];

fn token(rng: &mut fastrand::Rng) -> String {
    (0..rng.usize(1..12)).map(|_| TCHAR[rng.usize(..TCHAR.len())] as char).collect()
}

/// Text without control characters (tab allowed inside), trimmed like the parser trims.
fn value(rng: &mut fastrand::Rng) -> String {
    let s: String = (0..rng.usize(0..40))
        .map(|_| {
            if rng.u8(..10) == 0 {
                VALUE_EXTRA[rng.usize(..VALUE_EXTRA.len())]
            } else {
                rng.u8(0x20..0x7f) as char
            }
        })
        .collect();
    s.trim_matches(|c| c == ' ' || c == '\t').to_string()
}

struct Owned {
    kind: u8,
    status: u16,
    reason: String,
    headers: Vec<(String, String)>,
}

impl Owned {
    fn generate(rng: &mut fastrand::Rng) -> Self {
        let mut headers: Vec<(String, String)> = Vec::new();
        for _ in 0..rng.usize(0..=MAX_HEADERS) {
            let name = token(rng);
            if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(&name)) {
                headers.push((name, value(rng)));
            }
        }
        Owned { kind: rng.u8(0..3), status: rng.u16(100..1000), reason: value(rng), headers }
    }

    fn message(&self) -> Message<'_> {
        let start = match self.kind {
            0 => StartLine::Search,
            1 => StartLine::Notify,
            _ => StartLine::Response { status: self.status, reason: &self.reason },
        };
        let headers: Vec<(&str, &str)> = self.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        Message::from_parts(start, &headers).unwrap()
    }
}

fn seeds(n: u64) -> impl Iterator<Item = (u64, fastrand::Rng)> {
    (0..n).map(|seed| (seed, fastrand::Rng::with_seed(0x55d9_0000 + seed)))
}

#[test]
fn well_formed_messages_round_trip() {
    for (seed, mut rng) in seeds(3000) {
        let owned = Owned::generate(&mut rng);
        let m = owned.message();
        let text = m.render();
        if text.len() > MAX_MESSAGE {
            assert!(Message::parse(text.as_bytes()).is_err(), "seed {seed}: over the limit must fail");
            continue;
        }
        let back = Message::parse(text.as_bytes()).unwrap_or_else(|e| panic!("seed {seed}: {e}\n{text}"));
        assert_eq!(back, m, "seed {seed}");
        let lf = text.replace("\r\n", "\n");
        assert_eq!(Message::parse(lf.as_bytes()).unwrap(), m, "seed {seed}: bare LF");
        let open = &text[..text.len() - 2];
        assert_eq!(Message::parse(open.as_bytes()).unwrap(), m, "seed {seed}: no closing empty line");
        for (name, value) in &owned.headers {
            assert_eq!(back.header(&name.to_ascii_uppercase()), Some(value.as_str()), "seed {seed}");
        }
    }
}

/// Parsing must never panic; whatever parses must render to an equal message.
fn check_total(seed: u64, data: &[u8], core: &mut Core) {
    if let Ok(m) = Message::parse(data) {
        let _ = (Search::from_message(&m), Notify::from_message(&m), Response::from_message(&m));
        let text = m.render();
        if text.len() <= MAX_MESSAGE {
            let again =
                Message::parse(text.as_bytes()).unwrap_or_else(|e| panic!("seed {seed}: {e}\n{text:?}"));
            assert_eq!(again, m, "seed {seed}");
        }
    }
    core.on_datagram(data, SocketAddr::from(([192, 168, 1, 20], 40000)), Instant::now());
}

fn core() -> Core {
    let ad = Advertisement {
        st: ST_CONNECTOR.into(),
        uuid: "u-1".into(),
        location: "http://{ip}/".into(),
        boot_id: 1,
        config_id: 1,
        server: "Linux/6 UPnP/1.1 outpost/0".into(),
    };
    let cfg = ResponderConfig { max_pending: 65536, ..ResponderConfig::default() };
    let mut c = Core::new(cfg, vec![ad], fastrand::Rng::with_seed(1), Instant::now());
    c.set_interfaces(vec![LanInterface {
        name: "e".into(),
        addr: Ipv4Addr::new(192, 168, 1, 1),
        prefix: 24,
    }]);
    c
}

#[test]
fn random_bytes_never_panic() {
    let mut c = core();
    for (seed, mut rng) in seeds(20_000) {
        let len = rng.usize(0..MAX_MESSAGE + 64);
        let data: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
        check_total(seed, &data, &mut c);
        // Mostly-text noise reaches deeper into the parser than uniform bytes do.
        let text: Vec<u8> = (0..rng.usize(0..300))
            .map(|_| *rng.choice(b"M-SEARCH NOTIFY HTTP/1.1 200 OK\r\n:ST MX \"ssdp:discover\"*").unwrap())
            .collect();
        check_total(seed, &text, &mut c);
    }
}

const SEEDS: &[&str] = &[
    "M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: \"ssdp:discover\"\r\nMX: 2\r\nST: urn:outpost-dev:service:connector:1\r\n\r\n",
    "NOTIFY * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nCACHE-CONTROL: max-age=1800\r\nLOCATION: http://192.168.1.5:80/d.xml\r\nNT: upnp:rootdevice\r\nNTS: ssdp:alive\r\nSERVER: Linux/5 UPnP/1.0 x/1\r\nUSN: uuid:1::upnp:rootdevice\r\n\r\n",
    "HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=1800\r\nEXT:\r\nLOCATION: https://10.0.0.1:8443/\r\nSERVER: Linux/6 UPnP/1.1 outpost/0.1\r\nST: ssdp:all\r\nUSN: uuid:a\r\nBOOTID.UPNP.ORG: 3\r\n\r\n",
];

fn mutate(rng: &mut fastrand::Rng, data: &mut Vec<u8>) {
    const INTERESTING: &[u8] = b"\r\n: \t\0\xff\x80a\"*";
    for _ in 0..rng.usize(1..5) {
        let at = rng.usize(..=data.len());
        match rng.u8(..6) {
            0 if !data.is_empty() => {
                let i = rng.usize(..data.len());
                data[i] ^= 1 << rng.u8(..8);
            }
            1 => data.insert(at, INTERESTING[rng.usize(..INTERESTING.len())]),
            2 if at < data.len() => {
                data.remove(at);
            }
            3 => data.truncate(at),
            4 => {
                let end = rng.usize(at..=data.len());
                let piece = data[at..end].to_vec();
                let to = rng.usize(..=data.len());
                data.splice(to..to, piece);
            }
            _ => {
                if let Some(i) = data.iter().position(|b| *b == b':') {
                    data.insert(i, b' ');
                }
            }
        }
    }
}

#[test]
fn mutated_valid_messages_never_panic() {
    let mut c = core();
    let mut parsed = 0;
    for (seed, mut rng) in seeds(30_000) {
        let mut data = if rng.bool() {
            SEEDS[rng.usize(..SEEDS.len())].as_bytes().to_vec()
        } else {
            Owned::generate(&mut rng).message().render().into_bytes()
        };
        mutate(&mut rng, &mut data);
        if Message::parse(&data).is_ok() {
            parsed += 1;
        }
        check_total(seed, &data, &mut c);
    }
    // The mutations must leave some messages valid, or the round-trip check above proved nothing.
    assert!(parsed > 1000, "only {parsed} mutated messages parsed");
}
