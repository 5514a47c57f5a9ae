//! The claims the layer reads from a token, and how they reach the inner service.

use std::ops::Deref;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The `aud` claim: one audience or several.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    /// A single audience.
    One(String),
    /// Several audiences.
    Many(Vec<String>),
}

/// The claims of a verified token: the registered ones as fields, every other
/// claim by name ([`get`](Self::get), [`value`](Self::value)), and the roles and
/// scopes read from where the token's issuer keeps them (see
/// [`Issuer::roles_claim`](crate::Issuer::roles_claim)).
///
/// `#[non_exhaustive]`: build one with [`Claims::new`] and set fields on it, so a
/// field added later breaks no code. A claim given twice makes the token invalid.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Claims {
    /// The subject: the user id.
    pub sub: String,
    /// Expiry, in seconds since the Unix epoch. Required.
    pub exp: u64,
    /// Issued at, in seconds since the Unix epoch.
    pub iat: Option<u64>,
    /// Not before, in seconds since the Unix epoch.
    pub nbf: Option<u64>,
    /// The token's id, used for revocation.
    pub jti: Option<String>,
    /// The issuer.
    pub iss: Option<String>,
    /// The audience.
    pub aud: Option<Audience>,
    /// The user's email.
    pub email: Option<String>,
    /// The user's roles (`["admin"]`), from the issuer's roles claim (`roles` unless
    /// configured otherwise), for [`JwtAuthLayer::any_role`](crate::JwtAuthLayer::any_role).
    pub roles: Vec<String>,
    /// The token's scopes, from the issuer's scopes claim (`scope` as a
    /// space-separated string, or `scp` as an array, unless configured otherwise),
    /// for [`JwtAuthLayer::all_scopes`](crate::JwtAuthLayer::all_scopes).
    pub scopes: Vec<String>,
    /// Every claim that has no field above, as the token carried it.
    other: Map<String, Value>,
}

/// The claims that are fields of [`Claims`], and so not in its other claims.
const REGISTERED: [&str; 8] = ["sub", "exp", "iat", "nbf", "jti", "iss", "aud", "email"];

/// Where an issuer keeps roles and scopes: a claim name, or a dotted path into
/// nested objects (`realm_access.roles`). A name that is itself a claim of the
/// token wins over the path, so namespaced claims (`https://example.com/roles`)
/// work as they are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClaimPaths {
    pub(crate) roles: Vec<String>,
    pub(crate) scopes: Vec<String>,
}

impl Default for ClaimPaths {
    fn default() -> Self {
        Self { roles: vec!["roles".into()], scopes: vec!["scope".into(), "scp".into()] }
    }
}

/// The value at `path` in `claims`: the claim named exactly `path`, else the
/// dotted path walked through nested objects.
pub(crate) fn lookup<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(value) = claims.get(path) {
        return Some(value);
    }
    let mut parts = path.split('.');
    let mut value = claims.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

