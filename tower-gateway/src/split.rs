//! Split traffic across services by weight, optionally sticky: a canary.
//!
//! [`Split`] holds several services — each typically a whole upstream stack
//! (retries, balancer, proxy) — with a weight each, and sends each request to
//! one of them:
//!
//! - **by weight**: the services take turns in a smooth weighted order
//!   (nginx's), so 90/10 sends exactly 9 of every 10 requests to the first, and
//!   never 90 in a row to either;
//! - **sticky**: when [`sticky`](Split::sticky) names a key (a header, a cookie,
//!   or anything in the request's extensions, such as a verified token's
//!   subject), requests with the same key go to the same service. The choice is
//!   weighted rendezvous hashing, so the weights still hold across keys and
//!   changing one weight moves only the keys it must. It is bounded by load
//!   (consistent hashing with bounded loads, Mirrokni et al. 2018): a service
//!   already holding more than `load_factor` times its share of the requests in
//!   flight passes new ones to the key's next choice, so one hot key cannot
//!   sink a small canary. A request without the key is split by weight.
//!
//! Each request drives the readiness of the service it is sent to (as a
//! router does); `Split` itself is always ready.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use tower::ServiceExt;
//! use tower_gateway::split::{Split, Sticky};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // Two versions of a service (here, one kind of service answering its name).
//! let version = |name: &'static str| {
//!     tower::service_fn(move |_: Request<()>| async move { Ok::<_, Infallible>(Response::new(name)) })
//! };
//! let split = Split::new([(version("stable"), 90), (version("canary"), 10)])
//!     .unwrap()
//!     .sticky(Sticky::Cookie("session".into()));
//!
//! let mut canaries = 0;
//! for _ in 0..100 {
//!     let res = split.clone().oneshot(Request::new(())).await.unwrap();
//!     canaries += usize::from(*res.body() == "canary");
//! }
//! assert_eq!(canaries, 10);
//!
//! // One session, one side: every request with the same cookie lands alike.
//! let session = || Request::get("/").header("cookie", "theme=dark; session=abc123").body(()).unwrap();
//! let first = *split.clone().oneshot(session()).await.unwrap().body();
//! for _ in 0..20 {
//!     assert_eq!(*split.clone().oneshot(session()).await.unwrap().body(), first);
//! }
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use http::{Extensions, HeaderMap, HeaderName, Request};
use pin_project_lite::pin_project;
use tower::ServiceExt;
use tower::util::Oneshot;
use tower_service::Service;

/// Reads a request's sticky key from its headers or extensions, hashed.
pub type KeyFn = Arc<dyn Fn(&HeaderMap, &Extensions) -> Option<u64> + Send + Sync>;

/// What makes a request sticky: requests with the same key go to the same service.
#[derive(Clone)]
pub enum Sticky {
    /// The value of this header.
    Header(HeaderName),
    /// The value of this cookie.
    Cookie(Arc<str>),
    /// A key read from the request's headers or extensions (e.g. a verified
    /// token's subject), hashed with [`hash_key`]; `None` when it has none.
    Custom(KeyFn),
}

impl fmt::Debug for Sticky {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Header(name) => f.debug_tuple("Header").field(name).finish(),
            Self::Cookie(name) => f.debug_tuple("Cookie").field(name).finish(),
            Self::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

impl Sticky {
    /// The request's key, hashed.
    fn key(&self, headers: &HeaderMap, extensions: &Extensions) -> Option<u64> {
        match self {
            Self::Header(name) => headers.get(name).map(|v| hash_key(v.as_bytes())),
            Self::Cookie(name) => cookie(headers, name).map(hash_key),
            Self::Custom(key) => key(headers, extensions),
        }
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers.get_all(http::header::COOKIE).iter().flat_map(|v| v.as_bytes().split(|&b| b == b';')).find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        (&pair[..eq] == name.as_bytes()).then(|| &pair[eq + 1..])
    })
}

/// A stable 64-bit hash of a sticky key: the same in every process and every
/// replica, so a key lands alike behind any of them (FNV-1a, then a mix).
pub fn hash_key(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// SplitMix64's finaliser: spreads every input bit over the output.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The weights given to [`Split::new`] cannot split traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidWeights(&'static str);

impl fmt::Display for InvalidWeights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for InvalidWeights {}

/// The most weights may add up to (after dividing by their common divisor).
const MAX_TOTAL: u32 = 10_000;

struct Shared {
    weights: Box<[u32]>,
    total: u32,
    /// One turn of the smooth weighted order: each service's index, as often as its weight.
    turns: Box<[u16]>,
    next: AtomicUsize,
    in_flight: Box<[AtomicUsize]>,
    sticky: Option<Sticky>,
    /// A service may hold up to this many times its share of the requests in flight.
    load_factor: f64,
}

/// Splits requests across services by weight. See the [module docs](self).
#[must_use]
pub struct Split<S> {
    services: Arc<[S]>,
    shared: Arc<Shared>,
}

impl<S> Clone for Split<S> {
    fn clone(&self) -> Self {
        Self { services: self.services.clone(), shared: self.shared.clone() }
    }
}

impl<S> fmt::Debug for Split<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Split")
            .field("weights", &self.shared.weights)
            .field("sticky", &self.shared.sticky)
            .finish_non_exhaustive()
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// One turn of nginx's smooth weighted round robin over `weights`.
fn smooth_turns(weights: &[u32]) -> Vec<u16> {
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0i64; weights.len()];
    (0..total)
        .map(|_| {
            for (c, &w) in current.iter_mut().zip(weights) {
                *c += i64::from(w);
            }
            let (best, _) = current.iter().enumerate().max_by_key(|&(i, c)| (*c, std::cmp::Reverse(i))).unwrap();
            current[best] -= total;
            best as u16
        })
        .collect()
}

