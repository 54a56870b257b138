//! People as a resource: signing in and out, the first owner's setup link, who am I, users and
//! their grants, customers and their networks, API tokens. Sign-ins, locks, grants, tokens and
//! customers are in the audit trail under the actor that did them.

use super::auth::{cleared_cookie, presented_session, same_origin, session_cookie};
use super::{access, err, internal, AppState};
use crate::commands::AuditEntry;
use crate::people::{check_name, Actor, NetworkOwners, SignIn, Who};
use crate::store::people::{Customer, Grant, Role, User, ALL_CUSTOMERS};
use axum::extract::{Extension, Path, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use serde::{Deserialize, Serialize};

fn audit(st: &AppState, who: &str, action: &str, event: &str, parameters: serde_json::Value) {
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
    );
}

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
            audit(&st, &actor.label(), "sign-in", "done", params);
            ([(header::SET_COOKIE, session_cookie(&cookie))], Json(me(&user, &actor))).into_response()
        }
        Ok(SignIn::Wrong { known, locked }) => {
            audit(
                &st,
                &format!("user:{name}"),
                "sign-in",
                "refused",
                serde_json::json!({"user": name, "known": known}),
            );
            if let Some(until) = locked {
                tracing::warn!(user = %name, %until, "account locked after repeated wrong passwords");
                audit(
                    &st,
                    &format!("user:{name}"),
                    "account-locked",
                    "done",
                    serde_json::json!({"user": name, "until": until}),
                );
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
            );
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
            );
            ([(header::SET_COOKIE, session_cookie(&cookie))], Json(me(&user, &actor))).into_response()
        }
        Err(crate::CloudError::Invalid(m)) => err(StatusCode::FORBIDDEN, m),
        Err(e) => internal(e),
    }
}

/// The signed-in user of a request (not a token, not the CLI's local admin), who has the second
/// factor their role needs.
#[allow(clippy::result_large_err)]
async fn person(st: &AppState, actor: &Actor) -> Result<User, Response> {
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
async fn person_any(st: &AppState, actor: &Actor) -> Result<User, Response> {
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

/// `GET /v1/me`: who is asking, with their grants and the customers they see.
pub(super) async fn whoami(State(st): State<AppState>, Extension(actor): Extension<Actor>) -> Response {
    let customers = match visible_customers(&st, &actor).await {
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
    audit(&st, &actor.label(), "sign-out", "done", serde_json::json!({"user": actor.user_name()}));
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
            );
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
            );
            ([(header::SET_COOKIE, cleared_cookie())], Json(serde_json::json!({"changed": true})))
                .into_response()
        }
        Err(crate::CloudError::Invalid(m)) => err(StatusCode::BAD_REQUEST, m),
        Err(e) => internal(e),
    }
}

// ---- second factor ----

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
            );
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
            audit(&st, &actor.label(), "totp-reset", "done", params);
            Json(serde_json::json!({"totp": false})).into_response()
        }
        Err(e) => internal(e),
    }
}

// ---- users and grants ----

/// A user as an actor sees them: only the grants of customers the actor administers (an owner
/// sees all).
fn user_view(u: &User, actor: &Actor) -> serde_json::Value {
    let grants: Vec<&Grant> = u.grants.iter().filter(|g| administers(actor, &g.customer)).collect();
    serde_json::json!({
        "name": u.name, "owner": u.owner, "grants": grants, "created_at": u.created_at,
        "locked_until": u.locked_until.filter(|t| *t > Utc::now()),
    })
}

fn administers(actor: &Actor, customer: &str) -> bool {
    if customer == ALL_CUSTOMERS {
        actor.is_owner()
    } else {
        actor.can(Role::Admin, customer)
    }
}

/// Can the actor see this user: an owner sees everyone, an admin the users with a grant in a
/// customer they administer.
fn sees_user(actor: &Actor, u: &User) -> bool {
    actor.is_owner() || (!u.owner && u.grants.iter().any(|g| administers(actor, &g.customer)))
}

