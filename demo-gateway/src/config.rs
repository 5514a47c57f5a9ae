//! The gateway's configuration: a TOML file, environment overrides, validated
//! once at start-up into plain values the hot path only reads.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A configuration that cannot work, naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The field, e.g. `routes[1].endpoints[0]`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(field: impl Into<String>, message: impl std::fmt::Display) -> Self {
        Self { field: field.into(), message: message.to_string() }
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid configuration: {}: {}", self.field, self.message)
    }
}

impl std::error::Error for ConfigError {}

/// The whole configuration. Every field has a default: the empty file is the
/// seed's gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where to listen (`GATEWAY_LISTEN`).
    pub listen: String,
    /// The longest a request may take, end to end, before a `504`.
    pub request_timeout_ms: u64,
    /// The largest request body accepted (`413` beyond).
    pub max_body_bytes: usize,
    /// Requests handled at once; more are answered `503` at once.
    pub max_concurrent_requests: usize,
    /// How long a client may take to send a request head.
    pub header_read_timeout_ms: u64,
    /// The largest request head accepted.
    pub max_header_bytes: usize,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub grace_period_ms: u64,
    /// Origins allowed by CORS; `["*"]` for any, `[]` for no CORS headers
    /// (`GATEWAY_CORS_ORIGINS`, comma-separated).
    pub cors_origins: Vec<String>,
    /// The token store for JWT revocation (`REDIS_URL`); in memory without it.
    pub redis_url: Option<String>,
    /// JWT verification, for routes with `auth = true`.
    pub jwt: JwtConfig,
    /// The routes, matched by longest prefix.
    pub routes: Vec<RouteConfig>,
}

/// JWT verification settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// A file holding the HS256 secret (`JWT_SECRET_FILE`), at least 32 bytes.
    pub secret_file: Option<PathBuf>,
    /// The HS256 secret itself (`JWT_SECRET`); prefer `secret_file`.
    pub secret: Option<String>,
    /// For asymmetric keys: the algorithm (`RS256`, `ES256`, `EdDSA`…).
    pub algorithm: Option<String>,
    /// For asymmetric keys: the public key, PEM.
    pub public_key_file: Option<PathBuf>,
    /// Required `iss`.
    pub issuer: Option<String>,
    /// Required `aud`.
    pub audience: Option<String>,
    /// How long a token found unrevoked is trusted without asking the store.
    pub cache_bound_ms: u64,
    /// Let locally valid tokens through when the store is down.
    pub fail_open: bool,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            secret_file: None,
            secret: None,
            algorithm: None,
            public_key_file: None,
            issuer: None,
            audience: None,
            cache_bound_ms: 1_000,
            fail_open: false,
        }
    }
}

/// One route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteConfig {
    /// The base path, stripped before forwarding (`/api/products`).
    pub prefix: String,
    /// Static endpoints, `http://host:port`.
    pub endpoints: Vec<String>,
    /// Or a DNS name with a port (`tasks.product-service:3001`), re-resolved to all
    /// its addresses every `dns_refresh_ms`.
    pub dns: Option<String>,
    /// How often `dns` is resolved again.
    pub dns_refresh_ms: u64,
    /// Whether a JWT is required.
    pub auth: bool,
    /// How long to wait for an upstream's response head.
    pub timeout_ms: u64,
    /// How long to wait for a connection to an upstream.
    pub connect_timeout_ms: u64,
    /// Consecutive refused connections before an endpoint is skipped.
    pub eject_after: u32,
    /// How long a refusing endpoint is skipped.
    pub cool_down_ms: u64,
    /// Retries.
    pub retry: RetryConfig,
}

impl Default for RouteConfig {
    fn default() -> Self {
        Self {
            prefix: String::new(),
            endpoints: Vec::new(),
            dns: None,
            dns_refresh_ms: 5_000,
            auth: false,
            timeout_ms: 15_000,
            connect_timeout_ms: 1_000,
            eject_after: 1,
            cool_down_ms: 10_000,
            retry: RetryConfig::default(),
        }
    }
}

