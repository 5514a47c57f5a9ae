//! A [`Config`] compiled, once, into everything the gateway serves: each upstream's
//! balancer, retries and connection pool; each route's match, access policy and
//! stack; the authenticator; the server's settings. Every field is checked here
//! and nowhere else, and every error names its field.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, Request, Response};
use tokio::sync::Semaphore;
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_gateway::balance::Endpoints;
use tower_gateway::client_addr::{ClientAddrLayer, ForwardedHeader, TrustedProxies};
use tower_gateway::rate_limit::key::{ClientIp, Global, Header, JsonField};
use tower_gateway::rate_limit::{self, KeyExtractor, Limiter, OnStoreError, Quota, RateLimitLayer, ReadJsonLayer};
use tower_gateway::upgrade::Tunnels;
use tower_gateway::{Body, Proxy, RetryLayer, RetryPolicy, RoundRobinLayer, StripPrefixLayer, TimeoutLayer};
use tower_gateway_auth::{Authenticator, Claim, ClaimKey, JwtAuthLayer, MemoryStore, RedisStore, TokenStore};
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

use crate::config::{Access, Config, ConfigError, LimitConfig, RetryConfig, RouteConfig, UpstreamConfig};
use crate::metrics::Metrics;
use crate::routes::{Matcher, Route, RouteBody, Stack, Table, Upstream, UpstreamService};

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
}

/// The server's settings, checked.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) listen: SocketAddr,
    pub(crate) admin_listen: Option<SocketAddr>,
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
type RouteKey = Arc<dyn KeyExtractor<RouteBody> + Send + Sync>;

/// A named limit, built once and shared by every route that names it.
struct BuiltLimit {
    limiter: Limiter,
    key: RouteKey,
    /// The key reads the verified token, so the limit goes inside the auth layer.
    needs_identity: bool,
    /// The JSON body fields the key reads.
    json_fields: Vec<String>,
}

/// The gateway, built from its configuration: what [`serve`](crate::serve) runs.
#[derive(Debug)]
pub struct Plan {
    pub(crate) config: Config,
    pub(crate) settings: Settings,
    pub(crate) table: Arc<Table>,
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
        let settings = settings(&config)?;
        let mut upstreams = BTreeMap::new();
        for (name, upstream) in &config.upstreams {
            upstreams.insert(name.as_str(), upstream_of(name, upstream, &settings.tunnels)?);
        }
        let needs_token = config.routes.iter().any(|r| !matches!(r.access, Some(Access::Public) | None));
        let auth = if needs_token { Some(authenticator(&config, store)?) } else { None };
        let limits = limits_of(&config)?;
        let metrics = Metrics::new();
        if config.routes.is_empty() {
            return Err(ConfigError::new("routes", "at least one route is required"));
        }
        let mut routes: Vec<Route> = Vec::with_capacity(config.routes.len());
        for (i, route) in config.routes.iter().enumerate() {
            let at = format!("routes[{i}]");
            let built = route_of(&at, route, &upstreams, auth.as_ref(), &limits, &metrics, &settings)?;
            if let Some(j) = routes.iter().position(|r| r.overlaps(&built)) {
                return Err(ConfigError::new(at, format!("matches the same requests as routes[{j}]")));
            }
            routes.push(built);
        }
        // The most specific first: the longest path, an exact path over a prefix of
        // the same length, then a route naming methods over one taking any.
        let mut order: Vec<(usize, &Route)> = routes.iter().enumerate().collect();
        order.sort_by_key(|(_, r)| r.specificity());
        check_fallthrough(&order)?;
        routes.sort_by_key(|r| r.specificity());
        let upstreams = upstreams.into_values().collect();
        let limits = limits.into_values().map(|l| l.limiter).collect();
        let tunnels = settings.tunnels.clone();
        let capacity = Arc::new(Semaphore::new(settings.max_concurrent_requests));
        let anonymous = Arc::new(Semaphore::new(settings.max_anonymous_concurrent_requests));
        let table = Table {
            routes,
            upstreams,
            metrics,
            auth,
            limits,
            tunnels,
            capacity,
            anonymous,
            draining: Default::default(),
        };
        Ok(Self { config, settings, table: Arc::new(table) })
    }

    /// The effective configuration as TOML (Redis password masked), under a
    /// comment listing every route in the order requests are matched, with its
    /// upstream and policy.
    pub fn to_masked_toml(&self) -> String {
        let mut text = String::from("# Routes, most specific first: a request takes the first that matches.\n");
        for route in &self.table.routes {
            let upstream = route.metrics.upstream();
            let mut line = format!("#   {:<28} -> {upstream:<10} access: {}", &*route.name, route.access);
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
        self.table.upstreams.iter().find(|u| &*u.name == name).map(|u| &u.endpoints)
    }
}

fn positive(field: &str, value: u64) -> Result<Duration, ConfigError> {
    if value == 0 { Err(ConfigError::new(field, "must be positive")) } else { Ok(Duration::from_millis(value)) }
}

/// A count that must be at least 1.
fn at_least_one(field: &str, value: usize) -> Result<usize, ConfigError> {
    if value == 0 { Err(ConfigError::new(field, "must be at least 1")) } else { Ok(value) }
}

