//! SSDP discovery on the LAN (UDP 1900): hubs find connectors, connectors find hubs.
//!
//! - [`Responder`] / [`run_responder`]: answers M-SEARCH for its [`Advertisement`]s and sends
//!   NOTIFY `ssdp:alive` (at start, again 1-3 s later, then every `notify_interval`) and
//!   `ssdp:byebye` (on shutdown). It serves only private and link-local interfaces, answers only
//!   sources on their subnets, rate-limits its replies ([`RateLimits`]) and drops oversized and
//!   malformed datagrams, counting everything in [`ResponderStats`].
//! - [`search`] / [`search_where`]: one multicast search with a total deadline, its answers capped
//!   per search and per source address.
//! - [`message`]: the strict datagram parser and writer both sides rely on.
//!
//! Search targets: [`ST_CONNECTOR`] and [`ST_SENSORHUB`]. A responder answers a search for its own
//! target, for `ssdp:all`, and for its own `uuid:<uuid>`. It does not answer `upnp:rootdevice`:
//! LOCATION is an API URL, not a UPnP device description, and generic UPnP control points that
//! fetch it expecting XML would only log errors.
//!
//! Tests with real multicast run between network namespaces the test creates (see
//! `tests/netns/netns.sh` at the repository root and `shared/tests/ssdp_netns.rs`); nothing here
//! ever sends on this machine's real interfaces during tests.

mod advertisement;
mod config;
mod error;
#[cfg(test)]
mod fuzz;
mod iface;
mod limiter;
pub mod message;
mod responder;
mod search;
#[cfg(test)]
mod tests;

pub use advertisement::{
    next_boot_id, server_header, uuid_for_machine, uuid_from_bytes, Advertisement, BOOT_ID_MAX, LOCATION_IP,
};
pub use config::{is_lan_address, InterfaceSpec, Interfaces, RateLimits, ResponderConfig};
pub use error::SsdpError;
pub use iface::{lan_interfaces, LanInterface};
pub use responder::{run_responder, Responder, ResponderStats, StatsHandle, SSDP_GROUP, SSDP_PORT};
pub use search::{search, search_where, Found, MAX_ANSWERS, MAX_PER_SOURCE, MAX_SOURCES};

/// Search target of a connector.
pub const ST_CONNECTOR: &str = "urn:outpost-dev:service:connector:1";
/// Search target of a sensorhub.
pub const ST_SENSORHUB: &str = "urn:outpost-dev:service:sensorhub:1";
