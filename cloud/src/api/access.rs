//! Which customer an object belongs to, and whether the actor may see or change it. Objects of a
//! customer the actor has no grant in answer 404 exactly like objects that do not exist, so
//! nothing tells one customer what another has; an object the actor sees but may not change
//! answers 403, and the refusal is in the audit trail.
//!
//! Machines belong to customers through their network: the network named by the enrollment token
//! they enrolled with, held by the customer that claimed it (unclaimed networks are
//! [`DEFAULT_CUSTOMER`]'s). A machine no longer enrolled (revoked) has no network any more and is
//! seen only by actors with a grant over every customer.

use super::{err, internal, AppState};
use crate::commands::AuditEntry;
use crate::people::{Actor, NetworkOwners};
use crate::store::people::Role;
use axum::http::StatusCode;
use axum::response::Response;
use chrono::Utc;

/// What 404 says for a machine: the same whether it does not exist or is another customer's.
pub(super) const NO_MACHINE: &str = "no such machine";

/// The customer of a machine, None when it is not enrolled (never was, or revoked).
pub(super) async fn machine_customer(
    st: &AppState,
    owners: &NetworkOwners,
    machine: &str,
) -> Result<Option<String>, crate::CloudError> {
    Ok(st.trust.machine_key(machine).await?.map(|mk| owners.customer_of(&mk.network_id).to_string()))
}

/// May `actor` act as `role` on something of `customer` (None: of no customer any more)?
pub(super) fn allows(actor: &Actor, role: Role, customer: Option<&str>) -> bool {
    match customer {
        Some(c) => actor.can(role, c),
        None => actor.can_all(role),
    }
}

#[allow(clippy::result_large_err)]
/// Checks that `actor` may act as `role` on `machine` (`action` names it for the audit trail).
/// Returns the machine's customer; 404 when the actor may not see it, 403 (audited) when it may
/// see it but not do this.
pub(super) async fn machine(
    st: &AppState,
    actor: &Actor,
    machine: &str,
    role: Role,
    action: &str,
) -> Result<Option<String>, Response> {
    let owners = st.people.network_owners().await.map_err(internal)?;
    let customer = machine_customer(st, &owners, machine).await.map_err(internal)?;
    if customer.is_none() && st.store.machine(machine).await.map_err(internal)?.is_none() {
        return Err(err(StatusCode::NOT_FOUND, NO_MACHINE));
    }
    if !allows(actor, Role::Viewer, customer.as_deref()) {
        return Err(err(StatusCode::NOT_FOUND, NO_MACHINE));
    }
    if !allows(actor, role, customer.as_deref()) {
        refused(st, actor, machine, action, role).await;
        return Err(err(
            StatusCode::FORBIDDEN,
            format!("{action} needs the {role} role for this machine's customer; ask its admin"),
        ));
    }
    Ok(customer)
}

/// An action refused for lack of a role, in the audit trail.
pub(super) async fn refused(st: &AppState, actor: &Actor, machine: &str, action: &str, needed: Role) {
    audit(
        st,
        AuditEntry {
            ts: Utc::now(),
            command_id: String::new(),
            machine: machine.into(),
            action: action.into(),
            parameters: serde_json::Value::Null,
            who: actor.label(),
            event: "refused".into(),
            detail: serde_json::json!({"error": format!("needs role {needed}")}),
        },
    )
    .await;
}

/// Adds an entry to the audit trail; a failure to record is logged, the action stands.
pub(super) async fn audit(st: &AppState, entry: AuditEntry) {
    if let Err(e) = st.commands.record(entry).await {
        tracing::error!(error = %e, "the audit trail could not record an action");
    }
}

/// The customer an audit entry is about: its machine's, else the network or customer its
/// parameters name; None for site-wide entries (sign-ins, owners), which only actors with a grant
/// over every customer see.
pub(super) async fn entry_customer(
    st: &AppState,
    owners: &NetworkOwners,
    e: &AuditEntry,
) -> Result<Option<String>, crate::CloudError> {
    if !e.machine.is_empty() {
        if let Some(c) = machine_customer(st, owners, &e.machine).await? {
            return Ok(Some(c));
        }
    }
    for v in [&e.parameters, &e.detail] {
        if let Some(n) = v.get("network").and_then(|n| n.as_str()) {
            return Ok(Some(owners.customer_of(n).to_string()));
        }
        if let Some(c) = v.get("customer").and_then(|c| c.as_str()) {
            return Ok(Some(c.to_string()));
        }
    }
    Ok(None)
}
