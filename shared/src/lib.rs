//! What two Outpost roles both need. [`model`] is the reading and batch model and the JSON shapes
//! of the one HTTP API; [`buffer`] is the durable, quota-bounded store every hop keeps readings in
//! until the next hop has acknowledged them; [`config`] loads TOML files and turns every mistake
//! into an error naming file, line and key; [`backoff`] is the single retry policy; [`wire`] packs
//! request bodies (gzip, with a hard size cap on the way in); [`tls`] builds the rustls client and
//! server configurations, including the self-signed authority a fresh cloud makes for itself;
//! [`mail`] sends alerts and reports over SMTPS/STARTTLS through a durable outbox;
//! [`group_flush`] makes sled writes durable with one flush at a time for many writers;
//! [`http_server`] is the server setup (timeouts, connection cap, limits) of every listener;
//! [`sensor_config`] is what a `[[sensor]]` table may say, validated by the same rules on the hub
//! and on the cloud that manages it ([`managed`] is the signed document that carries it).
#![forbid(unsafe_code)]

pub mod backoff;
pub mod buffer;
pub mod config;
pub mod group_flush;
pub mod http_server;
pub mod keys;
pub mod mail;
pub mod managed;
pub mod model;
pub mod relay_settings;
pub mod sensor_config;
pub mod ssdp;
pub mod tls;
pub mod totp;
pub mod wire;

/// Installs the process-wide rustls crypto provider (ring). Every role calls this before it builds
/// a TLS configuration; calling it twice is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// An error with all its causes. reqwest's and rustls' own messages hide whether it was DNS, a
/// refusal or which TLS check failed; that part is in the chain. A cause already quoted by its
/// parent is not repeated.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}
