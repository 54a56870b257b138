//! [`ManagedStore`] on every engine: each case is an `async fn(Managed)`, run once on sled and
//! once on PostgreSQL (a fresh database on the throwaway server of `store/tests.rs`).

use super::managed::*;
use chrono::Utc;
use outpost_shared::keys::{KeyPair, MachineId, Signed};
use outpost_shared::managed::SensorDocument;
use outpost_shared::sensor_config::{SensorConfig, SensorKind};
use std::sync::{Arc, OnceLock};

enum Keep {
    Dir(#[allow(dead_code)] tempfile::TempDir),
    Nothing,
}

fn sled_managed() -> (Managed, Keep) {
    let dir = tempfile::tempdir().unwrap();
    let store = super::sled::SledStore::open(dir.path()).unwrap();
    let m = super::sled::managed::SledManaged::open(store.db(), store.flusher()).unwrap();
    (Arc::new(m), Keep::Dir(dir))
}

async fn pg_managed() -> (Managed, Keep) {
    let url = super::tests::fresh_database().await;
    let store = super::postgres::PgStore::open(&url, &Default::default()).await.unwrap();
    (Arc::new(store.managed()), Keep::Nothing)
}

macro_rules! every_engine {
    ($($case:ident),* $(,)?) => {
        mod on_sled {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let (m, _keep) = super::sled_managed();
                    super::$case(m).await
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let (m, _keep) = super::pg_managed().await;
                    super::$case(m).await
                }
            )*
        }
    };
}

every_engine!(
    a_save_keeps_sensors_templates_assignments_and_versions_together,
    a_version_that_is_not_the_next_is_a_conflict_and_nothing_of_the_change_is_kept,
    deliveries_are_listed_newest_first_and_capped,
    the_history_keeps_the_newest_versions,
);

fn key() -> &'static KeyPair {
    static KEY: OnceLock<KeyPair> = OnceLock::new();
    KEY.get_or_init(|| KeyPair::generate().unwrap())
}

const M1: &str = "0123456789abcdef0123456789abcdef";
const M2: &str = "fedcba9876543210fedcba9876543210";

fn tcp(name: &str, port: u16) -> SensorConfig {
    let mut s = SensorConfig::new(SensorKind::Tcp);
    s.name = Some(name.into());
    s.host = Some("db.example".into());
    s.port = Some(port);
    s
}

fn version(machine: &str, version: u64, sensors: Vec<SensorConfig>) -> VersionRecord {
    let doc = SensorDocument {
        machine: MachineId::parse(machine).unwrap(),
        version,
        issued_at: Utc::now(),
        issued_by: "admin".into(),
        sensors,
        relays: vec![],
    };
    VersionRecord {
        machine: machine.into(),
        version,
        at: Utc::now(),
        who: "admin".into(),
        change: format!("v{version}"),
        document: Signed::sign(key(), &doc).unwrap(),
    }
}

fn template(name: &str, sensors: Vec<SensorConfig>) -> Template {
    Template { name: name.into(), sensors, updated_by: "admin".into(), updated_at: Utc::now() }
}

