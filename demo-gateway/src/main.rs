//! `demo-gateway`: the seed's API gateway (see `--help`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use demo_gateway::{Config, Gateway, server};

/// The seed's API gateway, built from tower-gateway's layers.
///
/// Without a config file it is the seed's gateway on 127.0.0.1:8080: /api/products → 3001, 3003;
/// /api/users → 3002, 3004; /api/checkout → 3005 (JWT required). Environment overrides:
/// GATEWAY_LISTEN, GATEWAY_CORS_ORIGINS, REDIS_URL, JWT_SECRET_FILE, JWT_SECRET.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// The configuration file (TOML).
    #[arg(long, env = "GATEWAY_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Print the effective configuration, secrets masked, and exit.
    #[arg(long)]
    print_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the gateway (the default).
    Serve,
    /// Run the whole seed system in this process: the gateway on 8080, product-service on 3001
    /// and 3003, user-service on 3002 and 3004, checkout-service on 3005, data in ./data
    /// (DATA_DIR). Tokens are revoked in memory, or in Redis when REDIS_URL is set.
    Demo,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    demo_services::server::init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("demo-gateway: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Demo => runtime.block_on(demo_gateway::demo::run(cli.config.as_deref())),
        Command::Serve => runtime.block_on(serve(cli.config, cli.print_config)),
    }
}

async fn serve(path: Option<PathBuf>, print_config: bool) -> ExitCode {
    let config = match Config::load(path.as_deref(), |name| std::env::var(name).ok()) {
        Ok(config) => config,
        Err(err) => return config_error(&err),
    };
    if print_config {
        print!("{}", config.to_masked_toml());
        return ExitCode::SUCCESS;
    }
    let settings = match config.validate() {
        Ok(settings) => settings,
        Err(err) => return config_error(&err),
    };
    let gateway = match Gateway::build(&config, None).await {
        Ok(gateway) => gateway,
        Err(err) => return config_error(&err),
    };
    let listener = match tokio::net::TcpListener::bind(settings.listen).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("demo-gateway: cannot listen on {}: {err}", settings.listen);
            return ExitCode::from(2);
        }
    };
    tracing::info!(listen = %settings.listen, routes = config.routes.len(), "gateway listening");
    let svc = server::http_service(gateway, &config, &settings);
    match server::serve(listener, svc, settings, demo_gateway::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("demo-gateway: {err}");
            ExitCode::FAILURE
        }
    }
}

fn config_error(err: &demo_gateway::ConfigError) -> ExitCode {
    eprintln!("demo-gateway: {err}");
    ExitCode::from(2)
}
