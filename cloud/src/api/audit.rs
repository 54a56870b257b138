//! `/v1/audit`: who did what to which machine.

use super::{internal, AppState};
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AuditQuery {
    machine: Option<String>,
    limit: Option<usize>,
}

pub(super) async fn list(State(st): State<AppState>, Query(q): Query<AuditQuery>) -> Response {
    match st.commands.audit(q.machine.as_deref(), q.limit.unwrap_or(200).min(10_000)).await {
        Ok(l) => Json(l).into_response(),
        Err(e) => internal(e),
    }
}
