//! The deciding rules without HTTP: effective sets, field names of problems, password handling.

use super::document::{effective, validate, Origin};
use super::secrets::{parse_sensor, redacted, seal_input, PasswordInput};
use crate::store::managed::Template;
use chrono::Utc;
use outpost_shared::keys::{KeyPair, MachineId};
use outpost_shared::managed::SensorDocument;
use outpost_shared::sensor_config::{SensorConfig, SensorKind};
use serde_json::json;

fn tcp(name: &str, port: u16) -> SensorConfig {
    let mut s = SensorConfig::new(SensorKind::Tcp);
    s.name = Some(name.into());
    s.host = Some("db.example".into());
    s.port = Some(port);
    s
}

fn template(name: &str, sensors: Vec<SensorConfig>) -> Template {
    Template { name: name.into(), sensors, updated_by: "t".into(), updated_at: Utc::now() }
}

#[test]
fn templates_apply_in_order_and_a_machines_own_sensor_of_the_same_id_wins() {
    let eff = effective(
        &[template("a", vec![tcp("db", 1), tcp("web", 2)]), template("b", vec![tcp("mail", 3)])],
        &[tcp("web", 99), tcp("own", 4)],
    )
    .unwrap();
    let ids: Vec<String> = eff.sensors.iter().map(|s| s.id()).collect();
    assert_eq!(ids, ["tcp.db", "tcp.web", "tcp.mail", "tcp.own"]);
    assert_eq!(eff.sensors[1].port, Some(99), "the machine's own setting wins");
    assert_eq!(eff.origins[1], Origin::Machine);
    assert_eq!(eff.origins[2], Origin::Template("b".into()));
}

#[test]
fn two_templates_defining_one_sensor_is_an_error_naming_both() {
    let problems =
        effective(&[template("first", vec![tcp("db", 1)]), template("second", vec![tcp("db", 2)])], &[])
            .unwrap_err();
    assert_eq!(problems.len(), 1);
    assert!(
        problems[0].message.contains("`first`") && problems[0].message.contains("`second`"),
        "{problems:?}"
    );
}

#[test]
fn problems_name_the_sensor_and_field_and_where_it_comes_from() {
    let mut bad = tcp("db", 1);
    bad.warn = Some(500.0);
    bad.error = Some(100.0);
    let doc = SensorDocument {
        machine: MachineId::parse(&"ab".repeat(16)).unwrap(),
        version: 1,
        issued_at: Utc::now(),
        issued_by: "t".into(),
        sensors: vec![tcp("ok", 2), bad],
        relays: vec![],
    };
    let problems = validate(&doc, &[Origin::Machine, Origin::Template("web".into())]).unwrap_err();
    assert_eq!(problems[0].field, "sensor[tcp.db].warn", "{problems:?}");
    assert!(problems[0].message.contains("template `web`"), "{problems:?}");
}

#[test]
fn a_ca_file_or_windows_path_the_cloud_cannot_see_is_left_to_the_hub() {
    let mut http = SensorConfig::new(SensorKind::Http);
    http.name = Some("intranet".into());
    http.url = Some("https://intranet.example/".into());
    http.ca_file = Some("/etc/ssl/only-on-the-hub.pem".into());
    let mut file = SensorConfig::new(SensorKind::File);
    file.name = Some("backup".into());
    file.path = Some(r"C:\backup\last.zip".into());
    let mut relative = SensorConfig::new(SensorKind::File);
    relative.name = Some("rel".into());
    relative.path = Some("backup/last.zip".into());
    let doc = SensorDocument {
        machine: MachineId::parse(&"ab".repeat(16)).unwrap(),
        version: 1,
        issued_at: Utc::now(),
        issued_by: "t".into(),
        sensors: vec![http, file, relative],
        relays: vec![],
    };
    let problems = validate(&doc, &[Origin::Machine, Origin::Machine, Origin::Machine]).unwrap_err();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].field, "sensor[file.rel].path");
}

#[test]
fn a_password_is_sealed_kept_or_cleared_and_never_shown() {
    let key = KeyPair::generate().unwrap();
    let input = parse_sensor(
        json!({"kind": "http", "name": "web", "url": "https://x.example/", "username": "u", "password": "hunter2"}),
        "sensor",
    )
    .ok()
    .unwrap();
    assert!(matches!(input.password, PasswordInput::New(_)));
    let stored = seal_input(input, key.public(), None).unwrap();
    let sealed = stored.password.clone().unwrap();
    assert!(!sealed.expose().contains("hunter2"));
    assert_eq!(outpost_shared::keys::unseal(&key, sealed.expose()).unwrap().expose(), "hunter2");
    let shown = redacted(&stored);
    assert_eq!(shown["password"], json!({"set": true}));
    assert!(!shown.to_string().contains("sealed:"), "not even the sealed form is shown");

    // What an answer shows, sent back, keeps the password; null removes it.
    let again = parse_sensor(shown.clone(), "sensor").ok().unwrap();
    assert!(matches!(again.password, PasswordInput::Keep));
    assert_eq!(seal_input(again, key.public(), Some(&stored)).unwrap().password, Some(sealed));
    let mut cleared = shown;
    cleared["password"] = serde_json::Value::Null;
    let c = parse_sensor(cleared, "sensor").ok().unwrap();
    assert_eq!(seal_input(c, key.public(), Some(&stored)).unwrap().password, None);
}

#[test]
fn a_malformed_sensor_is_named_without_quoting_the_password() {
    let bad = |v: serde_json::Value| parse_sensor(v, "sensor").err().unwrap();
    let p = bad(json!({"kind": "http", "name": "w", "password": "hunter2", "colour": "red"}));
    assert!(p[0].message.contains("colour"), "{p:?}");
    assert!(!format!("{p:?}").contains("hunter2"));
    let p = bad(json!({"kind": "http", "password": 12}));
    assert_eq!(p[0].field, "sensor.password");
    let p = bad(json!({"kind": "http", "password": "sealed:v1:abc:def"}));
    assert!(p[0].message.contains("already sealed"), "{p:?}");
    let p = bad(json!({"kind": "teapot"}));
    assert!(p[0].message.contains("teapot"), "{p:?}");
}
