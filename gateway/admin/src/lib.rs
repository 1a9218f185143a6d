//! The Gatehouse admin API and live reconfiguration.
//!
//! [`ConfigStore`] owns the writable configuration: every change (admin write, `POST /reload`,
//! `SIGHUP`) is validated as a whole, applied as one atomic snapshot swap and persisted
//! atomically. [`AdminApp`] is the REST API over it, on its own listener (loopback by default),
//! every request authenticated with a bearer token. [`ReloadOnHangup`] re-reads the file on
//! `SIGHUP`.

pub mod api;
pub mod console;
pub mod fleet;
pub mod metrics;
pub mod store;

pub use api::AdminApp;
pub use store::{ConfigStore, ReloadOnHangup};

/// The OpenAPI document of the admin API.
pub const OPENAPI: &str = include_str!("../openapi.json");