fn settings(config: &Config) -> Result<Settings, ConfigError> {
    let listen = config.listen.parse().map_err(|e| ConfigError::new("listen", format!("{:?}: {e}", config.listen)))?;
    at_least_one("max_concurrent_requests", config.max_concurrent_requests)?;
    if config.max_header_bytes < 8 * 1024 {
        return Err(ConfigError::new("max_header_bytes", "must be at least 8192"));
    }
    let mut origins = Vec::new();
    for (i, origin) in config.cors_origins.iter().enumerate() {
        if origin != "*" {
            origins.push(
                HeaderValue::from_str(origin).map_err(|_| {
                    ConfigError::new(format!("cors_origins[{i}]"), format!("{origin:?} is not an origin"))
                })?,
            );
        }
    }
    let cors = (!config.cors_origins.is_empty()).then(|| {
        let allow = if config.cors_origins.iter().any(|o| o == "*") {
            AllowOrigin::from(Any)
        } else {
            AllowOrigin::list(origins)
        };
        let request_id = http::HeaderName::from_static("x-request-id");
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods(Any)
            .allow_headers([
                http::header::AUTHORIZATION,
                http::header::CONTENT_TYPE,
                http::HeaderName::from_static("idempotency-key"),
                request_id.clone(),
            ])
            .expose_headers([request_id])
            .max_age(Duration::from_secs(600))
    });
    let trusted = TrustedProxies::parse(&config.trusted_proxies).map_err(|e| ConfigError::new("trusted_proxies", e))?;
    let header = match config.forwarded_header.to_ascii_lowercase().as_str() {
        "x-forwarded-for" => ForwardedHeader::XForwardedFor,
        "forwarded" => ForwardedHeader::Forwarded,
        other => {
            return Err(ConfigError::new(
                "forwarded_header",
                format!("{other:?} is not \"x-forwarded-for\" or \"forwarded\""),
            ));
        }
    };
    let admin_listen = match &config.admin_listen {
        Some(addr) => Some(addr.parse().map_err(|e| ConfigError::new("admin_listen", format!("{addr:?}: {e}")))?),
        None => None,
    };
    let tls = match &config.tls {
        Some(tls) => Some(TlsSettings {
            listen: tls.listen.parse().map_err(|e| ConfigError::new("tls.listen", format!("{:?}: {e}", tls.listen)))?,
            certificate: crate::tls::Certificates::new(tls).map_err(|(field, e)| ConfigError::new(field, e))?,
            hsts: tls.hsts_max_age_secs.map(|secs| {
                http::HeaderValue::try_from(format!("max-age={secs}")).expect("digits are a valid header value")
            }),
            redirect_listen: match &tls.redirect_listen {
                Some(addr) => {
                    Some(addr.parse().map_err(|e| ConfigError::new("tls.redirect_listen", format!("{addr:?}: {e}")))?)
                }
                None => None,
            },
            handshake_timeout: positive("tls.handshake_timeout_ms", tls.handshake_timeout_ms)?,
            max_handshakes: at_least_one("tls.max_handshakes", tls.max_handshakes)?,
            reload_every: positive("tls.reload_interval_ms", tls.reload_interval_ms)?,
        }),
        None => None,
    };
    Ok(Settings {
        admin_listen,
        tls,
        client_addr: ClientAddrLayer::new().trusted(trusted.clone()).header(header),
        trusted_proxies: trusted,
        listen,
        request_timeout: positive("request_timeout_ms", config.request_timeout_ms)?,
        header_read_timeout: positive("header_read_timeout_ms", config.header_read_timeout_ms)?,
        max_connections: at_least_one("max_connections", config.max_connections)?,
        max_connections_per_client: at_least_one("max_connections_per_client", config.max_connections_per_client)?,
        workers: match config.workers {
            Some(n) => at_least_one("workers", n)?,
            None => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
        },
        idle_timeout: positive("idle_timeout_ms", config.idle_timeout_ms)?,
        grace_period: Duration::from_millis(config.grace_period_ms),
        drain_delay: Duration::from_millis(config.drain_delay_ms),
        max_header_bytes: config.max_header_bytes,
        max_body_bytes: config.max_body_bytes,
        max_concurrent_requests: config.max_concurrent_requests,
        max_route_concurrent_requests: match config.max_route_concurrent_requests {
            Some(n) => at_least_one("max_route_concurrent_requests", n)?,
            None => (config.max_concurrent_requests / 2).max(1),
        },
        max_anonymous_concurrent_requests: match config.max_anonymous_concurrent_requests {
            Some(n) => at_least_one("max_anonymous_concurrent_requests", n)?,
            None => (config.max_concurrent_requests * 3 / 4).max(1),
        },
        body_idle_timeout: positive("body_idle_timeout_ms", config.body_idle_timeout_ms)?,
        tunnels: Tunnels::builder(
            config.websocket_max_connections,
            positive("websocket_idle_timeout_ms", config.websocket_idle_timeout_ms)?,
        )
        .max_per_client(at_least_one(
            "websocket_max_connections_per_client",
            config.websocket_max_connections_per_client,
        )?)
        .max_lifetime(positive("websocket_max_lifetime_ms", config.websocket_max_lifetime_ms)?)
        .build(),
        cors,
    })
}