async fn a_save_keeps_sensors_templates_assignments_and_versions_together(m: Managed) {
    assert!(m.latest_version(M1).await.unwrap().is_none());
    assert!(m.machine_sensors(M1).await.unwrap().is_empty());
    m.save(ManagedChange {
        machine_sensors: vec![(M1.into(), vec![tcp("db", 5432)])],
        template: Some(TemplateWrite::Put(template("web", vec![tcp("web", 443)]))),
        assignments: vec![(M1.into(), vec!["web".into()]), (M2.into(), vec!["web".into()])],
        versions: vec![version(M1, 1, vec![tcp("web", 443), tcp("db", 5432)]), version(M2, 1, vec![])],
    })
    .await
    .unwrap();
    assert_eq!(m.machine_sensors(M1).await.unwrap(), vec![tcp("db", 5432)]);
    assert_eq!(m.machine_templates(M1).await.unwrap(), vec!["web".to_string()]);
    assert_eq!(m.machines_using("web").await.unwrap(), vec![M1.to_string(), M2.to_string()]);
    assert_eq!(m.template("web").await.unwrap().unwrap().sensors, vec![tcp("web", 443)]);
    assert_eq!(m.managed_machines().await.unwrap(), vec![M1.to_string(), M2.to_string()]);

    // A second version; the template list changes order and loses one for M2.
    m.save(ManagedChange {
        template: Some(TemplateWrite::Put(template("db", vec![]))),
        assignments: vec![(M1.into(), vec!["db".into(), "web".into()]), (M2.into(), vec![])],
        versions: vec![version(M1, 2, vec![tcp("db", 5432)]), version(M2, 2, vec![])],
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(m.machine_templates(M1).await.unwrap(), vec!["db".to_string(), "web".to_string()]);
    assert!(m.machine_templates(M2).await.unwrap().is_empty());
    assert_eq!(m.machines_using("web").await.unwrap(), vec![M1.to_string()], "M2 left the template");
    let names: Vec<String> = m.templates().await.unwrap().into_iter().map(|t| t.name).collect();
    assert_eq!(names, vec!["db".to_string(), "web".to_string()]);

    let history = m.history(M1, 10).await.unwrap();
    assert_eq!(history.iter().map(|v| v.version).collect::<Vec<_>>(), vec![2, 1], "newest first");
    assert_eq!(m.latest_version(M1).await.unwrap().unwrap().version, 2);
    let v1 = m.version(M1, 1).await.unwrap().unwrap();
    let doc = v1.document.verify(key().public()).unwrap();
    assert_eq!(doc.sensors, vec![tcp("web", 443), tcp("db", 5432)], "the signed document comes back intact");

    // Removing the machine's own sensors and deleting a template.
    m.save(ManagedChange {
        machine_sensors: vec![(M1.into(), vec![])],
        template: Some(TemplateWrite::Delete("db".into())),
        assignments: vec![(M1.into(), vec!["web".into()])],
        versions: vec![version(M1, 3, vec![tcp("web", 443)])],
    })
    .await
    .unwrap();
    assert!(m.machine_sensors(M1).await.unwrap().is_empty());
    assert!(m.template("db").await.unwrap().is_none());
    assert!(m.machines_using("db").await.unwrap().is_empty());
}

async fn a_version_that_is_not_the_next_is_a_conflict_and_nothing_of_the_change_is_kept(m: Managed) {
    m.save(ManagedChange {
        machine_sensors: vec![(M1.into(), vec![tcp("db", 5432)])],
        versions: vec![version(M1, 1, vec![tcp("db", 5432)])],
        ..Default::default()
    })
    .await
    .unwrap();
    // Two saves computed from version 1 at once: the second one's version 2 is taken.
    m.save(ManagedChange {
        machine_sensors: vec![(M1.into(), vec![tcp("db", 1)])],
        versions: vec![version(M1, 2, vec![tcp("db", 1)])],
        ..Default::default()
    })
    .await
    .unwrap();
    let late = m
        .save(ManagedChange {
            machine_sensors: vec![(M1.into(), vec![tcp("db", 2)])],
            template: Some(TemplateWrite::Put(template("late", vec![]))),
            versions: vec![version(M2, 1, vec![]), version(M1, 2, vec![tcp("db", 2)])],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(late, crate::CloudError::Conflict(_)), "{late}");
    assert_eq!(m.machine_sensors(M1).await.unwrap(), vec![tcp("db", 1)], "the first save stands");
    assert!(m.template("late").await.unwrap().is_none(), "nothing of the refused change was kept");
    assert!(m.latest_version(M2).await.unwrap().is_none(), "not even the other machine's version");
    // Skipping a version is refused too.
    let skip = version(M1, 5, vec![]);
    let e = m.save(ManagedChange { versions: vec![skip], ..Default::default() }).await.unwrap_err();
    assert!(matches!(e, crate::CloudError::Conflict(_)), "{e}");
}

async fn deliveries_are_listed_newest_first_and_capped(m: Managed) {
    let t0 = Utc::now();
    for i in 0..(DELIVERIES_KEPT as i64 + 5) {
        let d = Delivery {
            machine: M1.into(),
            version: 1 + (i as u64) / 10,
            command: format!("c{i:03}"),
            at: t0 + chrono::Duration::seconds(i),
        };
        m.note_delivery(d).await.unwrap();
    }
    m.note_delivery(Delivery { machine: M2.into(), version: 1, command: "other".into(), at: t0 })
        .await
        .unwrap();
    let list = m.deliveries(M1, 1000).await.unwrap();
    assert_eq!(list.len(), DELIVERIES_KEPT, "older deliveries are let go");
    assert_eq!(list[0].command, format!("c{:03}", DELIVERIES_KEPT + 4), "the newest first");
    assert!(list.windows(2).all(|w| (w[0].version, w[0].at) >= (w[1].version, w[1].at)));
    assert_eq!(m.deliveries(M2, 10).await.unwrap().len(), 1, "another machine's are its own");
    assert_eq!(m.deliveries(M1, 3).await.unwrap().len(), 3);
}

#[tokio::test]
async fn sled_keeps_a_save_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = super::sled::SledStore::open(dir.path()).unwrap();
        let m = super::sled::managed::SledManaged::open(store.db(), store.flusher()).unwrap();
        m.save(ManagedChange {
            machine_sensors: vec![(M1.into(), vec![tcp("db", 5432)])],
            versions: vec![version(M1, 1, vec![tcp("db", 5432)])],
            ..Default::default()
        })
        .await
        .unwrap();
        // Dropped without a clean close: what `save` returned for must be on disk.
    }
    // A restart is a new process after the old one has gone; here a background thread of the
    // dropped handles may still hold sled's lock file for a moment, so the reopen waits for it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let store = loop {
        match super::sled::SledStore::open(dir.path()) {
            Ok(s) => break s,
            Err(e)
                if std::time::Instant::now() < deadline
                    && e.to_string().contains("could not acquire lock") =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await
            }
            Err(e) => panic!("reopen: {e}"),
        }
    };
    let m = super::sled::managed::SledManaged::open(store.db(), store.flusher()).unwrap();
    assert_eq!(m.machine_sensors(M1).await.unwrap(), vec![tcp("db", 5432)]);
    assert_eq!(m.latest_version(M1).await.unwrap().unwrap().version, 1);
}

async fn the_history_keeps_the_newest_versions(m: Managed) {
    let record = version(M1, 1, vec![tcp("db", 1)]);
    for v in 1..=HISTORY_KEPT + 2 {
        let r = VersionRecord { version: v, ..record.clone() };
        m.save(ManagedChange { versions: vec![r], ..Default::default() }).await.unwrap();
    }
    let history = m.history(M1, 10_000).await.unwrap();
    assert_eq!(history.len() as u64, HISTORY_KEPT);
    assert_eq!(history[0].version, HISTORY_KEPT + 2);
    assert!(m.version(M1, 2).await.unwrap().is_none(), "the oldest went");
    assert!(m.version(M1, 3).await.unwrap().is_some());
    assert_eq!(m.latest_version(M1).await.unwrap().unwrap().version, HISTORY_KEPT + 2);
}
