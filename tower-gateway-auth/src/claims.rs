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
    /// Whether the token carries `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// The verified identity of a request, in its extensions once
/// [`JwtAuth`](crate::JwtAuth) let it through. Cheap to clone.
///
/// With axum: `Extension(who): Extension<Authenticated>`, then `who.sub`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated(pub(crate) Arc<Claims>);

impl Authenticated {
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
