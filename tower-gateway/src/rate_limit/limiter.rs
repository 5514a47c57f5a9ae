//! One named limit: its quota, where its state lives, and what happens when
//! that place cannot answer.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::HeaderValue;

use super::gcra::{Decision, Quota};
use super::memory::MemoryStore;
use super::{BoxFuture, Store};

/// What to do when the shared store does not answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OnStoreError {
    /// Decide in this process, from the state it mirrored from the store's
    /// answers (a key that was spent stays spent), at the same quota (the default).
    #[default]
    FailOpen,
    /// Answer `503` with `Retry-After`.
    FailClosed,
}

/// What a [`Limiter`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The request may go on.
    Allowed(Decision),
    /// The key is over its limit.
    Limited(Decision),
    /// The store could not answer and the limit fails closed.
    Unavailable,
}

/// How often each outcome happened, for metrics. See [`Limiter::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LimitStats {
    /// Admitted by the store (or the in-process state of a memory limit).
    pub allowed: u64,
    /// Refused by the store, or by this process's knowledge that the key is spent.
    pub limited: u64,
    /// Admitted in this process while the store was failing (fail-open).
    pub fallback_allowed: u64,
    /// Refused in this process while the store was failing (fail-open).
    pub fallback_limited: u64,
    /// Answered `503` while the store was failing (fail-closed).
    pub unavailable: u64,
    /// Store calls that failed or took too long.
    pub store_errors: u64,
}

#[derive(Debug, Default)]
struct Counters {
    allowed: AtomicU64,
    limited: AtomicU64,
    fallback_allowed: AtomicU64,
    fallback_limited: AtomicU64,
    unavailable: AtomicU64,
    store_errors: AtomicU64,
}

struct Shared {
    store: Arc<dyn Store>,
    on_error: OnStoreError,
    timeout: Duration,
    retry_every: Duration,
    /// Until when (µs on the local store's clock) the store is not asked.
    down_until: AtomicU64,
    healthy: AtomicBool,
}

struct Inner {
    name: Arc<str>,
    quota: Quota,
    /// The state of a memory limit; for a shared one, the mirror of the store's
    /// answers that fail-open and the hot-key shortcut decide from.
    local: MemoryStore,
    shared: Option<Shared>,
    policy: HeaderValue,
    counters: Counters,
}

/// One named limit: a [`Quota`] per key, kept in this process or in a shared
/// [`Store`]. Cheap to clone; clones count against the same state, so one
/// limiter put on several routes is one quota across them.
/// See the [module docs](super).
#[derive(Clone)]
pub struct Limiter(Arc<Inner>);

impl fmt::Debug for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limiter")
            .field("name", &self.0.name)
            .field("quota", &self.0.quota)
            .field("store", &self.0.shared.as_ref().map(|s| &s.store))
            .finish_non_exhaustive()
    }
}

/// A limit name that cannot be used, from [`LimiterBuilder::build`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidName(String);

impl fmt::Display for InvalidName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} is not a limit name: use 1 to 64 of A-Z a-z 0-9 _ - .", self.0)
    }
}

impl std::error::Error for InvalidName {}

/// Builds a [`Limiter`].
#[derive(Debug)]
#[must_use]
pub struct LimiterBuilder {
    name: String,
    quota: Quota,
    store: Option<Arc<dyn Store>>,
    on_error: OnStoreError,
    timeout: Duration,
    retry_every: Duration,
    max_keys: usize,
}

impl LimiterBuilder {
    /// Keeps the state in `store`, shared with every process that uses it under
    /// the same limit name (default: in this process only).
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// What to do when the store fails (default [`OnStoreError::FailOpen`]).
    pub fn on_store_error(mut self, on_error: OnStoreError) -> Self {
        self.on_error = on_error;
        self
    }

