//! Keys published by an identity provider: a JWKS URL, or OpenID discovery.
//!
//! A [`RemoteKeys`] holds the last good key set and keeps it fresh:
//!
//! - **in the background**, every `Cache-Control: max-age` of the set, clamped
//!   to [`refresh_between`](RemoteKeysBuilder::refresh_between) (default 1 min to
//!   1 h), retried with backoff while the provider fails;
//! - **on an unknown `kid`**: a token signed with a key the set does not hold yet
//!   (a rotation) makes one fetch — one at a time however many requests bear it
//!   (single flight), and at most one per [`unknown_kid_cooldown`](RemoteKeysBuilder::unknown_kid_cooldown)
//!   (default 10 s), so a flood of made-up `kid`s costs the provider nothing.
//!   Requests wait for that fetch at most [`wait`](RemoteKeysBuilder::wait) (default 3 s).
//!
//! **A provider that is down or broken** does not log anyone out: the last good
//! set serves for [`max_stale`](RemoteKeysBuilder::max_stale) (default 24 h) after
//! it was fetched, each failure counted and logged. Past that, or before any set
//! was fetched, a token is answered `503` `key_source_unavailable` with
//! `Retry-After` — never `401`, which would tell clients to log in again.
//!
//! **Fetches are bounded**: HTTPS with the roots you give
//! ([`tls_config`](RemoteKeysBuilder::tls_config), else the Mozilla roots), a
//! connect timeout (1 s) and a total one (5 s), a body cap (256 KiB), redirects
//! followed only on the same origin. An unusable member of a set (an unknown
//! `kty`, `use: enc`, a symmetric key, an `alg` that disagrees with its key, RSA
//! under 2048 bits, a malformed member) is skipped and counted; the rest verify.
//! Each key verifies only the algorithm it was published for.
//!
//! ```no_run
//! use tower_gateway_auth::{Authenticator, Issuer, RemoteKeys};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let keycloak = RemoteKeys::discovery("https://sso.example.com/realms/shop").build()?;
//! let auth = Authenticator::builder_for(
//!     Issuer::new("https://sso.example.com/realms/shop", keycloak)
//!         .audience("orders")
//!         .roles_claim("realm_access.roles"),
//! )
//! .build()?;
//! # let _ = auth;
//! # Ok(())
//! # }
//! ```

mod fetch;
pub(crate) mod jwk;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::Uri;
use serde::Deserialize;
use tokio::sync::watch;
use tokio::time::Instant;

pub use self::fetch::FetchOutcome;
use self::fetch::{FetchError, Fetcher, Limits};
use self::jwk::Parsed;
use crate::error::ConfigError;
use crate::key::Key;
use crate::store::BoxFuture;

/// A set of keys as fetched, and when.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub(crate) keys: Vec<Key>,
    fetched_at: Instant,
}

/// What one fetch brought: the keys, and how long the server says they keep.
#[derive(Debug)]
pub(crate) struct Fetched {
    pub(crate) parsed: Parsed,
    pub(crate) max_age: Option<Duration>,
}

type FetchFn = Arc<dyn Fn() -> BoxFuture<'static, Result<Fetched, FetchError>> + Send + Sync>;

/// Why a refresh is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// The background schedule: never held back by the cooldown.
    Schedule,
    /// A token whose key the set does not hold, or no set at all.
    Missing,
}

#[derive(Debug, Clone)]
struct Settings {
    refresh_min: Duration,
    refresh_max: Duration,
    cooldown: Duration,
    max_stale: Duration,
    wait: Duration,
}

#[derive(Debug, Default)]
struct FetchState {
    in_flight: bool,
    last_missing: Option<Instant>,
    next_refresh: Option<Instant>,
    failures: u32,
}

struct Inner {
    source: String,
    fetch: FetchFn,
    settings: Settings,
    current: ArcSwapOption<Snapshot>,
    state: Mutex<FetchState>,
    done: watch::Sender<u64>,
    fetches: [AtomicU64; FetchOutcome::ALL.len()],
    skipped: AtomicU64,
    refresher: AtomicBool,
}

/// Keys fetched from a JWKS URL or found by OpenID discovery, kept fresh. See the
/// [module docs](self). Cheap to clone: clones share the set and its fetches.
#[derive(Clone)]
pub struct RemoteKeys {
    inner: Arc<Inner>,
}

impl fmt::Debug for RemoteKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteKeys")
            .field("source", &self.inner.source)
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

