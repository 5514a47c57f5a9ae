//! The in-process cache that keeps the store's round trip off the hot path.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use crate::authenticator::Verified;

/// A verified token and until when it may be trusted.
type Entry = (Arc<Verified>, Instant);

/// Tokens that validated and were found active in the store, each kept for at most
/// `bound` (and never past its own expiry). A revocation made elsewhere is
/// therefore seen within `bound`; one made through the same
/// [`Authenticator`](crate::Authenticator) removes the entry at once.
#[derive(Debug)]
pub(crate) struct Cache {
    map: RwLock<HashMap<Box<str>, Entry>>,
    bound: Duration,
    capacity: usize,
}

impl Cache {
    pub(crate) fn new(bound: Duration, capacity: usize) -> Self {
        Self { map: RwLock::new(HashMap::new()), bound, capacity }
    }

    /// The entry for exactly this token, if it is still fresh.
    pub(crate) fn get(&self, token: &str) -> Option<Arc<Verified>> {
        let map = self.map.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (verified, until) = map.get(token)?;
        (*until > Instant::now()).then(|| verified.clone())
    }

    /// Keeps `verified` for `token` for the bound, or until `remaining` runs out.
    pub(crate) fn insert(&self, token: Box<str>, verified: Arc<Verified>, remaining: Duration) {
        let keep = self.bound.min(remaining);
        if keep.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut map = self.map.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= self.capacity {
            map.retain(|_, (_, until)| *until > now);
            if map.len() >= self.capacity {
                return;
            }
        }
        map.insert(token, (verified, now + keep));
    }

    /// Forgets every entry for which `f` is true.
    pub(crate) fn remove_where(&self, f: impl Fn(&Verified) -> bool) {
        let mut map = self.map.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.retain(|_, (verified, _)| !f(verified));
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.read().unwrap().len()
    }
}
