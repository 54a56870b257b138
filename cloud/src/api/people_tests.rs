//! People through the API: roles per customer on every route, no existence leak between
//! customers, cross-site requests, lockout, API tokens, and no secret in clear on disk.

use super::*;
use crate::store::people::{Customer, Grant, Role as Access};
use crate::store::testing::Keep;
use crate::store::Engines;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, Method, Request};
use std::time::Duration;
use tower::ServiceExt;

crate::both_engines!(
    an_admin_of_one_customer_finds_nothing_of_another_on_any_route,
    a_viewer_cannot_switch_an_operator_can_and_the_trail_names_each,
    a_request_from_another_site_with_the_cookie_changes_nothing,
    ten_wrong_passwords_lock_the_account_and_the_lock_is_in_the_trail,
    api_tokens_obey_their_role_and_die_when_revoked,
    admins_manage_the_users_of_their_own_customer_only,
    no_password_session_or_token_is_stored_in_clear,
    the_live_feed_carries_only_the_customers_machines,
    an_admin_without_the_required_second_factor_can_only_set_it_up,
    forged_malformed_and_oversized_credentials_get_nothing,
    acknowledgements_and_maintenance_follow_customers_and_a_change_ends_an_acknowledgement,
    a_revoked_machine_is_archived_only_by_an_admin_of_every_customer,
);

const HOST: &str = "cloud.test";
const PW: &str = "correct horse battery";

struct World {
    app: Router,
    state: AppState,
    /// Enrolled hubs of customer a (network net-a) and b (net-b).
    hub_a: String,
    hub_b: String,
}

/// Two customers with one hub each, readings from both, and users:
/// alice admin of a, olga operator of a, vic viewer of a, bob admin of b, root owner.
async fn world(engines: Engines, keep: &Keep) -> World {
    world_with(engines, keep, |_| {}).await
}

async fn world_with(
    engines: Engines,
    keep: &Keep,
    tune: impl FnOnce(&mut crate::config::PeopleConfig),
) -> World {
    let dir = keep.dir.path().to_path_buf();
    let trust = Trust::open(&dir, engines.trust.clone()).unwrap();
    let commands = Commands::new(engines.commands.clone());
    let store: Store = engines.readings.clone();
    let mut config = CloudConfig::default();
    config.people.slow_delay = Duration::ZERO;
    tune(&mut config.people);
    let db = engines.people.clone();
    let people = crate::people::People::new(db.clone(), config.people.clone()).unwrap();
    let now = chrono::Utc::now();
    let mut hubs = Vec::new();
    for net in ["net-a", "net-b"] {
        let key = outpost_shared::keys::KeyPair::generate().unwrap();
        let (token, _) = trust
            .new_token(net, outpost_shared::model::Role::Sensorhub, Duration::from_secs(60), "", "test", now)
            .await
            .unwrap();
        let req = crate::trust::EnrollRequest {
            token: Some(token.encode()),
            sealed_token: None,
            public_key: key.public().to_pem(),
            role: outpost_shared::model::Role::Sensorhub,
            hostname: format!("host-{net}"),
            lan_cert: None,
        };
        trust.enroll(&req, now).await.unwrap();
        let id = key.machine_id().to_string();
        let reading = outpost_shared::model::Reading {
            machine_id: id.clone(),
            seq: 1,
            // In error: there is a problem to acknowledge.
            sample: outpost_shared::model::Sample::new("cpu", 99.0, outpost_shared::model::State::Error)
                .at(now),
        };
        let batch = outpost_shared::model::Batch {
            machine_id: id.clone(),
            hostname: format!("host-{net}"),
            role: outpost_shared::model::Role::Sensorhub,
            uplink: "direct".into(),
            buffered: 0,
            dropped: 0,
            version: "t".into(),
            quarantined: 0,
            clock_problem: None,
            features: Vec::new(),
            readings: vec![reading],
        };
        store.ingest(batch, now).await.unwrap();
        store.commit().await.unwrap();
        hubs.push(id);
    }
    for (id, net) in [("a", "net-a"), ("b", "net-b")] {
        db.put_customer(&Customer { id: id.into(), name: id.to_uppercase(), networks: vec![net.into()] })
            .await
            .unwrap();
    }
    let g = |c: &str, role| vec![Grant { customer: c.into(), role }];
    people.add_user("alice", PW, false, g("a", Access::Admin), now).await.unwrap();
    people.add_user("olga", PW, false, g("a", Access::Operator), now).await.unwrap();
    people.add_user("vic", PW, false, g("a", Access::Viewer), now).await.unwrap();
    people.add_user("bob", PW, false, g("b", Access::Admin), now).await.unwrap();
    people.add_user("root", PW, true, vec![], now).await.unwrap();
    let silences = crate::silences::Silences::open(engines.silences.clone(), trust.clone()).await.unwrap();
    let state = AppState::new(store, "local-secret".into(), trust, commands, people, Arc::new(config))
        .with_silences(silences);
    World { app: router(state.clone()), state, hub_a: hubs.remove(0), hub_b: hubs.remove(0) }
}

/// How a request authenticates.
#[derive(Clone)]
enum Auth {
    None,
    /// A session cookie, sent from this origin's page.
    Cookie(String),
    /// A session cookie, sent from a page of another site.
    CrossSite(String),
    Bearer(String),
}

