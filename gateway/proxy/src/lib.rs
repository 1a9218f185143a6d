//! The Gatehouse request path on Pingora: routing ([`route`]), smooth weighted node selection
//! ([`selection`]), upstreams with their VPC egress guard and node eligibility ([`upstream`]),
//! node health from passive and active checks ([`health`], [`probe`]), the runtime snapshot
//! swapped atomically on change ([`runtime`]), the `ProxyHttp` implementation with retries
//! ([`proxy`]), whole bodies for the plugins that read them ([`bodies`]), background DNS ([`resolve`]), metrics ([`metrics`]) and server assembly
//! ([`server`]).
//!
//! It takes a validated [`gatehouse_config::Config`]; parsing and validation live in that crate.

pub mod access;
pub mod bodies;
pub mod forwarding;
pub mod health;
pub mod listener;
pub mod metrics;
pub mod plugins;
pub mod probe;
pub mod proxy;
pub mod resolve;
pub mod respond;
pub mod route;
pub mod runtime;
pub mod selection;
pub mod server;
pub mod tls;
pub mod upstream;

pub use runtime::{Runtime, SharedRuntime};
pub use server::{build, plugin_engine, Sockets, StartError};
