//! Sign-in, lockout, sessions, tokens and the setup link, on both storage engines.

use super::*;
use chrono::Duration as D;

async fn sled_db() -> (PeopleDb, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::store::sled::SledStore::open(dir.path()).unwrap();
    (Arc::new(crate::store::sled::people::SledPeople::open(&store).unwrap()), dir)
}

async fn pg_db() -> PeopleDb {
    let url = crate::store::tests::fresh_database().await;
    let store =
        crate::store::postgres::PgStore::open(&url, &crate::store::postgres::PostgresOptions::default())
            .await
            .unwrap();
    Arc::new(crate::store::postgres::people::PgPeople::new(&store))
}

fn config() -> PeopleConfig {
    PeopleConfig { slow_delay: Duration::from_secs(2), ..Default::default() }
}

const PW: &str = "correct horse battery";

/// Ten wrong passwords lock the account; during the lock the right password fails; after it,
/// it works; the waits in between are enforced without checking the password.
async fn lockout(db: PeopleDb) {
    let p = People::new(db, config()).unwrap();
    let t0 = Utc::now();
    p.add_user("alice", PW, false, vec![], t0).await.unwrap();
    let mut now = t0;
    for i in 1..=10u32 {
        match p.sign_in("alice", "wrong password!", None, now).await.unwrap() {
            SignIn::Wrong { known: true, locked } => assert_eq!(locked.is_some(), i == 10, "attempt {i}"),
            other => panic!("attempt {i}: {other:?}"),
        }
        // From the third wrong one, the next attempt must wait (2 s, 4 s, … up to 30 s).
        if (3..10).contains(&i) {
            assert!(
                matches!(p.sign_in("alice", PW, None, now).await.unwrap(), SignIn::Wait { .. }),
                "attempt {i}"
            );
        }
        now += D::seconds(31);
    }
    let locked = p.sign_in("alice", PW, None, now).await.unwrap();
    assert!(matches!(locked, SignIn::Locked { .. }), "{locked:?}");
    let after = now + D::minutes(16);
    assert!(matches!(p.sign_in("alice", PW, None, after).await.unwrap(), SignIn::Ok { .. }));
    // Unknown names look like wrong passwords.
    assert!(matches!(
        p.sign_in("nobody", PW, None, after).await.unwrap(),
        SignIn::Wrong { known: false, .. }
    ));
}

/// Sessions end when idle, when too old, on sign-out and on sign-out everywhere; only their hash
/// is stored.
async fn sessions(db: PeopleDb) {
    let p = People::new(db.clone(), config()).unwrap();
    let t0 = Utc::now();
    p.add_user("bob", PW, false, vec![], t0).await.unwrap();
    let SignIn::Ok { cookie, .. } = p.sign_in("bob", PW, None, t0).await.unwrap() else { panic!() };
    assert!(db.session(&cookie).await.unwrap().is_none(), "stored under its hash only");
    assert!(p.session(&cookie, t0 + D::minutes(30)).await.unwrap().is_some());
    // Used at 30 min (touched), so still alive at 80 min; idle after 2 h 31 min.
    assert!(p.session(&cookie, t0 + D::minutes(80)).await.unwrap().is_some());
    assert!(p.session(&cookie, t0 + D::minutes(80 + 61)).await.unwrap().is_none(), "idle");
    assert!(p.session(&cookie, t0 + D::minutes(81)).await.unwrap().is_none(), "deleted when found idle");

    let SignIn::Ok { cookie, .. } = p.sign_in("bob", PW, None, t0).await.unwrap() else { panic!() };
    let mut t = t0;
    for _ in 0..13 {
        t += D::minutes(59);
        if t - t0 > D::hours(12) {
            assert!(p.session(&cookie, t).await.unwrap().is_none(), "absolute expiry");
            break;
        }
        assert!(p.session(&cookie, t).await.unwrap().is_some());
    }

    let SignIn::Ok { cookie: a, .. } = p.sign_in("bob", PW, None, t0).await.unwrap() else { panic!() };
    let SignIn::Ok { cookie: b, .. } = p.sign_in("bob", PW, None, t0).await.unwrap() else { panic!() };
    p.sign_out(&a).await.unwrap();
    assert!(p.session(&a, t0).await.unwrap().is_none());
    assert!(p.session(&b, t0).await.unwrap().is_some());
    assert_eq!(p.sign_out_everywhere("bob").await.unwrap(), 1);
    assert!(p.session(&b, t0).await.unwrap().is_none());
}

