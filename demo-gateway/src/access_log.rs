//! The access log: one `INFO` line per response, with everything about the
//! request and its answer in that line (method, path, request id, client,
//! status, latency, route, endpoint, attempts).
//!
//! tower-http's `TraceLayer` would open an `INFO` span per request and format
//! its fields twice (into the span, then into the line); callgrind counted
//! that at 8k instructions of the 23k a logged request cost. Here the span
//! around the request is at `DEBUG`: with `RUST_LOG=debug` every event inside a
//! request carries its id, and at the default level only the one line is made.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{HeaderValue, Method, Request, Response, Uri};
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tower_gateway::ClientAddr;
use tower_gateway::balance::ChosenEndpoint;
use tower_gateway::retry::Attempts;
use tracing::Instrument;
use tracing::instrument::Instrumented;

use crate::routes::RouteName;

/// Logs each response (see the [module docs](self)).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct AccessLogLayer;

impl<S> Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AccessLog { inner }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct AccessLog<S> {
    inner: S,
}

/// What the line says about the request, kept until its response.
struct Seen {
    method: Method,
    uri: Uri,
    request_id: Option<HeaderValue>,
    client: Option<IpAddr>,
    started: Instant,
}

impl<S, B, RB> Service<Request<B>> for AccessLog<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let seen = tracing::enabled!(tracing::Level::INFO).then(|| Seen {
            method: req.method().clone(),
            uri: req.uri().clone(),
            request_id: req.headers().get("x-request-id").cloned(),
            client: req.extensions().get::<ClientAddr>().map(ClientAddr::ip),
            started: Instant::now(),
        });
        let span = tracing::debug_span!(
            "request",
            method = %req.method(),
            path = %req.uri().path(),
            request_id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()),
        );
        ResponseFuture { future: self.inner.call(req).instrument(span), seen }
    }
}

pin_project! {
    pub(crate) struct ResponseFuture<F> {
        #[pin]
        future: Instrumented<F>,
        seen: Option<Seen>,
    }
}

impl<F, RB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.future.poll(cx));
        if let (Some(seen), Ok(response)) = (this.seen.take(), &result) {
            let ext = response.extensions();
            // The request's span (the server span `TraceContextLayer` runs this in), when exported.
            let trace = tower_gateway::telemetry::span_context(&tracing::Span::current());
            tracing::info!(
                trace_id = trace.as_ref().map(|t| tracing::field::display(t.trace_id())),
                span_id = trace.as_ref().map(|t| tracing::field::display(t.span_id())),
                method = %seen.method,
                path = %seen.uri.path(),
                request_id = seen.request_id.as_ref().and_then(|v| v.to_str().ok()).map(tracing::field::display),
                client = seen.client.map(tracing::field::display),
                status = response.status().as_u16(),
                // Whole microseconds: `0.378`, not `0.37834799999999996`.
                latency_ms = seen.started.elapsed().as_micros() as f64 / 1e3,
                route = ext.get::<RouteName>().map(|r| &*r.0),
                endpoint = ext.get::<ChosenEndpoint>().map(|e| tracing::field::display(&e.0)),
                attempts = ext.get::<Attempts>().map_or(1, |a| a.0),
                "response"
            );
        }
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tower::ServiceExt;

    use super::*;

    /// Collects what is logged, as the fmt layer writes it.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    async fn logged(level: &str) -> String {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(level))
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let svc = AccessLogLayer.layer(tower::service_fn(|_req: Request<()>| async {
            tracing::warn!("inside the request");
            let mut response = Response::new(());
            *response.status_mut() = http::StatusCode::CREATED;
            response.extensions_mut().insert(RouteName("/api/products/*".into()));
            Ok::<_, std::convert::Infallible>(response)
        }));
        let req = Request::post("/api/products?x=1").header("x-request-id", "abc-123").body(()).unwrap();
        let _guard = tracing::subscriber::set_default(subscriber);
        svc.oneshot(req).await.unwrap();
        String::from_utf8(lines.0.lock().unwrap().clone()).unwrap()
    }

    #[tokio::test]
    async fn one_line_per_response_says_what_was_asked_and_answered() {
        let out = logged("info").await;
        let line = out.lines().find(|l| l.contains("response")).expect("a response line");
        for field in
            ["method=POST", "path=/api/products ", "request_id=abc-123", "status=201", "route=\"/api/products/*\""]
        {
            assert!(line.contains(field), "{field} missing from {line}");
        }
        assert!(line.contains("latency_ms="), "{line}");
        // At the default level the request's span is not made: the event inside
        // is logged without it.
        let inside = out.lines().find(|l| l.contains("inside the request")).unwrap();
        assert!(!inside.contains("abc-123"), "{inside}");
    }

    #[tokio::test]
    async fn at_debug_events_inside_a_request_carry_its_id() {
        let out = logged("debug").await;
        let inside = out.lines().find(|l| l.contains("inside the request")).unwrap();
        assert!(inside.contains("request_id=\"abc-123\""), "{inside}");
    }

    #[tokio::test]
    async fn below_info_nothing_is_logged_for_a_response() {
        let out = logged("warn").await;
        assert!(!out.contains("response"), "{out}");
        assert!(out.contains("inside the request"), "{out}");
    }
}
