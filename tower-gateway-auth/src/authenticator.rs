//! The shared state of JWT authentication: keys, rules, the store and the cache.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::cache::Cache;
use crate::claims::{Authenticated, Claims, Verified};
use crate::error::{ConfigError, Rejection, StoreError};
use crate::issuer::Issuer;
use crate::jwks::{RemoteKeys, Trigger};
use crate::key::Key;
use crate::store::{BoxFuture, MemoryStore, TokenState, TokenStore, unix_now};
use crate::verify::{Rules, Verdict, Verifier};

/// The longest `Authorization` header accepted.
pub const MAX_AUTHORIZATION_LEN: usize = 8 * 1024;

/// The largest leeway the builder accepts for `exp`, `nbf` and `iat`.
pub const MAX_LEEWAY: Duration = Duration::from_secs(5);

/// The first, synchronous step of authenticating a request.
pub(crate) enum Step {
    /// Found fresh in the cache.
    Allow(Arc<Verified>),
    /// Refused without asking the store.
    Reject(Rejection),
    /// The rest is asynchronous: the store must be asked, or first the
    /// issuer's keys fetched (the key may be in a fresher set).
    Pending(BoxFuture<'static, Result<Arc<Verified>, Rejection>>),
}

/// Why a token did not verify at once.
enum Unverified {
    Rejected(Rejection),
    /// Its issuer's keys must be fetched first.
    Fetch(RemoteKeys),
}

struct Inner {
    verifier: Verifier,
    store: Arc<dyn TokenStore>,
    cache: Cache,
    subject_header: Option<HeaderName>,
    email_header: Option<HeaderName>,
    /// Both of the above, for removing client-sent copies.
    identity_names: Vec<HeaderName>,
    fail_open: bool,
    max_lifetime: u64,
}

/// Keys, rules, token store and cache, shared by every [`JwtAuthLayer`](crate::JwtAuthLayer)
/// made from it and by the code that revokes tokens. Cheap to clone.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("verifier", &self.inner.verifier)
            .field("store", &self.inner.store)
            .field("fail_open", &self.inner.fail_open)
            .finish_non_exhaustive()
    }
}

/// Builds an [`Authenticator`]. See [`Authenticator::builder`] for the defaults.
#[derive(Debug)]
pub struct AuthenticatorBuilder {
    keys: Vec<Key>,
    issuers: Vec<Issuer>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: Duration,
    max_lifetime: Duration,
    store: Option<Arc<dyn TokenStore>>,
    cache_bound: Duration,
    cache_capacity: usize,
    cache_max_bytes: usize,
    subject_header: Option<String>,
    email_header: Option<String>,
    fail_open: bool,
}

impl AuthenticatorBuilder {
    /// Another key, told apart by its `kid` (see [`Key::with_kid`]), for the
    /// keys given to [`Authenticator::builder`].
    pub fn key(mut self, key: Key) -> Self {
        self.keys.push(key);
        self
    }

