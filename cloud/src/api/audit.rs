//! `/v1/audit`: who did what to which machine; each actor sees the entries of the customers it
//! may see (see [`super::access::entry_customer`]).

use super::{access, internal, AppState};
use crate::people::Actor;
use crate::store::people::Role;
use axum::extract::{Extension, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

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
