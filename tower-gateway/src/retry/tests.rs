use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Method;
use http_body_util::{BodyExt, Full, StreamBody};
use tokio::time::Instant;
use tower::ServiceExt;
use tower::retry::budget::TpsBudget;

use super::*;
use crate::TimeoutLayer;
use crate::error::{UpstreamError, UpstreamErrorKind};

type Calls = Arc<Mutex<Vec<(Instant, Bytes)>>>;

/// An inner service that records each attempt (when, and the body it got) and
/// answers the n-th attempt (from 0) with `answer(n)`.
fn recording(
    answer: impl Fn(usize) -> Response<Bytes> + Clone + Send + 'static,
) -> (Calls, impl Service<Request<ReplayBody<Full<Bytes>>>, Response = Response<Bytes>, Error = Infallible> + Clone) {
    let calls = Calls::default();
    let seen = calls.clone();
    let svc = tower::service_fn(move |req: Request<ReplayBody<Full<Bytes>>>| {
        let (seen, answer) = (seen.clone(), answer.clone());
        async move {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let n = {
                let mut seen = seen.lock().unwrap();
                seen.push((Instant::now(), body));
                seen.len() - 1
            };
            Ok::<_, Infallible>(answer(n))
        }
    });
    (calls, svc)
}

fn status(code: u16) -> Response<Bytes> {
    Response::builder().status(code).body(Bytes::new()).unwrap()
}

fn refused() -> Response<Bytes> {
    UpstreamError::new(UpstreamErrorKind::Connect).into_response()
}

fn reset() -> Response<Bytes> {
    UpstreamError::new(UpstreamErrorKind::Reset).into_response()
}

fn request(method: Method, body: &'static str) -> Request<Full<Bytes>> {
    Request::builder().method(method).uri("/").body(Full::new(Bytes::from_static(body.as_bytes()))).unwrap()
}

fn policy() -> RetryPolicy {
    // A budget large enough never to be the reason a test stops retrying.
    RetryPolicy::new().budget(TpsBudget::new(Duration::from_secs(10), 1_000, 1.0))
}

#[tokio::test(start_paused = true)]
async fn retries_up_to_max_attempts_then_gives_the_last_answer() {
    let (calls, inner) = recording(|_| status(503));
    let res = RetryLayer::new(policy()).layer(inner).oneshot(request(Method::GET, "")).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(calls.lock().unwrap().len(), 3);
    assert_eq!(res.extensions().get::<Attempts>(), Some(&Attempts(3)));
}

