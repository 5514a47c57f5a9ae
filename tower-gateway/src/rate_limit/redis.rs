//! Limits shared through Redis: one Lua script per decision, on Redis's clock.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::redis_connection::{RedisConfig, RedisConfigError, RedisConnection};

use super::gcra::{Decision, Quota};
use super::{BoxFuture, Store, StoreError};

/// The decision, atomically, where the state lives. The time is Redis's own
/// (`TIME`), so the gateways' clocks do not matter; the key expires when its TAT
/// passes, which is when it would mean nothing anyway. Plain `EVALSHA`: no module,
/// so any Redis 5 or later will do, managed ones included.
const DECIDE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - tonumber(ARGV[2])
if now < allow_at then
  return {0, tat - now, allow_at - now}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
return {1, new_tat - now, 0}
";

/// Limits kept in Redis, shared by every process that uses the same limit names.
///
/// Each key is `<prefix><limit>:<key>` (prefix default `tower-gateway:rl:`), holding
/// the key's TAT in microseconds and expiring with it. One multiplexed
/// connection, re-made in the background when it breaks. Pair it with
/// [`LimiterBuilder::store`](super::LimiterBuilder::store).
///
/// ```no_run
/// use std::sync::Arc;
/// use axum::{Router, routing::post};
/// use tower::ServiceBuilder;
/// use tower_gateway::ClientAddrLayer;
/// use tower_gateway::rate_limit::key::{ClientIp, JsonField};
/// use tower_gateway::rate_limit::{Limiter, OnStoreError, Quota, RateLimitLayer, ReadJsonLayer, RedisStore};
///
/// # async fn login() -> &'static str { "welcome" }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let redis = Arc::new(RedisStore::new("redis://127.0.0.1:6379")?);
/// let per_address = Limiter::builder("login-ip", Quota::per_minute(30).burst(10))
///     .store(redis.clone()) // one quota across every replica
///     .build()?; // fails open to its mirrored state by default
/// let per_account = Limiter::builder("login-account", Quota::per_minute(10).burst(5))
///     .store(redis)
///     .on_store_error(OnStoreError::FailClosed) // 503 while Redis is away
///     .build()?;
/// let app: Router = Router::new().route("/login", post(login)).layer(
///     ServiceBuilder::new()
///         .layer(ClientAddrLayer::new().trust(["10.0.0.0/8"])?) // your load balancer
///         .layer(RateLimitLayer::new(per_address, ClientIp::new()))
///         .layer(ReadJsonLayer::new(["email"]))
///         .layer(RateLimitLayer::new(per_account, JsonField::new("email"))),
/// );
/// # let _ = app;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    conn: RedisConnection,
    script: Arc<redis::Script>,
    prefix: Arc<str>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore").field("prefix", &self.prefix).field("conn", &self.conn).finish_non_exhaustive()
    }
}

/// Builds a [`RedisStore`].
#[derive(Debug, Clone)]
#[must_use]
pub struct RedisStoreBuilder {
    config: Result<RedisConfig, RedisConfigError>,
    prefix: String,
}

impl RedisStoreBuilder {
    /// The prefix of every key (default `tower-gateway:rl:`).
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long to wait for a connection (default 200 ms).
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.config = self.config.map(|c| c.connect_timeout(timeout));
        self
    }

    /// How long to wait for an answer (default 200 ms).
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.config = self.config.map(|c| c.response_timeout(timeout));
        self
    }

    /// The store. It connects when first used, so this succeeds while Redis is
    /// down and fails only on a bad URL. Call it inside a Tokio runtime.
    pub fn build(self) -> Result<RedisStore, StoreError> {
        let conn = self.config.and_then(|config| config.connect()).map_err(StoreError::new)?;
        Ok(RedisStore::with_connection(conn).key_prefix(self.prefix))
    }
}

impl RedisStore {
    /// A builder for a store at `url`: any URL [`RedisConfig::from_url`]
    /// reads (`redis://127.0.0.1:6379/0`, `redis+sentinel://…`, `redis+cluster://…`).
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder { config: RedisConfig::from_url(&url.into()), prefix: "tower-gateway:rl:".into() }
    }

    /// A store at `url` with the default settings.
    pub fn new(url: impl Into<String>) -> Result<Self, StoreError> {
        Self::builder(url).build()
    }

    /// A store on `conn`, which the process's other Redis users may share.
    /// Each decision touches one key, so it lands in one Cluster slot.
    pub fn with_connection(conn: RedisConnection) -> Self {
        RedisStore { conn, script: Arc::new(redis::Script::new(DECIDE)), prefix: "tower-gateway:rl:".into() }
    }

    /// The prefix of every key (default `tower-gateway:rl:`).
    #[must_use]
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into().into();
        self
    }
}

impl Store for RedisStore {
    fn decide<'a>(&'a self, key: &'a str, quota: &'a Quota) -> BoxFuture<'a, Result<Decision, StoreError>> {
        Box::pin(async move {
            let mut full = String::with_capacity(self.prefix.len() + key.len());
            full.push_str(&self.prefix);
            full.push_str(key);
            let mut invocation = self.script.prepare_invoke();
            invocation.key(full).arg(quota.interval_us()).arg(quota.capacity_us());
            let mut conn = self.conn.clone();
            let (allowed, reset_after, retry_after): (i64, i64, i64) =
                invocation.invoke_async(&mut conn).await.map_err(StoreError::new)?;
            let us = |n: i64| u64::try_from(n).unwrap_or(0);
            Ok(quota.decision(allowed == 1, us(reset_after), us(retry_after)))
        })
    }
}
