//! `/v1/audit`: who did what to which machine, as the trail records it (one entry per event);
//! `/v1/audit/rows`: the same for the whole system as people read it, one row per command with
//! its outcome, filterable by machine, person and kind. Each actor sees the entries of the
//! customers it may see (see [`super::access::entry_customer`]).

use super::{access, err, internal, AppState};
use crate::commands::AuditEntry;
use crate::people::Actor;
use crate::store::people::Role;
use axum::extract::{Extension, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AuditQuery {
    machine: Option<String>,
    limit: Option<usize>,
}

/// Entries read to find `limit` visible ones: an actor who sees little of a busy trail gets what
/// is among the newest this many.
const SCAN: usize = 10_000;

pub(super) async fn list(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Query(q): Query<AuditQuery>,
) -> Response {
    let limit = q.limit.unwrap_or(200).min(SCAN);
    let r = async {
        let scan = if actor.can_all(Role::Viewer) { limit } else { SCAN };
        let entries = st.commands.audit(q.machine.as_deref(), scan).await?;
        if actor.can_all(Role::Viewer) {
            return Ok(entries);
        }
        let owners = st.people.network_owners().await?;
        let mut out = Vec::new();
        for e in entries {
            let c = access::entry_customer(&st, &owners, &e).await?;
            if access::allows(&actor, Role::Viewer, c.as_deref()) {
                out.push(e);
                if out.len() == limit {
                    break;
                }
            }
        }
        Ok::<_, crate::CloudError>(out)
    };
    match r.await {
        Ok(mut l) => {
            // An apply command's parameters carry a signed document: shown summarised.
            for e in &mut l {
                e.parameters = crate::managed::secrets::shown_parameters(&e.action, &e.parameters);
            }
            Json(l).into_response()
        }
        Err(e) => internal(e),
    }
}

/// Entries `GET /v1/audit/rows` reads at most, newest first, to build its rows: the window a
/// filter looks through (a command's events are consecutive enough to fall inside it together).
const ROWS_SCAN: usize = 20_000;
/// Rows one answer holds at most.
const MAX_ROWS: usize = 1_000;

/// What an audit row is about, for the `kind` filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Kind {
    /// A signed command to a machine, from creation to its outcome (expired included).
    Command,
    /// An enrollment token made or cancelled.
    Token,
    /// A machine enrolled with a token.
    Enrollment,
    /// A machine's enrollment withdrawn.
    Revocation,
    /// A change of what machines run or may be asked: managed sensors, templates, mail commands.
    Configuration,
}

