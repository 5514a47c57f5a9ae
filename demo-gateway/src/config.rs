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
//! access = "public"               # or "token", or { roles = ["admin"] }
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
use serde::{Deserialize, Deserializer, Serialize, Serializer};
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
    pub forwarded_header: String,
    /// Rate limits, by name; routes name the ones they count against. A limit
    /// named by several routes is one quota across all of them.
    pub limits: BTreeMap<String, LimitConfig>,
    /// How tokens are verified: the key configuration user-service reads too
    /// (`JWT_*`). The gateway needs only the public key.
    pub jwt: KeyConfig,
    /// How revocations are checked.
    pub revocation: RevocationConfig,
    /// The upstreams, by name.
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// The routes: the most specific match wins.
    pub routes: Vec<RouteConfig>,
}

/// An HTTPS listener: TLS 1.2 and 1.3, HTTP/2 and HTTP/1.1 by ALPN, the
/// certificate reloaded when its files change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Where to listen for TLS (`0.0.0.0:8443`).
    pub listen: String,
    /// The certificate chain, PEM, leaf first.
    pub cert_file: std::path::PathBuf,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_file: std::path::PathBuf,
    /// How long a client may take to finish the handshake (default 3 s).
    #[serde(default = "default_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
    /// Handshakes in progress at most (default 1024), a budget apart from
    /// `max_connections`: a connection takes its place there once its handshake
    /// is done, so silent handshakes cannot lock established traffic out. When
    /// it is full, handshakes going on for 250 ms make room.
    #[serde(default = "default_max_handshakes")]
    pub max_handshakes: usize,
    /// How often the files are looked at for a new certificate (default 2 s).
    #[serde(default = "default_reload_interval_ms")]
    pub reload_interval_ms: u64,
    /// More certificates, chosen by the name the client asks for (SNI); the
    /// one above serves every other name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sni: Vec<SniCertificate>,
    /// `Strict-Transport-Security: max-age=N` on every HTTPS response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hsts_max_age_secs: Option<u64>,
    /// A plain-HTTP listener that answers every request with a `308` to the
    /// same URL over HTTPS (`0.0.0.0:80`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_listen: Option<String>,
}

/// A certificate served for some server names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SniCertificate {
    /// The names (`api.example.com`), matched exactly, case-insensitively.
    pub names: Vec<String>,
    /// Its chain, PEM.
    pub cert_file: std::path::PathBuf,
    /// Its key, PEM.
    pub key_file: std::path::PathBuf,
}

impl TlsConfig {
    /// HTTPS on `listen` with the certificate chain and key in these files,
    /// every other setting at its default.
    pub fn new(
        listen: impl Into<String>,
        cert_file: impl Into<std::path::PathBuf>,
        key_file: impl Into<std::path::PathBuf>,
    ) -> Self {
        Self {
            listen: listen.into(),
            cert_file: cert_file.into(),
            key_file: key_file.into(),
            handshake_timeout_ms: default_handshake_timeout_ms(),
            max_handshakes: default_max_handshakes(),
            reload_interval_ms: default_reload_interval_ms(),
            sni: Vec::new(),
            hsts_max_age_secs: None,
            redirect_listen: None,
        }
    }
}

fn default_handshake_timeout_ms() -> u64 {
    3_000
}

fn default_max_handshakes() -> usize {
    1024
}

fn default_reload_interval_ms() -> u64 {
    2_000
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

/// A set of endpoints that routes forward to, with its balancing and retries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// Static endpoints, `http://host:port`.
    pub endpoints: Vec<String>,
    /// Or a DNS name with a port (`tasks.product-service:3001`), re-resolved to all
    /// its addresses every `dns_refresh_ms`.
    pub dns: Option<String>,
    /// How often `dns` is resolved again.
    pub dns_refresh_ms: u64,
    /// How long one attempt waits for an upstream's response head (then `504`,
    /// counted against the endpoint, and retried if the request is idempotent).
    pub timeout_ms: u64,
    /// How long to wait for a connection to an upstream.
    pub connect_timeout_ms: u64,
    /// For `https://` endpoints: the CA certificates (PEM) to trust instead of
    /// the Mozilla roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<std::path::PathBuf>,
    /// For `https://` endpoints: a client certificate chain (PEM) to present
    /// (mTLS), with `client_key_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert_file: Option<std::path::PathBuf>,
    /// The private key (PEM) of `client_cert_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key_file: Option<std::path::PathBuf>,
    /// Consecutive refused connections before an endpoint is skipped.
    pub eject_after: u32,
    /// Consecutive timeouts, resets or 502/503/504 before an endpoint is skipped.
    pub eject_after_gateway_failures: u32,
    /// The most of the endpoints, in percent, those failures may skip at once.
    pub max_ejected_percent: u8,
    /// How long a refusing endpoint is skipped.
    pub cool_down_ms: u64,
    /// Retries.
    pub retry: RetryConfig,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            endpoints: Vec::new(),
            dns: None,
            dns_refresh_ms: 5_000,
            timeout_ms: 5_000,
            connect_timeout_ms: 1_000,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            eject_after: 1,
            eject_after_gateway_failures: 5,
            max_ejected_percent: 50,
            cool_down_ms: 10_000,
            retry: RetryConfig::default(),
        }
    }
}

