//! A route's matches beyond its path and its filters, checked and built: hosts,
//! headers and query parameters; header modifiers; the rewrite; the target
//! (one upstream, a weighted split, or a redirect); timeouts and the mirror.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Request, StatusCode};
use tower::{Layer, ServiceExt};
use tower_gateway::mirror::{MirrorBody, MirrorLayer, Tee};
use tower_gateway::modify_headers::{
    HeaderModifier, ModifyRequestHeadersLayer, ModifyResponseHeadersLayer, ProtectedHeader,
};
use tower_gateway::split::{Split, Sticky, hash_key};
use tower_gateway::timeout::AttemptTimeout;
use tower_gateway::{StripPrefixLayer, TimeoutLayer};
use tower_gateway_auth::{Authenticated, Authenticator};

use super::positive;
use super::stack::stacked;
use crate::config::{
    Access, ConfigError, HeaderMatchConfig, HeaderModifierConfig, MatchType, PathModifier, PersistenceType,
    QueryMatchConfig, RedirectScheme, RouteConfig,
};
use crate::routes::matching::{QueryMatch, header_regex};
use crate::routes::{HostMatch, Matcher, Redirect, RedirectPath, RouteBody, Stack, Upstream};

/// A route's path or prefix, canonical and below `/`, without its trailing `/`.
pub(super) fn path_field<'a>(at: &str, field: &str, value: &'a str) -> Result<&'a str, ConfigError> {
    let layer = StripPrefixLayer::try_new(value).map_err(|e| ConfigError::new(format!("{at}.{field}"), e))?;
    if layer.prefix().is_empty() {
        return Err(ConfigError::new(format!("{at}.{field}"), "a route needs a path below '/'"));
    }
    Ok(value.trim_end_matches('/'))
}

/// `hostnames`, lower-cased: exact names and `*.` wildcards.
pub(super) fn hosts_of(at: &str, hostnames: &[String]) -> Result<Box<[HostMatch]>, ConfigError> {
    let mut hosts = Vec::with_capacity(hostnames.len());
    for (j, name) in hostnames.iter().enumerate() {
        let field = || format!("{at}.hostnames[{j}]");
        let lower = name.to_ascii_lowercase();
        let (wildcard, bare) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        // RFC 1123 labels: letters, digits and hyphens, no port, no IP literal.
        let label_ok =
            |l: &str| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if bare.is_empty() || bare.len() > 253 || !bare.split('.').all(label_ok) {
            return Err(ConfigError::new(
                field(),
                format!("{name:?} is not a hostname (letters, digits, '-' and '.', or '*.' and one)"),
            ));
        }
        let host =
            if wildcard { HostMatch::Wildcard(format!(".{bare}").into()) } else { HostMatch::Exact(bare.into()) };
        if hosts.contains(&host) {
            return Err(ConfigError::new(field(), format!("{name} is listed twice")));
        }
        hosts.push(host);
    }
    Ok(hosts.into())
}

pub(super) fn headers_of(
    at: &str,
    matches: &[HeaderMatchConfig],
) -> Result<Box<[crate::routes::matching::HeaderMatch]>, ConfigError> {
    use crate::routes::matching::HeaderMatch;
    let mut out = Vec::with_capacity(matches.len());
    for (j, m) in matches.iter().enumerate() {
        let field = |f: &str| format!("{at}.headers[{j}].{f}");
        let name = HeaderName::try_from(m.name.as_str())
            .map_err(|_| ConfigError::new(field("name"), format!("{:?} is not a header name", m.name)))?;
        if matches[..j].iter().any(|o| o.name.eq_ignore_ascii_case(&m.name)) {
            return Err(ConfigError::new(field("name"), format!("{name} is matched twice")));
        }
        out.push(match m.kind {
            MatchType::Exact => {
                let value = HeaderValue::try_from(m.value.as_str())
                    .map_err(|_| ConfigError::new(field("value"), "not a header value"))?;
                HeaderMatch::Exact(name, value)
            }
            MatchType::RegularExpression => {
                let re = header_regex(&m.value).map_err(|e| ConfigError::new(field("value"), e))?;
                HeaderMatch::Regex(name, Arc::new(re))
            }
        });
    }
    Ok(out.into())
}

