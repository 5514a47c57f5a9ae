//! A route's configuration, its access policy and the limits it names.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::traffic::{
    BackendRefConfig, HeaderMatchConfig, HeaderModifierConfig, MirrorConfig, QueryMatchConfig, RedirectConfig,
    SessionPersistenceConfig, TimeoutsConfig, UrlRewriteConfig,
};

/// One rate limit: `rate` requests `per` second, minute or hour for each key,
/// at most `burst` at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// Requests per period.
    pub rate: u32,
    /// `"second"`, `"minute"` or `"hour"`.
    pub per: Per,
    /// The most at once (default: `rate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// What requests are counted by: `"client_ip"`, `"subject"` (the token's
    /// `sub`), `"claim:email"`, `"header:<name>"`, `"json:<field>"` (a field of a
    /// JSON body), `"global"` (the whole limit one bucket), or a list of these
    /// for their combination.
    pub key: LimitKey,
    /// `"redis"` (the default when `redis_url` is set: one quota across every
    /// gateway replica) or `"memory"` (this process).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<LimitStore>,
    /// When Redis fails: `"open"` (decide locally from what Redis last said; the
    /// default) or `"closed"` (`503`).
    #[serde(default, skip_serializing_if = "StoreFailure::is_open")]
    pub on_store_error: StoreFailure,
}

/// The period of a limit's rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Per {
    /// `"second"`.
    Second,
    /// `"minute"`.
    Minute,
    /// `"hour"`.
    Hour,
}

impl Per {
    /// The period.
    pub fn duration(self) -> Duration {
        Duration::from_secs(match self {
            Self::Second => 1,
            Self::Minute => 60,
            Self::Hour => 3600,
        })
    }
}

impl std::fmt::Display for Per {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Second => "second",
            Self::Minute => "minute",
            Self::Hour => "hour",
        })
    }
}

/// Where a limit's counts live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitStore {
    /// In Redis (`redis_url`): one quota across every gateway replica.
    Redis,
    /// In this process.
    Memory,
}

/// What a limit does while its store fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreFailure {
    /// Decide in this process from what the store last said.
    #[default]
    Open,
    /// Answer `503`.
    Closed,
}

impl StoreFailure {
    fn is_open(&self) -> bool {
        *self == Self::Open
    }
}

/// A method a route can name: the methods the gateway forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
#[allow(missing_docs)]
pub enum RouteMethod {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Patch,
    Options,
}

impl RouteMethod {
    /// As `http` names it.
    pub fn as_http(self) -> http::Method {
        match self {
            Self::Get => http::Method::GET,
            Self::Head => http::Method::HEAD,
            Self::Post => http::Method::POST,
            Self::Put => http::Method::PUT,
            Self::Delete => http::Method::DELETE,
            Self::Patch => http::Method::PATCH,
            Self::Options => http::Method::OPTIONS,
        }
    }
}

/// The key of a limit: one part or several.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LimitKey {
    /// One part, e.g. `"client_ip"`.
    One(String),
    /// Several, counted together, e.g. `["client_ip", "json:email"]`.
    Many(Vec<String>),
}

impl LimitKey {
    /// The parts.
    pub fn parts(&self) -> &[String] {
        match self {
            Self::One(part) => std::slice::from_ref(part),
            Self::Many(parts) => parts,
        }
    }
}

/// Who may use a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Anyone: `access = "public"`.
    Public,
    /// Any valid token: `access = "token"`.
    Token,
    /// A valid token with one of these roles: `access = { roles = ["admin"] }`.
    Roles(Vec<String>),
    /// A valid token with every one of these scopes: `access = { scopes = ["orders:write"] }`.
    Scopes(Vec<String>),
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Public => f.write_str("public"),
            Self::Token => f.write_str("token"),
            Self::Roles(roles) => write!(f, "role {}", roles.join(" or ")),
            Self::Scopes(scopes) => write!(f, "scope {}", scopes.join(" and ")),
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum AccessRepr {
    Named(String),
    Roles { roles: Vec<String> },
    Scopes { scopes: Vec<String> },
}

impl Serialize for Access {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Public => AccessRepr::Named("public".into()),
            Self::Token => AccessRepr::Named("token".into()),
            Self::Roles(roles) => AccessRepr::Roles { roles: roles.clone() },
            Self::Scopes(scopes) => AccessRepr::Scopes { scopes: scopes.clone() },
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Access {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let wrong =
            || serde::de::Error::custom(r#"access is "public", "token", { roles = ["..."] } or { scopes = ["..."] }"#);
        match AccessRepr::deserialize(d).map_err(|_| wrong())? {
            AccessRepr::Named(name) if name == "public" => Ok(Self::Public),
            AccessRepr::Named(name) if name == "token" => Ok(Self::Token),
            AccessRepr::Named(_) => Err(wrong()),
            AccessRepr::Roles { roles } => Ok(Self::Roles(roles)),
            AccessRepr::Scopes { scopes } => Ok(Self::Scopes(scopes)),
        }
    }
}

/// One route: what it matches, who may use it, where it goes.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteConfig {
    /// A name for logs and metrics (default: the path or prefix and the methods).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Matches this path and everything under it, on segment boundaries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Or matches this path alone (a trailing `/` allowed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The hosts matched (`"api.example.com"`, or `"*.example.com"` for any
    /// host under it); any host when empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    /// Headers the request must carry, all of them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatchConfig>,
    /// Query parameters the request must carry, all of them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<QueryMatchConfig>,
    /// The methods matched (`"GET"`, `"HEAD"`, `"POST"`, `"PUT"`, `"DELETE"`,
    /// `"PATCH"`, `"OPTIONS"`); any method when empty. `GET` brings `HEAD`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<RouteMethod>,
    /// What is stripped before forwarding (default: the prefix or path itself;
    /// `"/"` strips nothing, as gRPC routes want).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strip_prefix: Option<String>,
    /// Or the path the upstream is asked for, made from the request's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url_rewrite: Option<UrlRewriteConfig>,
    /// The upstream's name, in `[upstreams]`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub upstream: String,
    /// Or several upstreams sharing the route's requests by weight.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub backend_refs: Vec<BackendRefConfig>,
    /// With `backend_refs`: what keeps a client on one side.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_persistence: Option<SessionPersistenceConfig>,
    /// Or a redirect, forwarding nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_redirect: Option<RedirectConfig>,
    /// Headers changed on the way to the upstream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_header_modifier: Option<HeaderModifierConfig>,
    /// Headers changed on the way back to the client.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_header_modifier: Option<HeaderModifierConfig>,
    /// The route's own timeouts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<TimeoutsConfig>,
    /// A share of requests copied to another upstream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_mirror: Option<MirrorConfig>,
    /// Who may use the route. Required: nothing is open by omission.
    pub access: Option<Access>,
    /// The names of the limits (in `[limits]`) requests count against, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<String>,
    /// Whether a `GET` asking to `Upgrade: websocket` becomes a WebSocket to the
    /// upstream, once the route's access policy and limits have passed it
    /// (default `false`: the upgrade headers are dropped and it is a plain `GET`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub websocket: bool,
}
