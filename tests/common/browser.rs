//! A real headless Chromium driven over WebDriver (Debian's chromium + chromium-driver): load a
//! page, wait for what a person would see, click. Plain HTTP to chromedriver on loopback.

use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::blocking::Client,
    _profile: tempfile::TempDir,
}

/// None (outside CI) when chromium or chromedriver is missing; CI installs both and must run.
pub fn available() -> bool {
    let ok = |c: &str| Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success());
    if ok("chromium") && ok("chromedriver") {
        return true;
    }
    assert!(
        std::env::var("CI").is_err(),
        "CI must have chromium and chromium-driver installed (see .ci/run)"
    );
    eprintln!(
        "skipping: chromium or chromedriver is not installed (apt-get install chromium chromium-driver)"
    );
    false
}

impl Browser {
    pub fn start() -> Browser {
        let port = super::free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
        super::wait_until(Duration::from_secs(20), "chromedriver answers", || {
            http.get(format!("{base}/status")).send().is_ok_and(|r| r.status().is_success())
        });
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            // The cloud's certificate comes from its own fresh CA, which this throwaway profile
            // does not know; the TLS itself is still real.
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                         "--disable-background-networking", "--disable-component-update", "--disable-sync",
                         "--disable-dev-shm-usage", format!("--user-data-dir={}", profile.path().display())]
            }
        }}});
        let r: Value = http.post(format!("{base}/session")).json(&caps).send().unwrap().json().unwrap();
        let session = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {r}"))
            .to_string();
        Browser { driver, base, session, http, _profile: profile }
    }

    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let req = match method {
            "GET" => self.http.get(url),
            _ => self.http.post(url).json(&body),
        };
        let r: Value = req.send().unwrap().json().unwrap();
        if r["value"].get("error").is_some() {
            panic!("WebDriver {path}: {}", r["value"]);
        }
        r["value"].clone()
    }

    /// Every cookie of the current page, HttpOnly ones included (as WebDriver reports them:
    /// `name`, `value`, `httpOnly`, `secure`, `sameSite`).
    pub fn cookies(&self) -> Vec<Value> {
        self.call("GET", "/cookie", json!(null)).as_array().cloned().unwrap_or_default()
    }

    pub fn open(&self, url: &str) {
        self.call("POST", "/url", json!({"url": url}));
    }

    /// Runs `script` (a function body; `return` a value) in the page.
    pub fn eval(&self, script: &str) -> Value {
        self.call("POST", "/execute/sync", json!({"script": script, "args": []}))
    }

    /// Runs `script` (a function body) that calls its last argument with the result, e.g.
    /// `const done = arguments[arguments.length - 1]; later.then(done)`.
    pub fn eval_async(&self, script: &str) -> Value {
        self.call("POST", "/execute/async", json!({"script": script, "args": []}))
    }

    /// Waits until `script` returns true in the page.
    pub fn wait_for(&self, limit: Duration, what: &str, script: &str) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.eval(script) == Value::Bool(true) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let html = self.eval("return document.body.innerHTML");
        panic!("timed out after {limit:?} waiting until {what}; page:\n{html}");
    }

    /// The WebDriver reference of the first element matching `css`.
    pub fn find(&self, css: &str) -> String {
        let el = self.call("POST", "/element", json!({"using": "css selector", "value": css}));
        el.as_object().and_then(|o| o.values().next()).and_then(|v| v.as_str()).unwrap().to_string()
    }

    pub fn click(&self, css: &str) {
        self.click_element(&self.find(css));
    }

    /// Clicks an element found before; fails if the page has replaced it since (stale element).
    pub fn click_element(&self, id: &str) {
        self.call("POST", &format!("/element/{id}/click"), json!({}));
    }

    /// Presses the mouse at `from` pixels right of the element's centre and releases it at `to`,
    /// moving slowly, as a person drags across a chart.
    pub fn drag(&self, css: &str, from: i64, to: i64) {
        let el = self.call("POST", "/element", json!({"using": "css selector", "value": css}));
        let actions = json!({"actions": [{"type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"},
            "actions": [
                {"type": "pointerMove", "origin": el, "x": from, "y": 0},
                {"type": "pointerDown", "button": 0},
                {"type": "pointerMove", "origin": el, "x": to, "y": 0, "duration": 300},
                {"type": "pointerUp", "button": 0}]}]});
        self.call("POST", "/actions", actions);
    }

    /// Resizes the browser window (CSS pixels), e.g. to see a desktop layout in a screenshot.
    pub fn set_window_size(&self, width: u32, height: u32) {
        self.call("POST", "/window/rect", json!({"width": width, "height": height}));
    }

    pub fn screenshot(&self, path: &std::path::Path) {
        use base64::Engine;
        let b64 = self.call("GET", "/screenshot", Value::Null);
        let png = base64::engine::general_purpose::STANDARD.decode(b64.as_str().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.http.delete(format!("{}/session/{}", self.base, self.session)).send();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
