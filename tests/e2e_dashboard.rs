//! The dashboard in a real browser (Debian's headless Chromium over WebDriver): it must render
//! this machine's sensors, with state colours and a history chart, from the live API.

mod common;

use common::browser::{available, Browser};
use common::console::*;
use common::*;
use std::time::Duration;

#[test]
fn the_dashboard_renders_this_machines_sensors_with_state_colours() {
    if !available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cloud = CloudProc::start(&dir.path().join("cloud"));
    let hub_dir = dir.path().join("hub");
    let _hub = start_hub(&hub_dir, &hub_config(&hub_dir, &cloud, ""));
    wait_until(Duration::from_secs(20), "cpu readings reach the cloud", || {
        let m = cloud.api("/v1/machines");
        let Some(id) = m.as_array().and_then(|a| a.first()).map(|m| m["id"].as_str().unwrap().to_string())
        else {
            return false;
        };
        let s = cloud.api(&format!("/v1/machines/{id}/sensors"));
        s.as_array().unwrap().iter().any(|s| s["sensor"] == "cpu.total")
    });
    let browser = Browser::start();

    // Without the token the page asks for it instead of showing data, and blames nobody yet.
    browser.open(&cloud.url());
    browser.wait_for(
        Duration::from_secs(15),
        "the login form shows",
        "return !document.getElementById('login').hidden",
    );
    assert_eq!(browser.eval("return document.querySelectorAll('tr.sensor').length"), 0);
    assert_eq!(
        browser.eval("return document.getElementById('loginerr').textContent"),
        "",
        "no error before anything was typed"
    );
    add_user(&cloud, &serde_json::json!({"name": "owner", "password": PASSWORD, "owner": true}));
    fill_sign_in(&browser, "owner", "not the password");
    browser.wait_for(
        Duration::from_secs(15),
        "a wrong password is said to be wrong",
        "return document.getElementById('loginerr').textContent.includes('wrong name or password')",
    );
    fill_sign_in(&browser, "owner", PASSWORD);
    browser.wait_for(
        Duration::from_secs(15),
        "the machine is listed with its state",
        "const r = document.querySelector('tr.machine'); \
         return !!r && /state-(ok|warn|error|unknown)/.test(r.querySelector('.shape').className)",
    );
    browser.click("tr.machine");
    browser.wait_for(
        Duration::from_secs(15),
        "the cpu.total row shows with a state shape and word",
        "const r = document.querySelector('tr.sensor[data-sensor=\"cpu.total\"] .st'); \
         return !!r && /state-(ok|warn|error)/.test(r.querySelector('.shape').className) \
           && /OK|Warning|Error/.test(r.textContent)",
    );
    // The page opens a machine on its worst sensor; the CPU is the one that surely reports often.
    browser.click("tr.sensor[data-sensor=\"cpu.total\"]");
    browser.wait_for(
        Duration::from_secs(15),
        "the history chart of cpu.total is drawn",
        "return document.getElementById('ctitle').textContent.includes('(cpu.total)') \
           && !!document.querySelector('#chart canvas') && Number(document.getElementById('chart').dataset.points) > 0",
    );
    assert!(browser
        .eval("return document.getElementById('mtitle').textContent")
        .as_str()
        .unwrap()
        .starts_with("Sensors of "));
    // Live: the chart grows as readings arrive, without a reload.
    let before =
        browser.eval("return Number(document.getElementById('chart').dataset.points)").as_u64().unwrap();
    browser.wait_for(
        Duration::from_secs(30),
        "live readings extend the chart",
        &format!("return Number(document.getElementById('chart').dataset.points) > {before}"),
    );
    browser.wait_for(
        Duration::from_secs(5),
        "the live indicator says live",
        "return document.getElementById('live').textContent === 'live'",
    );
    browser.screenshot(&dir.path().join("dashboard.png"));
}

fn screenshot_path(tmp: &std::path::Path, name: &str) -> std::path::PathBuf {
    match std::env::var_os("OUTPOST_SCREENSHOTS") {
        Some(d) => std::path::PathBuf::from(d).join(name),
        None => tmp.join(name),
    }
}

/// The latest reading of one sensor, as the cloud's API reports it; None until the machine has
/// sent that sensor (the API answers 404 for a machine it has not heard from yet).
fn latest(cloud: &CloudProc, machine: &str, sensor: &str) -> Option<serde_json::Value> {
    let r = cloud
        .client()
        .get(format!("{}/v1/machines/{machine}/sensors", cloud.url()))
        .bearer_auth(cloud.admin_token())
        .send()
        .ok()?;
    if r.status() == 404 {
        return None;
    }
    assert!(r.status().is_success(), "GET sensors: {}", r.status());
    let list: serde_json::Value = r.json().unwrap();
    list.as_array().unwrap().iter().find(|s| s["sensor"] == sensor).cloned()
}

/// The page's switch for a relay, found by the name the hub reports for it.
fn switch_js(name: &str) -> String {
    format!("document.querySelector('button.relay[role=\"switch\"][data-name=\"{name}\"]')")
}

