//! Routes: each one's match, access policy, limits and stack.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request};
use tokio::sync::Semaphore;
use tower::{Layer, ServiceExt};
use tower_gateway::rate_limit::{RateLimitLayer, ReadJsonLayer};
use tower_gateway::upgrade::{CloseAt, ReserveUpgradeLayer};
use tower_gateway_auth::{Authenticator, JwtAuthLayer};

use super::stack::stacked;
use super::traffic::{self, path_field};
use super::{BuiltLimit, Settings};
use crate::config::{Access, ConfigError, RouteConfig, RouteMethod};
use crate::routes::matching::could_take;
use crate::routes::{Conditions, Entry, Matcher, Route, RouteBody, Stack, Upstream};
use crate::shared::Shared;

/// `svc` behind `limits`, the first listed outermost; the JSON body is read just
/// before the first limit that needs it.
pub(super) fn limited(mut svc: Stack, limits: &[&BuiltLimit]) -> Stack {
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

pub(super) fn methods_of(at: &str, methods: &[RouteMethod]) -> Result<Option<Box<[Method]>>, ConfigError> {
    if methods.is_empty() {
        return Ok(None);
    }
    let mut parsed: Vec<Method> = Vec::with_capacity(methods.len());
    for (j, method) in methods.iter().enumerate() {
        let method = method.as_http();
        if parsed.contains(&method) {
            return Err(ConfigError::new(format!("{at}.methods[{j}]"), format!("{method} is listed twice")));
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
pub(super) fn strictness(access: &Access) -> u8 {
    match access {
        Access::Public => 0,
        Access::Token => 1,
        // Roles and scopes each ask a token and more of it.
        Access::Roles(_) | Access::Scopes(_) => 2,
    }
}

/// Refuses a route naming methods whose requests, asked with another method,
/// could be taken by a route with a weaker policy: a method-restricted route
/// must not open its path to a more lenient route by omission. `entries` are
/// in matching order; a route's index is its place in the configuration.
pub(super) fn check_fallthrough(routes: &[Route], entries: &[Entry]) -> Result<(), ConfigError> {
    const METHODS: [Method; 7] =
        [Method::GET, Method::HEAD, Method::POST, Method::PUT, Method::DELETE, Method::PATCH, Method::OPTIONS];
    for from in entries {
        let route = &routes[from.route];
        let Some(methods) = &route.conditions.methods else { continue };
        for method in METHODS.iter().filter(|m| !methods.contains(m)) {
            // The routes `Table::recognize` could pick for such a request, in
            // order, up to the first that surely would.
            for entry in entries {
                let Some(surely) = could_take(routes, entry, from, method) else { continue };
                let taker = &routes[entry.route];
                if strictness(&taker.access) < strictness(&route.access) {
                    return Err(ConfigError::new(
                        format!("routes[{}].methods", from.route),
                        format!(
                            "{method} {} falls through to routes[{}] ({}), more open than this route ({}): \
                             give the other methods a route of their own",
                            route.matcher.path(),
                            entry.route,
                            taker.access,
                            route.access
                        ),
                    ));
                }
                if surely {
                    break;
                }
            }
        }
    }
    Ok(())
}

/// What routes are built from: the rest of the generation, compiled first.
pub(super) struct Parts<'a> {
    pub(super) upstreams: &'a BTreeMap<&'a str, Arc<Upstream>>,
    pub(super) auth: Option<&'a Authenticator>,
    pub(super) limits: &'a BTreeMap<String, Arc<BuiltLimit>>,
    pub(super) shared: &'a Shared,
    pub(super) settings: &'a Settings,
    /// The routes of the generation before, if any: one of the same name
    /// hands its capacity share and WebSocket group on.
    pub(super) before: &'a [Route],
}

pub(super) fn route_of(at: &str, config: &RouteConfig, parts: &Parts<'_>) -> Result<Route, ConfigError> {
    let Parts { upstreams, auth, limits, shared, settings, before } = *parts;
    let matcher = match (&config.prefix, &config.path) {
        // A virtual host's whole space is a route of its own; with no host,
        // `/` would take every path and is refused.
        (Some(prefix), None) if !config.hostnames.is_empty() && prefix.trim_end_matches('/').is_empty() => {
            Matcher::Prefix("".into())
        }
        (Some(prefix), None) => Matcher::Prefix(path_field(at, "prefix", prefix)?.into()),
        (None, Some(path)) => Matcher::Path(path_field(at, "path", path)?.into()),
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(format!("{at}.path"), "give either prefix or path, not both"));
        }
        (None, None) => return Err(ConfigError::new(format!("{at}.prefix"), "give a prefix or a path to match")),
    };
    let methods = methods_of(at, &config.methods)?;
    let hosts = traffic::hosts_of(at, &config.hostnames)?;
    let conditions = Conditions {
        methods,
        headers: traffic::headers_of(at, &config.headers)?,
        query: traffic::query_of(at, &config.query_params)?,
    };
    let access = config.access.clone().ok_or_else(|| {
        ConfigError::new(
            format!("{at}.access"),
            r#"required: "public", "token", { roles = ["..."] } or { scopes = ["..."] }"#,
        )
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
        (Access::Scopes(scopes), Some(auth)) => {
            if scopes.is_empty() || scopes.iter().any(String::is_empty) {
                return Err(ConfigError::new(format!("{at}.access.scopes"), "name at least one scope, none empty"));
            }
            Some(JwtAuthLayer::new(auth.clone()).all_scopes(scopes.iter().cloned()))
        }
        (_, None) => unreachable!("an authenticator is built whenever a route needs a token"),
    };
    let name: Arc<str> = match &config.name {
        Some(name) => name.as_str().into(),
        // Unique as the matches are: `api.example.com/a/* GET,HEAD if x-canary ?debug`.
        None => {
            let star = if matches!(matcher, Matcher::Prefix(_)) { "/*" } else { "" };
            let hosts: Vec<String> = hosts.iter().map(ToString::to_string).collect();
            let mut name = format!("{}{}{star}", hosts.join(","), matcher.path());
            if let Some(methods) = &conditions.methods {
                let names: Vec<&str> = methods.iter().map(Method::as_str).collect();
                name.push_str(&format!(" {}", names.join(",")));
            }
            if !conditions.headers.is_empty() {
                let names: Vec<&str> = config.headers.iter().map(|h| h.name.as_str()).collect();
                name.push_str(&format!(" if {}", names.join(",")));
            }
            if !conditions.query.is_empty() {
                let names: Vec<&str> = config.query_params.iter().map(|q| q.name.as_str()).collect();
                name.push_str(&format!(" ?{}", names.join(",")));
            }
            name.into()
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
    // A route that stays across a reload keeps its share of capacity (requests
    // in flight on the old generation count against the new one's too) and its
    // WebSockets' group.
    let kept = before.iter().find(|r| r.name == name);
    let tunnels = config.websocket.then(|| kept.and_then(|r| r.tunnels.clone()).unwrap_or_default());
    let (mut svc, upstream_label) = traffic::target_of(at, config, &matcher, &access, upstreams, auth)?;
    if let Some(group) = &tunnels {
        // Places among the tunnels before the upstream's retries and balancer: a
        // full set is answered `503` once, neither retried nor counted against
        // an endpoint. Behind the auth layer: the tunnel of a request with a
        // token is closed when the token expires.
        let reserve = ReserveUpgradeLayer::new(shared.tunnels.clone()).group(group.clone());
        svc = stacked(reserve.layer(svc).map_request(|mut req: Request<RouteBody>| {
            if let Some(exp) = req.extensions().get::<tower_gateway_auth::Authenticated>().map(|who| who.exp) {
                let at = std::time::UNIX_EPOCH + Duration::from_secs(exp);
                req.extensions_mut().insert(CloseAt(at));
            }
            req
        }));
    }
    svc = limited(svc, &inside);
    if let Some(layer) = auth_layer {
        svc = stacked(layer.layer(svc));
    }
    svc = limited(svc, &outside);
    // A redirect is made from the path the client sent: nothing is forwarded.
    if config.request_redirect.is_none() {
        svc = stacked(traffic::rewrite_of(at, config, &matcher)?.layer(svc));
    }
    let svc = traffic::outer_of(at, config, auth, svc)?;
    let limits = config.limits.iter().map(|l| Arc::from(l.as_str())).collect();
    Ok(Route {
        metrics: shared.metrics.route(&name, &upstream_label),
        name,
        matcher,
        hosts,
        conditions,
        access,
        limits,
        websocket: config.websocket,
        tunnels,
        svc,
        // A share of the gateway's capacity per route: a route whose requests are
        // slow (trickled bodies, a stuck upstream) is refused at its share while
        // the others are served.
        share: kept
            .map_or_else(|| Arc::new(Semaphore::new(settings.max_route_concurrent_requests)), |r| r.share.clone()),
    })
}
