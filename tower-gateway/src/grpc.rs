//! gRPC through a gateway: its refusals in gRPC's form, and the client's
//! deadline honoured.
//!
//! A gRPC client reads the call's status from `grpc-status`, not from the HTTP
//! status: a gateway's `401` or `429` with a JSON body reaches it as a
//! protocol error ("received HTTP status 401"), losing what was refused and
//! why. [`GrpcLayer`] answers every gRPC request (`content-type:
//! application/grpc…`) that is not answered by a gRPC server the gRPC way —
//! HTTP `200`, `content-type: application/grpc`, and the status in
//! *trailers-only* form (`grpc-status` and `grpc-message` in the headers, no
//! body) — with the code gRPC's HTTP mapping gives the refusal:
//!
//! | HTTP | gRPC |
//! |---|---|
//! | 400 | INTERNAL (13) |
//! | 401 | UNAUTHENTICATED (16) |
//! | 403 | PERMISSION_DENIED (7) |
//! | 404, 405, 501 | UNIMPLEMENTED (12) |
//! | 413, 429 | RESOURCE_EXHAUSTED (8) |
//! | 502, 503 | UNAVAILABLE (14) |
//! | 504 | DEADLINE_EXCEEDED (4) |
//! | other | UNKNOWN (2) |
//!
//! The message is the refusal's own ([`error::Refusal`](crate::error::Refusal),
//! which [`json_error`](crate::error::json_error) leaves in the response's
//! extensions), percent-encoded as gRPC asks; the other headers of the refusal
//! (`Retry-After`, `WWW-Authenticate`, the rate-limit headers) are kept.
//!
//! The client's `grpc-timeout` bounds the call: past it the inner future is
//! dropped (cancelling the upstream call) and the answer is
//! DEADLINE_EXCEEDED. It can only shorten a bound set further in.
//!
//! Requests that are not gRPC pass untouched.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_gateway::error::json_error;
//! use tower_gateway::grpc::GrpcLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let svc = ServiceBuilder::new().layer(GrpcLayer::new()).service_fn(|_req: Request<()>| async {
//!     Ok::<_, Infallible>(json_error::<bytes::Bytes>(StatusCode::UNAUTHORIZED, "missing_token", "a token is required"))
//! });
//! let req = Request::post("/inventory.v1.Inventory/Reserve")
//!     .header("content-type", "application/grpc")
//!     .body(())
//!     .unwrap();
//! let res = svc.oneshot(req).await.unwrap();
//! assert_eq!(res.status(), StatusCode::OK);
//! assert_eq!(res.headers()["grpc-status"], "16"); // UNAUTHENTICATED
//! assert_eq!(res.headers()["grpc-message"], "a token is required");
//! # }
//! ```

use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use tower_layer::Layer;
use tower_service::Service;

use crate::body::ResponseBody;
use crate::error::Refusal;

/// Whether `headers` are a gRPC message's: `content-type: application/grpc`,
/// alone or with a `+format` or parameters.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.len() >= 16
            && v[..16].eq_ignore_ascii_case(b"application/grpc")
            && matches!(v.get(16), None | Some(b'+' | b';'))
    })
}