/// Tokens cannot manage people: a leaked script token must not make accounts.
#[allow(clippy::result_large_err)]
fn not_a_token(actor: &Actor) -> Result<(), Response> {
    match actor.who {
        Who::Token { .. } => {
            Err(err(StatusCode::FORBIDDEN, "API tokens cannot manage users, customers or tokens"))
        }
        _ => Ok(()),
    }
}

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
            audit(&st, &actor.label(), "user-added", "done", grants_params(&u.name, u.owner, &u.grants));
            (StatusCode::CREATED, Json(user_view(&u, &actor))).into_response()
        }
        Err(crate::CloudError::Invalid(m)) => err(StatusCode::BAD_REQUEST, m),
        Err(e) => internal(e),
    }
}

/// Audit parameters for a user's grants: one customer named when there is one, so that
/// customer's admins see the entry.
fn grants_params(user: &str, owner: bool, grants: &[Grant]) -> serde_json::Value {
    let customer = match grants {
        [one] if one.customer != ALL_CUSTOMERS => Some(one.customer.clone()),
        _ => None,
    };
    serde_json::json!({"user": user, "owner": owner, "grants": grants, "customer": customer})
}

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
    );
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
            );
            Json(serde_json::json!({"removed": name})).into_response()
        }
        Err(e) => internal(e),
    }
}

// ---- customers ----

async fn visible_customers(st: &AppState, actor: &Actor) -> Result<Vec<Customer>, crate::CloudError> {
    let mut list = st.people.db().customers().await?;
    if !list.iter().any(|c| c.id == crate::people::DEFAULT_CUSTOMER) {
        list.insert(
            0,
            Customer {
                id: crate::people::DEFAULT_CUSTOMER.into(),
                name: "Default".into(),
                networks: Vec::new(),
            },
        );
    }
    list.retain(|c| actor.can(Role::Viewer, &c.id));
    Ok(list)
}

