//! Prometheus metrics: per route and per endpoint, counted with atomics on the
//! hot path (handles are made once per route; only per-endpoint counters are
//! looked up, under a read lock).

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::registry::{Metric, Registry};
use tower_gateway::Limiter;
use tower_gateway::balance::{Endpoint, Endpoints};
use tower_gateway::rate_limit::LimitStats;
use tower_gateway::upgrade::Tunnels;
use tower_gateway_auth::{FetchOutcome, KeySourceStats, RemoteKeys};

use crate::alive::Alive;

/// A route's name in labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteLabels {
    route: Arc<str>,
}

/// An upstream's name in labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: Arc<str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StatusLabels {
    route: Arc<str>,
    status: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabels {
    route: Arc<str>,
    reason: &'static str,
}

/// An exemplar's labels: the trace of the request observed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TraceLabels {
    trace_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// The configuration's generation and hash.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ConfigLabels {
    generation: u64,
    hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct IssuerLabels {
    issuer: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct IssuerOutcomeLabels {
    issuer: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct UpstreamReasonLabels {
    upstream: Arc<str>,
    reason: &'static str,
}

/// An endpoint as a label value, without allocating: the `Arc` the balancer holds.
#[derive(Debug, Clone)]
struct EndpointName(Arc<Endpoint>);

impl PartialEq for EndpointName {
    fn eq(&self, other: &Self) -> bool {
        self.0.authority() == other.0.authority() && self.0.scheme() == other.0.scheme()
    }
}

impl Eq for EndpointName {}

impl std::hash::Hash for EndpointName {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.authority().as_str().hash(state);
    }
}

impl EncodeLabelValue for EndpointName {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        write!(encoder, "{}", self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EndpointLabels {
    upstream: Arc<str>,
    endpoint: EndpointName,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LimitLabels {
    limit: Arc<str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DecisionLabels {
    limit: Arc<str>,
    outcome: &'static str,
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// All of the gateway's metrics.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<StatusLabels, Counter>,
    latency: Family<RouteLabels, HistogramWithExemplars<TraceLabels>>,
    upstream_latency: Family<UpstreamLabels, HistogramWithExemplars<TraceLabels>>,
    upstream: Family<EndpointLabels, Counter>,
    retries: Family<RouteLabels, Counter>,
    upstream_errors: Family<UpstreamReasonLabels, Counter>,
    auth_rejections: Family<ReasonLabels, Counter>,
    endpoints: Family<UpstreamLabels, Gauge>,
    ejected: Family<UpstreamLabels, Gauge>,
    unrouted: Counter,
    overloaded: Counter,
    connections: Gauge,
    connections_refused: Counter,
    client_connections_refused: Counter,
    connections_closed_idle: Counter,
    connections_parked: Gauge,
    tls_handshakes: Family<OutcomeLabels, Counter>,
    tls_reloads: Family<OutcomeLabels, Counter>,
    websockets: Gauge,
    websocket_upgrades: Family<OutcomeLabels, Counter>,
    websockets_closed_idle: Counter,
    websockets_closed_at_deadline: Counter,
    websockets_closed_route_removed: Counter,
    limit_decisions: Family<DecisionLabels, Counter>,
    limit_store_errors: Family<LimitLabels, Counter>,
    config_reloads: Family<OutcomeLabels, Counter>,
    config_info: Family<ConfigLabels, Gauge>,
    config_alive: Family<KindLabels, Gauge>,
    /// Each limit's limiter and its counts at the last scrape: scrapes bring
    /// the limiters' own counts over, one at a time.
    limits_seen: std::sync::Mutex<std::collections::HashMap<Arc<str>, (Limiter, LimitStats)>>,
    key_fetches: Family<IssuerOutcomeLabels, Counter>,
    keys: Family<IssuerLabels, Gauge>,
    key_set_age: Family<IssuerLabels, Gauge>,
    keys_skipped: Family<IssuerLabels, Counter>,
    /// Each issuer's key source as last scraped, and what it had counted then.
    keys_seen: std::sync::Mutex<std::collections::HashMap<String, (RemoteKeys, KeySourceStats)>>,
    /// Scrapes read the tunnels' counts one at a time.
    scrape: std::sync::Mutex<()>,
}

/// The metric handles of one route.
#[derive(Debug, Clone)]
pub(crate) struct RouteMetrics {
    route: Arc<str>,
    upstream: Arc<str>,
    by_status: [Counter; 5],
    latency: HistogramWithExemplars<TraceLabels>,
    upstream_latency: HistogramWithExemplars<TraceLabels>,
    retries: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every family.
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("gateway");
        let histogram = (|| HistogramWithExemplars::new(exponential_buckets(0.000_5, 2.0, 16)))
            as fn() -> HistogramWithExemplars<TraceLabels>;
        let latency = Family::<RouteLabels, _>::new_with_constructor(histogram);
        let upstream_latency = Family::<UpstreamLabels, _>::new_with_constructor(histogram);
        let requests: Family<StatusLabels, Counter> =
            registered(&mut registry, "requests", "Requests answered, by route and status class");
        registry.register("request_duration_seconds", "Time to the response head, by route", latency.clone());
        registry.register(
            "upstream_request_duration_seconds",
            "Time to the response head of requests forwarded, retries included, by upstream",
            upstream_latency.clone(),
        );
        let upstream: Family<EndpointLabels, Counter> =
            registered(&mut registry, "upstream_requests", "Requests answered through each endpoint of each upstream");
        let retries: Family<RouteLabels, Counter> = registered(&mut registry, "retries", "Retries sent, by route");
        let upstream_errors: Family<UpstreamReasonLabels, Counter> =
            registered(&mut registry, "upstream_errors", "Upstream failures by upstream and kind");
        let auth_rejections: Family<ReasonLabels, Counter> =
            registered(&mut registry, "auth_rejections", "Requests refused by the route's access policy, by reason");
        let endpoints: Family<UpstreamLabels, Gauge> =
            registered(&mut registry, "endpoints", "Endpoints known, by upstream");
        let ejected: Family<UpstreamLabels, Gauge> =
            registered(&mut registry, "ejected_endpoints", "Endpoints ejected for refusing connections, by upstream");
        let unrouted: Counter = registered(&mut registry, "unrouted_requests", "Requests matching no route");
        let overloaded: Counter =
            registered(&mut registry, "overloaded_requests", "Requests refused at the concurrency limit");
        let connections: Gauge = registered(&mut registry, "connections", "Client connections open");
        let connections_refused: Counter =
            registered(&mut registry, "connections_refused", "Client connections refused at their listener's cap");
        let client_connections_refused: Counter = registered(
            &mut registry,
            "client_connections_refused",
            "Client connections refused at max_connections_per_client",
        );
        let connections_closed_idle: Counter = registered(
            &mut registry,
            "connections_closed_idle",
            "Client connections closed for sending no request in time, or idle under pressure",
        );
        let connections_parked: Gauge = registered(
            &mut registry,
            "connections_parked",
            "Client connections waiting for their client with no buffer (idle HTTP/1.1, or no request yet)",
        );
        let tls_handshakes: Family<OutcomeLabels, Counter> =
            registered(&mut registry, "tls_handshakes", "TLS handshakes by outcome (ok, failed, timed_out)");
        let tls_reloads: Family<OutcomeLabels, Counter> =
            registered(&mut registry, "tls_reloads", "Certificate reloads by outcome (ok, refused)");
        let websockets: Gauge =
            registered(&mut registry, "websockets", "WebSocket connections open through the gateway");
        let websocket_upgrades: Family<OutcomeLabels, Counter> = registered(
            &mut registry,
            "websocket_upgrades",
            "WebSocket upgrades by outcome (opened: sent upstream; refused: at websocket_max_connections or its client's cap)",
        );
        let websockets_closed_idle: Counter = registered(
            &mut registry,
            "websockets_closed_idle",
            "WebSocket connections closed for carrying no byte within websocket_idle_timeout_ms",
        );
        let websockets_closed_at_deadline: Counter = registered(
            &mut registry,
            "websockets_closed_at_deadline",
            "WebSocket connections closed at websocket_max_lifetime_ms or when the token that opened them expired",
        );
        let websockets_closed_route_removed: Counter = registered(
            &mut registry,
            "websockets_closed_route_removed",
            "WebSocket connections closed websocket_removed_route_grace_ms after a reload removed their route",
        );
        let limit_decisions: Family<DecisionLabels, Counter> = registered(
            &mut registry,
            "rate_limit_decisions",
            "Rate-limit decisions by limit and outcome (allowed, limited, fallback_allowed, fallback_limited, unavailable)",
        );
        let limit_store_errors: Family<LimitLabels, Counter> = registered(
            &mut registry,
            "rate_limit_store_errors",
            "Rate-limit store calls that failed or took too long, by limit",
        );
        let config_reloads: Family<OutcomeLabels, Counter> =
            registered(&mut registry, "config_reloads", "Configuration reloads by outcome (applied, refused)");
        let config_info: Family<ConfigLabels, Gauge> =
            registered(&mut registry, "config_info", "The configuration served: its generation and hash");
        let key_fetches: Family<IssuerOutcomeLabels, Counter> = registered(
            &mut registry,
            "jwt_key_fetches",
            "Fetches of an issuer's published keys, by outcome (ok, unreachable, timeout, status, too_large, redirect, invalid)",
        );
        let keys: Family<IssuerLabels, Gauge> =
            registered(&mut registry, "jwt_keys", "Keys held of an issuer's published set");
        registry.register(
            "trace_spans",
            "Spans finished, by outcome: exported, failed (the collector refused or was unreachable), dropped (the queue was full)",
            demo_common::telemetry::span_counts().family(),
        );
        let key_set_age: Family<IssuerLabels, Gauge> = registered(
            &mut registry,
            "jwt_key_set_age_seconds",
            "Age of the key set held of an issuer (-1 before the first fetch)",
        );
        let keys_skipped: Family<IssuerLabels, Counter> =
            registered(&mut registry, "jwt_keys_skipped", "Published keys skipped as unusable, by issuer");
        let config_alive: Family<KindLabels, Gauge> = registered(
            &mut registry,
            "config_alive",
            "What generations of the configuration have alive (tables, upstreams, dns_watchers)",
        );
        Self {
            registry,
            config_reloads,
            config_info,
            config_alive,
            requests,
            latency,
            upstream_latency,
            upstream,
            retries,
            upstream_errors,
            auth_rejections,
            endpoints,
            ejected,
            unrouted,
            overloaded,
            connections,
            connections_refused,
            client_connections_refused,
            connections_closed_idle,
            connections_parked,
            tls_handshakes,
            tls_reloads,
            websockets,
            websocket_upgrades,
            websockets_closed_idle,
            websockets_closed_at_deadline,
            websockets_closed_route_removed,
            limit_decisions,
            limit_store_errors,
            limits_seen: std::sync::Mutex::default(),
            key_fetches,
            keys,
            key_set_age,
            keys_skipped,
            keys_seen: std::sync::Mutex::default(),
            scrape: std::sync::Mutex::new(()),
        }
    }

    /// The handles for `route`, which forwards to `upstream`, made once.
    pub(crate) fn route(&self, route: &Arc<str>, upstream: &Arc<str>) -> RouteMetrics {
        let status = |status| self.requests.get_or_create(&StatusLabels { route: route.clone(), status }).clone();
        RouteMetrics {
            route: route.clone(),
            upstream: upstream.clone(),
            by_status: STATUS_CLASSES.map(status),
            latency: self.latency.get_or_create(&RouteLabels { route: route.clone() }).clone(),
            upstream_latency: self
                .upstream_latency
                .get_or_create(&UpstreamLabels { upstream: upstream.clone() })
                .clone(),
            retries: self.retries.get_or_create(&RouteLabels { route: route.clone() }).clone(),
        }
    }

    /// Counts a response of `route`.
    pub(crate) fn record(&self, route: &RouteMetrics, observed: Observed<'_>) {
        let class = usize::from(observed.status / 100).clamp(1, 5) - 1;
        route.by_status[class].inc();
        // The request's trace, when sampled, as the bucket's exemplar (OpenMetrics).
        let trace = tower_gateway::telemetry::span_context(&tracing::Span::current())
            .filter(|trace| trace.is_sampled())
            .map(|trace| TraceLabels { trace_id: trace.trace_id().to_string() });
        let seconds = observed.latency.as_secs_f64();
        if observed.endpoint.is_some() {
            route.upstream_latency.observe(seconds, trace.clone(), None);
        }
        route.latency.observe(seconds, trace, None);
        if observed.attempts > 1 {
            route.retries.inc_by(u64::from(observed.attempts - 1));
        }
        if let Some(endpoint) = observed.endpoint {
            let labels = EndpointLabels { upstream: route.upstream.clone(), endpoint: EndpointName(endpoint.clone()) };
            self.upstream.get_or_create(&labels).inc();
        }
        if let Some(kind) = observed.upstream_error {
            let labels = UpstreamReasonLabels { upstream: route.upstream.clone(), reason: kind };
            self.upstream_errors.get_or_create(&labels).inc();
        }
        if let Some(reason) = observed.auth_rejection {
            self.auth_rejections.get_or_create(&ReasonLabels { route: route.route.clone(), reason }).inc();
        }
    }

    /// Counts a request that matched no route.
    pub(crate) fn unrouted(&self) {
        self.unrouted.inc();
    }

    /// Counts a request refused at the concurrency limit.
    pub(crate) fn overloaded(&self) {
        self.overloaded.inc();
    }

    /// The gauge of open client connections.
    pub(crate) fn connections(&self) -> &Gauge {
        &self.connections
    }

    /// Counts a connection refused at the cap.
    pub(crate) fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    /// Counts a connection refused at its client's cap.
    pub(crate) fn client_connection_refused(&self) {
        self.client_connections_refused.inc();
    }

    /// Counts a TLS handshake: `ok`, `failed`, `timed_out` or `evicted` (closed to
    /// make room in a full handshake budget).
    pub(crate) fn tls_handshake(&self, outcome: &'static str) {
        self.tls_handshakes.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// Counts a certificate reload: `ok` or `refused`.
    pub(crate) fn tls_reload(&self, ok: bool) {
        let outcome = if ok { "ok" } else { "refused" };
        self.tls_reloads.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// Counts a configuration reload: applied or refused.
    pub(crate) fn config_reload(&self, applied: bool) {
        let outcome = if applied { "applied" } else { "refused" };
        self.config_reloads.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// Says that generation `generation` (`hash`) is served now, and `previous` no longer.
    pub(crate) fn config_served(&self, generation: u64, hash: String, previous: Option<(u64, String)>) {
        if let Some((generation, hash)) = previous {
            self.config_info.remove(&ConfigLabels { generation, hash });
        }
        self.config_info.get_or_create(&ConfigLabels { generation, hash }).set(1);
    }

    /// Counts a connection closed for idling.
    pub(crate) fn connection_closed_idle(&self) {
        self.connections_closed_idle.inc();
    }

    /// Counts a connection parked (holding no buffer while it waits for its
    /// client), or no longer.
    pub(crate) fn connection_parked(&self, parked: bool) {
        if parked {
            self.connections_parked.inc();
        } else {
            self.connections_parked.dec();
        }
    }

    /// Brings the counters of `limits` up to what the limiters counted.
    fn sync_limits(&self, limits: &[Limiter]) {
        let mut seen = self.limits_seen.lock().unwrap_or_else(|e| e.into_inner());
        for limiter in limits {
            let limit = limiter.name().clone();
            let now = limiter.stats();
            match seen.get(&limit) {
                Some((same, before)) if same.is_same(limiter) => self.count_limit(&limit, *before, now),
                // Made anew by a reload: what the one before counted since the
                // last scrape, then the new one's from zero.
                Some((old, before)) => {
                    self.count_limit(&limit, *before, old.stats());
                    self.count_limit(&limit, LimitStats::default(), now);
                }
                None => self.count_limit(&limit, LimitStats::default(), now),
            }
            seen.insert(limit, (limiter.clone(), now));
        }
    }

    /// Adds what a limiter counted between `before` and `now`.
    fn count_limit(&self, limit: &Arc<str>, before: LimitStats, now: LimitStats) {
        for (outcome, then, total) in [
            ("allowed", before.allowed, now.allowed),
            ("limited", before.limited, now.limited),
            ("fallback_allowed", before.fallback_allowed, now.fallback_allowed),
            ("fallback_limited", before.fallback_limited, now.fallback_limited),
            ("unavailable", before.unavailable, now.unavailable),
        ] {
            let labels = DecisionLabels { limit: limit.clone(), outcome };
            self.limit_decisions.get_or_create(&labels).inc_by(total.saturating_sub(then));
        }
        let errors = now.store_errors.saturating_sub(before.store_errors);
        self.limit_store_errors.get_or_create(&LimitLabels { limit: limit.clone() }).inc_by(errors);
    }

    /// Brings the key-source metrics up to what `sources` counted; a source made
    /// anew by a reload counts from zero on top of what the one before counted.
    fn sync_key_sources(&self, sources: &[(Option<String>, RemoteKeys)]) {
        let mut seen = self.keys_seen.lock().unwrap_or_else(|e| e.into_inner());
        for (issuer, source) in sources {
            let issuer = issuer.clone().unwrap_or_else(|| "any".into());
            let now = source.stats();
            let before = match seen.get(&issuer) {
                Some((same, before)) if same.is_same(source) => Some(before.clone()),
                _ => None,
            };
            for outcome in FetchOutcome::ALL {
                let then = before.as_ref().map_or(0, |b| b.fetched(outcome));
                let labels = IssuerOutcomeLabels { issuer: issuer.clone(), outcome: outcome.label() };
                self.key_fetches.get_or_create(&labels).inc_by(now.fetched(outcome).saturating_sub(then));
            }
            let labels = IssuerLabels { issuer: issuer.clone() };
            let skipped = now.skipped.saturating_sub(before.as_ref().map_or(0, |b| b.skipped));
            self.keys_skipped.get_or_create(&labels).inc_by(skipped);
            self.keys.get_or_create(&labels).set(i64::try_from(now.keys).unwrap_or(i64::MAX));
            let age = now.age.map_or(-1, |age| i64::try_from(age.as_secs()).unwrap_or(i64::MAX));
            self.key_set_age.get_or_create(&labels).set(age);
            seen.insert(issuer, (source.clone(), now));
        }
    }

    /// The text exposition, with the endpoint gauges of `upstreams`, the
    /// counts of `limits` and those of `tunnels` read now.
    pub(crate) fn encode<'a>(
        &self,
        upstreams: impl Iterator<Item = (&'a Arc<str>, &'a Endpoints)>,
        limits: &[Limiter],
        tunnels: &Tunnels,
        alive: &Alive,
        key_sources: &[(Option<String>, RemoteKeys)],
    ) -> String {
        self.sync_limits(limits);
        self.sync_key_sources(key_sources);
        for (kind, count) in
            [("tables", &alive.tables), ("upstreams", &alive.upstreams), ("dns_watchers", &alive.dns_watchers)]
        {
            let count = count.load(std::sync::atomic::Ordering::Relaxed);
            self.config_alive.get_or_create(&KindLabels { kind }).set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        {
            let _one_at_a_time = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
            let stats = tunnels.stats();
            catch_up(&self.websocket_upgrades.get_or_create(&OutcomeLabels { outcome: "opened" }), stats.opened);
            catch_up(&self.websocket_upgrades.get_or_create(&OutcomeLabels { outcome: "refused" }), stats.refused);
            catch_up(&self.websockets_closed_idle, stats.closed_idle);
            catch_up(&self.websockets_closed_at_deadline, stats.closed_at_deadline);
            catch_up(&self.websockets_closed_route_removed, stats.closed_by_group);
            self.websockets.set(i64::try_from(tunnels.active()).unwrap_or(i64::MAX));
        }
        for (upstream, endpoints) in upstreams {
            let labels = UpstreamLabels { upstream: upstream.clone() };
            self.endpoints.get_or_create(&labels).set(endpoints.len() as i64);
            self.ejected.get_or_create(&labels).set(endpoints.ejected() as i64);
        }
        let mut text = String::new();
        if let Err(err) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(%err, "cannot encode metrics");
        }
        text
    }
}

/// Brings `counter` up to `total`, counted elsewhere (scrapes are one at a time).
/// A metric of type `M`, registered as `name` with `help`.
fn registered<M: Metric + Clone + Default>(registry: &mut Registry, name: &str, help: &str) -> M {
    let metric = M::default();
    registry.register(name, help, metric.clone());
    metric
}

fn catch_up(counter: &Counter, total: u64) {
    counter.inc_by(total.saturating_sub(counter.get()));
}

/// What is counted of one response.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Observed<'a> {
    /// Its status code.
    pub(crate) status: u16,
    /// Time to its head.
    pub(crate) latency: Duration,
    /// Attempts made.
    pub(crate) attempts: u32,
    /// The endpoint that answered.
    pub(crate) endpoint: Option<&'a Arc<Endpoint>>,
    /// The upstream failure, if any.
    pub(crate) upstream_error: Option<&'static str>,
    /// Why auth refused it, if it did.
    pub(crate) auth_rejection: Option<&'static str>,
}

impl RouteMetrics {
    /// The route these handles count for.
    pub(crate) fn name(&self) -> &Arc<str> {
        &self.route
    }

    /// The upstream the route forwards to.
    pub(crate) fn upstream(&self) -> &Arc<str> {
        &self.upstream
    }
}
