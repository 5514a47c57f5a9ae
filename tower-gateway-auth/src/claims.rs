//! The claims the layer reads from a token, and how they reach the inner service.

use std::ops::Deref;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The `aud` claim: one audience or several.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    /// A single audience.
    One(String),
    /// Several audiences.
    Many(Vec<String>),
}

/// The registered claims the layer understands, plus `email` (the seed's) and `roles`.
///
/// Unknown claims are ignored; a claim given twice makes the token invalid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The subject: the user id.
    pub sub: String,
    /// Expiry, in seconds since the Unix epoch. Required.
    pub exp: u64,
    /// Issued at, in seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Not before, in seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// The token's id, used for revocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// The issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// The audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
    /// The user's email.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// The user's roles (`["admin"]`), for [`JwtAuthLayer::any_role`](crate::JwtAuthLayer::any_role).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
}

impl Claims {
    /// Claims with only a subject and an expiry; set the other fields as needed.
    pub fn new(sub: impl Into<String>, exp: u64) -> Self {
        Self {
            sub: sub.into(),
            exp,
            iat: None,
            nbf: None,
            jti: None,
            iss: None,
            aud: None,
            email: None,
            roles: Vec::new(),
        }
    }

    /// Whether the token carries `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// The verified identity of a request, in its extensions once
/// [`JwtAuth`](crate::JwtAuth) let it through. Cheap to clone.
///
/// With axum: `Extension(who): Extension<Authenticated>`, then `who.sub`.
///
/// A handler that takes it can be tested without a token: build one from
/// [`Claims`] and put it in the request's extensions yourself.
///
/// ```
/// use axum::{Extension, Router, body::Body, routing::get};
/// use tower::ServiceExt;
/// use tower_gateway_auth::{Authenticated, Claims};
///
/// async fn orders(Extension(who): Extension<Authenticated>) -> String {
///     format!("the orders of user {}", who.sub)
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let mut claims = Claims::new("42", 4_102_444_800);
/// claims.email = Some("ada@example.com".into());
/// let mut request = http::Request::get("/orders").body(Body::empty()).unwrap();
/// request.extensions_mut().insert(Authenticated::new(claims));
///
/// let response = Router::new().route("/orders", get(orders)).oneshot(request).await.unwrap();
/// let body = axum::body::to_bytes(response.into_body(), 1024).await.unwrap();
/// assert_eq!(body, "the orders of user 42");
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated(pub(crate) Arc<Claims>);

impl From<Claims> for Authenticated {
    fn from(claims: Claims) -> Self {
        Self::new(claims)
    }
}

impl Authenticated {
    /// An identity as if a token carrying `claims` had been verified: for tests
    /// of handlers, and for services that authenticate some other way.
    pub fn new(claims: Claims) -> Self {
        Self(Arc::new(claims))
    }

    /// The verified claims.
    pub fn claims(&self) -> &Claims {
        &self.0
    }
}

impl Deref for Authenticated {
    type Target = Claims;

    fn deref(&self) -> &Claims {
        &self.0
    }
}

/// A token that validated: its claims, its id, and the identity headers it
/// gives. What the cache keeps and the layer admits.
#[derive(Debug)]
pub(crate) struct Verified {
    pub(crate) who: Authenticated,
    pub(crate) id: Box<str>,
    pub(crate) headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

impl Verified {
    pub(crate) fn record(&self) -> crate::store::TokenRecord<'_> {
        crate::store::TokenRecord {
            id: &self.id,
            subject: &self.who.sub,
            issued_at: self.who.iat,
            expires_at: self.who.exp,
        }
    }
}

/// Which claim [`ClaimKey`] counts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Claim {
    /// `sub`, the user.
    Subject,
    /// `email`.
    Email,
    /// `iss`, the issuer (one quota per issuing service).
    Issuer,
}

/// A rate-limit key: a claim of the verified token, for a
/// [`RateLimitLayer`](tower_gateway::RateLimitLayer) inside [`JwtAuthLayer`](crate::JwtAuthLayer).
/// A request without a verified token (or without the claim) has no key.
///
/// ```
/// use tower::ServiceBuilder;
/// use tower_gateway::{Limiter, Quota, RateLimitLayer};
/// use tower_gateway_auth::{Authenticator, ClaimKey, JwtAuthLayer, Key};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let auth = Authenticator::builder(Key::hs256(b"a shared secret of at least 32 bytes!")?).build()?;
/// let per_user = ServiceBuilder::new()
///     .layer(JwtAuthLayer::new(auth))
///     .layer(RateLimitLayer::new(Limiter::new("orders", Quota::per_minute(30)), ClaimKey::subject()));
/// # let _ = per_user;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimKey(Claim);

impl ClaimKey {
    /// Counts by `claim`.
    pub fn new(claim: Claim) -> Self {
        Self(claim)
    }

    /// Counts by `sub`: one quota per user, whichever address they come from.
    pub fn subject() -> Self {
        Self(Claim::Subject)
    }
}

impl<B> tower_gateway::rate_limit::KeyExtractor<B> for ClaimKey {
    fn extract(&self, req: &http::Request<B>) -> Option<String> {
        let claims = req.extensions().get::<Authenticated>()?;
        match self.0 {
            Claim::Subject => Some(claims.sub.clone()),
            Claim::Email => claims.email.clone(),
            Claim::Issuer => claims.iss.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use tower_gateway::rate_limit::KeyExtractor;

    use super::*;

    #[test]
    fn claim_keys_read_the_verified_identity_only() {
        let claims = Claims {
            sub: "42".into(),
            exp: 1,
            iat: None,
            nbf: None,
            jti: None,
            iss: Some("user-service".into()),
            aud: None,
            email: None,
            roles: Vec::new(),
        };
        let mut req = http::Request::builder().header("x-user-id", "7").body(()).unwrap();
        assert_eq!(ClaimKey::subject().extract(&req), None, "a client-sent identity header is no key");
        req.extensions_mut().insert(Authenticated(Arc::new(claims)));
        assert_eq!(ClaimKey::subject().extract(&req).as_deref(), Some("42"));
        assert_eq!(ClaimKey::new(Claim::Issuer).extract(&req).as_deref(), Some("user-service"));
        assert_eq!(ClaimKey::new(Claim::Email).extract(&req), None);
    }
}
