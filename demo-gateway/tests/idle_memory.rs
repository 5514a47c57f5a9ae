//! What an idle connection costs the `demo-gateway` binary in each protocol it
//! speaks (HTTP/1.1 and h2c in the clear, HTTP/1.1 and HTTP/2 over TLS), each
//! served one request and then held silent, and that at the shipped defaults a
//! full flood of any of them keeps the gateway inside the Swarm task's memory
//! limit (`deploy/stack.yml`: 256 MiB).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpSocket, TcpStream};

const BIN: &str = env!("CARGO_BIN_EXE_demo-gateway");

/// The Swarm task's memory limit.
const LIMIT_MIB: f64 = 256.0;

/// Connections opened in each protocol's flood, from as many loopback
/// addresses as the per-client cap asks for.
const FLOOD: usize = 2_000;

/// Connections one source address opens (under the shipped per-client cap of 256).
const PER_ADDRESS: usize = 250;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    H2c,
    TlsHttp1,
    TlsH2,
    /// A TLS handshake begun with a ClientHello, never finished.
    TlsHandshake,
}

/// An idle client connection: whatever must stay alive to keep it open.
enum Held {
    Http1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    Http2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
    Tcp(#[allow(dead_code, reason = "held open, never read")] TcpStream),
}

struct Gateway {
    process: Killed,
    plain: SocketAddr,
    tls: SocketAddr,
    connector: tokio_rustls::TlsConnector,
    _dir: tempfile::TempDir,
}

/// The binary at its shipped defaults (a TLS listener beside the plain one).
async fn start() -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap().self_signed(&key).unwrap();
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let (port, tls_port) = (free_port(), free_port());
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\n[tls]\nlisten = \"127.0.0.1:{tls_port}\"\ncert_file = {:?}\nkey_file = {:?}\n\
             [upstreams.none]\nendpoints = [\"http://127.0.0.1:9\"]\n\
             [[routes]]\nprefix = \"/api\"\nupstream = \"none\"\naccess = \"public\"\n",
            cert_file.display().to_string(),
            key_file.display().to_string()
        ),
    )
    .unwrap();
    let process = Killed(
        Command::new(BIN)
            .args(["--config", config.to_str().unwrap()])
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(cert.der().to_vec())).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let gateway = Gateway {
        process,
        plain: ([127, 0, 0, 1], port).into(),
        tls: ([127, 0, 0, 1], tls_port).into(),
        connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while open(&gateway, Protocol::TlsHttp1, 1).await.is_none() || open(&gateway, Protocol::Http1, 1).await.is_none() {
        assert!(Instant::now() < deadline, "the gateway never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gateway
}

/// A connection from `127.0.0.{source}` in `protocol`, served one `/healthz`.
async fn open(gateway: &Gateway, protocol: Protocol, source: u8) -> Option<Held> {
    let tls = matches!(protocol, Protocol::TlsHttp1 | Protocol::TlsH2 | Protocol::TlsHandshake);
    let socket = TcpSocket::new_v4().ok()?;
    socket.bind(([127, 0, 0, source], 0).into()).ok()?;
    let mut tcp: TcpStream = socket.connect(if tls { gateway.tls } else { gateway.plain }).await.ok()?;
    if protocol == Protocol::TlsHandshake {
        // A ClientHello (what rustls would send), then nothing.
        let mut hello = Vec::new();
        let mut client = rustls::ClientConnection::new(
            gateway.connector.config().clone(),
            ServerName::try_from("localhost").unwrap(),
        )
        .ok()?;
        client.write_tls(&mut hello).ok()?;
        tokio::io::AsyncWriteExt::write_all(&mut tcp, &hello).await.ok()?;
        return Some(Held::Tcp(tcp));
    }
    let h2 = matches!(protocol, Protocol::H2c | Protocol::TlsH2);
    let request = || {
        let uri = if h2 { "https://localhost/healthz" } else { "/healthz" };
        http::Request::get(uri).header(http::header::HOST, "localhost").body(Empty::<Bytes>::new()).unwrap()
    };
    macro_rules! over {
        ($io:expr) => {{
            let io = TokioIo::new($io);
            if h2 {
                let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.ok()?;
                tokio::spawn(conn);
                let response = sender.send_request(request()).await.ok()?;
                (response.status() == 200).then_some(Held::Http2(sender))
            } else {
                let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.ok()?;
                tokio::spawn(conn);
                let response = sender.send_request(request()).await.ok()?;
                (response.status() == 200).then_some(Held::Http1(sender))
            }
        }};
    }
    if tls {
        let mut config = rustls::ClientConfig::clone(gateway.connector.config());
        config.alpn_protocols = vec![if h2 { b"h2".to_vec() } else { b"http/1.1".to_vec() }];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let stream = connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await.ok()?;
        over!(stream)
    } else {
        over!(tcp)
    }
}

/// Opens `count` connections in `protocol` from addresses after `first_source`
/// and returns them.
async fn open_many(gateway: &Gateway, protocol: Protocol, count: usize, first_source: usize) -> Vec<Held> {
    let mut held = Vec::with_capacity(count);
    for batch in 0..count.div_ceil(PER_ADDRESS) {
        let source = u8::try_from(first_source + batch).unwrap();
        let here = PER_ADDRESS.min(count - batch * PER_ADDRESS);
        let opening: Vec<_> = (0..here).map(|_| open(gateway, protocol, source)).collect();
        for opened in futures_util::future::join_all(opening).await {
            held.push(opened.unwrap_or_else(|| panic!("a {protocol:?} connection was refused")));
        }
    }
    held
}

/// Opens `count` connections in `protocol` and returns the gateway's RSS
/// before and with them open, in KiB.
async fn flood(gateway: &Gateway, protocol: Protocol, count: usize) -> (u64, u64) {
    let pid = gateway.process.0.id();
    let before = rss_kib(pid);
    let held = open_many(gateway, protocol, count, 2).await;
    // Idle: every response is out and plain HTTP/1.1 connections are parked.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let with = rss_kib(pid);
    assert!(held.iter().all(|h| match h {
        Held::Http1(sender) => !sender.is_closed(),
        Held::Http2(sender) => !sender.is_closed(),
        Held::Tcp(_) => true,
    }));
    drop(held);
    (before, with)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_idle_flood_of_any_protocol_fits_the_swarm_memory_limit_at_the_shipped_defaults() {
    let shipped = demo_gateway::Config::default();
    let handshakes = demo_gateway::config::TlsConfig::new("", "", "").max_handshakes;
    let mut baseline = 0u64;
    let mut worst: f64 = 0.0;
    let mut figures = Vec::new();
    for (protocol, count) in [
        (Protocol::Http1, FLOOD),
        (Protocol::H2c, FLOOD),
        (Protocol::TlsHttp1, FLOOD),
        (Protocol::TlsH2, FLOOD),
        (Protocol::TlsHandshake, handshakes),
    ] {
        // A gateway of its own each: memory the allocator kept from one flood
        // would make the next look cheaper than it is.
        let gateway = start().await;
        let (before, with) = flood(&gateway, protocol, count).await;
        let per_connection = (with.saturating_sub(before)) as f64 / count as f64;
        println!("{protocol:?}: {before} KiB at rest, {with} KiB with {count} idle: {per_connection:.1} KiB each");
        baseline = baseline.max(before);
        figures.push((protocol, per_connection));
        if protocol != Protocol::TlsHandshake {
            worst = worst.max(per_connection);
        }
    }
    // The worst case: every place under max_connections taken by the dearest
    // protocol, and every handshake place by a handshake.
    let handshake = figures.last().map_or(0.0, |f| f.1);
    let total = (baseline as f64 + worst * shipped.max_connections as f64 + handshake * handshakes as f64) / 1024.0;
    println!(
        "at the shipped defaults: {baseline} KiB + {} connections x {worst:.1} KiB + {handshakes} handshakes x \
         {handshake:.1} KiB = {total:.0} MiB (limit {LIMIT_MIB} MiB)",
        shipped.max_connections
    );
    assert!(total < LIMIT_MIB * 0.9, "{total:.0} MiB at the shipped defaults: {figures:?}");

    // And for real: every place taken by the dearest protocol, every
    // handshake place by a silent handshake.
    let gateway = start().await;
    let held = open_many(&gateway, Protocol::TlsH2, shipped.max_connections, 2).await;
    let first = 2 + shipped.max_connections.div_ceil(PER_ADDRESS);
    let handshaking = open_many(&gateway, Protocol::TlsHandshake, handshakes, first).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let rss = rss_kib(gateway.process.0.id()) as f64 / 1024.0;
    println!("{} idle HTTP/2-over-TLS connections and {handshakes} handshakes: {rss:.0} MiB", held.len());
    assert!(rss < LIMIT_MIB * 0.9, "{rss:.0} MiB under a full flood at the shipped defaults");
    drop((held, handshaking));
}
