//! What the cloud keeps about people, behind one trait ([`PeopleStore`]) with the same two engines
//! as readings: users (with their password hash, grants and sign-in failures), sessions, customers
//! and API tokens. The rules (who may do what, lockout, expiry) live in `crate::people`; this
//! module only keeps records.
//!
//! **Nothing secret in clear**: a user holds an argon2id PHC string, a session is stored under the
//! SHA-256 of its cookie value, an API token under its id with the SHA-256 of its secret. A copy of
//! the database gives no password, no usable session and no usable token.
//!
//! **Durability.** Every `put_*` and `delete_*` is durable when it returns `Ok` (sled: after the
//! database's group-commit flush; PostgreSQL: after its COMMIT). The `touch_*` calls (last use of a
//! session or token) are not waited for on sled: after a crash a session may look idle for up to
//! sled's flush interval less than it was, which only shortens it.

use crate::error::CloudError;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The handle the cloud passes around.
pub type PeopleDb = Arc<dyn PeopleStore>;

/// What a grant allows, lowest first: each role may do everything of the roles before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Sees machines, readings, commands and the audit trail.
    Viewer,
    /// Acknowledges, sets maintenance, switches relays, runs `sample-now` and other commands.
    Operator,
    /// Enrolls and revokes machines, manages sensors and the users of the customer.
    Admin,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        })
    }
}

/// The customer id that stands for every customer in a grant or token scope.
pub const ALL_CUSTOMERS: &str = "*";

/// A role for one customer, or for all ([`ALL_CUSTOMERS`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub customer: String,
    pub role: Role,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    /// Sign-in name, unique; also how the audit trail names the person (`user:<name>`).
    pub name: String,
    /// argon2id PHC string (algorithm, parameters, salt and hash together).
    pub password: String,
    /// Site-wide owner: manages everything, every customer.
    pub owner: bool,
    pub grants: Vec<Grant>,
    pub created_at: DateTime<Utc>,
    /// Wrong passwords since the last good sign-in or the last lock.
    #[serde(default)]
    pub failures: u32,
    #[serde(default)]
    pub last_failure: Option<DateTime<Utc>>,
    /// Sign-ins are refused until then, even with the right password.
    #[serde(default)]
    pub locked_until: Option<DateTime<Utc>>,
    /// Base32 secret of the TOTP second factor, once confirmed with a code. Kept as it is: the
    /// cloud needs it to check codes (see SECURITY.md).
    #[serde(default)]
    pub totp: Option<String>,
    /// A secret made for the user but not confirmed with a code yet.
    #[serde(default)]
    pub totp_pending: Option<String>,
    /// The last TOTP time step a code was accepted for: a code works once.
    #[serde(default)]
    pub totp_step: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// Hex SHA-256 of the cookie value; the value itself is never stored.
    pub hash: String,
    pub user: String,
    pub created_at: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
}

/// A customer of the service provider: its machines are those of its networks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Customer {
    /// Short id used in grants and URLs (`[a-z0-9-]`).
    pub id: String,
    /// A name for people.
    pub name: String,
    /// Network ids (as enrollment tokens name them) whose machines are this customer's.
    pub networks: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiToken {
    /// The public part of the token (`opt_<id>_<secret>`), shown in lists and the audit trail.
    pub id: String,
    /// Hex SHA-256 of the secret part.
    pub hash: String,
    pub user: String,
    pub label: String,
    /// At most the user's role in `customer` when made; checked again against the user's grants
    /// at every use, so taking a role away from the user takes it from their tokens.
    pub role: Role,
    /// One customer id or [`ALL_CUSTOMERS`].
    pub customer: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    #[serde(default)]
    pub last_used: Option<DateTime<Utc>>,
}

/// Users, sessions, customers and API tokens. See the module docs for when a write is durable.
#[async_trait::async_trait]
pub trait PeopleStore: Send + Sync + 'static {
    async fn user(&self, name: &str) -> Result<Option<User>, CloudError>;
    async fn users(&self) -> Result<Vec<User>, CloudError>;
    /// Creates or replaces a user.
    async fn put_user(&self, user: &User) -> Result<(), CloudError>;
    /// Deletes a user with their sessions and API tokens; false when there was none.
    async fn delete_user(&self, name: &str) -> Result<bool, CloudError>;

    async fn session(&self, hash: &str) -> Result<Option<Session>, CloudError>;
    async fn put_session(&self, session: &Session) -> Result<(), CloudError>;
    /// Records a session's last request (not waited for on sled, see module docs).
    async fn touch_session(&self, hash: &str, now: DateTime<Utc>) -> Result<(), CloudError>;
    async fn delete_session(&self, hash: &str) -> Result<(), CloudError>;
    /// Ends every session of `user` (sign out everywhere, password change, lock); how many.
    async fn delete_sessions_of(&self, user: &str) -> Result<u64, CloudError>;
    /// Deletes sessions made before `created_before` or last seen before `seen_before`.
    async fn prune_sessions(
        &self,
        created_before: DateTime<Utc>,
        seen_before: DateTime<Utc>,
    ) -> Result<u64, CloudError>;

    async fn customers(&self) -> Result<Vec<Customer>, CloudError>;
    async fn put_customer(&self, customer: &Customer) -> Result<(), CloudError>;

    async fn api_token(&self, id: &str) -> Result<Option<ApiToken>, CloudError>;
    async fn api_tokens(&self) -> Result<Vec<ApiToken>, CloudError>;
    async fn put_api_token(&self, token: &ApiToken) -> Result<(), CloudError>;
    async fn touch_api_token(&self, id: &str, now: DateTime<Utc>) -> Result<(), CloudError>;
    /// False when there was none.
    async fn delete_api_token(&self, id: &str) -> Result<bool, CloudError>;
    /// Deletes tokens that expired before `now`; how many.
    async fn prune_api_tokens(&self, now: DateTime<Utc>) -> Result<u64, CloudError>;
}
