//! The gateway's configuration as data: a TOML file, environment overrides and
//! defaults (the shipped system). [`Plan::compile`](crate::Plan::compile) turns it
//! into the running gateway, checking every field once.
//!
//! ```toml
//! [upstreams.products]
//! endpoints = ["http://127.0.0.1:3001", "http://127.0.0.1:3003"]  # or dns = "tasks.product-service:3001"
//!
//! [[routes]]
//! prefix = "/api/products"        # or path = "/api/users" for that path alone
//! methods = ["GET", "HEAD"]       # any method when left out
//! upstream = "products"
//! access = "public"               # or "token", { roles = ["admin"] }, { scopes = ["orders:read"] }
//! limits = ["per-address"]        # named limits, counted in this order
//!
//! [limits.per-address]
//! rate = 100                      # requests...
//! per = "second"                  # ...per "second", "minute" or "hour"
//! burst = 200                     # at most this many at once (default: rate)
//! key = "client_ip"               # or "subject", "header:x-api-key", "json:email", "global", or a list
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use demo_common::shipped_jwt;
pub use demo_common::telemetry::TelemetryConfig;
use serde::{Deserialize, Serialize};
use tower_gateway_auth::KeyConfig;

/// A configuration that cannot work, naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The field, e.g. `routes[1].upstream`.
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
/// shipped system on 127.0.0.1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where to listen (`GATEWAY_LISTEN`).
    pub listen: String,
    /// Where to serve `/readyz` and `/metrics` instead of `listen` (which keeps
    /// `/healthz`): an address the deployment does not publish. Without it, all
    /// three are served on `listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<String>,
    /// A file holding the admin token (at least 16 characters): with it, the
    /// admin listener serves `GET /config` and `POST /config/reload` to
    /// requests bearing it (`Authorization: Bearer TOKEN`). Needs `admin_listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token_file: Option<PathBuf>,
    /// HTTPS, beside the plain listener: see [`TlsConfig`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// The longest a request may take, end to end, before a `504`.
    pub request_timeout_ms: u64,
    /// The largest request body accepted (`413` beyond).
    pub max_body_bytes: usize,
    /// Requests forwarded at once; more are answered `503` at once.
    pub max_concurrent_requests: usize,
    /// Requests one route may have in flight at once (default: half of
    /// `max_concurrent_requests`), so that no route can starve the others.
    pub max_route_concurrent_requests: Option<usize>,
    /// Requests all public routes together may have in flight at once
    /// (default: three quarters of `max_concurrent_requests`), so that
    /// anonymous clients can never take the capacity of clients with a token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_anonymous_concurrent_requests: Option<usize>,
    /// How long a request body may go without a byte arriving, and a response
    /// body without one being sent on (the slow-body bound).
    pub body_idle_timeout_ms: u64,
    /// How long a client may take to send a request head, counted from the
    /// connection's accept for the first one (and between requests on HTTP/1.1).
    pub header_read_timeout_ms: u64,
    /// Open client connections at most; more are answered `503` and closed, and
    /// idle connections are closed to make room. The default, 5,000, keeps a full
    /// flood of idle connections in the dearest protocol (HTTP/2 over TLS, ~33
    /// KiB each) and a full handshake budget inside a 256 MiB task.
    pub max_connections: usize,
    /// Open connections from one client address at most (an IPv6 client by its
    /// /64), TLS handshakes included; more are answered `503` and closed. Peers
    /// in `trusted_proxies` are not capped: many clients share their address.
    pub max_connections_per_client: usize,
    /// Threads serving client connections, each with a single-threaded runtime
    /// of its own; a connection stays on one for its life (default: one per CPU
    /// core the process may use).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    /// How long a connection may stay open with no request in flight (HTTP/2; an
    /// idle HTTP/1.1 connection is closed after `header_read_timeout_ms`).
    pub idle_timeout_ms: u64,
    /// The largest request head accepted.
    pub max_header_bytes: usize,
    /// WebSocket connections open at once through routes with `websocket =
    /// true`; more upgrades are answered `503`.
    pub websocket_max_connections: usize,
    /// How long a WebSocket may carry no byte either way before it is closed.
    pub websocket_idle_timeout_ms: u64,
    /// WebSocket connections one client may have open (an IPv6 client by its
    /// /64); more upgrades are answered `503`.
    pub websocket_max_connections_per_client: usize,
    /// The longest a WebSocket stays open, busy or not (one opened with a
    /// token is closed when the token expires, if that is sooner).
    pub websocket_max_lifetime_ms: u64,
    /// How long the WebSockets of a route a reload removed stay open before
    /// they are closed (those of routes that stay are never touched).
    pub websocket_removed_route_grace_ms: u64,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub grace_period_ms: u64,
    /// After SIGTERM, how long the gateway keeps accepting and serving with
    /// `/readyz` failing, so that a load balancer stops sending first (default 0).
    pub drain_delay_ms: u64,
    /// Origins allowed by CORS; `["*"]` for any, `[]` (the default) for no
    /// CORS headers: no browser page elsewhere may call the API until an
    /// operator names it (`GATEWAY_CORS_ORIGINS`, comma-separated).
    pub cors_origins: Vec<String>,
    /// The token store for revocations and the store of rate limits
    /// (`REDIS_URL`); in memory without it.
    pub redis_url: Option<String>,
    /// Proxies in front of the gateway whose forwarding header is believed (CIDR
    /// blocks); none by default, so the peer is the client.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<String>,
    /// The header those proxies append the client to: `"x-forwarded-for"` or `"forwarded"`.
    pub forwarded_header: ForwardedHeaderName,
    /// Rate limits, by name; routes name the ones they count against. A limit
    /// named by several routes is one quota across all of them.
    pub limits: BTreeMap<String, LimitConfig>,
    /// How tokens are verified: the key configuration user-service reads too
    /// (`JWT_*`). The gateway needs only the public key.
    pub jwt: KeyConfig,
    /// How revocations are checked.
    pub revocation: RevocationConfig,
    /// The log's format and where spans are exported (OTLP/HTTP), each value
    /// falling back to its `OTEL_*` variable: see
    /// [`TelemetryConfig`].
    pub telemetry: TelemetryConfig,
    /// The upstreams, by name.
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// The routes: the most specific match wins.
    pub routes: Vec<RouteConfig>,
}

