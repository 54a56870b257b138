//! How a hub batch sits in the connector's buffer: a small header (reading count, whether it
//! carries fresh readings, hub id, the hub's signature) in front of the batch JSON exactly as the
//! hub signed it, so the forwarder can size requests, put live data first and pass the signature
//! on, and the intake can keep fair shares, all without parsing JSON again.
//!
//! The JSON is stored gzipped ("packed"). Not for the disk's sake: sled 0.34 keeps at least one
//! leaf of every tree resident in each of its cache's 256 shards, whatever the cache's capacity,
//! and a leaf holds up to 16 values, so what stays in memory grows with the size of a value. With
//! whole hub batches as values that was most of a full buffer: 855 MB–1.1 GB for a backlog of
//! five million readings (BENCHMARKS.md). Packed, a value is several times smaller, and the
//! forwarder inflates only the batches it sends.

use outpost_shared::buffer::{BufferError, Storage};
use std::collections::HashMap;

/// The top bit of the count word: the batch carries readings taken moments before it arrived.
/// (A batch holds at most 50,000 readings, far below it; records written before this flag
/// existed read as not fresh.)
const FRESH: u32 = 1 << 31;
/// The second bit of the count word: the JSON is stored gzipped. Records written before packing
/// existed read as plain JSON.
const PACKED: u32 = 1 << 30;
/// The most a packed batch may inflate to: what a hub may send the intake at all is far below it;
/// a damaged record must not inflate without bound.
pub const MAX_JSON: usize = 64 << 20;

pub struct Record<'a> {
    pub readings: u32,
    /// The hub's newest readings ride in this batch: forward it ahead of any backlog.
    pub fresh: bool,
    pub machine_id: &'a str,
    pub timestamp: i64,
    pub signature: &'a str,
    /// The batch JSON as stored: gzipped when `packed` (see [`Record::json`]).
    pub json: &'a [u8],
    pub packed: bool,
}

impl<'a> Record<'a> {
    /// The batch JSON exactly as the hub signed it: inflated when packed, bounded by [`MAX_JSON`].
    pub fn json(&self) -> Result<std::borrow::Cow<'a, [u8]>, outpost_shared::wire::WireError> {
        if self.packed {
            outpost_shared::wire::decompress(self.json, true, MAX_JSON).map(std::borrow::Cow::Owned)
        } else {
            Ok(std::borrow::Cow::Borrowed(self.json))
        }
    }
}

/// Packs a batch's JSON for [`Record::json`] with `packed: true`.
pub fn pack(json: &[u8]) -> Vec<u8> {
    outpost_shared::wire::gzip(json)
}

/// Why a batch cannot be framed as a record: a length that does not fit its field. Checked before
/// the cast, never truncated by it (a truncated length would misframe the record and every read
/// of it after).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("machine id of {0} bytes; a record holds at most 255")]
    MachineId(usize),
    #[error("signature of {0} bytes; a record holds at most 65535")]
    Signature(usize),
}

pub fn encode(r: &Record<'_>) -> Result<Vec<u8>, FrameError> {
    let (id, sig) = (r.machine_id.as_bytes(), r.signature.as_bytes());
    let id_len = u8::try_from(id.len()).map_err(|_| FrameError::MachineId(id.len()))?;
    let sig_len = u16::try_from(sig.len()).map_err(|_| FrameError::Signature(sig.len()))?;
    let mut out = Vec::with_capacity(15 + id.len() + sig.len() + r.json.len());
    let word = (r.readings & !(FRESH | PACKED))
        | if r.fresh { FRESH } else { 0 }
        | if r.packed { PACKED } else { 0 };
    out.extend_from_slice(&word.to_be_bytes());
    out.push(id_len);
    out.extend_from_slice(id);
    out.extend_from_slice(&r.timestamp.to_be_bytes());
    out.extend_from_slice(&sig_len.to_be_bytes());
    out.extend_from_slice(sig);
    out.extend_from_slice(r.json);
    Ok(out)
}

