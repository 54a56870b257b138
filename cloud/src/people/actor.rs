//! Who is asking, and what they may do: the one place every API route asks.
//!
//! An [`Actor`] is a signed-in user, one of their API tokens, or the host-side `admin-token` of
//! the CLI (`local-admin`, acting as owner). Its grants say its role per customer; an owner is
//! admin of every customer and also manages customers and owners.

use crate::store::people::{ApiToken, Grant, Role, User, ALL_CUSTOMERS};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    User(String),
    /// An API token: its id and the user it belongs to.
    Token {
        id: String,
        user: String,
    },
    /// The `admin-token` in the cloud's data directory, used by the CLI on the cloud's host.
    LocalAdmin,
}

#[derive(Debug, Clone)]
pub struct Actor {
    pub who: Who,
    owner: bool,
    grants: Vec<Grant>,
    /// Authenticated by the session cookie (a browser): state changes need a same-origin check.
    pub by_cookie: bool,
    /// Signed in, but their role needs a second factor they have not set up: no grants until
    /// they do (`[people] require_totp_for_admins`).
    pub missing_second_factor: bool,
}

impl Actor {
    pub fn user(u: &User, by_cookie: bool) -> Actor {
        Actor {
            who: Who::User(u.name.clone()),
            owner: u.owner,
            grants: u.grants.clone(),
            by_cookie,
            missing_second_factor: false,
        }
    }

    /// A user who must set up a second factor first: may do nothing else.
    pub fn without_second_factor(u: &User, by_cookie: bool) -> Actor {
        Actor {
            who: Who::User(u.name.clone()),
            owner: false,
            grants: Vec::new(),
            by_cookie,
            missing_second_factor: true,
        }
    }

    pub fn local_admin() -> Actor {
        Actor {
            who: Who::LocalAdmin,
            owner: true,
            grants: Vec::new(),
            by_cookie: false,
            missing_second_factor: false,
        }
    }

    /// A token acts with its own role in its own scope, and never above what its user may do
    /// *now*: a grant taken from the user is taken from their tokens at once. A token is never
    /// owner: it cannot manage customers, owners or other tokens.
    pub fn token(t: &ApiToken, u: &User) -> Actor {
        let user = Actor::user(u, false);
        let grants = if t.customer == ALL_CUSTOMERS {
            let mut g: Vec<Grant> = u
                .grants
                .iter()
                .map(|g| Grant { customer: g.customer.clone(), role: g.role.min(t.role) })
                .collect();
            if u.owner {
                g.push(Grant { customer: ALL_CUSTOMERS.into(), role: t.role });
            }
            g
        } else {
            user.role_in(&t.customer)
                .map(|r| vec![Grant { customer: t.customer.clone(), role: r.min(t.role) }])
                .unwrap_or_default()
        };
        Actor {
            who: Who::Token { id: t.id.clone(), user: u.name.clone() },
            owner: false,
            grants,
            by_cookie: false,
            missing_second_factor: false,
        }
    }

    /// The highest role this actor has in `customer`, if any.
    pub fn role_in(&self, customer: &str) -> Option<Role> {
        if self.owner {
            return Some(Role::Admin);
        }
        self.grants
            .iter()
            .filter(|g| g.customer == customer || g.customer == ALL_CUSTOMERS)
            .map(|g| g.role)
            .max()
    }

    /// May this actor act as `role` (or higher) for `customer`?
    pub fn can(&self, role: Role, customer: &str) -> bool {
        self.role_in(customer).is_some_and(|r| r >= role)
    }

    /// For [`ALL_CUSTOMERS`] this asks for a grant over every customer.
    pub fn can_all(&self, role: Role) -> bool {
        self.owner || self.grants.iter().any(|g| g.customer == ALL_CUSTOMERS && g.role >= role)
    }

    /// Site-wide owner (a user marked owner, or the CLI's local admin).
    pub fn is_owner(&self) -> bool {
        self.owner
    }

    /// A person (or their token), not the CLI's local admin.
    pub fn user_name(&self) -> Option<&str> {
        match &self.who {
            Who::User(n) | Who::Token { user: n, .. } => Some(n),
            Who::LocalAdmin => None,
        }
    }

    pub fn grants(&self) -> &[Grant] {
        &self.grants
    }

    /// How the audit trail names this actor.
    pub fn label(&self) -> String {
        match &self.who {
            Who::User(n) => format!("user:{n}"),
            Who::Token { id, user } => format!("token:{id} ({user})"),
            Who::LocalAdmin => "local-admin".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(owner: bool, grants: &[(&str, Role)]) -> User {
        User {
            name: "alice".into(),
            password: String::new(),
            owner,
            grants: grants.iter().map(|(c, r)| Grant { customer: (*c).into(), role: *r }).collect(),
            created_at: chrono::Utc::now(),
            failures: 0,
            last_failure: None,
            locked_until: None,
            totp: None,
            totp_pending: None,
            totp_step: 0,
        }
    }

    fn token(role: Role, customer: &str) -> ApiToken {
        ApiToken {
            id: "t1".into(),
            hash: String::new(),
            user: "alice".into(),
            label: String::new(),
            role,
            customer: customer.into(),
            created_at: chrono::Utc::now(),
            expires_at: chrono::Utc::now(),
            last_used: None,
        }
    }

    #[test]
    fn roles_are_per_customer_and_ordered() {
        let a = Actor::user(&user(false, &[("a", Role::Operator), ("b", Role::Viewer)]), true);
        assert!(a.can(Role::Operator, "a"));
        assert!(a.can(Role::Viewer, "a"));
        assert!(!a.can(Role::Admin, "a"));
        assert!(a.can(Role::Viewer, "b"));
        assert!(!a.can(Role::Operator, "b"));
        assert!(!a.can(Role::Viewer, "c"));
        assert!(!a.can_all(Role::Viewer));
        let all = Actor::user(&user(false, &[("*", Role::Viewer)]), true);
        assert!(all.can(Role::Viewer, "anything") && !all.can(Role::Operator, "anything"));
        let owner = Actor::user(&user(true, &[]), true);
        assert!(owner.can(Role::Admin, "x") && owner.is_owner());
        assert_eq!(Actor::local_admin().label(), "local-admin");
        assert_eq!(a.label(), "user:alice");
    }

    #[test]
    fn a_token_never_exceeds_its_scope_or_its_user() {
        let u = user(false, &[("a", Role::Admin), ("b", Role::Viewer)]);
        let t = Actor::token(&token(Role::Viewer, "a"), &u);
        assert!(t.can(Role::Viewer, "a") && !t.can(Role::Operator, "a"));
        assert!(!t.can(Role::Viewer, "b"), "scoped to a");
        // An operator token of a user who is only a viewer of b acts as viewer there.
        let t = Actor::token(&token(Role::Operator, "*"), &u);
        assert!(t.can(Role::Operator, "a") && !t.can(Role::Admin, "a"));
        assert!(t.can(Role::Viewer, "b") && !t.can(Role::Operator, "b"));
        // An owner's token is not owner.
        let t = Actor::token(&token(Role::Admin, "*"), &user(true, &[]));
        assert!(!t.is_owner() && t.can(Role::Admin, "z"));
        assert_eq!(t.label(), "token:t1 (alice)");
        // A token for a customer the user lost gives nothing.
        let t = Actor::token(&token(Role::Admin, "gone"), &u);
        assert!(!t.can(Role::Viewer, "gone"));
    }
}