/// What a [`RemoteKeys`] has done: for metrics and health pages.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct KeySourceStats {
    /// The URL the keys come from (the discovery document's, for discovery).
    pub source: String,
    /// Fetches so far by outcome, in the order of [`FetchOutcome::ALL`].
    pub fetches: [u64; FetchOutcome::ALL.len()],
    /// Keys in the set held (an RSA key published without `alg` counts once per algorithm).
    pub keys: usize,
    /// Members skipped as unusable, over every fetch.
    pub skipped: u64,
    /// How old the set held is; `None` before the first good fetch.
    pub age: Option<Duration>,
}

impl KeySourceStats {
    /// Fetches that ended with `outcome`.
    pub fn fetched(&self, outcome: FetchOutcome) -> u64 {
        self.fetches[outcome.index()]
    }
}

/// Where the keys are.
#[derive(Debug, Clone)]
enum Target {
    Jwks(Uri),
    Discovery { issuer: String, url: Uri },
}

/// Builds a [`RemoteKeys`]. See the [module docs](self) for the defaults.
#[derive(Debug, Clone)]
#[must_use]
pub struct RemoteKeysBuilder {
    target: Result<Target, String>,
    tls: Option<Arc<rustls::ClientConfig>>,
    limits: Limits,
    settings: Settings,
}

impl RemoteKeys {
    /// Keys from the JWK set at `url` (`https://…/.well-known/jwks.json`).
    pub fn jwks(url: &str) -> RemoteKeysBuilder {
        RemoteKeysBuilder::new(parse_url(url).map(Target::Jwks))
    }

    /// Keys found by OpenID discovery: `{issuer}/.well-known/openid-configuration`
    /// names the `jwks_uri`, and its `issuer` must be exactly `issuer`.
    pub fn discovery(issuer: &str) -> RemoteKeysBuilder {
        let url = format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'));
        Self::discovery_at(issuer, &url)
    }

    /// As [`discovery`](Self::discovery), with the document at `url` (an address
    /// inside your network, say, for an issuer whose public name is `issuer`).
    pub fn discovery_at(issuer: &str, url: &str) -> RemoteKeysBuilder {
        RemoteKeysBuilder::new(parse_url(url).map(|url| Target::Discovery { issuer: issuer.to_owned(), url }))
    }

    /// Whether `other` is this source (a clone of it), not one built alike.
    pub fn is_same(&self, other: &RemoteKeys) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// What this source has done.
    pub fn stats(&self) -> KeySourceStats {
        let inner = &self.inner;
        let current = inner.current.load();
        KeySourceStats {
            source: inner.source.clone(),
            fetches: std::array::from_fn(|i| inner.fetches[i].load(Ordering::Relaxed)),
            keys: current.as_ref().map_or(0, |s| s.keys.len()),
            skipped: inner.skipped.load(Ordering::Relaxed),
            age: current.as_ref().map(|s| s.fetched_at.elapsed()),
        }
    }

    /// Fetches the set unless one is held (if a fetch is under way, waits for
    /// it, within the wait bound) and starts the background refresh: to have
    /// keys before the first token. Whether a usable set is held afterwards.
    pub async fn prefetch(&self) -> bool {
        if self.current().is_some() {
            return true;
        }
        self.inner.refresh(Trigger::Schedule).await;
        self.current().is_some()
    }

    /// The set, if one is held and not older than the staleness bound.
    pub(crate) fn current(&self) -> Option<Arc<Snapshot>> {
        self.start_refresher();
        let snapshot = self.inner.current.load_full()?;
        (snapshot.fetched_at.elapsed() <= self.inner.settings.max_stale).then_some(snapshot)
    }

    /// Asks for a fetch (see [`Trigger`]) and waits for it, within the wait bound.
    pub(crate) async fn refresh(&self, trigger: Trigger) {
        self.inner.refresh(trigger).await;
    }

    fn start_refresher(&self) {
        // A read first: this runs for every token verified, the write once.
        if self.inner.refresher.load(Ordering::Acquire) || self.inner.refresher.swap(true, Ordering::AcqRel) {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(refresh_in_background(Arc::downgrade(&self.inner)));
            }
            Err(_) => self.inner.refresher.store(false, Ordering::Release),
        }
    }

    #[cfg(test)]
    pub(crate) fn from_fn(settings_of: impl FnOnce(&mut RemoteKeysBuilder), fetch: FetchFn) -> Self {
        let mut builder = RemoteKeysBuilder::new(Ok(Target::Jwks(Uri::from_static("http://test.invalid/jwks"))));
        settings_of(&mut builder);
        Self::with_fetch("test".into(), builder.settings, fetch)
    }

    fn with_fetch(source: String, settings: Settings, fetch: FetchFn) -> Self {
        let (done, _) = watch::channel(0);
        Self {
            inner: Arc::new(Inner {
                source,
                fetch,
                settings,
                current: ArcSwapOption::empty(),
                state: Mutex::new(FetchState::default()),
                done,
                fetches: std::array::from_fn(|_| AtomicU64::new(0)),
                skipped: AtomicU64::new(0),
                refresher: AtomicBool::new(false),
            }),
        }
    }
}

