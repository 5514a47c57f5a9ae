//! Helpers for the end-to-end tests: real servers on loopback ports, and a client.
//!
//! Every server is stopped when its [`Server`] handle is dropped.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tower::{Service, ServiceExt};

pub mod bare_proxy;
mod redis_servers;

pub use self::redis_servers::{RedisCluster, RedisSentinelSet, RedisServer};

/// A boxed error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A server on a loopback port, stopped (listener and connections) when dropped.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Server {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `svc` over HTTP/1.1 (upgrades allowed: axum's WebSocket handlers
/// work) on a fresh loopback port, with the client's address in each
/// request's [`PeerAddr`](tower_gateway::PeerAddr) extension.
pub async fn serve<S, B>(svc: S) -> Server
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Future: Send,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    serve_on(TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port"), svc)
}

/// As [`serve`], on `listener`: for a service that must know its own address
/// before it is built.
pub fn serve_on<S, B>(listener: TcpListener, svc: S) -> Server
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Future: Send,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let addr = listener.local_addr().expect("local address");
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        while let Ok((stream, peer)) = listener.accept().await {
            // Finished connections let go of their tasks: a long test's
            // backend does not grow with every connection it served.
            while connections.try_join_next().is_some() {}
            let svc = svc.clone().map_request(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(tower_gateway::PeerAddr(peer));
                req
            });
            connections.spawn(async move {
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc))
                    .with_upgrades();
                let _ = conn.await;
            });
        }
    });
    Server { addr, task }
}

/// A backend named `name` that answers every request with JSON saying who it is
/// and what it received: `{"backend","method","path","body","headers"}`.
pub async fn backend(name: &'static str) -> Server {
    counting_backend(name).await.0
}

/// A [`backend`] that also counts the requests it receives.
pub async fn counting_backend(name: &'static str) -> (Server, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    let server = serve(tower::service_fn(move |req: Request<Incoming>| {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let headers: serde_json::Map<String, serde_json::Value> = parts
                .headers
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into()))
                .collect();
            let seen = serde_json::json!({
                "backend": name,
                "method": parts.method.as_str(),
                "path": parts.uri.path_and_query().map(|p| p.as_str()),
                "body": String::from_utf8_lossy(&body),
                "headers": headers,
            });
            let response = Response::builder()
                .header("content-type", "application/json")
                .header("x-backend", name)
                .body(Full::new(Bytes::from(seen.to_string())))
                .expect("a valid response");
            Ok::<_, Infallible>(response)
        }
    }))
    .await;
    (server, hits)
}

/// The benchmarks' backend: every request answered `200` with one small JSON product.
pub async fn product_backend() -> Server {
    serve(tower::service_fn(|_: Request<Incoming>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
            b"{\"id\":1,\"name\":\"Laptop\",\"price\":999.99}",
        ))))
    }))
    .await
}

/// A sender for one HTTP/1.1 client connection over `io`, its connection task spawned.
pub async fn http1_connection<I>(io: I) -> Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>, BoxError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// `GET path` with `Host: host` (and `header`) on `sender`, its body read;
/// an error unless the status is 2xx.
pub async fn get_ok(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    host: &str,
    path: &str,
    header: Option<(&str, &str)>,
) -> Result<(), BoxError> {
    sender.ready().await?;
    let mut req = Request::get(path).header("host", host);
    if let Some((name, value)) = header {
        req = req.header(name, value);
    }
    let res = sender.send_request(req.body(Empty::new())?).await?;
    let status = res.status();
    res.into_body().collect().await?;
    if status.is_success() { Ok(()) } else { Err(format!("status {status}").into()) }
}

/// Reads one HTTP/1.1 response with a `Content-Length` body from `reader`
/// (plain or TLS): its status and body, within 5 s.
pub async fn read_response<R: tokio::io::AsyncBufRead + Unpin>(reader: &mut R) -> (u16, String) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let read = async {
        let mut status = String::new();
        reader.read_line(&mut status).await.unwrap();
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).await.unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).await.unwrap();
        let code = status.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        (code, String::from_utf8(body).unwrap())
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), read).await.expect("a response within 5 s")
}

