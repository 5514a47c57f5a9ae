//! A route's matches beyond its path, and its filters: the Kubernetes Gateway
//! API's `HTTPRoute` words (`hostnames`, `headers`, `query_params`,
//! `request_header_modifier`, `url_rewrite`, `request_redirect`, `timeouts`,
//! `backend_refs`, `session_persistence`, `request_mirror`), in TOML's snake case.

use serde::{Deserialize, Serialize};

/// How a header's value is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchType {
    /// The whole value, byte for byte.
    #[default]
    Exact,
    /// A regular expression the whole value must match (at most 256 bytes,
    /// bounded in compiled size).
    RegularExpression,
}

impl MatchType {
    fn is_exact(&self) -> bool {
        *self == Self::Exact
    }
}

/// A header the request must carry: `{ name = "x-canary", value = "always" }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatchConfig {
    /// The header's name (case-insensitive).
    pub name: String,
    /// The value, or the expression.
    pub value: String,
    /// `"exact"` (the default) or `"regular_expression"`.
    #[serde(default, rename = "type", skip_serializing_if = "MatchType::is_exact")]
    pub kind: MatchType,
}

/// A query parameter the request must carry, compared exactly after decoding:
/// `{ name = "debug", value = "1" }`. The first of several of one name counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryMatchConfig {
    /// The parameter's name.
    pub name: String,
    /// Its value.
    pub value: String,
}

/// A header's name and value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderValueConfig {
    /// The name.
    pub name: String,
    /// The value.
    pub value: String,
}

/// Headers removed, set and added, in that order. The gateway's own headers
/// (`X-Forwarded-*`, `Forwarded`, `X-Real-IP`, `X-Request-Id`, the trace
/// context, and the identity headers the token's claims are sent in) cannot be
/// named, nor those that frame the message.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeaderModifierConfig {
    /// Set, replacing any value.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<HeaderValueConfig>,
    /// Added beside the values there.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<HeaderValueConfig>,
    /// Removed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// How a path is changed: `{ replace_prefix_match = "/v2" }` or
/// `{ replace_full_path = "/status" }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum PathModifier {
    /// In place of the route's matched prefix (of a `prefix` route).
    ReplacePrefixMatch(String),
    /// In place of the whole path.
    ReplaceFullPath(String),
}

/// The path the upstream is asked for: `url_rewrite = { path = { replace_prefix_match = "/v2" } }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UrlRewriteConfig {
    /// How the path is changed.
    pub path: PathModifier,
}

/// The scheme of a redirect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedirectScheme {
    /// `http`.
    Http,
    /// `https`.
    Https,
}

/// Answer with a redirect instead of forwarding. Every part is optional and
/// defaults to the request's own.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedirectConfig {
    /// `"http"` or `"https"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheme: Option<RedirectScheme>,
    /// The host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The port (default: the scheme's, when the scheme changes; else the request's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
    /// `301`, `302` (the default), `303`, `307` or `308`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
}

/// A route's own timeouts.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutsConfig {
    /// The whole request, retries included, until the response head (then `504`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_ms: Option<u64>,
    /// Each attempt at the upstream, in place of the upstream's `timeout_ms`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_request_ms: Option<u64>,
}

/// An upstream a route splits its traffic to: `{ name = "products-v2", weight = 10 }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendRefConfig {
    /// The upstream's name, in `[upstreams]`.
    pub name: String,
    /// Its share, against the others' (default 1; 0 sends it nothing).
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// What keeps a client on one side of a split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PersistenceType {
    /// A header, named by `session_name`.
    Header,
    /// A cookie, named by `session_name`.
    Cookie,
    /// The verified token's subject (a route needing a token).
    Subject,
}

/// Sticky backends: `{ type = "cookie", session_name = "canary" }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionPersistenceConfig {
    /// `"header"`, `"cookie"` or `"subject"`.
    #[serde(rename = "type")]
    pub kind: PersistenceType,
    /// The header's or cookie's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_name: Option<String>,
}

/// A share of the route's requests copied to another upstream, its answers
/// discarded: `{ backend_ref = "shadow", percent = 10 }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorConfig {
    /// The upstream copies go to.
    pub backend_ref: String,
    /// The share of requests copied, 0–100 (default 100).
    #[serde(default = "hundred")]
    pub percent: u8,
}

fn hundred() -> u8 {
    100
}
