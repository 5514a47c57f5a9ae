//! The shared, replaceable set of endpoints a [`RoundRobin`](super::RoundRobin) picks from.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::Uri;
use http::uri::{Authority, Scheme};
use tokio::time::Instant;

/// One upstream: a scheme and an authority (`http://10.0.0.7:3001`), with its
/// passive health state.
pub struct Endpoint {
    scheme: Scheme,
    authority: Authority,
    /// Consecutive connection failures.
    failures: AtomicU32,
    /// Consecutive gateway failures: timeouts, resets, 502/503/504.
    gateway_failures: AtomicU32,
    /// Nanoseconds since the set's epoch until which the endpoint is ejected; 0 if it is not.
    ejected_until: AtomicU64,
}

impl Endpoint {
    /// The scheme requests to this endpoint use.
    pub fn scheme(&self) -> &Scheme {
        &self.scheme
    }

    /// The host and port of this endpoint.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    fn same_target(&self, other: &Endpoint) -> bool {
        self.scheme == other.scheme && self.authority == other.authority
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("uri", &format_args!("{}://{}", self.scheme, self.authority))
            .field("failures", &self.failures.load(Ordering::Relaxed))
            .finish()
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority)
    }
}

/// A string that is not an endpoint URI (`http://host:port`, no path or query).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidEndpoint {
    endpoint: String,
    reason: &'static str,
}

impl fmt::Display for InvalidEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid endpoint {:?}: {}", self.endpoint, self.reason)
    }
}

impl std::error::Error for InvalidEndpoint {}

fn parse_endpoint(endpoint: &str) -> Result<Endpoint, InvalidEndpoint> {
    let invalid = |reason| InvalidEndpoint { endpoint: endpoint.to_owned(), reason };
    let uri: Uri = endpoint.parse().map_err(|_| invalid("not a URI"))?;
    let parts = uri.into_parts();
    let scheme = parts.scheme.ok_or_else(|| invalid("it needs a scheme, e.g. http://"))?;
    if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
        return Err(invalid("only http:// and https:// endpoints are supported"));
    }
    let authority = parts.authority.ok_or_else(|| invalid("it needs a host"))?;
    if authority.as_str().contains('@') {
        return Err(invalid("it must not contain user information"));
    }
    if parts.path_and_query.as_ref().is_some_and(|pq| pq.as_str() != "/") {
        return Err(invalid("it must not have a path or query"));
    }
    Ok(Endpoint {
        scheme,
        authority,
        failures: AtomicU32::new(0),
        gateway_failures: AtomicU32::new(0),
        ejected_until: AtomicU64::new(0),
    })
}

struct Shared {
    set: ArcSwap<Vec<Arc<Endpoint>>>,
    cursor: AtomicUsize,
    epoch: Instant,
}

/// A shared, replaceable set of endpoints; clones share the set.
///
/// Reading the set is lock-free ([`arc_swap`]); [`replace`](Self::replace) swaps in
/// a new set at runtime — from configuration, or from DNS — while requests keep
/// flowing. An endpoint present in both the old and the new set keeps its health
/// state.
///
/// ```
/// use tower_gateway::balance::Endpoints;
///
/// let endpoints = Endpoints::new(["http://127.0.0.1:3001", "http://127.0.0.1:3003"]).unwrap();
/// endpoints.replace(["http://127.0.0.1:3003", "http://127.0.0.1:3005"]).unwrap();
/// assert_eq!(endpoints.len(), 2);
/// ```
#[derive(Clone)]
pub struct Endpoints {
    shared: Arc<Shared>,
}

impl fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.shared.set.load().iter()).finish()
    }
}

