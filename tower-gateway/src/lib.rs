//! API gateway building blocks as [tower] layers.
//!
//! Each piece works alone, in front of any `Service<http::Request<B>>`, and they
//! compose into a gateway route with one [`ServiceBuilder`](tower::ServiceBuilder):
//!
//! | piece | does |
//! |---|---|
//! | [`StripPrefixLayer`] | strips a base path on a segment boundary, refusing paths that could escape it |
//! | [`RetryLayer`] | retries with exponential backoff, jitter and a budget ([`tower::retry`]) |
//! | [`RoundRobinLayer`] | picks the next endpoint of a shared, replaceable set; ejects refusing endpoints |
//! | [`TimeoutLayer`] | answers `504` when no response head comes in time (per attempt, placed above `Proxy`) |
//! | [`Proxy`] | forwards over a pooled hyper-util client, streaming, with forwarding headers |
//!
//! ```
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//! use tower_gateway::balance::Endpoints;
//! use tower_gateway::{Proxy, RetryLayer, RetryPolicy, RoundRobinLayer, StripPrefixLayer, TimeoutLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let products = Endpoints::new(["http://127.0.0.1:3001", "http://127.0.0.1:3003"]).unwrap();
//! let route = ServiceBuilder::new()
//!     .layer(StripPrefixLayer::new("/api/products"))
//!     .layer(RetryLayer::new(RetryPolicy::new()))
//!     .layer(RoundRobinLayer::new(products))
//!     .layer(TimeoutLayer::new(Duration::from_secs(5))) // each attempt
//!     .service(Proxy::new());
//!
//! // `route` is a `Service<http::Request<B>>` for any body `B` with `Bytes` chunks,
//! // infallible, so it mounts straight into axum. The layer strips the prefix;
//! // with this crate's `axum` feature it also sees what `nest_service` took off.
//! let app: axum::Router = axum::Router::new()
//!     .route_service("/api/products", route.clone())
//!     .route_service("/api/products/{*rest}", route);
//! # let _ = app;
//! # }
//! ```
//!
//! Serve it with `app.into_make_service_with_connect_info::<SocketAddr>()` and
//! turn on this crate's `axum` feature: [`Proxy`] then sends the client's address
//! as `X-Forwarded-For` (see [`PeerAddr`]; without a peer address it sends none,
//! and never passes a client's own).
//!
//! # Features
//!
//! - `axum`: the peer address from axum's `ConnectInfo<SocketAddr>`, and
//!   [`StripPrefix`] under `nest_service` (it reads the path the client sent).
//! - `redis`: `rate_limit::RedisStore`, limits shared by every replica; `redis_connection`, one
//!   Redis connection (a server, Sentinels or a Cluster) for every store.
//! - `opentelemetry`: `telemetry::TraceContextLayer`, and [`Proxy`] sending
//!   each attempt's trace context upstream.
//!
//! Failures reach the client as JSON (`{"error":{"code","message"}}`) with the
//! right status — see [`error`].
#![cfg_attr(docsrs, feature(doc_cfg))]

/// `get_ref`, `get_mut` and `into_inner`, in the `impl<S>` block of a middleware
/// whose inner service is its `inner` field. Exported (hidden) for
/// `tower-gateway-auth`'s layer; not part of the API.
#[doc(hidden)]
#[macro_export]
macro_rules! __inner_service_accessors {
    () => {
        /// The inner service.
        pub fn get_ref(&self) -> &S {
            &self.inner
        }

        /// The inner service, mutably.
        pub fn get_mut(&mut self) -> &mut S {
            &mut self.inner
        }

        /// Unwraps the inner service.
        pub fn into_inner(self) -> S {
            self.inner
        }
    };
}
pub(crate) use __inner_service_accessors as inner_service_accessors;

pub mod balance;
pub mod body;
pub mod client_addr;
pub mod error;
pub(crate) mod future;
pub mod grpc;
pub mod header;
pub mod mirror;
pub mod modify_headers;
pub mod proxy;
pub mod rate_limit;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis_connection;
pub mod retry;
pub mod split;
pub mod strip_prefix;
pub mod telemetry;
pub mod timeout;
pub mod upgrade;

pub use self::balance::{RoundRobin, RoundRobinLayer};
pub use self::body::{Body, ResponseBody};
pub use self::client_addr::{ClientAddr, ClientAddrLayer};
pub use self::proxy::{ClientScheme, PeerAddr, Proxy};
pub use self::rate_limit::{Limiter, Quota, RateLimit, RateLimitLayer};
pub use self::retry::{Retry, RetryLayer, RetryPolicy};
pub use self::strip_prefix::{StripPrefix, StripPrefixLayer};
pub use self::timeout::{Timeout, TimeoutLayer};

/// The README's code, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
