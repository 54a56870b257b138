//! The reference cloud: ingest, storage, API and dashboard.
#![forbid(unsafe_code)]
