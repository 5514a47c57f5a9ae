//! Limits kept in this process: sharded, bounded in memory, idle keys dropped.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;

use tokio::time::Instant;

use super::gcra::{Decision, Quota};

const SHARDS: usize = 16;

/// One limit's keys in this process. See the [module docs](super).
///
/// Each key costs one table entry of two `u64`s: a hash of the key (SipHash with
/// a per-process random key, so clients cannot aim collisions) and its TAT. An
/// entry whose TAT has passed means the same as no entry, so those are what go
/// first when a shard is full; if none has, the one closest to passing goes.
/// Memory is therefore bounded by `max_keys`, and a flood of new keys can only
/// make the most nearly recovered keys recover a little early.
#[derive(Debug)]
pub struct MemoryStore {
    shards: Box<[Mutex<HashMap<u64, u64>>]>,
    hasher: RandomState,
    per_shard: usize,
    epoch: Instant,
}

impl MemoryStore {
    /// A store holding at most `max_keys` keys (at least one per shard).
    pub fn new(max_keys: usize) -> Self {
        let per_shard = max_keys.div_ceil(SHARDS).max(1);
        let shards = (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect();
        Self { shards, hasher: RandomState::new(), per_shard, epoch: Instant::now() }
    }

    /// Microseconds since the store was made, on Tokio's clock (which tests can pause).
    pub(crate) fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX).saturating_add(1)
    }

    fn shard(&self, key: &str) -> (u64, &Mutex<HashMap<u64, u64>>) {
        let hash = self.hasher.hash_one(key);
        let index = usize::try_from(hash >> 60).unwrap_or(0) % SHARDS;
        (hash, &self.shards[index])
    }

    /// Decides a request for `key` now, and records it if admitted.
    pub fn decide(&self, key: &str, quota: &Quota) -> Decision {
        let now = self.now();
        let (hash, shard) = self.shard(key);
        let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
        let (decision, new_tat) = quota.decide(map.get(&hash).copied().unwrap_or(0), now);
        if let Some(tat) = new_tat {
            self.put(&mut map, hash, tat, now);
        }
        decision
    }

    /// What [`decide`](Self::decide) would answer now, recording nothing.
    pub fn peek(&self, key: &str, quota: &Quota) -> Decision {
        let now = self.now();
        let (hash, shard) = self.shard(key);
        let tat = shard.lock().unwrap_or_else(|e| e.into_inner()).get(&hash).copied().unwrap_or(0);
        quota.decide(tat, now).0
    }

    /// Records that `key`'s TAT lies `reset_after_us` ahead of now, as the shared
    /// store said: its word replaces what this process decided on its own.
    pub(crate) fn mirror(&self, key: &str, reset_after_us: u64) {
        let now = self.now();
        let tat = now.saturating_add(reset_after_us);
        let (hash, shard) = self.shard(key);
        let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
        match map.get_mut(&hash) {
            Some(old) => *old = tat,
            None if reset_after_us > 0 => self.put(&mut map, hash, tat, now),
            None => {}
        }
    }

    fn put(&self, map: &mut HashMap<u64, u64>, hash: u64, tat: u64, now: u64) {
        if map.len() >= self.per_shard && !map.contains_key(&hash) {
            map.retain(|_, tat| *tat > now);
            if map.len() >= self.per_shard
                && let Some((&oldest, _)) = map.iter().min_by_key(|(_, tat)| **tat)
            {
                map.remove(&oldest);
            }
        }
        map.insert(hash, tat);
    }

    /// How many keys are held.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len()).sum()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for MemoryStore {
    /// Room for 100,000 keys (about 3 MB).
    fn default() -> Self {
        Self::new(100_000)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn keys_are_limited_apart() {
        let store = MemoryStore::default();
        let quota = Quota::per_second(2);
        assert!(store.decide("a", &quota).allowed);
        assert!(store.decide("a", &quota).allowed);
        assert!(!store.decide("a", &quota).allowed);
        assert!(store.decide("b", &quota).allowed, "another key has its own burst");
        assert!(!store.peek("a", &quota).allowed);
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(store.peek("a", &quota).allowed, "peek records nothing");
        assert!(store.decide("a", &quota).allowed);
        assert!(!store.decide("a", &quota).allowed);
    }

    #[tokio::test(start_paused = true)]
    async fn memory_stays_bounded_under_a_flood_of_keys() {
        let store = MemoryStore::new(1_600);
        let quota = Quota::per_minute(1);
        for i in 0..50_000 {
            store.decide(&format!("client-{i}"), &quota);
        }
        assert!(store.len() <= 1_600, "{} keys held", store.len());
        // The most recent keys are still limited.
        assert!(!store.decide("client-49999", &quota).allowed);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_keys_go_first() {
        let store = MemoryStore::new(SHARDS * 4);
        let quota = Quota::per_second(1);
        let long = Quota::per_hour(1);
        // Fill every shard with keys that recover within a second...
        for i in 0..1_000 {
            store.decide(&format!("idle-{i}"), &quota);
        }
        tokio::time::advance(Duration::from_secs(2)).await;
        // ...then a key still spent is kept while idle ones make room.
        store.decide("spent", &long);
        for i in 0..1_000 {
            store.decide(&format!("new-{i}"), &quota);
            tokio::time::advance(Duration::from_secs(2)).await;
        }
        assert!(!store.decide("spent", &long).allowed, "a spent key was evicted before idle ones");
    }

    #[tokio::test(start_paused = true)]
    async fn the_mirror_takes_the_shared_state() {
        let store = MemoryStore::default();
        let quota = Quota::per_second(1).burst(2);
        store.mirror("k", 2_000_000);
        assert!(!store.peek("k", &quota).allowed, "the shared store said the burst is spent");
        store.mirror("fresh", 0);
        assert_eq!(store.len(), 1, "a key with nothing spent is not stored");
    }
}
