//! `demo-gateway`: the seed's API gateway (see `--help`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use demo_gateway::{Config, Gateway, Plan};

/// The seed's API gateway, built from tower-gateway's layers.
///
/// Without a config file it is the shipped system on 127.0.0.1:8080: /api/products → 3001, 3003
/// (GET public, writes need the admin role); /api/users → 3002, 3004 (signup and login public,
/// the list admin, the rest a token); /api/checkout → 3005 (a token). Environment overrides:
/// GATEWAY_LISTEN, GATEWAY_CORS_ORIGINS, REDIS_URL, and the key: JWT_ALGORITHM with
/// JWT_PUBLIC_KEY_FILE (or JWT_SECRET_FILE), JWT_ISSUER, JWT_AUDIENCE, JWT_TTL_SECS. Traces:
/// OTEL_EXPORTER_OTLP_ENDPOINT (OTLP/HTTP), OTEL_EXPORTER_OTLP_PROTOCOL, OTEL_SERVICE_NAME,
/// OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG, where [telemetry] says nothing.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// The configuration file (TOML).
    #[arg(long, env = "GATEWAY_CONFIG")]
    config: Option<PathBuf>,
    /// Check the configuration, print it with the policy of every route (secrets
    /// masked), and exit.
    #[arg(long)]
    print_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Compile the configuration as the server would, without serving: exit 0
    /// with a one-line summary, or 2 with the field at fault.
    Check {
        /// The configuration file (TOML).
        #[arg(long, env = "GATEWAY_CONFIG")]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The log and the span exporter are made from the configuration, so it is
    // read first (its errors go to stderr as they are); `check` only logs.
    let config = match &cli.command {
        Some(Command::Check { .. }) => {
            demo_gateway::init_tracing();
            None
        }
        None => match Config::load(cli.config.as_deref(), |name| std::env::var(name).ok()) {
            Ok(config) => Some(config),
            Err(err) => {
                eprintln!("demo-gateway: {err}");
                return ExitCode::from(2);
            }
        },
    };
    let telemetry = match config.as_ref().map(|c| demo_common::telemetry::init("gateway", &c.telemetry)) {
        Some(Ok(telemetry)) => Some(telemetry),
        Some(Err(err)) => {
            eprintln!("demo-gateway: {err}");
            return ExitCode::FAILURE;
        }
        None => None,
    };
    let code = run(cli, config);
    // What is queued is sent before the process ends.
    if let Some(telemetry) = telemetry {
        telemetry.shutdown();
    }
    code
}

fn run(cli: Cli, config: Option<Config>) -> ExitCode {
    // This thread accepts connections and runs the admin side; the connections
    // themselves are served on the worker threads `serve` starts.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("demo-gateway: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        if let Some(Command::Check { config }) = &cli.command {
            let path = config.as_deref().or(cli.config.as_deref());
            return match checked(path) {
                Ok(plan) => {
                    println!("ok: {}", plan.summary());
                    ExitCode::SUCCESS
                }
                Err(errors) => {
                    for err in errors {
                        eprintln!("demo-gateway check: {err}");
                    }
                    ExitCode::from(2)
                }
            };
        }
        let plan = match config.map_or_else(|| checked(cli.config.as_deref()), Plan::check) {
            Ok(plan) => plan,
            Err(errors) => {
                for err in errors {
                    eprintln!("demo-gateway: {err}");
                }
                return ExitCode::from(2);
            }
        };
        if cli.print_config {
            print!("{}", plan.to_masked_toml());
            return ExitCode::SUCCESS;
        }
        let listener = match demo_gateway::bind(plan.listen()) {
            Ok(listener) => listener,
            Err(err) => {
                eprintln!("demo-gateway: cannot listen on {}: {err}", plan.listen());
                return ExitCode::from(2);
            }
        };
        tracing::info!(listen = %plan.listen(), summary = %plan.summary(), "gateway listening");
        let mut gateway = Gateway::new(plan);
        if let Some(path) = cli.config {
            // SIGHUP, a change of the file, or POST /config/reload reads it again.
            gateway = gateway.config_file(path);
        }
        match demo_gateway::serve(gateway, listener, demo_gateway::shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("demo-gateway: {err}");
                ExitCode::FAILURE
            }
        }
    })
}

/// The configuration at `path` (or the defaults), with the environment's
/// overrides, compiled: every field at fault when it does not.
fn checked(path: Option<&std::path::Path>) -> Result<Plan, Vec<demo_gateway::ConfigError>> {
    let config = Config::load(path, |name| std::env::var(name).ok()).map_err(|e| vec![e])?;
    Plan::check(config)
}
