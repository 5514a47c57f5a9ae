//! JWT authentication as a [tower](https://docs.rs/tower) layer, with revocation kept in Redis or in memory.
//!
//! [`JwtAuthLayer`] protects any inner `Service<http::Request<B>>`: a request
//! reaches it only with an `Authorization: Bearer <JWT>` that
//!
//! 1. **validates locally** — stricter than `jsonwebtoken`'s defaults: the
//!    algorithm is pinned to each [`Key`] (HS256 with a shared secret, or RS/PS/ES/EdDSA
//!    with a public key so the gateway never holds a signing key); `exp` and `sub`
//!    required; `nbf` and `iat` checked; a leeway of at most a few seconds; `iss`
//!    and `aud` when configured; a maximum lifetime; a `crit` header, duplicate
//!    claims, `alg: none` and empty signatures refused; `kid` used only to look a
//!    key up exactly; `jku`, `x5u` and `jwk` never fetched; the header capped at
//!    8 KiB; the `Bearer` scheme case-insensitive;
//! 2. **is not revoked** in the [`TokenStore`]: neither the token (by `jti`) nor
//!    all tokens of its subject issued before some time. The store also records
//!    valid tokens with a TTL equal to their remaining lifetime (the seed's
//!    Redis cache), so a revocation before expiry is one store write
//!    ([`Authenticator::revoke_token`], [`Authenticator::revoke_subject`]).
//!
//! **The store stays off the hot path.** Once a token is found active it is
//! trusted from an in-process cache for at most the cache bound (default 1 s) —
//! never past its own expiry. The bound is kept by the entry's lifetime alone:
//! after it the store is asked again, so a revocation written by another process
//! (another gateway replica, the user service's logout) is seen within the bound,
//! with no pub/sub connection whose loss could silently stretch it. A revocation
//! made through the same [`Authenticator`] takes effect at once.
//!
//! **Failures.** A missing, malformed, invalid, expired or revoked token is
//! answered `401` with `WWW-Authenticate: Bearer error="invalid_token"` (plain
//! `Bearer` when no token was sent, as RFC 6750 §3.1 asks) and a JSON body
//! `{"error":{"code","message"}}`; the inner service is never called. If the store
//! cannot answer, the layer fails closed: `503` with `Retry-After`, within the
//! store's time bounds (200 ms for a Redis connection, 200 ms for an answer).
//! Fail-open is an explicit opt-in ([`AuthenticatorBuilder::fail_open`]). Routes
//! without the layer are unaffected. The [`Rejection`] is in the response's
//! extensions, for metrics.
//!
//! **Identity.** On success the claims are in the request's extensions as
//! [`Authenticated`], and `sub` and `email` go to the inner service as
//! `x-user-id` and `x-user-email` (configurable). Client-sent copies of those
//! headers are always removed first, and so are their names in `Connection`, so
//! that no later hop can be told to drop them.
//!
//! # Features
//!
//! - `aws-lc-rs` (default): tokens are signed and verified with aws-lc-rs.
//! - `rust-crypto`: with RustCrypto's pure-Rust crates instead
//!   (`default-features = false, features = ["rust-crypto"]`).
//!
//! With both on (another crate in the graph may enable `jsonwebtoken`'s other
//! backend), aws-lc-rs is used and nothing panics: see [`install_default_crypto`].
//!
//! # With axum
//!
//! ```
//! use axum::{Extension, Router, routing::get};
//! use tower_gateway_auth::{Authenticated, Authenticator, JwtAuthLayer, Key};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let key = Key::hs256(b"a shared secret of at least 32 bytes!")?;
//! let auth = Authenticator::builder(key).issuer("user-service").build()?;
//!
//! let app: Router = Router::new()
//!     .route("/orders", get(|Extension(who): Extension<Authenticated>| async move {
//!         format!("the orders of user {}", who.sub)
//!     }))
//!     .route_layer(JwtAuthLayer::new(auth.clone()))
//!     // Not behind the layer: never needs a token, never waits for the store.
//!     .route("/healthz", get(|| async { "ok" }));
//! # let _ = app;
//! # Ok(())
//! # }
//! ```
//!
//! # With a plain hyper service, tokens revoked in Redis
//!
//! ```no_run
//! use std::convert::Infallible;
//! use std::sync::Arc;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use bytes::Bytes;
//! use hyper::body::Incoming;
//! use hyper_util::rt::TokioIo;
//! use hyper_util::service::TowerToHyperService;
//! use tower::ServiceBuilder;
//! use tower_gateway_auth::{Algorithm, Authenticated, Authenticator, JwtAuthLayer, Key, RedisStore};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let store = Arc::new(RedisStore::new("redis://127.0.0.1:6379")?);
//! let public_key = std::fs::read("jwt-public.pem")?;
//! let key = Key::public_pem(Algorithm::RS256, &public_key)?;
//! let auth = Authenticator::builder(key).store(store).build()?;
//!
//! let svc = ServiceBuilder::new().layer(JwtAuthLayer::new(auth)).service_fn(|req: Request<Incoming>| async move {
//!     let who = req.extensions().get::<Authenticated>().expect("set by the layer");
//!     Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!("hello {}", who.sub)))))
//! });
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! loop {
//!     let (stream, _) = listener.accept().await?;
//!     let svc = TowerToHyperService::new(svc.clone());
//!     tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc));
//! }
//! # }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

mod authenticator;
mod cache;
mod claims;
mod crypto;
mod error;
mod issuer;
pub mod jwks;
mod key;
pub mod keys;
mod layer;
pub mod store;
mod verify;

pub use self::authenticator::{Authenticator, AuthenticatorBuilder, MAX_AUTHORIZATION_LEN, MAX_LEEWAY};
pub use self::claims::{Audience, Authenticated, Claim, ClaimKey, Claims};
pub use self::crypto::install_default_crypto;
pub use self::error::{ConfigError, Rejection, StoreError, StoreErrorKind};
pub use self::issuer::{Issuer, KeySource};
pub use self::jwks::{FetchOutcome, KeySourceStats, RemoteKeys, RemoteKeysBuilder};
pub use self::keys::{KeyConfig, KeyConfigError, TokenIssuer, read_secret_file};
pub use self::layer::{JwtAuth, JwtAuthLayer};

pub mod future {
    //! The future of [`JwtAuth`](crate::JwtAuth).
    pub use crate::layer::ResponseFuture;
}
pub use self::key::Key;
pub use self::store::{MemoryStore, RedisStore, TokenStore};
pub use jsonwebtoken::Algorithm;

/// The README's code, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
