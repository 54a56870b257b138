//! Durable buffer append throughput: group commits of N readings, each commit flushed to disk
//! before the next starts (what the hub's writer does). Prints readings/s.
//! Run: `cargo bench -p outpost-shared --bench buffer`

use outpost_shared::buffer::{SledBuffer, Storage, WhenFull};
use outpost_shared::model::{Sample, State};
use std::time::Instant;

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let (buf, _) = SledBuffer::open(&dir.path().join("buf"), 4 << 30, WhenFull::DropOldest).unwrap();
    let record =
        serde_json::to_vec(&Sample::new("disk./var/lib.used_pct", 57.25, State::Ok).unit("%")).unwrap();
    println!("record size: {} bytes (a JSON-encoded sample)", record.len());
    for group in [100usize, 1_000, 10_000] {
        let total = 1_000_000usize;
        let records: Vec<Vec<u8>> = (0..group).map(|_| record.clone()).collect();
        let t = Instant::now();
        for _ in 0..total / group {
            buf.append(&records).unwrap();
        }
        let secs = t.elapsed().as_secs_f64();
        println!(
            "append, group commit of {group:>6}: {:>10.0} readings/s ({} readings, {} flushes, {:.2} s)",
            total as f64 / secs,
            total,
            total / group,
            secs
        );
        // Drain like an uplink does, so the next round starts empty.
        let t = Instant::now();
        loop {
            let batch = buf.oldest(5000).unwrap();
            if batch.is_empty() {
                break;
            }
            let seqs: Vec<u64> = batch.iter().map(|(s, _)| *s).collect();
            buf.remove(&seqs).unwrap();
        }
        println!(
            "  read + remove in batches of 5000: {:>10.0} readings/s",
            total as f64 / t.elapsed().as_secs_f64()
        );
    }
}
