//! `/v1/events`: the dashboard's live feed (server-sent events), filtered to the machines of the
//! customers the actor may see. Which customer holds which network is read when the feed opens;
//! a network claimed later shows after the dashboard reconnects.

use super::{access, internal, AppState, LiveEvent};
use crate::people::Actor;
use crate::store::people::Role;
use axum::extract::{Extension, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use std::sync::Arc;
use tokio_stream::wrappers::BroadcastStream;

pub(super) async fn stream(State(st): State<AppState>, Extension(actor): Extension<Actor>) -> Response {
    let owners = match st.people.network_owners().await {
        Ok(o) => o,
        Err(e) => return internal(e),
    };
    let all = actor.can_all(Role::Viewer);
    let (owners, actor) = (Arc::new(owners), Arc::new(actor));
    let stream = BroadcastStream::new(st.events.subscribe()).filter_map(move |ev| {
        let (st, owners, actor) = (st.clone(), owners.clone(), actor.clone());
        async move {
            // A lagging dashboard skips what it missed; the next event brings it current again.
            let ev = ev.ok()?;
            let (name, machine) = match &ev {
                LiveEvent::Machine(m) => ("machine", m.id.as_str()),
                LiveEvent::Sensors { machine, .. } => ("sensors", machine.as_str()),
            };
            if !all {
                let customer = access::machine_customer(&st, &owners, machine).await.ok()?;
                if !access::allows(&actor, Role::Viewer, customer.as_deref()) {
                    return None;
                }
            }
            Event::default().event(name).json_data(&ev).ok().map(Ok::<_, std::convert::Infallible>)
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}
