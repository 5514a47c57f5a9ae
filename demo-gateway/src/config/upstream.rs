//! An upstream's configuration: its endpoints, timeouts, ejection and retries.

use serde::{Deserialize, Serialize};

/// A set of endpoints that routes forward to, with its balancing and retries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// Static endpoints, `http://host:port`.
    pub endpoints: Vec<String>,
    /// Or a DNS name with a port (`tasks.product-service:3001`), re-resolved to all
    /// its addresses every `dns_refresh_ms`.
    pub dns: Option<String>,
    /// How often `dns` is resolved again.
    pub dns_refresh_ms: u64,
    /// How long one attempt waits for an upstream's response head (then `504`,
    /// counted against the endpoint, and retried if the request is idempotent).
    pub timeout_ms: u64,
    /// How long to wait for a connection to an upstream.
    pub connect_timeout_ms: u64,
    /// For `https://` endpoints: the CA certificates (PEM) to trust instead of
    /// the Mozilla roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<std::path::PathBuf>,
    /// For `https://` endpoints: a client certificate chain (PEM) to present
    /// (mTLS), with `client_key_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert_file: Option<std::path::PathBuf>,
    /// The private key (PEM) of `client_cert_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key_file: Option<std::path::PathBuf>,
    /// Speak HTTP/2 to the endpoints: prior knowledge (h2c) to `http://`, ALPN
    /// `h2` to `https://`. Needed for gRPC; no WebSocket route may use it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub http2: bool,
    /// Consecutive refused connections before an endpoint is skipped.
    pub eject_after: u32,
    /// Consecutive timeouts, resets or 502/503/504 before an endpoint is skipped.
    pub eject_after_gateway_failures: u32,
    /// The most of the endpoints, in percent, those failures may skip at once.
    pub max_ejected_percent: u8,
    /// How long a refusing endpoint is skipped.
    pub cool_down_ms: u64,
    /// Retries.
    pub retry: RetryConfig,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            endpoints: Vec::new(),
            dns: None,
            dns_refresh_ms: 5_000,
            timeout_ms: 5_000,
            connect_timeout_ms: 1_000,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            http2: false,
            eject_after: 1,
            eject_after_gateway_failures: 5,
            max_ejected_percent: 50,
            cool_down_ms: 10_000,
            retry: RetryConfig::default(),
        }
    }
}

/// Retry settings of an upstream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts in all, the first included (the seed's 3).
    pub attempts: u32,
    /// The first backoff; it doubles each time.
    pub backoff_ms: u64,
    /// The longest backoff.
    pub max_backoff_ms: u64,
    /// Random extra, as a fraction of the backoff.
    pub jitter: f64,
    /// Request bodies up to this size are buffered so they can be replayed.
    pub max_replay_body_bytes: usize,
    /// The upstream honours `Idempotency-Key`, so a request carrying one may be
    /// retried whatever its method (checkout's does; default no).
    pub idempotency_key: bool,
    /// gRPC calls retried on these statuses (`"unavailable"`, …), when their
    /// method is in `grpc_methods`; no other gRPC call is retried but for a
    /// connection never made.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub grpc_statuses: Vec<GrpcStatus>,
    /// The gRPC methods (`/package.Service/Method`, unary ones only) that may be
    /// retried: their request is read whole before it is sent.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub grpc_methods: Vec<String>,
}

/// A gRPC status a call may be retried on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum GrpcStatus {
    Cancelled,
    Unknown,
    DeadlineExceeded,
    ResourceExhausted,
    Aborted,
    Internal,
    Unavailable,
}

impl GrpcStatus {
    /// Its code on the wire.
    pub fn code(self) -> u16 {
        match self {
            Self::Cancelled => 1,
            Self::Unknown => 2,
            Self::DeadlineExceeded => 4,
            Self::ResourceExhausted => 8,
            Self::Aborted => 10,
            Self::Internal => 13,
            Self::Unavailable => 14,
        }
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            attempts: 3,
            backoff_ms: 100,
            max_backoff_ms: 2_000,
            jitter: 0.5,
            max_replay_body_bytes: 64 * 1024,
            idempotency_key: false,
            grpc_statuses: Vec::new(),
            grpc_methods: Vec::new(),
        }
    }
}
