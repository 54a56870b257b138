//! [`ManagedStore`] on the embedded database. A save is one sled transaction over the trees it
//! touches, then the database's one group-commit flush: durable, and all or nothing.
//!
//! Trees:
//! - `managed_sensors`: `machine` → json(Vec<SensorConfig>), the machine's own sensors.
//! - `managed_assign`: `machine` → json(Vec<template name>), in the order they apply.
//! - `managed_users`: `template \0 machine` → empty, the reverse index of `managed_assign`.
//! - `managed_templates`: `name` → json(Template).
//! - `managed_counter`: `machine` → be64 newest version (a transaction cannot scan, so the
//!   "exactly one above" check reads this).
//! - `managed_versions`: `machine \0 version(be64)` → json(VersionRecord).
//! - `managed_deliveries`: `machine \0 version(be64) \0 command` → json(Delivery).

use crate::error::CloudError;
use crate::store::managed::{
    check_next, Delivery, ManagedChange, ManagedStore, Template, TemplateWrite, VersionRecord,
    DELIVERIES_KEPT, HISTORY_KEPT,
};
use outpost_shared::group_flush::GroupFlush;
use outpost_shared::sensor_config::SensorConfig;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

#[derive(Clone)]
pub struct SledManaged {
    flusher: GroupFlush,
    sensors: sled::Tree,
    assign: sled::Tree,
    users: sled::Tree,
    templates: sled::Tree,
    counter: sled::Tree,
    versions: sled::Tree,
    deliveries: sled::Tree,
}

fn key2(a: &str, b: &str) -> Vec<u8> {
    let mut k = a.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(b.as_bytes());
    k
}

fn version_key(machine: &str, version: u64) -> Vec<u8> {
    let mut k = machine.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&version.to_be_bytes());
    k
}

fn prefix(machine: &str) -> Vec<u8> {
    let mut k = machine.as_bytes().to_vec();
    k.push(0);
    k
}

fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("managed records serialise")
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, CloudError> {
    serde_json::from_slice(bytes).map_err(|e| CloudError::Corrupt(format!("{what}: {e}")))
}

fn be64(b: &[u8]) -> u64 {
    b.get(..8).map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes"))).unwrap_or(0)
}

impl SledManaged {
    /// `flusher` is the database's one flusher (never a second flush beside it: sled #1308).
    pub fn open(db: &sled::Db, flusher: GroupFlush) -> Result<SledManaged, CloudError> {
        Ok(SledManaged {
            flusher,
            sensors: db.open_tree("managed_sensors")?,
            assign: db.open_tree("managed_assign")?,
            users: db.open_tree("managed_users")?,
            templates: db.open_tree("managed_templates")?,
            counter: db.open_tree("managed_counter")?,
            versions: db.open_tree("managed_versions")?,
            deliveries: db.open_tree("managed_deliveries")?,
        })
    }

    /// Runs `f` on the blocking pool: sled calls block on disk.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(SledManaged) -> Result<T, CloudError> + Send + 'static,
    ) -> Result<T, CloudError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || f(me))
            .await
            .map_err(|e| CloudError::Unavailable(format!("storage task failed: {e}")))?
    }

    fn apply(&self, change: &ManagedChange) -> Result<(), CloudError> {
        let trees =
            (&self.sensors, &self.assign, &self.users, &self.templates, &self.counter, &self.versions);
        let result = trees.transaction(|(sensors, assign, users, templates, counter, versions)| {
            let abort = |e: CloudError| ConflictableTransactionError::Abort(e);
            for v in &change.versions {
                let newest = counter.get(v.machine.as_bytes())?.map(|b| be64(&b)).unwrap_or(0);
                check_next(&v.machine, newest, v.version).map_err(abort)?;
                counter.insert(v.machine.as_bytes(), &v.version.to_be_bytes())?;
                versions.insert(version_key(&v.machine, v.version), json(v))?;
                // One old version goes per new one, so the history stays at HISTORY_KEPT.
                if v.version > HISTORY_KEPT {
                    versions.remove(version_key(&v.machine, v.version - HISTORY_KEPT))?;
                }
            }
            for (machine, list) in &change.machine_sensors {
                if list.is_empty() {
                    sensors.remove(machine.as_bytes())?;
                } else {
                    sensors.insert(machine.as_bytes(), json(list))?;
                }
            }
            for (machine, names) in &change.assignments {
                if let Some(old) = assign.get(machine.as_bytes())? {
                    let old: Vec<String> = serde_json::from_slice(&old)
                        .map_err(|e| abort(CloudError::Corrupt(format!("template list: {e}"))))?;
                    for name in old {
                        users.remove(key2(&name, machine))?;
                    }
                }
                for name in names {
                    users.insert(key2(name, machine), &[])?;
                }
                if names.is_empty() {
                    assign.remove(machine.as_bytes())?;
                } else {
                    assign.insert(machine.as_bytes(), json(names))?;
                }
            }
            match &change.template {
                Some(TemplateWrite::Put(t)) => {
                    templates.insert(t.name.as_bytes(), json(t))?;
                }
                Some(TemplateWrite::Delete(name)) => {
                    templates.remove(name.as_bytes())?;
                }
                None => {}
            }
            Ok(())
        });
        match result {
            Ok(()) => Ok(()),
            Err(TransactionError::Abort(e)) => Err(e),
            Err(TransactionError::Storage(e)) => Err(e.into()),
        }
    }
}

