//! The operator's console in a real browser (headless Chromium over WebDriver), for what a person
//! reads there: history charts across the retention boundary with threshold lines, the
//! system-wide audit trail, and enrollment commands that work when pasted on another machine.

mod common;

use common::browser::{available, Browser};
use common::*;
use outpost_shared::model::{Batch, Limits, Reading, Role, Sample, State};
use std::time::Duration;

/// Where the console tests keep their screenshots, to be looked at by a person:
/// `target/screenshots/` of the workspace.
fn screenshots_dir() -> std::path::PathBuf {
    let d = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&d).unwrap();
    d
}

const MACHINE: &str = "0123456789abcdef0123456789abcdef";
/// One reading every 5 minutes for 30 days, stamped 2.5 minutes off the 5-minute grid, so the
/// last hour holds exactly 12 of them whenever the page asks within 2.5 minutes.
const STEP_MIN: i64 = 5;
const READINGS: i64 = 30 * 24 * 60 / STEP_MIN;

/// 30 days of one sensor written into the cloud's store before the cloud starts, then folded as
/// the cloud's retention does (7 days raw): older readings exist only as hourly aggregates.
fn write_history(data: &std::path::Path) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        // Through the trait, as the cloud writes: the engine's own methods are its blocking halves.
        let store: outpost_cloud::store::Store =
            std::sync::Arc::new(outpost_cloud::store::sled::SledStore::open(&data.join("db")).unwrap());
        let now = chrono::Utc::now();
        let readings = (0..READINGS)
            .map(|i| {
                let age = chrono::Duration::seconds((READINGS - i) * STEP_MIN * 60 - STEP_MIN * 30);
                let v = 50.0 + 30.0 * (i as f64 / 40.0).sin();
                let state = if v >= 70.0 { State::Warn } else { State::Ok };
                let mut s = Sample::new("tank.level", v, state).unit("%").at(now - age);
                s.limits = Some(Limits { warn: Some(70.0), error: Some(90.0), below: false });
                Reading { machine_id: MACHINE.into(), seq: i as u64 + 1, sample: s }
            })
            .collect();
        let batch = Batch {
            machine_id: MACHINE.into(),
            hostname: "tank-farm".into(),
            role: Role::Sensorhub,
            uplink: "direct".into(),
            buffered: 0,
            dropped: 0,
            version: "t".into(),
            quarantined: 0,
            clock_problem: None,
            features: Vec::new(),
            readings,
        };
        store.ingest(batch, now).await.unwrap();
        let folded = store
            .compact(now, Duration::from_secs(7 * 86400), Duration::from_secs(400 * 86400))
            .await
            .unwrap();
        assert!(folded.folded > 6000, "{folded:?}");
        store.commit().await.unwrap();
    });
}