fn authenticator(config: &Config, store: Option<Arc<dyn TokenStore>>) -> Result<Authenticator, ConfigError> {
    let jwt = &config.jwt;
    if jwt.private_key_file.is_some() {
        return Err(ConfigError::new(
            "jwt.private_key_file",
            "the gateway only verifies tokens: give it the public key, and the private key to user-service alone",
        ));
    }
    if !jwt.is_set() && jwt.algorithm.is_none() {
        return Err(ConfigError::new(
            "jwt",
            "routes need tokens but no key is configured (JWT_ALGORITHM and JWT_PUBLIC_KEY_FILE, or JWT_SECRET_FILE)",
        ));
    }
    let store: Arc<dyn TokenStore> = match (store, &config.redis_url) {
        (Some(store), _) => store,
        (None, Some(url)) => Arc::new(RedisStore::new(url.clone()).map_err(|e| ConfigError::new("redis_url", e))?),
        (None, None) => Arc::new(MemoryStore::new()),
    };
    jwt.authenticator()
        .map_err(|e| ConfigError::new(format!("jwt.{}", e.field), e.message))?
        .store(store)
        .cache_bound(Duration::from_millis(config.revocation.cache_bound_ms))
        .fail_open(config.revocation.fail_open)
        .build()
        .map_err(|e| ConfigError::new("jwt", e))
}

/// One part of a limit's key, from its name in the configuration.
fn key_part(at: &str, part: &str, built: &mut BuiltLimit) -> Result<RouteKey, ConfigError> {
    let wrong = |why: &str| ConfigError::new(at, format!("{part:?}: {why}"));
    Ok(match part.split_once(':') {
        None if part == "client_ip" => Arc::new(ClientIp::new()),
        None if part == "global" => Arc::new(Global),
        None if part == "subject" => {
            built.needs_identity = true;
            Arc::new(ClaimKey::subject())
        }
        Some(("claim", claim)) => {
            built.needs_identity = true;
            Arc::new(ClaimKey::new(match claim {
                "sub" => Claim::Subject,
                "email" => Claim::Email,
                "iss" => Claim::Issuer,
                _ => return Err(wrong("the claims are sub, email and iss")),
            }))
        }
        Some(("header", name)) => {
            Arc::new(Header::new(HeaderName::try_from(name).map_err(|_| wrong("not a header name"))?))
        }
        Some(("json", field)) if !field.is_empty() => {
            built.json_fields.push(field.to_owned());
            Arc::new(JsonField::new(field))
        }
        _ => {
            return Err(wrong(
                r#"use "client_ip", "subject", "claim:<name>", "header:<name>", "json:<field>" or "global""#,
            ));
        }
    })
}

fn limit_of(
    name: &str,
    config: &LimitConfig,
    redis: Option<&Arc<dyn rate_limit::Store>>,
) -> Result<BuiltLimit, ConfigError> {
    let at = format!("limits.{name}");
    let period = match config.per.as_str() {
        "second" => Duration::from_secs(1),
        "minute" => Duration::from_secs(60),
        "hour" => Duration::from_secs(3600),
        other => {
            return Err(ConfigError::new(
                format!("{at}.per"),
                format!("{other:?} is not \"second\", \"minute\" or \"hour\""),
            ));
        }
    };
    let mut quota = Quota::try_new(config.rate, period).map_err(|e| ConfigError::new(format!("{at}.rate"), e))?;
    if let Some(burst) = config.burst {
        if burst == 0 {
            return Err(ConfigError::new(format!("{at}.burst"), "must be at least 1"));
        }
        quota = quota.burst(burst);
    }
    let mut builder = Limiter::builder(name, quota);
    match (config.store.as_deref(), redis) {
        (None | Some("redis"), Some(redis)) => builder = builder.store(redis.clone()),
        (Some("redis"), None) => return Err(ConfigError::new(format!("{at}.store"), "\"redis\" needs redis_url")),
        (None | Some("memory"), _) => {}
        (Some(other), _) => {
            return Err(ConfigError::new(format!("{at}.store"), format!("{other:?} is not \"redis\" or \"memory\"")));
        }
    }
    builder = builder.on_store_error(match config.on_store_error.as_str() {
        "open" => OnStoreError::FailOpen,
        "closed" => OnStoreError::FailClosed,
        other => {
            return Err(ConfigError::new(
                format!("{at}.on_store_error"),
                format!("{other:?} is not \"open\" or \"closed\""),
            ));
        }
    });
    let limiter = builder.build().map_err(|e| ConfigError::new(&at, e))?;
    let mut built = BuiltLimit { limiter, key: Arc::new(Global), needs_identity: false, json_fields: Vec::new() };
    let parts = config.key.parts();
    let field = |i: usize| if parts.len() == 1 { format!("{at}.key") } else { format!("{at}.key[{i}]") };
    let mut keys = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        keys.push(key_part(&field(i), part, &mut built)?);
    }
    let mut keys = keys.into_iter();
    built.key = match (keys.next(), keys.next(), keys.next(), keys.next()) {
        (Some(a), None, None, None) => a,
        (Some(a), Some(b), None, None) => Arc::new((a, b)),
        (Some(a), Some(b), Some(c), None) => Arc::new((a, b, c)),
        _ => return Err(ConfigError::new(format!("{at}.key"), "give one to three parts")),
    };
    Ok(built)
}

