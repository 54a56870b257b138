//! The installer through the real binary: `outpost install --root DIR` leaves a config that the
//! same binary accepts with `outpost config check`. Hub and cloud configs are self-contained; a
//! connector's names its cloud CA inside the image (`/etc/outpost/cloud-ca.pem`), which a check on
//! the building host cannot see, so it is checked for its cloud URL and CA path instead.

mod common;

use common::{CloudApi, CloudProc, BIN};
use std::process::Command;

#[test]
fn installed_configs_pass_config_check_for_every_role() {
    // Hubs and connectors are installed against a real cloud: the installer checks that it answers.
    let dir = tempfile::tempdir().unwrap();
    let cloud = CloudProc::start(&dir.path().join("cloud"));
    for role in ["sensorhub", "connector", "cloud"] {
        let root = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["install", "--role", role, "--root"]).arg(root.path());
        if role == "connector" {
            cmd.args(["--cloud", &cloud.url(), "--cloud-ca"])
                .arg(cloud.ca())
                .args(["--enroll", &cloud.enroll_token()]);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "install --role {role}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let config = root.path().join(format!("etc/outpost/{role}.toml"));
        assert!(config.exists(), "{} was written", config.display());
        let text = std::fs::read_to_string(&config).unwrap();
        assert!(
            text.contains(&format!("/var/lib/outpost/{role}")),
            "data_dir points at the service's data: {text}"
        );
        if role == "connector" {
            let parsed: toml::Table = toml::from_str(&text).unwrap();
            assert_eq!(parsed["cloud"]["url"].as_str(), Some(cloud.url().as_str()), "{text}");
            assert!(root.path().join("etc/outpost/cloud-ca.pem").exists());
        } else {
            let check = Command::new(BIN)
                .args(["config", "check"])
                .arg(&config)
                .args(["--role", role])
                .output()
                .unwrap();
            assert!(
                check.status.success(),
                "config check of the installed {role} config: {}",
                String::from_utf8_lossy(&check.stderr)
            );
        }
        let unit = root.path().join(format!("etc/systemd/system/outpost-{role}.service"));
        let unit_text = std::fs::read_to_string(&unit).unwrap();
        assert!(
            unit_text.contains(&format!("outpost {role} --config /etc/outpost/{role}.toml")),
            "{unit_text}"
        );
    }
}

#[test]
fn a_connector_without_a_cloud_is_refused_before_anything_is_written() {
    let root = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["install", "--role", "connector", "--root"])
        .arg(root.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--cloud"), "says what is missing: {err}");
    assert!(!root.path().join("etc/outpost/connector.toml").exists(), "nothing was written");
}
