//! People: sign-in with a password, sessions, lockout, API tokens, customers and grants. No HTTP
//! here (that is `api::auth`, `api::access` and the people routes in `api`) and no storage details
//! (that is [`crate::store::people`]): this module decides.
//!
//! - [`actor`]: who is asking and what they may do ([`Actor::can`]).
//! - [`secret`]: argon2id hashes, random ids, constant-time comparison.
//! - [`totp`]: the optional second factor (RFC 6238 codes, each accepted once).
//!
//! Sign-in: a wrong password counts against the account; from `slow_after` wrong ones in a row
//! each further attempt must wait (the wait doubles, up to 30 s) and is refused unchecked before
//! then; at `lock_after` the account is locked for `lock_for`, when even the right password is
//! refused. Attempts on one account are serialised, so parallel guesses do not get more tries. An
//! unknown name costs the same argon2 work as a known one.

pub mod actor;
pub mod secret;
#[cfg(all(test, unix))]
mod tests;
pub mod totp;

pub use actor::{Actor, Who};

use crate::config::PeopleConfig;
use crate::error::CloudError;
use crate::store::people::{ApiToken, Customer, Grant, PeopleDb, Role, Session, User, ALL_CUSTOMERS};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The customer of networks no customer claimed (and so of all data from before customers).
pub const DEFAULT_CUSTOMER: &str = "default";

/// Longest wait between wrong passwords.
const MAX_DELAY: Duration = Duration::from_secs(30);

/// A session's last use is written at most this often (not on every request).
const TOUCH_EVERY: chrono::Duration = chrono::Duration::seconds(60);

/// What became of a sign-in.
#[derive(Debug)]
pub enum SignIn {
    /// The cookie value (shown to the browser once, kept only as its hash) and the user.
    Ok { cookie: String, user: User },
    /// Wrong name or password. `locked` is set when this attempt locked the account.
    Wrong { known: bool, locked: Option<DateTime<Utc>> },
    /// The account is locked until then; the password was not checked.
    Locked { until: DateTime<Utc> },
    /// Too soon after a wrong password; the password was not checked.
    Wait { until: DateTime<Utc> },
    /// The password is right, but the account has a second factor and no code came with it.
    NeedCode,
}

/// The one-time link that makes the first owner (kept in memory only: a restart makes a new one).
struct SetupLink {
    hash: String,
    expires: DateTime<Utc>,
}

#[derive(Clone)]
pub struct People {
    db: PeopleDb,
    config: PeopleConfig,
    /// One lock per account that tries to sign in (known accounts only, so bounded by users).
    attempts: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    setup: Arc<Mutex<Option<SetupLink>>>,
    /// A hash to check unknown names against, so they take as long as known ones.
    decoy: Arc<String>,
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, CloudError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CloudError::Unavailable(format!("hashing task failed: {e}")))
}

fn chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// Names of users and ids of customers: letters, digits and `.-_@`, 1 to 64 characters.
pub fn check_name(what: &str, name: &str) -> Result<(), CloudError> {
    if name.is_empty()
        || name.len() > 64
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b".-_@".contains(&b))
    {
        return Err(CloudError::Invalid(format!(
            "a {what} must be 1 to 64 letters, digits or . - _ @ (got `{}`)",
            name.chars().take(64).collect::<String>()
        )));
    }
    Ok(())
}

impl People {
    /// Hashes a decoy password (some tens of milliseconds, once).
    pub fn new(db: PeopleDb, config: PeopleConfig) -> Result<People, CloudError> {
        let decoy = secret::hash_password(&secret::random_secret()?)?;
        Ok(People { db, config, attempts: Arc::default(), setup: Arc::default(), decoy: Arc::new(decoy) })
    }

    pub fn db(&self) -> &PeopleDb {
        &self.db
    }

    pub fn config(&self) -> &PeopleConfig {
        &self.config
    }

    /// The wait after the `failures`-th wrong password in a row.
    fn delay(&self, failures: u32) -> Option<Duration> {
        let over = failures.checked_sub(self.config.slow_after)?;
        let d = self.config.slow_delay.saturating_mul(1u32 << over.min(16));
        Some(d.min(MAX_DELAY))
    }