/// Retry settings of an upstream.
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
    /// Request bodies up to this size are buffered so they can be replayed.
    pub max_replay_body_bytes: usize,
    /// The upstream honours `Idempotency-Key`, so a request carrying one may be
    /// retried whatever its method (checkout's does; default no).
    pub idempotency_key: bool,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            attempts: 3,
            backoff_ms: 100,
            max_backoff_ms: 2_000,
            jitter: 0.5,
            max_replay_body_bytes: 64 * 1024,
            idempotency_key: false,
        }
    }
}

/// One rate limit: `rate` requests `per` second, minute or hour for each key,
/// at most `burst` at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// Requests per period.
    pub rate: u32,
    /// `"second"`, `"minute"` or `"hour"`.
    pub per: String,
    /// The most at once (default: `rate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// What requests are counted by: `"client_ip"`, `"subject"` (the token's
    /// `sub`), `"claim:email"`, `"header:<name>"`, `"json:<field>"` (a field of a
    /// JSON body), `"global"` (the whole limit one bucket), or a list of these
    /// for their combination.
    pub key: LimitKey,
    /// `"redis"` (the default when `redis_url` is set: one quota across every
    /// gateway replica) or `"memory"` (this process).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    /// When Redis fails: `"open"` (decide locally from what Redis last said; the
    /// default) or `"closed"` (`503`).
    #[serde(default = "open", skip_serializing_if = "is_open")]
    pub on_store_error: String,
}

fn open() -> String {
    "open".into()
}

fn is_open(value: &String) -> bool {
    value == "open"
}

/// The key of a limit: one part or several.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LimitKey {
    /// One part, e.g. `"client_ip"`.
    One(String),
    /// Several, counted together, e.g. `["client_ip", "json:email"]`.
    Many(Vec<String>),
}

impl LimitKey {
    /// The parts.
    pub fn parts(&self) -> &[String] {
        match self {
            Self::One(part) => std::slice::from_ref(part),
            Self::Many(parts) => parts,
        }
    }
}

/// Who may use a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Anyone: `access = "public"`.
    Public,
    /// Any valid token: `access = "token"`.
    Token,
    /// A valid token with one of these roles: `access = { roles = ["admin"] }`.
    Roles(Vec<String>),
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Public => f.write_str("public"),
            Self::Token => f.write_str("token"),
            Self::Roles(roles) => write!(f, "role {}", roles.join(" or ")),
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum AccessRepr {
    Named(String),
    Roles { roles: Vec<String> },
}

impl Serialize for Access {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Public => AccessRepr::Named("public".into()),
            Self::Token => AccessRepr::Named("token".into()),
            Self::Roles(roles) => AccessRepr::Roles { roles: roles.clone() },
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Access {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let wrong = || serde::de::Error::custom(r#"access is "public", "token" or { roles = ["..."] }"#);
        match AccessRepr::deserialize(d).map_err(|_| wrong())? {
            AccessRepr::Named(name) if name == "public" => Ok(Self::Public),
            AccessRepr::Named(name) if name == "token" => Ok(Self::Token),
            AccessRepr::Named(_) => Err(wrong()),
            AccessRepr::Roles { roles } => Ok(Self::Roles(roles)),
        }
    }
}

/// One route: what it matches, who may use it, where it goes.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteConfig {
    /// A name for logs and metrics (default: the path or prefix and the methods).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Matches this path and everything under it, on segment boundaries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Or matches this path alone (a trailing `/` allowed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The methods matched (upper-case); any method when empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// What is stripped before forwarding (default: the prefix or path itself).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strip_prefix: Option<String>,
    /// The upstream's name, in `[upstreams]`.
    pub upstream: String,
    /// Who may use the route. Required: nothing is open by omission.
    pub access: Option<Access>,
    /// The names of the limits (in `[limits]`) requests count against, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<String>,
    /// Whether a `GET` asking to `Upgrade: websocket` becomes a WebSocket to the
    /// upstream, once the route's access policy and limits have passed it
    /// (default `false`: the upgrade headers are dropped and it is a plain `GET`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub websocket: bool,
}

