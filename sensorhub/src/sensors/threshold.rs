//! Thresholds live in `outpost_shared::sensor_config::threshold` beside the config they come from.

pub use outpost_shared::sensor_config::threshold::*;
