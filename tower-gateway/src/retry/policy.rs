//! When to retry, and how long to wait: the [`tower::retry::Policy`] behind
//! [`RetryLayer`](super::RetryLayer).

use std::collections::hash_map::RandomState;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method, Request, Response, StatusCode};
use tower::retry::Policy;
use tower::retry::backoff::{Backoff, ExponentialBackoff, ExponentialBackoffMaker, InvalidBackoff, MakeBackoff};
use tower::retry::budget::{Budget, TpsBudget};
use tower::util::rng::{HasherRng, Rng};

use super::body::ReplayBody;
use crate::error::{UpstreamError, UpstreamErrorKind};

/// The header that marks a non-idempotent request as safe to send twice.
pub static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// How many attempts a request took, in the extensions of a response that went
/// through [`Retry`](super::Retry) with a replayable body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempts(pub u32);

/// A jitter source whose clones draw different numbers.
///
/// tower's backoff clones its RNG for every request; cloning a seeded RNG would
/// give every request the same "random" delays and line their retries up again —
/// the herd that jitter exists to break. So a clone here is a freshly seeded one.
#[derive(Debug)]
pub(crate) struct FreshRng(HasherRng);

impl Clone for FreshRng {
    fn clone(&self) -> Self {
        Self(HasherRng::with_hasher(RandomState::new()))
    }
}

impl Rng for FreshRng {
    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
}

#[derive(Debug, Clone)]
struct Config {
    max_attempts: u32,
    trust_idempotency_key: bool,
    backoff: ExponentialBackoffMaker<FreshRng>,
    grpc: Option<Arc<GrpcRetry>>,
}

/// Which gRPC calls may be retried, and on which statuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GrpcRetry {
    codes: Box<[u16]>,
    methods: Box<[Box<str>]>,
}

impl GrpcRetry {
    /// Whether the gRPC call at `path` (`/package.Service/Method`) is one of them.
    pub(crate) fn takes(&self, path: &str) -> bool {
        self.methods.iter().any(|m| **m == *path)
    }
}

/// Decides which failed requests to send again, when, and how often.
///
/// - A connection that was never made ([`UpstreamErrorKind::Connect`]) is retried
///   for every method: nothing reached the upstream.
/// - `502`, `503`, `504` (resets and timeouts among them) and errors of the inner
///   service are retried only for idempotent methods (`GET`, `HEAD`, `OPTIONS`,
///   `TRACE`, `PUT`, `DELETE`) — and for requests with an `Idempotency-Key` header
///   only where the upstream honours one, which you say with
///   [`retry_idempotency_key`](Self::retry_idempotency_key): a client's key
///   proves nothing about an upstream that ignores it.
/// - A gRPC call (`content-type: application/grpc`) is retried, besides a
///   connection never made, only if [`retry_grpc`](Self::retry_grpc) names its
///   method, and only when its status is one named there: a `grpc-status` in a
///   trailers-only answer (a status that comes after messages cannot be undone),
///   or the code a gateway error maps to ([`grpc::code_for`](crate::grpc::code_for):
///   `503` is UNAVAILABLE, `504` DEADLINE_EXCEEDED).
/// - At most [`max_attempts`](Self::max_attempts) attempts in all (default 3, the
///   seed's), waiting an exponential backoff with jitter between them (default:
///   100 ms, doubling, at most 2 s, plus up to 50 % jitter), and only while the
///   retry [budget](Self::budget) allows (default: tower's [`TpsBudget`], retries
///   up to 20 % of requests plus 10 a second), so that retries cannot multiply the
///   load on an upstream that is already failing.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    config: Arc<Config>,
    budget: Arc<TpsBudget>,
    attempts: u32,
    backoff: Option<ExponentialBackoff<FreshRng>>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::new()
    }
}

impl RetryPolicy {
    /// The default policy: 3 attempts, 100 ms–2 s backoff with 50 % jitter, tower's default budget.
    pub fn new() -> Self {
        let backoff = ExponentialBackoffMaker::new(
            Duration::from_millis(100),
            Duration::from_secs(2),
            0.5,
            FreshRng(HasherRng::new()),
        )
        .expect("the default backoff is valid");
        Self {
            config: Arc::new(Config { max_attempts: 3, trust_idempotency_key: false, backoff, grpc: None }),
            budget: Arc::new(TpsBudget::default()),
            attempts: 1,
            backoff: None,
        }
    }

