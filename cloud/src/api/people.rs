//! What the people routes ([`super::sessions`], [`super::users`], [`super::customers`],
//! [`super::api_tokens`]) share: who the person behind a request is, what they administer, and
//! their lines in the audit trail. Sign-ins, locks, grants, tokens and customers are audited under
//! the actor that did them.

use super::{access, err, internal, AppState};
use crate::commands::AuditEntry;
use crate::people::{Actor, Who};
use crate::store::people::{Grant, Role, User, ALL_CUSTOMERS};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::Utc;

/// A line of the audit trail about people (no machine).
pub(super) async fn audit(
    st: &AppState,
    who: &str,
    action: &str,
    event: &str,
    parameters: serde_json::Value,
) {
    access::audit(
        st,
        AuditEntry {
            ts: Utc::now(),
            command_id: String::new(),
            machine: String::new(),
            action: action.into(),
            parameters,
            who: who.into(),
            event: event.into(),
            detail: serde_json::Value::Null,
        },
    )
    .await;
}

/// The signed-in user of a request (not a token, not the CLI's local admin), who has the second
/// factor their role needs.
#[allow(clippy::result_large_err)]
pub(super) async fn person(st: &AppState, actor: &Actor) -> Result<User, Response> {
    if actor.missing_second_factor {
        return Err(err(
            StatusCode::FORBIDDEN,
            "your role needs a second factor: set it up first (POST /v1/me/totp, or on the dashboard)",
        ));
    }
    person_any(st, actor).await
}

/// The signed-in user, also one who still has to set up a second factor.
#[allow(clippy::result_large_err)]
pub(super) async fn person_any(st: &AppState, actor: &Actor) -> Result<User, Response> {
    match &actor.who {
        Who::User(name) => match st.people.db().user(name).await {
            Ok(Some(u)) => Ok(u),
            Ok(None) => Err(err(StatusCode::UNAUTHORIZED, "this user no longer exists")),
            Err(e) => Err(internal(e)),
        },
        _ => Err(err(
            StatusCode::FORBIDDEN,
            "only a signed-in person can do this, not an API token or the admin token",
        )),
    }
}

/// A user as an actor sees them: only the grants of customers the actor administers (an owner
/// sees all).
pub(super) fn user_view(u: &User, actor: &Actor) -> serde_json::Value {
    let grants: Vec<&Grant> = u.grants.iter().filter(|g| administers(actor, &g.customer)).collect();
    serde_json::json!({
        "name": u.name, "owner": u.owner, "grants": grants, "created_at": u.created_at,
        "locked_until": u.locked_until.filter(|t| *t > Utc::now()),
    })
}

pub(super) fn administers(actor: &Actor, customer: &str) -> bool {
    if customer == ALL_CUSTOMERS {
        actor.is_owner()
    } else {
        actor.can(Role::Admin, customer)
    }
}

/// Can the actor see this user: an owner sees everyone, an admin the users with a grant in a
/// customer they administer.
pub(super) fn sees_user(actor: &Actor, u: &User) -> bool {
    actor.is_owner() || (!u.owner && u.grants.iter().any(|g| administers(actor, &g.customer)))
}

/// Tokens cannot manage people: a leaked script token must not make accounts.
#[allow(clippy::result_large_err)]
pub(super) fn not_a_token(actor: &Actor) -> Result<(), Response> {
    match actor.who {
        Who::Token { .. } => {
            Err(err(StatusCode::FORBIDDEN, "API tokens cannot manage users, customers or tokens"))
        }
        _ => Ok(()),
    }
}

/// customer's admins see the entry.
pub(super) fn grants_params(user: &str, owner: bool, grants: &[Grant]) -> serde_json::Value {
    let customer = match grants {
        [one] if one.customer != ALL_CUSTOMERS => Some(one.customer.clone()),
        _ => None,
    };
    serde_json::json!({"user": user, "owner": owner, "grants": grants, "customer": customer})
}