#[async_trait::async_trait]
impl ManagedStore for SledManaged {
    async fn machine_sensors(&self, machine: &str) -> Result<Vec<SensorConfig>, CloudError> {
        match self.sensors.get(machine.as_bytes())? {
            Some(v) => parse("machine sensors", &v),
            None => Ok(Vec::new()),
        }
    }

    async fn machine_templates(&self, machine: &str) -> Result<Vec<String>, CloudError> {
        match self.assign.get(machine.as_bytes())? {
            Some(v) => parse("template list", &v),
            None => Ok(Vec::new()),
        }
    }

    async fn templates(&self) -> Result<Vec<Template>, CloudError> {
        self.blocking(|me| {
            me.templates.iter().map(|item| parse("template", &item?.1)).collect::<Result<Vec<_>, _>>()
        })
        .await
    }

    async fn template(&self, name: &str) -> Result<Option<Template>, CloudError> {
        self.templates.get(name.as_bytes())?.map(|v| parse("template", &v)).transpose()
    }

    async fn machines_using(&self, template: &str) -> Result<Vec<String>, CloudError> {
        let p = prefix(template);
        let mut out = Vec::new();
        for item in self.users.scan_prefix(&p) {
            let (k, _) = item?;
            out.push(String::from_utf8_lossy(&k[p.len()..]).into_owned());
        }
        Ok(out)
    }

    async fn latest_version(&self, machine: &str) -> Result<Option<VersionRecord>, CloudError> {
        match self.counter.get(machine.as_bytes())? {
            Some(v) => self.version(machine, be64(&v)).await,
            None => Ok(None),
        }
    }

    async fn version(&self, machine: &str, version: u64) -> Result<Option<VersionRecord>, CloudError> {
        self.versions.get(version_key(machine, version))?.map(|v| parse("version", &v)).transpose()
    }

    async fn history(&self, machine: &str, limit: usize) -> Result<Vec<VersionRecord>, CloudError> {
        let p = prefix(machine);
        let mut out = Vec::new();
        for item in self.versions.scan_prefix(&p).rev().take(limit) {
            out.push(parse("version", &item?.1)?);
        }
        Ok(out)
    }

    async fn managed_machines(&self) -> Result<Vec<String>, CloudError> {
        self.blocking(|me| {
            me.counter
                .iter()
                .map(|item| Ok(String::from_utf8_lossy(&item?.0).into_owned()))
                .collect::<Result<Vec<_>, CloudError>>()
        })
        .await
    }

    async fn save(&self, change: ManagedChange) -> Result<(), CloudError> {
        self.blocking(move |me| me.apply(&change)).await?;
        self.flusher.flush().await?;
        Ok(())
    }

    async fn note_delivery(&self, d: Delivery) -> Result<(), CloudError> {
        let mut k = version_key(&d.machine, d.version);
        k.push(0);
        k.extend_from_slice(d.command.as_bytes());
        self.deliveries.insert(k, json(&d))?;
        // A machine offline for weeks gets a delivery per expired command: keep the newest.
        let p = prefix(&d.machine);
        let old: Vec<sled::IVec> = self
            .deliveries
            .scan_prefix(&p)
            .rev()
            .skip(DELIVERIES_KEPT)
            .filter_map(|i| i.ok().map(|(k, _)| k))
            .collect();
        for k in old {
            self.deliveries.remove(k)?;
        }
        self.flusher.flush().await?;
        Ok(())
    }

    async fn deliveries(&self, machine: &str, limit: usize) -> Result<Vec<Delivery>, CloudError> {
        let p = prefix(machine);
        let mut out: Vec<Delivery> = Vec::new();
        for item in self.deliveries.scan_prefix(&p).rev().take(limit) {
            out.push(parse("delivery", &item?.1)?);
        }
        // Within one version the key orders commands by id, not by time.
        out.sort_by(|a, b| b.version.cmp(&a.version).then(b.at.cmp(&a.at)));
        Ok(out)
    }
}