pub(super) async fn list_customers(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
) -> Response {
    match visible_customers(&st, &actor).await {
        Ok(l) => Json(l).into_response(),
        Err(e) => internal(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewCustomer {
    id: String,
    name: String,
    #[serde(default)]
    networks: Vec<String>,
}

/// `POST /v1/customers` (owner): a customer, with the networks it holds.
pub(super) async fn add_customer(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Json(req): Json<NewCustomer>,
) -> Response {
    if !actor.is_owner() {
        return err(StatusCode::FORBIDDEN, "only an owner makes customers");
    }
    if let Err(crate::CloudError::Invalid(m)) = check_name("customer id", &req.id) {
        return err(StatusCode::BAD_REQUEST, m);
    }
    let owners = match st.people.network_owners().await {
        Ok(o) => o,
        Err(e) => return internal(e),
    };
    if req.id == crate::people::DEFAULT_CUSTOMER || owners.customers.iter().any(|c| c.id == req.id) {
        return err(StatusCode::CONFLICT, format!("there is already a customer `{}`", req.id));
    }
    if let Some(n) = req.networks.iter().find(|n| owners.is_claimed(n)) {
        return err(
            StatusCode::CONFLICT,
            format!("network `{n}` belongs to customer `{}`", owners.customer_of(n)),
        );
    }
    let c = Customer { id: req.id, name: req.name.chars().take(200).collect(), networks: req.networks };
    match st.people.db().put_customer(&c).await {
        Ok(()) => {
            audit(
                &st,
                &actor.label(),
                "customer-added",
                "done",
                serde_json::json!({"customer": c.id, "networks": c.networks}),
            );
            (StatusCode::CREATED, Json(c)).into_response()
        }
        Err(e) => internal(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NetworkClaim {
    network: String,
}

/// `POST /v1/customers/{id}/networks` (owner): the customer takes a network (and its machines).
pub(super) async fn add_network(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    Json(req): Json<NetworkClaim>,
) -> Response {
    if !actor.is_owner() {
        return err(StatusCode::FORBIDDEN, "only an owner moves networks between customers");
    }
    let owners = match st.people.network_owners().await {
        Ok(o) => o,
        Err(e) => return internal(e),
    };
    if owners.is_claimed(&req.network) {
        return err(
            StatusCode::CONFLICT,
            format!("network `{}` belongs to customer `{}`", req.network, owners.customer_of(&req.network)),
        );
    }
    match claim_network(&st, &owners, &id, &req.network).await {
        Ok(c) => {
            audit(
                &st,
                &actor.label(),
                "network-claimed",
                "done",
                serde_json::json!({"customer": id, "network": req.network}),
            );
            Json(c).into_response()
        }
        Err(r) => r,
    }
}

/// Records that `customer` holds `network` (which no customer holds yet).
pub(super) async fn claim_network(
    st: &AppState,
    owners: &NetworkOwners,
    customer: &str,
    network: &str,
) -> Result<Customer, Response> {
    let mut c = match owners.customers.iter().find(|c| c.id == customer) {
        Some(c) => c.clone(),
        None if customer == crate::people::DEFAULT_CUSTOMER => {
            Customer { id: customer.into(), name: "Default".into(), networks: Vec::new() }
        }
        None => return Err(err(StatusCode::NOT_FOUND, format!("no customer `{customer}`"))),
    };
    c.networks.push(network.into());
    st.people.db().put_customer(&c).await.map_err(internal)?;
    Ok(c)
}

// ---- API tokens ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewToken {
    #[serde(default)]
    label: String,
    role: Role,
    /// A customer id, or `*` for every customer the user has a role in.
    customer: String,
    /// Validity, e.g. "30days" (the default).
    #[serde(default, with = "humantime_serde")]
    ttl: Option<std::time::Duration>,
}

/// A token as lists show it: never its secret or hash.
fn token_view(t: &crate::store::people::ApiToken) -> serde_json::Value {
    serde_json::json!({
        "id": t.id, "user": t.user, "label": t.label, "role": t.role, "customer": t.customer,
        "created_at": t.created_at, "expires_at": t.expires_at, "last_used": t.last_used,
    })
}

/// `POST /v1/api-tokens`: a token for the signed-in user's scripts; the answer holds the token,
/// shown this once.
pub(super) async fn new_api_token(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Json(req): Json<NewToken>,
) -> Response {
    let user = match person(&st, &actor).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let ttl = req.ttl.unwrap_or(std::time::Duration::from_secs(30 * 86400));
    match st.people.new_api_token(&user, &req.label, req.role, &req.customer, ttl, Utc::now()).await {
        Ok((token, t)) => {
            let customer = (t.customer != ALL_CUSTOMERS).then(|| t.customer.clone());
            audit(
                &st,
                &actor.label(),
                "api-token-created",
                "done",
                serde_json::json!({"token": t.id, "role": t.role, "customer": customer, "scope": t.customer, "expires_at": t.expires_at}),
            );
            let mut v = token_view(&t);
            v["token"] = serde_json::Value::String(token);
            (StatusCode::CREATED, Json(v)).into_response()
        }
        Err(crate::CloudError::Invalid(m)) => err(StatusCode::FORBIDDEN, m),
        Err(e) => internal(e),
    }
}

/// `GET /v1/api-tokens`: the user's own tokens (an owner sees everyone's), with their last use.
pub(super) async fn list_api_tokens(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
) -> Response {
    if let Err(r) = not_a_token(&actor) {
        return r;
    }
    match st.people.db().api_tokens().await {
        Ok(list) => Json(
            list.iter()
                .filter(|t| actor.is_owner() || actor.user_name() == Some(t.user.as_str()))
                .map(token_view)
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(e) => internal(e),
    }
}

/// `DELETE /v1/api-tokens/{id}`: revokes a token at once (one's own; an owner any).
pub(super) async fn revoke_api_token(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = not_a_token(&actor) {
        return r;
    }
    match st.people.db().api_token(&id).await {
        Ok(Some(t)) if actor.is_owner() || actor.user_name() == Some(t.user.as_str()) => {}
        Ok(_) => return err(StatusCode::NOT_FOUND, "no such API token"),
        Err(e) => return internal(e),
    }
    match st.people.db().delete_api_token(&id).await {
        Ok(_) => {
            audit(&st, &actor.label(), "api-token-revoked", "done", serde_json::json!({"token": id}));
            Json(serde_json::json!({"revoked": id})).into_response()
        }
        Err(e) => internal(e),
    }
}