#[test]
fn relays_switch_from_the_dashboard_as_read_back_and_locked_ones_are_refused() {
    if !available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A simulated Conrad card on a pseudo-terminal, behind a stable link.
    let link = dir.path().join("ttyRELAY0");
    let _sim = Proc::start(
        &["relay-sim", "--cards", "1", "--link", link.to_str().unwrap()],
        &dir.path().join("relay-sim.log"),
    );
    wait_until(Duration::from_secs(15), "the relay simulator makes its device link", || link.exists());
    let cloud = CloudProc::start(&dir.path().join("cloud"));
    let hub_dir = dir.path().join("hub");
    let relay = format!(
        "[relay]\nport = \"{}\"\npoll_interval = \"500ms\"\n\n\
         [[relay.relays]]\ncard = 1\nrelay = 1\nname = \"pump\"\n\n\
         [[relay.relays]]\ncard = 1\nrelay = 2\nname = \"siren\"\nlocked = true\n",
        link.display()
    );
    let _hub = start_hub(&hub_dir, &hub_config(&hub_dir, &cloud, &relay));
    let id = machine_id(&hub_dir);
    wait_until(Duration::from_secs(30), "the card's relay states reach the cloud", || {
        latest(&cloud, &id, "relay.1.k2").is_some()
    });
    assert_eq!(
        latest(&cloud, &id, "relay.1.k1").unwrap()["value"],
        false,
        "the card starts with every relay off"
    );

    let browser = Browser::start();
    browser.set_window_size(1400, 1000);
    sign_in_as_owner(&browser, &cloud);
    browser.wait_for(
        Duration::from_secs(15),
        "the hub is listed",
        &format!("return !!document.querySelector('tr.machine[data-id=\"{id}\"]')"),
    );
    browser.click(&format!("tr.machine[data-id=\"{id}\"]"));
    let pump = switch_js("pump");
    let siren = switch_js("siren");
    browser.wait_for(
        Duration::from_secs(15),
        "the relay panel shows card 1 with the named switches, off, and K3 unnamed",
        &format!(
            "const p = {pump}, s = {siren}, k3 = document.querySelector('button.relay[data-card=\"1\"][data-relay=\"3\"]'); \
             return !!p && !!s && !!k3 && p.getAttribute('aria-checked') === 'false' \
               && s.getAttribute('aria-checked') === 'false' && k3.dataset.name === 'K3' \
               && p.textContent.includes('pump')"
        ),
    );

    // Switch the pump on: the page shows it on once the card reports it.
    browser.click("button.relay[data-name=\"pump\"]");
    browser.wait_for(
        Duration::from_secs(30),
        "the pump switch shows ON as read back from the card",
        &format!("const p = {pump}; return p.getAttribute('aria-checked') === 'true' && p.textContent.includes('ON')"),
    );
    // What the page shows is what the card holds: the hub's latest reading of relay K1 says on.
    // (The hub holds the serial port, so the card is read through the cloud, not `outpost relay`.)
    assert_eq!(latest(&cloud, &id, "relay.1.k1").unwrap()["value"], true, "the card really has relay 1 on");
    browser.wait_for(
        Duration::from_secs(15),
        "the command's outcome is shown",
        "return document.querySelector('.card[data-card=\"1\"] .outcome').textContent.startsWith('done')",
    );

    // The siren is locked in the hub's config: the hub refuses, and the page says so.
    browser.click("button.relay[data-name=\"siren\"]");
    browser.wait_for(
        Duration::from_secs(30),
        "the refusal is shown",
        "const t = document.querySelector('.card[data-card=\"1\"] .outcome').textContent; \
         return t.startsWith('refused') && t.includes('siren') && t.includes('locked')",
    );
    assert_eq!(browser.eval(&format!("return {siren}.getAttribute('aria-checked')")), "false");
    // From then on the page knows the siren is locked: shown so, and not clickable.
    browser.wait_for(
        Duration::from_secs(15),
        "the siren is shown locked and cannot be clicked",
        &format!("const s = {siren}; return s.disabled && s.classList.contains('locked') && s.textContent.includes('locked')"),
    );
    assert_eq!(latest(&cloud, &id, "relay.1.k2").unwrap()["value"], false, "the locked relay stays off");
    let audit = cloud.api(&format!("/v1/audit?machine={id}&limit=50"));
    assert!(
        audit.as_array().unwrap().iter().any(|a| a["event"] == "refused" && a["parameters"]["relay"] == 2),
        "the audit trail records the refusal: {audit}"
    );
    // The page's audit trail is refreshed after the command, with the refusal and the pump's success.
    browser.wait_for(
        Duration::from_secs(15),
        "the page's audit trail shows the refusal and the completed pump command",
        "return !!document.querySelector('tr.audit[data-event=\"refused\"]') \
           && !!document.querySelector('tr.audit[data-event=\"done\"]')",
    );
    // Still on: a refused command elsewhere does not disturb the pump.
    assert_eq!(browser.eval(&format!("return {pump}.getAttribute('aria-checked')")), "true");
    browser.screenshot(&screenshot_path(dir.path(), "dashboard-relays.png"));

    // The cloud names K3 `valve` and locks it, from the managed section's relay form: the running
    // hub takes it, the switch shows the name, and a click on it is refused.
    browser.eval(
        "document.querySelector('#mrelayadd').click(); \
         const row = document.querySelector('tr.mrelay'); \
         const set = (sel, v) => { const e = row.querySelector(sel); e.value = v; \
           e.dispatchEvent(new Event('input', { bubbles: true })); }; \
         set('.rrelay', '3'); set('.rname', 'valve'); \
         const l = row.querySelector('.rlocked'); l.checked = true; \
         l.dispatchEvent(new Event('change', { bubbles: true })); \
         document.querySelector('#mrelaysave').click(); return true;",
    );
    browser.wait_for(
        Duration::from_secs(30),
        "the relay settings are saved and the hub applied them",
        "return document.querySelector('#mrelayerr').textContent.includes('saved as version 1') \
           && document.querySelector('#mstatus').textContent === 'applied v1'",
    );
    let valve = switch_js("valve");
    browser.wait_for(Duration::from_secs(30), "K3 is shown as the valve", &format!("return !!{valve}"));
    browser.click("button.relay[data-name=\"valve\"]");
    browser.wait_for(
        Duration::from_secs(30),
        "the cloud's lock is refused by the hub",
        "const t = document.querySelector('.card[data-card=\"1\"] .outcome').textContent; \
         return t.startsWith('refused') && t.includes('locked')",
    );
    assert_eq!(latest(&cloud, &id, "relay.1.k3").unwrap()["value"], false, "the valve stays off");
    let settings = cloud.api(&format!("/v1/machines/{id}/managed"));
    assert_eq!(
        settings["relays"],
        serde_json::json!([{"card": 1, "relay": 3, "name": "valve", "locked": true, "restore": "unset"}])
    );
}

