//! One Redis connection for every store: a single server, a Sentinel set that
//! names the master (followed through a failover), or a Cluster.
//!
//! [`RedisConfig`] says where and how (URL, password, timeouts);
//! [`RedisConfig::connect`] makes a [`RedisConnection`]: cheap to clone, one
//! multiplexed connection underneath, made when first used and made again when
//! it breaks. Both [`rate_limit::RedisStore`](crate::rate_limit::RedisStore)
//! and `tower_gateway_auth::RedisStore` take one, so a gateway shares a single
//! connection, and a single configuration, among them.
//!
//! | URL | Redis |
//! |---|---|
//! | `redis://[[USER]:PASSWORD@]HOST[:6379][/DB]` | one server |
//! | `rediss://[[USER]:PASSWORD@]HOST[:6379][/DB]` | one server over TLS: the system's roots, or [`RedisConfig::ca_file`] |
//! | `redis+sentinel://[[USER]:PASSWORD@]HOST[:26379][,HOST[:PORT]…]/MASTER[/DB]` | the master a Sentinel set names |
//! | `redis+cluster://[[USER]:PASSWORD@]HOST[:6379][,HOST[:PORT]…]` | a Cluster, found from any of these nodes |
//!
//! The user and password (percent-encoded in the URL, or given apart with
//! [`RedisConfig::password`] or [`RedisConfig::password_file`]) are those of the
//! Redis servers; Sentinels are asked without them.
//!
//! ```
//! use std::time::Duration;
//! use tower_gateway::redis_connection::RedisConfig;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let redis = RedisConfig::from_url("redis+sentinel://s1:26379,s2:26379,s3:26379/gateway")?
//!     .response_timeout(Duration::from_millis(150))
//!     .connect()?; // nothing is dialled yet: the first command does
//! assert!(!redis.is_cluster());
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{AsyncConnectionConfig, Cmd, ConnectionAddr, ErrorKind, Pipeline, RedisError, RedisFuture, Value};
use tokio::sync::{Mutex, OnceCell};

/// Where Redis is and how to talk to it. See the [module](self) for the URLs.
#[derive(Clone)]
#[must_use]
pub struct RedisConfig {
    topology: Topology,
    username: Option<String>,
    password: Option<String>,
    db: i64,
    connect_timeout: Duration,
    response_timeout: Duration,
    /// The roots a `rediss://` server's certificate must chain to (PEM).
    ca: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Topology {
    Single { url: String },
    Sentinel { sentinels: Vec<(String, u16)>, master: String },
    Cluster { nodes: Vec<(String, u16)> },
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the password, nor a URL that may hold one.
        let topology = match &self.topology {
            Topology::Single { .. } => "single".to_owned(),
            Topology::Sentinel { sentinels, master } => format!("sentinel {master} via {sentinels:?}"),
            Topology::Cluster { nodes } => format!("cluster via {nodes:?}"),
        };
        f.debug_struct("RedisConfig")
            .field("topology", &topology)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "…"))
            .field("db", &self.db)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("ca", &self.ca.as_ref().map(|_| "PEM"))
            .finish()
    }
}

/// A Redis URL or password that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfigError(String);

impl fmt::Display for RedisConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RedisConfigError {}

fn wrong(message: impl Into<String>) -> RedisConfigError {
    RedisConfigError(message.into())
}