impl Kind {
    fn of(e: &AuditEntry) -> Kind {
        match e.action.as_str() {
            "token-created" | "token-cancelled" => Kind::Token,
            "enroll" => Kind::Enrollment,
            "revoke" => Kind::Revocation,
            a if a.starts_with("mail-commands-") || e.event == "saved" => Kind::Configuration,
            _ if e.command_id.is_empty() => Kind::Configuration,
            _ => Kind::Command,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RowsQuery {
    machine: Option<String>,
    /// Who did it, exactly as rows name it (`admin`, `mail:<sender> via <connector>`, …).
    who: Option<String>,
    kind: Option<Kind>,
    limit: Option<usize>,
}

/// One row of the system-wide audit view: one per command (its creation, who asked, and its
/// outcome now), one per other event.
#[derive(Debug, Serialize)]
pub(super) struct AuditRow {
    /// When it began: a command's creation, otherwise the event itself.
    pub ts: DateTime<Utc>,
    /// The newest event of the row.
    pub updated: DateTime<Utc>,
    pub kind: Kind,
    /// Empty for what concerns no machine (tokens, templates).
    pub machine: String,
    pub action: String,
    pub parameters: serde_json::Value,
    pub who: String,
    /// A command's status now (`pending`, `delivered`, `done`, `failed`, `refused`, `expired`);
    /// otherwise the event (`done`, `saved`, `refused`).
    pub outcome: String,
    pub detail: serde_json::Value,
    /// The command's id, or the token's.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub id: String,
}

/// `GET /v1/audit/rows?machine=&who=&kind=&limit=`: the whole system's audit trail, newest first,
/// as far as the actor may see it.
pub(super) async fn rows(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Query(q): Query<RowsQuery>,
) -> Response {
    let limit = q.limit.unwrap_or(200);
    if limit == 0 || limit > MAX_ROWS {
        return err(StatusCode::BAD_REQUEST, format!("`limit` must be between 1 and {MAX_ROWS}"));
    }
    let built = async {
        let mut entries = st.commands.audit(None, ROWS_SCAN).await?;
        if !actor.can_all(Role::Viewer) {
            let owners = st.people.network_owners().await?;
            let mut visible = Vec::with_capacity(entries.len());
            for e in entries {
                let c = access::entry_customer(&st, &owners, &e).await?;
                if access::allows(&actor, Role::Viewer, c.as_deref()) {
                    visible.push(e);
                }
            }
            entries = visible;
        }
        // Rows first (a command's outcome from its newest event), then the status now of the
        // commands among the rows answered: `expired` is a status, not an event.
        let mut rows: Vec<AuditRow> = group(entries, |_| None)
            .into_iter()
            .filter(|r| q.machine.as_deref().is_none_or(|m| m == r.machine))
            .filter(|r| q.who.as_deref().is_none_or(|w| w == r.who))
            .filter(|r| q.kind.is_none_or(|k| k == r.kind))
            .take(limit)
            .collect();
        let now = Utc::now();
        for r in rows.iter_mut().filter(|r| r.kind == Kind::Command) {
            if let Some(rec) = st.commands.get(&r.id).await? {
                r.outcome = rec.effective_status(now).to_string();
            }
        }
        Ok::<_, crate::CloudError>(rows)
    };
    match built.await {
        Ok(rows) => Json(rows).into_response(),
        Err(e) => internal(e),
    }
}

/// Audit entries (newest first) as rows (newest first): a command's events become one row whose
/// outcome is `status(id)` when the command is still on record, else its newest event.
pub(super) fn group(entries: Vec<AuditEntry>, status: impl Fn(&str) -> Option<String>) -> Vec<AuditRow> {
    let mut rows: Vec<AuditRow> = Vec::new();
    let mut by_command: HashMap<String, usize> = HashMap::new();
    for e in entries {
        let kind = Kind::of(&e);
        let parameters = crate::managed::secrets::shown_parameters(&e.action, &e.parameters);
        if kind == Kind::Command {
            if let Some(&i) = by_command.get(&e.command_id) {
                // An older event of a row already made: its creation says when and by whom.
                let row = &mut rows[i];
                if e.event == "created" {
                    row.ts = e.ts;
                    row.who = e.who;
                }
                if row.detail.is_null() {
                    row.detail = e.detail;
                }
                continue;
            }
            by_command.insert(e.command_id.clone(), rows.len());
            let outcome = status(&e.command_id).unwrap_or_else(|| e.event.clone());
            rows.push(AuditRow {
                ts: e.ts,
                updated: e.ts,
                kind,
                machine: e.machine,
                action: e.action,
                parameters,
                who: e.who,
                outcome,
                detail: e.detail,
                id: e.command_id,
            });
        } else {
            rows.push(AuditRow {
                ts: e.ts,
                updated: e.ts,
                kind,
                machine: e.machine,
                action: e.action,
                parameters,
                who: e.who,
                outcome: e.event,
                detail: e.detail,
                id: e.command_id,
            });
        }
    }
    // A command row sorts by its newest event: that is what changed last.
    rows.sort_by_key(|r| std::cmp::Reverse(r.updated));
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn entry(min: u32, id: &str, action: &str, who: &str, event: &str) -> AuditEntry {
        AuditEntry {
            ts: Utc.with_ymd_and_hms(2026, 3, 1, 12, min, 0).unwrap(),
            command_id: id.into(),
            machine: if action.starts_with("token") { String::new() } else { "m1".into() },
            action: action.into(),
            parameters: serde_json::json!({}),
            who: who.into(),
            event: event.into(),
            detail: serde_json::Value::Null,
        }
    }

    #[test]
    fn a_command_is_one_row_with_its_creator_and_outcome_beside_other_events() {
        // Newest first, as the trail answers.
        let entries = vec![
            entry(9, "c2", "relay.set", "machine m1", "done"),
            entry(8, "t1", "token-created", "admin", "done"),
            entry(7, "c2", "relay.set", "admin", "delivered"),
            entry(6, "c2", "relay.set", "admin", "created"),
            entry(5, "", "revoke", "admin", "done"),
            entry(4, "c1", "relay.set", "mail:ops@x via c", "created"),
            entry(3, "", "sensors.saved", "admin", "saved"),
        ];
        let rows = group(entries, |id| (id == "c1").then(|| "expired".to_string()));
        let shown: Vec<(&str, Kind, &str, &str)> =
            rows.iter().map(|r| (r.action.as_str(), r.kind, r.who.as_str(), r.outcome.as_str())).collect();
        assert_eq!(
            shown,
            vec![
                ("relay.set", Kind::Command, "admin", "done"),
                ("token-created", Kind::Token, "admin", "done"),
                ("revoke", Kind::Revocation, "admin", "done"),
                ("relay.set", Kind::Command, "mail:ops@x via c", "expired"),
                ("sensors.saved", Kind::Configuration, "admin", "saved"),
            ]
        );
        assert_eq!(rows[0].ts.format("%M").to_string(), "06", "a command row starts at its creation");
    }
}
