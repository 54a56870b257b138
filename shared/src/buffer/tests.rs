use super::*;
use std::sync::atomic::Ordering;

fn rec(i: u64) -> Vec<u8> {
    format!("reading-{i:06}").into_bytes()
}

fn both(quota: u64, when_full: WhenFull, f: impl Fn(&dyn Storage)) {
    let mem = MemoryBuffer::new(quota, when_full);
    f(&mem);
    let dir = tempfile::tempdir().unwrap();
    let (sled, _) = SledBuffer::open(&dir.path().join("buf"), quota, when_full).unwrap();
    f(&sled);
}

#[test]
fn append_assigns_rising_seqs_and_reads_both_ends() {
    both(1 << 20, WhenFull::DropOldest, |b| {
        let r = b.append(&(0..10).map(rec).collect::<Vec<_>>()).unwrap();
        assert_eq!(r, 1..11);
        let r2 = b.append(&[rec(10)]).unwrap();
        assert_eq!(r2, 11..12);
        let old: Vec<u64> = b.oldest(3).unwrap().into_iter().map(|(s, _)| s).collect();
        assert_eq!(old, vec![1, 2, 3]);
        let new: Vec<u64> = b.newest(2).unwrap().into_iter().map(|(s, _)| s).collect();
        assert_eq!(new, vec![11, 10]);
        assert_eq!(b.oldest(1).unwrap()[0].1, rec(0));
        assert_eq!(b.stats().len, 11);
    });
}

#[test]
fn remove_and_delete_through_free_exactly_what_was_acknowledged() {
    both(1 << 20, WhenFull::DropOldest, |b| {
        b.append(&(0..10).map(rec).collect::<Vec<_>>()).unwrap();
        b.remove(&[10, 9, 42]).unwrap();
        assert_eq!(b.delete_through(3).unwrap(), 3);
        let left: Vec<u64> = b.oldest(100).unwrap().into_iter().map(|(s, _)| s).collect();
        assert_eq!(left, vec![4, 5, 6, 7, 8]);
        let st = b.stats();
        assert_eq!(st.len, 5);
        assert_eq!(st.bytes, 5 * record_cost(&rec(0)));
    });
}

#[test]
fn drop_oldest_keeps_the_newest_and_counts_the_loss() {
    let cost = record_cost(&rec(0));
    both(cost * 5, WhenFull::DropOldest, |b| {
        for i in 0..8 {
            b.append(&[rec(i)]).unwrap();
        }
        let st = b.stats();
        assert_eq!(st.len, 5);
        assert_eq!(st.dropped, 3);
        assert!(st.bytes <= st.quota);
        let left: Vec<u64> = b.oldest(100).unwrap().into_iter().map(|(s, _)| s).collect();
        assert_eq!(left, vec![4, 5, 6, 7, 8]);
        // An append bigger than the whole quota keeps only its newest part.
        b.append(&(100..110).map(rec).collect::<Vec<_>>()).unwrap();
        let left: Vec<u64> = b.oldest(100).unwrap().into_iter().map(|(s, _)| s).collect();
        assert_eq!(left, vec![14, 15, 16, 17, 18]);
        assert_eq!(b.stats().dropped, 13);
    });
}

#[test]
fn reject_keeps_everything_accepted_and_refuses_the_rest() {
    let cost = record_cost(&rec(0));
    both(cost * 3, WhenFull::Reject, |b| {
        b.append(&[rec(0), rec(1)]).unwrap();
        let err = b.append(&[rec(2), rec(3)]).unwrap_err();
        assert!(matches!(err, BufferError::Full { .. }), "{err}");
        assert_eq!(b.stats().len, 2);
        assert_eq!(b.stats().dropped, 0);
        b.append(&[rec(2)]).unwrap();
        assert_eq!(b.stats().len, 3);
    });
}

