//! The dashboard in a real browser (Debian's headless Chromium over WebDriver): it must render
//! this machine's sensors, with state colours and a history chart, from the live API.

mod common;

use common::browser::{available, Browser};
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

    // Without the token the page asks for it instead of showing data.
    browser.open(&cloud.url());
    browser.wait_for(
        Duration::from_secs(15),
        "the login form shows",
        "return !document.getElementById('login').hidden",
    );
    assert_eq!(browser.eval("return document.querySelectorAll('tr.sensor').length"), 0);

    browser.open(&format!("{}/#token={}", cloud.url(), cloud.admin_token()));
    browser.wait_for(
        Duration::from_secs(15),
        "the cpu.total row shows with a state colour",
        "const r = document.querySelector('tr.sensor[data-sensor=\"cpu.total\"] .dot'); \
         return !!r && /state-(ok|warn|error)/.test(r.className)",
    );
    browser.wait_for(
        Duration::from_secs(15),
        "the history chart is drawn",
        "return !!document.querySelector('#chart path')",
    );
    assert!(browser
        .eval("return document.getElementById('mtitle').textContent")
        .as_str()
        .unwrap()
        .starts_with("Sensors of "));
    // Live: the chart grows as readings arrive, without a reload.
    let before = browser
        .eval("return document.querySelector('#chart path').getAttribute('d').length")
        .as_u64()
        .unwrap();
    browser.wait_for(
        Duration::from_secs(30),
        "live readings extend the chart",
        &format!("return document.querySelector('#chart path').getAttribute('d').length > {before}"),
    );
    browser.wait_for(
        Duration::from_secs(5),
        "the live indicator says live",
        "return document.getElementById('live').textContent === 'live'",
    );
    browser.screenshot(&dir.path().join("dashboard.png"));
}