fn limits_of(config: &Config) -> Result<BTreeMap<String, BuiltLimit>, ConfigError> {
    let redis: Option<Arc<dyn rate_limit::Store>> = match &config.redis_url {
        Some(url) if !config.limits.is_empty() => Some(Arc::new(
            rate_limit::RedisStore::builder(url.clone()).build().map_err(|e| ConfigError::new("redis_url", e))?,
        )),
        _ => None,
    };
    let mut limits = BTreeMap::new();
    for (name, limit) in &config.limits {
        limits.insert(name.clone(), limit_of(name, limit, redis.as_ref())?);
    }
    Ok(limits)
}

fn retry_layer(at: &str, retry: &RetryConfig) -> Result<RetryLayer, ConfigError> {
    if !(1..=10).contains(&retry.attempts) {
        return Err(ConfigError::new(format!("{at}.retry.attempts"), "must be between 1 and 10"));
    }
    let backoff = positive(&format!("{at}.retry.backoff_ms"), retry.backoff_ms)?;
    if retry.max_backoff_ms < retry.backoff_ms {
        return Err(ConfigError::new(format!("{at}.retry.max_backoff_ms"), "must be at least backoff_ms"));
    }
    if !(0.0..=10.0).contains(&retry.jitter) {
        return Err(ConfigError::new(format!("{at}.retry.jitter"), "must be between 0 and 10"));
    }
    let policy = RetryPolicy::new()
        .max_attempts(retry.attempts)
        .retry_idempotency_key(retry.idempotency_key)
        .backoff(backoff, Duration::from_millis(retry.max_backoff_ms), retry.jitter)
        .map_err(|e| ConfigError::new(format!("{at}.retry"), e))?;
    Ok(RetryLayer::new(policy).max_replay_body(retry.max_replay_body_bytes))
}

fn upstream_of(name: &str, config: &UpstreamConfig, tunnels: &Tunnels) -> Result<Upstream, ConfigError> {
    let at = format!("upstreams.{name}");
    let (endpoints, dns) = match (&config.dns, config.endpoints.is_empty()) {
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
            // DNS answers are reached as http://ADDRESS:PORT: TLS settings would
            // silently go unused, and the traffic they were meant to protect
            // would cross the network in the clear.
            for (field, set) in [
                ("ca_file", config.ca_file.is_some()),
                ("client_cert_file", config.client_cert_file.is_some()),
                ("client_key_file", config.client_key_file.is_some()),
            ] {
                if set {
                    let why =
                        "a dns upstream is reached over plain HTTP, so this would not be used; list https:// endpoints";
                    return Err(ConfigError::new(format!("{at}.{field}"), why));
                }
            }
            let every = positive(&format!("{at}.dns_refresh_ms"), config.dns_refresh_ms)?;
            let endpoints = Endpoints::new(Vec::<String>::new()).map_err(|e| ConfigError::new(&at, e))?;
            (endpoints, Some((dns.clone(), every)))
        }
        (None, false) => {
            for (j, endpoint) in config.endpoints.iter().enumerate() {
                Endpoints::new([endpoint]).map_err(|e| ConfigError::new(format!("{at}.endpoints[{j}]"), e))?;
            }
            (Endpoints::new(&config.endpoints).map_err(|e| ConfigError::new(format!("{at}.endpoints"), e))?, None)
        }
    };
    let mut proxy = Proxy::builder()
        .connect_timeout(positive(&format!("{at}.connect_timeout_ms"), config.connect_timeout_ms)?)
        .tunnels(tunnels.clone());
    if let Some(tls) =
        crate::tls::upstream_config(config).map_err(|(field, e)| ConfigError::new(format!("{at}.{field}"), e))?
    {
        proxy = proxy.tls_config(tls);
    }
    let proxy = proxy.build();
    // Each attempt's wait for the response head, under the balancer: a 504 it
    // counts against the endpoint, and the retry layer may retry.
    let timeout = TimeoutLayer::new(positive(&format!("{at}.timeout_ms"), config.timeout_ms)?);
    // One stack per upstream, cloned into every route that names it: one round
    // robin, one ejection state, one retry budget, one connection pool.
    let service: UpstreamService = ServiceBuilder::new()
        .layer(retry_layer(&at, &config.retry)?)
        .layer(
            RoundRobinLayer::new(endpoints.clone())
                .eject_after(config.eject_after)
                .eject_after_gateway_failures(config.eject_after_gateway_failures)
                .max_ejected_percent(config.max_ejected_percent)
                .cool_down(Duration::from_millis(config.cool_down_ms)),
        )
        .layer(timeout)
        .service(proxy);
    Ok(Upstream { name: name.into(), endpoints, dns, service })
}

/// A layer's service as a piece of a route: boxed, its answers one [`Body`]
/// again (the layers' `ResponseBody` flattens with no allocation).
fn stacked<S, B>(svc: S) -> Stack
where
    S: Service<Request<RouteBody>, Response = Response<B>, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    B: Into<Body> + 'static,
{
    BoxCloneSyncService::new(svc.map_response(|response: Response<B>| response.map(Into::into)))
}

