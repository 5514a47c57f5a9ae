//! The HTTP app every connection is served by: the entry's clean-up (hop-by-hop,
//! forwarding and identity headers removed before any decision), the client's
//! address decided once, the request id and the access log, tower-http's CORS,
//! panic catching, global timeout and body limit, JSON for every error, and the
//! front that sends ops paths to the ops router and every other to the route table.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tower::{Service, ServiceBuilder};
use tower_gateway::Body;
use tower_gateway::error::BoxError;
use tower_gateway::grpc::GrpcLayer;
use tower_gateway::telemetry::TraceContextLayer;
use tower_http::body::UnsyncBoxBody;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use super::ops::{OPS_PATHS, ops_router};
use crate::access_log::AccessLogLayer;
use crate::idle_body::IdleBody;
use crate::plan::Plan;
use crate::request_id::RequestIdLayer;
use crate::routes::{self, Routes};

/// A whole service as a connection runs it.
pub(super) type App = crate::arc_service::ArcService<Request<Incoming>, Response<ResponseBody>>;

/// An axum router as a listener's app.
pub(super) fn side_app(router: Router) -> App {
    use http_body_util::BodyExt;
    let to_body = |response: Response<axum::body::Body>| -> Response<ResponseBody> {
        response.map(|body| Either::Left(UnsyncBoxBody::new(body.map_err(BoxError::from))))
    };
    App::new(tower::util::MapResponse::new(router, to_body))
}

/// The body of every response the server sends: what the stack answered, or a
/// JSON error put in place of a bare one.
pub(crate) type ResponseBody = Either<UnsyncBoxBody<Bytes, BoxError>, Full<Bytes>>;

/// tower-http answers a timeout with a bare status and an oversized body with
/// plain text; give those a JSON body like every other error. Upstream answers
/// pass untouched.
fn json_errors(response: Response<UnsyncBoxBody<Bytes, BoxError>>) -> Response<ResponseBody> {
    let bare = !response.headers().contains_key(header::CONTENT_TYPE);
    // RequestBodyLimit's own answer: text/plain "length limit exceeded" (21 bytes).
    let from_limit = response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v == "text/plain; charset=utf-8")
        && http_body::Body::size_hint(response.body()).exact() == Some(21);
    let (code, message) = match response.status() {
        StatusCode::PAYLOAD_TOO_LARGE if bare || from_limit => ("body_too_large", "the request body is too large"),
        StatusCode::GATEWAY_TIMEOUT if bare => ("gateway_timeout", "the request took longer than the gateway allows"),
        _ => return response.map(Either::Left),
    };
    let body = serde_json::json!({ "error": { "code": code, "message": message } }).to_string();
    let (mut parts, _) = response.into_parts();
    parts.extensions.insert(tower_gateway::error::Refusal::new(code, message));
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Either::Right(Full::new(Bytes::from(body))))
}

/// What the gateway removes from every request as it enters, before any
/// decision: hop-by-hop headers (and those `Connection` names, so no header can be
/// hidden from a decision and dropped later), forwarding headers only the
/// gateway may write (`X-Forwarded-For` is rewritten from the verified client),
/// identity headers in any spelling a backend might fold into them, and an
/// `X-Request-Id` that is not a sane token.
#[derive(Debug, Clone)]
struct Entry {
    identity: Arc<[String]>,
}

static X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

impl Entry {
    fn new(plan: &Plan) -> Self {
        let identity = match plan.authenticator() {
            Some(auth) => auth.identity_header_names().iter().map(|n| n.as_str().to_owned()).collect(),
            None => vec!["x-user-id".to_owned(), "x-user-email".to_owned()],
        };
        Self { identity: identity.into() }
    }

    /// Whether `name` is an identity header once `_` is read as `-`; compared in
    /// place, as this runs for every header of every request.
    fn is_identity(&self, name: &http::HeaderName) -> bool {
        let fold = |b: u8| if b == b'_' { b'-' } else { b };
        let name = name.as_str().as_bytes();
        self.identity.iter().any(|id| id.len() == name.len() && id.bytes().zip(name).all(|(i, &n)| i == fold(n)))
    }