fn local(ports: &[u16]) -> UpstreamConfig {
    UpstreamConfig {
        endpoints: ports.iter().map(|p| format!("http://127.0.0.1:{p}")).collect(),
        ..UpstreamConfig::default()
    }
}

/// The shipped policy, over upstreams named `products`, `users` and `checkout`.
pub fn shipped_routes() -> Vec<RouteConfig> {
    let admin = || Some(Access::Roles(vec!["admin".into()]));
    let route = |prefix: &str, methods: &[&str], upstream: &str, access| RouteConfig {
        prefix: Some(prefix.into()),
        methods: methods.iter().map(|m| (*m).to_owned()).collect(),
        upstream: upstream.into(),
        access,
        ..RouteConfig::default()
    };
    let users_path =
        |path: &str, access| RouteConfig { prefix: None, path: Some(path.into()), ..route("", &[], "users", access) };
    // Forwarded as /signup and /login, under user-service's own root.
    let users_post = |path: &str| RouteConfig {
        methods: vec!["POST".into()],
        strip_prefix: Some("/api/users".into()),
        ..users_path(path, Some(Access::Public))
    };
    let limited = |route: RouteConfig, limits: &[&str]| {
        let mut names = vec!["per-address".to_owned()];
        names.extend(limits.iter().map(|l| (*l).to_owned()));
        RouteConfig { limits: names, ..route }
    };
    vec![
        // The price feed (`GET /api/products/feed`) is a WebSocket.
        RouteConfig {
            websocket: true,
            ..limited(route("/api/products", &["GET", "HEAD"], "products", Some(Access::Public)), &[])
        },
        limited(route("/api/products", &[], "products", admin()), &[]),
        limited(users_post("/api/users/signup"), &["signup-address"]),
        limited(users_post("/api/users/login"), &["login-address", "login-account"]),
        limited(users_path("/api/users", admin()), &[]),
        // A change of a user's record may hash two passwords: counted per user.
        limited(route("/api/users", &["PUT"], "users", Some(Access::Token)), &["account-change"]),
        limited(route("/api/users", &[], "users", Some(Access::Token)), &[]),
        limited(route("/api/checkout", &[], "checkout", Some(Access::Token)), &["checkout-user"]),
    ]
}

/// The shipped limits, named by [`shipped_routes`]:
///
/// | limit | key | rate | burst |
/// |---|---|---|---|
/// | `per-address` | client address, every route | 100 / s | 200 |
/// | `login-address` | client address, login | 30 / min | 10 |
/// | `login-account` | client address and the `email` of the body, login | 10 / min | 5 |
/// | `signup-address` | client address, signup | 20 / hour | 10 |
/// | `account-change` | the token's subject, `PUT /api/users/{id}` | 10 / min | 5 |
/// | `checkout-user` | the token's subject, checkout | 120 / min | 30 |
///
/// An account's login attempts are counted per address: nobody elsewhere can
/// spend its owner's quota (a quota per account alone let anyone lock a chosen
/// user out with a request every 6 s), and sign-ups, which name an email too,
/// count against a limit of their own.
pub fn shipped_limits() -> BTreeMap<String, LimitConfig> {
    let limit = |rate, per: &str, burst, key: &[&str]| LimitConfig {
        rate,
        per: per.into(),
        burst: Some(burst),
        key: match key {
            [one] => LimitKey::One((*one).into()),
            parts => LimitKey::Many(parts.iter().map(|p| (*p).into()).collect()),
        },
        store: None,
        on_store_error: open(),
    };
    BTreeMap::from([
        ("per-address".into(), limit(100, "second", 200, &["client_ip"])),
        ("login-address".into(), limit(30, "minute", 10, &["client_ip"])),
        ("login-account".into(), limit(10, "minute", 5, &["client_ip", "json:email"])),
        ("signup-address".into(), limit(20, "hour", 10, &["client_ip"])),
        ("account-change".into(), limit(10, "minute", 5, &["subject"])),
        ("checkout-user".into(), limit(120, "minute", 30, &["subject"])),
    ])
}