impl RedisConfig {
    /// Reads a `redis://`, `redis+sentinel://` or `redis+cluster://` URL.
    /// Timeouts start at 200 ms to connect and 200 ms for an answer.
    pub fn from_url(url: &str) -> Result<Self, RedisConfigError> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| wrong("a Redis URL starts with redis://"))?;
        let mut config = Self {
            topology: Topology::Single { url: url.to_owned() },
            username: None,
            password: None,
            db: 0,
            connect_timeout: Duration::from_millis(200),
            response_timeout: Duration::from_millis(200),
            ca: None,
        };
        match scheme.to_ascii_lowercase().as_str() {
            "redis" | "rediss" => {
                // The redis crate reads these; it says what is wrong with one.
                let info = redis::IntoConnectionInfo::into_connection_info(url)
                    .map_err(|err| wrong(format!("the Redis URL: {err}")))?;
                config.db = info.redis_settings().db();
                Ok(config)
            }
            "rediss+sentinel" | "rediss+cluster" => {
                Err(wrong("TLS to Sentinels or a Cluster is not supported yet: rediss:// is for one server"))
            }
            "redis+sentinel" | "redis+cluster" => {
                let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
                let (userinfo, hosts) = match authority.rsplit_once('@') {
                    Some((userinfo, hosts)) => (Some(userinfo), hosts),
                    None => (None, authority),
                };
                if let Some(userinfo) = userinfo {
                    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                    config.username = Some(decode(user)?).filter(|u| !u.is_empty());
                    config.password = Some(decode(password)?).filter(|p| !p.is_empty());
                }
                let sentinel = scheme.eq_ignore_ascii_case("redis+sentinel");
                let addrs = hosts
                    .split(',')
                    .map(|host| host_port(host, if sentinel { 26379 } else { 6379 }))
                    .collect::<Result<Vec<_>, _>>()?;
                let path = path.split_once('?').map_or(path, |(path, _)| path);
                let mut parts = path.split('/').filter(|p| !p.is_empty());
                if sentinel {
                    let master = parts.next().ok_or_else(|| {
                        wrong("a Sentinel URL names its master: redis+sentinel://HOST:26379,…/MASTER[/DB]")
                    })?;
                    config.topology = Topology::Sentinel { sentinels: addrs, master: decode(master)? };
                    if let Some(db) = parts.next() {
                        config.db =
                            db.parse().map_err(|_| wrong(format!("the database must be a number, not {db:?}")))?;
                    }
                } else {
                    config.topology = Topology::Cluster { nodes: addrs };
                }
                match parts.next() {
                    Some(extra) => Err(wrong(format!("the Redis URL has a path part too many: {extra:?}"))),
                    None => Ok(config),
                }
            }
            other => {
                Err(wrong(format!("a Redis URL is redis://, redis+sentinel:// or redis+cluster://, not {other}://")))
            }
        }
    }

    /// The password of the Redis servers, in place of any the URL gives.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// The password read from `path` (a secret file; a final newline is not
    /// part of it), in place of any the URL gives.
    pub fn password_file(self, path: impl AsRef<Path>) -> Result<Self, RedisConfigError> {
        let path = path.as_ref();
        let password = std::fs::read_to_string(path)
            .map_err(|err| wrong(format!("the Redis password file {}: {err}", path.display())))?;
        let password = password.trim_end_matches(['\r', '\n']);
        if password.is_empty() {
            return Err(wrong(format!("the Redis password file {} is empty", path.display())));
        }
        Ok(self.password(password))
    }

    /// The certificate authorities (a PEM file) that a `rediss://` server's
    /// certificate must chain to, in place of the system's roots.
    pub fn ca_file(mut self, path: impl AsRef<Path>) -> Result<Self, RedisConfigError> {
        let path = path.as_ref();
        let pem = std::fs::read(path).map_err(|err| wrong(format!("the Redis CA file {}: {err}", path.display())))?;
        if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
            return Err(wrong(format!("the Redis CA file {} holds no PEM certificate", path.display())));
        }
        self.ca = Some(pem);
        Ok(self)
    }

    /// How long to wait for a connection to be made (default 200 ms); for a
    /// Sentinel set, to learn the master and reach it.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long to wait for the answer to a command (default 200 ms).
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// The connection. Nothing is dialled until the first command, so this
    /// succeeds while Redis is down. Call it inside a Tokio runtime.
    pub fn connect(&self) -> Result<RedisConnection, RedisConfigError> {
        let link = match &self.topology {
            Topology::Single { url } => {
                let mut info = redis::IntoConnectionInfo::into_connection_info(url.as_str())
                    .map_err(|err| wrong(format!("the Redis URL: {err}")))?;
                if let Some(password) = &self.password {
                    let settings = info.redis_settings().clone().set_password(password);
                    info = info.set_redis_settings(settings);
                }
                let client = match &self.ca {
                    Some(ca) => redis::Client::build_with_tls(
                        info,
                        redis::TlsCertificates { client_tls: None, root_cert: Some(ca.clone()) },
                    ),
                    None => redis::Client::open(info),
                }
                .map_err(|err| wrong(err.to_string()))?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.connect_timeout))
                    .set_response_timeout(Some(self.response_timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                Link::Single(
                    ConnectionManager::new_lazy_with_config(client, config).map_err(|err| wrong(err.to_string()))?,
                )
            }
            Topology::Sentinel { sentinels, master } => {
                let addrs = sentinels.iter().map(|(host, port)| ConnectionAddr::Tcp(host.clone(), *port));
                let mut builder = SentinelClientBuilder::new(addrs, master, SentinelServerType::Master)
                    .map_err(|err| wrong(err.to_string()))?
                    .set_client_to_redis_db(self.db);
                if let Some(username) = &self.username {
                    builder = builder.set_client_to_redis_username(username);
                }
                if let Some(password) = &self.password {
                    builder = builder.set_client_to_redis_password(password);
                }
                let client = builder.build().map_err(|err| wrong(err.to_string()))?;
                Link::Sentinel(Arc::new(SentinelLink {
                    client: Mutex::new(Resolver { client, failed_at: None }),
                    master: arc_swap::ArcSwapOption::empty(),
                    config: AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(self.connect_timeout))
                        .set_response_timeout(Some(self.response_timeout)),
                    connect_timeout: self.connect_timeout,
                }))
            }
            Topology::Cluster { nodes } => {
                let nodes = nodes.iter().map(|(host, port)| format!("redis://{host}:{port}"));
                let mut builder = ClusterClient::builder(nodes)
                    .connection_timeout(self.connect_timeout)
                    .response_timeout(self.response_timeout)
                    .retries(2);
                if let Some(username) = &self.username {
                    builder = builder.username(username);
                }
                if let Some(password) = &self.password {
                    builder = builder.password(password);
                }
                let client = builder.build().map_err(|err| wrong(err.to_string()))?;
                Link::Cluster(Arc::new(ClusterLink { client, connection: OnceCell::new() }))
            }
        };
        Ok(RedisConnection { link, db: self.db, connect_timeout: self.connect_timeout })
    }
}

