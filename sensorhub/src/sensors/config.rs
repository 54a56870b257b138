//! What a `[[sensor]]` table may say lives in `outpost_shared::sensor_config`, so the cloud that
//! manages sensors validates them with the hub's own rules; the hub's sensors keep these paths.

pub use outpost_shared::sensor_config::*;
