//! Signing in and out, the first owner's setup link, who am I, one's password and second factor.

use super::auth::{cleared_cookie, presented_session, same_origin, session_cookie};
use super::people::{administers, audit, grants_params, not_a_token, person, person_any, sees_user};
use super::{err, internal, AppState};
use crate::people::{Actor, SignIn, Who};
use crate::store::people::{Grant, User};
use axum::extract::{Extension, Path, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use serde::{Deserialize, Serialize};

/// What `/v1/me` and a sign-in answer: never the password hash.
#[derive(Serialize)]
struct Me<'a> {
    name: &'a str,
    owner: bool,
    grants: &'a [Grant],
    /// How the audit trail names this actor.
    actor: String,
}

fn me(user: &User, actor: &Actor) -> serde_json::Value {
    serde_json::to_value(Me {
        name: &user.name,
        owner: user.owner,
        grants: &user.grants,
        actor: actor.label(),
    })
    .expect("serialises")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SignInRequest {
    name: String,
    password: String,
    /// The current code of the user's authenticator app, for an account with a second factor.
    #[serde(default)]
    code: Option<String>,
}

/// `POST /v1/session`: signs in with name and password; the answer sets the session cookie.
/// Refused from another site's page (a login forged into the victim's browser).
pub(super) async fn sign_in(
    State(st): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Json(req): Json<SignInRequest>,
) -> Response {
    if !same_origin(&headers, &uri, false) {
        return err(StatusCode::FORBIDDEN, "cross-site sign-in refused");
    }
    let name: String = req.name.chars().take(64).collect();
    let params = serde_json::json!({"user": name});
    match st.people.sign_in(&name, &req.password, req.code.as_deref(), Utc::now()).await {
        Ok(SignIn::Ok { cookie, user }) => {
            let actor = Actor::user(&user, true);
            audit(&st, &actor.label(), "sign-in", "done", params).await;
            ([(header::SET_COOKIE, session_cookie(&cookie))], Json(me(&user, &actor))).into_response()
        }
        Ok(SignIn::Wrong { known, locked }) => {
            audit(
                &st,
                &format!("user:{name}"),
                "sign-in",
                "refused",
                serde_json::json!({"user": name, "known": known}),
            ).await;
            if let Some(until) = locked {
                tracing::warn!(user = %name, %until, "account locked after repeated wrong passwords");
                audit(
                    &st,
                    &format!("user:{name}"),
                    "account-locked",
                    "done",
                    serde_json::json!({"user": name, "until": until}),
                ).await;
            }
            err(StatusCode::UNAUTHORIZED, "wrong name or password")
        }
        Ok(SignIn::Locked { until }) => {
            audit(
                &st,
                &format!("user:{name}"),
                "sign-in",
                "refused",
                serde_json::json!({"user": name, "locked_until": until}),
            ).await;
            wait(until, "this account is locked after too many wrong passwords")
        }
        Ok(SignIn::Wait { until }) => wait(until, "too many wrong passwords; wait before the next try"),
        Ok(SignIn::NeedCode) => (
            StatusCode::UNAUTHORIZED,
            Json(serde_json::json!({"error": "enter the code your authenticator app shows", "totp_required": true})),
        )
            .into_response(),
        Err(e) => internal(e),
    }
}

fn wait(until: chrono::DateTime<Utc>, why: &str) -> Response {
    let secs = (until - Utc::now()).num_seconds().max(1);
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::RETRY_AFTER, secs.to_string())],
        Json(outpost_shared::model::ApiError::new(format!("{why}; try again in {secs} s"))),
    )
        .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SetupRequest {
    token: String,
    name: String,
    password: String,
}

/// `POST /v1/setup`: the one-time link printed at first start makes the first owner.
pub(super) async fn setup(
    State(st): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Json(req): Json<SetupRequest>,
) -> Response {
    if !same_origin(&headers, &uri, false) {
        return err(StatusCode::FORBIDDEN, "cross-site setup refused");
    }
    match st.people.use_setup(&req.token, &req.name, &req.password, Utc::now()).await {
        Ok((cookie, user)) => {
            let actor = Actor::user(&user, true);
            audit(
                &st,
                &actor.label(),
                "owner-created",
                "done",
                serde_json::json!({"user": user.name, "via": "setup link"}),
            )
            .await;
            ([(header::SET_COOKIE, session_cookie(&cookie))], Json(me(&user, &actor))).into_response()
        }
        Err(crate::CloudError::Invalid(m)) => err(StatusCode::FORBIDDEN, m),
        Err(e) => internal(e),
    }
}

/// `GET /v1/me`: who is asking, with their grants and the customers they see.
pub(super) async fn whoami(State(st): State<AppState>, Extension(actor): Extension<Actor>) -> Response {
    let customers = match super::customers::visible(&st, &actor).await {
        Ok(c) => c,
        Err(e) => return internal(e),
    };
    let (name, owner) = match actor.user_name() {
        Some(n) => (n.to_string(), actor.is_owner()),
        None => ("local-admin".to_string(), true),
    };
    let totp = match &actor.who {
        Who::User(n) => match st.people.db().user(n).await {
            Ok(u) => u.is_some_and(|u| u.totp.is_some()),
            Err(e) => return internal(e),
        },
        _ => false,
    };
    Json(serde_json::json!({
        "name": name, "owner": owner, "grants": actor.grants(), "actor": actor.label(), "customers": customers,
        "totp": totp, "totp_required": actor.missing_second_factor,
    }))
    .into_response()
}