#[test]
fn a_month_long_chart_joins_hourly_to_raw_data_and_an_hour_shows_every_reading() {
    if !available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cloud_dir = dir.path().join("cloud");
    std::fs::create_dir_all(cloud_dir.join("data")).unwrap();
    write_history(&cloud_dir.join("data"));
    let cloud = CloudProc::start(&cloud_dir);
    let browser = Browser::start();
    browser.set_window_size(1200, 900);
    common::console::sign_in_as_owner(&browser, &cloud);
    browser.wait_for(
        Duration::from_secs(15),
        "the machine is listed",
        "return [...document.querySelectorAll('tr.machine')].some((r) => r.textContent.includes('tank-farm'))",
    );
    browser.eval(
        "[...document.querySelectorAll('tr.machine')].find((r) => r.textContent.includes('tank-farm')).click(); return true",
    );
    browser.wait_for(
        Duration::from_secs(15),
        "the sensor row shows",
        "return !!document.querySelector('tr.sensor[data-sensor=\"tank.level\"]')",
    );
    browser.click("tr.sensor[data-sensor=\"tank.level\"]");
    browser.click("#ranges button[data-range=\"2592000\"]");
    browser.wait_for(
        Duration::from_secs(20),
        "the 30-day chart is drawn with hourly and raw points",
        "const c = document.getElementById('chart'); \
         return !!c.querySelector('canvas') && Number(c.dataset.hourly) > 500 && Number(c.dataset.points) > 2000",
    );
    let chart = |key: &str| browser.eval(&format!("return document.getElementById('chart').dataset.{key}"));
    // 23 days of hours, then 7 days of 5-minute readings: no break, no step longer than an hour.
    let hourly: u64 = chart("hourly").as_str().unwrap().parse().unwrap();
    let points: u64 = chart("points").as_str().unwrap().parse().unwrap();
    assert!((23 * 24 - 2..=23 * 24 + 2).contains(&hourly), "hourly points: {hourly}");
    assert!((hourly + 7 * 288 - 3..=hourly + 7 * 288 + 1).contains(&points), "points: {points}");
    assert_eq!(chart("breaks"), "0", "no gap in the line");
    let widest: f64 = chart("widest").as_str().unwrap().parse().unwrap();
    // An hour's point sits at the hour's start; the first raw reading after the last folded hour
    // comes up to one reading interval (5 min) after the next hour starts.
    assert!(widest <= 3600.0 + 300.0, "the widest step is {widest} s");
    assert_eq!(chart("limits"), "70 90", "the sensor's limits are drawn");
    let caption = browser.eval("return document.getElementById('crange').textContent");
    assert!(caption.as_str().unwrap().contains("Hourly averages until"), "{caption}");
    browser.eval("document.getElementById('ctitle').scrollIntoView(); return true");
    browser.screenshot(&screenshots_dir().join("chart-30d.png"));

    // The last hour: every raw reading, nothing folded, nothing from before.
    browser.click("#ranges button[data-range=\"3600\"]");
    browser.wait_for(
        Duration::from_secs(15),
        "the 1-hour chart is drawn",
        "const c = document.getElementById('chart'); return c.dataset.hourly === '0' && !!c.querySelector('canvas')",
    );
    assert_eq!(chart("points"), "12", "every reading of the last hour");
    browser.eval("document.getElementById('ctitle').scrollIntoView(); return true");
    browser.screenshot(&screenshots_dir().join("chart-1h.png"));
}

/// The audit trail of the whole system, as an operator reads it: every kind of event, a command
/// as one row with its outcome (here: expired, its machine never asked), filters that narrow it
/// down, and new events appearing while the view is open.
#[test]
fn the_audit_view_shows_every_kind_filters_and_updates_live() {
    if !available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cloud = CloudProc::start(&dir.path().join("cloud"));
    let (status, made) = cloud.api_post(
        "/v1/enrollment-tokens",
        serde_json::json!({"network": "plant-7", "ttl": "1h", "label": "spare pump"}),
    );
    assert_eq!(status, 200, "{made}");
    let (status, _) =
        cloud.request("DELETE", &format!("/v1/enrollment-tokens/{}", made["id"].as_str().unwrap()), None);
    assert_eq!(status, 200);
    let hub = TestMachine::enroll(&cloud, "sensorhub");
    let (status, cmd) = cloud.api_post(
        &format!("/v1/machines/{}/commands", hub.id()),
        serde_json::json!({"action": "ping", "ttl": "1s"}),
    );
    assert_eq!(status, 201, "{cmd}");
    let other = TestMachine::enroll(&cloud, "sensorhub");
    let (status, _) = cloud.request("DELETE", &format!("/v1/machines/{}", other.id()), None);
    assert_eq!(status, 200);
    std::thread::sleep(Duration::from_millis(1500)); // the ping's second passes unanswered

    let browser = Browser::start();
    browser.set_window_size(1280, 900);
    common::console::sign_in_as_owner(&browser, &cloud);
    browser.wait_for(
        Duration::from_secs(15),
        "the page is up",
        "return !document.getElementById('app').hidden",
    );
    browser.click("#openaudit");
    browser.wait_for(
        Duration::from_secs(15),
        "every kind is listed",
        "const k = new Set([...document.querySelectorAll('#auditrows tr.auditrow')].map((r) => r.dataset.kind)); \
         return ['command', 'token', 'enrollment', 'revocation'].every((x) => k.has(x))",
    );
    let rows = |sel: &str| {
        browser.eval(&format!(
            "return [...document.querySelectorAll('#auditrows tr.auditrow{sel}')].map((r) => r.dataset.kind + ':' + r.dataset.outcome)"
        ))
    };
    let commands = rows("[data-kind=\"command\"]");
    assert_eq!(commands, serde_json::json!(["command:expired"]), "one row for the command, expired");
    let tokens = rows("[data-kind=\"token\"]");
    assert_eq!(
        tokens.as_array().unwrap().len(),
        2 + 2,
        "made, cancelled, and the two that enrolled: {tokens}"
    );
    browser.screenshot(&screenshots_dir().join("audit.png"));

    // Narrowed to one kind, then to one machine.
    browser.eval("const s = document.getElementById('auditkind'); s.value = 'revocation'; s.dispatchEvent(new Event('change')); return true");
    browser.wait_for(
        Duration::from_secs(10),
        "only the revocation is left",
        "const r = [...document.querySelectorAll('#auditrows tr.auditrow')]; \
         return r.length === 1 && r[0].dataset.kind === 'revocation'",
    );
    browser.eval("const s = document.getElementById('auditkind'); s.value = ''; s.dispatchEvent(new Event('change')); return true");
    let machine_filter = format!(
        "const s = document.getElementById('auditmachine'); s.value = '{}'; s.dispatchEvent(new Event('change')); return s.value",
        hub.id()
    );
    // Neither machine ever sent a reading: the filter still offers them, from the trail itself.
    browser.wait_for(
        Duration::from_secs(10),
        "the machine filter offers the hub",
        &format!(
            "return [...document.getElementById('auditmachine').options].some((o) => o.value === '{}')",
            hub.id()
        ),
    );
    browser.eval(&machine_filter);
    browser.wait_for(
        Duration::from_secs(10),
        "only the hub's rows are left",
        "const r = [...document.querySelectorAll('#auditrows tr.auditrow')]; \
         return r.length === 2 && r.every((x) => x.dataset.kind === 'command' || x.dataset.kind === 'enrollment')",
    );
    browser.eval("const s = document.getElementById('auditmachine'); s.value = ''; s.dispatchEvent(new Event('change')); return true");
    let filtered = cloud.api(&format!("/v1/audit/rows?machine={}&kind=command", hub.id()));
    assert_eq!(filtered.as_array().unwrap().len(), 1, "{filtered}");
    assert_eq!(filtered[0]["who"], "local-admin");
    let nobody = cloud.api("/v1/audit/rows?who=somebody-else");
    assert_eq!(nobody, serde_json::json!([]));
    let (status, _) = cloud.request("GET", "/v1/audit/rows?kind=everything", None);
    assert_eq!(status, 400, "an unknown kind is refused, not ignored");

    // Live: a token made now appears without a reload.
    let (status, _) =
        cloud.api_post("/v1/enrollment-tokens", serde_json::json!({"label": "made while watching"}));
    assert_eq!(status, 200);
    browser.wait_for(
        Duration::from_secs(15),
        "the new token appears by itself",
        "return [...document.querySelectorAll('#auditrows tr.auditrow')].some((r) => r.textContent.includes('made while watching'))",
    );
}

