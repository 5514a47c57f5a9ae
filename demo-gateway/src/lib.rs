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
pub mod config;
mod idle_body;
mod metrics;
mod plan;
mod request_id;
mod routes;
mod server;
mod tls;

pub use config::{Access, Config, ConfigError};
pub use plan::Plan;
pub use routes::RouteName;
pub use server::{Gateway, ReloadError, Reloaded, bind, serve};

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`), in colour only on a
/// terminal. Off a terminal, fields are written as `name=value` without the
/// styling machinery (an access log line costs about a fifth less).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        let _ = builder.try_init();
    } else {
        use tracing_subscriber::field::MakeExt as _;
        let fields = tracing_subscriber::fmt::format::debug_fn(|writer, field, value| match field.name() {
            "message" => write!(writer, "{value:?}"),
            name => write!(writer, "{name}={value:?}"),
        })
        .delimited(" ");
        let _ = builder.with_ansi(false).fmt_fields(fields).try_init();
    }
}
