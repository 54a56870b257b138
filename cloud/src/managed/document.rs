//! A machine's effective sensor set (its templates in order, then its own sensors) and the
//! checks a document must pass before it is signed: the hub's own rules
//! ([`SensorDocument::validate`]), with every problem named by sensor and field.

use super::FieldProblem;
use crate::store::managed::Template;
use outpost_shared::config::Problem;
use outpost_shared::managed::SensorDocument;
use outpost_shared::sensor_config::SensorConfig;
use std::collections::HashMap;

/// Where a sensor of the effective set comes from.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "from", content = "name", rename_all = "snake_case")]
pub enum Origin {
    Machine,
    Template(String),
}

/// The sensors one machine runs from the cloud, each with its origin.
#[derive(Debug, Clone, Default)]
pub struct Effective {
    pub sensors: Vec<SensorConfig>,
    pub origins: Vec<Origin>,
}

/// Templates in order, then the machine's own sensors; a machine's sensor of the same id takes
/// the template's place. Two templates defining the same id is an error naming both: which one
/// should win is the operator's decision, not the order's.
pub fn effective(templates: &[Template], own: &[SensorConfig]) -> Result<Effective, Vec<FieldProblem>> {
    let mut out = Effective::default();
    let mut at: HashMap<String, usize> = HashMap::new();
    let mut problems = Vec::new();
    for t in templates {
        for s in &t.sensors {
            let id = s.id();
            if let Some(&i) = at.get(&id) {
                let Origin::Template(first) = &out.origins[i] else { continue };
                problems.push(FieldProblem::new(
                    "templates",
                    format!(
                        "sensor `{id}` is defined by template `{first}` and by template `{}`; \
                         rename it in one of them, or apply only one",
                        t.name
                    ),
                ));
                continue;
            }
            at.insert(id, out.sensors.len());
            out.sensors.push(s.clone());
            out.origins.push(Origin::Template(t.name.clone()));
        }
    }
    for s in own {
        match at.get(&s.id()) {
            Some(&i) => {
                out.sensors[i] = s.clone();
                out.origins[i] = Origin::Machine;
            }
            None => {
                at.insert(s.id(), out.sensors.len());
                out.sensors.push(s.clone());
                out.origins.push(Origin::Machine);
            }
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// The hub's rules on `doc`, with each problem named `sensor[<id>].<field>` and its origin.
pub fn validate(doc: &SensorDocument, origins: &[Origin]) -> Result<(), Vec<FieldProblem>> {
    let Err(problems) = doc.validate() else { return Ok(()) };
    let out: Vec<FieldProblem> = problems
        .into_iter()
        .filter(|p| !only_checkable_on_the_hub(p, &doc.sensors))
        .map(|p| rename(p, &doc.sensors, origins))
        .collect();
    if out.is_empty() {
        Ok(())
    } else {
        Err(out)
    }
}

/// `sensor[3].warn` → (3, "warn").
fn index_of(key: &str) -> Option<(usize, &str)> {
    let rest = key.strip_prefix("sensor[")?;
    let (i, field) = rest.split_once(']')?;
    Some((i.parse().ok()?, field.strip_prefix('.').unwrap_or(field)))
}

fn rename(p: Problem, sensors: &[SensorConfig], origins: &[Origin]) -> FieldProblem {
    match index_of(&p.key).and_then(|(i, f)| Some((sensors.get(i)?, origins.get(i), f))) {
        Some((s, origin, field)) => {
            let from = match origin {
                Some(Origin::Template(t)) => format!(" (from template `{t}`)"),
                _ => String::new(),
            };
            let key = if field.is_empty() {
                format!("sensor[{}]", s.id())
            } else {
                format!("sensor[{}].{field}", s.id())
            };
            FieldProblem::new(key, format!("{}{from}", p.message))
        }
        None => FieldProblem::new(p.key, p.message),
    }
}

/// Rules about the hub's own file system, which the cloud cannot see: whether a CA file exists,
/// and whether a Windows path (`C:\…`) is absolute. The hub checks them when it applies the
/// document and reports a problem back.
fn only_checkable_on_the_hub(p: &Problem, sensors: &[SensorConfig]) -> bool {
    let Some((i, field)) = index_of(&p.key) else { return false };
    let Some(s) = sensors.get(i) else { return false };
    match field {
        "ca_file" => s.ca_file.as_ref().is_some_and(|f| {
            p.message.starts_with(&f.display().to_string()) && p.message.contains("does not exist")
        }),
        "path" => s.path.as_ref().is_some_and(|path| {
            let text = path.to_string_lossy();
            let b = text.as_bytes();
            let drive =
                b.len() >= 3 && b[0].is_ascii_alphabetic() && b[1] == b':' && matches!(b[2], b'\\' | b'/');
            (drive || text.starts_with(r"\\")) && p.message.contains("relative")
        }),
        _ => false,
    }
}