/// The enrollment command the dashboard offers, pasted on "another machine" (a fresh directory
/// that has nothing of the cloud's): it names the cloud's public URL, not the page's own address;
/// its download step fetches the CA and refuses one that does not match; the installer accepts
/// the URL, CA and token (into a temp tree: installing a service needs root); and a hub given the
/// same URL, CA and token enrolls in the token's network.
#[test]
fn the_offered_enrollment_command_enrolls_a_machine_pasted_elsewhere() {
    if !available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let public = format!("https://localhost:{port}");
    let cloud = CloudProc::start_on(&dir.path().join("cloud"), port, &format!("public_url = \"{public}/\""));
    let browser = Browser::start();
    common::console::sign_in_as_owner(&browser, &cloud);
    browser.wait_for(
        Duration::from_secs(15),
        "the page is up",
        "return !document.getElementById('app').hidden",
    );
    browser.eval(
        "document.getElementById('tokennetwork').value = 'plant-9'; \
         document.getElementById('tokenlabel').value = 'pump 3'; \
         document.getElementById('tokenttl').value = '1h'; return true",
    );
    browser.click("#newtoken");
    browser.wait_for(
        Duration::from_secs(15),
        "the command is offered",
        "return !document.getElementById('tokenout').hidden && document.getElementById('tokencmd').textContent.length > 0",
    );
    let cmd =
        browser.eval("return document.getElementById('tokencmd').textContent").as_str().unwrap().to_string();
    let (fetch, install) = cmd.split_once(" && sudo ").expect("a download step, then the install");
    let prefix = format!("outpost install --role sensorhub --cloud {public} --cloud-ca outpost-cloud-ca.pem --enroll OPT1.plant-9.");
    assert!(install.starts_with(&prefix), "{install}");
    let token = install.rsplit(' ').next().unwrap().to_string();
    let expires = browser.eval("return document.getElementById('tokenexp').dateTime");
    let left =
        chrono::DateTime::parse_from_rfc3339(expires.as_str().unwrap()).unwrap().with_timezone(&chrono::Utc)
            - chrono::Utc::now();
    assert!(
        left <= chrono::Duration::hours(1) && left > chrono::Duration::minutes(55),
        "the chosen lifetime: {left}"
    );

    // The other host: nothing there but what the command brings.
    let host = tempfile::tempdir().unwrap();
    let run = |script: &str| {
        std::process::Command::new("sh").arg("-c").arg(script).current_dir(host.path()).output().unwrap()
    };
    let out = run(fetch);
    assert!(out.status.success(), "{fetch}: {}", String::from_utf8_lossy(&out.stderr));
    let ca = host.path().join("outpost-cloud-ca.pem");
    assert_eq!(std::fs::read(&ca).unwrap(), std::fs::read(cloud.ca()).unwrap());
    // A CA swapped on the way (here: a wrong fingerprint) stops the command before the install.
    let forged = fetch.replace(&fetch[fetch.find("echo \"").unwrap() + 6..][..64], &"0".repeat(64));
    assert!(!run(&format!("{forged} && touch installed")).status.success());
    assert!(!host.path().join("installed").exists());

    let root = tempfile::tempdir().unwrap();
    let words: Vec<&str> = install.split_whitespace().collect();
    let out = std::process::Command::new(BIN)
        .args(&words[1..])
        .arg("--root")
        .arg(root.path())
        .current_dir(host.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{install}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let installed = std::fs::read_to_string(root.path().join("etc/outpost/sensorhub.toml")).unwrap();
    assert!(installed.contains(&format!("cloud = \"{public}\"")), "{installed}");
    assert_eq!(
        std::fs::read(root.path().join("etc/outpost/cloud-ca.pem")).unwrap(),
        std::fs::read(&ca).unwrap()
    );
    let kept = std::fs::read_to_string(root.path().join("var/lib/outpost/sensorhub/enroll-token")).unwrap();
    assert_eq!(kept.trim(), token);

    // The hub as that service would run it, with its data in a temp dir instead of /var/lib.
    let hub_dir = host.path().join("hub");
    std::fs::create_dir_all(&hub_dir).unwrap();
    let config = hub_dir.join("sensorhub.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[uplink]\ncloud = \"{public}\"\nca_file = \"{}\"\nenroll_token = \"{token}\"\n\
             retry_min = \"200ms\"\nretry_max = \"1s\"\ndiscover = false\nadvertise = false\n",
            hub_dir.join("data").display(),
            ca.display()
        ),
    )
    .unwrap();
    let _hub = start_hub(&hub_dir, &config);
    let id = key_machine_id(&hub_dir);
    wait_until(Duration::from_secs(30), "the hub is enrolled in plant-9 and sends", || {
        machines(&cloud).iter().any(|m| m["id"] == id.as_str() && m["network"] == "plant-9")
    });
    let open = cloud.api("/v1/enrollment-tokens");
    assert!(!open.as_array().unwrap().iter().any(|t| t["label"] == "pump 3"), "the token is used up: {open}");
}