    /// How long a decision may wait for the store (default 100 ms).
    pub fn store_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// After a failure, how long the store is left alone before it is asked
    /// again (default 1 s); meanwhile decisions do not wait for it at all.
    pub fn retry_store_every(mut self, every: Duration) -> Self {
        self.retry_every = every;
        self
    }

    /// The most keys held in this process (default 100,000, about 3 MB).
    pub fn max_local_keys(mut self, max: usize) -> Self {
        self.max_keys = max;
        self
    }

    /// The limiter, if its name can be used (in keys and in `RateLimit` fields).
    pub fn build(self) -> Result<Limiter, InvalidName> {
        let valid = (1..=64).contains(&self.name.len())
            && self.name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !valid {
            return Err(InvalidName(self.name));
        }
        let policy = format!("\"{}\";q={};w={}", self.name, self.quota.max_burst(), self.quota.window_secs());
        let shared = self.store.map(|store| Shared {
            store,
            on_error: self.on_error,
            timeout: self.timeout,
            retry_every: self.retry_every,
            down_until: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
        });
        Ok(Limiter(Arc::new(Inner {
            name: self.name.into(),
            quota: self.quota,
            local: MemoryStore::new(self.max_keys),
            shared,
            policy: HeaderValue::try_from(policy).expect("names are checked to be header-safe"),
            counters: Counters::default(),
        })))
    }
}

/// The future of [`Limiter::check`]: ready at once unless the shared store is asked.
pub struct Check(CheckState);

enum CheckState {
    Ready(Option<Verdict>),
    Asking(BoxFuture<'static, Verdict>),
}

impl fmt::Debug for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Check")
    }
}

impl Check {
    /// The verdict if it is already known, else the future that finds it.
    pub(crate) fn into_ready(self) -> Result<Verdict, BoxFuture<'static, Verdict>> {
        match self.0 {
            CheckState::Ready(verdict) => Ok(verdict.expect("a check is taken once")),
            CheckState::Asking(future) => Err(future),
        }
    }
}

impl Future for Check {
    type Output = Verdict;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Verdict> {
        match &mut self.0 {
            CheckState::Ready(verdict) => Poll::Ready(verdict.take().expect("polled after completion")),
            CheckState::Asking(future) => future.as_mut().poll(cx),
        }
    }
}

impl Limiter {
    /// A limit kept in this process.
    ///
    /// # Panics
    ///
    /// If `name` is not 1 to 64 of `A-Z a-z 0-9 _ - .`; [`builder`](Self::builder)
    /// returns that as an error instead.
    pub fn new(name: &str, quota: Quota) -> Self {
        Self::builder(name, quota).build().unwrap_or_else(|e| panic!("{e}"))
    }

    /// A builder, for a shared store and its failure handling.
    pub fn builder(name: &str, quota: Quota) -> LimiterBuilder {
        LimiterBuilder {
            name: name.to_owned(),
            quota,
            store: None,
            on_error: OnStoreError::default(),
            timeout: Duration::from_millis(100),
            retry_every: Duration::from_secs(1),
            max_keys: 100_000,
        }
    }

    /// The limit's name, as the `RateLimit` fields and the store's keys use it.
    pub fn name(&self) -> &Arc<str> {
        &self.0.name
    }

    /// The quota each key gets.
    pub fn quota(&self) -> &Quota {
        &self.0.quota
    }

    /// The `RateLimit-Policy` member of this limit: `"name";q=<burst>;w=<seconds>`.
    pub fn policy(&self) -> &HeaderValue {
        &self.0.policy
    }

    /// Whether `other` is this limiter (a clone of it), and not merely one of
    /// the same name: a limiter made anew starts its [`stats`](Self::stats) at zero.
    pub fn is_same(&self, other: &Limiter) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Counts of each outcome since the limiter was made.
    pub fn stats(&self) -> LimitStats {
        let c = &self.0.counters;
        let get = |n: &AtomicU64| n.load(Ordering::Relaxed);
        LimitStats {
            allowed: get(&c.allowed),
            limited: get(&c.limited),
            fallback_allowed: get(&c.fallback_allowed),
            fallback_limited: get(&c.fallback_limited),
            unavailable: get(&c.unavailable),
            store_errors: get(&c.store_errors),
        }
    }

