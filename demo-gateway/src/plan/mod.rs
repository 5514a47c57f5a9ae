//! A [`Config`] compiled into everything the gateway serves: each upstream's
//! balancer, retries and connection pool; each route's match, access policy and
//! stack; the authenticator; the server's settings. Every field is checked here
//! and nowhere else, and every error names its field.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tower_gateway::balance::Endpoints;
use tower_gateway::client_addr::{ClientAddrLayer, TrustedProxies};
use tower_gateway::rate_limit::{KeyExtractor, Limiter};
use tower_gateway::upgrade::Tunnels;
use tower_gateway_auth::{Authenticator, TokenStore};
use tower_http::cors::CorsLayer;

use crate::alive::{Alive, Counted};
use crate::config::{Access, Config, ConfigError};
use crate::metrics::Metrics;
use crate::routes::{Entry, Route, RouteBody, Table};
use crate::shared::{Drain, Shared};
use auth::authenticator;
use limits::limits_of;
use route::{Parts, check_fallthrough, route_of};
use server::settings;
use upstream::upstream_of;

/// The HTTPS listener's settings, its certificate loaded.
#[derive(Debug, Clone)]
pub(crate) struct TlsSettings {
    pub(crate) listen: SocketAddr,
    pub(crate) certificate: Arc<crate::tls::Certificates>,
    pub(crate) handshake_timeout: Duration,
    pub(crate) max_handshakes: usize,
    pub(crate) reload_every: Duration,
    pub(crate) hsts: Option<http::HeaderValue>,
    pub(crate) redirect_listen: Option<SocketAddr>,
    /// Whether the redirect listener serves gRPC calls instead of redirecting them.
    pub(crate) redirect_serves_grpc: bool,
}

/// The server's settings, checked.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) listen: SocketAddr,
    pub(crate) admin_listen: Option<SocketAddr>,
    /// What `Authorization: Bearer` must carry for the config endpoints.
    pub(crate) admin_token: Option<Arc<str>>,
    pub(crate) tls: Option<TlsSettings>,
    pub(crate) request_timeout: Duration,
    pub(crate) header_read_timeout: Duration,
    pub(crate) max_connections: usize,
    pub(crate) max_connections_per_client: usize,
    pub(crate) trusted_proxies: TrustedProxies,
    pub(crate) workers: usize,
    pub(crate) idle_timeout: Duration,
    pub(crate) grace_period: Duration,
    pub(crate) drain_delay: Duration,
    pub(crate) max_header_bytes: usize,
    pub(crate) max_body_bytes: usize,
    pub(crate) max_concurrent_requests: usize,
    pub(crate) max_route_concurrent_requests: usize,
    pub(crate) max_anonymous_concurrent_requests: usize,
    pub(crate) body_idle_timeout: Duration,
    pub(crate) tunnels: Tunnels,
    pub(crate) cors: Option<CorsLayer>,
    pub(crate) client_addr: ClientAddrLayer,
}

/// A limit's key as the configuration composed it.
pub(super) type RouteKey = Arc<dyn KeyExtractor<RouteBody> + Send + Sync>;

/// A named limit, built once and shared by every route that names it.
pub(super) struct BuiltLimit {
    pub(super) limiter: Limiter,
    pub(super) key: RouteKey,
    /// The key reads the verified token, so the limit goes inside the auth layer.
    pub(super) needs_identity: bool,
    /// The JSON body fields the key reads.
    pub(super) json_fields: Vec<String>,
}

/// The gateway, built from its configuration: what [`serve`](crate::serve) runs.
///
/// A plan is one generation of the configuration: its route table (routes,
/// upstreams, limits, the authenticator) is swapped whole on a reload, over
/// the shared state every generation uses, under server settings that
/// only a restart changes.
pub struct Plan {
    pub(crate) config: Config,
    pub(crate) settings: Settings,
    pub(crate) table: Arc<Table>,
    pub(crate) shared: Arc<Shared>,
    /// Each limit as built, for the next generation to keep if unchanged.
    limits: BTreeMap<String, Arc<BuiltLimit>>,
    /// What the authenticator was built from, key files' bytes included.
    auth_source: Vec<u8>,
    /// The token store the caller gave, kept for the next generation.
    store: Option<Arc<dyn TokenStore>>,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan").field("table", &self.table).field("settings", &self.settings).finish_non_exhaustive()
    }
}