/// `DELETE /v1/session`: signs this browser out.
pub(super) async fn sign_out(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    headers: HeaderMap,
) -> Response {
    if let Some(c) = presented_session(&headers) {
        if let Err(e) = st.people.sign_out(&c).await {
            return internal(e);
        }
    }
    audit(&st, &actor.label(), "sign-out", "done", serde_json::json!({"user": actor.user_name()})).await;
    ([(header::SET_COOKIE, cleared_cookie())], Json(serde_json::json!({"signed_out": true}))).into_response()
}

/// `DELETE /v1/sessions`: signs the user out everywhere (every browser, every session).
pub(super) async fn sign_out_everywhere(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
) -> Response {
    let user = match person_any(&st, &actor).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    match st.people.sign_out_everywhere(&user.name).await {
        Ok(n) => {
            audit(
                &st,
                &actor.label(),
                "sign-out-everywhere",
                "done",
                serde_json::json!({"user": user.name, "sessions": n}),
            )
            .await;
            ([(header::SET_COOKIE, cleared_cookie())], Json(serde_json::json!({"sessions_ended": n})))
                .into_response()
        }
        Err(e) => internal(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PasswordChange {
    old: String,
    new: String,
}

/// `PUT /v1/me/password`: a new password (the old one proves it is really them); every session
/// of the user ends.
pub(super) async fn change_password(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Json(req): Json<PasswordChange>,
) -> Response {
    let user = match person(&st, &actor).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    // The session already passed any second factor: the old password is what is asked again.
    match st.people.sign_in(&user.name, &req.old, None, Utc::now()).await {
        Ok(SignIn::Ok { .. } | SignIn::NeedCode) => {}
        Ok(_) => return err(StatusCode::FORBIDDEN, "the old password is wrong"),
        Err(e) => return internal(e),
    }
    match st.people.set_password(user, &req.new).await {
        Ok(()) => {
            audit(
                &st,
                &actor.label(),
                "password-changed",
                "done",
                serde_json::json!({"user": actor.user_name()}),
            )
            .await;
            ([(header::SET_COOKIE, cleared_cookie())], Json(serde_json::json!({"changed": true})))
                .into_response()
        }
        Err(crate::CloudError::Invalid(m)) => err(StatusCode::BAD_REQUEST, m),
        Err(e) => internal(e),
    }
}

/// `POST /v1/me/totp`: starts setting up a second factor; answers `{"secret","uri"}` for the app.
pub(super) async fn totp_begin(State(st): State<AppState>, Extension(actor): Extension<Actor>) -> Response {
    let user = match person_any(&st, &actor).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    match st.people.totp_begin(user).await {
        Ok((secret, uri)) => Json(serde_json::json!({"secret": secret, "uri": uri})).into_response(),
        Err(crate::CloudError::Invalid(m)) => err(StatusCode::CONFLICT, m),
        Err(e) => internal(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TotpCode {
    code: String,
}

/// `PUT /v1/me/totp` `{"code"}`: confirms the second factor with a code from the app.
pub(super) async fn totp_confirm(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Json(req): Json<TotpCode>,
) -> Response {
    let user = match person_any(&st, &actor).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    match st.people.totp_confirm(user, &req.code, Utc::now()).await {
        Ok(()) => {
            audit(
                &st,
                &actor.label(),
                "totp-enabled",
                "done",
                serde_json::json!({"user": actor.user_name()}),
            )
            .await;
            Json(serde_json::json!({"totp": true})).into_response()
        }
        Err(crate::CloudError::Invalid(m)) => err(StatusCode::BAD_REQUEST, m),
        Err(e) => internal(e),
    }
}

/// `DELETE /v1/users/{name}/totp`: an owner (or an admin of all the user's customers) turns a
/// user's second factor off, e.g. for a lost phone; their sessions end, and they set it up again.
pub(super) async fn totp_reset(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
) -> Response {
    if let Err(r) = not_a_token(&actor) {
        return r;
    }
    let user = match st.people.db().user(&name).await {
        Ok(Some(u)) if sees_user(&actor, &u) => u,
        Ok(_) => return err(StatusCode::NOT_FOUND, "no such user"),
        Err(e) => return internal(e),
    };
    if !actor.is_owner() && !user.grants.iter().all(|g| administers(&actor, &g.customer)) {
        return err(StatusCode::FORBIDDEN, "this user has roles in customers you do not administer");
    }
    let params = grants_params(&user.name, user.owner, &user.grants);
    match st.people.totp_remove(user).await {
        Ok(()) => {
            if let Err(e) = st.people.sign_out_everywhere(&name).await {
                return internal(e);
            }
            audit(&st, &actor.label(), "totp-reset", "done", params).await;
            Json(serde_json::json!({"totp": false})).into_response()
        }
        Err(e) => internal(e),
    }
}
