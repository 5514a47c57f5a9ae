//! A route that answers with a redirect instead of forwarding: the Gateway
//! API's `RequestRedirect` filter.
//!
//! Each part of the `Location` is the configured one or the request's own:
//! the scheme, the host (never a client-sent `X-Forwarded-Host`: the `Host`
//! the gateway routed on), the port (the scheme's own when the scheme
//! changes, else the request's), the path (replaced whole, or its matched
//! prefix replaced), and the query, kept.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::uri::Scheme;
use http::{HeaderValue, Request, Response, StatusCode, header};
use tower::Service;
use tower_gateway::error::json_error;
use tower_gateway::{Body, ClientScheme};

use super::RouteBody;

/// How a redirect's path is made from the request's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RedirectPath {
    /// This path in place of the whole path.
    Full(Arc<str>),
    /// This path in place of the route's matched prefix.
    Prefix { matched: Arc<str>, with: Arc<str> },
}

/// Answers each request with a redirect. See the [module docs](self).
#[derive(Debug, Clone)]
pub(crate) struct Redirect {
    pub(crate) scheme: Option<Scheme>,
    pub(crate) hostname: Option<Arc<str>>,
    pub(crate) port: Option<u16>,
    pub(crate) path: Option<RedirectPath>,
    pub(crate) status: StatusCode,
}

impl Redirect {
    /// Where `req` is sent, or `None` when the request names no host to
    /// send it back to.
    pub(crate) fn location<B>(&self, req: &Request<B>, path: &str) -> Option<String> {
        let asked_scheme = req.extensions().get::<ClientScheme>().map_or(Scheme::HTTP, |s| s.0.clone());
        let scheme = self.scheme.clone().unwrap_or_else(|| asked_scheme.clone());
        let authority = match req.headers().get(header::HOST) {
            Some(host) => host.to_str().ok()?.parse::<http::uri::Authority>().ok()?,
            None => req.uri().authority()?.clone(),
        };
        let host = self.hostname.as_deref().unwrap_or(authority.host());
        // The port: as configured; else the scheme's own when it changed; else
        // the one the request came to.
        let port = self.port.or(if scheme == asked_scheme { authority.port_u16() } else { None });
        let default = if scheme == Scheme::HTTPS { 443 } else { 80 };
        let path = match &self.path {
            None => path.to_owned(),
            Some(RedirectPath::Full(full)) => full.to_string(),
            Some(RedirectPath::Prefix { matched, with }) => {
                let rest = path.strip_prefix(&**matched).unwrap_or(path);
                let joined = format!("{with}{rest}");
                if joined.is_empty() { "/".to_owned() } else { joined }
            }
        };
        let mut location = format!("{scheme}://{host}");
        if let Some(port) = port.filter(|&p| p != default) {
            location.push_str(&format!(":{port}"));
        }
        location.push_str(&path);
        if let Some(query) = req.uri().query() {
            location.push('?');
            location.push_str(query);
        }
        Some(location)
    }
}

impl Service<Request<RouteBody>> for Redirect {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<RouteBody>) -> Self::Future {
        // Routed on the canonical path: the redirect is made from that same spelling.
        let path = tower_gateway::strip_prefix::canonicalize(req.uri().path())
            .map(|p| p.into_owned())
            .unwrap_or_else(|_| req.uri().path().to_owned());
        let location = self.location(&req, &path).and_then(|l| HeaderValue::try_from(l).ok());
        let response = match location {
            Some(location) => {
                let mut response = Response::new(Body::empty());
                *response.status_mut() = self.status;
                response.headers_mut().insert(header::LOCATION, location);
                response
            }
            None => json_error(StatusCode::BAD_REQUEST, "bad_request", "the request names no host to redirect to"),
        };
        ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirect() -> Redirect {
        Redirect { scheme: None, hostname: None, port: None, path: None, status: StatusCode::FOUND }
    }

    fn get(uri: &str, host: &str, tls: bool) -> Request<()> {
        let mut req = Request::get(uri).header("host", host).body(()).unwrap();
        if tls {
            req.extensions_mut().insert(ClientScheme(Scheme::HTTPS));
        }
        req
    }

    #[test]
    fn each_part_is_the_configured_one_or_the_requests() {
        let req = get("/old/a?x=1", "shop.example:8080", false);
        let cases = [
            (redirect(), "http://shop.example:8080/old/a?x=1"),
            (Redirect { scheme: Some(Scheme::HTTPS), ..redirect() }, "https://shop.example/old/a?x=1"),
            (
                Redirect { scheme: Some(Scheme::HTTPS), port: Some(8443), ..redirect() },
                "https://shop.example:8443/old/a?x=1",
            ),
            (Redirect { hostname: Some("www.example".into()), ..redirect() }, "http://www.example:8080/old/a?x=1"),
            (Redirect { port: Some(80), ..redirect() }, "http://shop.example/old/a?x=1"),
            (
                Redirect { path: Some(RedirectPath::Full("/new".into())), ..redirect() },
                "http://shop.example:8080/new?x=1",
            ),
            (
                Redirect {
                    path: Some(RedirectPath::Prefix { matched: "/old".into(), with: "/v2".into() }),
                    ..redirect()
                },
                "http://shop.example:8080/v2/a?x=1",
            ),
            (
                Redirect {
                    path: Some(RedirectPath::Prefix { matched: "/old/a".into(), with: "".into() }),
                    ..redirect()
                },
                "http://shop.example:8080/?x=1",
            ),
        ];
        for (redirect, expected) in cases {
            assert_eq!(redirect.location(&req, "/old/a").as_deref(), Some(expected), "{redirect:?}");
        }
        // Over TLS, the request's scheme and port are https and 443, not repeated.
        assert_eq!(
            redirect().location(&get("/a", "shop.example:443", true), "/a").as_deref(),
            Some("https://shop.example/a")
        );
    }
}
