//! Real Redis servers for the tests, each on free loopback ports and killed
//! when dropped: one server, a Sentinel set, a Cluster. Needs Debian's
//! `redis-server` (and `redis-cli` for the Cluster) on the `PATH`.

use crate::closed_port;

/// A real `redis-server` on a free loopback port, with no persistence; killed
/// when dropped. Needs `redis-server` on the `PATH` (Debian: `redis-server`).
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    child: Option<std::process::Child>,
}

impl RedisServer {
    /// Starts one and waits (bounded) until it answers.
    pub async fn start() -> Self {
        let port = closed_port().port();
        let mut server = Self { port, child: None };
        server.restart().await;
        server
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills it (SIGKILL: no goodbye to clients) and waits until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty, and waits until it answers.
    pub async fn restart(&mut self) {
        self.kill();
        let args = ["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            .map(String::from);
        // Nothing is written to disk, so any directory will do.
        self.child = Some(redis_process(std::path::Path::new("."), self.port, &args).await);
    }

    /// A connection for looking at what is stored.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        plain_connection(&self.url()).await.expect("redis answers")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `redis-server` process (or a Sentinel) started with `args` in `dir`,
/// once it answers PING on `port` (bounded: 10 s).
async fn redis_process(dir: &std::path::Path, port: u16, args: &[String]) -> std::process::Child {
    #[allow(clippy::zombie_processes, reason = "returned to a Children, which kills and waits for it")]
    let mut child = std::process::Command::new("redis-server")
        .current_dir(dir)
        .args(args)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server must be installed for these tests (apt-get install redis-server)");
    let url = format!("redis://127.0.0.1:{port}");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Ok(mut conn) = plain_connection(&url).await
            && redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok()
        {
            return child;
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("redis on {port} did not answer within 10 s");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Polls the server on `port` with `command` until its answer holds `wanted`,
/// failing with `what` at `deadline`.
async fn answers_with(port: u16, command: &[&str], wanted: &str, deadline: tokio::time::Instant, what: &str) {
    let mut conn = plain_connection(&format!("redis://127.0.0.1:{port}")).await.expect("redis answers");
    let mut cmd = redis::cmd(command[0]);
    for arg in &command[1..] {
        cmd.arg(*arg);
    }
    loop {
        let info: String = cmd.query_async(&mut conn).await.unwrap_or_default();
        if info.contains(wanted) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: not by the deadline ({port})");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn plain_connection(url: &str) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    redis::Client::open(url)?.get_multiplexed_async_connection().await
}

/// Real processes that die with the value.
#[derive(Debug, Default)]
struct Children(Vec<(u16, std::process::Child)>);

impl Children {
    fn kill(&mut self, port: u16) {
        if let Some(i) = self.0.iter().position(|(p, _)| *p == port) {
            let (_, mut child) = self.0.remove(i);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A Redis master with one replica, watched by three Sentinels (quorum 2,
/// down after 1 s): a real failover when the master is killed. Every process
/// is killed when this drops.
#[derive(Debug)]
pub struct RedisSentinelSet {
    /// The name the Sentinels know the master by.
    pub master_name: &'static str,
    master: u16,
    replica: u16,
    sentinels: Vec<u16>,
    children: Children,
    _dir: tempfile::TempDir,
}

impl RedisSentinelSet {
    /// Starts the five processes and waits (bounded) until every Sentinel knows
    /// the replica.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let no_disk = ["--save", "", "--appendonly", "no", "--bind", "127.0.0.1"].map(String::from);
        let (master, replica) = (closed_port().port(), closed_port().port());
        let mut children = Children::default();
        let mut args: Vec<String> = vec!["--port".into(), master.to_string()];
        args.extend(no_disk.iter().cloned());
        children.0.push((master, redis_process(dir.path(), master, &args).await));
        let mut args: Vec<String> = vec!["--port".into(), replica.to_string()];
        args.extend(no_disk.iter().cloned());
        args.extend(["--replicaof".into(), "127.0.0.1".into(), master.to_string()]);
        children.0.push((replica, redis_process(dir.path(), replica, &args).await));
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            let port = closed_port().port();
            let conf = dir.path().join(format!("sentinel-{port}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\nsentinel monitor gw 127.0.0.1 {master} 2\n\
                     sentinel down-after-milliseconds gw 1000\nsentinel failover-timeout gw 5000\n\
                     sentinel parallel-syncs gw 1\n"
                ),
            )
            .expect("write a sentinel config");
            let args = vec![conf.display().to_string(), "--sentinel".into()];
            children.0.push((port, redis_process(dir.path(), port, &args).await));
            sentinels.push(port);
        }
        let set = Self { master_name: "gw", master, replica, sentinels, children, _dir: dir };
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        answers_with(master, &["INFO", "replication"], "state=online", deadline, "the replica in sync").await;
        for port in &set.sentinels {
            let mut conn = plain_connection(&format!("redis://127.0.0.1:{port}")).await.expect("a sentinel");
            loop {
                let replicas: Vec<redis::Value> =
                    redis::cmd("SENTINEL").arg("REPLICAS").arg("gw").query_async(&mut conn).await.unwrap_or_default();
                let others: Vec<redis::Value> =
                    redis::cmd("SENTINEL").arg("SENTINELS").arg("gw").query_async(&mut conn).await.unwrap_or_default();
                if !replicas.is_empty() && others.len() == 2 {
                    break;
                }
                assert!(tokio::time::Instant::now() < deadline, "the Sentinels did not find each other within 20 s");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
        set
    }

    /// `redis+sentinel://127.0.0.1:S1,127.0.0.1:S2,127.0.0.1:S3/gw`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.sentinels.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        format!("redis+sentinel://{}/{}", hosts.join(","), self.master_name)
    }

    /// The port of the server that is master now, as the Sentinels say.
    pub async fn master_port(&self) -> u16 {
        let mut conn = plain_connection(&format!("redis://127.0.0.1:{}", self.sentinels[0])).await.expect("a sentinel");
        let (_, port): (String, String) = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(self.master_name)
            .query_async(&mut conn)
            .await
            .expect("the master's address");
        port.parse().expect("a port")
    }

    /// The first master's port, and its replica's.
    pub fn ports(&self) -> (u16, u16) {
        (self.master, self.replica)
    }

    /// Kills the server on `port` (SIGKILL).
    pub fn kill(&mut self, port: u16) {
        self.children.kill(port);
    }
}

/// A Redis Cluster of three masters (all 16384 slots, no replicas), made with
/// `redis-cli --cluster create`; every process is killed when this drops.
#[derive(Debug)]
pub struct RedisCluster {
    ports: Vec<u16>,
    _children: Children,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Starts three nodes, joins them, and waits (bounded) until each says
    /// `cluster_state:ok`.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut children = Children::default();
        let mut ports = Vec::new();
        for _ in 0..3 {
            let (port, bus) = (closed_port().port(), closed_port().port());
            let args: Vec<String> = [
                "--port",
                &port.to_string(),
                "--cluster-port",
                &bus.to_string(),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &format!("nodes-{port}.conf"),
                "--cluster-node-timeout",
                "2000",
                "--save",
                "",
                "--appendonly",
                "no",
            ]
            .map(String::from)
            .to_vec();
            children.0.push((port, redis_process(dir.path(), port, &args).await));
            ports.push(port);
        }
        let mut create = std::process::Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        create.args(ports.iter().map(|p| format!("127.0.0.1:{p}")));
        create.args(["--cluster-replicas", "0", "--cluster-yes"]);
        let out = create.output().expect("redis-cli must be installed for these tests (apt-get install redis-tools)");
        assert!(out.status.success(), "redis-cli --cluster create: {}", String::from_utf8_lossy(&out.stdout));
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        for port in &ports {
            answers_with(*port, &["CLUSTER", "INFO"], "cluster_state:ok", deadline, "the Cluster ok").await;
        }
        Self { ports, _children: children, _dir: dir }
    }

    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// A plain connection to each node, for looking at what each holds.
    pub async fn nodes(&self) -> Vec<redis::aio::MultiplexedConnection> {
        let mut nodes = Vec::new();
        for port in &self.ports {
            nodes.push(plain_connection(&format!("redis://127.0.0.1:{port}")).await.expect("a node"));
        }
        nodes
    }
}
