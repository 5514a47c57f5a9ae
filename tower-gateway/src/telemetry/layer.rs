//! [`TraceContextLayer`]: the request's server span, child of the client's trace.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use opentelemetry::trace::TraceContextExt;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::RouteName;
use crate::client_addr::ClientAddr;
use crate::proxy::PeerAddr;

/// Opens a server span for each request, child of the trace context the client
/// sent (if valid), and runs the inner service in it. See the [module docs](super).
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct TraceContextLayer {
    skip: Arc<[String]>,
}

impl TraceContextLayer {
    /// The layer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Paths whose requests get no span (health checks, metrics scrapes):
    /// compared whole with the request's path. Their headers pass untouched.
    pub fn skip_paths<P: Into<String>>(mut self, paths: impl IntoIterator<Item = P>) -> Self {
        self.skip = paths.into_iter().map(Into::into).collect();
        self
    }
}

impl<S> Layer<S> for TraceContextLayer {
    type Service = TraceContext<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TraceContext { inner, skip: self.skip.clone() }
    }
}

/// The service of [`TraceContextLayer`].
#[derive(Debug, Clone)]
pub struct TraceContext<S> {
    inner: S,
    skip: Arc<[String]>,
}

impl<S> TraceContext<S> {
    crate::inner_service_accessors!();
}

impl<S, B, RB> Service<Request<B>> for TraceContext<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if self.skip.iter().any(|path| path == req.uri().path()) {
            return ResponseFuture { future: self.inner.call(req), span: tracing::Span::none(), method: None };
        }
        let remote = super::extract(req.headers_mut());
        let span = tracing::debug_span!(
            target: "tower_gateway::telemetry",
            "request",
            otel.name = req.method().as_str(),
            otel.kind = "server",
            otel.status_code = Empty,
            http.request.method = req.method().as_str(),
            http.route = Empty,
            http.response.status_code = Empty,
            url.path = req.uri().path(),
            url.scheme = req.uri().scheme_str(),
            client.address = Empty,
            "http.request.header.x-request-id" = Empty,
            error.type = Empty,
        );
        if span.is_disabled() {
            return ResponseFuture { future: self.inner.call(req), span, method: None };
        }
        if let Some(remote) = remote {
            let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
        }
        let client = req.extensions().get::<ClientAddr>().map(ClientAddr::ip).or_else(|| {
            // The peer alone when no `ClientAddrLayer` decided more before this layer.
            PeerAddr::of(req.extensions()).map(|peer| peer.ip().to_canonical())
        });
        if let Some(client) = client {
            span.record("client.address", tracing::field::display(client));
        }
        if let Some(id) = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()) {
            span.record("http.request.header.x-request-id", id);
        }
        #[cfg(feature = "axum")]
        if let Some(route) = req.extensions().get::<axum::extract::MatchedPath>() {
            record_route(&span, req.method(), route.as_str());
        }
        let method = Some(req.method().clone());
        let future = span.in_scope(|| self.inner.call(req));
        ResponseFuture { future, span, method }
    }
}

fn record_route(span: &tracing::Span, method: &http::Method, route: &str) {
    span.record("http.route", route);
    // On the OpenTelemetry span itself: `otel.name` is read only until it starts.
    span.context().span().update_name(format!("{method} {route}"));
}

pin_project! {
    /// The response future of [`TraceContext`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        future: F,
        span: tracing::Span,
        // To name the span by its route once the response says which.
        method: Option<http::Method>,
    }
}

impl<F, RB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let result = std::task::ready!(this.future.poll(cx));
        if !this.span.is_disabled() {
            match &result {
                Ok(response) => {
                    let status = response.status();
                    this.span.record("http.response.status_code", status.as_u16());
                    if let (Some(RouteName(route)), Some(method)) =
                        (response.extensions().get::<RouteName>(), this.method.as_ref())
                    {
                        record_route(this.span, method, route);
                    }
                    // Server spans: only 5xx is the server's error (4xx is the client's).
                    if status.is_server_error() {
                        this.span.record("error.type", status.as_str());
                        this.span.record("otel.status_code", "ERROR");
                    }
                }
                Err(_) => {
                    this.span.record("error.type", "_OTHER");
                    this.span.record("otel.status_code", "ERROR");
                }
            }
        }
        Poll::Ready(result)
    }
}
