//! Customers and the networks they hold (so their machines). Making and changing them is an
//! owner's; everyone sees the customers they have a role in.

use super::people::audit;
use super::{err, internal, AppState};
use crate::people::{check_name, Actor, NetworkOwners};
use crate::store::people::{Customer, Role};
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

pub(super) async fn visible(st: &AppState, actor: &Actor) -> Result<Vec<Customer>, crate::CloudError> {
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
    match visible(&st, &actor).await {
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
            )
            .await;
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
            )
            .await;
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