    fn clean<B>(&self, req: &mut Request<B>) {
        // A WebSocket upgrade keeps the two headers that ask for it: the route
        // decides whether it happens.
        let upgrade = tower_gateway::upgrade::websocket_upgrade(req).is_some();
        let headers = req.headers_mut();
        tower_gateway::proxy::remove_hop_by_hop(headers);
        if upgrade {
            tower_gateway::upgrade::restore(headers);
        }
        for name in ["x-forwarded-host", "x-forwarded-proto", "x-forwarded-prefix", "forwarded", "x-real-ip"] {
            headers.remove(name);
        }
        if headers.keys().any(|n| self.is_identity(n)) {
            let folded: Vec<http::HeaderName> = headers.keys().filter(|n| self.is_identity(n)).cloned().collect();
            for name in folded {
                headers.remove(name);
            }
        }
        let sane = |v: &HeaderValue| {
            (1..=128).contains(&v.len())
                && v.as_bytes().iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        };
        if headers.get_all(&X_REQUEST_ID).iter().count() > 1 || headers.get(&X_REQUEST_ID).is_some_and(|v| !sane(v)) {
            headers.remove(&X_REQUEST_ID);
        }
    }
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response<Full<Bytes>> {
    tracing::error!("a request handler panicked");
    let body = serde_json::json!({ "error": { "code": "internal", "message": "internal error" } }).to_string();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The innermost service: a request for one of [`OPS_PATHS`] goes to the
/// [`ops_router`], every other straight to the route table (no second router
/// on the path every proxied request takes).
#[derive(Clone)]
pub(super) struct Front {
    ops: Router,
    routes: Routes,
    /// `/readyz` and `/metrics` are served here (no admin listener), to
    /// clients on this machine only: a gateway listening on `0.0.0.0` with no
    /// other setting does not show its internals to the world.
    local_ops: bool,
}

impl Front {
    pub(super) fn new(plan: &Plan) -> Self {
        Self {
            ops: ops_router(plan),
            routes: Routes { table: plan.table.clone() },
            local_ops: plan.settings.admin_listen.is_none(),
        }
    }

    /// Whether the gateway answers `req` itself.
    fn is_ops<B>(&self, req: &Request<B>) -> bool {
        let path = req.uri().path();
        if !OPS_PATHS.contains(&path) {
            return false;
        }
        path == "/healthz"
            || !self.local_ops
            || tower_gateway::PeerAddr::of(req.extensions()).is_some_and(|peer| peer.ip().to_canonical().is_loopback())
    }
}

type FrontFuture = futures_util::future::Either<
    futures_util::future::Map<axum::routing::future::RouteFuture<Infallible>, FromOps>,
    futures_util::future::Map<routes::ResponseFuture, FromRoutes>,
>;

type FromOps = fn(Result<Response<axum::body::Body>, Infallible>) -> Result<Response<FrontBody>, Infallible>;
type FromRoutes = fn(Result<Response<Body>, Infallible>) -> Result<Response<FrontBody>, Infallible>;

pin_project_lite::pin_project! {
    /// The body of what [`Front`] answers: the route table's (an upstream's
    /// stream, or the gateway's own JSON) or the ops router's, each as it is —
    /// not boxed again on the way to the connection.
    #[project = FrontBodyProj]
    pub(super) enum FrontBody {
        Routed { #[pin] body: Body },
        Ops { #[pin] body: axum::body::Body },
    }
}

impl Default for FrontBody {
    /// What tower-http's timeout and CORS layers answer with: no body.
    fn default() -> Self {
        Self::Routed { body: Body::empty() }
    }
}

impl http_body::Body for FrontBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        match self.project() {
            FrontBodyProj::Routed { body } => body.poll_frame(cx).map_err(Into::into),
            FrontBodyProj::Ops { body } => body.poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Routed { body } => body.is_end_stream(),
            Self::Ops { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Self::Routed { body } => body.size_hint(),
            Self::Ops { body } => body.size_hint(),
        }
    }
}

impl<B> Service<Request<B>> for Front
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<FrontBody>;
    type Error = Infallible;
    type Future = FrontFuture;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
        // Both are always ready: the router by axum's contract, the route table
        // because each request drives its own route's readiness.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        use futures_util::FutureExt;
        if self.is_ops(&req) {
            let from_ops: FromOps = |response| response.map(|response| response.map(|body| FrontBody::Ops { body }));
            return futures_util::future::Either::Left(self.ops.call(req).map(from_ops));
        }
        let from_routes: FromRoutes =
            |response| response.map(|response| response.map(|body| FrontBody::Routed { body }));
        futures_util::future::Either::Right(self.routes.call(req.map(axum::body::Body::new)).map(from_routes))
    }
}

/// The whole gateway of `plan` as one service: tower-http's layers around the
/// route table. This is what [`serve`](super::serve) runs on each connection,
/// the current generation's for each request.
pub(super) fn app(plan: &Plan) -> App {
    let settings = &plan.settings;
    let entry = Entry::new(plan);
    let idle = settings.body_idle_timeout;
    let app = ServiceBuilder::new()
        // A gRPC call refused anywhere below (no route, a token, a limit, a
        // timeout) is answered with its grpc-status; its deadline bounds it.
        .map_response(|response: Response<tower_gateway::ResponseBody<ResponseBody>>| {
            response.map(|body| body.into_inner().unwrap_or_else(|answer| Either::Right(Full::new(answer))))
        })
        .layer(GrpcLayer::new())
        .map_response(json_errors)
        // Who the client is, decided once and before any header is removed
        // (the entry takes `Forwarded` out, and a `Connection` naming
        // `X-Forwarded-For` would take that): the access log, the rate limits
        // and X-Forwarded-For all use this answer.
        .layer(settings.client_addr.clone())
        .map_request(move |mut req: Request<Incoming>| {
            entry.clean(&mut req);
            req
        })
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(RequestIdLayer)
        // The request's span, child of the client's trace: everything below,
        // the access log line included, happens in it.
        .layer(TraceContextLayer::new().skip_paths(OPS_PATHS))
        .layer(AccessLogLayer)
        .option_layer(settings.cors.clone())
        .layer(RequestBodyLimitLayer::new(settings.max_body_bytes))
        .map_request(move |req: Request<_>| req.map(|body| IdleBody::new(idle, body)))
        .map_response(move |res: Response<_>| res.map(|body| IdleBody::new(idle, body)))
        .layer(TimeoutLayer::with_status_code(StatusCode::GATEWAY_TIMEOUT, settings.request_timeout))
        .service(Front::new(plan));
    App::new(app)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_an_admin_listener_readiness_and_metrics_answer_this_machine_only() {
        let config: crate::Config = toml::from_str(
            "[upstreams.u]\nendpoints = [\"http://127.0.0.1:9\"]\n\
             [[routes]]\nprefix = \"/api\"\nupstream = \"u\"\naccess = \"public\"",
        )
        .unwrap();
        let plan = Plan::compile(config).unwrap();
        let status = async |path: &str, peer: &str| {
            let mut req = Request::get(path).header(header::HOST, "gw").body(Full::<Bytes>::default()).unwrap();
            req.extensions_mut().insert(tower_gateway::PeerAddr(peer.parse().unwrap()));
            let Ok(response) = Front::new(&plan).call(req).await;
            response.status().as_u16()
        };
        for local in ["127.0.0.1:4000", "[::1]:4000", "[::ffff:127.0.0.1]:4000"] {
            assert_eq!(status("/metrics", local).await, 200, "{local}");
            assert_eq!(status("/readyz", local).await, 200, "{local}");
        }
        for remote in ["192.0.2.7:4000", "[2001:db8::7]:4000"] {
            assert_eq!(status("/metrics", remote).await, 404, "{remote}");
            assert_eq!(status("/readyz", remote).await, 404, "{remote}");
            assert_eq!(status("/healthz", remote).await, 200, "{remote}: liveness stays public");
        }
    }
}