    /// At most `attempts` attempts per request, the first included (at least 1).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        Arc::make_mut(&mut self.config).max_attempts = attempts.max(1);
        self
    }

    /// Waits `min` before the first retry, doubling each time up to `max`, plus a
    /// random extra of up to `jitter` times that (0.0–100.0).
    pub fn backoff(mut self, min: Duration, max: Duration, jitter: f64) -> Result<Self, InvalidBackoff> {
        Arc::make_mut(&mut self.config).backoff =
            ExponentialBackoffMaker::new(min, max, jitter, FreshRng(HasherRng::new()))?;
        Ok(self)
    }

    /// Whether the upstream honours `Idempotency-Key` (answers a repeated key
    /// with the first result), so that a request carrying one may be retried
    /// whatever its method (default: no).
    pub fn retry_idempotency_key(mut self, honoured: bool) -> Self {
        Arc::make_mut(&mut self.config).trust_idempotency_key = honoured;
        self
    }

    /// Retries the gRPC calls of `methods` (their paths, `/package.Service/Method`)
    /// that answer one of `codes` (gRPC status codes: 14 is UNAVAILABLE). Name
    /// unary methods only: a call's request body is read whole before it is sent
    /// (see [`RetryLayer`](super::RetryLayer)), which a streaming call would
    /// wait on for ever.
    pub fn retry_grpc(
        mut self,
        codes: impl IntoIterator<Item = u16>,
        methods: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        let grpc = GrpcRetry {
            codes: codes.into_iter().collect(),
            methods: methods.into_iter().map(|m| m.into().into_boxed_str()).collect(),
        };
        Arc::make_mut(&mut self.config).grpc = (!grpc.methods.is_empty()).then(|| Arc::new(grpc));
        self
    }

    /// The gRPC calls this policy may retry, if any.
    pub(crate) fn grpc(&self) -> Option<&Arc<GrpcRetry>> {
        self.config.grpc.as_ref()
    }

    /// The retry budget, shared by every request through this policy's layer.
    pub fn budget(mut self, budget: TpsBudget) -> Self {
        self.budget = Arc::new(budget);
        self
    }

    pub(crate) fn deposit(&self) {
        self.budget.deposit();
    }

    fn done<B>(&self, result: &mut Result<Response<B>, impl Sized>) -> Option<tokio::time::Sleep> {
        if let Ok(response) = result {
            response.extensions_mut().insert(Attempts(self.attempts));
        }
        None
    }
}

/// RFC 9110 §9.2.2, plus an `Idempotency-Key` where the upstream honours one.
pub(crate) fn is_idempotent<B>(req: &Request<B>, trust_key: bool) -> bool {
    matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE)
        || (trust_key && req.headers().contains_key(&IDEMPOTENCY_KEY))
}

/// Whether a failed attempt may be sent again (budget and attempts aside).
pub(crate) fn is_retryable<B, RB, E>(
    req: &Request<B>,
    result: &Result<Response<RB>, E>,
    trust_key: bool,
    grpc: Option<&GrpcRetry>,
) -> bool {
    match result {
        Ok(response) => {
            if response.extensions().get::<UpstreamError>().is_some_and(|e| e.kind() == UpstreamErrorKind::Connect) {
                return true;
            }
            if crate::grpc::is_grpc(req.headers()) {
                let Some(grpc) = grpc.filter(|g| g.takes(req.uri().path())) else { return false };
                let code = if response.status() == StatusCode::OK && crate::grpc::is_grpc(response.headers()) {
                    // Trailers-only: the status is in the head. Otherwise it
                    // comes after messages already on their way.
                    response.headers().get("grpc-status").and_then(|v| v.to_str().ok()?.parse::<u16>().ok())
                } else {
                    Some(crate::grpc::code_for(response.status()))
                };
                return code.is_some_and(|code| grpc.codes.contains(&code));
            }
            matches!(
                response.status(),
                StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
            ) && is_idempotent(req, trust_key)
        }
        Err(_) => is_idempotent(req, trust_key) && !crate::grpc::is_grpc(req.headers()),
    }
}