/// Takes a WebSocket upgrade's place among the tunnels before the upstream's
/// retries and balancer: a full set is answered `503` once, neither retried nor
/// counted against an endpoint. Behind the auth layer: the tunnel of a request
/// with a token is closed when the token expires.
#[derive(Clone)]
struct ReserveUpgrade {
    inner: Stack,
    tunnels: Tunnels,
}

impl Service<Request<RouteBody>> for ReserveUpgrade {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = futures_util::future::Either<
        std::future::Ready<Result<Response<Body>, Infallible>>,
        <Stack as Service<Request<RouteBody>>>::Future,
    >;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<RouteBody>) -> Self::Future {
        // A tunnel opened with a token ends when the token does.
        if let Some(exp) = req.extensions().get::<tower_gateway_auth::Authenticated>().map(|who| who.exp) {
            let at = std::time::UNIX_EPOCH + Duration::from_secs(exp);
            req.extensions_mut().insert(tower_gateway::upgrade::CloseAt(at));
        }
        match self.tunnels.reserve(&mut req) {
            Ok(()) => futures_util::future::Either::Right(self.inner.call(req)),
            Err(refused) => futures_util::future::Either::Left(std::future::ready(Ok(refused.into_response()))),
        }
    }
}

/// `svc` behind `limits`, the first listed outermost; the JSON body is read just
/// before the first limit that needs it.
fn limited(mut svc: Stack, limits: &[&BuiltLimit]) -> Stack {
    let fields: Vec<&String> = limits.iter().flat_map(|l| &l.json_fields).collect();
    let first_json = limits.iter().position(|l| !l.json_fields.is_empty());
    for (i, limit) in limits.iter().enumerate().rev() {
        svc = stacked(RateLimitLayer::new(limit.limiter.clone(), limit.key.clone()).layer(svc));
        if Some(i) == first_json {
            svc = stacked(ReadJsonLayer::new(&fields).layer(svc));
        }
    }
    svc
}

fn path_field<'a>(at: &str, field: &str, value: &'a str) -> Result<&'a str, ConfigError> {
    let layer = StripPrefixLayer::try_new(value).map_err(|e| ConfigError::new(format!("{at}.{field}"), e))?;
    if layer.prefix().is_empty() {
        return Err(ConfigError::new(format!("{at}.{field}"), "a route needs a path below '/'"));
    }
    Ok(value.trim_end_matches('/'))
}

fn methods_of(at: &str, methods: &[String]) -> Result<Option<Box<[Method]>>, ConfigError> {
    if methods.is_empty() {
        return Ok(None);
    }
    let mut parsed: Vec<Method> = Vec::with_capacity(methods.len());
    for (j, name) in methods.iter().enumerate() {
        let field = || format!("{at}.methods[{j}]");
        if name.is_empty() || name.bytes().any(|b| !b.is_ascii_uppercase()) {
            return Err(ConfigError::new(field(), format!("{name:?} is not an upper-case method name like GET")));
        }
        let method = Method::from_bytes(name.as_bytes()).map_err(|e| ConfigError::new(field(), e))?;
        if parsed.contains(&method) {
            return Err(ConfigError::new(field(), format!("{name} is listed twice")));
        }
        parsed.push(method);
    }
    // HEAD is a GET without the body (RFC 9110 §9.3.2): it goes where GET goes,
    // not to whatever broader route takes the other methods.
    if parsed.contains(&Method::GET) && !parsed.contains(&Method::HEAD) {
        parsed.push(Method::HEAD);
    }
    Ok(Some(parsed.into()))
}

/// How much a policy asks of a request: a route's other methods may fall
/// through only to a route that asks at least as much.
fn strictness(access: &Access) -> u8 {
    match access {
        Access::Public => 0,
        Access::Token => 1,
        Access::Roles(_) => 2,
    }
}

