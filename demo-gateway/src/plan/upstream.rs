//! Upstreams: each one's endpoints (listed or from DNS), connection pool,
//! timeout, balancer and retries.

use std::time::Duration;

use tower::ServiceBuilder;
use tower_gateway::balance::Endpoints;
use tower_gateway::balance::dns::{Discovered, Source};
use tower_gateway::{Proxy, RetryLayer, RetryPolicy, RoundRobinLayer, TimeoutLayer};

use super::positive;
use crate::alive::Counted;
use crate::config::{ConfigError, RetryConfig, UpstreamConfig};
use crate::routes::{Upstream, UpstreamService};
use crate::shared::Shared;

pub(super) fn retry_layer(at: &str, retry: &RetryConfig) -> Result<RetryLayer, ConfigError> {
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
    for (j, method) in retry.grpc_methods.iter().enumerate() {
        let well_formed = method.strip_prefix('/').and_then(|m| m.split_once('/')).is_some_and(|(service, name)| {
            !service.is_empty() && !name.is_empty() && !name.contains('/') && !method.contains(char::is_whitespace)
        });
        if !well_formed {
            return Err(ConfigError::new(
                format!("{at}.retry.grpc_methods[{j}]"),
                format!("{method:?} is not /package.Service/Method"),
            ));
        }
    }
    if retry.grpc_statuses.is_empty() != retry.grpc_methods.is_empty() {
        return Err(ConfigError::new(
            format!("{at}.retry.grpc_statuses"),
            "give grpc_statuses and grpc_methods together: the statuses to retry, for these methods",
        ));
    }
    let policy = RetryPolicy::new()
        .retry_grpc(retry.grpc_statuses.iter().map(|s| s.code()), retry.grpc_methods.iter().cloned())
        .max_attempts(retry.attempts)
        .retry_idempotency_key(retry.idempotency_key)
        .backoff(backoff, Duration::from_millis(retry.max_backoff_ms), retry.jitter)
        .map_err(|e| ConfigError::new(format!("{at}.retry"), e))?;
    Ok(RetryLayer::new(policy).max_replay_body(retry.max_replay_body_bytes))
}

/// The upstream `name`, its DNS name (if it has one) watched for as long as it lives.
pub(super) fn upstream_of(name: &str, config: &UpstreamConfig, shared: &Shared) -> Result<Upstream, ConfigError> {
    let at = format!("upstreams.{name}");
    let source = match (&config.dns, config.endpoints.is_empty()) {
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
            Source::Dns { name: dns.clone(), every }
        }
        (None, false) => {
            for (j, endpoint) in config.endpoints.iter().enumerate() {
                Endpoints::new([endpoint]).map_err(|e| ConfigError::new(format!("{at}.endpoints[{j}]"), e))?;
            }
            Source::Static(config.endpoints.clone())
        }
    };
    // A DNS name's watcher starts here, its first lookup at once
    // (`Plan::resolve_dns` waits for one before a plan serves), and stops when
    // the upstream is dropped: a field refused below stops it at once. The
    // balancer below shares its set.
    let discovered = Discovered::new(source).map_err(|e| ConfigError::new(format!("{at}.endpoints"), e))?;
    let mut proxy = Proxy::builder()
        .connect_timeout(positive(&format!("{at}.connect_timeout_ms"), config.connect_timeout_ms)?)
        .tunnels(shared.tunnels.clone())
        .http2(config.http2);
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
            RoundRobinLayer::new(discovered.endpoints().clone())
                .eject_after(config.eject_after)
                .eject_after_gateway_failures(config.eject_after_gateway_failures)
                .max_ejected_percent(config.max_ejected_percent)
                .cool_down(Duration::from_millis(config.cool_down_ms)),
        )
        .layer(timeout)
        .service(proxy);
    Ok(Upstream {
        name: name.into(),
        http2: config.http2,
        _watching: discovered.is_watched().then(|| Counted::new(&shared.alive.dns_watchers)),
        discovered,
        service,
        _alive: Counted::new(&shared.alive.upstreams),
    })
}
