//! The seed's API gateway, made of tower-gateway's layers, with an access policy
//! per route and method.
//!
//! A [`Config`] (TOML, environment overrides, defaults) is compiled once into a
//! [`Plan`]: each upstream's `Retry → RoundRobin → Proxy` stack, shared by the
//! routes that name it; each route's match on the canonical path, its policy
//! (public, any valid token, or a role) and its `StripPrefix → JwtAuth` layers;
//! the authenticator; the server's settings. [`serve`] runs a plan on a listener
//! until a shutdown signal: the binary, the one-command demo, the tests and the
//! benchmarks all go through it.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = demo_gateway::Config::load(None, |name| std::env::var(name).ok())?;
//! let plan = demo_gateway::Plan::compile(config)?;
//! let listener = demo_gateway::bind(plan.listen())?;
//! demo_gateway::serve(plan, listener, demo_gateway::shutdown_signal()).await?;
//! # Ok(())
//! # }
//! ```

mod abort_on_drop;
mod access_log;
mod alive;
mod arc_service;
pub mod config;
mod idle_body;
mod metrics;
mod plan;
mod request_id;
mod routes;
mod server;
mod shared;
mod tls;

pub use config::{Access, Config, ConfigError};
pub use plan::Plan;
pub use routes::RouteName;
pub use server::{Gateway, ReloadError, Reloaded, bind, serve};

pub use demo_common::{init_tracing, shutdown_signal};