/// Retry settings of a route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts in all, the first included (the seed's 3).
    pub attempts: u32,
    /// The first backoff; it doubles each time.
    pub backoff_ms: u64,
    /// The longest backoff.
    pub max_backoff_ms: u64,
    /// Random extra, as a fraction of the backoff.
    pub jitter: f64,
    /// The longest one attempt may take (0: no limit but the route's timeout).
    pub per_try_timeout_ms: u64,
    /// Request bodies up to this size are buffered so they can be replayed.
    pub max_replay_body_bytes: usize,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            attempts: 3,
            backoff_ms: 100,
            max_backoff_ms: 2_000,
            jitter: 0.5,
            per_try_timeout_ms: 5_000,
            max_replay_body_bytes: 64 * 1024,
        }
    }
}

fn route(prefix: &str, ports: &[u16], auth: bool) -> RouteConfig {
    RouteConfig {
        prefix: prefix.into(),
        endpoints: ports.iter().map(|p| format!("http://127.0.0.1:{p}")).collect(),
        auth,
        ..RouteConfig::default()
    }
}

impl Default for Config {
    /// The seed's gateway: `/api/products` → 3001, 3003; `/api/users` → 3002,
    /// 3004; `/api/checkout` → 3005 with JWT auth.
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            request_timeout_ms: 30_000,
            max_body_bytes: 1024 * 1024,
            max_concurrent_requests: 1024,
            header_read_timeout_ms: 5_000,
            max_header_bytes: 16 * 1024,
            grace_period_ms: 10_000,
            cors_origins: vec!["*".into()],
            redis_url: None,
            jwt: JwtConfig::default(),
            routes: vec![
                route("/api/products", &[3001, 3003], false),
                route("/api/users", &[3002, 3004], false),
                route("/api/checkout", &[3005], true),
            ],
        }
    }
}

/// The environment variables that override the file.
pub const ENV_OVERRIDES: &[&str] =
    &["GATEWAY_LISTEN", "GATEWAY_CORS_ORIGINS", "REDIS_URL", "JWT_SECRET_FILE", "JWT_SECRET"];

impl Config {
    /// Reads `path` (TOML), or the defaults without one, then applies the
    /// environment overrides.
    pub fn load(path: Option<&Path>, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut config = match path {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|e| ConfigError::new(path.display().to_string(), e))?;
                toml::from_str(&text).map_err(|e| ConfigError::new(path.display().to_string(), e.message()))?
            }
            None => Config::default(),
        };
        let env = |name: &str| env(name).filter(|v| !v.is_empty());
        if let Some(listen) = env("GATEWAY_LISTEN") {
            config.listen = listen;
        }
        if let Some(origins) = env("GATEWAY_CORS_ORIGINS") {
            config.cors_origins = origins.split(',').map(|o| o.trim().to_owned()).filter(|o| !o.is_empty()).collect();
        }
        if let Some(url) = env("REDIS_URL") {
            config.redis_url = Some(url);
        }
        if let Some(file) = env("JWT_SECRET_FILE") {
            config.jwt.secret_file = Some(file.into());
        }
        if let Some(secret) = env("JWT_SECRET") {
            config.jwt.secret = Some(secret);
        }
        Ok(config)
    }

    /// Checks everything that can be checked without the network.
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        let listen: SocketAddr =
            self.listen.parse().map_err(|e| ConfigError::new("listen", format!("{:?}: {e}", self.listen)))?;
        positive("request_timeout_ms", self.request_timeout_ms)?;
        positive("header_read_timeout_ms", self.header_read_timeout_ms)?;
        if self.max_concurrent_requests == 0 {
            return Err(ConfigError::new("max_concurrent_requests", "must be at least 1"));
        }
        if self.max_header_bytes < 8 * 1024 {
            return Err(ConfigError::new("max_header_bytes", "must be at least 8192"));
        }
        for (i, origin) in self.cors_origins.iter().enumerate() {
            if origin != "*" && http::HeaderValue::from_str(origin).is_err() {
                return Err(ConfigError::new(format!("cors_origins[{i}]"), format!("{origin:?} is not an origin")));
            }
        }
        if self.routes.is_empty() {
            return Err(ConfigError::new("routes", "at least one route is required"));
        }
        for (i, route) in self.routes.iter().enumerate() {
            route.validate(&format!("routes[{i}]"))?;
            if self.routes[..i].iter().any(|r| r.prefix.trim_end_matches('/') == route.prefix.trim_end_matches('/')) {
                return Err(ConfigError::new(
                    format!("routes[{i}].prefix"),
                    format!("{:?} is used twice", route.prefix),
                ));
            }
        }
        if self.routes.iter().any(|r| r.auth)
            && self.jwt.secret_file.is_none()
            && self.jwt.secret.is_none()
            && self.jwt.public_key_file.is_none()
        {
            return Err(ConfigError::new(
                "jwt.secret_file",
                "a key is required because a route has auth = true (set JWT_SECRET_FILE)",
            ));
        }
        Ok(Settings {
            listen,
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
            grace_period: Duration::from_millis(self.grace_period_ms),
            max_header_bytes: self.max_header_bytes,
        })
    }

    /// The configuration with secrets masked, as TOML.
    pub fn to_masked_toml(&self) -> String {
        let mut masked = self.clone();
        if masked.jwt.secret.is_some() {
            masked.jwt.secret = Some("********".into());
        }
        if let Some(url) = &masked.redis_url {
            masked.redis_url = Some(mask_url_password(url));
        }
        toml::to_string_pretty(&masked).unwrap_or_else(|e| format!("# cannot print the configuration: {e}\n"))
    }
}

