//! `/v1/events`: the dashboard's live feed (server-sent events).

use super::{AppState, LiveEvent};
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::StreamExt;

pub(super) async fn stream(
    State(st): State<AppState>,
) -> Sse<impl Stream<Item = Result<Event, std::convert::Infallible>>> {
    let stream = BroadcastStream::new(st.events.subscribe()).filter_map(|ev| {
        // A lagging dashboard skips what it missed; the next event brings it current again.
        let ev = ev.ok()?;
        let name = match &ev {
            LiveEvent::Machine(_) => "machine",
            LiveEvent::Sensors { .. } => "sensors",
        };
        Event::default().event(name).json_data(&ev).ok().map(Ok)
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