pub(super) fn query_of(at: &str, matches: &[QueryMatchConfig]) -> Result<Box<[QueryMatch]>, ConfigError> {
    let mut out: Vec<QueryMatch> = Vec::with_capacity(matches.len());
    for (j, m) in matches.iter().enumerate() {
        if m.name.is_empty() {
            return Err(ConfigError::new(format!("{at}.query_params[{j}].name"), "must not be empty"));
        }
        if out.iter().any(|(n, _)| **n == *m.name) {
            return Err(ConfigError::new(
                format!("{at}.query_params[{j}].name"),
                format!("{} is matched twice", m.name),
            ));
        }
        out.push((m.name.as_str().into(), m.value.as_str().into()));
    }
    Ok(out.into())
}

/// The headers the gateway owns: a modifier naming one is refused.
fn owned_headers(auth: Option<&Authenticator>) -> Vec<HeaderName> {
    let mut owned: Vec<HeaderName> = [
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-forwarded-prefix",
        "forwarded",
        "x-real-ip",
        "x-request-id",
        "traceparent",
        "tracestate",
    ]
    .into_iter()
    .map(HeaderName::from_static)
    .collect();
    // Even on a public route: a claim header set by configuration would look,
    // to the upstream, like an identity the gateway verified.
    owned.extend(
        auth.map(|a| a.identity_header_names().to_vec())
            .unwrap_or_else(|| ["x-user-id", "x-user-email"].into_iter().map(HeaderName::from_static).collect()),
    );
    owned
}

fn modifier_of(
    field: &str,
    config: &HeaderModifierConfig,
    auth: Option<&Authenticator>,
) -> Result<HeaderModifier, ConfigError> {
    let mut modifier = HeaderModifier::new();
    let name = |j: usize, list: &str, n: &str| {
        HeaderName::try_from(n)
            .map_err(|_| ConfigError::new(format!("{field}.{list}[{j}]"), format!("{n:?} is not a header name")))
    };
    let value = |j: usize, list: &str, v: &str| {
        HeaderValue::try_from(v)
            .map_err(|_| ConfigError::new(format!("{field}.{list}[{j}].value"), "not a header value"))
    };
    for (j, h) in config.set.iter().enumerate() {
        modifier = modifier.set(name(j, "set", &h.name)?, value(j, "set", &h.value)?);
    }
    for (j, h) in config.add.iter().enumerate() {
        modifier = modifier.add(name(j, "add", &h.name)?, value(j, "add", &h.value)?);
    }
    for (j, h) in config.remove.iter().enumerate() {
        modifier = modifier.remove(name(j, "remove", h)?);
    }
    let owned = owned_headers(auth);
    if let Some(name) = modifier.touching(&owned) {
        return Err(ConfigError::new(field, format!("{name} is the gateway's own header: it cannot be modified")));
    }
    Ok(modifier)
}

fn protected(field: &str, err: &ProtectedHeader) -> ConfigError {
    ConfigError::new(field, err.to_string())
}