/// A list of words from a claim: an array of strings, or one space-separated string.
fn words(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => s.split_ascii_whitespace().map(str::to_owned).collect(),
        Value::Array(items) => items.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

/// A time claim: whole seconds, or a number with a fraction (some issuers send them).
fn seconds(value: &Value) -> Option<u64> {
    value.as_u64().or_else(|| value.as_f64().filter(|f| *f >= 0.0 && f.is_finite()).map(|f| f as u64))
}

/// Why a verified payload does not make [`Claims`]: a registered claim of the wrong type.
#[derive(Debug)]
pub(crate) struct WrongType;

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
            scopes: Vec::new(),
            other: Map::new(),
        }
    }

    /// The claims of a payload, roles and scopes read from `paths`.
    pub(crate) fn from_map(mut map: Map<String, Value>, paths: &ClaimPaths) -> Result<Self, WrongType> {
        let string = |v: Value| match v {
            Value::String(s) => Ok(s),
            _ => Err(WrongType),
        };
        let sub = map.remove("sub").map(string).transpose()?.ok_or(WrongType)?;
        let exp = map.remove("exp").as_ref().and_then(seconds).ok_or(WrongType)?;
        let time = |v: Option<Value>| v.map(|v| seconds(&v).ok_or(WrongType)).transpose();
        let iat = time(map.remove("iat"))?;
        let nbf = time(map.remove("nbf"))?;
        let jti = map.remove("jti").map(string).transpose()?;
        let iss = map.remove("iss").map(string).transpose()?;
        let aud = map.remove("aud").map(serde_json::from_value).transpose().map_err(|_| WrongType)?;
        let email = map.remove("email").filter(|v| !v.is_null()).map(string).transpose()?;
        let pick = |paths: &[String]| paths.iter().find_map(|p| lookup(&map, p)).map(words).unwrap_or_default();
        let roles = pick(&paths.roles);
        let scopes = pick(&paths.scopes);
        Ok(Self { sub, exp, iat, nbf, jti, iss, aud, email, roles, scopes, other: map })
    }

    /// Whether the token carries `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// Whether the token carries `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    /// A claim that has no field, by name or dotted path (`realm_access.roles`),
    /// as the token carried it.
    ///
    /// ```
    /// use tower_gateway_auth::Claims;
    ///
    /// let mut claims = Claims::new("42", 4_102_444_800);
    /// claims.insert("realm_access", serde_json::json!({ "roles": ["admin"] }));
    /// assert_eq!(claims.get("realm_access.roles"), Some(&serde_json::json!(["admin"])));
    /// assert_eq!(claims.value::<Vec<String>>("realm_access.roles"), Some(vec!["admin".to_owned()]));
    /// assert_eq!(claims.get("sub"), None, "registered claims are fields");
    /// ```
    pub fn get(&self, path: &str) -> Option<&Value> {
        lookup(&self.other, path)
    }

    /// A claim that has no field, read as `T`; `None` when absent or of another type.
    pub fn value<T: serde::de::DeserializeOwned>(&self, path: &str) -> Option<T> {
        T::deserialize(self.get(path)?).ok()
    }

    /// Every claim that has no field.
    pub fn other(&self) -> &Map<String, Value> {
        &self.other
    }

    /// Sets a claim that has no field (for tokens made in tests, or by an issuer).
    /// The registered names are fields: setting one here does nothing.
    pub fn insert(&mut self, name: impl Into<String>, value: Value) {
        let name = name.into();
        if !REGISTERED.contains(&name.as_str()) {
            self.other.insert(name, value);
        }
    }

    /// What the claims cost to hold, roughly, in bytes.
    pub(crate) fn weight(&self) -> usize {
        let strings = [Some(&self.sub), self.email.as_ref(), self.jti.as_ref(), self.iss.as_ref()];
        strings.into_iter().flatten().map(String::len).sum::<usize>()
            + self.roles.iter().chain(&self.scopes).map(String::len).sum::<usize>()
            + self.other.iter().map(|(k, v)| k.len() + v.to_string().len()).sum::<usize>()
    }
}

impl Serialize for Claims {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("sub", &self.sub)?;
        map.serialize_entry("exp", &self.exp)?;
        let optional = [("iat", self.iat), ("nbf", self.nbf)];
        for (name, value) in optional {
            if let Some(value) = value {
                map.serialize_entry(name, &value)?;
            }
        }
        for (name, value) in [("jti", &self.jti), ("iss", &self.iss), ("email", &self.email)] {
            if let Some(value) = value {
                map.serialize_entry(name, value)?;
            }
        }
        if let Some(aud) = &self.aud {
            map.serialize_entry("aud", aud)?;
        }
        // Roles set on the field go out as `roles`, unless a claim of that name is set.
        if !self.roles.is_empty() && !self.other.contains_key("roles") {
            map.serialize_entry("roles", &self.roles)?;
        }
        for (name, value) in &self.other {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Claims {
    /// The claims of a JSON payload, roles from `roles` and scopes from `scope` or `scp`.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = Map::deserialize(deserializer)?;
        Self::from_map(map, &ClaimPaths::default())
            .map_err(|WrongType| serde::de::Error::custom("a registered claim has the wrong type"))
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
        let mut claims = Claims::new("42", 1);
        claims.iss = Some("user-service".into());
        let mut req = http::Request::builder().header("x-user-id", "7").body(()).unwrap();
        assert_eq!(ClaimKey::subject().extract(&req), None, "a client-sent identity header is no key");
        req.extensions_mut().insert(Authenticated(Arc::new(claims)));
        assert_eq!(ClaimKey::subject().extract(&req).as_deref(), Some("42"));
        assert_eq!(ClaimKey::new(Claim::Issuer).extract(&req).as_deref(), Some("user-service"));
        assert_eq!(ClaimKey::new(Claim::Email).extract(&req), None);
    }
}
