//! Signing in to the dashboard in the browser tests: users made through the API with the
//! host-side admin token, the sign-in form filled as a person would.

use super::browser::Browser;
use super::{CloudApi, CloudProc};
use std::time::Duration;

/// The password of the users these tests make.
pub const PASSWORD: &str = "correct horse battery";

/// Makes a user through the API with the host-side admin token (as `outpost user add` does).
pub fn add_user(cloud: &CloudProc, user: &serde_json::Value) {
    let (status, v) = cloud.request("POST", "/v1/users", Some(user));
    assert!(status == 201 || v.to_string().contains("already"), "user: {status} {v}");
}

/// Types name and password into the sign-in form and sends it.
pub fn fill_sign_in(browser: &Browser, name: &str, password: &str) {
    let js = format!(
        "document.getElementById('username').value = {}; document.getElementById('password').value = {}; return true",
        serde_json::Value::from(name),
        serde_json::Value::from(password)
    );
    browser.eval(&js);
    browser.click("#loginbutton");
}

/// Opens the dashboard and signs in as an owner (made first if need be).
pub fn sign_in_as_owner(browser: &Browser, cloud: &CloudProc) {
    add_user(cloud, &serde_json::json!({"name": "owner", "password": PASSWORD, "owner": true}));
    browser.open(&format!("{}/", cloud.url()));
    browser.wait_for(
        Duration::from_secs(15),
        "the sign-in form shows",
        "return !document.getElementById('login').hidden",
    );
    fill_sign_in(browser, "owner", PASSWORD);
    browser.wait_for(
        Duration::from_secs(15),
        "the dashboard shows",
        "return !document.getElementById('app').hidden",
    );
}