/// How the token store is consulted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RevocationConfig {
    /// How long a token found unrevoked is trusted without asking the store.
    pub cache_bound_ms: u64,
    /// Let locally valid tokens through when the store is down.
    pub fail_open: bool,
}

impl Default for RevocationConfig {
    fn default() -> Self {
        Self { cache_bound_ms: 1_000, fail_open: false }
    }
}

impl Config {
    /// Reads `path` (TOML), or the defaults without one, then applies the
    /// environment overrides.
    pub fn load(path: Option<&Path>, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        match path {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|e| ConfigError::new(path.display().to_string(), e))?;
                Self::from_toml(&text, &path.display().to_string(), env)
            }
            None => Config::default().with_env(env),
        }
    }

    /// Parses `text` (TOML, from `origin`, which errors name), then applies the
    /// environment overrides.
    pub fn from_toml(text: &str, origin: &str, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let at = e.span().map_or(0, |span| span.start).min(text.len());
            let line = text[..at].matches('\n').count() + 1;
            let field = key_path(text, at).unwrap_or_else(|| origin.to_owned());
            ConfigError::new(field, format!("{} ({origin}, line {line})", e.message()))
        })?;
        config.with_env(env)
    }

    fn with_env(mut self, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let config = &mut self;
        let var = |name: &str| env(name).filter(|v| !v.is_empty());
        if let Some(listen) = var("GATEWAY_LISTEN") {
            config.listen = listen;
        }
        if let Some(origins) = var("GATEWAY_CORS_ORIGINS") {
            config.cors_origins = origins.split(',').map(|o| o.trim().to_owned()).filter(|o| !o.is_empty()).collect();
        }
        let from_env = demo_common::redis_url_from_env(&env).map_err(|e| ConfigError::new(e.variable, e.message))?;
        if let Some(url) = from_env {
            config.redis_url = Some(url);
        }
        config.jwt.apply_env(&env).map_err(|e| ConfigError::new(format!("jwt.{}", e.field), e.message))?;
        config.telemetry = std::mem::take(&mut config.telemetry).with_env(&env).map_err(|e| {
            let field = if e.variable.starts_with("OTEL_") {
                e.variable.to_owned()
            } else {
                format!("telemetry.{}", e.variable)
            };
            ConfigError::new(field, e.message)
        })?;
        Ok(self)
    }

    /// The configuration as TOML, with the policy of every route and the Redis
    /// password masked.
    pub fn to_masked_toml(&self) -> String {
        let mut masked = self.clone();
        if let Some(url) = &masked.redis_url {
            masked.redis_url = Some(demo_common::mask_url_password(url));
        }
        toml::to_string_pretty(&masked).unwrap_or_else(|e| format!("# cannot print the configuration: {e}\n"))
    }
}

