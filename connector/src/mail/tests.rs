use super::outage::Watch;
use outpost_shared::mail::{AlertEvent, Outbox};
use outpost_shared::model::{Batch, Reading, Role, Sample, State};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn batch(seq: u64, state: State) -> Batch {
    Batch {
        machine_id: "hub1".into(),
        hostname: "pump".into(),
        role: Role::Sensorhub,
        uplink: "connector:c".into(),
        buffered: 0,
        dropped: 0,
        version: "t".into(),
        quarantined: 0,
        clock_problem: None,
        features: Vec::new(),
        readings: vec![Reading {
            machine_id: "hub1".into(),
            seq,
            sample: Sample::new("cmd.valve", seq as f64, state).at(chrono::Utc::now()),
        }],
    }
}

async fn next_change(rx: &mut tokio::sync::mpsc::Receiver<AlertEvent>) -> (State, State) {
    match tokio::time::timeout(Duration::from_secs(20), rx.recv()).await.unwrap().unwrap() {
        AlertEvent::Change(c) => (c.old, c.new),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn an_outage_starts_after_the_threshold_with_the_changes_taken_since_and_ends_with_a_forward() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(dir.path()).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let watch = Arc::new(Watch::new(Duration::from_millis(300), Some(tx), Some(outbox)).unwrap());
    let stop = CancellationToken::new();
    let timer = watch.clone();
    let t = tokio::spawn({
        let stop = stop.clone();
        async move { timer.run_timer(stop).await }
    });

    // Cloud reachable: changes are only remembered, nothing is alerted or noted.
    watch.took(&batch(1, State::Ok)).await;
    watch.forward_ok(std::time::Instant::now());
    watch.forward_failed();
    watch.took(&batch(2, State::Error)).await;
    assert!(rx.try_recv().is_err() && watch.pending_notes().1.is_empty());

    // Failing longer than the threshold: the change taken since the failure is alerted and noted.
    assert_eq!(next_change(&mut rx).await, (State::Ok, State::Error));
    assert!(watch.in_outage());
    watch.took(&batch(3, State::Ok)).await;
    assert_eq!(next_change(&mut rx).await, (State::Error, State::Ok));
    let (keys, notes) = watch.pending_notes();
    let states: Vec<State> = notes.iter().map(|n| n.state).collect();
    assert_eq!(states, vec![State::Error, State::Ok]);
    assert!(notes.iter().all(|n| n.machine_id == "hub1" && n.sensor == "cmd.valve"));

    // A successful forward ends it: the cloud has the notes, new changes are its own.
    watch.forward_ok(std::time::Instant::now());
    watch.notes_delivered(keys).await;
    assert!(!watch.in_outage() && watch.pending_notes().1.is_empty());
    watch.took(&batch(4, State::Warn)).await;
    assert!(rx.try_recv().is_err());
    assert_eq!(watch.hubs()["hub1"].sensors["cmd.valve"].state, State::Warn, "still tracked for STATUS");
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), t).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_connector_restarted_during_an_outage_does_not_take_a_known_error_for_news() {
    let dir = tempfile::tempdir().unwrap();
    {
        let outbox = Outbox::open(dir.path()).unwrap();
        let (tx, _rx) = tokio::sync::mpsc::channel(16);
        let watch = Watch::new(Duration::from_secs(3600), Some(tx), Some(outbox)).unwrap();
        watch.took(&batch(1, State::Ok)).await;
        watch.took(&batch(2, State::Error)).await;
    }
    // Restarted, and the outage declared at once: the sensor still in error is not a change...
    let outbox = Outbox::open(dir.path()).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let watch = Arc::new(Watch::new(Duration::from_millis(1), Some(tx), Some(outbox)).unwrap());
    assert_eq!(
        watch.hubs()["hub1"].sensors["cmd.valve"].state,
        State::Error,
        "remembered across the restart"
    );
    let stop = CancellationToken::new();
    let timer = watch.clone();
    let t = tokio::spawn({
        let stop = stop.clone();
        async move { timer.run_timer(stop).await }
    });
    watch.forward_failed();
    tokio::time::timeout(Duration::from_secs(10), async {
        while !watch.in_outage() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    watch.took(&batch(3, State::Error)).await;
    assert!(rx.try_recv().is_err(), "no alert for an error that was already known");
    // ... while its recovery is.
    watch.took(&batch(4, State::Ok)).await;
    assert_eq!(next_change(&mut rx).await, (State::Error, State::Ok));
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), t).await.unwrap().unwrap();
}
