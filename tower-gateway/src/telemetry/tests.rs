//! The layer and the proxy's attempt spans together, over loopback sockets, into
//! an in-memory span exporter.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry::trace::{SpanId, SpanKind, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tokio::net::TcpListener;
use tower::{Layer, ServiceBuilder, ServiceExt};
use tracing_subscriber::layer::SubscriberExt;

use super::{RouteName, TraceContextLayer};
use crate::{Proxy, RetryLayer, RetryPolicy};

const CLIENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// A backend that answers `503` to its first `failures` requests, then `200`,
/// and keeps the `traceparent` of each.
async fn backend(failures: usize) -> (SocketAddr, Arc<Mutex<Vec<Option<String>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let log = log.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let mut log = log.lock().unwrap();
                    let parent = req.headers().get("traceparent").map(|v| v.to_str().unwrap().to_owned());
                    log.push(parent);
                    let status = if log.len() <= failures { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
                    let response = Response::builder().status(status).body(Full::new(Bytes::new())).unwrap();
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    (addr, seen)
}

/// Sends one GET through `TraceContextLayer → Retry → Proxy` to `addr` with
/// `traceparent` (if any), the response naming its route.
async fn send(addr: SocketAddr, traceparent: Option<&str>) -> StatusCode {
    let policy =
        RetryPolicy::new().backoff(std::time::Duration::from_millis(1), std::time::Duration::from_millis(2), 0.0);
    let route = ServiceBuilder::new()
        .layer(TraceContextLayer::new())
        .map_response(|mut response: Response<_>| {
            response.extensions_mut().insert(RouteName("products".into()));
            response
        })
        .layer(RetryLayer::new(policy.unwrap()))
        .service(Proxy::new());
    let mut req = Request::get(format!("http://{addr}/items?page=2")).body(Full::new(Bytes::new())).unwrap();
    if let Some(value) = traceparent {
        req.headers_mut().insert("traceparent", value.parse().unwrap());
        req.headers_mut().insert("tracestate", "congo=t61rcWkgMzE".parse().unwrap());
    }
    route.oneshot(req).await.unwrap().status()
}

/// Runs `f` with a subscriber that exports every span into memory, and returns them.
async fn traced<F: std::future::Future>(f: F) -> (F::Output, Vec<SpanData>) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
    let subscriber =
        tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("tests")));
    let output = {
        let _default = tracing::subscriber::set_default(subscriber);
        f.await
    };
    provider.force_flush().unwrap();
    (output, exporter.get_finished_spans().unwrap())
}

fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.to_string())
}

fn parts(traceparent: &str) -> (TraceId, SpanId) {
    let fields: Vec<&str> = traceparent.split('-').collect();
    (TraceId::from_hex(fields[1]).unwrap(), SpanId::from_hex(fields[2]).unwrap())
}

#[tokio::test]
async fn a_retried_request_is_one_trace_with_a_span_per_attempt_and_the_upstream_sees_its_attempt() {
    let (addr, seen) = backend(1).await;
    let (status, spans) = traced(send(addr, Some(CLIENT))).await;
    assert_eq!(status, StatusCode::OK);

    let (client_trace, client_span) = parts(CLIENT);
    let server = spans.iter().find(|s| s.span_kind == SpanKind::Server).expect("a server span");
    assert_eq!(server.span_context.trace_id(), client_trace, "the client's trace continues");
    assert_eq!(server.parent_span_id, client_span, "the server span is the child of the client's");
    assert_eq!(server.name, "GET products", "named by method and route, not by path");
    assert_eq!(attr(server, "http.route").as_deref(), Some("products"));
    assert_eq!(attr(server, "http.response.status_code").as_deref(), Some("200"));
    assert_eq!(server.span_context.trace_state().get("congo"), Some("t61rcWkgMzE"));

    let attempts: Vec<&SpanData> = spans.iter().filter(|s| s.span_kind == SpanKind::Client).collect();
    assert_eq!(attempts.len(), 2, "one span per attempt: {spans:#?}");
    for attempt in &attempts {
        assert_eq!(attempt.span_context.trace_id(), client_trace);
        assert_eq!(attempt.parent_span_id, server.span_context.span_id());
        assert_eq!(attr(attempt, "server.port"), Some(addr.port().to_string()));
        assert_eq!(attr(attempt, "url.path").as_deref(), Some("/items"), "no query string");
    }
    let mut attempts = attempts;
    attempts.sort_by_key(|s| s.start_time);
    assert_eq!(attr(attempts[0], "http.response.status_code").as_deref(), Some("503"));
    assert_eq!(attr(attempts[0], "error.type").as_deref(), Some("503"));
    assert_eq!(attr(attempts[1], "http.response.status_code").as_deref(), Some("200"));
    assert_eq!(attr(attempts[1], "error.type"), None);

    // Each request upstream carried its own attempt's context, not the client's.
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    for (traceparent, attempt) in seen.iter().zip(&attempts) {
        let traceparent = traceparent.as_deref().expect("a traceparent upstream");
        assert_eq!(parts(traceparent), (client_trace, attempt.span_context.span_id()));
        assert!(traceparent.ends_with("-01"), "sampled");
    }
}