fn parse_url(url: &str) -> Result<Uri, String> {
    let uri: Uri = url.parse().map_err(|e| format!("{url:?}: {e}"))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("https" | "http"), Some(_)) => Ok(uri),
        _ => Err(format!("{url:?}: an http:// or https:// URL is needed")),
    }
}

/// The background refresh: sleeps until the set is due, refreshes, and ends
/// when the source is dropped.
async fn refresh_in_background(inner: Weak<Inner>) {
    loop {
        let Some(strong) = inner.upgrade() else { return };
        let due = strong.lock().next_refresh;
        drop(strong);
        // Nothing fetched yet: fetch now.
        if let Some(due) = due {
            tokio::time::sleep_until(due).await;
        }
        let Some(strong) = inner.upgrade() else { return };
        let due = strong.lock().next_refresh;
        if due.is_none_or(|due| due <= Instant::now()) {
            strong.refresh(Trigger::Schedule).await;
            // A fetch that outlived the wait bound is still running: let it end.
            let mut done = strong.done.subscribe();
            while strong.lock().in_flight {
                let _ = done.changed().await;
            }
        }
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, FetchState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn refresh(self: &Arc<Self>, trigger: Trigger) {
        let mut done = self.done.subscribe();
        {
            let mut state = self.lock();
            if !state.in_flight {
                let now = Instant::now();
                if trigger == Trigger::Missing {
                    // Only fetches asked for by tokens count against the cooldown:
                    // a key rotated in just after a scheduled fetch is fetched at once.
                    if state.last_missing.is_some_and(|at| now.duration_since(at) < self.settings.cooldown) {
                        return;
                    }
                    state.last_missing = Some(now);
                }
                state.in_flight = true;
                // Its own task: a request that gives up waiting does not cancel it.
                tokio::spawn(self.clone().fetch_once());
            }
        }
        let _ = tokio::time::timeout(self.settings.wait, done.changed()).await;
    }

    async fn fetch_once(self: Arc<Self>) {
        let result = (self.fetch)().await;
        let now = Instant::now();
        let mut state = self.lock();
        match result {
            Ok(fetched) => {
                self.fetches[FetchOutcome::Ok.index()].fetch_add(1, Ordering::Relaxed);
                for (kid, skip) in &fetched.parsed.skipped {
                    tracing::warn!(source = %self.source, ?kid, reason = skip.label(), "a published key was skipped");
                }
                self.skipped.fetch_add(fetched.parsed.skipped.len() as u64, Ordering::Relaxed);
                let kids = |keys: &[Key]| {
                    let mut kids: Vec<Option<String>> = keys.iter().map(|k| k.kid().map(str::to_owned)).collect();
                    kids.dedup();
                    kids
                };
                let before = self.current.load().as_ref().map(|s| kids(&s.keys));
                let after = kids(&fetched.parsed.keys);
                if before.as_ref() != Some(&after) {
                    tracing::info!(source = %self.source, kids = ?after, "key set fetched");
                }
                self.current.store(Some(Arc::new(Snapshot { keys: fetched.parsed.keys, fetched_at: now })));
                let keep = fetched.max_age.unwrap_or(self.settings.refresh_max);
                state.next_refresh = Some(now + keep.clamp(self.settings.refresh_min, self.settings.refresh_max));
                state.failures = 0;
            }
            Err(err) => {
                self.fetches[err.outcome.index()].fetch_add(1, Ordering::Relaxed);
                state.failures = state.failures.saturating_add(1);
                // 1 s, 2 s, 4 s… up to the shortest refresh interval.
                let backoff = Duration::from_secs(1 << state.failures.min(10).saturating_sub(1));
                let retry = backoff.min(self.settings.refresh_min);
                state.next_refresh = Some(now + retry);
                let age = self.current.load().as_ref().map(|s| now.duration_since(s.fetched_at));
                tracing::warn!(
                    source = %self.source,
                    outcome = err.outcome.label(),
                    detail = %err.detail,
                    serving_set_aged = ?age,
                    max_stale = ?self.settings.max_stale,
                    "key set fetch failed; the last good set serves until it is older than max_stale",
                );
            }
        }
        state.in_flight = false;
        drop(state);
        self.done.send_modify(|n| *n += 1);
    }
}

impl RemoteKeysBuilder {
    fn new(target: Result<Target, String>) -> Self {
        Self {
            target,
            tls: None,
            limits: Limits {
                connect_timeout: Duration::from_secs(1),
                timeout: Duration::from_secs(5),
                max_body: 256 * 1024,
            },
            settings: Settings {
                refresh_min: Duration::from_secs(60),
                refresh_max: Duration::from_secs(60 * 60),
                cooldown: Duration::from_secs(10),
                max_stale: Duration::from_secs(24 * 60 * 60),
                wait: Duration::from_secs(3),
            },
        }
    }

    /// How `https://` sources are verified (your own CA, a client certificate),
    /// instead of the Mozilla roots.
    pub fn tls_config(mut self, config: impl Into<Arc<rustls::ClientConfig>>) -> Self {
        self.tls = Some(config.into());
        self
    }

    /// How long a connection may take (default 1 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.limits.connect_timeout = timeout;
        self
    }

    /// How long a whole fetch may take, redirects and body included (default 5 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.limits.timeout = timeout;
        self
    }

    /// The largest document read (default 256 KiB).
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.limits.max_body = bytes;
        self
    }

    /// The set is refetched after its `Cache-Control: max-age`, but never sooner
    /// than `min` nor later than `max` (default 1 min and 1 h; `max` without a max-age).
    pub fn refresh_between(mut self, min: Duration, max: Duration) -> Self {
        self.settings.refresh_min = min;
        self.settings.refresh_max = max;
        self
    }

    /// At most one fetch per this for tokens bearing a `kid` the set lacks (default 10 s).
    pub fn unknown_kid_cooldown(mut self, cooldown: Duration) -> Self {
        self.settings.cooldown = cooldown;
        self
    }

    /// How long after its fetch the last good set still serves while the
    /// provider fails (default 24 h).
    pub fn max_stale(mut self, max_stale: Duration) -> Self {
        self.settings.max_stale = max_stale;
        self
    }

    /// How long a request waits for a fetch its token asked for (default 3 s).
    pub fn wait(mut self, wait: Duration) -> Self {
        self.settings.wait = wait;
        self
    }

    /// The source, or what is wrong with it.
    pub fn build(self) -> Result<RemoteKeys, ConfigError> {
        let invalid = |reason: String| ConfigError::InvalidKeySource(reason);
        let target = self.target.map_err(invalid)?;
        let s = &self.settings;
        if s.refresh_min.is_zero() || s.refresh_min > s.refresh_max {
            return Err(invalid("refresh_between: 0 < min <= max".into()));
        }
        if s.max_stale.is_zero() || s.wait.is_zero() || self.limits.timeout.is_zero() || self.limits.max_body == 0 {
            return Err(invalid("max_stale, wait, timeout and max_body must be positive".into()));
        }
        crate::crypto::install_default_crypto();
        let fetcher = Fetcher::new(self.limits, self.tls);
        let source = match &target {
            Target::Jwks(url) | Target::Discovery { url, .. } => url.to_string(),
        };
        let target = Arc::new(target);
        let fetch: FetchFn = Arc::new(move || {
            let (fetcher, target) = (fetcher.clone(), target.clone());
            Box::pin(async move { fetch_keys(&fetcher, &target).await })
        });
        Ok(RemoteKeys::with_fetch(source, self.settings, fetch))
    }
}

#[derive(Deserialize)]
struct DiscoveryDocument {
    issuer: String,
    jwks_uri: String,
}

async fn fetch_keys(fetcher: &Fetcher, target: &Target) -> Result<Fetched, FetchError> {
    let jwks_url = match target {
        Target::Jwks(url) => url.clone(),
        Target::Discovery { issuer, url } => {
            let document = fetcher.get(url).await?;
            let invalid = |why: String| FetchError::new(FetchOutcome::Invalid, format!("{url}: {why}"));
            let document: DiscoveryDocument = serde_json::from_slice(&document.body)
                .map_err(|e| invalid(format!("not a discovery document: {e}")))?;
            if document.issuer != *issuer {
                return Err(invalid(format!("names the issuer {:?}, not {issuer:?}", document.issuer)));
            }
            parse_url(&document.jwks_uri).map_err(|e| invalid(format!("jwks_uri {e}")))?
        }
    };
    let document = fetcher.get(&jwks_url).await?;
    let parsed =
        jwk::parse(&document.body).map_err(|e| FetchError::new(FetchOutcome::Invalid, format!("{jwks_url}: {e}")))?;
    Ok(Fetched { parsed, max_age: document.max_age })
}

#[cfg(test)]
mod tests;