/// The duration a `grpc-timeout` value says: at most 8 digits and a unit
/// (`H`, `M`, `S`, `m`, `u`, `n`); `None` when malformed.
///
/// ```
/// use std::time::Duration;
/// use tower_gateway::grpc::parse_timeout;
///
/// assert_eq!(parse_timeout(b"250m"), Some(Duration::from_millis(250)));
/// assert_eq!(parse_timeout(b"1H"), Some(Duration::from_secs(3600)));
/// assert_eq!(parse_timeout(b"123456789S"), None);
/// ```
pub fn parse_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The gRPC status code for a refusal of HTTP status `status` (see the
/// [module docs](self)).
pub fn code_for(status: StatusCode) -> u16 {
    match status.as_u16() {
        400 => 13,
        401 => 16,
        403 => 7,
        404 | 405 | 501 => 12,
        413 | 429 => 8,
        502 | 503 => 14,
        504 => 4,
        _ => 2,
    }
}

/// `message` percent-encoded as `grpc-message` asks: printable ASCII but `%` as is.
fn encode_message(message: &str) -> HeaderValue {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::try_from(out).expect("printable ASCII is a header value")
}

/// A trailers-only gRPC answer: `code` and `message`, the other headers of `parts` kept.
fn trailers_only<B>(mut headers: HeaderMap, code: u16, message: &str) -> Response<ResponseBody<B>> {
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::TRANSFER_ENCODING);
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", HeaderValue::from(code));
    headers.insert("grpc-message", encode_message(message));
    let mut response = Response::new(ResponseBody::answer(Bytes::new()));
    *response.headers_mut() = headers;
    response
}

/// Answers gRPC requests' refusals the gRPC way. See the [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
#[must_use]
pub struct GrpcLayer;

impl GrpcLayer {
    /// The layer.
    pub fn new() -> Self {
        Self
    }
}

impl<S> Layer<S> for GrpcLayer {
    type Service = Grpc<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Grpc { inner }
    }
}

/// Answers gRPC requests' refusals the gRPC way. See the [module docs](self).
#[derive(Debug, Clone)]
#[must_use]
pub struct Grpc<S> {
    inner: S,
}

impl<S> Grpc<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }

    crate::inner_service_accessors!();
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Grpc<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = future::ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        if !is_grpc(req.headers()) {
            return future::ResponseFuture { future: self.inner.call(req), grpc: None };
        }
        // A malformed deadline is ignored, as gRPC servers do: the call runs
        // under the gateway's own bounds.
        let deadline = req.headers().get("grpc-timeout").and_then(|v| parse_timeout(v.as_bytes()));
        let sleep = deadline.map(|d| Box::pin(tokio::time::sleep(d)));
        future::ResponseFuture { future: self.inner.call(req), grpc: Some(sleep) }
    }
}

pub mod future {
    //! The future of [`Grpc`](super::Grpc).

    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use http::{Response, StatusCode};
    use pin_project_lite::pin_project;
    use tokio::time::Sleep;

    use super::{Refusal, code_for, is_grpc, trailers_only};
    use crate::body::ResponseBody;

    pin_project! {
        /// The response future of [`Grpc`](super::Grpc).
        #[derive(Debug)]
        pub struct ResponseFuture<F> {
            #[pin]
            pub(super) future: F,
            // `None`: not gRPC; `Some(None)`: gRPC without a deadline.
            pub(super) grpc: Option<Option<Pin<Box<Sleep>>>>,
        }
    }