/// Requests per second for `requests` GETs of `url` from `concurrency`
/// concurrent clients sharing one HTTP/1.1 pool; panics on a failed request.
pub async fn get_throughput(url: &str, concurrency: usize, requests: usize) -> f64 {
    let client: HyperClient<_, Full<Bytes>> =
        HyperClient::builder(TokioExecutor::new()).pool_max_idle_per_host(concurrency).build_http();
    let start = std::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, uri) = (client.clone(), url.parse::<http::Uri>().expect("a URL"));
        tasks.spawn(async move {
            for _ in 0..requests / concurrency {
                let res = client.get(uri.clone()).await.expect("an answer");
                assert!(res.status().is_success(), "{}", res.status());
                res.into_body().collect().await.expect("a whole body");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("a client task");
    }
    requests as f64 / start.elapsed().as_secs_f64()
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    (v[(v.len() - 1) / 2] + v[v.len() / 2]) / 2.0
}

/// A loopback address where nothing listens: connections to it are refused.
pub fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("local address")
}

/// A demo-gateway on a loopback port, serving a compiled plan; stopped
/// (gracefully) when dropped.
#[derive(Debug)]
pub struct Gateway {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Gateway {
    /// Compiles `config` (its `listen` is ignored) and serves it.
    pub async fn start(config: demo_gateway::Config) -> Self {
        Self::serve(demo_gateway::Plan::compile(config).expect("a valid configuration")).await
    }

    /// Serves `gateway` (a plan, or a live gateway that can be reloaded) on a
    /// fresh loopback port.
    pub async fn serve(gateway: impl Into<demo_gateway::Gateway>) -> Self {
        let gateway = gateway.into();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
        let addr = listener.local_addr().expect("local address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(demo_gateway::serve(gateway, listener, async move {
            let _ = stopped.await;
        }));
        Self { addr, stop: Some(stop) }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A gauge or counter of its `/metrics`, read over a connection of its
    /// own that is closed at once (a pooled client's connection would be
    /// counted among the idle, parked ones itself).
    pub async fn metric_now(&self, name: &str) -> i64 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).await.unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} not in:\n{text}"))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The value of the first sample of `/metrics` at `url` whose line starts with
/// `series` (a name, with labels if given), or `None`.
pub async fn metric(url: &str, series: &str) -> Option<f64> {
    let text = Client::new().get(&format!("{url}/metrics")).await.ok()?.body;
    let text = String::from_utf8_lossy(&text).into_owned();
    text.lines().find_map(|line| line.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
}

/// Polls `check` every 20 ms for up to 10 s; panics naming `what` after that.
pub async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !check().await {
        assert!(std::time::Instant::now() < deadline, "{what}: not within 10 s");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A plain HTTP/1.1 client.
#[derive(Debug, Clone)]
pub struct Client {
    inner: HyperClient<HttpConnector, Full<Bytes>>,
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    /// Its status.
    pub status: http::StatusCode,
    /// Its headers.
    pub headers: http::HeaderMap,
    /// Its body.
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

impl Client {
    /// A client with its own connection pool.
    pub fn new() -> Self {
        Self { inner: HyperClient::builder(TokioExecutor::new()).build_http() }
    }

    /// A client whose connections come from `ip` (any of 127.0.0.0/8 works on
    /// loopback): another client address, as a server sees it.
    pub fn from_address(ip: std::net::IpAddr) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_local_address(Some(ip));
        Self { inner: HyperClient::builder(TokioExecutor::new()).build(connector) }
    }

    /// Sends `req` and reads the whole response.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Result<Reply, BoxError> {
        let res = self.inner.request(req).await?;
        let (parts, body) = res.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Reply { status: parts.status, headers: parts.headers, body })
    }

    /// `GET url`.
    pub async fn get(&self, url: &str) -> Result<Reply, BoxError> {
        self.send(Request::get(url).body(Full::default())?).await
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn token_record<'a>(
    id: &'a str,
    subject: &'a str,
    issued_at: Option<u64>,
) -> tower_gateway_auth::store::TokenRecord<'a> {
    tower_gateway_auth::store::TokenRecord { id, subject, issued_at, expires_at: unix_now() + 600 }
}

