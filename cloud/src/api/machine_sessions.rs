//! Machine sessions (`/v1/machine-session`): a machine proves its key once, then authenticates
//! each request with a MAC under the session key (see `outpost_shared::keys::session`). The
//! checks of session requests live in [`super::auth::check_machine`].

use super::auth::refused;
use super::{internal, AppState};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use outpost_shared::keys::session::OpenRequest;

/// `GET /v1/machine-session/challenge`: a challenge good for 60 s on any node with the same
/// cloud key, and the certificate of the key that signs the cloud's half of an X25519 login.
/// Costs one HMAC and keeps nothing.
pub(super) async fn challenge(State(st): State<AppState>) -> Response {
    match st.trust.session_challenge() {
        Ok(answer) => Json(answer).into_response(),
        Err(e) => internal(e),
    }
}

/// `POST /v1/machine-session`: opens a session for an enrolled machine (see
/// [`crate::trust::Trust::open_session`]).
pub(super) async fn open(State(st): State<AppState>, Json(req): Json<OpenRequest>) -> Response {
    match st.trust.open_session(req).await {
        Ok(answer) => Json(answer).into_response(),
        Err(r) => refused(r),
    }
}
