use super::*;

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
    assert_eq!(b.append(&[rec(9)]).unwrap(), 8..9);
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