fn request(method: Method, path: &str, auth: &Auth, body: Option<serde_json::Value>) -> Request<Body> {
    let mut r = Request::builder().method(method).uri(path).header(header::HOST, HOST);
    match auth {
        Auth::None => {}
        Auth::Cookie(c) => {
            r = r
                .header(header::COOKIE, format!("theme=dark; {}={c}", auth::SESSION_COOKIE))
                .header(header::ORIGIN, format!("https://{HOST}"))
        }
        Auth::CrossSite(c) => {
            r = r
                .header(header::COOKIE, format!("{}={c}", auth::SESSION_COOKIE))
                .header(header::ORIGIN, "https://evil.example")
        }
        Auth::Bearer(t) => r = r.header(header::AUTHORIZATION, format!("Bearer {t}")),
    }
    let body = match body {
        Some(v) => {
            r = r.header(header::CONTENT_TYPE, "application/json");
            Body::from(serde_json::to_vec(&v).unwrap())
        }
        None => Body::empty(),
    };
    let mut r = r.body(body).unwrap();
    r.extensions_mut().insert(ConnectInfo(std::net::SocketAddr::from(([127, 0, 0, 1], 4000))));
    r
}

async fn call(w: &World, req: Request<Body>) -> (StatusCode, HeaderMap, serde_json::Value) {
    let r = tokio::time::timeout(Duration::from_secs(10), w.app.clone().oneshot(req)).await.unwrap().unwrap();
    let (parts, body) = r.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 22).await.unwrap();
    (parts.status, parts.headers, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
}

use axum::http::HeaderMap;

async fn go(
    w: &World,
    m: Method,
    path: &str,
    auth: &Auth,
    body: Option<serde_json::Value>,
) -> (StatusCode, serde_json::Value) {
    let (s, _, v) = call(w, request(m, path, auth, body)).await;
    (s, v)
}

/// Signs in through the API and returns the session cookie's value.
async fn sign_in(w: &World, name: &str) -> String {
    let body = serde_json::json!({"name": name, "password": PW});
    let (status, headers, v) = call(w, request(Method::POST, "/v1/session", &Auth::None, Some(body))).await;
    assert_eq!(status, StatusCode::OK, "{name}: {v}");
    let cookie = headers.get(header::SET_COOKIE).unwrap().to_str().unwrap().to_string();
    for attr in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    let value = cookie.split(';').next().unwrap().split_once('=').unwrap().1.to_string();
    assert!(value.len() >= 43, "256 bits");
    value
}

async fn audit(w: &World) -> Vec<crate::commands::AuditEntry> {
    w.state.commands.audit(None, 10_000).await.unwrap()
}

