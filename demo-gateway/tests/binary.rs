//! The `demo-gateway` binary: its command line, and a graceful SIGTERM.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

const BIN: &str = env!("CARGO_BIN_EXE_demo-gateway");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn get(url: &str) -> Option<(u16, String)> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let res = client.get(url.parse().ok()?).await.ok()?;
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Serves `app` on a loopback port.
async fn serve_backend(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// Runs the binary with `config` (which listens on `port`) until it answers
/// `/healthz`; the directory holds its configuration file.
async fn start_gateway(port: u16, config: &str) -> (Killed, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    std::fs::write(&file, config).unwrap();
    let child = Command::new(BIN)
        .args(["--config", file.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let gateway = Killed(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(&format!("http://127.0.0.1:{port}/healthz")).await.map(|r| r.0) != Some(200) {
        assert!(Instant::now() < deadline, "the gateway never became healthy");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    (gateway, dir)
}

#[test]
fn help_version_and_config_errors() {
    let help = Command::new(BIN).arg("--help").output().unwrap();
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for word in ["--config", "--print-config", "GATEWAY_LISTEN", "JWT_PUBLIC_KEY_FILE"] {
        assert!(text.contains(word), "--help does not mention {word}:\n{text}");
    }
    let version = Command::new(BIN).arg("--version").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&version.stdout).trim(), format!("demo-gateway {}", env!("CARGO_PKG_VERSION")));

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[upstreams.x]\nendpoints = [\"not a url\"]\n").unwrap();
    let out = Command::new(BIN).args(["--config", bad.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    // One line per field at fault, the upstream's first (the shipped routes
    // name upstreams this file replaced: those are named too).
    assert!(err.lines().next().is_some_and(|l| l.contains("upstreams.x.endpoints[0]")), "{err}");
    assert!(err.lines().all(|l| l.starts_with("demo-gateway: invalid configuration: ")), "{err}");
    assert!(err.contains("routes[0].upstream"), "{err}");

    // The shipped routes need tokens: without a key the gateway refuses to start.
    let out = Command::new(BIN).env_remove("JWT_SECRET_FILE").env_remove("JWT_PUBLIC_KEY_FILE").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("jwt: routes need tokens"), "{out:?}");
}

#[test]
fn print_config_shows_every_policy_and_masks_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let public = dir.path().join("public.pem");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/../tower-gateway-auth/tests/fixtures/ed25519-public.pem"),
        &public,
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("--print-config")
        .env("JWT_ALGORITHM", "EdDSA")
        .env("JWT_PUBLIC_KEY_FILE", &public)
        .env("REDIS_URL", "redis://user:hunter2@redis:6379/0")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("prefix = \"/api/checkout\""), "{text}");
    assert_eq!(text.matches("access = ").count() + text.matches("[routes.access]").count(), 13, "{text}");
    let summary: Vec<&str> =
        text.lines().filter(|l| l.contains("access: ")).map(|l| l.trim_start_matches('#').trim()).collect();
    assert_eq!(summary.len(), 13, "{text}");
    let at =
        |start: &str| summary.iter().position(|l| l.starts_with(start)).unwrap_or_else(|| panic!("{start}: {text}"));
    let admin = "access: role admin  limits: per-address";
    // Exact paths first (the Gateway API's order), the longest first; then prefixes.
    assert!(summary[0].starts_with("/inventory.v1.Inventory/Restock ") && summary[0].ends_with(admin), "{text}");
    assert!(summary[1].starts_with("/api/users/keys/rotate ") && summary[1].ends_with(admin), "{text}");
    assert!(summary[2].starts_with("/api/users/signup POST"), "{text}");
    assert!(summary[2].ends_with("access: public  limits: per-address, signup-address"), "{text}");
    assert!(summary[3].starts_with("/api/users/login POST"), "{text}");
    assert!(summary[3].ends_with("access: public  limits: per-address, login-address, login-account"), "{text}");
    assert!(summary[at("/inventory.v1.Inventory/* ")].ends_with("access: token  limits: per-address"), "{text}");
    assert!(summary[at("/grpc.health.v1.Health/* ")].ends_with("access: public  limits: per-address"), "{text}");
    assert!(
        summary[at("/api/users/.well-known/* GET,HEAD")].ends_with("access: public  limits: per-address"),
        "{text}"
    );
    assert!(at("/api/users/signup POST") < at("/api/users/* PUT"), "{text}");
    assert!(summary.iter().any(|l| l.starts_with("/api/products/* ") && l.ends_with(admin)), "{text}");
    assert!(text.contains("[limits.login-account]"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_request_in_flight_then_exits() {
    let started = Arc::new(AtomicBool::new(false));
    let backend = {
        let started = started.clone();
        serve_backend(Router::new().route(
            "/{*rest}",
            routing::get(move || {
                let started = started.clone();
                async move {
                    started.store(true, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                    "slow done"
                }
            }),
        ))
        .await
    };

    let port = free_port();
    let (mut gateway, _dir) = start_gateway(
        port,
        &format!(
            "listen = \"127.0.0.1:{port}\"\ngrace_period_ms = 10000\n[upstreams.slow]\nendpoints = [\"http://{backend}\"]\n[[routes]]\nprefix = \"/api/slow\"\nupstream = \"slow\"\naccess = \"public\"\n"
        ),
    )
    .await;
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);

    let slow = tokio::spawn({
        let url = format!("{base}/api/slow/report");
        async move { get(&url).await }
    });
    while !started.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "the slow request never reached the backend");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pid = gateway.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());

    // New connections are refused while the slow request finishes.
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let refused_by = Instant::now() + Duration::from_secs(1);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < refused_by, "still accepting after SIGTERM");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!slow.is_finished(), "the slow request ended before the listener closed");

    assert_eq!(slow.await.unwrap(), Some((200, "slow done".to_owned())));
    let exit_by = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = gateway.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < exit_by, "the gateway did not exit after its last request");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}");
}