fn decode(part: &str) -> Result<String, RedisConfigError> {
    percent_encoding::percent_decode_str(part)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| wrong("the Redis URL's user or password is not UTF-8 once decoded"))
}

fn host_port(host: &str, default_port: u16) -> Result<(String, u16), RedisConfigError> {
    let (name, port) = match host.strip_prefix('[') {
        // [::1]:26379
        Some(v6) => {
            let (name, after) = v6.split_once(']').ok_or_else(|| wrong(format!("an unclosed [ in {host:?}")))?;
            (name, after.strip_prefix(':'))
        }
        None => match host.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        },
    };
    if name.is_empty() {
        return Err(wrong(format!("a Redis address without a host: {host:?}")));
    }
    let port = match port {
        None => default_port,
        Some(port) => port.parse().map_err(|_| wrong(format!("the port of {host:?} is not a port number")))?,
    };
    Ok((name.to_owned(), port))
}

/// A connection to Redis, made from a [`RedisConfig`]: clone it freely (the
/// clones share one connection). Send commands, scripts and pipelines through
/// it as through any of the redis crate's async connections.
#[derive(Clone)]
pub struct RedisConnection {
    link: Link,
    db: i64,
    connect_timeout: Duration,
}

#[derive(Clone)]
enum Link {
    Single(ConnectionManager),
    Sentinel(Arc<SentinelLink>),
    Cluster(Arc<ClusterLink>),
}

