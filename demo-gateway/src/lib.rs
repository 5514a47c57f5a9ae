//! The seed's API gateway, made of tower-gateway's layers: one
//! `StripPrefix → JwtAuth (where required) → Retry → RoundRobin → Proxy` stack per
//! route, composed with `ServiceBuilder`, and tower-http's request id, access
//! log, CORS, panic catching, timeout and body limit around them all.
//!
//! - [`config`]: the TOML configuration, its defaults (the seed's table) and
//!   environment overrides;
//! - [`gateway`]: routing, `/healthz`, `/readyz`, `/metrics`;
//! - [`server`]: the HTTP server and its graceful shutdown;
//! - [`demo`]: the whole seed system in one process.

pub mod config;
pub mod demo;
pub mod gateway;
pub mod metrics;
pub mod server;

pub use config::{Config, ConfigError, Settings};
pub use gateway::Gateway;

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    demo_services::server::shutdown_signal().await;
}