/// What one keep-alive client saw while the gateway was stopped under it.
#[derive(Debug, Default)]
struct Seen {
    answered: usize,
    /// Requests on a connection that had already been answered, cut off without a response.
    lost_on_reused: usize,
    /// First requests on a fresh connection cut off without a response.
    lost_on_fresh: usize,
}

/// Requests `/api/x` over keep-alive connections, reconnecting when told to
/// close, until a connection is refused after `stopping` is set.
async fn keep_alive_client(addr: SocketAddr, stopping: Arc<AtomicBool>) -> Seen {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let mut seen = Seen::default();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
            if stopping.load(Ordering::SeqCst) {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        let mut stream = BufReader::new(stream);
        let mut reused = false;
        loop {
            let answered = async {
                stream.get_mut().write_all(b"GET /api/x HTTP/1.1\r\nHost: gateway\r\n\r\n").await.ok()?;
                let (mut length, mut close, mut line) = (0usize, false, String::new());
                loop {
                    line.clear();
                    if stream.read_line(&mut line).await.ok()? == 0 {
                        return None;
                    }
                    let lower = line.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        length = v.trim().parse().ok()?;
                    }
                    close |= lower.starts_with("connection:") && lower.contains("close");
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; length];
                stream.read_exact(&mut body).await.ok()?;
                Some(close)
            };
            match answered.await {
                Some(close) => {
                    seen.answered += 1;
                    reused = true;
                    if close {
                        break;
                    }
                }
                None if reused => {
                    seen.lost_on_reused += 1;
                    break;
                }
                None => {
                    seen.lost_on_fresh += 1;
                    break;
                }
            }
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_closes_connections_only_between_requests() {
    let backend = serve_backend(Router::new().route("/{*rest}", routing::get(|| async { "ok" }))).await;
    let port = free_port();
    let (mut gateway, _dir) = start_gateway(
        port,
        &format!(
            "listen = \"127.0.0.1:{port}\"\ngrace_period_ms = 5000\ndrain_delay_ms = 500\n\
             [upstreams.b]\nendpoints = [\"http://{backend}\"]\n\
             [[routes]]\nprefix = \"/api\"\nupstream = \"b\"\naccess = \"public\"\n"
        ),
    )
    .await;

    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let stopping = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..8).map(|_| tokio::spawn(keep_alive_client(addr, stopping.clone()))).collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stopping.store(true, Ordering::SeqCst);
    assert!(Command::new("kill").args(["-TERM", &gateway.0.id().to_string()]).status().unwrap().success());

    let mut total = Seen::default();
    for client in clients {
        let seen = client.await.unwrap();
        total.answered += seen.answered;
        total.lost_on_reused += seen.lost_on_reused;
        total.lost_on_fresh += seen.lost_on_fresh;
    }
    let exit_by = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = gateway.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < exit_by, "the gateway did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!("{total:?}");
    assert!(status.success(), "{status}");
    assert!(total.answered > 100, "{total:?}");
    // Keep-alive connections are closed only between requests, after a
    // `Connection: close` response: nothing sent on one is lost.
    assert_eq!(total.lost_on_reused, 0, "{total:?}");
    // A fresh connection is served too, whether accepted before the listener
    // closed or still in the kernel's queue then. Left: a handshake completing
    // in the microseconds between the last accept and the close.
    assert!(total.lost_on_fresh <= 1, "{total:?}");
}

/// SIGHUP reloads the TLS certificate (the files are not looked at on their
/// own here), and the gateway keeps running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_tls_certificate() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use rustls::pki_types::{CertificateDer, ServerName};

    let dir = tempfile::tempdir().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_der = ca_params.self_signed(&ca_key).unwrap().der().clone();
    let issuer = Issuer::new(ca_params, ca_key);
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let issue = || -> CertificateDer<'static> {
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_owned()]).unwrap().signed_by(&leaf_key, &issuer).unwrap();
        std::fs::write(&cert, leaf.pem()).unwrap();
        std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
        leaf.der().clone()
    };
    let first = issue();

    let (port, tls_port) = (free_port(), free_port());
    let (mut gateway, _config_dir) = start_gateway(
        port,
        &format!(
            "listen = \"127.0.0.1:{port}\"\n[tls]\nlisten = \"127.0.0.1:{tls_port}\"\ncert_file = {:?}\nkey_file = {:?}\n\
             reload_interval_ms = 3600000\n[upstreams.none]\nendpoints = [\"http://127.0.0.1:9\"]\n\
             [[routes]]\nprefix = \"/api\"\nupstream = \"none\"\naccess = \"public\"\n",
            cert.display().to_string(),
            key.display().to_string()
        ),
    )
    .await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_der).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let served = || async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", tls_port)).await.ok()?;
        let tls = connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await.ok()?;
        Some(tls.get_ref().1.peer_certificates()?[0].clone())
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = served().await;
    while seen.is_none() {
        assert!(Instant::now() < deadline, "the TLS listener never answered");
        tokio::time::sleep(Duration::from_millis(25)).await;
        seen = served().await;
    }
    assert_eq!(seen.unwrap(), first);

    let second = issue();
    assert_eq!(served().await.unwrap(), first, "reloaded without being asked");
    assert!(Command::new("kill").args(["-HUP", &gateway.0.id().to_string()]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while served().await.as_ref() != Some(&second) {
        assert!(Instant::now() < deadline, "SIGHUP did not reload the certificate");
        assert!(gateway.0.try_wait().unwrap().is_none(), "the gateway exited on SIGHUP");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(gateway.0.try_wait().unwrap().is_none(), "the gateway exited on SIGHUP");
}