/// Refuses a route naming methods whose path, asked with another method, is
/// taken by a route with a weaker policy: a method-restricted route must not
/// open its path to a more lenient route by omission. `routes` are in matching
/// order, each with its index in the configuration.
fn check_fallthrough(routes: &[(usize, &Route)]) -> Result<(), ConfigError> {
    const METHODS: [Method; 7] =
        [Method::GET, Method::HEAD, Method::POST, Method::PUT, Method::DELETE, Method::PATCH, Method::OPTIONS];
    for (at, route) in routes {
        let Some(methods) = &route.methods else { continue };
        let path = route.matcher.path();
        for method in METHODS.iter().filter(|m| !methods.contains(m)) {
            // The route `Table::recognize` would pick, given the request.
            let taker = routes.iter().find(|(_, r)| r.takes(method, path));
            if let Some((other, taker)) = taker
                && strictness(&taker.access) < strictness(&route.access)
            {
                return Err(ConfigError::new(
                    format!("routes[{at}].methods"),
                    format!(
                        "{method} {path} falls through to routes[{other}] ({}), more open than this route ({}): \
                         give the other methods a route of their own",
                        taker.access, route.access
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn route_of(
    at: &str,
    config: &RouteConfig,
    upstreams: &BTreeMap<&str, Upstream>,
    auth: Option<&Authenticator>,
    limits: &BTreeMap<String, BuiltLimit>,
    metrics: &Metrics,
    settings: &Settings,
) -> Result<Route, ConfigError> {
    let matcher = match (&config.prefix, &config.path) {
        (Some(prefix), None) => Matcher::Prefix(path_field(at, "prefix", prefix)?.into()),
        (None, Some(path)) => Matcher::Path(path_field(at, "path", path)?.into()),
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(format!("{at}.path"), "give either prefix or path, not both"));
        }
        (None, None) => return Err(ConfigError::new(format!("{at}.prefix"), "give a prefix or a path to match")),
    };
    let methods = methods_of(at, &config.methods)?;
    let strip = match &config.strip_prefix {
        Some(strip) => {
            let strip = path_field(at, "strip_prefix", strip)?;
            if !Matcher::Prefix(strip.into()).matches(matcher.path()) {
                return Err(ConfigError::new(
                    format!("{at}.strip_prefix"),
                    format!("{strip:?} is not a prefix of {:?}", matcher.path()),
                ));
            }
            strip
        }
        None => matcher.path(),
    };
    let upstream = upstreams.get(config.upstream.as_str()).ok_or_else(|| {
        let known: Vec<&str> = upstreams.keys().copied().collect();
        ConfigError::new(format!("{at}.upstream"), format!("{:?} is not one of {known:?}", config.upstream))
    })?;
    let access = config.access.clone().ok_or_else(|| {
        ConfigError::new(format!("{at}.access"), r#"required: "public", "token" or { roles = ["..."] }"#)
    })?;
    let auth_layer = match (&access, auth) {
        (Access::Public, _) => None,
        (Access::Token, Some(auth)) => Some(JwtAuthLayer::new(auth.clone())),
        (Access::Roles(roles), Some(auth)) => {
            if roles.is_empty() || roles.iter().any(String::is_empty) {
                return Err(ConfigError::new(format!("{at}.access.roles"), "name at least one role, none empty"));
            }
            Some(JwtAuthLayer::new(auth.clone()).any_role(roles.iter().cloned()))
        }
        (_, None) => unreachable!("an authenticator is built whenever a route needs a token"),
    };
    let name: Arc<str> = match &config.name {
        Some(name) => name.as_str().into(),
        None => {
            let star = if matches!(matcher, Matcher::Prefix(_)) { "/*" } else { "" };
            match &methods {
                Some(methods) => {
                    let names: Vec<&str> = methods.iter().map(Method::as_str).collect();
                    format!("{}{star} {}", matcher.path(), names.join(",")).into()
                }
                None => format!("{}{star}", matcher.path()).into(),
            }
        }
    };
    let mut named: Vec<&BuiltLimit> = Vec::with_capacity(config.limits.len());
    for (j, limit) in config.limits.iter().enumerate() {
        let field = || format!("{at}.limits[{j}]");
        let built = limits.get(limit).ok_or_else(|| {
            let known: Vec<&String> = limits.keys().collect();
            ConfigError::new(field(), format!("{limit:?} is not one of {known:?}"))
        })?;
        if config.limits[..j].contains(limit) {
            return Err(ConfigError::new(field(), format!("{limit} is listed twice")));
        }
        if built.needs_identity && access == Access::Public {
            return Err(ConfigError::new(field(), format!("{limit} counts by the token, but the route is public")));
        }
        named.push(built);
    }
    // Limits by address, header or body are decided before the token is checked
    // (a flood of bad tokens is limited before it costs verification); limits by
    // the token's claims inside the auth layer.
    let (inside, outside): (Vec<&BuiltLimit>, Vec<&BuiltLimit>) = named.into_iter().partition(|l| l.needs_identity);
    let mut svc: Stack = stacked(upstream.service.clone());
    if config.websocket {
        svc = stacked(ReserveUpgrade { inner: svc, tunnels: settings.tunnels.clone() });
    }
    svc = limited(svc, &inside);
    if let Some(layer) = auth_layer {
        svc = stacked(layer.layer(svc));
    }
    svc = limited(svc, &outside);
    let svc = stacked(StripPrefixLayer::new(strip).layer(svc));
    let limits = config.limits.iter().map(|l| Arc::from(l.as_str())).collect();
    Ok(Route {
        metrics: metrics.route(&name, &upstream.name),
        name,
        matcher,
        methods,
        access,
        limits,
        websocket: config.websocket,
        svc,
        // A share of the gateway's capacity per route: a route whose requests are
        // slow (trickled bodies, a stuck upstream) is refused at its share while
        // the others are served.
        share: Arc::new(Semaphore::new(settings.max_route_concurrent_requests)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::Recognized;

    fn keyed(mut config: Config, dir: &tempfile::TempDir) -> Config {
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "a shared secret of at least 32 bytes").unwrap();
        config.jwt.secret_file = Some(secret);
        config
    }

    #[test]
    fn the_shipped_policy_picks_the_most_specific_route() {
        let dir = tempfile::tempdir().unwrap();
        let plan = Plan::compile(keyed(Config::default(), &dir)).unwrap();
        let table = &plan.table;
        let admin = Access::Roles(vec!["admin".into()]);
        let cases = [
            ("GET", "/api/products", "/api/products/* GET,HEAD", Access::Public),
            ("HEAD", "/api/products/1", "/api/products/* GET,HEAD", Access::Public),
            ("PUT", "/api/products/1", "/api/products/*", admin.clone()),
            ("POST", "/api/products", "/api/products/*", admin.clone()),
            ("DELETE", "/api/products/1", "/api/products/*", admin.clone()),
            ("POST", "/api/users/signup", "/api/users/signup POST", Access::Public),
            ("POST", "/api/users/login", "/api/users/login POST", Access::Public),
            ("POST", "/api/users/login/", "/api/users/login POST", Access::Public),
            ("GET", "/api/users/login", "/api/users/*", Access::Token),
            ("POST", "/api/users/login/x", "/api/users/*", Access::Token),
            ("POST", "/api/users/logout", "/api/users/*", Access::Token),
            ("GET", "/api/users", "/api/users", admin.clone()),
            ("GET", "/api/users/", "/api/users", admin.clone()),
            ("POST", "/api/users", "/api/users", admin.clone()),
            ("GET", "/api/users/2", "/api/users/*", Access::Token),
            ("DELETE", "/api/users/2", "/api/users/*", Access::Token),
            ("PUT", "/api/users/2", "/api/users/* PUT", Access::Token),
            ("PUT", "/api/users", "/api/users", admin.clone()),
            ("GET", "/api/checkout", "/api/checkout/*", Access::Token),
            ("POST", "/api/checkout/", "/api/checkout/*", Access::Token),
        ];
        for (method, path, name, access) in cases {
            let method: Method = method.parse().unwrap();
            let Recognized::Route(i) = table.recognize(&method, path) else { panic!("{method} {path}: no route") };
            let route = &table.routes[i];
            assert_eq!((&*route.name, &route.access), (name, &access), "{method} {path}");
        }
        for path in ["/api/productsX", "/api", "/api/user", "/", "/healthz"] {
            assert_eq!(table.recognize(&Method::GET, path), Recognized::NotFound, "{path}");
        }
    }

    #[test]
    fn a_path_taking_other_methods_is_405() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = keyed(Config::default(), &dir);
        config.routes.retain(|r| r.methods == ["GET", "HEAD"]);
        let plan = Plan::compile(config).unwrap();
        assert_eq!(plan.table.recognize(&Method::DELETE, "/api/products/1"), Recognized::MethodNotAllowed);
    }

    #[test]
    fn head_goes_where_get_goes_and_other_methods_only_to_a_route_as_strict() {
        let dir = tempfile::tempdir().unwrap();
        let text = "[upstreams.u]\nendpoints = [\"http://a:1\"]\n\
                    [[routes]]\nprefix = \"/a\"\nmethods = [\"GET\"]\nupstream = \"u\"\naccess = \"public\"\n\
                    [[routes]]\nprefix = \"/a\"\nupstream = \"u\"\naccess = \"token\"";
        let config: Config = toml::from_str(text).unwrap();
        let plan = Plan::compile(keyed_unless_jwt(config, &dir, text)).unwrap();
        let table = &plan.table;
        let access = |method: Method| match table.recognize(&method, "/a/1") {
            Recognized::Route(i) => table.routes[i].access.clone(),
            other => panic!("{method}: {other:?}"),
        };
        assert_eq!(access(Method::HEAD), Access::Public, "HEAD with GET");
        assert_eq!(access(Method::POST), Access::Token, "a public GET route may leave POST to a token route");
    }

    #[test]
    fn errors_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let up = "[upstreams.u]\nendpoints = [\"http://a:1\"]\n";
        let cases: Vec<(String, &str)> = vec![
            ("listen = \"nowhere\"".into(), "listen"),
            ("max_concurrent_requests = 0".into(), "max_concurrent_requests"),
            ("[upstreams.u]\nendpoints = [\"ftp://a:1\"]".into(), "upstreams.u.endpoints[0]"),
            ("[upstreams.u]\ndns = \"tasks.a\"".into(), "upstreams.u.dns"),
            ("[upstreams.u]\ndns = \"tasks.a:1\"\nca_file = \"/ca.pem\"".into(), "upstreams.u.ca_file"),
            (
                "[upstreams.u]\ndns = \"tasks.a:1\"\nclient_cert_file = \"/c.pem\"".into(),
                "upstreams.u.client_cert_file",
            ),
            ("[upstreams.u]\n".into(), "upstreams.u.endpoints"),
            (format!("{up}retry = {{ attempts = 0 }}"), "upstreams.u.retry.attempts"),
            (format!("{up}[[routes]]\nupstream = \"u\"\naccess = \"public\""), "routes[0].prefix"),
            (format!("{up}[[routes]]\nprefix = \"api\"\nupstream = \"u\"\naccess = \"public\""), "routes[0].prefix"),
            (format!("{up}[[routes]]\nprefix = \"/\"\nupstream = \"u\"\naccess = \"public\""), "routes[0].prefix"),
            (format!("{up}[[routes]]\nprefix = \"/a/%61\"\nupstream = \"u\"\naccess = \"public\""), "routes[0].prefix"),
            (
                format!("{up}[[routes]]\nprefix = \"/a\"\npath = \"/b\"\nupstream = \"u\"\naccess = \"public\""),
                "routes[0].path",
            ),
            (format!("{up}[[routes]]\nprefix = \"/a\"\nupstream = \"v\"\naccess = \"public\""), "routes[0].upstream"),
            (format!("{up}[[routes]]\nprefix = \"/a\"\nupstream = \"u\""), "routes[0].access"),
            (
                format!("{up}[[routes]]\nprefix = \"/a\"\nmethods = [\"get\"]\nupstream = \"u\"\naccess = \"public\""),
                "routes[0].methods[0]",
            ),
            (
                format!(
                    "{up}[[routes]]\nprefix = \"/a\"\nmethods = [\"GET\", \"GET\"]\nupstream = \"u\"\naccess = \"public\""
                ),
                "routes[0].methods[1]",
            ),
            (
                format!(
                    "{up}[[routes]]\nprefix = \"/a\"\nstrip_prefix = \"/b\"\nupstream = \"u\"\naccess = \"public\""
                ),
                "routes[0].strip_prefix",
            ),
            (
                format!("{up}[[routes]]\nprefix = \"/a\"\nupstream = \"u\"\naccess = {{ roles = [] }}"),
                "routes[0].access.roles",
            ),
            (
                format!(
                    "{up}[[routes]]\nprefix = \"/a\"\nmethods = [\"GET\", \"PUT\"]\nupstream = \"u\"\naccess = \"public\"\n[[routes]]\nprefix = \"/a/\"\nmethods = [\"PUT\"]\nupstream = \"u\"\naccess = \"token\""
                ),
                "routes[1]",
            ),
            (
                format!(
                    "{up}[[routes]]\nprefix = \"/a\"\nupstream = \"u\"\naccess = \"token\"\n[jwt]\nalgorithm = \"EdDSA\""
                ),
                "jwt.public_key_file",
            ),
            (
                format!(
                    "{up}[[routes]]\nprefix = \"/a\"\nupstream = \"u\"\naccess = \"token\"\n[jwt]\nalgorithm = \"EdDSA\"\nprivate_key_file = \"k.pem\""
                ),
                "jwt.private_key_file",
            ),
            (
                format!(
                    "{up}[[routes]]\nprefix = \"/a\"\nupstream = \"u\"\naccess = \"token\"\n[jwt]\nsecret_file = \"/nonexistent\""
                ),
                "jwt.secret_file",
            ),
        ];
        let limited = |limit: &str, route_limits: &str, access: &str| {
            format!(
                "{up}[[routes]]\nprefix = \"/a\"\nupstream = \"u\"\naccess = {access}\nlimits = {route_limits}\n{limit}"
            )
        };
        let lim = |body: &str| format!("[limits.l]\n{body}");
        let ok = "rate = 1\nper = \"second\"\nkey = \"client_ip\"";
        let public = "\"public\"";
        let mut cases = cases;
        cases.extend([
            ("trusted_proxies = [\"10.0.0.0/33\"]".to_owned(), "trusted_proxies"),
            ("forwarded_header = \"x-real-ip\"".to_owned(), "forwarded_header"),
            (limited(&lim("rate = 0\nper = \"second\"\nkey = \"client_ip\""), "[\"l\"]", public), "limits.l.rate"),
            (limited(&lim("rate = 1\nper = \"day\"\nkey = \"client_ip\""), "[\"l\"]", public), "limits.l.per"),
            (limited(&lim(&format!("{ok}\nburst = 0")), "[\"l\"]", public), "limits.l.burst"),
            (limited(&lim("rate = 1\nper = \"second\"\nkey = \"ip\""), "[\"l\"]", public), "limits.l.key"),
            (
                limited(&lim("rate = 1\nper = \"second\"\nkey = [\"client_ip\", \"claim:roles\"]"), "[\"l\"]", public),
                "limits.l.key[1]",
            ),
            (limited(&lim(&format!("{ok}\nstore = \"redis\"")), "[\"l\"]", public), "limits.l.store"),
            (limited(&lim(&format!("{ok}\non_store_error = \"maybe\"")), "[\"l\"]", public), "limits.l.on_store_error"),
            (limited(&format!("[limits.\"a b\"]\n{ok}"), "[\"a b\"]", public), "limits.a b"),
            (limited(&lim(ok), "[\"m\"]", public), "routes[0].limits[0]"),
            (limited(&lim(ok), "[\"l\", \"l\"]", public), "routes[0].limits[1]"),
            (limited(&lim("rate = 1\nper = \"second\"\nkey = \"subject\""), "[\"l\"]", public), "routes[0].limits[0]"),
            (
                format!(
                    "{up}[[routes]]\nprefix = \"/a\"\nupstream = \"u\"\naccess = \"public\"\n\
                     [[routes]]\nprefix = \"/a/admin\"\nmethods = [\"POST\"]\nupstream = \"u\"\naccess = {{ roles = [\"admin\"] }}"
                ),
                "routes[1].methods",
            ),
        ]);
        for (text, field) in cases {
            let config: Config = toml::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            let err = Plan::compile(keyed_unless_jwt(config, &dir, &text)).unwrap_err();
            assert_eq!(err.field, field, "{text}\n{err}");
        }
        // The default routes need a token, so the default needs a key.
        assert_eq!(Plan::compile(Config::default()).unwrap_err().field, "jwt");
    }

    fn keyed_unless_jwt(config: Config, dir: &tempfile::TempDir, text: &str) -> Config {
        if text.contains("[jwt]") { config } else { keyed(config, dir) }
    }
}