/// Tokens: shown once, stored hashed, no higher than the user's role, revocable at once, expire.
async fn tokens(db: PeopleDb) {
    let p = People::new(db.clone(), config()).unwrap();
    let now = Utc::now();
    let grants = vec![Grant { customer: "acme".into(), role: Role::Operator }];
    let u = p.add_user("carol", PW, false, grants, now).await.unwrap();
    let too_high = p.new_api_token(&u, "", Role::Admin, "acme", Duration::from_secs(3600), now).await;
    assert!(too_high.is_err());
    assert!(p.new_api_token(&u, "", Role::Viewer, "other", Duration::from_secs(3600), now).await.is_err());
    assert!(p.new_api_token(&u, "", Role::Viewer, "*", Duration::from_secs(3600), now).await.is_err());
    let (token, t) =
        p.new_api_token(&u, "ci", Role::Viewer, "acme", Duration::from_secs(3600), now).await.unwrap();
    let stored = db.api_token(&t.id).await.unwrap().unwrap();
    // The secret is base64url and may itself hold '_': cut it after the id, never at the last '_'.
    let secret = token.splitn(3, '_').nth(2).unwrap();
    assert!(secret.len() >= 32, "a whole secret, not a fragment: {secret}");
    assert!(!serde_json::to_string(&stored).unwrap().contains(secret));
    let actor = p.api_token(&token, now).await.unwrap().expect("valid");
    assert!(actor.can(Role::Viewer, "acme") && !actor.can(Role::Operator, "acme"));
    assert!(db.api_token(&t.id).await.unwrap().unwrap().last_used.is_some(), "last use recorded");
    // A forged secret under a real id, and an expired token, do nothing.
    let forged = format!("opt_{}_{}", t.id, "A".repeat(43));
    assert!(p.api_token(&forged, now).await.unwrap().is_none());
    assert!(p.api_token(&token, now + D::hours(2)).await.unwrap().is_none());
    assert!(db.delete_api_token(&t.id).await.unwrap());
    assert!(p.api_token(&token, now).await.unwrap().is_none(), "revoked");
    assert_eq!(p.prune(now + D::days(400)).await.unwrap(), 0);
    // Deleting a user takes their tokens.
    let (token, _) =
        p.new_api_token(&u, "", Role::Viewer, "acme", Duration::from_secs(3600), now).await.unwrap();
    assert!(db.delete_user("carol").await.unwrap());
    assert!(p.api_token(&token, now).await.unwrap().is_none());
}

/// The setup link makes one owner, once, and only while nobody exists.
async fn setup_link(db: PeopleDb) {
    let p = People::new(db, config()).unwrap();
    let now = Utc::now();
    let s = p.setup_secret(now).await.unwrap().expect("no user yet");
    assert!(p.use_setup("wrong", "root", PW, now).await.is_err());
    assert!(p.use_setup(&s, "root", PW, now + D::minutes(16)).await.is_err(), "expired");
    let s = p.setup_secret(now).await.unwrap().unwrap();
    let (_, u) = p.use_setup(&s, "root", PW, now).await.unwrap();
    assert!(u.owner);
    assert!(p.use_setup(&s, "root2", PW, now).await.is_err(), "used once");
    assert!(p.setup_secret(now).await.unwrap().is_none(), "an owner exists");
    // Customers and their networks.
    let c = crate::store::people::Customer {
        id: "acme".into(),
        name: "Acme".into(),
        networks: vec!["plant-1".into()],
    };
    p.db().put_customer(&c).await.unwrap();
    let owners = p.network_owners().await.unwrap();
    assert_eq!(owners.customer_of("plant-1"), "acme");
    assert_eq!(owners.customer_of("elsewhere"), DEFAULT_CUSTOMER);
}

