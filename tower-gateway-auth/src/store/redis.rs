use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bb8::{ManageConnection, Pool};
use bb8_redis::RedisConnectionManager;
use bb8_redis::redis::aio::MultiplexedConnection;
use bb8_redis::redis::{self, RedisError};

use super::{BoxFuture, TokenRecord, TokenState, TokenStore};
use crate::error::{StoreError, StoreErrorKind};

/// Token state in Redis, through a bb8 pool: shared by every gateway replica and
/// by the services that revoke tokens.
///
/// Keys (under a prefix, default `tower-gateway:`), each with a TTL so that
/// nothing outlives the tokens it speaks of:
///
/// | key | value | TTL |
/// |---|---|---|
/// | `valid:<id>` | `1` — the seed's cache of valid tokens | the token's remaining lifetime |
/// | `revoked:<id>` | `1` | the token's remaining lifetime |
/// | `revoked-before:<subject>` | Unix time `T`: tokens issued before `T` are revoked | until the last such token has expired |
///
/// A check is one round trip (a Lua script: revoked? else record as valid); a
/// revocation is one atomic write.
///
/// Failures are bounded in time: getting a connection gives up after the
/// connection timeout (default 200 ms, not bb8's 30 s) and a command after the
/// command timeout (default 250 ms). A connection whose command failed or timed
/// out is dropped from the pool rather than handed out again, so the store
/// recovers by itself once Redis is back.
#[derive(Clone)]
pub struct RedisStore {
    pool: Pool<Manager>,
    check_script: Arc<redis::Script>,
    revoke_subject_script: Arc<redis::Script>,
    prefix: String,
    command_timeout: Duration,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("pool", &self.pool.state())
            .finish_non_exhaustive()
    }
}

/// Builds a [`RedisStore`].
#[derive(Debug, Clone)]
pub struct RedisStoreBuilder {
    url: String,
    prefix: String,
    max_connections: u32,
    connection_timeout: Duration,
    command_timeout: Duration,
}

impl RedisStoreBuilder {
    /// The prefix of every key (default `tower-gateway:`).
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The most connections in the pool (default 8; each is multiplexed).
    pub fn max_connections(mut self, max: u32) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// How long to wait for a connection from the pool (default 200 ms).
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.connection_timeout = timeout;
        self
    }

    /// How long to wait for an answer to a command (default 250 ms).
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// The store. Connections are made when first needed, so this succeeds while
    /// Redis is down (requests then fail closed) and fails only on a bad URL.
    pub fn build(self) -> Result<RedisStore, StoreError> {
        let manager = RedisConnectionManager::new(self.url.as_str())
            .map_err(|err| StoreError::with_kind(StoreErrorKind::Config, err))?;
        let pool = Pool::builder()
            .max_size(self.max_connections)
            .connection_timeout(self.connection_timeout)
            .retry_connection(false)
            .build_unchecked(Manager(manager));
        Ok(RedisStore {
            pool,
            check_script: Arc::new(redis::Script::new(CHECK_SCRIPT)),
            revoke_subject_script: Arc::new(redis::Script::new(REVOKE_SUBJECT_SCRIPT)),
            prefix: self.prefix,
            command_timeout: self.command_timeout,
        })
    }
}

/// bb8-redis's manager never reports a connection as broken, so a pool would keep
/// handing out connections to a Redis that went away. This one marks a
/// connection broken while a command is in flight and clears the mark only when
/// the command answered.
struct Manager(RedisConnectionManager);

struct Conn {
    inner: MultiplexedConnection,
    broken: bool,
}

impl ManageConnection for Manager {
    type Connection = Conn;
    type Error = RedisError;

    async fn connect(&self) -> Result<Conn, RedisError> {
        Ok(Conn { inner: self.0.connect().await?, broken: false })
    }

    async fn is_valid(&self, conn: &mut Conn) -> Result<(), RedisError> {
        self.0.is_valid(&mut conn.inner).await
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        conn.broken
    }
}

