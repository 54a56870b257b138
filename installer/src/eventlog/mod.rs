//! The Windows event log as a log destination for a role run as a service: stderr goes nowhere
//! there, so warnings, errors and the service's start and stop are written to the Application log
//! under the source [`SOURCE`], where an operator (Event Viewer, `Get-EventLog`, monitoring tools)
//! looks for them.
//!
//! - [`text`]: an event's message and fields as one line of text, bounded (every platform, tested
//!   on Linux).
//! - [`limit`]: how many events a minute may be written, so a warning repeated in a loop cannot
//!   flood the machine's Application log (every platform).
//! - `layer` (Windows only): the `tracing_subscriber` layer that writes them with
//!   `RegisterEventSourceW`/`ReportEventW`.
//!
//! The installer registers the source (`EventMessageFile` = the installed exe, whose message table
//! has one message, `%1`, built from `outpost.mc` by the binary's build script) so Event Viewer
//! shows the text as it is; it removes the registration with the last role.

#[cfg(windows)]
mod layer;
pub mod limit;
pub mod text;

#[cfg(windows)]
pub use layer::EventLogLayer;

/// The event source in the Application log: one for every role (the text names the role).
pub const SOURCE: &str = "Outpost";

/// The source's registry key, under `HKEY_LOCAL_MACHINE`.
pub const SOURCE_KEY: &str = r"SYSTEM\CurrentControlSet\Services\EventLog\Application\Outpost";

/// The tracing target of the service's own lifecycle events (started, stopping, stopped): the event
/// log takes these at INFO, everything else from WARN up.
pub const SERVICE_TARGET: &str = "outpost::service";

/// The event ID of every event: the one message of the exe's message table, `%1`.
pub const EVENT_ID: u32 = 1;

/// `TypesSupported` of the source: error, warning and information.
pub const TYPES_SUPPORTED: u32 = 0x7;