#[test]
fn seq_and_records_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buf");
    {
        let (b, _) = SledBuffer::open(&path, 1 << 20, WhenFull::DropOldest).unwrap();
        b.append(&(0..5).map(rec).collect::<Vec<_>>()).unwrap();
        b.delete_through(5).unwrap();
        b.append(&[rec(5), rec(6)]).unwrap();
    }
    let (b, outcome) = SledBuffer::open(&path, 1 << 20, WhenFull::DropOldest).unwrap();
    assert_eq!(outcome, OpenOutcome::Opened);
    let left: Vec<u64> = b.oldest(10).unwrap().into_iter().map(|(s, _)| s).collect();
    assert_eq!(left, vec![6, 7]);
    // Even with every record acknowledged, seq never goes back.
    b.delete_through(100).unwrap();
    drop(b);
    let (b, _) = SledBuffer::open(&path, 1 << 20, WhenFull::DropOldest).unwrap();
    assert_eq!(b.append(&[rec(9)]).unwrap(), 8..9, "no seq twice, and no gap after a clean restart");
}

#[test]
fn a_corrupt_buffer_is_moved_aside_not_a_crash_loop() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buf");
    {
        let (b, _) = SledBuffer::open(&path, 1 << 20, WhenFull::DropOldest).unwrap();
        b.append(&(0..100).map(rec).collect::<Vec<_>>()).unwrap();
    }
    // Scribble over the storage file the way a torn write or a bad disk would.
    let db_file = path.join("db");
    let mut bytes = std::fs::read(&db_file).unwrap();
    for b in bytes.iter_mut().skip(64) {
        *b = 0xA5;
    }
    std::fs::write(&db_file, bytes).unwrap();
    let conf = path.join("conf");
    if conf.exists() {
        std::fs::write(&conf, b"garbage").unwrap();
    }
    // Either sled notices (moved aside) or it truncates what it cannot read; both must open, and
    // neither may hand out a seq the cloud has already seen.
    let (b, outcome) = SledBuffer::open(&path, 1 << 20, WhenFull::DropOldest).unwrap();
    if let OpenOutcome::Recovered { moved_to, .. } = outcome {
        assert!(moved_to.exists());
    }
    let r = b.append(&[rec(1)]).unwrap();
    assert!(r.start > 100, "seq {} reused after corruption", r.start);
}

/// The sled buffer and its in-memory twin must agree on every operation: random appends (some
/// spanning many chunks), removals scattered across chunks, deletes through the middle of a
/// chunk, and quota drops.
#[test]
fn sled_buffer_matches_its_in_memory_twin_under_random_operations() {
    for round in 0..4u64 {
        let mut rng = fastrand::Rng::with_seed(round);
        let quota = record_cost(&rec(0)) * 3000;
        let mem = MemoryBuffer::new(quota, WhenFull::DropOldest);
        let dir = tempfile::tempdir().unwrap();
        let (sled, _) = SledBuffer::open(&dir.path().join("buf"), quota, WhenFull::DropOldest).unwrap();
        let mut counter = 0u64;
        for step in 0..300 {
            match rng.u8(0..10) {
                0..=4 => {
                    let n = if rng.u8(0..10) == 0 { rng.usize(500..1500) } else { rng.usize(1..40) };
                    let recs: Vec<Vec<u8>> = (0..n)
                        .map(|_| {
                            counter += 1;
                            rec(counter)
                        })
                        .collect();
                    assert_eq!(mem.append(&recs).unwrap(), sled.append(&recs).unwrap(), "step {step}");
                }
                5..=7 => {
                    let all = mem.oldest(usize::MAX).unwrap();
                    let pick: Vec<u64> = all.iter().filter(|_| rng.u8(0..4) == 0).map(|(s, _)| *s).collect();
                    mem.remove(&pick).unwrap();
                    sled.remove(&pick).unwrap();
                }
                8 => {
                    if let Some((s, _)) = mem.oldest(rng.usize(1..200)).unwrap().last() {
                        assert_eq!(mem.delete_through(*s).unwrap(), sled.delete_through(*s).unwrap());
                    }
                }
                _ => {
                    let n = rng.usize(1..700);
                    assert_eq!(mem.newest(n).unwrap(), sled.newest(n).unwrap(), "newest, step {step}");
                }
            }
            assert_eq!(mem.stats(), sled.stats(), "stats, round {round} step {step}");
        }
        assert_eq!(mem.oldest(usize::MAX).unwrap(), sled.oldest(usize::MAX).unwrap());
        // And what the sled buffer holds survives a reopen unchanged.
        let before = sled.oldest(usize::MAX).unwrap();
        let stats = sled.stats();
        drop(sled);
        let (sled, _) = SledBuffer::open(&dir.path().join("buf"), quota, WhenFull::DropOldest).unwrap();
        assert_eq!(sled.oldest(usize::MAX).unwrap(), before);
        assert_eq!(sled.stats(), stats);
    }
}