/// A second factor: on only once confirmed, then needed at every sign-in, each code once.
async fn second_factor(db: PeopleDb) {
    let p = People::new(db.clone(), config()).unwrap();
    let now = Utc::now();
    let unix = now.timestamp() as u64;
    let u = p.add_user("erin", PW, false, vec![], now).await.unwrap();
    let (secret, uri) = p.totp_begin(u).await.unwrap();
    assert!(uri.contains(&secret) && uri.starts_with("otpauth://totp/Outpost:erin?"));
    assert!(
        matches!(p.sign_in("erin", PW, None, now).await.unwrap(), SignIn::Ok { .. }),
        "not on before it is confirmed"
    );
    let u = db.user("erin").await.unwrap().unwrap();
    assert!(p.totp_confirm(u.clone(), "12345x", now).await.is_err());
    let code = totp::code_for(&secret, unix);
    p.totp_confirm(u, &code, now).await.unwrap();
    assert!(matches!(p.sign_in("erin", PW, None, now).await.unwrap(), SignIn::NeedCode));
    assert!(matches!(p.sign_in("erin", "wrong password!", None, now).await.unwrap(), SignIn::Wrong { .. }));
    // The code that confirmed it is used up.
    assert!(matches!(p.sign_in("erin", PW, Some(&code), now).await.unwrap(), SignIn::Wrong { .. }));
    let later = now + D::seconds(30);
    let next = totp::code_for(&secret, unix + 30);
    assert!(matches!(p.sign_in("erin", PW, Some(&next), later).await.unwrap(), SignIn::Ok { .. }));
    assert!(
        matches!(p.sign_in("erin", PW, Some(&next), later).await.unwrap(), SignIn::Wrong { .. }),
        "replayed"
    );
    // Required for admins by the setting.
    let strict = People::new(db.clone(), PeopleConfig { require_totp_for_admins: true, ..config() }).unwrap();
    let admin = strict
        .add_user("fay", PW, false, vec![Grant { customer: "a".into(), role: Role::Admin }], now)
        .await
        .unwrap();
    assert!(strict.lacks_required_totp(&admin));
    assert!(!strict.lacks_required_totp(&db.user("erin").await.unwrap().unwrap()), "erin has one");
    let viewer = strict
        .add_user("gus", PW, false, vec![Grant { customer: "a".into(), role: Role::Viewer }], now)
        .await
        .unwrap();
    assert!(!strict.lacks_required_totp(&viewer));
}

macro_rules! both_engines {
    ($($case:ident),*) => {
        mod on_sled {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() { let (db, _dir) = super::sled_db().await; super::$case(db).await })*
        }
        #[cfg(unix)]
        mod on_postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() { super::$case(super::pg_db().await).await })*
        }
    };
}

both_engines!(lockout, sessions, tokens, setup_link, second_factor);

#[tokio::test]
async fn sled_people_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = crate::store::sled::SledStore::open(dir.path()).unwrap();
        let db: PeopleDb = Arc::new(crate::store::sled::people::SledPeople::open(&store).unwrap());
        People::new(db, config()).unwrap().add_user("dave", PW, true, vec![], Utc::now()).await.unwrap();
        // No orderly close: what put_user returned on must already be on disk.
        std::mem::forget(store);
    }
    let copy = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(dir.path()).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), copy.path().join(e.file_name())).unwrap();
        } else {
            copy_dir(&e.path(), &copy.path().join(e.file_name()));
        }
    }
    let store = crate::store::sled::SledStore::open(copy.path()).unwrap();
    let db: PeopleDb = Arc::new(crate::store::sled::people::SledPeople::open(&store).unwrap());
    let p = People::new(db, config()).unwrap();
    assert!(matches!(p.sign_in("dave", PW, None, Utc::now()).await.unwrap(), SignIn::Ok { .. }));
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}