#[test]
fn enrollment_tokens_and_unattached_hubs_show_on_the_dashboard() {
    if !available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cloud = CloudProc::start(&dir.path().join("cloud"));
    // A connector reports a hub it found on its LAN that does not send yet; the hub's texts
    // carry markup, which the page must show as text.
    let connector = TestMachine::enroll(&cloud, "connector");
    let body = serde_json::to_vec(&serde_json::json!({
        "connector": connector.id(),
        "batches": [],
        "unattached": [{
            "machine_id": "feedc0ffee0123456789",
            "location": "http://10.0.0.7:1900/<img src=x id=injected>",
            "server": "outpost-sensorhub/0.1",
            "seen_at": chrono::Utc::now(),
        }],
    }))
    .unwrap();
    let (status, answer) = connector.post(&cloud, "/v1/forward", body.clone(), &body, false);
    assert_eq!(status, 200, "forward: {answer}");

    let browser = Browser::start();
    browser.set_window_size(1400, 1000);
    sign_in_as_owner(&browser, &cloud);
    browser.wait_for(
        Duration::from_secs(15),
        "the unattached hub is listed, its markup shown as text",
        "const r = document.querySelector('tr.unattached[data-id=\"feedc0ffee0123456789\"]'); \
         return !!r && r.textContent.includes('<img src=x id=injected>')",
    );
    assert_eq!(browser.eval("return !!document.getElementById('injected')"), false);

    browser.click("#newtoken");
    browser.wait_for(
        Duration::from_secs(15),
        "a new enrollment token is shown with its expiry and how to use it",
        "const v = document.getElementById('tokenvalue').value; \
         return v.startsWith('OPT1.') && !document.getElementById('tokenout').hidden \
           && document.getElementById('tokencmd').textContent.includes(' --cloud https://') \
           && document.getElementById('tokencmd').textContent.endsWith(' --enroll ' + v) \
           && document.getElementById('tokenconf').textContent.includes('enroll_token = \"' + v + '\"') \
           && document.getElementById('tokenexp').textContent.length > 0",
    );
    browser.wait_for(
        Duration::from_secs(15),
        "the open tokens list has it",
        "return document.querySelectorAll('#tokens tr.token').length === 1",
    );
    // The token the page shows is one the cloud accepts: enrolling with it works once.
    let token =
        browser.eval("return document.getElementById('tokenvalue').value").as_str().unwrap().to_string();
    let key = outpost_shared::keys::KeyPair::generate().unwrap();
    let enroll = serde_json::json!({"token": token, "public_key": key.public().to_pem(),
        "role": "sensorhub", "hostname": "new-hub", "lan_cert": serde_json::Value::Null});
    let r = cloud.client().post(format!("{}/v1/enroll", cloud.url())).json(&enroll).send().unwrap();
    assert!(r.status().is_success(), "enrolling with the page's token: {}", r.status());

    // A connector token is a deliberate choice on the page, named, and can be cancelled there.
    browser.eval(
        "document.getElementById('tokenrole').value = 'connector';          document.getElementById('tokenlabel').value = 'spare connector'; return true",
    );
    browser.click("#newtoken");
    browser.wait_for(
        Duration::from_secs(15),
        "a connector token with its own install command",
        "return document.getElementById('tokencmd').textContent.includes('--role connector --cloud https://') && document.getElementById('tokencmd').textContent.includes(' --enroll OPT1.')            && document.getElementById('tokenconf').textContent.startsWith('[cloud]')            && [...document.querySelectorAll('#tokens tr.token')].some(r => r.textContent.includes('spare connector'))",
    );
    let connector_token =
        browser.eval("return document.getElementById('tokenvalue').value").as_str().unwrap().to_string();
    browser.screenshot(&screenshot_path(dir.path(), "dashboard-enroll.png"));
    browser.eval(
        "[...document.querySelectorAll('#tokens tr.token')].find(r => r.textContent.includes('spare connector'))            .querySelector('button.cancel').click(); return true",
    );
    browser.wait_for(
        Duration::from_secs(15),
        "the cancelled token leaves the list",
        "return document.getElementById('tokencancelout').textContent.includes('cancelled')            && ![...document.querySelectorAll('#tokens tr.token')].some(r => r.textContent.includes('spare connector'))",
    );
    let key = outpost_shared::keys::KeyPair::generate().unwrap();
    let enroll = serde_json::json!({"token": connector_token, "public_key": key.public().to_pem(),
        "role": "connector", "hostname": "c", "lan_cert": "ab".repeat(32)});
    let r = cloud.client().post(format!("{}/v1/enroll", cloud.url())).json(&enroll).send().unwrap();
    assert_eq!(r.status().as_u16(), 403, "a cancelled token enrolls nobody");
}

