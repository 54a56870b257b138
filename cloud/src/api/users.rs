//! Users and their grants: an owner manages everyone, an admin the users of the customers they
//! administer (only the grants in those customers are shown to them).

use super::people::{administers, audit, grants_params, not_a_token, sees_user, user_view};
use super::{err, internal, AppState};
use crate::people::{check_name, Actor};
use crate::store::people::{Grant, Role, ALL_CUSTOMERS};
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use serde::Deserialize;

pub(super) async fn list_users(State(st): State<AppState>, Extension(actor): Extension<Actor>) -> Response {
    match st.people.db().users().await {
        Ok(users) => Json(
            users.iter().filter(|u| sees_user(&actor, u)).map(|u| user_view(u, &actor)).collect::<Vec<_>>(),
        )
        .into_response(),
        Err(e) => internal(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewUser {
    name: String,
    password: String,
    #[serde(default)]
    owner: bool,
    #[serde(default)]
    grants: Vec<Grant>,
}

/// `POST /v1/users`: an owner makes any user; an admin makes users with grants in the customers
/// they administer.
pub(super) async fn add_user(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Json(req): Json<NewUser>,
) -> Response {
    if let Err(r) = not_a_token(&actor) {
        return r;
    }
    if req.owner && !actor.is_owner() {
        return err(StatusCode::FORBIDDEN, "only an owner can make an owner");
    }
    if !actor.is_owner() && req.grants.is_empty() {
        return err(StatusCode::FORBIDDEN, "give the new user a grant in a customer you administer");
    }
    if let Some(g) = req.grants.iter().find(|g| !administers(&actor, &g.customer)) {
        return err(StatusCode::FORBIDDEN, format!("you cannot grant roles in customer `{}`", g.customer));
    }
    match st.people.add_user(&req.name, &req.password, req.owner, req.grants, Utc::now()).await {
        Ok(u) => {
            audit(&st, &actor.label(), "user-added", "done", grants_params(&u.name, u.owner, &u.grants))
                .await;
            (StatusCode::CREATED, Json(user_view(&u, &actor))).into_response()
        }
        Err(crate::CloudError::Invalid(m)) => err(StatusCode::BAD_REQUEST, m),
        Err(e) => internal(e),
    }
}

/// Audit parameters for a user's grants: one customer named when there is one, so that
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GrantChange {
    /// The new role; null takes the grant away.
    role: Option<Role>,
}

/// `PUT /v1/users/{name}/grants/{customer}`: sets (or with `"role": null` removes) a user's role
/// in one customer. Needs admin of that customer; `*` needs an owner.
pub(super) async fn set_grant(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path((name, customer)): Path<(String, String)>,
    Json(req): Json<GrantChange>,
) -> Response {
    if let Err(r) = not_a_token(&actor) {
        return r;
    }
    let mut user = match st.people.db().user(&name).await {
        Ok(Some(u)) if sees_user(&actor, &u) => u,
        Ok(_) => return err(StatusCode::NOT_FOUND, "no such user"),
        Err(e) => return internal(e),
    };
    if !administers(&actor, &customer) {
        return err(StatusCode::FORBIDDEN, format!("you cannot grant roles in customer `{customer}`"));
    }
    if customer != ALL_CUSTOMERS {
        if let Err(crate::CloudError::Invalid(m)) = check_name("customer id", &customer) {
            return err(StatusCode::BAD_REQUEST, m);
        }
    }
    user.grants.retain(|g| g.customer != customer);
    if let Some(role) = req.role {
        user.grants.push(Grant { customer: customer.clone(), role });
    }
    if let Err(e) = st.people.db().put_user(&user).await {
        return internal(e);
    }
    audit(
        &st,
        &actor.label(),
        "grant-changed",
        "done",
        serde_json::json!({"user": user.name, "customer": customer, "role": req.role}),
    )
    .await;
    Json(user_view(&user, &actor)).into_response()
}

/// `DELETE /v1/users/{name}`: an owner removes anyone but themselves; an admin removes a user
/// whose every grant is in customers they administer. Their sessions and tokens go with them.
pub(super) async fn delete_user(
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
    if actor.user_name() == Some(name.as_str()) {
        return err(StatusCode::BAD_REQUEST, "you cannot remove yourself; ask another owner");
    }
    if !actor.is_owner() && !user.grants.iter().all(|g| administers(&actor, &g.customer)) {
        return err(
            StatusCode::FORBIDDEN,
            "this user has roles in customers you do not administer; take away yours instead",
        );
    }
    match st.people.db().delete_user(&name).await {
        Ok(_) => {
            audit(
                &st,
                &actor.label(),
                "user-removed",
                "done",
                grants_params(&user.name, user.owner, &user.grants),
            )
            .await;
            Json(serde_json::json!({"removed": name})).into_response()
        }
        Err(e) => internal(e),
    }
}