fn mask_url_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}://{user}:********@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

fn positive(field: &str, value: u64) -> Result<(), ConfigError> {
    if value == 0 { Err(ConfigError::new(field, "must be positive")) } else { Ok(()) }
}

impl RouteConfig {
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        tower_gateway::StripPrefixLayer::try_new(&self.prefix)
            .map_err(|e| ConfigError::new(format!("{at}.prefix"), e))?;
        if self.prefix.trim_end_matches('/').is_empty() {
            return Err(ConfigError::new(format!("{at}.prefix"), "a route needs a non-root prefix"));
        }
        match (&self.dns, self.endpoints.is_empty()) {
            (Some(_), false) => {
                return Err(ConfigError::new(format!("{at}.dns"), "give either endpoints or dns, not both"));
            }
            (None, true) => return Err(ConfigError::new(format!("{at}.endpoints"), "give endpoints or dns")),
            (Some(dns), true) => {
                let ok = dns
                    .rsplit_once(':')
                    .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
                if !ok {
                    return Err(ConfigError::new(format!("{at}.dns"), format!("{dns:?} is not host:port")));
                }
                positive(&format!("{at}.dns_refresh_ms"), self.dns_refresh_ms)?;
            }
            (None, false) => {
                for (j, endpoint) in self.endpoints.iter().enumerate() {
                    tower_gateway::balance::Endpoints::new([endpoint])
                        .map_err(|e| ConfigError::new(format!("{at}.endpoints[{j}]"), e))?;
                }
            }
        }
        positive(&format!("{at}.timeout_ms"), self.timeout_ms)?;
        positive(&format!("{at}.connect_timeout_ms"), self.connect_timeout_ms)?;
        let retry = &self.retry;
        if !(1..=10).contains(&retry.attempts) {
            return Err(ConfigError::new(format!("{at}.retry.attempts"), "must be between 1 and 10"));
        }
        positive(&format!("{at}.retry.backoff_ms"), retry.backoff_ms)?;
        if retry.max_backoff_ms < retry.backoff_ms {
            return Err(ConfigError::new(format!("{at}.retry.max_backoff_ms"), "must be at least backoff_ms"));
        }
        if !(0.0..=10.0).contains(&retry.jitter) {
            return Err(ConfigError::new(format!("{at}.retry.jitter"), "must be between 0 and 10"));
        }
        Ok(())
    }
}

