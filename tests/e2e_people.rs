//! People end to end, with the real binary over real HTTPS: the first owner made on the cloud's
//! host (`outpost user add --owner`, the password on standard input), the one-time setup link
//! printed at first start and dead once an owner exists, sign-in and an API token surviving a
//! restart, and no password, session or token in any file of the cloud or in its log.

mod common;

use common::*;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

const PASSWORD: &str = "a long enough passphrase";
const WRONG: &str = "a wrong guess at it";

fn outpost(args: &[&str], stdin: &str) -> std::process::Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// Every file under `dir`, recursively.
fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn the_first_owner_is_made_on_the_host_and_no_secret_reaches_a_file_or_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut cloud = CloudProc::start(&dir.path().join("cloud"));
    let log = cloud.dir.join("cloud.log");
    wait_until(Duration::from_secs(10), "the setup link is printed", || {
        std::fs::read_to_string(&log).unwrap_or_default().contains("/#setup=")
    });
    let text = std::fs::read_to_string(&log).unwrap();
    let link = text.split("/#setup=").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
    let config = cloud.config.to_str().unwrap().to_string();

    let out = outpost(
        &["user", "add", "--config", &config, "--owner", "root", "--password-stdin"],
        &format!("{PASSWORD}\n"),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Nothing made without a password that is long enough, nor twice.
    let out =
        outpost(&["user", "add", "--config", &config, "--owner", "root", "--password-stdin"], "short\n");
    assert!(!out.status.success());
    let http = cloud.client();
    let url = cloud.url();

    // The setup link works only while nobody exists.
    let r = http
        .post(format!("{url}/v1/setup"))
        .json(&serde_json::json!({"token": link, "name": "intruder", "password": PASSWORD}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);

    let r = http
        .post(format!("{url}/v1/session"))
        .json(&serde_json::json!({"name": "root", "password": WRONG}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = http
        .post(format!("{url}/v1/session"))
        .json(&serde_json::json!({"name": "root", "password": PASSWORD}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    let cookie = set.split(';').next().unwrap().to_string();
    let session = cookie.split_once('=').unwrap().1.to_string();
    let r = http
        .post(format!("{url}/v1/api-tokens"))
        .header("cookie", &cookie)
        .header("origin", &url)
        .json(&serde_json::json!({"role": "viewer", "customer": "*", "label": "script"}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let token = r.json::<serde_json::Value>().unwrap()["token"].as_str().unwrap().to_string();

    // Sessions and tokens are on disk (as hashes): a restarted cloud still knows them.
    cloud.stop();
    cloud.restart();
    let me = http.get(format!("{url}/v1/me")).header("cookie", &cookie).send().unwrap();
    assert_eq!(me.status().as_u16(), 200);
    let machines = http.get(format!("{url}/v1/machines")).bearer_auth(&token).send().unwrap();
    assert_eq!(machines.status().as_u16(), 200);
    let out = outpost(&["user", "list", "--config", &config], "");
    assert!(String::from_utf8_lossy(&out.stdout).contains("root\towner"), "{out:?}");
    let trail = cloud.api("/v1/audit").to_string();
    for what in ["\"user-added\"", "\"local-admin\"", "\"sign-in\"", "\"api-token-created\"", "user:root"] {
        assert!(trail.contains(what), "{what} in the trail: {trail}");
    }
    cloud.stop();

    let secret = token.splitn(3, '_').nth(2).unwrap().to_string(); // base64url may hold '_' itself
    let all = files(dir.path());
    assert!(all.iter().any(|f| f.ends_with("cloud.log")), "{all:?}");
    for f in all {
        let bytes = std::fs::read(&f).unwrap();
        for needle in [PASSWORD, WRONG, &session, &token, &secret] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{} holds a secret in clear",
                f.display()
            );
        }
    }
}