/// The route's stack below its policy: its target, with the mirror and the
/// attempt timeout above it, and the request header modifier above those.
pub(super) fn target_of(
    at: &str,
    config: &RouteConfig,
    matcher: &Matcher,
    access: &Access,
    upstreams: &BTreeMap<&str, Arc<Upstream>>,
    auth: Option<&Authenticator>,
) -> Result<(Stack, Arc<str>), ConfigError> {
    let upstream = |field: String, name: &str| {
        upstreams.get(name).cloned().ok_or_else(|| {
            let known: Vec<&str> = upstreams.keys().copied().collect();
            ConfigError::new(field, format!("{name:?} is not one of {known:?}"))
        })
    };
    let given = [!config.upstream.is_empty(), !config.backend_refs.is_empty(), config.request_redirect.is_some()];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err(ConfigError::new(
            format!("{at}.upstream"),
            "give one of upstream, backend_refs or request_redirect",
        ));
    }
    if config.websocket {
        let named =
            std::iter::once(config.upstream.as_str()).chain(config.backend_refs.iter().map(|b| b.name.as_str()));
        if let Some(h2) = named.filter_map(|n| upstreams.get(n)).find(|u| u.http2) {
            let why = format!("upstream {} speaks HTTP/2, which carries no WebSocket upgrade here", h2.name);
            return Err(ConfigError::new(format!("{at}.websocket"), why));
        }
    }
    if config.session_persistence.is_some() && config.backend_refs.is_empty() {
        return Err(ConfigError::new(format!("{at}.session_persistence"), "needs backend_refs to choose among"));
    }
    let (mut svc, label): (Stack, Arc<str>) = if let Some(redirect) = &config.request_redirect {
        let field = format!("{at}.request_redirect");
        for (name, set) in [
            ("request_mirror", config.request_mirror.is_some()),
            ("url_rewrite", config.url_rewrite.is_some()),
            ("timeouts", config.timeouts.is_some()),
            ("request_header_modifier", config.request_header_modifier.is_some()),
            ("websocket", config.websocket),
        ] {
            if set {
                return Err(ConfigError::new(format!("{at}.{name}"), "a redirect forwards nothing"));
            }
        }
        let status = match redirect.status_code.unwrap_or(302) {
            code @ (301 | 302 | 303 | 307 | 308) => StatusCode::from_u16(code).expect("a redirect status"),
            other => {
                return Err(ConfigError::new(
                    format!("{field}.status_code"),
                    format!("{other} is not 301, 302, 303, 307 or 308"),
                ));
            }
        };
        let hostname = match &redirect.hostname {
            Some(h) => match &*hosts_of(&field, std::slice::from_ref(h))? {
                [HostMatch::Exact(h)] => Some(Arc::from(&**h)),
                _ => {
                    return Err(ConfigError::new(
                        format!("{field}.hostname"),
                        "a redirect names one host, no wildcard",
                    ));
                }
            },
            None => None,
        };
        if redirect.port == Some(0) {
            return Err(ConfigError::new(format!("{field}.port"), "must be above 0"));
        }
        let path = redirect.path.as_ref().map(|p| redirect_path(&format!("{field}.path"), p, matcher)).transpose()?;
        let scheme = redirect.scheme.map(|s| match s {
            RedirectScheme::Http => http::uri::Scheme::HTTP,
            RedirectScheme::Https => http::uri::Scheme::HTTPS,
        });
        let redirect = Redirect { scheme, hostname, port: redirect.port, path, status };
        (stacked(redirect), "redirect".into())
    } else if config.backend_refs.is_empty() {
        let upstream = upstream(format!("{at}.upstream"), &config.upstream)?;
        (stacked(upstream.service.clone()), upstream.name.clone())
    } else {
        let mut sides = Vec::with_capacity(config.backend_refs.len());
        let mut names = Vec::with_capacity(config.backend_refs.len());
        for (j, backend) in config.backend_refs.iter().enumerate() {
            let field = format!("{at}.backend_refs[{j}].name");
            if config.backend_refs[..j].iter().any(|b| b.name == backend.name) {
                return Err(ConfigError::new(field, format!("{} is listed twice", backend.name)));
            }
            let upstream = upstream(field, &backend.name)?;
            names.push(upstream.name.to_string());
            sides.push((stacked(upstream.service.clone()), backend.weight));
        }
        let mut split = Split::new(sides).map_err(|e| ConfigError::new(format!("{at}.backend_refs"), e))?;
        if let Some(persistence) = &config.session_persistence {
            let field = format!("{at}.session_persistence");
            let named = || {
                persistence
                    .session_name
                    .clone()
                    .filter(|n| !n.is_empty())
                    .ok_or_else(|| ConfigError::new(format!("{field}.session_name"), "name the header or cookie"))
            };
            let sticky = match persistence.kind {
                PersistenceType::Header => {
                    let name = named()?;
                    Sticky::Header(HeaderName::try_from(name.as_str()).map_err(|_| {
                        ConfigError::new(format!("{field}.session_name"), format!("{name:?} is not a header name"))
                    })?)
                }
                PersistenceType::Cookie => Sticky::Cookie(named()?.into()),
                PersistenceType::Subject => {
                    if *access == Access::Public {
                        return Err(ConfigError::new(field, "by subject needs a token: the route is public"));
                    }
                    Sticky::Custom(Arc::new(|_, extensions| {
                        extensions.get::<Authenticated>().map(|who| hash_key(who.sub.as_bytes()))
                    }))
                }
            };
            split = split.sticky(sticky);
        }
        (stacked(split), names.join("+").into())
    };
    if let Some(timeouts) = &config.timeouts
        && let Some(ms) = timeouts.backend_request_ms
    {
        let bound = AttemptTimeout(positive(&format!("{at}.timeouts.backend_request_ms"), ms)?);
        svc = stacked(svc.map_request(move |mut req: Request<RouteBody>| {
            req.extensions_mut().insert(bound);
            req
        }));
    }
    if let Some(mirror) = &config.request_mirror {
        let field = format!("{at}.request_mirror");
        if config.websocket {
            return Err(ConfigError::new(field, "a WebSocket route is not mirrored"));
        }
        if mirror.percent > 100 {
            return Err(ConfigError::new(format!("{field}.percent"), "at most 100"));
        }
        let shadow = upstream(format!("{field}.backend_ref"), &mirror.backend_ref)?;
        let shadow = shadow
            .service
            .clone()
            .map_request(|req: Request<MirrorBody>| req.map(RouteBody::new))
            .map_err(|never: Infallible| match never {});
        let primary = svc.map_request(|req: Request<Tee<RouteBody>>| req.map(RouteBody::new));
        svc = stacked(MirrorLayer::new(shadow).percent(mirror.percent).layer(primary));
    }
    if let Some(modifier) = &config.request_header_modifier {
        let field = format!("{at}.request_header_modifier");
        let layer =
            ModifyRequestHeadersLayer::new(modifier_of(&field, modifier, auth)?).map_err(|e| protected(&field, &e))?;
        svc = stacked(layer.layer(svc));
    }
    Ok((svc, label))
}

