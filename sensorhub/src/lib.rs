//! The sensorhub: samples this machine's sensors, buffers every reading durably and sends it on.
#![forbid(unsafe_code)]

pub mod relay;
