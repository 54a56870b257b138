//! Request bodies on the wire: JSON, gzip-compressed. Decompression stops at a hard cap, so a small
//! "zip bomb" cannot make a server allocate gigabytes.

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use std::io::{Read, Write};

/// The `Content-Encoding` value of every compressed body.
pub const GZIP: &str = "gzip";

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("body is larger than {limit} bytes once decompressed; send smaller batches")]
    TooLarge { limit: usize },
    #[error("body is not valid gzip: {0}")]
    Gzip(std::io::Error),
    #[error("body is not valid JSON for this endpoint: {0}")]
    Json(#[from] serde_json::Error),
}

/// Serialises `value` to JSON and gzips it (fast level: hubs are small machines).
pub fn encode_gzip_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    Ok(gzip(&serde_json::to_vec(value)?))
}

/// Gzips bytes already encoded (e.g. the exact JSON a signature covers).
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::with_capacity(bytes.len() / 4 + 64), Compression::fast());
    enc.write_all(bytes).expect("writing to a Vec cannot fail");
    enc.finish().expect("writing to a Vec cannot fail")
}

/// Decompresses `body` (gzip when `gzipped`) to at most `limit` bytes.
pub fn decompress(body: &[u8], gzipped: bool, limit: usize) -> Result<Vec<u8>, WireError> {
    if !gzipped {
        if body.len() > limit {
            return Err(WireError::TooLarge { limit });
        }
        return Ok(body.to_vec());
    }
    let mut out = Vec::with_capacity((body.len() * 4).min(limit));
    let read = GzDecoder::new(body).take(limit as u64 + 1).read_to_end(&mut out).map_err(WireError::Gzip)?;
    if read > limit {
        return Err(WireError::TooLarge { limit });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bomb_cap() {
        let v = vec![0u32; 10_000];
        let gz = encode_gzip_json(&v).unwrap();
        let back = decompress(&gz, true, 1 << 20).unwrap();
        assert_eq!(serde_json::from_slice::<Vec<u32>>(&back).unwrap(), v);
        assert!(matches!(decompress(&gz, true, 1000), Err(WireError::TooLarge { .. })));
        assert!(matches!(decompress(b"not gzip", true, 1000), Err(WireError::Gzip(_))));
    }
}