async fn an_admin_of_one_customer_finds_nothing_of_another_on_any_route(engines: Engines, keep: &Keep) {
    let w = world(engines, keep).await;
    let alice = Auth::Cookie(sign_in(&w, "alice").await);
    let bob = Auth::Cookie(sign_in(&w, "bob").await);
    let a = w.hub_a.clone();

    // Objects of customer a, made by alice: a command, an enrollment token, an API token.
    let (s, cmd) = go(
        &w,
        Method::POST,
        &format!("/v1/machines/{a}/relays/1/2"),
        &alice,
        Some(serde_json::json!({"on": true})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{cmd}");
    let cmd = cmd["command_id"].as_str().unwrap().to_string();
    let (s, tok) =
        go(&w, Method::POST, "/v1/enrollment-tokens", &alice, Some(serde_json::json!({"network": "net-a"})))
            .await;
    assert_eq!(s, StatusCode::OK, "{tok}");
    let enroll_id = tok["id"].as_str().unwrap().to_string();
    let (s, api) = go(
        &w,
        Method::POST,
        "/v1/api-tokens",
        &alice,
        Some(serde_json::json!({"role": "viewer", "customer": "a"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{api}");
    let api_id = api["id"].as_str().unwrap().to_string();

    // Every route that names a machine, command or token of a: bob gets exactly what an unknown
    // one gets, and alice gets it.
    let unknown = "0".repeat(32);
    let by_id: Vec<(Method, String, Option<serde_json::Value>)> = vec![
        (Method::GET, "/v1/machines/{m}/sensors".into(), None),
        (Method::GET, "/v1/machines/{m}/readings?sensor=cpu".into(), None),
        (Method::POST, "/v1/machines/{m}/sensors/cpu/ack".into(), None),
        (Method::POST, "/v1/machines/{m}/commands".into(), Some(serde_json::json!({"action": "ping"}))),
        (Method::POST, "/v1/machines/{m}/relays/1/1".into(), Some(serde_json::json!({"on": false}))),
        (Method::POST, "/v1/machines/{m}/seal".into(), Some(serde_json::json!({"secret": "x"}))),
        (Method::GET, "/v1/machines/{m}/mail-commands".into(), None),
        (
            Method::PUT,
            "/v1/machines/{m}/mail-commands".into(),
            Some(serde_json::json!({"senders": ["a@b.c"]})),
        ),
        (Method::DELETE, "/v1/machines/{m}/mail-commands".into(), None),
        (Method::DELETE, "/v1/machines/{m}".into(), None),
    ];
    for (m, path, body) in &by_id {
        let (s_unknown, v_unknown) =
            go(&w, m.clone(), &path.replace("{m}", &unknown), &bob, body.clone()).await;
        let (s_bob, v_bob) = go(&w, m.clone(), &path.replace("{m}", &a), &bob, body.clone()).await;
        assert_eq!(s_bob, StatusCode::NOT_FOUND, "{m} {path}: {v_bob}");
        assert_eq!(
            (s_bob, &v_bob),
            (s_unknown, &v_unknown),
            "{m} {path}: another customer's machine looks unknown"
        );
    }
    for (path, what) in [
        (format!("/v1/commands/{cmd}"), "command"),
        (format!("/v1/enrollment-tokens/{enroll_id}"), "enrollment token"),
        (format!("/v1/api-tokens/{api_id}"), "API token"),
        ("/v1/users/alice".to_string(), "user"),
        ("/v1/users/alice/grants/b".to_string(), "user grant"),
    ] {
        let m = if what == "command" {
            Method::GET
        } else if what == "user grant" {
            Method::PUT
        } else {
            Method::DELETE
        };
        let body = (what == "user grant").then(|| serde_json::json!({"role": "viewer"}));
        let (s, v) = go(&w, m, &path, &bob, body).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{what}: {v}");
    }
    // Enrollment into a's network, even naming b as customer.
    for body in
        [serde_json::json!({"network": "net-a"}), serde_json::json!({"network": "net-a", "customer": "b"})]
    {
        let (s, v) = go(&w, Method::POST, "/v1/enrollment-tokens", &bob, Some(body)).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    }

    // A hub a's machine found on its LAN (a connector's report).
    let stray = outpost_shared::model::UnattachedHub {
        machine_id: "ab".repeat(16),
        location: "https://10.0.0.9:8444".into(),
        server: String::new(),
        connector: a.clone(),
        seen_at: chrono::Utc::now(),
    };
    w.state.store.note_unattached(&[stray]).await.unwrap();
    w.state.store.commit().await.unwrap();
    let (_, v) = go(&w, Method::GET, "/v1/hubs/unattached", &alice, None).await;
    assert_eq!(v.as_array().map(|l| l.len()), Some(1), "{v}");

    // Lists: bob sees b's and nothing of a's; counted, not just hidden.
    let (_, machines) = go(&w, Method::GET, "/v1/machines", &bob, None).await;
    let ids: Vec<&str> = machines.as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![w.hub_b.as_str()]);
    let (_, machines) = go(&w, Method::GET, "/v1/machines", &alice, None).await;
    assert_eq!(machines.as_array().unwrap().len(), 1);
    assert_eq!(machines[0]["id"], a.as_str());
    assert_eq!(machines[0]["customer"], "a");
    for path in [
        "/v1/enrollment-tokens",
        "/v1/audit",
        &format!("/v1/audit?machine={a}"),
        "/v1/users",
        "/v1/customers",
        "/v1/hubs/unattached",
        "/v1/api-tokens",
        "/v1/me",
    ] {
        let (s, v) = go(&w, Method::GET, path, &bob, None).await;
        assert_eq!(s, StatusCode::OK, "{path}: {v}");
        let text = v.to_string();
        for secret in [a.as_str(), "net-a", &enroll_id, &api_id, &cmd, "alice", &"ab".repeat(16)] {
            assert!(!text.contains(secret), "{path} shows bob `{secret}` of customer a: {text}");
        }
    }
    let (_, audit_a) = go(&w, Method::GET, "/v1/audit", &alice, None).await;
    let text = audit_a.to_string();
    assert!(
        text.contains(&cmd) && text.contains("user:alice"),
        "alice sees her own customer's trail: {text}"
    );
    assert!(!text.contains(&w.hub_b), "{text}");

    // Alice on her own machine: every route answers.
    for (m, path, body) in &by_id[..by_id.len() - 1] {
        let (s, v) = go(&w, m.clone(), &path.replace("{m}", &a), &alice, body.clone()).await;
        // A hub has no mail-command grant to show, change or withdraw (404, 400): but no refusal.
        let mail = path.ends_with("mail-commands");
        assert!(
            s.is_success() || (mail && s.is_client_error() && s != StatusCode::FORBIDDEN),
            "{m} {path}: {s} {v}"
        );
    }
    let (s, _) = go(&w, Method::GET, &format!("/v1/commands/{cmd}"), &alice, None).await;
    assert_eq!(s, StatusCode::OK);
    // The owner sees both.
    let root = Auth::Cookie(sign_in(&w, "root").await);
    let (_, machines) = go(&w, Method::GET, "/v1/machines", &root, None).await;
    assert_eq!(machines.as_array().unwrap().len(), 2);
}

async fn a_viewer_cannot_switch_an_operator_can_and_the_trail_names_each(engines: Engines, keep: &Keep) {
    let w = world(engines, keep).await;
    let a = w.hub_a.clone();
    let relay = format!("/v1/machines/{a}/relays/1/1");
    let on = Some(serde_json::json!({"on": true}));
    let vic = Auth::Cookie(sign_in(&w, "vic").await);
    let (s, v) = go(&w, Method::POST, &relay, &vic, on.clone()).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(v["error"].as_str().unwrap().contains("operator"), "{v}");
    let (s, _) = go(&w, Method::GET, &format!("/v1/machines/{a}/sensors"), &vic, None).await;
    assert_eq!(s, StatusCode::OK, "a viewer sees");
    let olga = Auth::Cookie(sign_in(&w, "olga").await);
    let (s, v) = go(&w, Method::POST, &relay, &olga, on.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, _) = go(&w, Method::DELETE, &format!("/v1/machines/{a}"), &olga, None).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "revoking is an admin's");
    // Acknowledging is an operator's too.
    let ack = format!("/v1/machines/{a}/sensors/cpu/ack");
    assert_eq!(go(&w, Method::POST, &ack, &vic, None).await.0, StatusCode::FORBIDDEN);
    let (s, v) = go(&w, Method::POST, &ack, &olga, None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        go(&w, Method::POST, &format!("/v1/machines/{a}/sensors/nope/ack"), &olga, None).await.0,
        StatusCode::NOT_FOUND
    );

    let trail = audit(&w).await;
    assert!(trail.iter().any(|e| e.who == "user:vic" && e.event == "refused" && e.machine == a), "{trail:?}");
    assert!(trail.iter().any(|e| e.who == "user:olga" && e.event == "created" && e.action == "relay.set"));
    assert!(trail.iter().any(|e| e.who == "user:olga" && e.action == "sign-in" && e.event == "done"));
    assert!(trail
        .iter()
        .any(|e| e.who == "user:olga" && e.action == "ack" && e.parameters["sensor"] == "cpu"));
    assert!(!trail.iter().any(|e| e.who == "admin"), "nobody is just `admin` any more");

    // The CLI's admin token: owner from the host, refused from anywhere else.
    let local = Auth::Bearer("local-secret".into());
    let (s, v) = go(&w, Method::POST, &relay, &local, on.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert!(audit(&w).await.iter().any(|e| e.who == "local-admin" && e.event == "created"));
    let mut remote = request(Method::GET, "/v1/machines", &local, None);
    remote.extensions_mut().insert(ConnectInfo(std::net::SocketAddr::from(([192, 0, 2, 7], 4000))));
    assert_eq!(call(&w, remote).await.0, StatusCode::UNAUTHORIZED);
}

async fn a_request_from_another_site_with_the_cookie_changes_nothing(engines: Engines, keep: &Keep) {
    let w = world(engines, keep).await;
    let cookie = sign_in(&w, "olga").await;
    let relay = format!("/v1/machines/{}/relays/1/1", w.hub_a);
    let on = Some(serde_json::json!({"on": true}));
    let before = audit(&w).await.len();
    let (s, _) = go(&w, Method::POST, &relay, &Auth::CrossSite(cookie.clone()), on.clone()).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // Sec-Fetch-Site wins over a matching Origin; no Origin at all is refused too.
    let mut r = request(Method::POST, &relay, &Auth::Cookie(cookie.clone()), on.clone());
    r.headers_mut().insert("sec-fetch-site", "cross-site".parse().unwrap());
    assert_eq!(call(&w, r).await.0, StatusCode::FORBIDDEN);
    let mut r = request(Method::POST, &relay, &Auth::Cookie(cookie.clone()), on.clone());
    r.headers_mut().remove(header::ORIGIN);
    assert_eq!(call(&w, r).await.0, StatusCode::FORBIDDEN);
    for path in ["/v1/sessions", "/v1/session"] {
        let (s, _) = go(&w, Method::DELETE, path, &Auth::CrossSite(cookie.clone()), None).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{path}");
    }
    assert_eq!(audit(&w).await.len(), before, "nothing happened");
    // A cross-site sign-in (login CSRF) is refused as well.
    let mut r = request(
        Method::POST,
        "/v1/session",
        &Auth::None,
        Some(serde_json::json!({"name": "olga", "password": PW})),
    );
    r.headers_mut().insert(header::ORIGIN, "https://evil.example".parse().unwrap());
    assert_eq!(call(&w, r).await.0, StatusCode::FORBIDDEN);
    // The same request from the dashboard works, and sign-out ends the session for good.
    let (s, _) = go(&w, Method::POST, &relay, &Auth::Cookie(cookie.clone()), on.clone()).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _) = go(&w, Method::DELETE, "/v1/session", &Auth::Cookie(cookie.clone()), None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = go(&w, Method::GET, "/v1/machines", &Auth::Cookie(cookie), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

async fn ten_wrong_passwords_lock_the_account_and_the_lock_is_in_the_trail(engines: Engines, keep: &Keep) {
    let w = world(engines, keep).await;
    let wrong = serde_json::json!({"name": "vic", "password": "not the password"});
    for i in 1..=10 {
        let (s, v) = go(&w, Method::POST, "/v1/session", &Auth::None, Some(wrong.clone())).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "attempt {i}: {v}");
    }
    let right = serde_json::json!({"name": "vic", "password": PW});
    let (s, headers, v) = call(&w, request(Method::POST, "/v1/session", &Auth::None, Some(right))).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert!(headers.get(header::SET_COOKIE).is_none());
    assert!(headers.get(header::RETRY_AFTER).is_some());
    let trail = audit(&w).await;
    assert!(trail.iter().any(|e| e.action == "account-locked" && e.parameters["user"] == "vic"), "{trail:?}");
    assert_eq!(trail.iter().filter(|e| e.action == "sign-in" && e.event == "refused").count(), 11);
    // Only an owner sees sign-ins of people.
    let alice = Auth::Cookie(sign_in(&w, "alice").await);
    let (_, v) = go(&w, Method::GET, "/v1/audit", &alice, None).await;
    assert!(!v.to_string().contains("account-locked"));
    let root = Auth::Cookie(sign_in(&w, "root").await);
    let (_, v) = go(&w, Method::GET, "/v1/audit", &root, None).await;
    assert!(v.to_string().contains("account-locked"));
}

async fn api_tokens_obey_their_role_and_die_when_revoked(engines: Engines, keep: &Keep) {
    let w = world(engines, keep).await;
    let alice = Auth::Cookie(sign_in(&w, "alice").await);
    let relay = format!("/v1/machines/{}/relays/1/1", w.hub_a);
    let on = Some(serde_json::json!({"on": true}));
    let (s, v) = go(
        &w,
        Method::POST,
        "/v1/api-tokens",
        &alice,
        Some(serde_json::json!({"role": "viewer", "customer": "a", "label": "grafana"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let viewer = Auth::Bearer(v["token"].as_str().unwrap().to_string());
    let id = v["id"].as_str().unwrap().to_string();
    let (s, list) = go(&w, Method::GET, "/v1/machines", &viewer, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 1);
    let (s, _) = go(&w, Method::POST, &relay, &viewer, on.clone()).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a viewer token cannot switch");
    assert!(audit(&w).await.iter().any(|e| e.who == format!("token:{id} (alice)") && e.event == "refused"));
    // Tokens cannot make tokens or users.
    let (s, _) = go(
        &w,
        Method::POST,
        "/v1/api-tokens",
        &viewer,
        Some(serde_json::json!({"role": "viewer", "customer": "a"})),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // An operator token acts, named in the trail; no token above the user's own role.
    let (s, v) = go(
        &w,
        Method::POST,
        "/v1/api-tokens",
        &alice,
        Some(serde_json::json!({"role": "operator", "customer": "a"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let op = Auth::Bearer(v["token"].as_str().unwrap().to_string());
    let (s, _) = go(&w, Method::POST, &relay, &op, on.clone()).await;
    assert_eq!(s, StatusCode::CREATED);
    let olga = Auth::Cookie(sign_in(&w, "olga").await);
    let (s, _) = go(
        &w,
        Method::POST,
        "/v1/api-tokens",
        &olga,
        Some(serde_json::json!({"role": "admin", "customer": "a"})),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // Listed with its last use, never its secret; revoked, it fails at once.
    let (_, list) = go(&w, Method::GET, "/v1/api-tokens", &alice, None).await;
    let row = list.as_array().unwrap().iter().find(|t| t["id"] == id.as_str()).unwrap();
    assert!(!row["last_used"].is_null() && row.get("token").is_none() && row.get("hash").is_none(), "{row}");
    let (s, _) = go(&w, Method::DELETE, &format!("/v1/api-tokens/{id}"), &alice, None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = go(&w, Method::GET, "/v1/machines", &viewer, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(audit(&w).await.iter().any(|e| e.action == "api-token-revoked" && e.who == "user:alice"));
}

async fn admins_manage_the_users_of_their_own_customer_only(engines: Engines, keep: &Keep) {
    let w = world(engines, keep).await;
    let alice = Auth::Cookie(sign_in(&w, "alice").await);
    let new = |name: &str, customer: &str| serde_json::json!({"name": name, "password": PW, "grants": [{"customer": customer, "role": "viewer"}]});
    let (s, v) = go(&w, Method::POST, "/v1/users", &alice, Some(new("nina", "a"))).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, _) = go(&w, Method::POST, "/v1/users", &alice, Some(new("nils", "b"))).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = go(
        &w,
        Method::POST,
        "/v1/users",
        &alice,
        Some(serde_json::json!({"name": "x", "password": PW, "owner": true})),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) =
        go(&w, Method::PUT, "/v1/users/nina/grants/a", &alice, Some(serde_json::json!({"role": "operator"})))
            .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) =
        go(&w, Method::PUT, "/v1/users/nina/grants/*", &alice, Some(serde_json::json!({"role": "viewer"})))
            .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "only owners grant over every customer");
    let nina = Auth::Cookie(sign_in(&w, "nina").await);
    let (s, _) = go(
        &w,
        Method::POST,
        &format!("/v1/machines/{}/relays/1/1", w.hub_a),
        &nina,
        Some(serde_json::json!({"on": true})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "the new grant works");
    // Taking the grant away ends what she can do, at once.
    let (s, _) =
        go(&w, Method::PUT, "/v1/users/nina/grants/a", &alice, Some(serde_json::json!({"role": null}))).await;
    assert_eq!(s, StatusCode::OK);
    let (_, list) = go(&w, Method::GET, "/v1/machines", &nina, None).await;
    assert_eq!(list.as_array().unwrap().len(), 0);
    let trail = audit(&w).await;
    assert!(trail.iter().any(|e| e.action == "grant-changed" && e.who == "user:alice"));
    assert!(trail.iter().any(|e| e.action == "user-added" && e.parameters["user"] == "nina"));
}

/// Sign-ins, a setup, tokens: afterwards no password, session cookie or token is anywhere in the
/// data directory's files.
async fn no_password_session_or_token_is_stored_in_clear(engines: Engines, keep: &Keep) {
    let w = world(engines, keep).await;
    let cookie = sign_in(&w, "alice").await;
    let alice = Auth::Cookie(cookie.clone());
    let (_, v) = go(
        &w,
        Method::POST,
        "/v1/api-tokens",
        &alice,
        Some(serde_json::json!({"role": "viewer", "customer": "a"})),
    )
    .await;
    let token = v["token"].as_str().unwrap().to_string();
    let (_, _) = go(&w, Method::GET, "/v1/machines", &Auth::Bearer(token.clone()), None).await;
    let secret_part = token.splitn(3, '_').nth(2).unwrap().to_string(); // base64url may hold '_' itself
    let _ = go(
        &w,
        Method::POST,
        "/v1/session",
        &Auth::None,
        Some(serde_json::json!({"name": "bob", "password": "a wrong guess!"})),
    )
    .await;
    w.state.store.commit().await.unwrap();
    let mut files = Vec::new();
    let mut stack = keep.stored_in.clone();
    while let Some(d) = stack.pop() {
        // The database server's files change under other tests: what is gone meanwhile is skipped.
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p)
            } else {
                files.push(p)
            }
        }
    }
    assert!(files.len() > 2, "{files:?}");
    let mut found_hash = false;
    for f in files {
        let Ok(bytes) = std::fs::read(&f) else { continue };
        for needle in [PW, "a wrong guess!", cookie.as_str(), token.as_str(), secret_part.as_str()] {
            assert!(
                !bytes.windows(needle.len()).any(|x| x == needle.as_bytes()),
                "{} holds `{needle}`",
                f.display()
            );
        }
        found_hash |= bytes.windows(10).any(|x| x == b"$argon2id$");
    }
    assert!(found_hash, "the search looked where the users are");
}

async fn the_live_feed_carries_only_the_customers_machines(engines: Engines, keep: &Keep) {
    use futures_util::StreamExt;
    let w = world(engines, keep).await;
    let bob = Auth::Cookie(sign_in(&w, "bob").await);
    let r = w.app.clone().oneshot(request(Method::GET, "/v1/events", &bob, None)).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let mut body = r.into_body().into_data_stream();
    for m in [&w.hub_a, &w.hub_b] {
        w.state.events.send(LiveEvent::Sensors { machine: m.clone(), sensors: Vec::new() }).unwrap();
    }
    let mut seen = String::new();
    while !seen.contains(&w.hub_b) {
        let chunk =
            tokio::time::timeout(Duration::from_secs(5), body.next()).await.unwrap().unwrap().unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(!seen.contains(&w.hub_a), "bob's feed carried customer a's machine: {seen}");
}

async fn an_admin_without_the_required_second_factor_can_only_set_it_up(engines: Engines, keep: &Keep) {
    let w = world_with(engines, keep, |p| p.require_totp_for_admins = true).await;
    let alice = Auth::Cookie(sign_in(&w, "alice").await);
    let (_, me) = go(&w, Method::GET, "/v1/me", &alice, None).await;
    assert_eq!(me["totp_required"], true, "{me}");
    let (_, list) = go(&w, Method::GET, "/v1/machines", &alice, None).await;
    assert_eq!(list.as_array().unwrap().len(), 0, "sees nothing yet");
    let (s, _) =
        go(&w, Method::POST, &format!("/v1/machines/{}/sensors/cpu/ack", w.hub_a), &alice, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = go(
        &w,
        Method::POST,
        "/v1/api-tokens",
        &alice,
        Some(serde_json::json!({"role": "viewer", "customer": "a"})),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "no token around the second factor");
    // A viewer is not asked for one.
    let vic = Auth::Cookie(sign_in(&w, "vic").await);
    let (_, list) = go(&w, Method::GET, "/v1/machines", &vic, None).await;
    assert_eq!(list.as_array().unwrap().len(), 1);

    let (s, v) = go(&w, Method::POST, "/v1/me/totp", &alice, None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let secret = v["secret"].as_str().unwrap().to_string();
    let now = chrono::Utc::now().timestamp() as u64;
    let (s, v) =
        go(&w, Method::PUT, "/v1/me/totp", &alice, Some(serde_json::json!({"code": "000000x"}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let code = crate::people::totp::code_for(&secret, now);
    let (s, v) = go(&w, Method::PUT, "/v1/me/totp", &alice, Some(serde_json::json!({"code": code}))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, list) = go(&w, Method::GET, "/v1/machines", &alice, None).await;
    assert_eq!(list.as_array().unwrap().len(), 1, "the same session acts now");

    // From now on sign-in asks for a code.
    let (s, v) = go(
        &w,
        Method::POST,
        "/v1/session",
        &Auth::None,
        Some(serde_json::json!({"name": "alice", "password": PW})),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(v["totp_required"], true, "{v}");
    let next = crate::people::totp::code_for(&secret, now + 30);
    let body = serde_json::json!({"name": "alice", "password": PW, "code": next});
    let (s, _) = go(&w, Method::POST, "/v1/session", &Auth::None, Some(body.clone())).await;
    // The next step's code is accepted while the clocks are within one step of each other.
    assert_eq!(s, StatusCode::OK);
    let (s, _) = go(&w, Method::POST, "/v1/session", &Auth::None, Some(body)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "a code works once");
    // An owner resets it for a lost phone; the user's sessions end.
    let root = Auth::Cookie(sign_in(&w, "root").await);
    let (_, me) = go(&w, Method::GET, "/v1/me", &root, None).await;
    assert_eq!(me["totp_required"], true, "the owner too");
    let owner = Auth::Bearer("local-secret".into());
    let (s, _) = go(&w, Method::DELETE, "/v1/users/alice/totp", &owner, None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = go(&w, Method::GET, "/v1/me", &alice, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let trail = audit(&w).await;
    assert!(trail.iter().any(|e| e.action == "totp-enabled" && e.who == "user:alice"));
    assert!(trail.iter().any(|e| e.action == "totp-reset" && e.who == "local-admin"));
}

async fn forged_malformed_and_oversized_credentials_get_nothing(engines: Engines, keep: &Keep) {
    let w = world(engines, keep).await;
    // Forged, oversized and empty cookies, unknown and malformed bearer tokens.
    for auth in [
        Auth::Cookie("A".repeat(43)),
        Auth::Cookie("x".repeat(4000)),
        Auth::Cookie(String::new()),
        Auth::Bearer("opt_0123456789abcdef_forged".into()),
        Auth::Bearer("not a token at all".into()),
        Auth::Bearer(String::new()),
    ] {
        let (s, _) = go(&w, Method::GET, "/v1/machines", &auth, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    // An oversized sign-in body is refused before anything is parsed or hashed; a malformed one
    // too; a huge password is just wrong.
    let big = serde_json::json!({"name": "alice", "password": "x".repeat(100_000)});
    let (s, _) = go(&w, Method::POST, "/v1/session", &Auth::None, Some(big)).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    let mut r = request(Method::POST, "/v1/session", &Auth::None, None);
    *r.body_mut() = Body::from("{\"name\": \"alice\", \"password\": ");
    r.headers_mut().insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
    assert!(call(&w, r).await.0.is_client_error());
    let long = serde_json::json!({"name": "alice", "password": "x".repeat(5000)});
    let (s, _) = go(&w, Method::POST, "/v1/session", &Auth::None, Some(long)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // A removed user's session and tokens end at once.
    let vic = Auth::Cookie(sign_in(&w, "vic").await);
    let root = Auth::Cookie(sign_in(&w, "root").await);
    let (s, _) = go(&w, Method::DELETE, "/v1/users/vic", &root, None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = go(&w, Method::GET, "/v1/machines", &vic, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

async fn acknowledgements_and_maintenance_follow_customers_and_a_change_ends_an_acknowledgement(
    engines: Engines,
    keep: &Keep,
) {
    let w = world(engines, keep).await;
    let olga = Auth::Cookie(sign_in(&w, "olga").await);
    let vic = Auth::Cookie(sign_in(&w, "vic").await);
    let bob = Auth::Cookie(sign_in(&w, "bob").await);
    let (a, b) = (w.hub_a.clone(), w.hub_b.clone());
    let ack = format!("/v1/machines/{a}/sensors/cpu/ack");

    // An operator acknowledges with a comment; the viewer of the customer sees who and why.
    let comment = serde_json::json!({"comment": "replacing the fan"});
    let (s, v) = go(&w, Method::POST, &ack, &olga, Some(comment.clone())).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["ack"]["by"], "user:olga");
    let (_, list) = go(&w, Method::GET, "/v1/silences", &vic, None).await;
    assert_eq!(list["acks"][0]["comment"], "replacing the fan", "{list}");
    assert_eq!(list["acks"][0]["state"], "error");
    // Another customer's admin sees none of it and cannot withdraw it.
    let (_, theirs) = go(&w, Method::GET, "/v1/silences", &bob, None).await;
    assert_eq!(theirs["acks"].as_array().unwrap().len(), 0, "{theirs}");
    assert_eq!(go(&w, Method::DELETE, &ack, &bob, None).await.0, StatusCode::NOT_FOUND);
    // A comment that is not one line of text is refused, naming the field.
    let (s, v) = go(&w, Method::POST, &ack, &olga, Some(serde_json::json!({"comment": "a\u{7}b"}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().contains("comment"), "{v}");

    // The sensor changes (recovers) after the acknowledged reading: the acknowledgement ends.
    let later = chrono::Utc::now() + chrono::Duration::seconds(1);
    let silences = w.state.silences.clone().unwrap();
    assert!(
        silences.changed(&a, "cpu", later - chrono::Duration::hours(1)).await.unwrap().is_none(),
        "an older change does not end it"
    );
    assert!(silences.changed(&a, "cpu", later).await.unwrap().is_some());
    let (_, list) = go(&w, Method::GET, "/v1/silences", &vic, None).await;
    assert_eq!(list["acks"].as_array().unwrap().len(), 0, "{list}");
    assert_eq!(
        go(&w, Method::DELETE, &ack, &olga, None).await.0,
        StatusCode::NOT_FOUND,
        "nothing left to withdraw"
    );

    // Maintenance: an operator of a opens a window over a's machine; b's admin sees nothing.
    let now = chrono::Utc::now();
    let window = serde_json::json!({
        "machine": a,
        "once": {"start": now - chrono::Duration::minutes(1), "end": now + chrono::Duration::hours(1)},
        "comment": "disk swap",
    });
    assert_eq!(
        go(&w, Method::POST, "/v1/maintenance", &vic, Some(window.clone())).await.0,
        StatusCode::FORBIDDEN
    );
    let (s, v) = go(&w, Method::POST, "/v1/maintenance", &olga, Some(window)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert!(v["open_until"].is_string(), "open now: {v}");
    let id = v["id"].as_str().unwrap().to_string();
    assert!(silences.maintenance_until(&a, chrono::Utc::now()).is_some());
    assert!(silences.maintenance_until(&b, chrono::Utc::now()).is_none());
    let (_, theirs) = go(&w, Method::GET, "/v1/silences", &bob, None).await;
    assert_eq!(theirs["maintenance"].as_array().unwrap().len(), 0, "{theirs}");
    assert_eq!(
        go(&w, Method::DELETE, &format!("/v1/maintenance/{id}"), &bob, None).await.0,
        StatusCode::NOT_FOUND
    );
    // Another customer's machine or network is not found; a bad schedule names its field.
    let (s, _) = go(
        &w,
        Method::POST,
        "/v1/maintenance",
        &olga,
        Some(serde_json::json!({
        "machine": b, "weekly": {"days": ["sun"], "start": "02:00", "minutes": 60}})),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = go(
        &w,
        Method::POST,
        "/v1/maintenance",
        &olga,
        Some(serde_json::json!({
        "network": "net-b", "weekly": {"days": ["sun"], "start": "02:00", "minutes": 60}})),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = go(
        &w,
        Method::POST,
        "/v1/maintenance",
        &olga,
        Some(serde_json::json!({
        "network": "net-a", "weekly": {"days": ["sun"], "start": "2 am", "minutes": 60}})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().contains("weekly.start"), "{v}");
    let (s, v) = go(
        &w,
        Method::POST,
        "/v1/maintenance",
        &olga,
        Some(serde_json::json!({
        "network": "net-a", "weekly": {"days": ["sun"], "start": "02:00", "minutes": 60}})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(
        go(&w, Method::DELETE, &format!("/v1/maintenance/{id}"), &olga, None).await.0,
        StatusCode::NO_CONTENT
    );
    assert!(silences.maintenance_until(&a, chrono::Utc::now()).is_none(), "removed at once");

    let trail = audit(&w).await;
    for action in ["ack", "maintenance", "maintenance-removed"] {
        assert!(trail.iter().any(|e| e.action == action && e.who == "user:olga"), "{action}: {trail:?}");
    }
    assert!(trail.iter().any(|e| e.action == "ack" && e.parameters["comment"] == "replacing the fan"));
}

async fn a_revoked_machine_is_archived_only_by_an_admin_of_every_customer(engines: Engines, keep: &Keep) {
    let w = world(engines, keep).await;
    let root = Auth::Cookie(sign_in(&w, "root").await);
    let alice = Auth::Cookie(sign_in(&w, "alice").await);
    let a = w.hub_a.clone();
    let archive = format!("/v1/machines/{a}/archive");
    assert_eq!(go(&w, Method::POST, &archive, &root, None).await.0, StatusCode::CONFLICT, "enrolled");
    assert_eq!(go(&w, Method::DELETE, &format!("/v1/machines/{a}"), &alice, None).await.0, StatusCode::OK);
    // Revoked, it belongs to no customer: alice no longer finds it.
    assert_eq!(go(&w, Method::POST, &archive, &alice, None).await.0, StatusCode::NOT_FOUND);
    let (s, v) = go(&w, Method::POST, &archive, &root, None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let row =
        |list: serde_json::Value| list.as_array().unwrap().iter().find(|m| m["id"] == a.as_str()).cloned();
    let listed = row(go(&w, Method::GET, "/v1/machines", &root, None).await.1).unwrap();
    assert!(listed["archived_at"].is_string() && listed["revoked"] == true, "{listed}");
    // Brought back, and the readings were there all along.
    assert_eq!(go(&w, Method::DELETE, &archive, &root, None).await.0, StatusCode::OK);
    let listed = row(go(&w, Method::GET, "/v1/machines", &root, None).await.1).unwrap();
    assert!(listed.get("archived_at").is_none(), "{listed}");
    let (_, readings) =
        go(&w, Method::GET, &format!("/v1/machines/{a}/readings?sensor=cpu"), &root, None).await;
    assert_eq!(readings.as_array().unwrap().len(), 1, "{readings}");
    let trail = audit(&w).await;
    assert!(trail.iter().any(|e| e.action == "archive" && e.who == "user:root" && e.machine == a));
    assert!(trail.iter().any(|e| e.action == "unarchive" && e.who == "user:root"));
}