    /// Tokens verified by the keys given to [`Authenticator::builder`] must carry
    /// this `iss`.
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }

    /// Tokens of another issuer are accepted too, with its own keys, audiences
    /// and algorithms; a token is matched to its issuer by `iss`. Every issuer
    /// then needs an `iss`.
    pub fn trust(mut self, issuer: Issuer) -> Self {
        self.issuers.push(issuer);
        self
    }

    /// Tokens verified by the keys given to [`Authenticator::builder`] must carry
    /// this `aud`.
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// Clock skew allowed on `exp`, `nbf` and `iat` (default 2 s, at most [`MAX_LEEWAY`]).
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// Tokens living longer than this are refused (default 24 h).
    pub fn max_lifetime(mut self, max_lifetime: Duration) -> Self {
        self.max_lifetime = max_lifetime;
        self
    }

    /// Where revocations live (default: a fresh [`MemoryStore`]).
    pub fn store(mut self, store: Arc<dyn TokenStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// How long a token found active may be trusted without asking the store
    /// again (default 1 s; zero asks every time). This bounds how late a
    /// revocation made through another process is seen.
    pub fn cache_bound(mut self, bound: Duration) -> Self {
        self.cache_bound = bound;
        self
    }

    /// How many tokens the cache holds at most (default 100 000).
    pub fn cache_capacity(mut self, capacity: usize) -> Self {
        self.cache_capacity = capacity;
        self
    }

    /// How much memory the cache may hold, roughly (default 32 MiB): tokens,
    /// claims and overhead. Expired entries are dropped within twice the cache
    /// bound, whether or not the cache is full.
    pub fn cache_max_bytes(mut self, bytes: usize) -> Self {
        self.cache_max_bytes = bytes;
        self
    }

    /// The headers that carry `sub` and `email` to the inner service (default
    /// `x-user-id` and `x-user-email`; `None` sends none). Client-sent copies are
    /// always removed.
    pub fn identity_headers(mut self, subject: Option<&str>, email: Option<&str>) -> Self {
        self.subject_header = subject.map(str::to_owned);
        self.email_header = email.map(str::to_owned);
        self
    }

    /// Lets locally valid tokens through when the store cannot be reached
    /// (default: refuse with 503). Revoked tokens then pass while the store is down.
    pub fn fail_open(mut self, fail_open: bool) -> Self {
        self.fail_open = fail_open;
        self
    }

    /// The authenticator, or what is wrong with the configuration.
    pub fn build(self) -> Result<Authenticator, ConfigError> {
        if self.leeway > MAX_LEEWAY {
            return Err(ConfigError::LeewayTooLong);
        }
        if self.max_lifetime.is_zero() {
            return Err(ConfigError::ZeroMaxLifetime);
        }
        let header = |name: Option<String>| {
            name.map(|n| HeaderName::try_from(n.as_str()).map_err(|_| ConfigError::InvalidHeaderName(n))).transpose()
        };
        let rules = Rules { leeway: self.leeway.as_secs(), max_lifetime: self.max_lifetime.as_secs() };
        let mut issuers = self.issuers;
        if !self.keys.is_empty() {
            let mut own = match self.issuer {
                Some(iss) => Issuer::new(iss, self.keys),
                None => Issuer::any(self.keys),
            };
            own.audiences.extend(self.audience);
            issuers.insert(0, own);
        }
        let subject_header = header(self.subject_header)?;
        let email_header = header(self.email_header)?;
        let verifier = Verifier::new(issuers, &rules)?;
        let mut identity_names: Vec<HeaderName> = subject_header.iter().chain(email_header.iter()).cloned().collect();
        for name in verifier.forwarded_names() {
            if !identity_names.contains(name) {
                identity_names.push(name.clone());
            }
        }
        Ok(Authenticator {
            inner: Arc::new(Inner {
                verifier,
                store: self.store.unwrap_or_else(|| Arc::new(MemoryStore::new())),
                cache: Cache::new(self.cache_bound, self.cache_capacity, self.cache_max_bytes),
                identity_names,
                subject_header,
                email_header,
                fail_open: self.fail_open,
                max_lifetime: rules.max_lifetime,
            }),
        })
    }
}

/// The token of an `Authorization: Bearer` header (scheme case-insensitive).
fn bearer(headers: &HeaderMap) -> Result<&str, Rejection> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next().ok_or(Rejection::MissingToken)?;
    if values.next().is_some() || value.len() > MAX_AUTHORIZATION_LEN {
        return Err(Rejection::MalformedToken);
    }
    let value = value.to_str().map_err(|_| Rejection::MalformedToken)?;
    let (scheme, token) = value.trim().split_once(' ').ok_or(Rejection::MalformedToken)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Rejection::MissingToken);
    }
    let token = token.trim();
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    if token.is_empty() || !token.bytes().all(allowed) {
        return Err(Rejection::MalformedToken);
    }
    Ok(token)
}

impl Authenticator {
    /// A builder verifying tokens with `key`. Defaults: `exp` and `sub` required,
    /// `nbf` checked, 2 s leeway, 24 h maximum lifetime, no issuer or audience
    /// check, an in-memory store, a 1 s cache bound, identity headers `x-user-id`
    /// and `x-user-email`, fail closed.
    pub fn builder(key: Key) -> AuthenticatorBuilder {
        let mut builder = Self::builder_for_none();
        builder.keys.push(key);
        builder
    }

    /// A builder accepting the tokens of `issuer` (keys from a JWKS URL or OpenID
    /// discovery, say); more with [`AuthenticatorBuilder::trust`]. The other
    /// defaults are those of [`builder`](Self::builder).
    pub fn builder_for(issuer: Issuer) -> AuthenticatorBuilder {
        Self::builder_for_none().trust(issuer)
    }