impl RedisStore {
    /// A builder for a store at `url` (e.g. `redis://127.0.0.1:6379/0`).
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder {
            url: url.into(),
            prefix: "tower-gateway:".into(),
            max_connections: 8,
            connection_timeout: Duration::from_millis(200),
            command_timeout: Duration::from_millis(250),
        }
    }

    /// A store at `url` with the default settings.
    pub fn new(url: impl Into<String>) -> Result<Self, StoreError> {
        Self::builder(url).build()
    }

    fn key(&self, kind: &str, id: &str) -> String {
        let mut key = String::with_capacity(self.prefix.len() + kind.len() + id.len());
        key.push_str(&self.prefix);
        key.push_str(kind);
        key.push_str(id);
        key
    }

    /// Runs `op` on a pooled connection, within the time bounds.
    async fn run<T: redis::FromRedisValue>(&self, op: Op<'_>) -> Result<T, StoreError> {
        let mut conn = self.pool.get().await.map_err(|err| match err {
            bb8::RunError::TimedOut => StoreError::timeout(),
            bb8::RunError::User(err) => StoreError::new(err),
        })?;
        conn.broken = true;
        let answer = tokio::time::timeout(self.command_timeout, async {
            match op {
                Op::Pipe(pipe) => pipe.query_async::<T>(&mut conn.inner).await,
                Op::Script(invocation) => invocation.invoke_async::<T>(&mut conn.inner).await,
            }
        })
        .await;
        match answer {
            Ok(Ok(value)) => {
                conn.broken = false;
                Ok(value)
            }
            Ok(Err(err)) => {
                // An error Redis itself answered leaves the connection usable.
                conn.broken = err.is_io_error() || err.is_connection_dropped() || err.is_unrecoverable_error();
                Err(StoreError::new(err))
            }
            Err(_) => Err(StoreError::timeout()),
        }
    }
}

/// What [`RedisStore::run`] sends.
enum Op<'a> {
    Pipe(&'a redis::Pipeline),
    Script(&'a redis::ScriptInvocation<'a>),
}

/// The check in one round trip: revoked by id, or by subject (`iat` at or before
/// the cut-off, or unknown: ARGV[2] = -1); otherwise recorded as valid.
const CHECK_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 1 end
local before = redis.call('GET', KEYS[2])
if before and (tonumber(ARGV[2]) < 0 or tonumber(ARGV[2]) <= tonumber(before)) then return 1 end
redis.call('SET', KEYS[3], '1', 'NX', 'EX', ARGV[1])
return 0
";

/// A subject revocation keeps the later cut-off and the longer life of the two,
/// as MemoryStore does: an older revocation arriving late never shortens one.
/// KEYS[1] `revoked-before:<subject>`; ARGV: the cut-off, the TTL in seconds.
const REVOKE_SUBJECT_SCRIPT: &str = "
local before = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local current = tonumber(redis.call('GET', KEYS[1]))
if current and current > before then before = current end
local left = redis.call('TTL', KEYS[1])
if left > ttl then ttl = left end
redis.call('SET', KEYS[1], before, 'EX', ttl)
return 0
";

impl TokenStore for RedisStore {
    fn check<'a>(&'a self, token: TokenRecord<'a>) -> BoxFuture<'a, Result<TokenState, StoreError>> {
        Box::pin(async move {
            let mut invocation = self.check_script.prepare_invoke();
            invocation
                .key(self.key("revoked:", token.id))
                .key(self.key("revoked-before:", token.subject))
                .key(self.key("valid:", token.id))
                .arg(token.remaining_secs())
                .arg(token.issued_at.map_or(-1, |iat| i64::try_from(iat).unwrap_or(i64::MAX)));
            let revoked: i64 = self.run(Op::Script(&invocation)).await?;
            Ok(if revoked == 1 { TokenState::Revoked } else { TokenState::Active })
        })
    }

    fn revoke<'a>(&'a self, token: TokenRecord<'a>) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut pipe = redis::pipe();
            pipe.atomic()
                .set_ex(self.key("revoked:", token.id), 1, token.remaining_secs())
                .ignore()
                .del(self.key("valid:", token.id))
                .ignore();
            self.run::<()>(Op::Pipe(&pipe)).await
        })
    }

    fn revoke_subject<'a>(
        &'a self,
        subject: &'a str,
        before: u64,
        until: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let ttl = until.saturating_sub(super::unix_now()).max(1);
            let mut invocation = self.revoke_subject_script.prepare_invoke();
            invocation.key(self.key("revoked-before:", subject)).arg(before).arg(ttl);
            self.run::<()>(Op::Script(&invocation)).await
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let mut pipe = redis::pipe();
            pipe.cmd("PING").ignore();
            self.run::<()>(Op::Pipe(&pipe)).await
        })
    }
}