#[tokio::test]
async fn with_no_or_a_malformed_traceparent_the_gateway_starts_the_trace() {
    let long = "x".repeat(4000);
    for incoming in [None, Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1"), Some(long.as_str())] {
        let (addr, seen) = backend(0).await;
        let (status, spans) = traced(send(addr, incoming)).await;
        assert_eq!(status, StatusCode::OK);
        let server = spans.iter().find(|s| s.span_kind == SpanKind::Server).unwrap();
        assert_eq!(server.parent_span_id, SpanId::INVALID, "a root: {incoming:?}");
        assert_ne!(server.span_context.trace_id(), parts(CLIENT).0);
        let attempt = spans.iter().find(|s| s.span_kind == SpanKind::Client).unwrap();
        let upstream = seen.lock().unwrap()[0].clone().expect("the gateway's own traceparent");
        assert_eq!(parts(&upstream), (server.span_context.trace_id(), attempt.span_context.span_id()));
    }
}

#[tokio::test]
async fn without_an_opentelemetry_subscriber_a_valid_context_passes_and_a_malformed_one_does_not() {
    let (addr, seen) = backend(0).await;
    assert_eq!(send(addr, Some(CLIENT)).await, StatusCode::OK);
    assert_eq!(send(addr, Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7")).await, StatusCode::OK);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen, [Some(CLIENT.to_owned()), None]);
}

#[tokio::test]
async fn an_attempt_given_up_on_is_recorded_as_cancelled() {
    // An upstream that accepts and never answers; the attempt is dropped by a timeout above it.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            held.push(listener.accept().await.unwrap().0);
        }
    });
    let (status, spans) = traced(async {
        let route = ServiceBuilder::new()
            .layer(TraceContextLayer::new())
            .layer(crate::TimeoutLayer::new(std::time::Duration::from_millis(100)))
            .service(Proxy::<Full<Bytes>>::new());
        let req = Request::get(format!("http://{addr}/")).body(Full::new(Bytes::new())).unwrap();
        route.oneshot(req).await.unwrap().status()
    })
    .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    let attempt = spans.iter().find(|s| s.span_kind == SpanKind::Client).unwrap();
    assert_eq!(attr(attempt, "error.type").as_deref(), Some("cancelled"));
    let server = spans.iter().find(|s| s.span_kind == SpanKind::Server).unwrap();
    assert_eq!(attr(server, "error.type").as_deref(), Some("504"));
}

#[tokio::test]
async fn a_skipped_path_gets_no_span_and_its_headers_pass_untouched() {
    let malformed = "00-not-a-trace";
    let (seen, spans) = traced(async {
        let svc =
            TraceContextLayer::new().skip_paths(["/healthz"]).layer(tower::service_fn(|req: Request<()>| async move {
                let seen = req.headers().get("traceparent").cloned();
                Ok::<_, Infallible>(Response::new(seen))
            }));
        let req = Request::get("/healthz").header("traceparent", malformed).body(()).unwrap();
        svc.oneshot(req).await.unwrap().into_body()
    })
    .await;
    assert_eq!(seen.unwrap(), malformed);
    assert!(spans.is_empty(), "{spans:#?}");
}

#[tokio::test]
async fn each_rate_limit_decision_is_a_span_of_the_request_ended_before_it_goes_on() {
    use crate::rate_limit::key::Global;
    use crate::{Limiter, Quota, RateLimitLayer};

    let (statuses, spans) = traced(async {
        let svc = ServiceBuilder::new()
            .layer(TraceContextLayer::new())
            .layer(RateLimitLayer::new(Limiter::new("api", Quota::per_minute(1)), Global))
            .service(tower::service_fn(|_req: Request<()>| async {
                // Inside the request, after the decision: its span has ended.
                tracing::debug_span!("handler", otel.kind = "internal").in_scope(|| {});
                Ok::<_, Infallible>(Response::new(()))
            }));
        let mut statuses = Vec::new();
        for _ in 0..2 {
            statuses.push(svc.clone().oneshot(Request::get("/").body(()).unwrap()).await.unwrap().status());
        }
        statuses
    })
    .await;
    assert_eq!(statuses, [StatusCode::OK, StatusCode::TOO_MANY_REQUESTS]);
    let mut decisions: Vec<&SpanData> = spans.iter().filter(|s| s.name == "rate limit").collect();
    decisions.sort_by_key(|s| s.start_time);
    let outcomes: Vec<Option<String>> = decisions.iter().map(|s| attr(s, "ratelimit.outcome")).collect();
    assert_eq!(outcomes, [Some("allowed".to_owned()), Some("limited".to_owned())]);
    let servers: Vec<&SpanData> = spans.iter().filter(|s| s.span_kind == SpanKind::Server).collect();
    for decision in &decisions {
        assert_eq!(attr(decision, "ratelimit.limit").as_deref(), Some("api"));
        assert!(servers.iter().any(|s| s.span_context.span_id() == decision.parent_span_id));
    }
    let handler = spans.iter().find(|s| s.name == "handler").unwrap();
    assert!(decisions[0].end_time <= handler.start_time, "the decision ends before the request goes on");
    assert_ne!(handler.parent_span_id, decisions[0].span_context.span_id());
}