fn seqs(b: &dyn Storage) -> Vec<u64> {
    b.oldest(usize::MAX).unwrap().into_iter().map(|(s, _)| s).collect()
}

#[test]
fn new_seqs_start_above_the_reserved_floor_even_when_sleds_counter_is_behind() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buf");
    {
        let (b, _) = SledBuffer::open(&path, 1 << 20, WhenFull::DropOldest).unwrap();
        assert_eq!(b.append(&(0..5).map(rec).collect::<Vec<_>>()).unwrap(), 1..6);
    }
    // sled kept its counter (6) but lost a tail of appends that had reserved seqs up to 1,000,000
    // and were delivered: the floor file is what remembers them.
    std::fs::write(dir.path().join("buf.seq-floor"), "1000000").unwrap();
    let (b, _) = SledBuffer::open(&path, 1 << 20, WhenFull::DropOldest).unwrap();
    assert!(b.stats().next_seq >= 1_000_000);
    let r = b.append(&[rec(5)]).unwrap();
    assert!(r.start >= 1_000_000, "seq {} is below the reserved floor and may be reused", r.start);
    assert_eq!(seqs(&b), vec![1, 2, 3, 4, 5, r.start]);
}

#[test]
fn a_failed_append_neither_consumes_nor_reuses_seqs_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buf");
    let (b, _) = SledBuffer::open(&path, 1 << 20, WhenFull::DropOldest).unwrap();
    let first = b.append(&[rec(0), rec(1)]).unwrap();
    b.fail_flushes.store(true, Ordering::Release);
    let batch: Vec<Vec<u8>> = (2..1200).map(rec).collect(); // several chunks
    assert!(matches!(b.append(&batch), Err(BufferError::Storage(_))));
    let st = b.stats();
    assert_eq!((st.len, st.next_seq), (2, first.end), "a failed append leaves no record and no seq");
    assert_eq!(seqs(&b), vec![1, 2]);
    // The writer retries the very same readings: they get the seqs the failed try would have had.
    b.fail_flushes.store(false, Ordering::Release);
    let retry = b.append(&batch).unwrap();
    assert_eq!(retry, first.end..first.end + batch.len() as u64);
    drop(b);
    let (b, _) = SledBuffer::open(&path, 1 << 20, WhenFull::DropOldest).unwrap();
    let held = b.oldest(usize::MAX).unwrap();
    assert_eq!(held.len(), 2 + batch.len(), "every reading once, none twice");
    assert_eq!(held[2].1, rec(2));
    let again = b.append(&[rec(9)]).unwrap();
    assert!(again.start >= retry.end, "seq {} handed out twice", again.start);
}