    fn builder_for_none() -> AuthenticatorBuilder {
        AuthenticatorBuilder {
            keys: Vec::new(),
            issuers: Vec::new(),
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(2),
            max_lifetime: Duration::from_secs(24 * 60 * 60),
            store: None,
            cache_bound: Duration::from_secs(1),
            cache_capacity: 100_000,
            cache_max_bytes: 32 * 1024 * 1024,
            subject_header: Some("x-user-id".into()),
            email_header: Some("x-user-email".into()),
            fail_open: false,
        }
    }

    /// The token store.
    pub fn store(&self) -> &Arc<dyn TokenStore> {
        &self.inner.store
    }

    /// Whether the store answers (for readiness checks).
    pub async fn ready(&self) -> Result<(), StoreError> {
        self.inner.store.ping().await
    }

    /// The identity headers this authenticator sets (`x-user-id`, `x-user-email` by
    /// default): a gateway removes client-sent copies of them from every request.
    pub fn identity_header_names(&self) -> &[HeaderName] {
        &self.inner.identity_names
    }

    /// Every issuer's remote key source, with its `iss`: for metrics.
    pub fn key_sources(&self) -> Vec<(Option<String>, RemoteKeys)> {
        self.inner.verifier.remote_sources().map(|(iss, keys)| (iss.map(str::to_owned), keys.clone())).collect()
    }

    /// Fetches every remote key set now and starts their background refresh, so
    /// that the first token finds its keys; whether every source holds a set.
    pub async fn prefetch(&self) -> bool {
        let mut all = true;
        for (_, keys) in self.inner.verifier.remote_sources() {
            all &= keys.prefetch().await;
        }
        all
    }

    fn verify(&self, token: &str, may_fetch: bool) -> Result<Verified, Unverified> {
        let (claims, issuer) = match self.inner.verifier.verify(token, unix_now(), may_fetch) {
            Verdict::Valid(claims, issuer) => (claims, issuer),
            Verdict::Reject(rejection) => return Err(Unverified::Rejected(rejection)),
            Verdict::Fetch(keys) => return Err(Unverified::Fetch(keys)),
        };
        let id: Box<str> = match &claims.jti {
            Some(jti) => jti.as_str().into(),
            // Without a jti, the signature names the token uniquely.
            None => token.rsplit('.').next().unwrap_or(token).into(),
        };
        let mut headers = Vec::with_capacity(2);
        let mut add = |name: &Option<HeaderName>, value: Option<&str>| {
            if let (Some(name), Some(value)) = (name, value.and_then(|v| HeaderValue::from_str(v).ok())) {
                headers.push((name.clone(), value));
            }
        };
        add(&self.inner.subject_header, Some(&claims.sub));
        add(&self.inner.email_header, claims.email.as_deref());
        for (claim, name) in self.inner.verifier.forwarded(issuer) {
            let value = claim_text(&claims, claim).and_then(|v| HeaderValue::from_str(&v).ok());
            if let Some(value) = value {
                headers.retain(|(n, _)| n != name);
                headers.push((name.clone(), value));
            }
        }
        Ok(Verified { who: Authenticated(Arc::new(claims)), id, headers })
    }

    /// Verifies `token`, fetching its issuer's keys first if they may have
    /// rotated (or were never fetched), within the source's wait bound.
    async fn verify_fetching(&self, token: &str) -> Result<Verified, Rejection> {
        match self.verify(token, true) {
            Ok(verified) => Ok(verified),
            Err(Unverified::Rejected(rejection)) => Err(rejection),
            Err(Unverified::Fetch(keys)) => self.verify_after_fetch(token, &keys).await,
        }
    }

    /// Verifies `token` once `keys` were fetched (or the wait for them ended);
    /// a key still missing is then refused, not fetched again.
    async fn verify_after_fetch(&self, token: &str, keys: &RemoteKeys) -> Result<Verified, Rejection> {
        keys.refresh(Trigger::Missing).await;
        match self.verify(token, false) {
            Ok(verified) => Ok(verified),
            Err(Unverified::Rejected(rejection)) => Err(rejection),
            Err(Unverified::Fetch(_)) => Err(Rejection::KeySourceUnavailable),
        }
    }