    impl<F, B, E> Future for ResponseFuture<F>
    where
        F: Future<Output = Result<Response<B>, E>>,
    {
        type Output = Result<Response<ResponseBody<B>>, E>;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            let this = self.project();
            let Some(deadline) = this.grpc else {
                return this.future.poll(cx).map(|r| r.map(|res| res.map(ResponseBody::new)));
            };
            let response = match this.future.poll(cx) {
                Poll::Ready(response) => response?,
                Poll::Pending => {
                    if let Some(sleep) = deadline {
                        std::task::ready!(sleep.as_mut().poll(cx));
                        let message = "the call's grpc-timeout passed at the gateway";
                        return Poll::Ready(Ok(trailers_only(http::HeaderMap::new(), 4, message)));
                    }
                    return Poll::Pending;
                }
            };
            // A gRPC server's answer (whatever its status in it) passes as it is.
            if response.status() == StatusCode::OK && is_grpc(response.headers()) {
                return Poll::Ready(Ok(response.map(ResponseBody::new)));
            }
            let status = response.status();
            let message = match response.extensions().get::<Refusal>() {
                Some(refusal) => refusal.message().to_owned(),
                None => format!("HTTP {status} from the gateway or a non-gRPC upstream"),
            };
            let (parts, _) = response.into_parts();
            let mut answer = trailers_only(parts.headers, code_for(status), &message);
            *answer.extensions_mut() = parts.extensions;
            Poll::Ready(Ok(answer))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower::ServiceExt;

    use super::*;
    use crate::error::json_error;

    fn grpc(path: &str) -> http::request::Builder {
        Request::post(path).header("content-type", "application/grpc+proto").header("te", "trailers")
    }

    #[test]
    fn grpc_content_types_are_recognised_and_others_not() {
        let ct = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(v));
            is_grpc(&h)
        };
        assert!(ct("application/grpc") && ct("application/grpc+proto") && ct("Application/GRPC;x=1"));
        assert!(!ct("application/grpc-web") && !ct("application/json") && !ct("application/grp"));
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn timeouts_and_messages_are_read_and_written_as_grpc_says() {
        assert_eq!(parse_timeout(b"10S"), Some(Duration::from_secs(10)));
        assert_eq!(parse_timeout(b"99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in [&b"S"[..], b"10", b"10s", b"-1S", b"1.5S", b""] {
            assert_eq!(parse_timeout(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(encode_message("50% off: café"), "50%25 off: caf%C3%A9");
    }

    #[tokio::test]
    async fn each_refusal_becomes_its_grpc_status_in_trailers_only_form() {
        for (status, code) in [(401, "16"), (403, "7"), (404, "12"), (429, "8"), (503, "14"), (504, "4"), (400, "13")] {
            let svc = GrpcLayer::new().layer(tower::service_fn(move |_: Request<()>| async move {
                let mut refused: Response<Bytes> =
                    json_error(StatusCode::from_u16(status).unwrap(), "no", "refused here");
                refused.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                Ok::<_, Infallible>(refused)
            }));
            let res = svc.oneshot(grpc("/pkg.Svc/Call").body(()).unwrap()).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK, "{status}");
            assert_eq!(res.headers()["content-type"], "application/grpc");
            assert_eq!(res.headers()["grpc-status"], code, "{status}");
            assert_eq!(res.headers()["grpc-message"], "refused here");
            assert_eq!(res.headers()["retry-after"], "1", "the refusal's other headers are kept");
            assert!(matches!(res.into_body().into_inner(), Err(body) if body.is_empty()), "no body");
        }
    }

    #[tokio::test]
    async fn a_grpc_servers_answer_and_plain_requests_pass_untouched() {
        let svc = GrpcLayer::new().layer(tower::service_fn(|req: Request<()>| async move {
            let grpc = is_grpc(req.headers());
            let mut res = Response::new(Bytes::from_static(b"payload"));
            if grpc {
                res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            } else {
                *res.status_mut() = StatusCode::NOT_FOUND;
            }
            Ok::<_, Infallible>(res)
        }));
        let res = svc.clone().oneshot(grpc("/pkg.Svc/Call").body(()).unwrap()).await.unwrap();
        assert!(!res.headers().contains_key("grpc-status"));
        let plain = svc.oneshot(Request::get("/x").body(()).unwrap()).await.unwrap();
        assert_eq!(plain.status(), StatusCode::NOT_FOUND, "not gRPC: untouched");
    }

    #[tokio::test(start_paused = true)]
    async fn the_clients_deadline_ends_the_call_with_deadline_exceeded() {
        let svc = GrpcLayer::new().layer(tower::service_fn(|_: Request<()>| async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<_, Infallible>(Response::new(Bytes::new()))
        }));
        let started = tokio::time::Instant::now();
        let req = grpc("/pkg.Svc/Slow").header("grpc-timeout", "250m").body(()).unwrap();
        let res = svc.oneshot(req).await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_millis(250));
        assert_eq!(res.headers()["grpc-status"], "4");
    }
}