#[tokio::test(start_paused = true)]
async fn success_after_failures_stops_retrying() {
    let (calls, inner) = recording(|n| if n == 0 { refused() } else { status(200) });
    let res = RetryLayer::new(policy()).layer(inner).oneshot(request(Method::GET, "")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(calls.lock().unwrap().len(), 2);
    assert_eq!(res.extensions().get::<Attempts>(), Some(&Attempts(2)));
}

#[tokio::test(start_paused = true)]
async fn delays_grow_exponentially_within_jitter_bounds() {
    let policy = policy().max_attempts(4).backoff(Duration::from_millis(100), Duration::from_secs(10), 0.5).unwrap();
    let layer = RetryLayer::new(policy);
    let mut first_delays = Vec::new();
    for _ in 0..20 {
        let (calls, inner) = recording(|_| status(502));
        layer.layer(inner).oneshot(request(Method::GET, "")).await.unwrap();
        let calls = calls.lock().unwrap();
        assert_eq!(calls.len(), 4);
        let delays: Vec<Duration> = calls.windows(2).map(|w| w[1].0 - w[0].0).collect();
        for (i, delay) in delays.iter().enumerate() {
            let base = Duration::from_millis(100 * 2u64.pow(i as u32));
            assert!(*delay >= base && *delay <= base.mul_f64(1.5), "retry {i}: {delay:?} outside [{base:?}, 1.5x]");
        }
        first_delays.push(delays[0]);
    }
    first_delays.dedup();
    assert!(first_delays.len() > 1, "every request drew the same jitter: {first_delays:?}");
}

#[tokio::test(start_paused = true)]
async fn non_idempotent_requests_are_retried_only_when_nothing_was_sent() {
    // A reset after the request went out: a POST must not be sent twice.
    let (calls, inner) = recording(|_| reset());
    let res = RetryLayer::new(policy()).layer(inner).oneshot(request(Method::POST, "order")).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(calls.lock().unwrap().len(), 1);

    // 503 from the upstream: same.
    let (calls, inner) = recording(|_| status(503));
    RetryLayer::new(policy()).layer(inner).oneshot(request(Method::POST, "order")).await.unwrap();
    assert_eq!(calls.lock().unwrap().len(), 1);

    // Refused connection: nothing was sent, so the POST may go again.
    let (calls, inner) = recording(|n| if n == 0 { refused() } else { status(201) });
    let res = RetryLayer::new(policy()).layer(inner).oneshot(request(Method::POST, "order")).await.unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(calls.lock().unwrap().len(), 2);

    // An Idempotency-Key makes a POST safe to repeat where the upstream honours it...
    let keyed = || {
        let mut req = request(Method::POST, "order");
        req.headers_mut().insert(&IDEMPOTENCY_KEY, http::HeaderValue::from_static("k-1"));
        req
    };
    let (calls, inner) = recording(|n| if n == 0 { reset() } else { status(201) });
    let res = RetryLayer::new(policy().retry_idempotency_key(true)).layer(inner).oneshot(keyed()).await.unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(calls.lock().unwrap().len(), 2);
    // ...and only there.
    let (calls, inner) = recording(|n| if n == 0 { reset() } else { status(201) });
    let res = RetryLayer::new(policy()).layer(inner).oneshot(keyed()).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(calls.lock().unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn replayed_body_is_identical() {
    let body = "{\"product_id\":1,\"quantity\":3}";
    let (calls, inner) = recording(|n| if n < 2 { refused() } else { status(201) });
    RetryLayer::new(policy()).layer(inner).oneshot(request(Method::POST, body)).await.unwrap();
    let calls = calls.lock().unwrap();
    assert_eq!(calls.len(), 3);
    for (_, seen) in calls.iter() {
        assert_eq!(seen, body);
    }
}

#[tokio::test(start_paused = true)]
async fn bodies_over_the_cap_are_streamed_once_and_not_retried() {
    let (calls, inner) = recording(|_| refused());
    let layer = RetryLayer::new(policy()).max_replay_body(4);
    let res = layer.layer(inner).oneshot(request(Method::PUT, "12345")).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    let calls = calls.lock().unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].1, "12345", "the streamed body arrives whole");
}

#[tokio::test(start_paused = true)]
async fn exhausted_budget_stops_retries() {
    // No deposits count, and a reserve of exactly one retry.
    let policy = RetryPolicy::new().budget(TpsBudget::new(Duration::from_secs(1), 1, 0.0));
    let layer = RetryLayer::new(policy);
    let (calls, inner) = recording(|_| status(503));
    let svc = layer.layer(inner);
    svc.clone().oneshot(request(Method::GET, "")).await.unwrap();
    assert_eq!(calls.lock().unwrap().len(), 2, "one retry from the reserve");
    svc.oneshot(request(Method::GET, "")).await.unwrap();
    assert_eq!(calls.lock().unwrap().len(), 3, "then no more retries");
}

#[tokio::test(start_paused = true)]
async fn per_try_timeout_answers_504_and_retries_idempotent_requests() {
    let slow_first = |calls: Calls| {
        tower::service_fn(move |_: Request<ReplayBody<Full<Bytes>>>| {
            let calls = calls.clone();
            async move {
                let n = {
                    let mut calls = calls.lock().unwrap();
                    calls.push((Instant::now(), Bytes::new()));
                    calls.len()
                };
                if n == 1 {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
                Ok::<_, Infallible>(status(200))
            }
        })
    };
    // The timeout under the retry layer bounds each attempt.
    let layer =
        tower::ServiceBuilder::new().layer(RetryLayer::new(policy())).layer(TimeoutLayer::new(Duration::from_secs(1)));

    let calls = Calls::default();
    let start = Instant::now();
    let res = layer.service(slow_first(calls.clone())).oneshot(request(Method::GET, "")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(calls.lock().unwrap().len(), 2);
    assert!(start.elapsed() < Duration::from_secs(2), "gave up on the slow try after 1 s");

    let calls = Calls::default();
    let res = layer.service(slow_first(calls.clone())).oneshot(request(Method::POST, "x")).await.unwrap();
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(res.extensions().get::<UpstreamError>().unwrap().kind(), UpstreamErrorKind::Timeout);
    assert_eq!(calls.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn broken_request_body_is_answered_400() {
    let inner = tower::service_fn(|_: Request<ReplayBody<_>>| async {
        panic!("a request whose body broke must not be sent") as Result<Response<Bytes>, Infallible>
    });
    let chunks = futures_util::stream::iter(vec![
        Ok(http_body::Frame::data(Bytes::from_static(b"par"))),
        Err(std::io::Error::other("client went away")),
    ]);
    let body = http_body_util::combinators::BoxBody::new(StreamBody::new(chunks));
    // A length the body claims, within the replay cap, so it is buffered.
    let req = Request::post("/").body(WithHint { inner: body, len: 10 }).unwrap();
    let res = RetryLayer::new(policy()).layer(inner).oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
}

pin_project_lite::pin_project! {
    /// A body that reports an exact length, as a Content-Length would.
    struct WithHint<B> { #[pin] inner: B, len: u64 }
}

impl<B: HttpBody> HttpBody for WithHint<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.len)
    }
}

/// A policy of the user's own: any `tower::retry::Policy` over the replayable
/// request fits, and the layer still buffers bodies for it.
#[derive(Clone, Default)]
struct OnceOn503 {
    retried: bool,
}

impl<B, E> tower::retry::Policy<Request<ReplayBody<B>>, Response<Bytes>, E> for OnceOn503 {
    type Future = std::future::Ready<()>;

    fn retry(
        &mut self,
        _: &mut Request<ReplayBody<B>>,
        result: &mut Result<Response<Bytes>, E>,
    ) -> Option<Self::Future> {
        let again = !self.retried && matches!(result, Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE);
        self.retried |= again;
        again.then(|| std::future::ready(()))
    }

    fn clone_request(&mut self, req: &Request<ReplayBody<B>>) -> Option<Request<ReplayBody<B>>> {
        let mut clone = Request::new(req.body().try_clone()?);
        *clone.method_mut() = req.method().clone();
        Some(clone)
    }
}

#[tokio::test]
async fn a_custom_tower_policy_drives_the_layer() {
    let (calls, inner) = recording(|n| status(if n == 0 { 503 } else { 200 }));
    let svc = RetryLayer::new(OnceOn503::default()).layer(inner);
    let res = svc.oneshot(request(Method::POST, "body")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let calls = calls.lock().unwrap();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1].1, "body", "the body was replayed for the policy");
}