pub fn decode(bytes: &[u8]) -> Option<Record<'_>> {
    let word = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?);
    let n = *bytes.get(4)? as usize;
    let machine_id = std::str::from_utf8(bytes.get(5..5 + n)?).ok()?;
    let mut at = 5 + n;
    let timestamp = i64::from_be_bytes(bytes.get(at..at + 8)?.try_into().ok()?);
    at += 8;
    let sl = u16::from_be_bytes(bytes.get(at..at + 2)?.try_into().ok()?) as usize;
    at += 2;
    let signature = std::str::from_utf8(bytes.get(at..at + sl)?).ok()?;
    at += sl;
    Some(Record {
        readings: word & !(FRESH | PACKED),
        fresh: word & FRESH != 0,
        packed: word & PACKED != 0,
        machine_id,
        timestamp,
        signature,
        json: bytes.get(at..)?,
    })
}

/// Bytes per hub in the buffer, rebuilt at start.
pub fn per_hub_bytes(buffer: &dyn Storage) -> Result<HashMap<String, u64>, BufferError> {
    let mut out = HashMap::new();
    for (_, bytes) in buffer.oldest(usize::MAX)? {
        if let Some(r) = decode(&bytes) {
            *out.entry(r.machine_id.to_string()).or_default() += bytes.len() as u64;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip() {
        for fresh in [false, true] {
            let e = super::encode(&super::Record {
                readings: 42,
                fresh,
                machine_id: "abc",
                timestamp: 1_700_000_000,
                signature: "c2ln",
                json: b"{\"x\":1}",
                packed: false,
            })
            .unwrap();
            let r = super::decode(&e).unwrap();
            assert_eq!((r.readings, r.fresh, r.machine_id, r.json), (42, fresh, "abc", &b"{\"x\":1}"[..]));
            assert_eq!((r.timestamp, r.signature), (1_700_000_000, "c2ln"));
            assert!(super::decode(&e[..3]).is_none());
        }
    }

    #[test]
    fn lengths_that_do_not_fit_are_refused_not_truncated() {
        let long_sig = "A".repeat(70_000);
        let r = super::Record {
            readings: 1,
            fresh: false,
            machine_id: "abc",
            timestamp: 0,
            signature: &long_sig,
            json: b"{}",
            packed: false,
        };
        assert_eq!(super::encode(&r), Err(super::FrameError::Signature(70_000)));
        let long_id = "m".repeat(256);
        let r = super::Record { machine_id: &long_id, signature: "c2ln", ..r };
        assert_eq!(super::encode(&r), Err(super::FrameError::MachineId(256)));
    }

    #[test]
    fn a_packed_batch_reads_back_as_signed_and_a_damaged_one_is_an_error() {
        let json =
            format!("{{\"readings\":[{}]}}", vec!["{\"sensor\":\"cpu.total\",\"v\":1.5}"; 500].join(","));
        let packed = super::pack(json.as_bytes());
        assert!(packed.len() * 4 < json.len(), "{} bytes packed from {}", packed.len(), json.len());
        for fresh in [false, true] {
            let e = super::encode(&super::Record {
                readings: 500,
                fresh,
                machine_id: "abc",
                timestamp: 7,
                signature: "c2ln",
                json: &packed,
                packed: true,
            })
            .unwrap();
            let r = super::decode(&e).unwrap();
            assert_eq!((r.readings, r.fresh, r.packed), (500, fresh, true));
            assert_eq!(&r.json().unwrap()[..], json.as_bytes());
        }
        let mut damaged = packed.clone();
        damaged.truncate(packed.len() / 2);
        let r = super::Record {
            readings: 500,
            fresh: false,
            machine_id: "abc",
            timestamp: 7,
            signature: "c2ln",
            json: &damaged,
            packed: true,
        };
        assert!(r.json().is_err());
    }
}