impl Endpoints {
    /// A set of endpoints given as `http://host:port` URIs. It may be empty.
    pub fn new<I>(endpoints: I) -> Result<Self, InvalidEndpoint>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let set = endpoints.into_iter().map(|e| parse_endpoint(e.as_ref()).map(Arc::new)).collect::<Result<_, _>>()?;
        Ok(Self {
            shared: Arc::new(Shared {
                set: ArcSwap::from_pointee(set),
                cursor: AtomicUsize::new(0),
                epoch: Instant::now(),
            }),
        })
    }

    /// Replaces the set. Endpoints that stay keep their health state; on error the
    /// set is left as it was.
    pub fn replace<I>(&self, endpoints: I) -> Result<(), InvalidEndpoint>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let current = self.shared.set.load();
        let mut next: Vec<Arc<Endpoint>> = Vec::new();
        for endpoint in endpoints {
            let parsed = parse_endpoint(endpoint.as_ref())?;
            if next.iter().any(|e| e.same_target(&parsed)) {
                continue;
            }
            let kept = current.iter().find(|e| e.same_target(&parsed)).cloned();
            next.push(kept.unwrap_or_else(|| Arc::new(parsed)));
        }
        if next.len() != current.len() || next.iter().zip(current.iter()).any(|(a, b)| !Arc::ptr_eq(a, b)) {
            tracing::info!(endpoints = ?next.iter().map(ToString::to_string).collect::<Vec<_>>(), "endpoint set changed");
            self.shared.set.store(Arc::new(next));
        }
        Ok(())
    }

    /// The endpoints now in the set.
    pub fn snapshot(&self) -> Vec<Arc<Endpoint>> {
        self.shared.set.load().to_vec()
    }

    /// How many endpoints the set holds.
    pub fn len(&self) -> usize {
        self.shared.set.load().len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.shared.set.load().is_empty()
    }

    /// How many endpoints are ejected now.
    pub fn ejected(&self) -> usize {
        let now = self.now();
        self.shared.set.load().iter().filter(|e| e.ejected_until.load(Ordering::Relaxed) > now).count()
    }

    fn now(&self) -> u64 {
        // Never 0, which means "not ejected".
        u64::try_from(self.shared.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX).max(1)
    }

    /// The next endpoint in turn that is not ejected; if all are ejected, the next
    /// one in turn anyway, so that requests never hit a dead end. `None` only when
    /// the set is empty.
    pub(crate) fn next(&self) -> Option<Arc<Endpoint>> {
        let set = self.shared.set.load();
        let len = set.len();
        if len == 0 {
            return None;
        }
        let start = self.shared.cursor.fetch_add(1, Ordering::Relaxed) % len;
        if len == 1 {
            return Some(set[0].clone());
        }
        let now = self.now();
        let healthy =
            (0..len).map(|i| &set[(start + i) % len]).find(|e| e.ejected_until.load(Ordering::Relaxed) <= now);
        Some(healthy.unwrap_or(&set[start]).clone())
    }

    /// Records a connection failure; ejects the endpoint for `cool_down` once
    /// `eject_after` consecutive failures are reached. Returns whether it was ejected.
    pub(crate) fn record_failure(&self, endpoint: &Endpoint, eject_after: u32, cool_down: Duration) -> bool {
        let failures = endpoint.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < eject_after {
            return false;
        }
        let until = self.now().saturating_add(u64::try_from(cool_down.as_nanos()).unwrap_or(u64::MAX));
        endpoint.ejected_until.store(until, Ordering::Relaxed);
        endpoint.failures.store(0, Ordering::Relaxed);
        true
    }

    /// Records a gateway failure (a timeout, a reset, a 502/503/504); ejects the
    /// endpoint at `eject_after` in a row, unless that would leave more than
    /// `max_ejected_percent` of the set ejected. Returns whether it was ejected.
    pub(crate) fn record_gateway_failure(
        &self,
        endpoint: &Endpoint,
        eject_after: u32,
        max_ejected_percent: u8,
        cool_down: Duration,
    ) -> bool {
        let failures = endpoint.gateway_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < eject_after {
            return false;
        }
        let len = self.shared.set.load().len();
        let allowed = len * usize::from(max_ejected_percent.min(100)) / 100;
        if self.ejected() + 1 > allowed {
            return false;
        }
        let until = self.now().saturating_add(u64::try_from(cool_down.as_nanos()).unwrap_or(u64::MAX));
        endpoint.ejected_until.store(until, Ordering::Relaxed);
        endpoint.gateway_failures.store(0, Ordering::Relaxed);
        true
    }

    /// Records a response: the endpoint's failure counts start over.
    pub(crate) fn record_success(&self, endpoint: &Endpoint) {
        // A load first, so that the common case does not write a shared cache line.
        if endpoint.failures.load(Ordering::Relaxed) != 0 {
            endpoint.failures.store(0, Ordering::Relaxed);
        }
        if endpoint.gateway_failures.load(Ordering::Relaxed) != 0 {
            endpoint.gateway_failures.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(endpoints: &Endpoints, n: usize) -> Vec<String> {
        (0..n).map(|_| endpoints.next().unwrap().authority().to_string()).collect()
    }

    #[test]
    fn parses_only_http_and_https_origins() {
        assert!(Endpoints::new(["http://127.0.0.1:3001", "http://products:80/", "https://a:1"]).is_ok());
        for bad in ["127.0.0.1:3001", "ftp://a:1", "http://a:1/path", "http://a:1/?q", "http://u@a:1", "not a uri"] {
            assert!(Endpoints::new([bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn cycles_in_order() {
        let endpoints = Endpoints::new(["http://a:1", "http://b:1", "http://c:1"]).unwrap();
        assert_eq!(names(&endpoints, 6), ["a:1", "b:1", "c:1", "a:1", "b:1", "c:1"]);
    }

    #[test]
    fn empty_set_has_no_next() {
        let endpoints = Endpoints::new(Vec::<String>::new()).unwrap();
        assert!(endpoints.next().is_none());
        endpoints.replace(["http://a:1"]).unwrap();
        assert_eq!(names(&endpoints, 2), ["a:1", "a:1"]);
    }

    #[test]
    fn replace_keeps_health_of_kept_endpoints_and_drops_duplicates() {
        let endpoints = Endpoints::new(["http://a:1", "http://b:1"]).unwrap();
        let a = endpoints.snapshot()[0].clone();
        endpoints.record_failure(&a, 1, Duration::from_secs(60));
        endpoints.replace(["http://b:1", "http://a:1", "http://a:1", "http://c:1"]).unwrap();
        assert_eq!(endpoints.len(), 3);
        assert_eq!(endpoints.ejected(), 1);
        assert!(Arc::ptr_eq(&endpoints.snapshot()[1], &a));
        assert!(endpoints.replace(["http://d:1", "bad"]).is_err());
        assert_eq!(endpoints.len(), 3, "a failed replace leaves the set alone");
    }

    #[test]
    fn eject_after_counts_consecutive_failures() {
        let endpoints = Endpoints::new(["http://a:1", "http://b:1"]).unwrap();
        let a = endpoints.snapshot()[0].clone();
        assert!(!endpoints.record_failure(&a, 3, Duration::from_secs(5)));
        endpoints.record_success(&a);
        assert!(!endpoints.record_failure(&a, 3, Duration::from_secs(5)));
        assert!(!endpoints.record_failure(&a, 3, Duration::from_secs(5)));
        assert_eq!(endpoints.ejected(), 0);
        assert!(endpoints.record_failure(&a, 3, Duration::from_secs(5)));
        assert_eq!(endpoints.ejected(), 1);
        assert_eq!(names(&endpoints, 4), ["b:1", "b:1", "b:1", "b:1"]);
    }

    #[test]
    fn all_ejected_still_goes_somewhere() {
        let endpoints = Endpoints::new(["http://a:1", "http://b:1"]).unwrap();
        for e in endpoints.snapshot() {
            endpoints.record_failure(&e, 1, Duration::from_secs(60));
        }
        assert_eq!(endpoints.ejected(), 2);
        assert_eq!(names(&endpoints, 4), ["a:1", "b:1", "a:1", "b:1"]);
    }
}
