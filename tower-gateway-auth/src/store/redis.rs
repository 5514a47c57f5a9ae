use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::RedisError;
use tower_gateway::redis_connection::{RedisConfig, RedisConfigError, RedisConnection};

use super::{BoxFuture, TokenRecord, TokenState, TokenStore};
use crate::error::{StoreError, StoreErrorKind};

/// Token state in Redis: shared by every gateway replica and by the services
/// that revoke tokens. A single server, a Sentinel set or a Cluster (see
/// [`RedisConfig`]), through one multiplexed connection that the gateway's
/// other Redis users (its rate limits) may share.
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
/// On a Cluster each key is tagged with its token's subject (`{s:<subject>}valid:<id>`
/// and so on), so a check — which reads all three — touches one hash slot.
///
/// A check is one round trip (a Lua script: revoked? else record as valid); a
/// revocation is one atomic write. Failures are bounded in time: making the
/// connection gives up after the connection timeout (default 200 ms) and a
/// command after the response timeout (default 200 ms); the connection is made
/// again by itself once Redis is back, or, behind Sentinels, once they name
/// the new master.
#[derive(Clone)]
pub struct RedisStore {
    conn: RedisConnection,
    check_script: Arc<redis::Script>,
    revoke_subject_script: Arc<redis::Script>,
    prefix: String,
    replicas: Option<(u32, Duration)>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore").field("prefix", &self.prefix).field("conn", &self.conn).finish_non_exhaustive()
    }
}

/// Builds a [`RedisStore`].
#[derive(Debug, Clone)]
pub struct RedisStoreBuilder {
    config: Result<RedisConfig, RedisConfigError>,
    prefix: String,
    replicas: (u32, Duration),
}

impl RedisStoreBuilder {
    /// The prefix of every key (default `tower-gateway:`).
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long to wait for a connection to be made (default 200 ms).
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.config = self.config.map(|c| c.connect_timeout(timeout));
        self
    }

    /// How long to wait for an answer to a command (default 200 ms).
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.config = self.config.map(|c| c.response_timeout(timeout));
        self
    }

    /// The store. Connections are made when first needed, so this succeeds while
    /// Redis is down (requests then fail closed) and fails only on a bad URL.
    /// Call it inside a Tokio runtime.
    pub fn build(self) -> Result<RedisStore, StoreError> {
        let conn = self
            .config
            .and_then(|config| config.connect())
            .map_err(|err| StoreError::with_kind(StoreErrorKind::Config, err))?;
        let (replicas, within) = self.replicas;
        Ok(RedisStore::with_connection(conn).key_prefix(self.prefix).revocation_replicas(replicas, within))
    }

    /// See [`RedisStore::revocation_replicas`].
    pub fn revocation_replicas(mut self, replicas: u32, within: Duration) -> Self {
        self.replicas = (replicas, within);
        self
    }
}

impl RedisStore {
    /// A builder for a store at `url`: any URL [`RedisConfig::from_url`] reads
    /// (`redis://127.0.0.1:6379/0`, `redis+sentinel://…`, `redis+cluster://…`).
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder {
            config: RedisConfig::from_url(&url.into()),
            prefix: "tower-gateway:".into(),
            replicas: (0, Duration::ZERO),
        }
    }

    /// A store at `url` with the default settings.
    pub fn new(url: impl Into<String>) -> Result<Self, StoreError> {
        Self::builder(url).build()
    }

    /// A store on `conn`, which the process's other Redis users may share.
    pub fn with_connection(conn: RedisConnection) -> Self {
        RedisStore {
            conn,
            check_script: Arc::new(redis::Script::new(CHECK_SCRIPT)),
            revoke_subject_script: Arc::new(redis::Script::new(REVOKE_SUBJECT_SCRIPT)),
            prefix: "tower-gateway:".into(),
            replicas: None,
        }
    }

    /// A revocation is done only once `replicas` replicas have it (Redis's
    /// `WAIT`, for at most `within`); fewer is an error the revoker sees. So a
    /// failover to a replica — Redis replicates after answering — cannot lose a
    /// revocation that was reported done. Not on a Cluster, whose keyless
    /// `WAIT` no node can answer for a key it does not hold. Default: no wait.
    #[must_use]
    pub fn revocation_replicas(mut self, replicas: u32, within: Duration) -> Self {
        self.replicas = (replicas > 0 && !self.conn.is_cluster()).then_some((replicas, within));
        self
    }

    /// After a revocation's write: waits for the replicas asked for, if any.
    async fn replicated(&self) -> Result<(), StoreError> {
        let Some((wanted, within)) = self.replicas else { return Ok(()) };
        let mut pipe = redis::pipe();
        pipe.cmd("WAIT").arg(wanted).arg(u64::try_from(within.as_millis()).unwrap_or(u64::MAX));
        let (acknowledged,): (u32,) = self.run(Op::Pipe(&pipe)).await?;
        if acknowledged < wanted {
            return Err(StoreError::new(std::io::Error::other(format!(
                "the revocation reached {acknowledged} of {wanted} replicas within {within:?}"
            ))));
        }
        Ok(())
    }

    /// The prefix of every key (default `tower-gateway:`).
    #[must_use]
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// `<prefix><kind><id>`; on a Cluster `<prefix>{s:<subject>}<kind><id>`, so
    /// that every key of one subject is in one slot.
    fn key(&self, subject: &str, kind: &str, id: &str) -> String {
        let mut key = String::with_capacity(self.prefix.len() + subject.len() + kind.len() + id.len() + 4);
        key.push_str(&self.prefix);
        if self.conn.is_cluster() {
            key.push_str("{s:");
            key.push_str(subject);
            key.push('}');
        }
        key.push_str(kind);
        key.push_str(id);
        key
    }

    /// Runs `op` on the connection.
    async fn run<T: redis::FromRedisValue>(&self, op: Op<'_>) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        let answer = match op {
            Op::Pipe(pipe) => pipe.query_async::<T>(&mut conn).await,
            Op::Script(invocation) => invocation.invoke_async::<T>(&mut conn).await,
        };
        answer.map_err(|err: RedisError| if err.is_timeout() { StoreError::timeout() } else { StoreError::new(err) })
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
                .key(self.key(token.subject, "revoked:", token.id))
                .key(self.key(token.subject, "revoked-before:", token.subject))
                .key(self.key(token.subject, "valid:", token.id))
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
                .set_ex(self.key(token.subject, "revoked:", token.id), 1, token.remaining_secs())
                .ignore()
                .del(self.key(token.subject, "valid:", token.id))
                .ignore();
            self.run::<()>(Op::Pipe(&pipe)).await?;
            self.replicated().await
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
            invocation.key(self.key(subject, "revoked-before:", subject)).arg(before).arg(ttl);
            self.run::<()>(Op::Script(&invocation)).await?;
            self.replicated().await
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
