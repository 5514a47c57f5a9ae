//! The server's settings: listeners, TLS, connection limits, timeouts, CORS and
//! the client's address.

use std::time::Duration;

use http::HeaderValue;
use tower_gateway::client_addr::{ClientAddrLayer, ForwardedHeader, TrustedProxies};
use tower_gateway::upgrade::Tunnels;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

use super::{Settings, TlsSettings, at_least_one, positive};
use crate::config::{Config, ConfigError, ForwardedHeaderName};

/// The settings of `config`; `loaded`, the TLS listener's of the generation
/// before, is taken as it is: the `tls` section only changes with a restart,
/// and its certificate reloads on its own (files caught mid-rotation do not
/// refuse a reload of the routes, nor are they read again for nothing).
pub(super) fn settings(config: &Config, loaded: Option<&TlsSettings>) -> Result<Settings, ConfigError> {
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
    let header = match config.forwarded_header {
        ForwardedHeaderName::XForwardedFor => ForwardedHeader::XForwardedFor,
        ForwardedHeaderName::Forwarded => ForwardedHeader::Forwarded,
    };
    let admin_listen = match &config.admin_listen {
        Some(addr) => Some(addr.parse().map_err(|e| ConfigError::new("admin_listen", format!("{addr:?}: {e}")))?),
        None => None,
    };
    let admin_token = match (&config.admin_token_file, admin_listen) {
        (None, _) => None,
        (Some(_), None) => {
            return Err(ConfigError::new(
                "admin_token_file",
                "the config endpoints are served on admin_listen: set it",
            ));
        }
        (Some(file), Some(_)) => {
            let token = tower_gateway_auth::read_secret_file(file)
                .map_err(|e| ConfigError::new("admin_token_file", format!("{}: {e}", file.display())))?;
            let token = String::from_utf8(token)
                .ok()
                .map(|t| t.trim().to_owned())
                .filter(|t| t.len() >= 16 && t.bytes().all(|b| b.is_ascii_graphic()))
                .ok_or_else(|| {
                    ConfigError::new("admin_token_file", "the token must be 16 or more printable characters")
                })?;
            Some(token.into())
        }
    };
    let tls = match (&config.tls, loaded) {
        (Some(_), Some(loaded)) => Some(loaded.clone()),
        (Some(tls), None) => Some(TlsSettings {
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
            redirect_serves_grpc: tls.redirect_serves_grpc,
            handshake_timeout: positive("tls.handshake_timeout_ms", tls.handshake_timeout_ms)?,
            max_handshakes: at_least_one("tls.max_handshakes", tls.max_handshakes)?,
            reload_every: positive("tls.reload_interval_ms", tls.reload_interval_ms)?,
        }),
        (None, _) => None,
    };
    Ok(Settings {
        admin_listen,
        admin_token,
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