    fn count(&self, verdict: Verdict, fallback: bool) -> Verdict {
        let c = &self.0.counters;
        let counter = match (verdict, fallback) {
            (Verdict::Allowed(_), false) => &c.allowed,
            (Verdict::Limited(_), false) => &c.limited,
            (Verdict::Allowed(_), true) => &c.fallback_allowed,
            (Verdict::Limited(_), true) => &c.fallback_limited,
            (Verdict::Unavailable, _) => &c.unavailable,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        verdict
    }

    fn local(&self, key: &str, fallback: bool) -> Verdict {
        let decision = self.0.local.decide(key, &self.0.quota);
        let verdict = if decision.allowed { Verdict::Allowed(decision) } else { Verdict::Limited(decision) };
        self.count(verdict, fallback)
    }

    /// Decides one request for `key`, and counts it if admitted.
    ///
    /// A memory limit answers at once. A shared one answers at once, without a
    /// round trip, when this process already knows the key is spent (its TAT only
    /// moves forward while it is spent, so that answer is exact) or while the
    /// store is failing; otherwise it asks the store, waiting at most the store
    /// timeout.
    pub fn check(&self, key: &str) -> Check {
        let Some(shared) = &self.0.shared else {
            return Check(CheckState::Ready(Some(self.local(key, false))));
        };
        let known = self.0.local.peek(key, &self.0.quota);
        if !known.allowed {
            return Check(CheckState::Ready(Some(self.count(Verdict::Limited(known), false))));
        }
        if self.0.local.now() < shared.down_until.load(Ordering::Relaxed) {
            return Check(CheckState::Ready(Some(self.fallback(shared, key))));
        }
        let this = self.clone();
        let key = key.to_owned();
        Check(CheckState::Asking(Box::pin(async move { this.ask(key).await })))
    }

    async fn ask(self, key: String) -> Verdict {
        let shared = self.0.shared.as_ref().expect("only shared limits ask a store");
        let mut store_key = String::with_capacity(self.0.name.len() + 1 + key.len());
        store_key.push_str(&self.0.name);
        store_key.push(':');
        store_key.push_str(&key);
        let answer = tokio::time::timeout(shared.timeout, shared.store.decide(&store_key, &self.0.quota)).await;
        match answer {
            Ok(Ok(decision)) => {
                if !shared.healthy.swap(true, Ordering::Relaxed) {
                    tracing::info!(limit = %self.0.name, "rate-limit store answers again");
                }
                let micros = u64::try_from(decision.reset_after.as_micros()).unwrap_or(u64::MAX);
                self.0.local.mirror(&key, micros);
                let verdict = if decision.allowed { Verdict::Allowed(decision) } else { Verdict::Limited(decision) };
                self.count(verdict, false)
            }
            failed => {
                self.0.counters.store_errors.fetch_add(1, Ordering::Relaxed);
                let retry = u64::try_from(shared.retry_every.as_micros()).unwrap_or(u64::MAX);
                shared.down_until.store(self.0.local.now().saturating_add(retry), Ordering::Relaxed);
                if shared.healthy.swap(false, Ordering::Relaxed) {
                    let error = match failed {
                        Ok(Err(err)) => err.to_string(),
                        _ => "no answer in time".to_owned(),
                    };
                    tracing::warn!(limit = %self.0.name, %error, on_error = ?shared.on_error, "rate-limit store failed");
                }
                self.fallback(shared, &key)
            }
        }
    }

    fn fallback(&self, shared: &Shared, key: &str) -> Verdict {
        match shared.on_error {
            OnStoreError::FailOpen => self.local(key, true),
            OnStoreError::FailClosed => self.count(Verdict::Unavailable, true),
        }
    }
}