#[test]
fn a_machine_is_revoked_from_the_dashboard_with_two_clicks_and_refused_afterwards() {
    if !available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cloud = CloudProc::start(&dir.path().join("cloud"));
    let hub = TestMachine::enroll(&cloud, "sensorhub");
    let id = hub.id();
    let batch = |seq: u64| {
        serde_json::to_vec(
            &serde_json::json!({"machine_id": id, "hostname": "stolen-hub", "uplink": "direct",
            "buffered": 0, "readings": [{"machine_id": id, "seq": seq, "sensor": "cpu.total",
            "ts": chrono::Utc::now(), "value": 5.0, "state": "ok"}]}),
        )
        .unwrap()
    };
    let body = batch(1);
    let (status, answer) = hub.post(&cloud, "/v1/batches", body.clone(), &body, false);
    assert_eq!(status, 200, "{answer}");

    let browser = Browser::start();
    browser.set_window_size(1400, 1000);
    sign_in_as_owner(&browser, &cloud);
    let row = format!("tr.machine[data-id=\"{id}\"]");
    browser.wait_for(
        Duration::from_secs(15),
        "the hub is listed",
        &format!("return !!document.querySelector('{row}')"),
    );
    browser.click(&row);
    browser.wait_for(
        Duration::from_secs(15),
        "the revoke button shows for the selected machine",
        "return !document.getElementById('revokerow').hidden",
    );
    browser.click("#revoke");
    assert_eq!(
        browser.eval("return document.getElementById('revoke').textContent"),
        "Click again to revoke stolen-hub",
        "the first click only arms it"
    );
    let body = batch(2);
    assert_eq!(hub.post(&cloud, "/v1/batches", body.clone(), &body, false).0, 200, "not revoked yet");
    browser.click("#revoke");
    browser.wait_for(
        Duration::from_secs(15),
        "the page says it is revoked and the audit trail shows it",
        "return document.getElementById('revokeout').textContent.includes('is revoked') \
           && [...document.querySelectorAll('#audit tr.audit')].some((r) => r.textContent.includes('revoke'))",
    );
    let body = batch(3);
    let (status, answer) = hub.post(&cloud, "/v1/batches", body.clone(), &body, false);
    assert_eq!(status, 401, "a revoked machine gets nothing in: {answer}");
    // Marked as revoked in the machine list, also after a fresh load from the API.
    browser.open(&format!("{}/", cloud.url()));
    browser.wait_for(
        Duration::from_secs(15),
        "the machine is listed as revoked, apart from the networks",
        &format!(
            "const r = document.querySelector('{row}'); \
             return !!r && r.dataset.state === 'revoked' && r.textContent.includes('Revoked') \
               && r.textContent.includes('enrollment withdrawn') \
               && !!document.querySelector('tr.group[data-network=\"(revoked)\"]')"
        ),
    );
    assert!(answer["error"].as_str().unwrap().contains("revoked"), "{answer}");
    browser.screenshot(&screenshot_path(dir.path(), "dashboard-revoke.png"));

    // Archived: out of the list until asked for; its readings stay.
    browser.click(&row);
    browser.wait_for(
        Duration::from_secs(15),
        "archiving is offered",
        "return !document.getElementById('archive').hidden",
    );
    browser.click("#archive");
    browser.wait_for(
        Duration::from_secs(15),
        "the archived machine leaves the list",
        &format!(
            "return !document.querySelector('{row}') && !document.getElementById('showarchivedlabel').hidden"
        ),
    );
    browser.click("#showarchived");
    browser.wait_for(
        Duration::from_secs(15),
        "asked for, it is listed again",
        &format!("return !!document.querySelector('{row}')"),
    );
    assert_eq!(cloud.seqs(&id, "cpu.total"), vec![1, 2], "the readings stay");
}