impl<S> Split<S> {
    /// Splits across `services`, each with its weight. A weight of `0` sends
    /// it nothing (a drained side); at least one must be above `0`, and the
    /// weights, divided by their common divisor, add up to at most 10,000.
    pub fn new(services: impl IntoIterator<Item = (S, u32)>) -> Result<Self, InvalidWeights> {
        let (services, weights): (Vec<S>, Vec<u32>) = services.into_iter().unzip();
        if services.len() > usize::from(u16::MAX) {
            return Err(InvalidWeights("too many services"));
        }
        let divisor = weights.iter().fold(0, |g, &w| gcd(g, w));
        if divisor == 0 {
            return Err(InvalidWeights("at least one weight must be above 0"));
        }
        let weights: Box<[u32]> = weights.iter().map(|w| w / divisor).collect();
        let total = weights.iter().try_fold(0u32, |t, &w| t.checked_add(w)).filter(|&t| t <= MAX_TOTAL);
        let Some(total) = total else {
            return Err(InvalidWeights("the weights, divided by their common divisor, add up to more than 10000"));
        };
        let shared = Shared {
            turns: smooth_turns(&weights).into(),
            in_flight: weights.iter().map(|_| AtomicUsize::new(0)).collect(),
            total,
            weights,
            next: AtomicUsize::new(0),
            sticky: None,
            load_factor: 1.25,
        };
        Ok(Self { services: services.into(), shared: Arc::new(shared) })
    }

    /// Sends requests with the same `key` to the same service (see the
    /// [module docs](self)).
    pub fn sticky(self, key: Sticky) -> Self {
        self.with_shared(|shared| shared.sticky = Some(key))
    }

    /// How far a sticky choice may exceed its share of the requests in flight
    /// before its keys' next choice takes new ones (default `1.25`; at least `1`).
    pub fn load_factor(self, factor: f64) -> Self {
        self.with_shared(|shared| shared.load_factor = factor.max(1.0))
    }

    fn with_shared(mut self, change: impl FnOnce(&mut Shared)) -> Self {
        let shared = Arc::get_mut(&mut self.shared).expect("configured before it is cloned");
        change(shared);
        self
    }

    /// The services, in the order given.
    pub fn services(&self) -> &[S] {
        &self.services
    }

    /// Requests in flight at each service, in the order given.
    pub fn in_flight(&self) -> Vec<usize> {
        self.shared.in_flight.iter().map(|n| n.load(Ordering::Relaxed)).collect()
    }
}

impl Shared {
    /// The next service in the weighted order.
    fn by_weight(&self) -> usize {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        usize::from(self.turns[n % self.turns.len()])
    }

    /// The service for `key`: its first choice by weighted rendezvous hashing
    /// that is within its bound of the load.
    fn by_key(&self, key: u64) -> usize {
        let in_flight: usize = self.in_flight.iter().map(|n| n.load(Ordering::Relaxed)).sum();
        let mut ranked: Vec<(f64, usize)> = self
            .weights
            .iter()
            .enumerate()
            .filter(|(_, w)| **w > 0)
            .map(|(i, &w)| {
                // A uniform draw in (0, 1) per key and service; the highest
                // w / -ln(u) wins, which picks each service with probability w / W.
                let u = ((mix(key ^ mix(i as u64 + 1)) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
                (f64::from(w) / -u.ln(), i)
            })
            .collect();
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
        let bound = |i: usize| {
            let share = f64::from(self.weights[i]) / f64::from(self.total);
            (self.load_factor * (in_flight + 1) as f64 * share).ceil() as usize
        };
        ranked
            .iter()
            .map(|&(_, i)| i)
            .find(|&i| self.in_flight[i].load(Ordering::Relaxed) < bound(i))
            .unwrap_or(ranked[0].1)
    }
}

impl<S, B> Service<Request<B>> for Split<S>
where
    S: Service<Request<B>> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S, Request<B>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let shared = &self.shared;
        let key = shared.sticky.as_ref().and_then(|sticky| sticky.key(req.headers(), req.extensions()));
        let chosen = match key {
            Some(key) => shared.by_key(key),
            None => shared.by_weight(),
        };
        shared.in_flight[chosen].fetch_add(1, Ordering::Relaxed);
        ResponseFuture {
            future: self.services[chosen].clone().oneshot(req),
            _guard: InFlight { shared: self.shared.clone(), chosen },
        }
    }
}

