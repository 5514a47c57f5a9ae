//! What the demo's processes share — the gateway and the three services alike —
//! without any of them depending on another: logging, the shutdown signal, the
//! shipped token settings, and the Redis URL from the environment.

use tower_gateway_auth::KeyConfig;

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

/// The shipped token settings: issued by `user-service` for `tower-gateway`.
pub fn shipped_jwt() -> KeyConfig {
    KeyConfig { issuer: Some("user-service".into()), audience: Some("tower-gateway".into()), ..KeyConfig::default() }
}

/// A variable of the environment that is wrong, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvError {
    /// The variable.
    pub variable: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl std::fmt::Display for EnvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.variable, self.message)
    }
}

impl std::error::Error for EnvError {}

/// The Redis URL from `REDIS_URL`, or from the file `REDIS_URL_FILE` names (a
/// Docker secret: the URL carries the password); `None` with neither.
pub fn redis_url_from_env(env: impl Fn(&str) -> Option<String>) -> Result<Option<String>, EnvError> {
    let var = |name: &str| env(name).filter(|v| !v.is_empty());
    let wrong = |message: String| EnvError { variable: "REDIS_URL_FILE", message };
    match (var("REDIS_URL"), var("REDIS_URL_FILE")) {
        (Some(_), Some(_)) => Err(wrong("give REDIS_URL or REDIS_URL_FILE, not both".into())),
        (Some(url), None) => Ok(Some(url)),
        (None, Some(path)) => {
            let bytes =
                tower_gateway_auth::read_secret_file(path.as_ref()).map_err(|e| wrong(format!("{path}: {e}")))?;
            let url = String::from_utf8(bytes).map_err(|_| wrong(format!("{path}: not UTF-8")))?;
            Ok(Some(url.trim().to_owned()))
        }
        (None, None) => Ok(None),
    }
}
