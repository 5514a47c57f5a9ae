//! A trusted issuer: where its keys come from, and what its tokens must say.

use std::sync::Arc;

use jsonwebtoken::Algorithm;

use crate::claims::ClaimPaths;
use crate::jwks::RemoteKeys;
use crate::key::Key;

/// Where an issuer's keys come from: keys you hold (read from files, say), or a
/// [`RemoteKeys`] (a JWKS URL, OpenID discovery). Made with `From`.
#[derive(Debug, Clone)]
pub struct KeySource(pub(crate) Source);

#[derive(Debug, Clone)]
pub(crate) enum Source {
    Static(Arc<[Key]>),
    Remote(RemoteKeys),
}

impl From<Key> for KeySource {
    fn from(key: Key) -> Self {
        Self(Source::Static(Arc::new([key])))
    }
}

impl From<Vec<Key>> for KeySource {
    fn from(keys: Vec<Key>) -> Self {
        Self(Source::Static(keys.into()))
    }
}

impl From<RemoteKeys> for KeySource {
    fn from(keys: RemoteKeys) -> Self {
        Self(Source::Remote(keys))
    }
}

/// An issuer whose tokens an [`Authenticator`](crate::Authenticator) accepts: a
/// token is matched to its issuer by `iss` before any key is tried, and verified
/// only with that issuer's keys, audiences and algorithms.
///
/// ```
/// use tower_gateway_auth::{Authenticator, Issuer, Key, RemoteKeys};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let auth0 = Issuer::new("https://shop.eu.auth0.com/", RemoteKeys::discovery("https://shop.eu.auth0.com/").build()?)
///     .audience("https://api.shop.example")
///     .roles_claim("https://shop.example/roles")
///     .forward_claim("sub", "x-user-id");
/// let ours = Issuer::new("user-service", Key::hs256(b"a shared secret of at least 32 bytes!")?)
///     .audience("tower-gateway");
/// let auth = Authenticator::builder_for(auth0).trust(ours).build()?;
/// # let _ = auth;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct Issuer {
    pub(crate) iss: Option<String>,
    pub(crate) keys: KeySource,
    pub(crate) audiences: Vec<String>,
    pub(crate) algorithms: Vec<Algorithm>,
    pub(crate) paths: ClaimPaths,
    pub(crate) forward: Vec<(String, String)>,
}

impl Issuer {
    /// Tokens whose `iss` is exactly `iss`, verified with `keys`. Defaults: any
    /// audience, every algorithm the keys were made or published for, roles from
    /// `roles`, scopes from `scope` (space-separated) or `scp` (an array).
    pub fn new(iss: impl Into<String>, keys: impl Into<KeySource>) -> Self {
        Self { iss: Some(iss.into()), ..Self::any(keys) }
    }

    /// Tokens with any `iss` or none: only when it is the one issuer trusted.
    pub(crate) fn any(keys: impl Into<KeySource>) -> Self {
        Self {
            iss: None,
            keys: keys.into(),
            audiences: Vec::new(),
            algorithms: Vec::new(),
            paths: ClaimPaths::default(),
            forward: Vec::new(),
        }
    }

    /// Tokens must carry this `aud` (or one of those given, when called again).
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audiences.push(audience.into());
        self
    }

    /// Only these algorithms, of those the keys allow.
    pub fn algorithms(mut self, algorithms: impl IntoIterator<Item = Algorithm>) -> Self {
        self.algorithms = algorithms.into_iter().collect();
        self
    }

    /// Where this issuer's tokens carry roles: a claim name (`groups`,
    /// `cognito:groups`, `https://example.com/roles`) or a dotted path
    /// (`realm_access.roles`), holding an array of strings or a space-separated
    /// string. Default `roles`.
    pub fn roles_claim(mut self, path: impl Into<String>) -> Self {
        self.paths.roles = vec![path.into()];
        self
    }

    /// Where this issuer's tokens carry scopes, as for
    /// [`roles_claim`](Self::roles_claim). Default `scope`, then `scp`.
    pub fn scopes_claim(mut self, path: impl Into<String>) -> Self {
        self.paths.scopes = vec![path.into()];
        self
    }

    /// Sends the claim at `claim` (a name or dotted path; a string, number,
    /// boolean, or an array of strings joined by commas) to the inner service as
    /// `header`. A client-sent `header` is always removed first.
    pub fn forward_claim(mut self, claim: impl Into<String>, header: impl Into<String>) -> Self {
        self.forward.push((claim.into(), header.into()));
        self
    }
}