impl fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.link {
            Link::Single(_) => "single",
            Link::Sentinel(_) => "sentinel",
            Link::Cluster(_) => "cluster",
        };
        f.debug_struct("RedisConnection").field("kind", &kind).field("db", &self.db).finish_non_exhaustive()
    }
}

/// The master a Sentinel set names, and the connection to it while it works.
/// A connection error, a timeout or a `READONLY` answer (the old master,
/// demoted to replica after a failover) drops it, and the next command asks
/// the Sentinels again: a failover is a short window of errors, then the new
/// master.
struct SentinelLink {
    client: Mutex<Resolver>,
    master: arc_swap::ArcSwapOption<MultiplexedConnection>,
    config: AsyncConnectionConfig,
    connect_timeout: Duration,
}

/// The Sentinels' client, and when asking them last failed.
struct Resolver {
    client: SentinelClient,
    failed_at: Option<tokio::time::Instant>,
}

/// After the Sentinels could not name a reachable master, callers fail at once
/// for this long rather than each asking again.
const RESOLVE_BACKOFF: Duration = Duration::from_millis(100);

impl SentinelLink {
    /// The master's connection, asking the Sentinels if there is none: one
    /// caller asks while the others wait for its answer, and no caller waits
    /// longer than the connect timeout in all.
    async fn connection(&self) -> Result<MultiplexedConnection, RedisError> {
        if let Some(master) = self.master.load_full() {
            return Ok((*master).clone());
        }
        let no_master = || RedisError::from((ErrorKind::Io, "no master from the Sentinels in time"));
        tokio::time::timeout(self.connect_timeout, async {
            let mut resolver = self.client.lock().await;
            if let Some(master) = self.master.load_full() {
                return Ok((*master).clone());
            }
            if resolver.failed_at.is_some_and(|at| at.elapsed() < RESOLVE_BACKOFF) {
                return Err(RedisError::from((ErrorKind::Io, "the Sentinels named no reachable master just now")));
            }
            match resolver.client.get_async_connection_with_config(&self.config).await {
                Ok(connection) => {
                    resolver.failed_at = None;
                    self.master.store(Some(Arc::new(connection.clone())));
                    Ok(connection)
                }
                Err(err) => {
                    resolver.failed_at = Some(tokio::time::Instant::now());
                    Err(err)
                }
            }
        })
        .await
        .unwrap_or_else(|_| Err(no_master()))
    }

    /// After `err`, whether to forget the master and ask the Sentinels anew.
    fn failed(&self, err: &RedisError) {
        let stale = err.is_io_error()
            || err.is_connection_dropped()
            || err.is_connection_refusal()
            || err.is_timeout()
            || err.is_unrecoverable_error()
            || err.kind() == ErrorKind::Server(redis::ServerErrorKind::ReadOnly);
        if stale {
            self.master.store(None);
        }
    }
}

/// A Cluster connection, made on first use (the redis crate connects a
/// Cluster eagerly) and kept: it follows slot moves and failovers itself.
struct ClusterLink {
    client: ClusterClient,
    connection: OnceCell<ClusterConnection>,
}

impl RedisConnection {
    /// Whether this is a Cluster connection.
    pub fn is_cluster(&self) -> bool {
        matches!(self.link, Link::Cluster(_))
    }