#[test]
fn quarantined_records_leave_the_queue_are_counted_listed_and_can_be_requeued() {
    both(1 << 20, WhenFull::DropOldest, |b| {
        b.append(&(0..10).map(rec).collect::<Vec<_>>()).unwrap();
        let moved =
            b.quarantine(&[(3, "refused: forged".into()), (7, "refused: forged".into()), (99, "x".into())]);
        assert_eq!(moved.unwrap(), 2, "unknown seqs are ignored");
        assert_eq!(seqs(b), vec![1, 2, 4, 5, 6, 8, 9, 10]);
        let st = b.stats();
        assert_eq!((st.len, st.quarantined, st.quarantine_len), (8, 2, 2));
        assert_eq!(st.bytes, 8 * record_cost(&rec(0)));
        let q = b.quarantined(10).unwrap();
        assert_eq!(q.iter().map(|q| q.seq).collect::<Vec<_>>(), vec![3, 7]);
        assert_eq!(q[0].reason, "refused: forged");
        assert_eq!(q[1].record, rec(6));
        assert_eq!(b.requeue().unwrap(), 2);
        assert_eq!(seqs(b), (1..=10).collect::<Vec<_>>(), "back under their own seqs, in order");
        assert_eq!(b.oldest(10).unwrap()[2].1, rec(2));
        let st = b.stats();
        assert_eq!((st.len, st.quarantine_len, st.quarantine_bytes), (10, 0, 0));
        assert_eq!(st.quarantined, 2, "a loss once reported stays reported");
        // Requeued records behave like any other: removable by seq.
        b.remove(&[3, 7]).unwrap();
        assert_eq!(b.stats().len, 8);
    });
}

#[test]
fn the_quarantine_is_bounded_and_its_overflow_counted_as_dropped() {
    let cost = record_cost(&rec(0));
    both(cost * 40, WhenFull::DropOldest, |b| {
        b.append(&(0..30).map(rec).collect::<Vec<_>>()).unwrap();
        let all: Vec<(u64, String)> = (1..=30).map(|s| (s, "refused".to_string())).collect();
        assert_eq!(b.quarantine(&all).unwrap(), 30);
        let st = b.stats();
        assert_eq!(st.quarantine_len, 10, "a quarter of the quota");
        assert!(st.quarantine_bytes <= st.quota / QUARANTINE_SHARE);
        assert_eq!((st.quarantined, st.dropped), (30, 20));
        let kept: Vec<u64> = b.quarantined(100).unwrap().iter().map(|q| q.seq).collect();
        assert_eq!(kept, (21..=30).collect::<Vec<_>>(), "the newest refused records are kept");
    });
}

#[test]
fn loss_counters_and_the_quarantine_survive_reopening_and_a_corrupt_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buf");
    let cost = record_cost(&rec(0));
    {
        let (b, _) = SledBuffer::open(&path, cost * 40, WhenFull::DropOldest).unwrap();
        b.append(&(0..45).map(rec).collect::<Vec<_>>()).unwrap(); // 5 dropped
        b.quarantine(&[(10, "refused: malformed".into()), (11, "unreadable".into())]).unwrap();
    }
    let (b, _) = SledBuffer::open(&path, cost * 40, WhenFull::DropOldest).unwrap();
    let st = b.stats();
    assert_eq!((st.dropped, st.quarantined, st.quarantine_len, st.len), (5, 2, 2, 38));
    assert_eq!(b.quarantined(10).unwrap()[1].reason, "unreadable");
    drop(b);
    // A buffer so damaged it must be moved aside: the counts live on beside it.
    std::fs::write(path.join("conf"), b"garbage").unwrap();
    let db_file = path.join("db");
    let mut bytes = std::fs::read(&db_file).unwrap();
    for b in bytes.iter_mut().skip(64) {
        *b = 0xA5;
    }
    std::fs::write(&db_file, bytes).unwrap();
    let (b, outcome) = SledBuffer::open(&path, cost * 40, WhenFull::DropOldest).unwrap();
    let st = b.stats();
    assert!(st.quarantined >= 2, "quarantined count lost: {st:?}");
    if matches!(outcome, OpenOutcome::Recovered { .. }) {
        // The 38 readings held at the last clean close went with the old database: counted.
        assert_eq!(st.dropped, 5 + 38, "{st:?}");
    } else {
        assert!(st.dropped >= 5, "{st:?}");
    }
}