/// The settings only a restart changes: a reload that changes one is refused,
/// naming it.
fn restart_only(config: &Config) -> [(&'static str, String); 19] {
    let c = config;
    let d = |v: &dyn std::fmt::Debug| format!("{v:?}");
    [
        ("listen", d(&c.listen)),
        ("admin_listen", d(&c.admin_listen)),
        ("tls", d(&c.tls)),
        ("workers", d(&c.workers)),
        ("max_connections", d(&c.max_connections)),
        ("max_connections_per_client", d(&c.max_connections_per_client)),
        ("header_read_timeout_ms", d(&c.header_read_timeout_ms)),
        ("idle_timeout_ms", d(&c.idle_timeout_ms)),
        ("max_header_bytes", d(&c.max_header_bytes)),
        ("max_concurrent_requests", d(&c.max_concurrent_requests)),
        ("max_route_concurrent_requests", d(&c.max_route_concurrent_requests)),
        ("max_anonymous_concurrent_requests", d(&c.max_anonymous_concurrent_requests)),
        ("websocket_max_connections", d(&c.websocket_max_connections)),
        ("websocket_idle_timeout_ms", d(&c.websocket_idle_timeout_ms)),
        ("websocket_max_connections_per_client", d(&c.websocket_max_connections_per_client)),
        ("websocket_max_lifetime_ms", d(&c.websocket_max_lifetime_ms)),
        ("grace_period_ms", d(&c.grace_period_ms)),
        ("drain_delay_ms", d(&c.drain_delay_ms)),
        // The process's log and its span exporter are made once, at start.
        ("telemetry", d(&c.telemetry)),
    ]
}

impl Plan {
    /// Checks and builds `config`. Routes that need a token check revocations in
    /// Redis (`redis_url`), or in this process. Call it inside a Tokio runtime.
    pub fn compile(config: Config) -> Result<Self, ConfigError> {
        Self::compile_with_store(config, None)
    }

    /// Like [`compile`](Self::compile), with revocations in `store` (shared with
    /// the code that revokes, as the one-process demo does) instead of `redis_url`.
    pub fn compile_with_store(config: Config, store: Option<Arc<dyn TokenStore>>) -> Result<Self, ConfigError> {
        Self::build(config, store, None).map_err(|mut errors| errors.swap_remove(0))
    }

    /// Like [`compile`](Self::compile), with every field at fault reported, not
    /// the first alone (what `demo-gateway check` prints).
    pub fn check(config: Config) -> Result<Self, Vec<ConfigError>> {
        Self::build(config, None, None)
    }

    /// The next generation: `config` compiled over this plan's shared state,
    /// keeping each upstream, limit and the authenticator whose configuration
    /// did not change (pools, balancing, ejections, counters, the token cache).
    /// Refused, with every field named, if it changes a setting only a
    /// restart can, or if it does not compile.
    pub(crate) fn next(&self, config: Config) -> Result<Self, Vec<ConfigError>> {
        let restart: Vec<ConfigError> = restart_only(&self.config)
            .into_iter()
            .zip(restart_only(&config))
            .filter(|((_, old), (_, new))| old != new)
            .map(|((field, old), (_, new))| {
                ConfigError::new(field, format!("changed from {old} to {new}: this setting needs a restart"))
            })
            .collect();
        if !restart.is_empty() {
            return Err(restart);
        }
        Self::build(config, self.store.clone(), Some(self))
    }

    /// Compiles `config` over `previous`, if any, and reports every field at
    /// fault: each upstream, limit and route is checked even after one is
    /// refused (a route naming a refused upstream, limit or authenticator is
    /// left to that one's error).
    fn build(
        config: Config,
        store: Option<Arc<dyn TokenStore>>,
        previous: Option<&Plan>,
    ) -> Result<Self, Vec<ConfigError>> {
        // Called for a next generation only once `next` found no restart-only
        // setting changed, `tls` among them.
        let loaded_tls = previous.and_then(|p| p.settings.tls.as_ref());
        let settings = settings(&config, loaded_tls).map_err(|e| vec![e])?;
        let shared = match previous {
            Some(previous) => previous.shared.clone(),
            None => Arc::new(Shared {
                metrics: Metrics::new(),
                tunnels: settings.tunnels.clone(),
                capacity: Arc::new(Semaphore::new(settings.max_concurrent_requests)),
                anonymous: Arc::new(Semaphore::new(settings.max_anonymous_concurrent_requests)),
                drain: Drain::default(),
                alive: Alive::default(),
            }),
        };
        let mut errors = Vec::new();
        let mut upstreams = BTreeMap::new();
        for (name, upstream) in &config.upstreams {
            let kept = previous
                .filter(|p| p.config.upstreams.get(name) == Some(upstream))
                .and_then(|p| p.table.upstreams.iter().find(|u| &*u.name == name));
            match kept {
                Some(kept) => drop(upstreams.insert(name.as_str(), kept.clone())),
                None => match upstream_of(name, upstream, &shared) {
                    Ok(built) => drop(upstreams.insert(name.as_str(), Arc::new(built))),
                    Err(err) => errors.push(err),
                },
            }
        }
        let needs_token = config.routes.iter().any(|r| !matches!(r.access, Some(Access::Public) | None));
        let auth_source = auth::source(&config);
        let auth = match previous {
            _ if !needs_token => None,
            Some(p) if p.auth_source == auth_source && p.table.auth.is_some() => p.table.auth.clone(),
            _ => authenticator(&config, store.clone()).map_err(|e| errors.push(e)).ok(),
        };
        let limits = limits_of(&config, previous.map(|p| (&p.config, &p.limits)), &mut errors);
        if config.routes.is_empty() {
            errors.push(ConfigError::new("routes", "at least one route is required"));
        }
        let mut routes: Vec<Route> = Vec::with_capacity(config.routes.len());
        let parts = Parts {
            upstreams: &upstreams,
            auth: auth.as_ref(),
            limits: &limits,
            shared: &shared,
            settings: &settings,
            before: previous.map_or(&[][..], |p| &p.table.routes[..]),
        };
        for (i, route) in config.routes.iter().enumerate() {
            // A route naming an upstream that was refused above is not
            // checked again: that error is the one to report.
            let named = std::iter::once(&route.upstream)
                .chain(route.backend_refs.iter().map(|b| &b.name))
                .chain(route.request_mirror.iter().map(|m| &m.backend_ref));
            let refused_upstream =
                named.into_iter().any(|u| config.upstreams.contains_key(u) && !upstreams.contains_key(u.as_str()));
            let refused_limit = route.limits.iter().any(|l| config.limits.contains_key(l) && !limits.contains_key(l));
            let refused_auth = needs_token && auth.is_none() && !matches!(route.access, Some(Access::Public) | None);
            if refused_upstream || refused_limit || refused_auth {
                continue;
            }
            let at = format!("routes[{i}]");
            match route_of(&at, route, &parts) {
                Ok(built) => {
                    // A route's name keys its metrics and what a reload hands on.
                    if let Some(j) = routes.iter().position(|r| r.name == built.name) {
                        let message = format!("{:?} is the name of routes[{j}] too", built.name);
                        errors.push(ConfigError::new(format!("{at}.name"), message));
                    } else if let Some(j) = routes.iter().position(|r| r.overlaps(&built)) {
                        errors.push(ConfigError::new(at, format!("matches the same requests as routes[{j}]")));
                    } else {
                        routes.push(built);
                    }
                }
                Err(err) => errors.push(err),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        // Every way each route matches, the most specific first (see
        // `routes::matching` for the order); a stable sort, so the
        // configuration's order decides the rest.
        let mut entries: Vec<Entry> = routes.iter().enumerate().flat_map(|(i, r)| r.entries(i)).collect();
        entries.sort_by_key(|e| routes[e.route].rank(e));
        check_fallthrough(&routes, &entries).map_err(|e| vec![e])?;
        let table = Table {
            any_hosts: routes.iter().any(|r| !r.hosts.is_empty()),
            entries: entries.into(),
            routes,
            upstreams: upstreams.into_values().collect(),
            auth,
            limits: limits.values().map(|l| l.limiter.clone()).collect(),
            shared: shared.clone(),
            _alive: Counted::new(&shared.alive.tables),
        };
        Ok(Self { config, settings, table: Arc::new(table), shared, limits, auth_source, store })
    }

    /// Resolves, once, each DNS upstream that has no endpoint yet: before a
    /// plan serves, so that its first requests find one.
    pub(crate) async fn resolve_dns(&self) {
        for upstream in &self.table.upstreams {
            if let Err(err) = upstream.discovered.first_lookup().await {
                tracing::warn!(upstream = %upstream.name, %err, "no endpoints from DNS yet");
            }
        }
    }

    /// Fetches the token issuers' published keys that are not held yet (within
    /// their wait bound), and starts their refresh: before a plan serves, so
    /// that its first tokens find their keys.
    pub(crate) async fn prefetch_keys(&self) {
        if let Some(auth) = self.authenticator()
            && !auth.prefetch().await
        {
            tracing::warn!("an issuer's keys could not be fetched yet: its tokens get 503 until they are");
        }
    }

    /// A short fingerprint of the configuration (SHA-1 of its TOML, secrets
    /// included, so that a changed secret changes it).
    pub fn hash(&self) -> String {
        use sha1::Digest as _;
        let text = toml::to_string(&self.config).unwrap_or_default();
        let digest = sha1::Sha1::digest(text.as_bytes());
        digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
    }

    /// One line: how many routes, upstreams and limits, and the hash.
    pub fn summary(&self) -> String {
        format!(
            "{} routes, {} upstreams, {} limits, hash {}",
            self.table.routes.len(),
            self.table.upstreams.len(),
            self.limits.len(),
            self.hash()
        )
    }

    /// The effective configuration as TOML (Redis password masked), under a
    /// comment listing every route in the order requests are matched, with its
    /// upstream and policy.
    pub fn to_masked_toml(&self) -> String {
        let mut text = String::from("# Routes, most specific first: a request takes the first that matches.\n");
        for entry in &self.table.entries {
            let route = &self.table.routes[entry.route];
            let upstream = route.metrics.upstream();
            let host = entry.host.as_ref().map(|h| format!("{h} ")).unwrap_or_default();
            let name = format!("{host}{}", route.name);
            let mut line = format!("#   {name:<28} -> {upstream:<10} access: {}", route.access);
            if !route.limits.is_empty() {
                let names: Vec<&str> = route.limits.iter().map(|l| &**l).collect();
                line.push_str(&format!("  limits: {}", names.join(", ")));
            }
            if route.websocket {
                line.push_str("  websocket");
            }
            text.push_str(&line);
            text.push('\n');
        }
        text.push('\n');
        text.push_str(&self.config.to_masked_toml());
        text
    }

    /// Where the gateway is configured to listen.
    pub fn listen(&self) -> SocketAddr {
        self.settings.listen
    }

    /// The configuration this plan was compiled from.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The authenticator of the routes that need a token, if any does.
    pub fn authenticator(&self) -> Option<&Authenticator> {
        self.table.auth.as_ref()
    }

    /// The endpoints of the upstream `name`.
    pub fn endpoints(&self, name: &str) -> Option<&Endpoints> {
        self.table.upstreams.iter().find(|u| &*u.name == name).map(|u| u.discovered.endpoints())
    }
}

pub(super) fn positive(field: &str, value: u64) -> Result<Duration, ConfigError> {
    if value == 0 { Err(ConfigError::new(field, "must be positive")) } else { Ok(Duration::from_millis(value)) }
}

/// A count that must be at least 1.
pub(super) fn at_least_one(field: &str, value: usize) -> Result<usize, ConfigError> {
    if value == 0 { Err(ConfigError::new(field, "must be at least 1")) } else { Ok(value) }
}

mod auth;
mod limits;
#[cfg(test)]
mod precedence_tests;
mod redis;
mod route;
mod server;
mod stack;
#[cfg(test)]
mod tests;
mod traffic;
mod upstream;