    /// The Cluster's connection, made by the first caller; no caller waits
    /// longer than the connect timeout in all.
    async fn cluster(&self, link: &ClusterLink) -> Result<ClusterConnection, RedisError> {
        if let Some(connection) = link.connection.get() {
            return Ok(connection.clone());
        }
        tokio::time::timeout(
            self.connect_timeout,
            link.connection.get_or_try_init(|| link.client.get_async_connection()),
        )
        .await
        .map_err(|_| RedisError::from((ErrorKind::Io, "no Cluster node answered in time")))?
        .cloned()
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            match &self.link {
                Link::Single(manager) => manager.clone().req_packed_command(cmd).await,
                Link::Sentinel(link) => {
                    let answer = link.connection().await?.req_packed_command(cmd).await;
                    if let Err(err) = &answer {
                        link.failed(err);
                    }
                    answer
                }
                Link::Cluster(link) => self.cluster(link).await?.req_packed_command(cmd).await,
            }
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            match &self.link {
                Link::Single(manager) => manager.clone().req_packed_commands(pipeline, offset, count).await,
                Link::Sentinel(link) => {
                    let answer = link.connection().await?.req_packed_commands(pipeline, offset, count).await;
                    if let Err(err) = &answer {
                        link.failed(err);
                    }
                    answer
                }
                Link::Cluster(link) => self.cluster(link).await?.req_packed_commands(pipeline, offset, count).await,
            }
        })
    }

    fn get_db(&self) -> i64 {
        self.db
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_of_each_kind_are_read_and_wrong_ones_say_why() {
        let single = RedisConfig::from_url("redis://:pw@127.0.0.1:6380/2").unwrap();
        assert_eq!(single.db, 2);
        assert!(matches!(single.topology, Topology::Single { .. }));
        assert!(!format!("{single:?}").contains("pw"), "{single:?}");

        let sentinel = RedisConfig::from_url("redis+sentinel://us%3Aer:p%40ss@s1,s2:26380,[::1]:26381/main/3").unwrap();
        assert_eq!(
            sentinel.topology,
            Topology::Sentinel {
                sentinels: vec![("s1".into(), 26379), ("s2".into(), 26380), ("::1".into(), 26381)],
                master: "main".into(),
            }
        );
        assert_eq!(
            (sentinel.username.as_deref(), sentinel.password.as_deref(), sentinel.db),
            (Some("us:er"), Some("p@ss"), 3)
        );
        assert!(!format!("{sentinel:?}").contains("p@ss"));

        let cluster = RedisConfig::from_url("redis+cluster://:secret@n1:7000,n2").unwrap();
        assert_eq!(cluster.topology, Topology::Cluster { nodes: vec![("n1".into(), 7000), ("n2".into(), 6379)] });
        assert_eq!(cluster.password.as_deref(), Some("secret"));

        for (url, says) in [
            ("127.0.0.1:6379", "starts with redis://"),
            ("http://redis", "not http://"),
            ("rediss+sentinel://s1/main", "TLS"),
            ("rediss+cluster://n1", "TLS"),
            ("redis+sentinel://s1:26379", "names its master"),
            ("redis+sentinel://s1:x/main", "not a port number"),
            ("redis+sentinel://s1/main/zero", "must be a number"),
            ("redis+sentinel://s1/main/0/more", "too many"),
            ("redis+cluster://n1,,n2", "without a host"),
            ("redis+cluster://[::1/", "unclosed"),
        ] {
            let err = RedisConfig::from_url(url).expect_err(url);
            assert!(err.to_string().contains(says), "{url}: {err}");
        }
    }

    #[test]
    fn a_password_file_replaces_the_urls_and_loses_its_newline() {
        let dir = tempfile_dir();
        let file = dir.join("redis-password");
        std::fs::write(&file, "from-the-file\n").unwrap();
        let config = RedisConfig::from_url("redis+cluster://:in-url@n1").unwrap().password_file(&file).unwrap();
        assert_eq!(config.password.as_deref(), Some("from-the-file"));
        std::fs::write(&file, "\n").unwrap();
        assert!(
            RedisConfig::from_url("redis://r").unwrap().password_file(&file).unwrap_err().to_string().contains("empty")
        );
        let missing = RedisConfig::from_url("redis://r").unwrap().password_file(dir.join("nope")).unwrap_err();
        assert!(missing.to_string().contains("nope"), "{missing}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("tower-gateway-redis-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