/// The code of `secret` (base32, as the page shows it) for `at`.
fn totp_code(secret: &str, at: std::time::SystemTime) -> String {
    let raw = outpost_shared::totp::decode_secret(secret.trim()).unwrap();
    let unix = at.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    outpost_shared::totp::code_at(&raw, unix)
}

#[test]
fn an_owner_sets_up_a_second_factor_then_manages_customers_and_people_on_the_page() {
    if !available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cloud = CloudProc::start_on(
        &dir.path().join("cloud"),
        free_port(),
        "[people]\nrequire_totp_for_admins = true\n",
    );
    let browser = Browser::start();
    common::console::add_user(
        &cloud,
        &serde_json::json!({"name": "owner", "password": common::console::PASSWORD, "owner": true}),
    );
    browser.open(&format!("{}/", cloud.url()));
    browser.wait_for(
        Duration::from_secs(15),
        "the sign-in form shows",
        "return !document.getElementById('login').hidden",
    );
    common::console::fill_sign_in(&browser, "owner", common::console::PASSWORD);

    // An owner without a second factor is shown only how to set one up.
    browser.wait_for(
        Duration::from_secs(15),
        "the second-factor setup is all there is",
        "return !document.getElementById('totpsetup').hidden && document.getElementById('app').hidden",
    );
    browser.click("#totpbegin");
    browser.wait_for(
        Duration::from_secs(15),
        "the secret shows",
        "return document.getElementById('totpsecret').textContent.length >= 16",
    );
    let secret = browser
        .eval("return document.getElementById('totpsecret').textContent")
        .as_str()
        .unwrap()
        .to_string();
    let code = totp_code(&secret, std::time::SystemTime::now());
    browser.eval(&format!("document.getElementById('totpcode').value = '{code}'; return true"));
    browser.eval("document.querySelector('#totpform button').click(); return true");
    browser.wait_for(
        Duration::from_secs(15),
        "the dashboard opens",
        "return !document.getElementById('app').hidden",
    );

    // Customers and people, on the page.
    browser.wait_for(Duration::from_secs(15), "the people section shows", "return !document.getElementById('peoplesection').hidden && !document.getElementById('customersblock').hidden");
    browser.eval(
        "document.getElementById('cid').value = 'acme'; document.getElementById('cname').value = 'Acme Water'; \
         document.getElementById('cnets').value = 'plant-a'; return true",
    );
    browser.eval("document.querySelector('#cnewform button').click(); return true");
    browser.wait_for(
        Duration::from_secs(15),
        "the customer is listed with its network and offered for new people",
        "return [...document.querySelectorAll('#clist tr.customer')].some((r) => r.dataset.id === 'acme' && r.textContent.includes('plant-a')) \
           && [...document.getElementById('pcustomer').options].some((o) => o.value === 'acme')",
    );
    browser.eval(&format!(
        "document.getElementById('pname').value = 'nina'; document.getElementById('ppassword').value = '{}'; \
         document.getElementById('pcustomer').value = 'acme'; document.getElementById('prole').value = 'operator'; return true",
        common::console::PASSWORD
    ));
    browser.eval("document.querySelector('#pnewform button').click(); return true");
    browser.wait_for(
        Duration::from_secs(15),
        "nina is listed as operator of Acme",
        "const r = document.querySelector('#plist tr.person[data-name=\"nina\"]'); return !!r && r.querySelector('select').value === 'operator'",
    );
    let role = |cloud: &CloudProc| {
        let users = cloud.api("/v1/users");
        users.as_array().unwrap().iter().find(|u| u["name"] == "nina").map(|u| u["grants"][0]["role"].clone())
    };
    assert_eq!(role(&cloud), Some(serde_json::json!("operator")));
    // Down to viewer with the select.
    browser.eval(
        "const s = document.querySelector('#plist tr.person[data-name=\"nina\"] select'); s.value = 'viewer'; \
         s.dispatchEvent(new Event('change')); return true",
    );
    wait_until(Duration::from_secs(15), "nina is a viewer now", || {
        role(&cloud) == Some(serde_json::json!("viewer"))
    });
    browser.eval("document.getElementById('peoplesection').scrollIntoView(); return true");
    browser.screenshot(&screenshots_dir().join("people.png"));
    // Removed with two clicks.
    browser.click("#plist tr.person[data-name=\"nina\"] button.premove");
    browser.wait_for(Duration::from_secs(5), "the first click arms", "return document.querySelector('#plist tr.person[data-name=\"nina\"] button.premove').textContent.includes('again')");
    assert!(role(&cloud).is_some(), "one click removes nobody");
    browser.click("#plist tr.person[data-name=\"nina\"] button.premove");
    wait_until(Duration::from_secs(15), "nina is gone", || role(&cloud).is_none());

    // Signed out, signing in again needs a code as well: the next one (each code works once).
    browser.click("#signout");
    browser.wait_for(
        Duration::from_secs(15),
        "signed out",
        "return !document.getElementById('login').hidden",
    );
    common::console::fill_sign_in(&browser, "owner", common::console::PASSWORD);
    browser.wait_for(
        Duration::from_secs(15),
        "a code is asked for",
        "return !document.getElementById('code').hidden",
    );
    let next = totp_code(&secret, std::time::SystemTime::now() + Duration::from_secs(30));
    browser.eval(&format!("document.getElementById('code').value = '{next}'; return true"));
    browser.click("#loginbutton");
    browser.wait_for(
        Duration::from_secs(15),
        "signed in with the second factor",
        "return !document.getElementById('app').hidden",
    );
}
