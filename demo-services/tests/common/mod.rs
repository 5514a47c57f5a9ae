//! Helpers shared by the service tests.
#![allow(dead_code, unreachable_pub, unused_macros, unused_imports)]

use std::net::SocketAddr;
use std::process::{Child, Command};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tempfile::TempDir;
use tower::ServiceExt;

pub mod postgres;

/// A temporary directory and a database URL inside it.
pub fn temp_db(name: &str) -> (TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join(name).display());
    (dir, url)
}

/// The database a test runs on: each test written once, run on both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A test's scratch directory, which holds its SQLite file (a Postgres
/// database lives as long as the binary's server).
pub struct TestDb(TempDir);

impl TestDb {
    /// The directory, for the test's other files.
    pub fn path(&self) -> &std::path::Path {
        self.0.path()
    }
}

impl Backend {
    /// A new, empty database, named after `name` (`products.db`, `products`).
    pub async fn database(self, name: &str) -> (TestDb, String) {
        match self {
            Self::Sqlite => {
                let (dir, url) = temp_db(name);
                (TestDb(dir), url)
            }
            Self::Postgres => {
                let url = postgres::database(name.trim_end_matches(".db")).await;
                (TestDb(tempfile::tempdir().unwrap()), url)
            }
        }
    }
}

/// Runs each named `async fn name(backend: Backend)` as two tests,
/// `sqlite::name` and `postgres::name`, with `#[tokio::test]` (or the flavour
/// given in parentheses: `name(flavor = "multi_thread")`).
macro_rules! on_both_databases {
    ($($name:ident $(($($flavor:tt)*))?),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test $(($($flavor)*))?]
                async fn $name() {
                    super::$name(crate::common::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test $(($($flavor)*))?]
                async fn $name() {
                    super::$name(crate::common::Backend::Postgres).await
                }
            )*
        }
    };
}
pub(crate) use on_both_databases;

/// Sends one request through `app` with `oneshot`; returns the status and the JSON body (Null if empty).
pub async fn call(
    app: &Router,
    method: Method,
    path: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let body = match body {
        Some(json) => {
            req = req.header("content-type", "application/json");
            Body::from(json.to_string())
        }
        None => Body::empty(),
    };
    let res = app.clone().oneshot(req.body(body).unwrap()).await.unwrap();
    let status = res.status();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| panic!("not JSON: {bytes:?}"))
        },
    )
}

/// Sends raw bytes as the body.
pub async fn call_raw(
    app: &Router,
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: &'static str,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let res = app.clone().oneshot(req.body(Body::from(body)).unwrap()).await.unwrap();
    let status = res.status();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or_else(|_| panic!("not JSON: {bytes:?}")))
}

/// Asserts a JSON error with `status` and `code`.
pub fn assert_error(got: &(StatusCode, Value), status: StatusCode, code: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["error"]["code"], code, "{}", got.1);
    assert!(got.1["error"]["message"].is_string());
}

/// Serves `app` on a loopback port in this process; stopped when the handle drops.
pub struct InProcess {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn serve(app: Router) -> InProcess {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    InProcess { addr, task }
}

/// A service binary running as its own process; killed when dropped.
pub struct Process {
    pub addr: SocketAddr,
    child: Child,
}

impl Process {
    pub async fn start(binary: &str, envs: &[(&str, String)]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(binary)
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("RUST_LOG", "warn")
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
            .spawn()
            .unwrap();
        let process = Self { addr: ([127, 0, 0, 1], port).into(), child };
        let client = HttpClient::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while client.get(&format!("{}/readyz", process.url())).await.map(|r| r.0) != Some(StatusCode::OK) {
            assert!(tokio::time::Instant::now() < deadline, "{binary} did not become ready");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        process
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The resident memory of process `pid` now, in bytes (Linux: `VmRSS` of
/// `/proc/<pid>/status`; 0 once it is gone).
pub fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    kib * 1024
}

/// A small HTTP client for talking to servers on loopback, with a bearer
/// token on every request once given one.
#[derive(Clone)]
pub struct HttpClient(Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>, Option<String>);

impl HttpClient {
    pub fn new() -> Self {
        Self(Client::builder(TokioExecutor::new()).build_http(), None)
    }

    /// Sends `Authorization: Bearer TOKEN` with every request.
    #[allow(dead_code, reason = "not every test crate that shares this module sends a token")]
    pub fn bearer(mut self, token: &str) -> Self {
        self.1 = Some(format!("Bearer {token}"));
        self
    }

    pub async fn send(&self, method: Method, url: &str, body: Option<Value>) -> Option<(StatusCode, Value)> {
        self.send_with(method, url, body, &[]).await.map(|(status, body, _)| (status, body))
    }

    /// [`send`](Self::send), with `headers` besides.
    pub async fn send_with(
        &self,
        method: Method,
        url: &str,
        body: Option<Value>,
        headers: &[(&str, String)],
    ) -> Option<(StatusCode, Value, http::HeaderMap)> {
        let mut req = Request::builder().method(method).uri(url);
        for (name, value) in headers {
            req = req.header(*name, value);
        }
        if let Some(bearer) = &self.1 {
            req = req.header("authorization", bearer);
        }
        let body = match body {
            Some(json) => {
                req = req.header("content-type", "application/json");
                Full::new(Bytes::from(json.to_string()))
            }
            None => Full::default(),
        };
        let res = self.0.request(req.body(body).unwrap()).await.ok()?;
        let (parts, body) = res.into_parts();
        let bytes = body.collect().await.ok()?.to_bytes();
        Some((parts.status, serde_json::from_slice(&bytes).unwrap_or(Value::Null), parts.headers))
    }

    pub async fn get(&self, url: &str) -> Option<(StatusCode, Value)> {
        self.send(Method::GET, url, None).await
    }
}
