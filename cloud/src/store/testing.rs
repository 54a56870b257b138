//! For tests across the cloud: every store on one engine ([`on_sled`], [`on_postgres`]) and
//! [`both_engines!`](crate::both_engines), which runs one case on each. PostgreSQL is a fresh
//! database on the test process's throwaway server; without a PostgreSQL the case fails with
//! what to install, it never skips.

use super::Engines;

/// What keeps an engine's storage alive during one case, with the data directory the cloud's
/// key files go in (a temp dir on both engines).
pub(crate) struct Keep {
    pub dir: tempfile::TempDir,
    /// Every directory the engine writes its records to (the temp dir on sled; the server's
    /// data directory on PostgreSQL), for tests that show a secret is nowhere in clear.
    pub stored_in: Vec<std::path::PathBuf>,
}

/// Every store on sled in a temp dir (with an outbox).
pub(crate) fn on_sled() -> (Engines, Keep) {
    let dir = tempfile::tempdir().unwrap();
    let sled = super::sled::SledStore::open(&dir.path().join("db")).unwrap();
    let outbox = outpost_shared::mail::Outbox::open(&dir.path().join("mail-outbox")).unwrap();
    let stored_in = vec![dir.path().to_path_buf()];
    (Engines::on_sled(sled, Some(outbox)).unwrap(), Keep { dir, stored_in })
}

/// Every store on a fresh, migrated PostgreSQL database.
pub(crate) async fn on_postgres() -> (Engines, Keep) {
    let url = super::tests::fresh_database().await;
    let pg =
        super::postgres::PgStore::open(&url, &super::postgres::PostgresOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let stored_in = vec![dir.path().to_path_buf(), super::tests::server().data_dir()];
    (Engines::on_postgres(pg), Keep { dir, stored_in })
}

/// Runs each `async fn(Engines, &Keep)` case twice: `mod on_sled` and `mod on_postgres`.
#[macro_export]
#[doc(hidden)]
macro_rules! both_engines {
    ($($case:ident),* $(,)?) => {
        mod on_sled {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let (engines, keep) = $crate::store::testing::on_sled();
                    super::$case(engines, &keep).await
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let (engines, keep) = $crate::store::testing::on_postgres().await;
                    super::$case(engines, &keep).await
                }
            )*
        }
    };
}