impl<B, RB, E> Policy<Request<ReplayBody<B>>, Response<RB>, E> for RetryPolicy {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        req: &mut Request<ReplayBody<B>>,
        result: &mut Result<Response<RB>, E>,
    ) -> Option<Self::Future> {
        let config = &self.config;
        if !is_retryable(req, result, config.trust_idempotency_key, config.grpc.as_deref())
            || self.attempts >= config.max_attempts
        {
            return self.done(result);
        }
        if !self.budget.withdraw() {
            tracing::debug!(attempts = self.attempts, "retry budget exhausted");
            return self.done(result);
        }
        self.attempts += 1;
        let config = &self.config;
        let backoff = self.backoff.get_or_insert_with(|| config.backoff.clone().make_backoff());
        Some(backoff.next_backoff())
    }

    fn clone_request(&mut self, req: &Request<ReplayBody<B>>) -> Option<Request<ReplayBody<B>>> {
        // tower's Retry asks this once per request before the first attempt (on
        // the service's own policy, still at its first attempt), then once per
        // retry: the request's deposit into the budget goes here.
        if self.attempts == 1 {
            self.deposit();
        }
        let body = req.body().try_clone()?;
        let mut clone = Request::new(body);
        *clone.method_mut() = req.method().clone();
        *clone.uri_mut() = req.uri().clone();
        *clone.version_mut() = req.version();
        *clone.headers_mut() = req.headers().clone();
        *clone.extensions_mut() = req.extensions().clone();
        Some(clone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, key: bool) -> Request<()> {
        let mut builder = Request::builder().method(method);
        if key {
            builder = builder.header(&IDEMPOTENCY_KEY, "k1");
        }
        builder.body(()).unwrap()
    }

    fn status(code: u16) -> Result<Response<()>, ()> {
        Ok(Response::builder().status(code).body(()).unwrap())
    }

    #[test]
    fn connect_failures_are_retried_for_every_method() {
        let refused: Result<Response<()>, ()> =
            Ok(UpstreamError::new(UpstreamErrorKind::Connect).into_response::<bytes::Bytes>().map(|_| ()));
        for method in [Method::GET, Method::POST, Method::PATCH] {
            assert!(is_retryable(&req(method, false), &refused, false, None));
        }
    }

    #[test]
    fn gateway_errors_are_retried_only_when_idempotent() {
        for code in [502, 503, 504] {
            assert!(is_retryable(&req(Method::GET, false), &status(code), false, None));
            assert!(is_retryable(&req(Method::PUT, false), &status(code), false, None));
            assert!(is_retryable(&req(Method::DELETE, false), &status(code), false, None));
            assert!(!is_retryable(&req(Method::POST, false), &status(code), true, None));
            assert!(!is_retryable(&req(Method::PATCH, false), &status(code), true, None));
            assert!(is_retryable(&req(Method::POST, true), &status(code), true, None));
            assert!(!is_retryable(&req(Method::POST, true), &status(code), false, None), "a key the upstream ignores");
        }
        assert!(is_retryable(&req(Method::GET, false), &Err::<Response<()>, _>(()), false, None));
        assert!(!is_retryable(&req(Method::POST, false), &Err::<Response<()>, _>(()), true, None));
    }

    #[test]
    fn other_statuses_are_not_retried() {
        for code in [200, 201, 400, 404, 409, 422, 500, 501] {
            assert!(!is_retryable(&req(Method::GET, true), &status(code), true, None), "{code}");
        }
    }

    #[test]
    fn fresh_rng_clones_differ() {
        let mut a = FreshRng(HasherRng::new());
        let mut b = a.clone();
        let mut c = b.clone();
        let (x, y, z) = (a.next_u64(), b.next_u64(), c.next_u64());
        assert!(x != y || y != z, "clones drew the same numbers");
    }

    #[test]
    fn grpc_calls_are_retried_only_for_named_methods_and_statuses() {
        let grpc = RetryPolicy::new().retry_grpc([14], ["/inventory.v1.Inventory/GetStock"]);
        let grpc = grpc.grpc().map(|g| &**g);
        let call = |path: &str| Request::post(path).header("content-type", "application/grpc").body(()).unwrap();
        let trailers_only = |code: &str| -> Result<Response<()>, ()> {
            Ok(Response::builder()
                .header("content-type", "application/grpc")
                .header("grpc-status", code)
                .body(())
                .unwrap())
        };
        let get_stock = call("/inventory.v1.Inventory/GetStock");
        assert!(is_retryable(&get_stock, &trailers_only("14"), false, grpc), "UNAVAILABLE, named");
        assert!(is_retryable(&get_stock, &status(503), false, grpc), "a gateway 503 is UNAVAILABLE");
        assert!(!is_retryable(&get_stock, &status(504), false, grpc), "DEADLINE_EXCEEDED is not named");
        assert!(!is_retryable(&get_stock, &trailers_only("5"), false, grpc), "NOT_FOUND is not named");
        let ok_head: Result<Response<()>, ()> =
            Ok(Response::builder().header("content-type", "application/grpc").body(()).unwrap());
        assert!(!is_retryable(&get_stock, &ok_head, false, grpc), "a status after messages");
        let reserve = call("/inventory.v1.Inventory/Reserve");
        assert!(!is_retryable(&reserve, &trailers_only("14"), false, grpc), "not a named method");
        assert!(!is_retryable(&get_stock, &trailers_only("14"), false, None), "none named");
        let refused: Result<Response<()>, ()> =
            Ok(UpstreamError::new(UpstreamErrorKind::Connect).into_response::<bytes::Bytes>().map(|_| ()));
        assert!(is_retryable(&reserve, &refused, false, None), "a connection never made, as for any request");
    }
}
