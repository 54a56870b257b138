//! Command round trip through a connector on loopback: dashboard API call → cloud signs →
//! connector relays the long-poll → hub verifies, runs `ping`, answers in its machine session →
//! relayed unchanged by the connector → status `done` visible on the API. Prints p50/p99 over 200 commands. Then the
//! same for relay switching: `POST /v1/machines/{id}/relays/1/1` → the simulated card (on a real
//! pseudo-terminal, answering with 19200-baud timing) switches → the state read back from the card
//! is shown by the API (`relay.1.k1`). Prints p50/p99 over 100 switches, both until the hub's
//! result is stored and until the state read back is shown.
//! Run: `cargo bench --bench command_roundtrip`. Unix only: the cards need a pseudo-terminal.
// On other systems only `main` is built, and it says why nothing is measured.
#![cfg_attr(not(unix), allow(dead_code, unused_imports))]

use std::time::{Duration, Instant};

#[tokio::main]
async fn main() {
    #[cfg(unix)]
    measure().await;
    #[cfg(not(unix))]
    println!("command_roundtrip: not measured here (the simulated relay card needs a pseudo-terminal)");
}

#[cfg(unix)]
async fn measure() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = outpost_cloud::start(outpost_cloud::CloudConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().join("cloud"),
        ..Default::default()
    })
    .await
    .unwrap();
    let token = |role| {
        let trust = cloud.trust.clone();
        async move {
            let (t, _) = trust
                .new_token("bench", role, Duration::from_secs(600), "bench", "bench", chrono::Utc::now())
                .await
                .unwrap();
            Some(t.encode())
        }
    };
    let connector = outpost_connector::start(outpost_connector::ConnectorConfig {
        data_dir: dir.path().join("connector"),
        listen: "127.0.0.1:0".parse().unwrap(),
        cloud: outpost_connector::config::CloudLink {
            url: Some(cloud.url()),
            ca_file: Some(cloud.ca_file.clone()),
            enroll_token: token(outpost_shared::model::Role::Connector).await,
            ..Default::default()
        },
        ssdp: outpost_connector::config::SsdpConfig {
            advertise: false,
            search_hubs: false,
            ..Default::default()
        },
        monitor_self: false,
        ..Default::default()
    })
    .await
    .unwrap();
    let sim = outpost_sensorhub::relay::run_simulator_with(outpost_sensorhub::relay::SimOptions {
        emulate_baud: true,
        ..outpost_sensorhub::relay::SimOptions::new(1)
    })
    .unwrap();
    let relay_cfg: outpost_sensorhub::relay::RelayConfig =
        serde_json::from_value(serde_json::json!({"port": sim.path(), "poll_interval": "5s"})).unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let hub_config = outpost_sensorhub::HubConfig {
        data_dir: dir.path().join("hub"),
        uplink: outpost_sensorhub::uplink::UplinkConfig {
            connector: Some(connector.loopback_url()),
            cloud: Some(cloud.url()),
            ca_file: Some(cloud.ca_file.clone()),
            enroll_token: token(outpost_shared::model::Role::Sensorhub).await,
            discover: false,
            advertise: false,
            ..Default::default()
        },
        relay: Some(relay_cfg),
        ..Default::default()
    };
    // The hub on a runtime of its own, the one `outpost sensorhub` runs on (one thread), as in its
    // own process: on the bench's runtime it would get that runtime's workers to itself.
    let (started, machine) = tokio::sync::oneshot::channel();
    let hub_stop = stop.clone();
    let hub_thread = std::thread::spawn(move || {
        outpost_sensorhub::runtime().unwrap().block_on(async move {
            let hub = outpost_sensorhub::start(hub_config, hub_stop).await.unwrap();
            started.send(hub.machine_id.clone()).unwrap();
            hub.join().await;
        })
    });
    let machine_id = machine.await.unwrap();
    let api = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&cloud.ca_file).unwrap()).unwrap(),
        )
        .build()
        .unwrap();
    let base = cloud.url();
    let admin = cloud.admin_token.clone();
    // Wait until the hub is enrolled and talks through the connector.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let m: serde_json::Value = api
            .get(format!("{base}/v1/machines"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if m.as_array().unwrap().iter().any(|m| {
            m["id"] == machine_id.as_str() && m["uplink"].as_str().unwrap().starts_with("connector:")
        }) {
            break;
        }
        assert!(Instant::now() < deadline, "hub never came up through the connector");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut times = Vec::new();
    for i in 0..220 {
        let t = Instant::now();
        let r = admin_api(
            api.post(format!("{base}/v1/machines/{}/commands", machine_id))
                .json(&serde_json::json!({"action": "ping"})),
            &admin,
        )
        .await;
        until_done(&api, &base, &admin, &r, t).await;
        if i >= 20 {
            times.push(t.elapsed());
        }
    }
    report(
        "command round trip through a connector (API → signed command → hub → result in its session → API)",
        times,
    );

    let mut times = Vec::new();
    let mut done_times = Vec::new();
    for i in 0..110 {
        let on = i % 2 == 0;
        let t = Instant::now();
        let r = admin_api(
            api.post(format!("{base}/v1/machines/{}/relays/1/1", machine_id))
                .json(&serde_json::json!({"on": on})),
            &admin,
        )
        .await;
        let status = until_done(&api, &base, &admin, &r, t).await;
        let done = t.elapsed();
        // The result carries the card's states as it reported them, not the ones asked for.
        assert_eq!(status["result"]["state"].as_u64().map(|s| s & 1 == 1), Some(on), "{status}");
        poll(
            &format!("relay shown {on}"),
            t,
            || admin_api(api.get(format!("{base}/v1/machines/{}/sensors", machine_id)), &admin),
            |s| s.as_array().unwrap().iter().any(|r| r["sensor"] == "relay.1.k1" && r["value"] == on),
        )
        .await;
        if i >= 10 {
            times.push(t.elapsed());
            done_times.push(done);
        }
    }
    report("relay switch through a connector, until the hub's result is stored (API → signed command → hub → card → result in its session → API)", done_times);
    report(
        "relay switch through a connector (API → signed command → hub → card on a 19200-baud pty → read-back reading → API)",
        times,
    );
    drop(sim);
    stop.cancel();
    tokio::task::spawn_blocking(move || hub_thread.join().unwrap()).await.unwrap();
    connector.stop().await;
    cloud.stop().await.unwrap();
}

fn report(what: &str, mut times: Vec<Duration>) {
    times.sort();
    let p = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    println!(
        "{what}, {} runs: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        times.len(),
        p(0.5).as_secs_f64() * 1e3,
        p(0.99).as_secs_f64() * 1e3,
        times.last().unwrap().as_secs_f64() * 1e3
    );
}

/// An admin API call that must succeed; its JSON answer.
async fn admin_api(req: reqwest::RequestBuilder, admin: &str) -> serde_json::Value {
    let r = req.bearer_auth(admin).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    r.json().await.unwrap()
}

/// Waits until the command `created` (the API's answer when it was issued) shows `done`: the API
/// answers a status request with `wait` as soon as the command ends.
async fn until_done(
    api: &reqwest::Client,
    base: &str,
    admin: &str,
    created: &serde_json::Value,
    t: Instant,
) -> serde_json::Value {
    let id = created["command_id"].as_str().unwrap();
    poll(
        &format!("command {id} done"),
        t,
        || admin_api(api.get(format!("{base}/v1/commands/{id}?wait=10")), admin),
        |s| s["status"] == "done",
    )
    .await
}

/// Asks `get` again every millisecond until `done` holds for its answer (10 s at most from `t`);
/// that answer.
async fn poll<F, Fut>(
    what: &str,
    t: Instant,
    get: F,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = serde_json::Value>,
{
    loop {
        let s = get().await;
        if done(&s) {
            return s;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{what}: stuck at {s}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