/// What every `TokenStore` promises, checked on `store`: the contract the
/// memory store and the Redis store (single, behind Sentinels, on a Cluster)
/// are all held to.
pub async fn token_store_contract(store: std::sync::Arc<dyn tower_gateway_auth::TokenStore>) {
    use tower_gateway_auth::store::TokenState;
    let t = unix_now();
    store.ping().await.expect("ping answers");

    // check: an unknown token is active, and stays so when checked again.
    assert_eq!(store.check(token_record("a", "u1", Some(t))).await.unwrap(), TokenState::Active);
    assert_eq!(store.check(token_record("a", "u1", Some(t))).await.unwrap(), TokenState::Active);

    // revoke: that token only, not its subject's others.
    store.revoke(token_record("a", "u1", Some(t))).await.unwrap();
    assert_eq!(store.check(token_record("a", "u1", Some(t))).await.unwrap(), TokenState::Revoked);
    assert_eq!(store.check(token_record("b", "u1", Some(t))).await.unwrap(), TokenState::Active);
    // Revoking twice is the same as once.
    store.revoke(token_record("a", "u1", Some(t))).await.unwrap();
    assert_eq!(store.check(token_record("a", "u1", Some(t))).await.unwrap(), TokenState::Revoked);

    // revoke_subject: tokens issued up to the cut-off (that second included, and
    // those that do not say), not after; other subjects untouched.
    store.revoke_subject("u2", t - 100, t + 600).await.unwrap();
    assert_eq!(store.check(token_record("c", "u2", Some(t - 200))).await.unwrap(), TokenState::Revoked);
    assert_eq!(store.check(token_record("d", "u2", Some(t - 100))).await.unwrap(), TokenState::Revoked);
    assert_eq!(store.check(token_record("e", "u2", Some(t - 99))).await.unwrap(), TokenState::Active);
    assert_eq!(store.check(token_record("f", "u2", None)).await.unwrap(), TokenState::Revoked);
    assert_eq!(store.check(token_record("g", "u3", Some(t - 200))).await.unwrap(), TokenState::Active);

    // A later cut-off moves it forward...
    store.revoke_subject("u2", t - 50, t + 600).await.unwrap();
    assert_eq!(store.check(token_record("h", "u2", Some(t - 60))).await.unwrap(), TokenState::Revoked);
    // ...and an earlier one arriving late never moves it back.
    store.revoke_subject("u2", t - 500, t + 10).await.unwrap();
    assert_eq!(store.check(token_record("i", "u2", Some(t - 60))).await.unwrap(), TokenState::Revoked);
    assert_eq!(store.check(token_record("j", "u2", Some(t - 49))).await.unwrap(), TokenState::Active);

    // A token checked active before its subject was revoked is revoked after.
    assert_eq!(store.check(token_record("k", "u4", Some(t - 10))).await.unwrap(), TokenState::Active);
    store.revoke_subject("u4", t, t + 600).await.unwrap();
    assert_eq!(store.check(token_record("k", "u4", Some(t - 10))).await.unwrap(), TokenState::Revoked);
}

/// A CA (PEM) and a certificate and key for 127.0.0.1 it signed, in `dir`.
pub fn test_ca(dir: &std::path::Path) -> (String, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap().signed_by(&leaf_key, &issuer).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, leaf.pem()).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    (ca.pem(), cert, key)
}

/// A raw HTTP/1.1 request over a fresh connection: the path is sent exactly as
/// given (no client normalises `..` away). Returns the status code.
pub async fn raw_get(addr: SocketAddr, path: &str, extra_headers: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n{extra_headers}\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("read");
    let head = String::from_utf8_lossy(&response);
    head.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0)
}
