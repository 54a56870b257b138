//! Connections outside the pool, for what must live with one session: LISTEN (the database
//! tells this node what other nodes did) and session-level advisory locks (a job runs on the node
//! whose connection holds the lock; when that node dies its connection, and with it the lock,
//! goes).
//!
//! [`Session::open`] connects once (with the pool's URL and TLS) and hands back the client and
//! a channel of the notifications the server sends on it; the channel closes when the
//! connection ends, which is how callers notice a lost session and make a new one.

use super::connect::{tls_config, PostgresOptions, PostgresUrl};
use super::db_err;
use crate::error::CloudError;
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_postgres::config::SslMode;
use tokio_postgres::{AsyncMessage, Client, Connection};

/// Notifications buffered per session before the connection waits for the reader.
const BACKLOG: usize = 4096;

/// One NOTIFY as received: its channel and payload.
#[derive(Debug, Clone)]
pub struct Note {
    pub channel: String,
    pub payload: String,
}

/// A connection of its own, with the notifications that arrive on it.
pub struct Session {
    pub client: Client,
    /// Closes when the connection ends (server restarted, network lost).
    pub notes: mpsc::Receiver<Note>,
}

impl Session {
    /// Connects with the pool's settings (URL, TLS, connect timeout).
    pub async fn open(url: &PostgresUrl, options: &PostgresOptions) -> Result<Session, CloudError> {
        let mut config = url.parse().map_err(|e| CloudError::Config(format!("[storage] postgres: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(options.timeout);
        }
        let (tx, notes) = mpsc::channel(BACKLOG);
        let client = match config.get_ssl_mode() {
            SslMode::Require => {
                let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(options)?);
                let (client, conn) = config.connect(tls).await.map_err(db_err)?;
                drive(conn, tx);
                client
            }
            _ => {
                config.ssl_mode(SslMode::Disable);
                let (client, conn) = config.connect(tokio_postgres::NoTls).await.map_err(db_err)?;
                drive(conn, tx);
                client
            }
        };
        Ok(Session { client, notes })
    }

    /// Subscribes to `channels` (names we chose, never user input).
    pub async fn listen(&self, channels: &[&str]) -> Result<(), CloudError> {
        let sql: String = channels.iter().map(|c| format!("LISTEN {c};")).collect();
        self.client.batch_execute(&sql).await.map_err(db_err)
    }
}

/// Runs the connection on its own task, passing notifications on; dropping `tx` at the end
/// tells the reader the session is gone.
fn drive<S, T>(mut conn: Connection<S, T>, tx: mpsc::Sender<Note>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    let note = Note { channel: n.channel().to_string(), payload: n.payload().to_string() };
                    if tx.send(note).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "database session ended");
                    return;
                }
            }
        }
    });
}
