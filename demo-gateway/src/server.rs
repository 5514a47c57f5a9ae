//! The HTTP server around the gateway: tower-http's request id, access log, CORS,
//! panic catching, global timeout and body limit, on hyper-util's auto server
//! (HTTP/1.1 and h2c) with a header read timeout, a head size cap and a graceful
//! shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_gateway::PeerAddr;
use tower_gateway::balance::ChosenEndpoint;
use tower_gateway::error::BoxError;
use tower_gateway::retry::Attempts;
use tower_http::body::UnsyncBoxBody;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::config::{Config, Settings};
use crate::gateway::{Gateway, RouteName};

/// The body of every response the server sends: what the stack answered, or a
/// JSON error put in place of a bare one.
pub type ResponseBody = Either<UnsyncBoxBody<Bytes, BoxError>, Full<Bytes>>;

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
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Either::Right(Full::new(Bytes::from(body))))
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response<Full<Bytes>> {
    tracing::error!("a request handler panicked");
    let body = serde_json::json!({ "error": { "code": "internal", "message": "internal error" } }).to_string();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::from(Any)
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods(Any)
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                "idempotency-key".parse().expect("valid"),
                "x-request-id".parse().expect("valid"),
            ])
            .expose_headers(["x-request-id".parse::<http::HeaderName>().expect("valid")])
            .max_age(Duration::from_secs(600)),
    )
}

/// The gateway with tower-http's layers around it: what the server runs.
pub fn http_service(
    gateway: Gateway,
    config: &Config,
    settings: &Settings,
) -> impl Service<Request<Incoming>, Response = Response<ResponseBody>, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static {
    ServiceBuilder::new()
        .map_response(json_errors)
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request<Incoming>| {
                    let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default();
                    tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
                })
                .on_request(())
                .on_response(|res: &Response<_>, latency: Duration, _: &tracing::Span| {
                    let ext = res.extensions();
                    tracing::info!(
                        status = res.status().as_u16(),
                        latency_ms = latency.as_secs_f64() * 1e3,
                        route = ext.get::<RouteName>().map(|r| &*r.0),
                        endpoint = ext.get::<ChosenEndpoint>().map(|e| tracing::field::display(&e.0)),
                        attempts = ext.get::<Attempts>().map_or(1, |a| a.0),
                        "response"
                    );
                }),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .option_layer(cors(&config.cors_origins))
        .layer(RequestBodyLimitLayer::new(config.max_body_bytes))
        .layer(TimeoutLayer::with_status_code(StatusCode::GATEWAY_TIMEOUT, settings.request_timeout))
        .service(gateway)
}

/// Serves `svc` on `listener` until `shutdown` resolves; then stops accepting and
/// lets requests in flight finish for up to the grace period.
pub async fn serve<S>(
    listener: TcpListener,
    svc: S,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    S: Service<Request<Incoming>, Response = Response<ResponseBody>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size(settings.max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(%err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let svc = svc.clone().map_request(move |mut req: Request<Incoming>| {
                    req.extensions_mut().insert(PeerAddr(peer));
                    req
                });
                let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc)).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(err) = conn.await {
                        tracing::debug!(%err, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!(grace_period = ?settings.grace_period, "shutting down: finishing requests in flight");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(settings.grace_period) => tracing::warn!("grace period over; closing the remaining connections"),
    }
    Ok(())
}