/// A write that waits for the disk holds the counters' lock (a full disk can hold it for good);
/// `stats`, which async code calls on the runtime's workers, must still answer at once.
#[test]
fn stats_never_wait_behind_a_write_that_waits_for_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (b, _) = SledBuffer::open(&dir.path().join("buf"), 1 << 20, WhenFull::DropOldest).unwrap();
    b.append(&[rec(1), rec(2)]).unwrap();
    let b = std::sync::Arc::new(b);
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let writer = {
        let b = b.clone();
        std::thread::spawn(move || {
            let _stuck = b.counters();
            held_tx.send(()).unwrap();
            std::thread::sleep(std::time::Duration::from_secs(3));
        })
    };
    held_rx.recv().unwrap();
    let t0 = std::time::Instant::now();
    let stats = b.stats();
    assert!(t0.elapsed() < std::time::Duration::from_millis(500), "stats waited {:?}", t0.elapsed());
    assert_eq!((stats.len, stats.next_seq), (2, 3), "the counters as of the last change");
    writer.join().unwrap();
}

/// The free space a sled buffer reports is its own disk's, as an unprivileged writer has it: a
/// file taking room on that disk shows in it.
#[test]
fn a_sled_buffer_reports_the_free_space_of_its_own_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (b, _) = SledBuffer::open(&dir.path().join("buf"), 1 << 20, WhenFull::DropOldest).unwrap();
    let before = b.free_space().expect("known for a disk");
    let total = fs2::total_space(dir.path()).unwrap();
    assert!(before <= total, "{before} is more than the disk holds ({total})");
    let filler = dir.path().join("buf/filler");
    std::fs::write(&filler, vec![1u8; 64 << 20]).unwrap();
    let file = std::fs::File::open(&filler).unwrap();
    file.sync_all().unwrap();
    let after = b.free_space().unwrap();
    assert!(before.saturating_sub(after) >= 32 << 20, "64 MiB written, free went from {before} to {after}");
    assert_eq!(MemoryBuffer::new(1, WhenFull::DropOldest).free_space(), None, "no disk, no figure");
}

/// Records of every size, some larger than a chunk, come back in order and byte for byte, also
/// after some in the middle were acknowledged and the buffer reopened.
#[test]
fn records_of_any_size_come_back_whole_in_order_after_removals_and_a_reopen() {
    let sizes = [10usize, 20_000, 3, 8_000, 8_200, 50, 100_000, 7, 4_000, 4_000, 4_000];
    let records: Vec<Vec<u8>> =
        sizes.iter().enumerate().map(|(i, &n)| (0..n).map(|j| (i * 31 + j) as u8).collect()).collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buf");
    let kept: Vec<(u64, Vec<u8>)> = {
        let (b, _) = SledBuffer::open(&path, u64::MAX, WhenFull::Reject).unwrap();
        let seqs = b.append(&records).unwrap();
        let all: Vec<(u64, Vec<u8>)> = seqs.clone().zip(records.iter().cloned()).collect();
        assert_eq!(b.oldest(100).unwrap(), all);
        let gone = [seqs.start + 1, seqs.start + 4, seqs.start + 9];
        b.remove(&gone).unwrap();
        all.into_iter().filter(|(s, _)| !gone.contains(s)).collect()
    };
    let (b, _) = SledBuffer::open(&path, u64::MAX, WhenFull::Reject).unwrap();
    assert_eq!(b.oldest(100).unwrap(), kept);
    let newest: Vec<_> = kept.iter().rev().take(3).cloned().collect();
    assert_eq!(b.newest(3).unwrap(), newest);
}
