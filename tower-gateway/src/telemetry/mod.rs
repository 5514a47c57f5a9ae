//! One trace from the client through the gateway to the upstream: W3C Trace
//! Context read from each request, a server span per request, and (in
//! [`Proxy`](crate::Proxy)) a client span per attempt whose context is sent
//! upstream.
//!
//! `TraceContextLayer` (feature `opentelemetry`) reads `traceparent` and
//! `tracestate` ([W3C Trace Context]) from the request and opens the request's
//! server span as their child; everything below runs inside it. Each call into
//! a [`Proxy`](crate::Proxy) is an attempt with a client span of its own, child
//! of the span it was called in: behind a [`RetryLayer`](crate::RetryLayer),
//! a retried request shows each attempt with its endpoint, status and reason
//! (`error.type`). With the feature, the proxy sends the attempt's context
//! upstream as `traceparent` (and `tracestate`), so the upstream's own spans
//! hang beneath the attempt that reached it.
//!
//! The spans are [`tracing`] spans at `DEBUG` level, with fields named by the
//! OpenTelemetry HTTP semantic conventions (`http.request.method`,
//! `http.route`, `http.response.status_code`, `server.address`, `error.type`,
//! …) and `otel.name` / `otel.kind` for [`tracing-opentelemetry`]'s layer, which
//! makes OpenTelemetry spans of them. Span names come from the method and the
//! [`RouteName`] (configuration), never from the request's path, so they stay
//! few. With no OpenTelemetry layer, or one that does not want these spans,
//! they cost a disabled span's check and nothing is sent upstream but what the
//! client sent.
//!
//! A client's context is checked strictly: one `traceparent`, of the exact
//! W3C form (lower-case hex, no all-zero ids, version `ff` refused, at most
//! 256 bytes); anything else starts a new trace, and the malformed header is
//! removed, never forwarded as it came. A `tracestate` that is malformed, over
//! 512 bytes or over 32 members is dropped (the `traceparent` still holds); a
//! `baggage` over 8,192 bytes is dropped.
//!
//! ```
//! # #[cfg(feature = "opentelemetry")] {
//! use tower::ServiceBuilder;
//! use tower_gateway::telemetry::TraceContextLayer;
//! use tower_gateway::{Body, Proxy};
//!
//! let route = ServiceBuilder::new()
//!     .layer(TraceContextLayer::new())
//!     .service(Proxy::<Body>::new());
//! # let _ = route;
//! # }
//! ```
//!
//! and, where the app starts, a subscriber with `tracing-opentelemetry`'s
//! layer over a tracer of `opentelemetry_sdk`, filtered to let the `DEBUG`
//! spans of `tower_gateway` through (e.g. a `Targets` filter on that layer
//! alone, so the log keeps its own level).
//!
//! [W3C Trace Context]: https://www.w3.org/TR/trace-context/
//! [`tracing-opentelemetry`]: https://docs.rs/tracing-opentelemetry

use std::sync::Arc;

use http::HeaderName;

#[cfg(feature = "opentelemetry")]
mod context;
#[cfg(feature = "opentelemetry")]
mod layer;

#[cfg(feature = "opentelemetry")]
pub(crate) use self::context::inject;
#[cfg(feature = "opentelemetry")]
pub use self::context::{extract, span_context};
#[cfg(feature = "opentelemetry")]
pub use self::layer::{ResponseFuture, TraceContext, TraceContextLayer};

/// The name of the route that answered, from configuration: put it in the
/// response's extensions and [`TraceContextLayer`](self) names the request's
/// span and its `http.route` by it (and `demo-gateway` its access log line and
/// metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteName(pub Arc<str>);

/// `traceparent` ([W3C Trace Context](https://www.w3.org/TR/trace-context/)).
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `tracestate`.
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// `baggage` ([W3C Baggage](https://www.w3.org/TR/baggage/)).
pub static BAGGAGE: HeaderName = HeaderName::from_static("baggage");

#[cfg(all(test, feature = "opentelemetry"))]
mod tests;