impl Default for Config {
    /// The shipped system on 127.0.0.1: products on 3001 and 3003, users on 3002 and
    /// 3004, checkout on 3005, with the [shipped policy](shipped_routes).
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            admin_listen: None,
            admin_token_file: None,
            tls: None,
            request_timeout_ms: 30_000,
            max_body_bytes: 1024 * 1024,
            max_concurrent_requests: 1024,
            max_route_concurrent_requests: None,
            max_anonymous_concurrent_requests: None,
            body_idle_timeout_ms: 10_000,
            header_read_timeout_ms: 5_000,
            max_connections: 5_000,
            max_connections_per_client: 256,
            workers: None,
            idle_timeout_ms: 60_000,
            max_header_bytes: 16 * 1024,
            websocket_max_connections: 1024,
            websocket_idle_timeout_ms: 60_000,
            websocket_max_connections_per_client: 16,
            websocket_max_lifetime_ms: 3_600_000,
            websocket_removed_route_grace_ms: 60_000,
            grace_period_ms: 10_000,
            drain_delay_ms: 0,
            cors_origins: Vec::new(),
            redis_url: None,
            trusted_proxies: Vec::new(),
            forwarded_header: "x-forwarded-for".into(),
            limits: shipped_limits(),
            jwt: shipped_jwt(),
            revocation: RevocationConfig::default(),
            upstreams: BTreeMap::from([
                ("products".into(), local(&[3001, 3003])),
                ("users".into(), local(&[3002, 3004])),
                (
                    "checkout".into(),
                    UpstreamConfig {
                        retry: RetryConfig { idempotency_key: true, ..RetryConfig::default() },
                        ..local(&[3005])
                    },
                ),
            ]),
            routes: shipped_routes(),
        }
    }
}

/// The environment variables that override the file, besides the `JWT_*` ones of
/// [`KeyConfig::apply_env`].
pub const ENV_OVERRIDES: &[&str] = &["GATEWAY_LISTEN", "GATEWAY_CORS_ORIGINS", "REDIS_URL", "REDIS_URL_FILE"];

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
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::new(origin, e.message()))?;
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
        Ok(self)
    }

    /// The configuration as TOML, with the policy of every route and the Redis
    /// password masked.
    pub fn to_masked_toml(&self) -> String {
        let mut masked = self.clone();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_the_default_and_env_overrides_it() {
        let parsed: Config = toml::from_str("").unwrap();
        assert_eq!(parsed, Config::default());
        let env = |name: &str| match name {
            "GATEWAY_LISTEN" => Some("0.0.0.0:9000".to_owned()),
            "REDIS_URL" => Some("redis://:pw@redis:6379".to_owned()),
            "GATEWAY_CORS_ORIGINS" => Some("https://a.example, https://b.example".to_owned()),
            "JWT_PUBLIC_KEY_FILE" => Some("/run/secrets/jwt_public.pem".to_owned()),
            _ => None,
        };
        let config = Config::load(None, env).unwrap();
        assert_eq!(config.listen, "0.0.0.0:9000");
        assert_eq!(config.cors_origins, ["https://a.example", "https://b.example"]);
        assert_eq!(config.jwt.public_key_file.as_deref(), Some(Path::new("/run/secrets/jwt_public.pem")));
        assert!(config.to_masked_toml().contains("redis://:********@redis:6379"));
    }

    #[test]
    fn the_printed_configuration_reads_back_the_same() {
        let config = Config::default();
        let text = config.to_masked_toml();
        assert!(text.contains("access = \"public\""), "{text}");
        assert!(text.contains("roles = [\"admin\"]"), "{text}");
        assert_eq!(toml::from_str::<Config>(&text).unwrap(), config);
    }

    #[test]
    fn the_swarm_configuration_ships_the_same_policy() {
        let swarm: Config = toml::from_str(include_str!("../../deploy/gateway.toml")).unwrap();
        assert_eq!(swarm.routes, shipped_routes());
        assert_eq!(swarm.limits, shipped_limits());
        assert_eq!((&swarm.jwt.issuer, &swarm.jwt.audience), (&shipped_jwt().issuer, &shipped_jwt().audience));
        assert_eq!(swarm.upstreams.keys().collect::<Vec<_>>(), Config::default().upstreams.keys().collect::<Vec<_>>());
        assert!(swarm.jwt.private_key_file.is_none() && swarm.jwt.secret_file.is_none(), "public key only");
    }

    #[test]
    fn access_is_one_of_three_shapes() {
        let parse = |access: &str| toml::from_str::<RouteConfig>(&format!("upstream = \"u\"\naccess = {access}"));
        assert_eq!(parse("\"public\"").unwrap().access, Some(Access::Public));
        assert_eq!(parse("\"token\"").unwrap().access, Some(Access::Token));
        assert_eq!(parse("{ roles = [\"admin\"] }").unwrap().access, Some(Access::Roles(vec!["admin".into()])));
        for wrong in ["\"open\"", "true", "{ role = \"admin\" }"] {
            let err = parse(wrong).unwrap_err();
            assert!(err.message().contains("\"public\", \"token\""), "{wrong}: {err}");
        }
    }

    #[test]
    fn load_reports_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, "request_timeout_ms = \"soon\"").unwrap();
        let err = Config::load(Some(&path), |_| None).unwrap_err();
        assert_eq!(err.field, path.display().to_string());
        assert!(err.message.contains("invalid type"), "{err}");
    }
}
