//! What the demo's processes share — the gateway and the three services alike —
//! without any of them depending on another: logging, the shutdown signal, the
//! shipped token settings, and the Redis URL from the environment.

use tower_gateway_auth::KeyConfig;

pub mod telemetry;

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
/// styling machinery (an access log line costs about a fifth less). Exports
/// nothing: see [`telemetry::init`] for that.
pub fn init_tracing() {
    let _ = telemetry::init("demo", &telemetry::TelemetryConfig::default());
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

/// `url` as a log or a printed configuration may show it: any password
/// replaced by `********` (a database or Redis URL carries one).
pub fn mask_url_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}://{user}:********@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

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
