//! Two cloud nodes in one process on one throwaway database: wake-ups, live events and the jobs
//! lock cross between them as they would between machines.

use crate::CloudConfig;
use std::time::Duration;

/// Node A's config on `url`, and node B's with a copy of A's key, certificate and admin token
/// (what docs/postgres.md tells operators to copy).
async fn two_nodes() -> (crate::Cloud, crate::Cloud, tempfile::TempDir) {
    two_nodes_on(crate::store::tests::fresh_database().await).await
}

async fn two_nodes_on(
    url: crate::store::postgres::PostgresUrl,
) -> (crate::Cloud, crate::Cloud, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = |name: &str| CloudConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().join(name),
        storage: crate::config::Storage { postgres: Some(url.clone()), ..Default::default() },
        // The retention pass every second, so a test sees which node runs it.
        retention: crate::config::Retention { compact_every: Duration::from_secs(1), ..Default::default() },
        ..Default::default()
    };
    let a = crate::start(config("a")).await.unwrap();
    for f in ["cloud.key", "admin-token", "tls"] {
        let (from, to) = (dir.path().join("a").join(f), dir.path().join("b").join(f));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        let status = std::process::Command::new("cp").arg("-a").arg(&from).arg(&to).status().unwrap();
        assert!(status.success());
    }
    let b = crate::start(config("b")).await.unwrap();
    (a, b, dir)
}