fn redirect_path(field: &str, path: &PathModifier, matcher: &Matcher) -> Result<RedirectPath, ConfigError> {
    Ok(match path {
        PathModifier::ReplaceFullPath(full) => {
            let full = path_field_or_root(field, "replace_full_path", full)?;
            RedirectPath::Full(full.into())
        }
        PathModifier::ReplacePrefixMatch(with) => {
            let Matcher::Prefix(matched) = matcher else {
                return Err(ConfigError::new(field, "replace_prefix_match needs a prefix route"));
            };
            let with = path_field_or_root(field, "replace_prefix_match", with)?;
            RedirectPath::Prefix { matched: matched.clone(), with: with.trim_end_matches('/').into() }
        }
    })
}

/// A canonical path, `/` allowed.
fn path_field_or_root<'a>(field: &str, name: &str, value: &'a str) -> Result<&'a str, ConfigError> {
    let _checked = StripPrefixLayer::try_new(value).map_err(|e| ConfigError::new(format!("{field}.{name}"), e))?;
    Ok(if value.trim_end_matches('/').is_empty() { "/" } else { value })
}

/// The rewrite of the path forwarded: `strip_prefix` (by default the matched
/// path), or `url_rewrite`.
pub(super) fn rewrite_of(at: &str, config: &RouteConfig, matcher: &Matcher) -> Result<StripPrefixLayer, ConfigError> {
    match (&config.strip_prefix, &config.url_rewrite) {
        (Some(_), Some(_)) => {
            Err(ConfigError::new(format!("{at}.url_rewrite"), "give strip_prefix or url_rewrite, not both"))
        }
        // `/`: nothing stripped, the path forwarded as it came (gRPC's).
        (Some(strip), None) if strip.trim_end_matches('/').is_empty() => Ok(StripPrefixLayer::new("/")),
        (Some(strip), None) => {
            let strip = path_field(at, "strip_prefix", strip)?;
            if !Matcher::Prefix(strip.into()).matches(matcher.path()) {
                return Err(ConfigError::new(
                    format!("{at}.strip_prefix"),
                    format!("{strip:?} is not a prefix of {:?}", matcher.path()),
                ));
            }
            Ok(StripPrefixLayer::new(strip))
        }
        (None, None) => Ok(matched(matcher)),
        (None, Some(rewrite)) => {
            let field = format!("{at}.url_rewrite.path");
            let layer = matched(matcher);
            match &rewrite.path {
                PathModifier::ReplacePrefixMatch(with) => {
                    if !matches!(matcher, Matcher::Prefix(_)) {
                        return Err(ConfigError::new(field, "replace_prefix_match needs a prefix route"));
                    }
                    layer.replace_prefix_with(with)
                }
                PathModifier::ReplaceFullPath(path) => layer.replace_full_path(path),
            }
            .map_err(|e| ConfigError::new(field, e))
        }
    }
}

/// A layer stripping the matched path (`/` for a virtual host's whole space).
fn matched(matcher: &Matcher) -> StripPrefixLayer {
    StripPrefixLayer::new(if matcher.path().is_empty() { "/" } else { matcher.path() })
}

/// The layers above the route's policy: its request timeout and its response
/// header modifier.
pub(super) fn outer_of(
    at: &str,
    config: &RouteConfig,
    auth: Option<&Authenticator>,
    mut svc: Stack,
) -> Result<Stack, ConfigError> {
    if let Some(modifier) = &config.response_header_modifier {
        let field = format!("{at}.response_header_modifier");
        let layer =
            ModifyResponseHeadersLayer::new(modifier_of(&field, modifier, auth)?).map_err(|e| protected(&field, &e))?;
        svc = stacked(layer.layer(svc));
    }
    if let Some(timeouts) = &config.timeouts
        && let Some(ms) = timeouts.request_ms
    {
        let bound: Duration = positive(&format!("{at}.timeouts.request_ms"), ms)?;
        svc = stacked(TimeoutLayer::new(bound).layer(svc));
    }
    Ok(svc)
}
