use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use tower::{ServiceBuilder, ServiceExt, service_fn};

use super::key::{ClientIp, Global};
use super::*;
use crate::{PeerAddr, ResponseBody};

type Svc = tower::util::BoxCloneService<Request<()>, Response<ResponseBody<Full<Bytes>>>, std::convert::Infallible>;

/// A service behind `limiter`, keyed by client address, counting the requests it sees.
fn limited(limiter: Limiter, seen: Arc<AtomicUsize>) -> Svc {
    let svc = ServiceBuilder::new().layer(RateLimitLayer::new(limiter, ClientIp::new())).service(service_fn(
        move |_: Request<()>| {
            seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            async { Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(b"ok")))) }
        },
    ));
    tower::util::BoxCloneService::new(svc)
}

fn from(ip: &str) -> Request<()> {
    let mut req = Request::new(());
    req.extensions_mut().insert(PeerAddr(format!("{ip}:1000").parse().unwrap()));
    req
}

fn seen(counter: &AtomicUsize) -> usize {
    counter.load(std::sync::atomic::Ordering::Relaxed)
}

#[tokio::test(start_paused = true)]
async fn over_the_limit_is_429_with_retry_after_and_the_ietf_fields() {
    let counter = Arc::new(AtomicUsize::new(0));
    let svc = limited(Limiter::new("api", Quota::per_second(2)), counter.clone());

    let first = svc.clone().oneshot(from("192.0.2.1")).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.headers()["ratelimit-policy"], r#""api";q=2;w=1"#);
    assert_eq!(first.headers()["ratelimit"], r#""api";r=1;t=1"#);
    let second = svc.clone().oneshot(from("192.0.2.1")).await.unwrap();
    assert_eq!(second.headers()["ratelimit"], r#""api";r=0;t=1"#);

    let third = svc.clone().oneshot(from("192.0.2.1")).await.unwrap();
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(third.headers()["retry-after"], "1");
    assert_eq!(third.headers()["ratelimit"], r#""api";r=0;t=1"#);
    assert_eq!(third.headers()["content-type"], "application/json");
    assert_eq!(third.extensions().get::<RateLimited>().map(|r| (&*r.limit, r.over_limit)), Some(("api", true)));
    let body: serde_json::Value =
        serde_json::from_slice(&third.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    assert_eq!(seen(&counter), 2, "the refused request never reached the service");

    // Another client is served meanwhile; the first recovers after one interval.
    assert_eq!(svc.clone().oneshot(from("192.0.2.2")).await.unwrap().status(), StatusCode::OK);
    tokio::time::advance(Duration::from_millis(499)).await;
    assert_eq!(svc.clone().oneshot(from("192.0.2.1")).await.unwrap().status(), StatusCode::TOO_MANY_REQUESTS);
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(svc.clone().oneshot(from("192.0.2.1")).await.unwrap().status(), StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn stacked_limits_each_add_their_fields_and_count_separately() {
    let per_client = Limiter::new("client", Quota::per_minute(3));
    let route = Limiter::new("route", Quota::per_minute(100));
    let svc = ServiceBuilder::new()
        .layer(RateLimitLayer::new(route.clone(), Global))
        .layer(RateLimitLayer::new(per_client.clone(), ClientIp::new()))
        .service(service_fn(|_: Request<()>| async {
            Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::new())))
        }));
    let res = svc.clone().oneshot(from("192.0.2.1")).await.unwrap();
    let fields: Vec<_> = res.headers().get_all("ratelimit").iter().map(|v| v.to_str().unwrap().to_owned()).collect();
    assert_eq!(fields, [r#""client";r=2;t=20"#, r#""route";r=99;t=1"#]);
    for _ in 0..5 {
        svc.clone().oneshot(from("192.0.2.1")).await.unwrap();
    }
    assert_eq!((per_client.stats().allowed, per_client.stats().limited), (3, 3));
    assert_eq!(route.stats().allowed, 6, "the outer limit counted the requests the inner one refused");
}

#[tokio::test(start_paused = true)]
async fn requests_without_a_key_share_one_bucket() {
    let counter = Arc::new(AtomicUsize::new(0));
    let svc = limited(Limiter::new("api", Quota::per_second(1)), counter.clone());
    assert_eq!(svc.clone().oneshot(Request::new(())).await.unwrap().status(), StatusCode::OK);
    assert_eq!(svc.clone().oneshot(Request::new(())).await.unwrap().status(), StatusCode::TOO_MANY_REQUESTS);
}

/// A shared store in memory, that can be made to fail or hang, counting calls.
#[derive(Debug, Default)]
struct FlakyStore {
    state: MemoryStore,
    mode: Mutex<Mode>,
    calls: AtomicUsize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
enum Mode {
    #[default]
    Up,
    Failing,
    Hanging,
}

impl FlakyStore {
    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn calls(&self) -> usize {
        seen(&self.calls)
    }
}

impl Store for FlakyStore {
    fn decide<'a>(&'a self, key: &'a str, quota: &'a Quota) -> BoxFuture<'a, Result<Decision, StoreError>> {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mode = *self.mode.lock().unwrap();
        Box::pin(async move {
            match mode {
                Mode::Up => Ok(self.state.decide(key, quota)),
                Mode::Failing => Err(StoreError::new("connection refused")),
                Mode::Hanging => std::future::pending().await,
            }
        })
    }
}

fn shared(store: &Arc<FlakyStore>, on_error: OnStoreError) -> Limiter {
    Limiter::builder("shared", Quota::per_second(10))
        .store(store.clone())
        .on_store_error(on_error)
        .store_timeout(Duration::from_millis(50))
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_spent_key_is_refused_without_asking_the_store() {
    let store = Arc::new(FlakyStore::default());
    let svc = limited(shared(&store, OnStoreError::FailOpen), Arc::default());
    for _ in 0..10 {
        assert_eq!(svc.clone().oneshot(from("192.0.2.1")).await.unwrap().status(), StatusCode::OK);
    }
    assert_eq!(store.calls(), 10);
    for _ in 0..1000 {
        assert_eq!(svc.clone().oneshot(from("192.0.2.1")).await.unwrap().status(), StatusCode::TOO_MANY_REQUESTS);
    }
    assert_eq!(store.calls(), 10, "the store's last answer said the key is spent: no round trip until it recovers");
    tokio::time::advance(Duration::from_millis(100)).await;
    assert_eq!(svc.clone().oneshot(from("192.0.2.1")).await.unwrap().status(), StatusCode::OK);
    assert_eq!(store.calls(), 11, "asked again once the key could be admitted");
}

#[tokio::test(start_paused = true)]
async fn fail_open_decides_locally_from_the_mirrored_state_and_recovers() {
    let store = Arc::new(FlakyStore::default());
    let limiter = shared(&store, OnStoreError::FailOpen);
    let svc = limited(limiter.clone(), Arc::default());
    for _ in 0..8 {
        svc.clone().oneshot(from("192.0.2.1")).await.unwrap();
    }
    store.set(Mode::Failing);
    // The store said 2 are left; the local state knows it.
    let statuses: Vec<u16> = futures_util::future::join_all((0..4).map(|_| svc.clone().oneshot(from("192.0.2.1"))))
        .await
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    assert_eq!(statuses, [200, 200, 429, 429]);
    assert_eq!(store.calls(), 9, "after one failure the store is left alone");
    let stats = limiter.stats();
    // Two admitted locally; then the local state knew the key spent, as the store would have.
    assert_eq!((stats.fallback_allowed, stats.limited, stats.store_errors), (2, 2, 1));
    // Still at about the configured rate while the store is down.
    tokio::time::advance(Duration::from_millis(100)).await;
    assert_eq!(svc.clone().oneshot(from("192.0.2.1")).await.unwrap().status(), StatusCode::OK);
    assert_eq!(svc.clone().oneshot(from("192.0.2.1")).await.unwrap().status(), StatusCode::TOO_MANY_REQUESTS);

    // Back: asked again after the retry interval, and its word counts again.
    store.set(Mode::Up);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(svc.clone().oneshot(from("192.0.2.3")).await.unwrap().status(), StatusCode::OK);
    assert_eq!(store.calls(), 10);
    assert_eq!(limiter.stats().allowed, 9);
}

#[tokio::test(start_paused = true)]
async fn fail_closed_answers_503_within_the_store_timeout() {
    let store = Arc::new(FlakyStore::default());
    let limiter = shared(&store, OnStoreError::FailClosed);
    let svc = limited(limiter.clone(), Arc::default());
    store.set(Mode::Hanging);
    let started = tokio::time::Instant::now();
    let res = svc.clone().oneshot(from("192.0.2.1")).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(started.elapsed(), Duration::from_millis(50), "decided at the store timeout");
    assert_eq!(res.headers()["retry-after"], "1");
    assert_eq!(res.extensions().get::<RateLimited>().map(|r| r.over_limit), Some(false));
    // Meanwhile nothing waits.
    let started = tokio::time::Instant::now();
    assert_eq!(svc.clone().oneshot(from("192.0.2.2")).await.unwrap().status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(started.elapsed(), Duration::ZERO);
    store.set(Mode::Up);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(svc.clone().oneshot(from("192.0.2.2")).await.unwrap().status(), StatusCode::OK);
    assert_eq!((limiter.stats().unavailable, limiter.stats().allowed), (2, 1));
}

#[test]
fn names_must_be_safe_in_keys_and_fields() {
    for bad in ["", "has space", "quo\"te", "semi;colon", &"x".repeat(65)] {
        assert!(Limiter::builder(bad, Quota::per_second(1)).build().is_err(), "{bad:?}");
    }
    assert_eq!(Limiter::new("login-ip.v2_a", Quota::per_minute(10)).policy(), r#""login-ip.v2_a";q=10;w=60"#);
}
