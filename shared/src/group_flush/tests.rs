use super::GroupFlush;
use std::time::Duration;

fn open(dir: &std::path::Path) -> sled::Db {
    sled::Config::new().path(dir).cache_capacity(1 << 20).flush_every_ms(None).open().unwrap()
}

/// The acknowledgement storm that deadlocked sled's `flush_async`: 200 tasks each write and then
/// wait for durability, all at once. Every one must be acknowledged, and the flushes must be
/// shared (group commit), not one per writer.
///
/// The deadline is kept outside the runtime: sled's deadlock parks the runtime's workers inside
/// `flush_async`, and then no tokio timer fires. (With `db.flush_async()` in place of the group
/// flush this test fails here, after 30 s, instead of hanging.)
#[test]
fn two_hundred_simultaneous_acknowledgements_all_complete() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let flusher = GroupFlush::new(db.clone());
    let (done, finished) = std::sync::mpsc::channel();
    let (storm_db, storm_flusher) = (db.clone(), flusher.clone());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap();
        let acked = rt.block_on(async move {
            let start = std::sync::Arc::new(tokio::sync::Barrier::new(200));
            let mut tasks = Vec::new();
            for i in 0..200u32 {
                let (db, flusher, start) = (storm_db.clone(), storm_flusher.clone(), start.clone());
                tasks.push(tokio::spawn(async move {
                    start.wait().await;
                    db.insert(i.to_be_bytes(), vec![7u8; 512]).unwrap();
                    flusher.flush().await.unwrap();
                    i
                }));
            }
            futures_util::future::join_all(tasks).await.into_iter().map(|r| r.unwrap()).collect::<Vec<_>>()
        });
        let _ = done.send(acked);
    });
    let acked = finished
        .recv_timeout(Duration::from_secs(30))
        .expect("acknowledgements stopped: the flush deadlocked");
    assert_eq!(acked.len(), 200);
    let flushes = flusher.flushes();
    println!("200 acknowledgements served by {flushes} flushes");
    assert!((1..200).contains(&flushes), "{flushes} flushes for 200 writers: not grouped");
    drop(flusher);
    drop(db);
    // Everything acknowledged is there after a reopen (the flusher's thread let go of the db).
    let db = open(dir.path());
    assert_eq!(db.len(), 200);
}

/// Blocking writers (the durable buffer appends inside `spawn_blocking`) share the same flushes.
#[test]
fn blocking_writers_on_many_threads_are_all_served() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let flusher = GroupFlush::new(db.clone());
    let (tx, rx) = std::sync::mpsc::channel();
    for i in 0..64u32 {
        let (db, flusher, tx) = (db.clone(), flusher.clone(), tx.clone());
        std::thread::spawn(move || {
            db.insert(i.to_be_bytes(), &[1u8][..]).unwrap();
            flusher.flush_blocking().unwrap();
            tx.send(i).unwrap();
        });
    }
    drop(tx);
    let mut got = 0;
    while got < 64 {
        rx.recv_timeout(Duration::from_secs(30)).expect("a blocking writer was never served");
        got += 1;
    }
}

/// A writer that asks after a flush completed gets a new flush: it is never told "durable" on the
/// strength of a flush that started before its write.
#[tokio::test]
async fn a_later_write_waits_for_a_later_flush() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let flusher = GroupFlush::new(db.clone());
    db.insert("a", "1").unwrap();
    flusher.flush().await.unwrap();
    let first = flusher.flushes();
    db.insert("b", "2").unwrap();
    flusher.flush().await.unwrap();
    assert!(flusher.flushes() > first, "second write acknowledged without a flush after it");
}

/// sled's flush never returns once a write failed for lack of space. Waiters are told within the
/// stall deadline, later ones at once, and dropping the flusher does not hang on its thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_that_never_returns_is_reported_as_a_stall_not_waited_on_forever() {
    let (hold, stuck) = std::sync::mpsc::channel::<()>();
    let stuck = std::sync::Mutex::new(stuck);
    let flusher = GroupFlush::with(
        move || {
            // Blocks until the test ends (the sender is dropped then).
            let _ = stuck.lock().unwrap().recv();
            Ok(())
        },
        Duration::from_millis(300),
    );
    let started = std::time::Instant::now();
    let async_waiter = tokio::time::timeout(Duration::from_secs(10), flusher.flush()).await;
    let err = async_waiter.expect("the waiter is answered, not left hanging").unwrap_err();
    assert!(err.to_string().contains("has not completed a flush"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "told within the deadline and one check");
    assert!(flusher.stalled());
    let f = flusher.clone();
    let blocking = tokio::task::spawn_blocking(move || f.flush_blocking());
    let again = tokio::time::timeout(Duration::from_secs(2), blocking).await.unwrap().unwrap();
    assert!(again.is_err(), "later writers are told at once");
    // The last handle goes while the flush is still stuck: no hang.
    let dropped = tokio::task::spawn_blocking(move || drop(flusher));
    tokio::time::timeout(Duration::from_secs(2), dropped).await.expect("dropping does not hang").unwrap();
    drop(hold);
}