/// A request in flight at one service, until its response head.
struct InFlight {
    shared: Arc<Shared>,
    chosen: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.shared.in_flight[self.chosen].fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project! {
    /// The response future of [`Split`].
    pub struct ResponseFuture<S: Service<R>, R> {
        #[pin]
        future: Oneshot<S, R>,
        _guard: InFlight,
    }
}

impl<S: Service<R>, R> fmt::Debug for ResponseFuture<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").field("chosen", &self._guard.chosen).finish_non_exhaustive()
    }
}

impl<S: Service<R>, R> Future for ResponseFuture<S, R> {
    type Output = Result<S::Response, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().future.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use super::*;

    fn side(i: usize) -> impl Service<Request<()>, Response = usize, Error = Infallible, Future: Send> + Clone {
        tower::service_fn(move |_: Request<()>| async move { Ok::<_, Infallible>(i) })
    }

    #[test]
    fn the_smooth_order_interleaves_and_keeps_the_weights_exactly() {
        assert_eq!(smooth_turns(&[5, 1, 1]), [0, 0, 1, 0, 2, 0, 0]);
        let turns = smooth_turns(&[9, 1]);
        assert_eq!(turns.iter().filter(|&&i| i == 1).count(), 1);
        assert_eq!(smooth_turns(&[0, 3]), [1, 1, 1]);
    }

    #[test]
    fn weights_are_checked() {
        let services = |weights: &[u32]| weights.iter().map(|&w| (side(0), w)).collect::<Vec<_>>();
        assert!(Split::new(services(&[0, 0])).is_err());
        assert!(Split::new(services(&[])).is_err());
        assert!(Split::new(services(&[10_001, 1])).is_err());
        // 9000:1000 is 9:1 after the common divisor.
        assert_eq!(&*Split::new(services(&[9000, 1000])).unwrap().shared.weights, [9, 1]);
    }

    #[tokio::test]
    async fn a_thousand_requests_split_as_the_weights_say() {
        let split = Split::new([(side(0), 70), (side(1), 20), (side(2), 10), (side(3), 0)]).unwrap();
        let mut counts = [0usize; 4];
        for _ in 0..1000 {
            counts[split.clone().oneshot(Request::new(())).await.unwrap()] += 1;
        }
        assert_eq!(counts, [700, 200, 100, 0]);
    }

    #[tokio::test]
    async fn a_key_stays_on_its_side_and_keys_spread_by_weight() {
        let split = Split::new([(side(0), 80), (side(1), 20)])
            .unwrap()
            .sticky(Sticky::Header(HeaderName::from_static("x-user")));
        let mut canary_keys = 0;
        for user in 0..2000 {
            let req = || Request::get("/").header("x-user", user.to_string()).body(()).unwrap();
            let first = split.clone().oneshot(req()).await.unwrap();
            for _ in 0..3 {
                assert_eq!(split.clone().oneshot(req()).await.unwrap(), first, "user {user}");
            }
            canary_keys += first;
        }
        // 20% of 2,000 keys is 400; the hash's spread keeps it within a few percent.
        assert!((340..=460).contains(&canary_keys), "{canary_keys} keys on the canary");
    }

    #[test]
    fn a_side_past_its_bound_of_load_passes_new_requests_to_the_next_choice() {
        let split = Split::new([(side(0), 50), (side(1), 50)]).unwrap().sticky(Sticky::Cookie("s".into()));
        let key = hash_key(b"hot");
        let first = split.shared.by_key(key);
        // The hot key's side already holds 10 in flight, the other none: the
        // bound is 1.25 × 11 × ½ = 7, so the next request goes to the other side.
        split.shared.in_flight[first].store(10, Ordering::Relaxed);
        assert_eq!(split.shared.by_key(key), 1 - first);
        split.shared.in_flight[first].store(0, Ordering::Relaxed);
        assert_eq!(split.shared.by_key(key), first);
    }

    #[test]
    fn cookies_are_found_by_exact_name_among_several() {
        let mut headers = HeaderMap::new();
        headers.append("cookie", "a=1; session=xyz".parse().unwrap());
        headers.append("cookie", "sessionX=no".parse().unwrap());
        assert_eq!(cookie(&headers, "session"), Some(&b"xyz"[..]));
        assert_eq!(cookie(&headers, "sess"), None);
        assert_eq!(cookie(&headers, "sessionX"), Some(&b"no"[..]));
    }

    #[tokio::test]
    async fn a_request_in_flight_is_counted_until_its_answer() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let rx = Arc::new(tokio::sync::Mutex::new(Some(rx)));
        let slow = tower::service_fn(move |_: Request<()>| {
            let rx = rx.clone();
            async move {
                if let Some(rx) = rx.lock().await.take() {
                    rx.await.ok();
                }
                Ok::<_, Infallible>(0)
            }
        });
        let split = Split::new([(slow, 1)]).unwrap();
        let pending = tokio::spawn(split.clone().oneshot(Request::new(())));
        for _ in 0..1_000 {
            if split.in_flight() == [1] {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(split.in_flight(), [1]);
        tx.send(()).unwrap();
        pending.await.unwrap().unwrap();
        assert_eq!(split.in_flight(), [0]);
    }
}