fn client(cloud: &crate::Cloud) -> reqwest::Client {
    outpost_shared::tls::https_client(Some(&cloud.ca_file), Duration::from_secs(30)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_made_on_one_node_reaches_a_poll_held_on_the_other_at_once() {
    let (a, b, _dir) = two_nodes().await;
    command_crosses(&a, &b).await;
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

/// After the database crashed and came back, the nodes listen again (wake-ups cross again) and
/// one of them runs the jobs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_database_restart_the_nodes_hear_each_other_again() {
    use crate::store::postgres::throwaway::{create_database, Throwaway};
    let mut server =
        tokio::task::spawn_blocking(|| Throwaway::start().unwrap_or_else(|e| panic!("{e}"))).await.unwrap();
    let url = crate::store::postgres::PostgresUrl::new(create_database(&server, "restart").await.unwrap());
    let (a, b, _dir) = two_nodes_on(url).await;
    let mut server = tokio::task::spawn_blocking(move || {
        server.crash();
        std::thread::sleep(Duration::from_secs(1));
        server.resume().unwrap();
        server
    })
    .await
    .unwrap();
    // The sessions are made again with backoff; a wake-up needs the listener back.
    tokio::time::sleep(Duration::from_secs(3)).await;
    command_crosses(&a, &b).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !(a.leader.holds() || b.leader.holds()) {
        assert!(tokio::time::Instant::now() < deadline, "nobody took the jobs lock again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    tokio::task::spawn_blocking(move || server.stop()).await.unwrap();
}

/// A hub enrolled through B long-polls B; a command made on A reaches it at once.
async fn command_crosses(a: &crate::Cloud, b: &crate::Cloud) {
    assert_eq!(a.trust.key().machine_id(), b.trust.key().machine_id(), "one cloud key");
    let hub = outpost_shared::keys::KeyPair::generate().unwrap();
    let (token, _) = a
        .trust
        .new_token(
            "n",
            outpost_shared::model::Role::Sensorhub,
            Duration::from_secs(60),
            "",
            "t",
            chrono::Utc::now(),
        )
        .await
        .unwrap();
    let req = crate::trust::EnrollRequest {
        token: Some(token.encode()),
        sealed_token: None,
        public_key: hub.public().to_pem(),
        role: outpost_shared::model::Role::Sensorhub,
        hostname: "h".into(),
        lan_cert: None,
    };
    // Enrolled through node B: node A knows it at once (one database).
    b.trust.enroll(&req, chrono::Utc::now()).await.unwrap();
    let path = "/v1/commands/poll?wait=20";
    let sig = outpost_shared::keys::sign_request(&hub, "GET", path, b"", chrono::Utc::now()).unwrap();
    let mut poll = client(b).get(format!("{}{path}", b.url()));
    for (k, v) in sig.to_pairs() {
        poll = poll.header(k, v);
    }
    let held = tokio::spawn(poll.send());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!held.is_finished(), "nothing is due yet");
    let started = std::time::Instant::now();
    let id = hub.machine_id().to_string();
    let made = client(a)
        .post(format!("{}/v1/machines/{id}/commands", a.url()))
        .bearer_auth(&a.admin_token)
        .json(&serde_json::json!({"action": "ping"}))
        .send()
        .await
        .unwrap();
    assert_eq!(made.status(), 201);
    let answer = tokio::time::timeout(Duration::from_secs(10), held).await.expect("woken").unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(3), "at once, not at the poll's deadline");
    let envelopes: Vec<serde_json::Value> = answer.json().await.unwrap();
    assert_eq!(envelopes.len(), 1, "{envelopes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_runs_the_jobs_and_another_takes_over_when_it_goes() {
    let url = crate::store::tests::fresh_database().await;
    let (a, b, _dir) = two_nodes_on(url.clone()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !(a.leader.holds() || b.leader.holds()) {
        assert!(tokio::time::Instant::now() < deadline, "nobody took the jobs lock");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!(a.leader.holds() && b.leader.holds()), "never two at once");
    let (gone, stays) = if a.leader.holds() { (a, b) } else { (b, a) };
    gone.stop().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !stays.leader.holds() {
        assert!(tokio::time::Instant::now() < deadline, "the other node did not take over");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The retention pass runs on the survivor: a token that expired an hour ago goes.
    let long_ago = chrono::Utc::now() - chrono::Duration::hours(2);
    stays
        .trust
        .new_token("n", outpost_shared::model::Role::Sensorhub, Duration::from_secs(3600), "", "t", long_ago)
        .await
        .unwrap();
    let (client, conn) = url.parse().unwrap().connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let n: i64 = client.query_one("SELECT count(*) FROM enrollment_tokens", &[]).await.unwrap().get(0);
        if n == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the survivor did not run the retention pass");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stays.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_feed_of_one_node_hears_batches_stored_by_the_other() {
    let (a, b, _dir) = two_nodes().await;
    let hub = outpost_shared::keys::KeyPair::generate().unwrap();
    let (token, _) = a
        .trust
        .new_token(
            "n",
            outpost_shared::model::Role::Sensorhub,
            Duration::from_secs(60),
            "",
            "t",
            chrono::Utc::now(),
        )
        .await
        .unwrap();
    let req = crate::trust::EnrollRequest {
        token: Some(token.encode()),
        sealed_token: None,
        public_key: hub.public().to_pem(),
        role: outpost_shared::model::Role::Sensorhub,
        hostname: "h".into(),
        lan_cert: None,
    };
    a.trust.enroll(&req, chrono::Utc::now()).await.unwrap();
    let mut feed =
        client(&b).get(format!("{}/v1/events", b.url())).bearer_auth(&b.admin_token).send().await.unwrap();
    assert_eq!(feed.status(), 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let id = hub.machine_id().to_string();
    let batch = outpost_shared::model::Batch {
        machine_id: id.clone(),
        hostname: "h".into(),
        role: outpost_shared::model::Role::Sensorhub,
        uplink: "direct".into(),
        buffered: 0,
        dropped: 0,
        version: "t".into(),
        quarantined: 0,
        clock_problem: None,
        features: Vec::new(),
        readings: vec![outpost_shared::model::Reading {
            machine_id: id.clone(),
            seq: 1,
            sample: outpost_shared::model::Sample::new("cpu.total", 42.5, outpost_shared::model::State::Ok),
        }],
    };
    let json = serde_json::to_vec(&batch).unwrap();
    let sig =
        outpost_shared::keys::sign_request(&hub, "POST", "/v1/batches", &json, chrono::Utc::now()).unwrap();
    let mut post = client(&a)
        .post(format!("{}/v1/batches", a.url()))
        .header("content-encoding", "gzip")
        .body(outpost_shared::wire::gzip(&json));
    for (k, v) in sig.to_pairs() {
        post = post.header(k, v);
    }
    let stored = post.send().await.unwrap();
    assert_eq!(stored.status(), 200, "{:?}", stored.text().await);
    let mut seen = String::new();
    let heard = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = feed.chunk().await.unwrap() {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if seen.contains("cpu.total") && seen.contains("42.5") {
                return;
            }
        }
    })
    .await;
    assert!(heard.is_ok(), "node B's feed did not hear node A's batch: {seen}");
    drop(feed);
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}