/// The server settings, validated.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The longest a request may take.
    pub request_timeout: Duration,
    /// How long a client may take to send a request head.
    pub header_read_timeout: Duration,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub grace_period: Duration,
    /// The largest request head.
    pub max_header_bytes: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn with_key(mut config: Config) -> Config {
        config.jwt.secret = Some("x".repeat(32));
        config
    }

    #[test]
    fn the_default_is_the_seeds_table() {
        let config = Config::default();
        let table: Vec<(&str, Vec<&str>, bool)> = config
            .routes
            .iter()
            .map(|r| (r.prefix.as_str(), r.endpoints.iter().map(String::as_str).collect(), r.auth))
            .collect();
        assert_eq!(
            table,
            [
                ("/api/products", vec!["http://127.0.0.1:3001", "http://127.0.0.1:3003"], false),
                ("/api/users", vec!["http://127.0.0.1:3002", "http://127.0.0.1:3004"], false),
                ("/api/checkout", vec!["http://127.0.0.1:3005"], true),
            ]
        );
        assert_eq!(config.routes[0].retry.attempts, 3);
        assert!(with_key(config).validate().is_ok());
    }

    #[test]
    fn an_empty_file_is_the_default_and_env_overrides_it() {
        let parsed: Config = toml::from_str("").unwrap();
        assert_eq!(parsed, Config::default());
        let env = |name: &str| match name {
            "GATEWAY_LISTEN" => Some("0.0.0.0:9000".to_owned()),
            "REDIS_URL" => Some("redis://:pw@redis:6379".to_owned()),
            "GATEWAY_CORS_ORIGINS" => Some("https://a.example, https://b.example".to_owned()),
            _ => None,
        };
        let config = Config::load(None, env).unwrap();
        assert_eq!(config.listen, "0.0.0.0:9000");
        assert_eq!(config.cors_origins, ["https://a.example", "https://b.example"]);
        assert!(config.to_masked_toml().contains("redis://:********@redis:6379"));
    }

    #[test]
    fn errors_name_the_field() {
        let cases: Vec<(&str, &str)> = vec![
            ("listen = \"nowhere\"", "listen"),
            ("[[routes]]\nprefix = \"/api/x\"\nendpoints = [\"ftp://a:1\"]", "routes[0].endpoints[0]"),
            ("[[routes]]\nprefix = \"/api/x\"", "routes[0].endpoints"),
            ("[[routes]]\nprefix = \"api\"\nendpoints = [\"http://a:1\"]", "routes[0].prefix"),
            ("[[routes]]\nprefix = \"/\"\nendpoints = [\"http://a:1\"]", "routes[0].prefix"),
            ("[[routes]]\nprefix = \"/a\"\ndns = \"tasks.a\"", "routes[0].dns"),
            (
                "[[routes]]\nprefix = \"/a\"\nendpoints = [\"http://a:1\"]\nretry = { attempts = 0 }",
                "routes[0].retry.attempts",
            ),
            (
                "[[routes]]\nprefix = \"/a\"\nendpoints = [\"http://a:1\"]\n[[routes]]\nprefix = \"/a/\"\nendpoints = [\"http://b:1\"]",
                "routes[1].prefix",
            ),
            ("[[routes]]\nprefix = \"/a\"\nendpoints = [\"http://a:1\"]\nauth = true", "jwt.secret_file"),
        ];
        for (toml_text, field) in cases {
            let config: Config = toml::from_str(toml_text).unwrap_or_else(|e| panic!("{toml_text}: {e}"));
            let err = config.validate().unwrap_err();
            assert_eq!(err.field, field, "{toml_text}: {err}");
        }
        let unknown = toml::from_str::<Config>("listn = \"x\"").unwrap_err();
        assert!(unknown.message().contains("listn"), "{unknown}");
    }

    #[test]
    fn load_reports_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, "request_timeout_ms = \"soon\"").unwrap();
        let err = Config::load(Some(&path), no_env).unwrap_err();
        assert_eq!(err.field, path.display().to_string());
        assert!(err.message.contains("invalid type"), "{err}");
    }
}
