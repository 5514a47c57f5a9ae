//! The in-process cache that keeps the store's round trip off the hot path.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use crate::claims::Verified;

/// A verified token and until when it may be trusted.
type Entry = (Arc<Verified>, Instant);

/// What an entry holds, roughly: the token, its claims and headers, and the
/// table's own overhead.
fn cost(token: &str, verified: &Verified) -> usize {
    let claims = verified.who.weight();
    let headers: usize = verified.headers.iter().map(|(n, v)| n.as_str().len() + v.len()).sum();
    token.len() + verified.id.len() + claims + headers + 256
}

/// Two generations of entries: new ones go into `current`; every `bound` the
/// older generation, whose entries have all expired by then, is dropped whole.
/// Expired entries therefore go within twice the bound, with no scan and no
/// waiting for the cache to fill.
#[derive(Debug)]
struct Generations {
    current: HashMap<Box<str>, Entry>,
    previous: HashMap<Box<str>, Entry>,
    bytes: [usize; 2],
    rotated: Instant,
}

/// Tokens that validated and were found active in the store, each kept for at most
/// `bound` (and never past its own expiry). A revocation made elsewhere is
/// therefore seen within `bound`; one made through the same
/// [`Authenticator`](crate::Authenticator) removes the entry at once.
///
/// Bounded in entries and in bytes: a token that would not fit is simply not
/// cached (its next request asks the store).
#[derive(Debug)]
pub(crate) struct Cache {
    map: RwLock<Generations>,
    bound: Duration,
    capacity: usize,
    max_bytes: usize,
}

impl Cache {
    pub(crate) fn new(bound: Duration, capacity: usize, max_bytes: usize) -> Self {
        let generations =
            Generations { current: HashMap::new(), previous: HashMap::new(), bytes: [0, 0], rotated: Instant::now() };
        Self { map: RwLock::new(generations), bound, capacity, max_bytes }
    }

    /// The entry for exactly this token, if it is still fresh.
    pub(crate) fn get(&self, token: &str) -> Option<Arc<Verified>> {
        let map = self.map.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (verified, until) = map.current.get(token).or_else(|| map.previous.get(token))?;
        (*until > Instant::now()).then(|| verified.clone())
    }

    /// Keeps `verified` for `token` for the bound, or until `remaining` runs out.
    pub(crate) fn insert(&self, token: Box<str>, verified: Arc<Verified>, remaining: Duration) {
        let keep = self.bound.min(remaining);
        if keep.is_zero() {
            return;
        }
        let now = Instant::now();
        let cost = cost(&token, &verified);
        let mut map = self.map.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let elapsed = now.duration_since(map.rotated);
        if elapsed >= self.bound {
            // Every entry of `previous` was made before the last rotation, so has
            // expired. Every entry of `current` was made within a bound of it, so
            // has expired too once two bounds have passed.
            if elapsed >= self.bound * 2 {
                map.current.clear();
                map.bytes[0] = 0;
            }
            map.previous = std::mem::take(&mut map.current);
            map.bytes = [0, map.bytes[0]];
            map.rotated = now;
        }
        let entries = map.current.len() + map.previous.len();
        if entries >= self.capacity || map.bytes[0] + map.bytes[1] + cost > self.max_bytes {
            return;
        }
        map.bytes[0] += cost;
        map.current.insert(token, (verified, now + keep));
    }

    /// Forgets every entry for which `f` is true.
    pub(crate) fn remove_where(&self, f: impl Fn(&Verified) -> bool) {
        let mut map = self.map.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.current.retain(|_, (verified, _)| !f(verified));
        map.previous.retain(|_, (verified, _)| !f(verified));
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        let map = self.map.read().unwrap();
        map.current.len() + map.previous.len()
    }

    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        let map = self.map.read().unwrap();
        map.bytes[0] + map.bytes[1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::claims::{Authenticated, Claims};

    fn verified(sub: &str) -> Arc<Verified> {
        let mut claims = Claims::new(sub, u64::MAX);
        claims.email = Some(format!("{sub}@example.com"));
        Arc::new(Verified { who: Authenticated(Arc::new(claims)), id: sub.into(), headers: Vec::new() })
    }

    #[tokio::test(start_paused = true)]
    async fn expired_entries_go_within_two_bounds_without_the_cache_filling() {
        let cache = Cache::new(Duration::from_secs(1), 100_000, usize::MAX);
        for i in 0..1_000 {
            cache.insert(format!("token-{i}").into(), verified(&i.to_string()), Duration::from_secs(900));
        }
        assert_eq!(cache.len(), 1_000);
        assert!(cache.get("token-7").is_some());
        tokio::time::advance(Duration::from_millis(1_100)).await;
        assert!(cache.get("token-7").is_none(), "past the bound");
        cache.insert("fresh".into(), verified("f"), Duration::from_secs(900));
        assert_eq!(cache.len(), 1_001, "the old generation is kept one more bound");
        tokio::time::advance(Duration::from_millis(1_100)).await;
        cache.insert("fresher".into(), verified("g"), Duration::from_secs(900));
        assert_eq!(cache.len(), 2, "the 1,000 expired entries are gone");
        assert!(cache.get("fresh").is_none() && cache.get("fresher").is_some());
        tokio::time::advance(Duration::from_secs(5)).await;
        cache.insert("late".into(), verified("h"), Duration::from_secs(900));
        assert_eq!(cache.len(), 1, "after a long quiet spell only the newest is held");
    }

    #[tokio::test(start_paused = true)]
    async fn memory_is_bounded_in_bytes() {
        let cache = Cache::new(Duration::from_secs(1), 100_000, 64 * 1024);
        let big = "x".repeat(8 * 1024);
        for i in 0..100 {
            cache.insert(format!("{big}{i}").into(), verified(&i.to_string()), Duration::from_secs(900));
        }
        assert!(cache.bytes() <= 64 * 1024, "{} bytes", cache.bytes());
        assert!(cache.len() >= 5 && cache.len() < 10, "{} entries of 8 KiB tokens in 64 KiB", cache.len());
        // The budget stays spent until those entries expire, then frees itself.
        tokio::time::advance(Duration::from_millis(2_100)).await;
        cache.insert("small".into(), verified("s"), Duration::from_secs(900));
        assert!(cache.get("small").is_some(), "room again once the big ones expired");
    }
}
