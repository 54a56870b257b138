//! End-to-end: `outpost buffer` on a stopped hub's buffer, as an operator uses it to see what the
//! next hop refused for good and to send it again once the cause is fixed.

use outpost_shared::buffer::{SledBuffer, Storage, WhenFull};
use outpost_shared::model::{Sample, State};
use serde_json::Value;
use std::process::Command;

fn outpost_buffer(dir: &std::path::Path, extra: &[&str]) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["buffer", "--data-dir", dir.to_str().unwrap()])
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn outpost_buffer_lists_the_quarantine_and_requeues_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (b, _) = SledBuffer::open(&dir.path().join("buffer"), 1 << 20, WhenFull::DropOldest).unwrap();
        let recs: Vec<Vec<u8>> = (0..5)
            .map(|i| serde_json::to_vec(&Sample::new(format!("cpu.{i}"), i as f64, State::Ok)).unwrap())
            .collect();
        b.append(&recs).unwrap();
        b.quarantine(&[
            (2, "refused (422, Some(Clock)): outside the window".into()),
            (4, "unreadable".into()),
        ])
        .unwrap();
    }
    let listed = outpost_buffer(dir.path(), &["--quarantine"]);
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0]["seq"], 2);
    assert!(listed[0]["reason"].as_str().unwrap().contains("Clock"));
    assert_eq!(listed[0]["record"]["sensor"], "cpu.1");
    assert_eq!(listed[1]["seq"], 4);

    let summary = &outpost_buffer(dir.path(), &[])[0];
    assert_eq!((summary["len"].as_u64(), summary["quarantine_len"].as_u64()), (Some(3), Some(2)));
    assert_eq!(summary["quarantined"], 2);

    assert_eq!(outpost_buffer(dir.path(), &["--requeue"])[0]["requeued"], 2);
    assert!(outpost_buffer(dir.path(), &["--quarantine"]).is_empty());
    let summary = &outpost_buffer(dir.path(), &[])[0];
    assert_eq!((summary["len"].as_u64(), summary["quarantine_len"].as_u64()), (Some(5), Some(0)));
    assert_eq!(summary["quarantined"], 2, "the loss stays on record");
    let (b, _) = SledBuffer::open(&dir.path().join("buffer"), 1 << 20, WhenFull::DropOldest).unwrap();
    let seqs: Vec<u64> = b.oldest(10).unwrap().into_iter().map(|(s, _)| s).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5], "back under their own seqs");
}