/// The dotted path of the key written at byte `at` of the TOML `text` (as
/// errors name fields: `limits.login.per`, `routes[2].methods`): the table
/// header above it, and the key on its line.
fn key_path(text: &str, at: usize) -> Option<String> {
    let unquote = |name: &str| -> String {
        name.split('.').map(|part| part.trim().trim_matches('"')).collect::<Vec<_>>().join(".")
    };
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let mut table = String::new();
    let mut arrays: BTreeMap<String, usize> = BTreeMap::new();
    for line in text[..line_start].lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("[[").and_then(|rest| rest.split("]]").next()) {
            let name = unquote(name);
            let index = arrays.entry(name.clone()).and_modify(|n| *n += 1).or_insert(0);
            table = format!("{name}[{index}]");
        } else if let Some(name) = line.strip_prefix('[').and_then(|rest| rest.split(']').next()) {
            table = unquote(name);
        }
    }
    let line = text[line_start..].lines().next().unwrap_or("").trim();
    let key = match line.split_once('=') {
        Some((key, _)) if !line.starts_with('[') => unquote(key),
        _ => return (!table.is_empty()).then_some(table),
    };
    Some(if table.is_empty() { key } else { format!("{table}.{key}") })
}

/// The header trusted proxies append the client to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ForwardedHeaderName {
    /// `"x-forwarded-for"`.
    #[default]
    #[serde(rename = "x-forwarded-for", alias = "X-Forwarded-For")]
    XForwardedFor,
    /// `"forwarded"` (RFC 7239).
    #[serde(rename = "forwarded", alias = "Forwarded")]
    Forwarded,
}

/// The environment variables that override the file, besides the `JWT_*` ones of
/// [`KeyConfig::apply_env`].
pub const ENV_OVERRIDES: &[&str] = &["GATEWAY_LISTEN", "GATEWAY_CORS_ORIGINS", "REDIS_URL", "REDIS_URL_FILE"];

mod route;
mod shipped;
#[cfg(test)]
mod tests;
mod tls;
mod traffic;
mod upstream;

pub use route::{Access, LimitConfig, LimitKey, LimitStore, Per, RouteConfig, RouteMethod, StoreFailure};
pub use shipped::{shipped_limits, shipped_routes};
pub use tls::{SniCertificate, TlsConfig};
pub use traffic::{
    BackendRefConfig, HeaderMatchConfig, HeaderModifierConfig, HeaderValueConfig, MatchType, MirrorConfig,
    PathModifier, PersistenceType, QueryMatchConfig, RedirectConfig, RedirectScheme, SessionPersistenceConfig,
    TimeoutsConfig, UrlRewriteConfig,
};
pub use upstream::{GrpcStatus, RetryConfig, UpstreamConfig};