#[test]
fn a_customers_operator_sees_only_its_machines_acknowledges_and_signs_out_for_good() {
    if !available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cloud = CloudProc::start(&dir.path().join("cloud"));
    let mut hubs = Vec::new();
    for (network, host) in [("plant-a", "pump-a"), ("plant-b", "press-b")] {
        let hub = TestMachine::enroll_in(&cloud, "sensorhub", network);
        let id = hub.id();
        let body =
            serde_json::to_vec(&serde_json::json!({"machine_id": id, "hostname": host, "uplink": "direct",
            "buffered": 0, "readings": [{"machine_id": id, "seq": 1, "sensor": "disk.root",
            "ts": chrono::Utc::now(), "value": 99.0, "unit": "%", "state": "error"}]}))
            .unwrap();
        let (status, answer) = hub.post(&cloud, "/v1/batches", body.clone(), &body, false);
        assert_eq!(status, 200, "{answer}");
        hubs.push(id);
    }
    for (id, network) in [("acme", "plant-a"), ("bolt", "plant-b")] {
        let (status, v) =
            cloud.api_post("/v1/customers", serde_json::json!({"id": id, "name": id, "networks": [network]}));
        assert_eq!(status, 201, "{v}");
    }
    add_user(
        &cloud,
        &serde_json::json!({"name": "olga", "password": PASSWORD,
        "grants": [{"customer": "acme", "role": "operator"}]}),
    );

    let browser = Browser::start();
    browser.set_window_size(1400, 1000);
    browser.open(&format!("{}/", cloud.url()));
    browser.wait_for(
        Duration::from_secs(15),
        "the sign-in form shows",
        "return !document.getElementById('login').hidden",
    );
    fill_sign_in(&browser, "olga", PASSWORD);
    let row_a = format!("tr.machine[data-id=\"{}\"]", hubs[0]);
    browser.wait_for(
        Duration::from_secs(15),
        "acme's machine is listed, with who is signed in",
        &format!(
            "return !!document.querySelector('{row_a}') \
               && document.getElementById('whoname').textContent === 'olga'"
        ),
    );
    assert_eq!(
        browser.eval(&format!(
            "return document.querySelectorAll('tr.machine').length === 1 \
               && !document.querySelector('tr.machine[data-id=\"{}\"]') \
               && !document.body.textContent.includes('press-b')",
            hubs[1]
        )),
        true,
        "bolt's machine is nowhere on the page"
    );
    assert_eq!(
        browser.eval("return document.getElementById('enrollsection').hidden"),
        true,
        "an operator enrolls nothing"
    );

    browser.click(&row_a);
    browser.wait_for(
        Duration::from_secs(15),
        "the disk problem offers an acknowledgement",
        "const b = document.querySelector('tr.sensor[data-sensor=\"disk.root\"] button.ack'); return !!b && !b.hidden",
    );
    browser.click("tr.sensor[data-sensor=\"disk.root\"] button.ack");
    browser.wait_for(
        Duration::from_secs(15),
        "acknowledging asks for a comment",
        "const f = document.querySelector('tr.sensor[data-sensor=\"disk.root\"] form.ackform'); return !!f && !f.hidden \
           && document.activeElement === f.querySelector('input')",
    );
    browser.eval(
        "document.querySelector('tr.sensor[data-sensor=\"disk.root\"] input.ackcomment').value = 'new disk ordered'; return true",
    );
    browser.click("tr.sensor[data-sensor=\"disk.root\"] button.ackconfirm");
    browser.wait_for(
        Duration::from_secs(15),
        "the acknowledgement names olga and her comment, and is in the audit trail",
        "const row = document.querySelector('tr.sensor[data-sensor=\"disk.root\"]'); \
         return row.dataset.ack === 'user:olga' && row.textContent.includes('new disk ordered') \
           && row.querySelector('button.ack').hidden && !row.querySelector('button.unack').hidden \
           && [...document.querySelectorAll('#audit tr.audit')].some((r) => r.textContent.includes('ack') && r.textContent.includes('user:olga'))",
    );
    // Home: the problem list says who is on it.
    browser.click("#back");
    browser.wait_for(
        Duration::from_secs(15),
        "the problem list shows who acknowledged the disk problem",
        "return [...document.querySelectorAll('#problist tr.problem')].some((r) => r.dataset.sensor === 'disk.root' \
           && r.dataset.ack === 'user:olga' && r.textContent.includes('Acknowledged by user:olga') && r.textContent.includes('new disk ordered'))",
    );
    browser.click(&row_a);

    // A maintenance window over the machine, entered in the browser's time zone.
    browser.wait_for(
        Duration::from_secs(15),
        "the maintenance form is offered",
        "return !document.getElementById('maintform').hidden",
    );
    browser.eval(
        "const local = (t) => { const d = new Date(t - new Date(t).getTimezoneOffset() * 60000); return d.toISOString().slice(0, 16); }; \
         document.getElementById('maintstart').value = local(Date.now() - 60000); \
         document.getElementById('maintend').value = local(Date.now() + 3600000); \
         document.getElementById('maintcomment').value = 'disk swap'; return true",
    );
    browser.click("#maintform button");
    browser.wait_for(
        Duration::from_secs(15),
        "the window is listed and the machine is in maintenance",
        "return [...document.querySelectorAll('#maintlist tr[data-window]')].some((r) => r.textContent.includes('disk swap') && r.textContent.includes('user:olga')) \
           && document.getElementById('maintstate').textContent.startsWith('In maintenance until')",
    );
    browser.screenshot(&screenshots_dir().join("console-maintenance.png"));
    browser.click("#back");
    browser.wait_for(
        Duration::from_secs(15),
        "the problem list says the machine is in maintenance",
        "return [...document.querySelectorAll('#problist tr.problem')].some((r) => r.dataset.sensor === 'disk.root' \
           && r.dataset.maintenance === 'yes' && r.textContent.includes('In maintenance until'))",
    );
    browser.click(&row_a);

    // An API token for a script, made on the page and shown once; revoked there, it stops at once.
    browser.eval("document.getElementById('apilabel').value = 'script'; document.getElementById('apirole').value = 'viewer'; return true");
    browser.click("#newapitoken");
    browser.wait_for(
        Duration::from_secs(15),
        "the new API token is shown and listed",
        "return document.getElementById('apivalue').value.startsWith('opt_') \
           && [...document.querySelectorAll('#apitokens tr.apitoken')].some((r) => r.textContent.includes('script'))",
    );
    let token =
        browser.eval("return document.getElementById('apivalue').value").as_str().unwrap().to_string();
    let with_token =
        || cloud.client().get(format!("{}/v1/machines", cloud.url())).bearer_auth(&token).send().unwrap();
    let listed: serde_json::Value = with_token().json().unwrap();
    assert_eq!(listed.as_array().map(|l| l.len()), Some(1), "the token sees what olga sees: {listed}");
    browser.click("#apitokens tr.apitoken button.revoke");
    browser.wait_for(
        Duration::from_secs(15),
        "the revoked token leaves the list",
        "return !document.querySelector('#apitokens tr.apitoken')",
    );
    assert_eq!(with_token().status().as_u16(), 401, "a revoked token fails at once");

    let cookies = browser.cookies();
    let session = cookies
        .iter()
        .find(|c| c["name"] == "__Host-outpost_session")
        .unwrap_or_else(|| panic!("no session cookie: {cookies:?}"));
    assert_eq!(
        (session["httpOnly"].as_bool(), session["secure"].as_bool()),
        (Some(true), Some(true)),
        "{session}"
    );
    assert_eq!(session["sameSite"], "Strict", "{session}");
    assert_eq!(
        browser.eval("return document.cookie.includes('outpost_session')"),
        false,
        "scripts cannot read it"
    );
    let cookie = format!("__Host-outpost_session={}", session["value"].as_str().unwrap());
    let with_cookie = || {
        cloud
            .client()
            .get(format!("{}/v1/machines", cloud.url()))
            .header("cookie", &cookie)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(with_cookie(), 200, "the cookie works while signed in");
    browser.click("#signout");
    browser.wait_for(
        Duration::from_secs(15),
        "the sign-in form shows again",
        "return !document.getElementById('login').hidden",
    );
    assert_eq!(with_cookie(), 401, "the session cookie no longer works after sign-out");
    let trail = cloud.api("/v1/audit").to_string();
    for action in ["\"sign-in\"", "\"ack\"", "\"sign-out\""] {
        assert!(
            trail.contains(action) && trail.contains("user:olga"),
            "{action} by olga in the trail: {trail}"
        );
    }
}

/// Where the console test keeps its screenshots, to be looked at by a person: `target/screenshots/`
/// of the workspace.
fn screenshots_dir() -> std::path::PathBuf {
    let d = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// axe-core, vendored under the test tree (never served by the product), injected into the page;
/// returns the violations of WCAG 2 A and AA rules, contrast among them, as `rule: targets` lines.
fn accessibility_violations(browser: &Browser) -> Vec<String> {
    let axe = include_str!("vendor/axe-core/axe.min.js");
    assert_eq!(browser.eval(&format!("{axe}\n;return typeof window.axe")), "object", "axe-core loads");
    let r = browser.eval_async(
        "const done = arguments[arguments.length - 1]; \
         axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21aa']}}) \
           .then((r) => done(r.violations.map((v) => v.id + ': ' + v.nodes.map((n) => n.target.join(' ') + ' (' + (n.failureSummary || '') + ')').join('; ')))) \
           .catch((e) => done(['axe failed: ' + e]));",
    );
    r.as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect()
}

/// The operator's console as a person uses it: sensors forced into error are listed first with
/// how long they have been so; a fast sensor's live updates do not take a click or the keyboard
/// focus away; the phone layout does not scroll sideways; contrast passes an automated check; an
/// unreachable cloud is said so in a banner.
#[test]
fn the_console_shows_problems_first_and_keeps_still_under_live_updates() {
    if !available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cloud = CloudProc::start(&dir.path().join("cloud"));
    let hub_dir = dir.path().join("hub");
    // Nothing listens on `closed`: the tcp check fails; the plugin exits 2 (critical). Load and
    // memory cannot leave OK whatever this machine does, so exactly two sensors are in error.
    let closed = common::free_port();
    let sensors = format!(
        "[[sensor]]\nkind = \"load\"\ninterval = \"1s\"\nwarn = 1000.0\nerror = 2000.0\n\n\
         [[sensor]]\nkind = \"memory\"\ninterval = \"100ms\"\nwarn = 100.0\nerror = 100.0\n\n\
         [[sensor]]\nkind = \"tcp\"\nname = \"database\"\nhost = \"127.0.0.1\"\nport = {closed}\ninterval = \"1s\"\ntimeout = \"500ms\"\n\n\
         [[sensor]]\nkind = \"command\"\nname = \"backup\"\ninterval = \"1s\"\ncommand = \"echo 'CRITICAL: last backup failed'; exit 2\"\n"
    );
    let _hub = start_hub(&hub_dir, &hub_config(&hub_dir, &cloud, &sensors));
    let id = machine_id(&hub_dir);
    wait_until(Duration::from_secs(30), "both broken sensors report error", || {
        ["tcp.database", "cmd.backup"]
            .iter()
            .all(|s| latest(&cloud, &id, s).is_some_and(|l| l["state"] == "error"))
    });
    // When each went into error: its first reading (they were never anything else).
    let first_error = |sensor: &str| -> i64 {
        let r = cloud.api(&format!("/v1/machines/{id}/readings?sensor={sensor}&limit=1"));
        let ts = r[0]["ts"].as_str().unwrap();
        chrono::DateTime::parse_from_rfc3339(ts).unwrap().timestamp_millis()
    };
    // Let the errors last a while, so a wrong "since" would show.
    std::thread::sleep(Duration::from_secs(8));

    let browser = Browser::start();
    browser.set_window_size(1400, 1000);
    sign_in_as_owner(&browser, &cloud);
    let problem = |s: &str| format!("document.querySelector('#problist tr.problem[data-sensor=\"{s}\"]')");
    // Within 5 s of opening the page, as a person glancing at it would expect.
    browser.wait_for(
        Duration::from_secs(5),
        "the home view lists both errors first, with their durations",
        &format!(
            "const rows = [...document.querySelectorAll('#problist tr.problem')]; \
             const first = rows.slice(0, 2).map((r) => r.dataset.sensor).sort().join(','); \
             const a = {}, b = {}; \
             return first === 'cmd.backup,tcp.database' && !!a && !!b && !!a.dataset.since && !!b.dataset.since \
               && /error for \\d/.test(a.textContent) && /error for \\d/.test(b.textContent) \
               && a.dataset.state === 'error'",
            problem("tcp.database"),
            problem("cmd.backup")
        ),
    );
    for sensor in ["tcp.database", "cmd.backup"] {
        let shown =
            browser.eval(&format!("return Number({}.dataset.since)", problem(sensor))).as_i64().unwrap();
        let truth = first_error(sensor);
        assert!(
            (shown - truth).abs() <= 5000,
            "{sensor}: the page says in error since {shown} ms, it was since {truth} ms"
        );
    }
    let text = browser.eval(&format!("return {}.textContent", problem("cmd.backup")));
    assert!(text.as_str().unwrap().contains("last backup failed"), "the plugin's message is shown: {text}");
    // Counts in the header, the page title and the favicon.
    browser.wait_for(
        Duration::from_secs(10),
        "the header and the title count the errors",
        "return document.getElementById('summary').textContent.includes('2 errors') \
           && document.title.startsWith('2 errors') \
           && document.getElementById('favicon').dataset.state === 'error'",
    );
    // The machine row shows its worst state and counts.
    let mrow = browser.eval(&format!(
        "const r = document.querySelector('tr.machine[data-id=\"{id}\"]'); return r.dataset.state + '|' + r.textContent"
    ));
    let mrow = mrow.as_str().unwrap();
    assert!(mrow.starts_with("error|") && mrow.contains("2 errors"), "machine row: {mrow}");

    let violations = accessibility_violations(&browser);
    assert!(violations.is_empty(), "accessibility check of the home view:\n{}", violations.join("\n"));
    let shots = screenshots_dir();
    browser.screenshot(&shots.join("console-home.png"));

    // The machine's page: a fast sensor updates live, and ten clicks at human speed each select
    // what was clicked and leave the keyboard focus there. The same element is clicked every time:
    // had a live update replaced the row, WebDriver would refuse a stale element.
    browser.click(&format!("tr.machine[data-id=\"{id}\"]"));
    browser.wait_for(
        Duration::from_secs(15),
        "the sensors of the machine show",
        "return !!document.querySelector('tr.sensor[data-sensor=\"mem.used_pct\"]') \
           && !!document.querySelector('tr.sensor[data-sensor=\"load.1\"]')",
    );
    let value_of_mem = "return document.querySelector('tr.sensor[data-sensor=\"mem.used_pct\"] time').getAttribute('datetime')";
    let mem = browser.find("tr.sensor[data-sensor=\"mem.used_pct\"]");
    let load = browser.find("tr.sensor[data-sensor=\"load.1\"]");
    let seen_before = browser.eval(value_of_mem);
    for i in 0..10 {
        let (el, sensor) = if i % 2 == 0 { (&mem, "mem.used_pct") } else { (&load, "load.1") };
        browser.click_element(el);
        let state = browser.eval(
            "const s = document.querySelectorAll('tr.sensor.sel'); \
             return [...s].map((r) => r.dataset.sensor).join(',') + '|' + (document.activeElement.dataset.sensor || document.activeElement.tagName)",
        );
        assert_eq!(state, format!("{sensor}|{sensor}"), "click {i}: selection and focus");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_ne!(browser.eval(value_of_mem), seen_before, "the 100 ms sensor updated during the clicks");
    browser.wait_for(
        Duration::from_secs(15),
        "the chart of the selected sensor is drawn",
        "return !!document.querySelector('#chart canvas') && Number(document.getElementById('chart').dataset.points) > 0",
    );
    browser.eval("document.getElementById('ctitle').scrollIntoView(); return true");
    // Dragging across the chart zooms in; a button (for the keyboard too) zooms out again.
    assert_eq!(
        browser.eval("return !!document.querySelector('#chart .u-over')"),
        true,
        "the chart takes the mouse"
    );
    browser.drag("#chart .u-over", -200, 100);
    browser.wait_for(
        Duration::from_secs(5),
        "the zoom can be undone",
        "return !document.querySelector('.resetzoom').hidden",
    );
    browser.screenshot(&shots.join("console-chart.png"));
    browser.click(".resetzoom");
    browser.wait_for(
        Duration::from_secs(5),
        "the whole range is shown again",
        "return document.querySelector('.resetzoom').hidden",
    );

    // Phone width: nothing scrolls sideways, on the home view nor on a machine's page.
    browser.set_window_size(390, 844);
    let width = browser.eval("return window.innerWidth").as_u64().unwrap();
    assert!(width <= 400, "the window is phone-sized: {width}");
    let overflow = "return document.documentElement.scrollWidth - document.documentElement.clientWidth";
    browser.wait_for(Duration::from_secs(5), "the machine page fits 390 px", &format!("{overflow} <= 0"));
    browser.click("#back");
    browser.wait_for(
        Duration::from_secs(5),
        "the home view fits 390 px",
        &format!("if (document.getElementById('problems').hidden) return false; {overflow} <= 0"),
    );
    browser.eval("window.scrollTo(0, 0); return true");
    browser.screenshot(&shots.join("console-phone.png"));

    // A wall display (1920 wide): larger type, problems and machines side by side, nothing
    // scrolls sideways.
    browser.set_window_size(1920, 1080);
    browser.wait_for(
        Duration::from_secs(5),
        "the wall layout applies",
        &format!(
            "if (window.innerWidth < 1800) return false; \
             const side = document.querySelector('main > .side').getBoundingClientRect(), \
               probs = document.getElementById('problems').getBoundingClientRect(); \
             return getComputedStyle(document.body).fontSize === '17px' && probs.left >= side.right && probs.top < 200 \
               && {}",
            "document.documentElement.scrollWidth <= document.documentElement.clientWidth"
        ),
    );
    browser.screenshot(&shots.join("console-wall.png"));

    // The cloud goes away: the page says so plainly.
    browser.set_window_size(1400, 1000);
    let mut cloud = cloud;
    cloud.proc.take().unwrap().kill9();
    browser.wait_for(
        Duration::from_secs(20),
        "a banner says the cloud cannot be reached",
        "const b = document.getElementById('banner'); return !b.hidden && b.textContent.includes('cannot be reached')",
    );
    browser.screenshot(&shots.join("console-unreachable.png"));
}

/// Old data must not look current: when a machine falls silent, the page lists it as offline
/// with since when, greys it and its sensors, and shows absolute times with their date.
#[test]
fn a_silent_machine_is_shown_offline_with_since_when_and_its_sensors_greyed() {
    if !available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cloud = CloudProc::start_on(&dir.path().join("cloud"), common::free_port(), "offline_after = \"5s\"");
    let hub_dir = dir.path().join("hub");
    let hub = start_hub(
        &hub_dir,
        &hub_config(&hub_dir, &cloud, "[[sensor]]\nkind = \"memory\"\ninterval = \"500ms\"\n"),
    );
    let id = machine_id(&hub_dir);
    wait_until(Duration::from_secs(30), "memory readings reach the cloud", || {
        latest(&cloud, &id, "mem.used_pct").is_some()
    });
    let browser = Browser::start();
    browser.set_window_size(1400, 1000);
    sign_in_as_owner(&browser, &cloud);
    let row = format!("document.querySelector('tr.machine[data-id=\"{id}\"]')");
    browser.wait_for(
        Duration::from_secs(15),
        "the machine is listed as reporting",
        &format!(
            "const r = {row}; return !!r && r.dataset.state !== 'offline' && r.textContent.includes('heard')"
        ),
    );
    hub.kill9();
    let year = chrono::Utc::now().format("%Y").to_string();
    browser.wait_for(
        Duration::from_secs(40),
        "the silent machine is listed as a problem, offline since a dated time, and greyed",
        &format!(
            "const p = document.querySelector('#problist tr.problem[data-kind=\"offline\"][data-machine=\"{id}\"]'); \
             const r = {row}; \
             return !!p && /offline for \\d/.test(p.textContent) && p.textContent.includes('since ') \
               && p.textContent.includes('{year}') && r.dataset.state === 'offline' && r.classList.contains('offline') \
               && r.textContent.includes('offline since')"
        ),
    );
    browser.click(&format!("tr.machine[data-id=\"{id}\"]"));
    browser.wait_for(
        Duration::from_secs(15),
        "its sensors are greyed and say the machine is offline, with dated times",
        &format!(
            "const s = document.querySelector('tr.sensor[data-sensor=\"mem.used_pct\"]'); \
             return !!s && s.classList.contains('offline') && s.textContent.includes('machine offline since') \
               && s.querySelector('time').title.includes('{year}')"
        ),
    );
}