    fn attempt_lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.attempts.lock().expect("attempt locks").entry(name.to_string()).or_default().clone()
    }

    /// Checks name, password and (for an account with a second factor) the TOTP `code`, and makes
    /// a session. A wrong code counts like a wrong password; a missing one does not.
    pub async fn sign_in(
        &self,
        name: &str,
        password: &str,
        code: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<SignIn, CloudError> {
        if password.len() > secret::MAX_PASSWORD || self.db.user(name).await?.is_none() {
            let (pw, decoy) =
                (password.chars().take(secret::MAX_PASSWORD).collect::<String>(), self.decoy.clone());
            blocking(move || secret::verify_password(&pw, &decoy)).await?;
            return Ok(SignIn::Wrong { known: false, locked: None });
        }
        let lock = self.attempt_lock(name);
        let _serial = lock.lock().await;
        // Read again under the lock: another attempt may just have counted a failure.
        let Some(mut user) = self.db.user(name).await? else {
            return Ok(SignIn::Wrong { known: false, locked: None });
        };
        if let Some(until) = user.locked_until.filter(|u| *u > now) {
            return Ok(SignIn::Locked { until });
        }
        if let (Some(last), Some(d)) = (user.last_failure, self.delay(user.failures)) {
            let until = last + chrono(d);
            if until > now {
                return Ok(SignIn::Wait { until });
            }
        }
        let (pw, phc) = (password.to_string(), user.password.clone());
        let mut right = blocking(move || secret::verify_password(&pw, &phc)).await?;
        if right {
            if let Some(secret) = user.totp.clone() {
                let Some(code) = code else { return Ok(SignIn::NeedCode) };
                match totp::check(&secret, code, now.timestamp().max(0) as u64, user.totp_step) {
                    Some(step) => user.totp_step = step,
                    None => right = false,
                }
            }
        }
        if !right {
            user.failures += 1;
            user.last_failure = Some(now);
            let mut locked = None;
            if user.failures >= self.config.lock_after {
                let until = now + chrono(self.config.lock_for);
                user.locked_until = Some(until);
                user.failures = 0;
                user.last_failure = None;
                locked = Some(until);
            }
            self.db.put_user(&user).await?;
            return Ok(SignIn::Wrong { known: true, locked });
        }
        if user.failures != 0
            || user.locked_until.is_some()
            || user.last_failure.is_some()
            || user.totp.is_some()
        {
            user.failures = 0;
            user.last_failure = None;
            user.locked_until = None;
            // With a second factor this also records the step just used.
            self.db.put_user(&user).await?;
        }
        let cookie = self.new_session(&user.name, now).await?;
        Ok(SignIn::Ok { cookie, user })
    }

    async fn new_session(&self, user: &str, now: DateTime<Utc>) -> Result<String, CloudError> {
        let cookie = secret::random_secret()?;
        let s = Session { hash: secret::digest(&cookie), user: user.into(), created_at: now, last_seen: now };
        self.db.put_session(&s).await?;
        Ok(cookie)
    }

    /// The user of a session cookie, if the session exists, is neither idle nor too old, and its
    /// user still exists. An expired session is deleted.
    pub async fn session(&self, cookie: &str, now: DateTime<Utc>) -> Result<Option<User>, CloudError> {
        let hash = secret::digest(cookie);
        let Some(s) = self.db.session(&hash).await? else { return Ok(None) };
        if now - s.created_at > chrono(self.config.session_max)
            || now - s.last_seen > chrono(self.config.session_idle)
        {
            self.db.delete_session(&hash).await?;
            return Ok(None);
        }
        let Some(user) = self.db.user(&s.user).await? else { return Ok(None) };
        if now - s.last_seen > TOUCH_EVERY {
            self.db.touch_session(&hash, now).await?;
        }
        Ok(Some(user))
    }

    pub async fn sign_out(&self, cookie: &str) -> Result<(), CloudError> {
        self.db.delete_session(&secret::digest(cookie)).await
    }

    /// Ends every session of `user`; how many there were.
    pub async fn sign_out_everywhere(&self, user: &str) -> Result<u64, CloudError> {
        self.db.delete_sessions_of(user).await
    }

    /// The actor of a presented API token (`opt_…`), if it is known, unexpired and its user exists.
    pub async fn api_token(&self, presented: &str, now: DateTime<Utc>) -> Result<Option<Actor>, CloudError> {
        let Some((id, secret_part)) = secret::split_api_token(presented) else { return Ok(None) };
        let Some(t) = self.db.api_token(id).await? else { return Ok(None) };
        if !secret::same(&secret::digest(secret_part), &t.hash) || t.expires_at <= now {
            return Ok(None);
        }
        let Some(user) = self.db.user(&t.user).await? else { return Ok(None) };
        // A token is no way around a second factor its user's role requires.
        if self.lacks_required_totp(&user) {
            return Ok(None);
        }
        if t.last_used.is_none_or(|l| now - l > TOUCH_EVERY) {
            self.db.touch_api_token(&t.id, now).await?;
        }
        Ok(Some(Actor::token(&t, &user)))
    }

    /// Makes an API token for `user`: a role no higher than the user's in `customer` (or, for
    /// every customer, than their site-wide grant). Returns the token, shown this once.
    pub async fn new_api_token(
        &self,
        user: &User,
        label: &str,
        role: Role,
        customer: &str,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> Result<(String, ApiToken), CloudError> {
        let actor = Actor::user(user, false);
        let allowed = if customer == ALL_CUSTOMERS { actor.can_all(role) } else { actor.can(role, customer) };
        if !allowed {
            return Err(CloudError::Invalid(format!(
                "you cannot make a {role} token for customer `{customer}`: a token's role must not exceed yours there"
            )));
        }
        if ttl > self.config.api_token_max || ttl < Duration::from_secs(60) {
            return Err(CloudError::Invalid(format!(
                "a token's ttl must be between 1m and {}",
                humantime::format_duration(self.config.api_token_max)
            )));
        }
        if label.len() > 200 {
            return Err(CloudError::Invalid("a token's label must be at most 200 bytes".into()));
        }
        let (token, id, hash) = secret::new_api_token()?;
        let t = ApiToken {
            id,
            hash,
            user: user.name.clone(),
            label: label.into(),
            role,
            customer: customer.into(),
            created_at: now,
            expires_at: now + chrono(ttl),
            last_used: None,
        };
        self.db.put_api_token(&t).await?;
        Ok((token, t))
    }

    /// Makes a user (refused if the name is taken). The password is hashed here.
    pub async fn add_user(
        &self,
        name: &str,
        password: &str,
        owner: bool,
        grants: Vec<Grant>,
        now: DateTime<Utc>,
    ) -> Result<User, CloudError> {
        check_name("user name", name)?;
        secret::check_password(password)?;
        for g in &grants {
            if g.customer != ALL_CUSTOMERS {
                check_name("customer id", &g.customer)?;
            }
        }
        if self.db.user(name).await?.is_some() {
            return Err(CloudError::Invalid(format!("there is already a user `{name}`")));
        }
        let pw = password.to_string();
        let phc = blocking(move || secret::hash_password(&pw)).await??;
        let user = User {
            name: name.into(),
            password: phc,
            owner,
            grants,
            created_at: now,
            failures: 0,
            last_failure: None,
            locked_until: None,
            totp: None,
            totp_pending: None,
            totp_step: 0,
        };
        self.db.put_user(&user).await?;
        Ok(user)
    }

    /// Replaces a user's password and ends all their sessions.
    pub async fn set_password(&self, mut user: User, password: &str) -> Result<(), CloudError> {
        secret::check_password(password)?;
        let pw = password.to_string();
        user.password = blocking(move || secret::hash_password(&pw)).await??;
        self.db.put_user(&user).await?;
        self.db.delete_sessions_of(&user.name).await?;
        Ok(())
    }

    /// Starts setting up a second factor: a new secret, kept pending until a code confirms it.
    /// Returns the secret and the `otpauth://` URI for the user's app.
    pub async fn totp_begin(&self, mut user: User) -> Result<(String, String), CloudError> {
        if user.totp.is_some() {
            return Err(CloudError::Invalid("a second factor is on already; turn it off first".into()));
        }
        let s = totp::new_secret()?;
        user.totp_pending = Some(s.clone());
        self.db.put_user(&user).await?;
        let uri = totp::uri(&s, &user.name);
        Ok((s, uri))
    }

    /// Confirms the pending secret with a code from the app: from now on sign-in needs a code.
    pub async fn totp_confirm(
        &self,
        mut user: User,
        code: &str,
        now: DateTime<Utc>,
    ) -> Result<(), CloudError> {
        let Some(pending) = user.totp_pending.clone() else {
            return Err(CloudError::Invalid(
                "no second factor is being set up; start with POST /v1/me/totp".into(),
            ));
        };
        let step = totp::check(&pending, code, now.timestamp().max(0) as u64, 0).ok_or_else(|| {
            CloudError::Invalid("that code does not match; check the app's clock and try the next one".into())
        })?;
        user.totp = Some(pending);
        user.totp_pending = None;
        user.totp_step = step;
        self.db.put_user(&user).await
    }

    /// Turns the second factor off (the caller checked who may).
    pub async fn totp_remove(&self, mut user: User) -> Result<(), CloudError> {
        user.totp = None;
        user.totp_pending = None;
        self.db.put_user(&user).await
    }

    /// Does this user's role need a second factor they have not set up (`require_totp_for_admins`)?
    pub fn lacks_required_totp(&self, user: &User) -> bool {
        self.config.require_totp_for_admins
            && user.totp.is_none()
            && (user.owner || user.grants.iter().any(|g| g.role == Role::Admin))
    }

    /// The first owner can be made through a one-time link while there is no user. Returns the
    /// link's secret (a new one each call; the previous one stops working), None once users exist.
    pub async fn setup_secret(&self, now: DateTime<Utc>) -> Result<Option<String>, CloudError> {
        if !self.db.users().await?.is_empty() {
            return Ok(None);
        }
        let s = secret::random_secret()?;
        let link = SetupLink { hash: secret::digest(&s), expires: now + chrono(self.config.setup_valid) };
        *self.setup.lock().expect("setup link") = Some(link);
        Ok(Some(s))
    }

    /// Uses the setup link: makes `name` the first owner and signs them in. Refused once any user
    /// exists, after expiry, or with another secret; the link works once.
    pub async fn use_setup(
        &self,
        presented: &str,
        name: &str,
        password: &str,
        now: DateTime<Utc>,
    ) -> Result<(String, User), CloudError> {
        let valid = {
            let mut guard = self.setup.lock().expect("setup link");
            let ok = guard
                .as_ref()
                .is_some_and(|l| l.expires > now && secret::same(&secret::digest(presented), &l.hash));
            if ok {
                *guard = None;
            }
            ok
        };
        if !valid || !self.db.users().await?.is_empty() {
            return Err(CloudError::Invalid(
                "this setup link is used, expired or wrong; restart the cloud for a new one, or run \
                 `outpost user add --owner NAME` on the cloud's host"
                    .into(),
            ));
        }
        let user = self.add_user(name, password, true, Vec::new(), now).await?;
        let cookie = self.new_session(&user.name, now).await?;
        Ok((cookie, user))
    }

    /// The customer each claimed network belongs to.
    pub async fn network_owners(&self) -> Result<NetworkOwners, CloudError> {
        let customers = self.db.customers().await?;
        let mut by_network = HashMap::new();
        for c in &customers {
            for n in &c.networks {
                by_network.insert(n.clone(), c.id.clone());
            }
        }
        Ok(NetworkOwners { by_network, customers })
    }

    /// Ages out ended sessions and expired tokens (the retention pass).
    pub async fn prune(&self, now: DateTime<Utc>) -> Result<u64, CloudError> {
        let s = self
            .db
            .prune_sessions(now - chrono(self.config.session_max), now - chrono(self.config.session_idle))
            .await?;
        Ok(s + self.db.prune_api_tokens(now).await?)
    }
}

/// Which customer holds which network: a snapshot for one request.
pub struct NetworkOwners {
    by_network: HashMap<String, String>,
    pub customers: Vec<Customer>,
}

impl NetworkOwners {
    /// The customer of a network; networks no customer claimed are [`DEFAULT_CUSTOMER`]'s.
    pub fn customer_of(&self, network: &str) -> &str {
        self.by_network.get(network).map(String::as_str).unwrap_or(DEFAULT_CUSTOMER)
    }

    pub fn is_claimed(&self, network: &str) -> bool {
        self.by_network.contains_key(network)
    }
}