    pub(crate) fn begin(&self, headers: &HeaderMap) -> Step {
        let token = match bearer(headers) {
            Ok(token) => token,
            Err(rejection) => return Step::Reject(rejection),
        };
        if let Some(verified) = self.inner.cache.get(token) {
            return Step::Allow(verified);
        }
        match self.verify(token, true) {
            Ok(verified) => {
                let (auth, token): (Self, Box<str>) = (self.clone(), token.into());
                Step::Pending(Box::pin(async move { auth.finish(token, Arc::new(verified)).await }))
            }
            Err(Unverified::Rejected(rejection)) => Step::Reject(rejection),
            Err(Unverified::Fetch(keys)) => {
                let (auth, token): (Self, Box<str>) = (self.clone(), token.into());
                Step::Pending(Box::pin(async move {
                    let verified = Arc::new(auth.verify_after_fetch(&token, &keys).await?);
                    auth.finish(token, verified).await
                }))
            }
        }
    }

    pub(crate) async fn finish(&self, token: Box<str>, verified: Arc<Verified>) -> Result<Arc<Verified>, Rejection> {
        match self.inner.store.check(verified.record()).await {
            Ok(TokenState::Active) => {
                let remaining = verified.who.exp.saturating_sub(unix_now());
                self.inner.cache.insert(token, verified.clone(), Duration::from_secs(remaining));
                Ok(verified)
            }
            Ok(TokenState::Revoked) => Err(Rejection::Revoked),
            Err(err) if self.inner.fail_open => {
                tracing::warn!(%err, "token store unavailable; letting a locally valid token through (fail open)");
                Ok(verified)
            }
            Err(err) => {
                tracing::warn!(%err, "token store unavailable; refusing (fail closed)");
                Err(Rejection::StoreUnavailable)
            }
        }
    }

    /// Authenticates a bare token, as the layer would (cache, validation, store).
    pub async fn authenticate(&self, token: &str) -> Result<Authenticated, Rejection> {
        if let Some(verified) = self.inner.cache.get(token) {
            return Ok(verified.who.clone());
        }
        let verified = Arc::new(self.verify_fetching(token).await?);
        Ok(self.finish(token.into(), verified).await?.who.clone())
    }

    /// Revokes `token` until it expires — one store write — and forgets it here
    /// at once; other processes see it within their cache bound. The token must
    /// be valid (an invalid one is refused anyway). Returns its claims.
    pub async fn revoke_token(&self, token: &str) -> Result<Authenticated, Rejection> {
        let verified = self.verify_fetching(token).await?;
        self.inner.store.revoke(verified.record()).await.map_err(|err| {
            tracing::warn!(%err, "could not revoke a token");
            Rejection::StoreUnavailable
        })?;
        self.inner.cache.remove_where(|v| v.id == verified.id);
        Ok(verified.who)
    }

    /// Revokes every token of `subject` issued before `before` (e.g. now, after a
    /// password change), and forgets them here at once.
    pub async fn revoke_subject(&self, subject: &str, before: SystemTime) -> Result<(), StoreError> {
        let before = before.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let until = unix_now().saturating_add(self.inner.max_lifetime).saturating_add(MAX_LEEWAY.as_secs() + 1);
        self.inner.store.revoke_subject(subject, before, until).await?;
        self.inner.cache.remove_where(|v| v.who.sub == subject);
        Ok(())
    }

    #[cfg(test)]
    pub(crate) fn cached(&self) -> usize {
        self.inner.cache.len()
    }
}

/// A claim as header text: a string, number or boolean, or an array of strings
/// joined by commas; registered claims by their names.
fn claim_text(claims: &Claims, path: &str) -> Option<String> {
    let registered = match path {
        "sub" => Some(claims.sub.clone()),
        "email" => claims.email.clone(),
        "iss" => claims.iss.clone(),
        "jti" => claims.jti.clone(),
        "roles" if claims.get("roles").is_none() => Some(claims.roles.join(",")).filter(|r| !r.is_empty()),
        _ => None,
    };
    if registered.is_some() {
        return registered;
    }
    match claims.get(path)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        serde_json::Value::Array(items) => {
            let words: Option<Vec<&str>> = items.iter().map(serde_json::Value::as_str).collect();
            Some(words?.join(","))
        }
        _ => None,
    }
}
