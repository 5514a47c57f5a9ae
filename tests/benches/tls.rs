//! What HTTPS costs at the gateway, as ratios against plain HTTP in the same run
//! and through the same gateway (one backend, one route, HTTP/1.1 on both
//! listeners): throughput over keep-alive connections, and new connections per
//! second when every request opens its own (the handshake's cost: TCP + TLS 1.3
//! with an ECDSA P-256 certificate, against TCP alone). Bounded: a fixed number
//! of requests, rounds in alternating order, medians.
//!
//! `cargo bench -p tower-gateway-tests --bench tls`

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use demo_gateway::config::{RouteConfig, TlsConfig, UpstreamConfig};
use demo_gateway::{Access, Config};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tower_gateway_tests::{Gateway, get_ok, http1_connection, median, product_backend};

/// Keep-alive: this many connections, each sending its share of the requests.
const CONNECTIONS: usize = 16;
const KEEP_ALIVE_REQUESTS: usize = 20_000;
/// New connections: one request on each, this many at a time.
const NEW_CONNECTIONS: usize = 2_000;
const AT_ONCE: usize = 8;
const ROUNDS: usize = 4;

/// Sends `requests` GETs of `path` over one HTTP/1.1 connection on `io`.
async fn on_connection<I>(io: I, path: &str, requests: usize)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut sender = http1_connection(io).await.expect("an HTTP/1.1 handshake");
    for _ in 0..requests {
        get_ok(&mut sender, "localhost", path, None).await.expect("a 2xx response");
    }
}

/// Opens a connection to `addr`, over TLS when `tls` is given.
async fn connect(addr: SocketAddr, tls: Option<&TlsConnector>, path: &str, requests: usize) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.set_nodelay(true).unwrap();
    match tls {
        Some(tls) => {
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            on_connection(tls.connect(name, tcp).await.expect("a TLS handshake"), path, requests).await;
        }
        None => on_connection(tcp, path, requests).await,
    }
}

/// Requests per second over `CONNECTIONS` keep-alive connections.
async fn keep_alive(addr: SocketAddr, tls: Option<TlsConnector>) -> f64 {
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CONNECTIONS {
        let tls = tls.clone();
        tasks.spawn(
            async move { connect(addr, tls.as_ref(), "/api/products/1", KEEP_ALIVE_REQUESTS / CONNECTIONS).await },
        );
    }
    tasks.join_all().await;
    KEEP_ALIVE_REQUESTS as f64 / start.elapsed().as_secs_f64()
}

/// New connections per second, one request on each, `AT_ONCE` at a time.
async fn new_connections(addr: SocketAddr, tls: Option<TlsConnector>) -> f64 {
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..AT_ONCE {
        let tls = tls.clone();
        tasks.spawn(async move {
            for _ in 0..NEW_CONNECTIONS / AT_ONCE {
                connect(addr, tls.as_ref(), "/api/products/1", 1).await;
            }
        });
    }
    tasks.join_all().await;
    NEW_CONNECTIONS as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let backend = product_backend().await;

    // A CA and a certificate for localhost, made for the run.
    let dir = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "bench CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap().signed_by(&key, &issuer).unwrap();
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, leaf.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tls = TlsConnector::from(Arc::new(client));

    let tls_addr = tower_gateway_tests::closed_port();
    let config = Config {
        listen: "127.0.0.1:0".into(),
        tls: Some(TlsConfig {
            reload_interval_ms: 60_000,
            ..TlsConfig::new(tls_addr.to_string(), cert_file, key_file)
        }),
        upstreams: [("products".to_owned(), UpstreamConfig { endpoints: vec![backend.url()], ..Default::default() })]
            .into(),
        limits: Default::default(),
        routes: vec![RouteConfig {
            prefix: Some("/api/products".into()),
            upstream: "products".into(),
            access: Some(Access::Public),
            ..RouteConfig::default()
        }],
        ..Config::default()
    };
    let gateway = Gateway::start(config).await;
    let plain_addr = gateway.addr();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(tls_addr).await.is_err() {
        assert!(Instant::now() < deadline, "the TLS listener never came up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Warm up, then rounds in alternating order (plain, TLS; TLS, plain; ...).
    keep_alive(plain_addr, None).await;
    keep_alive(tls_addr, Some(tls.clone())).await;
    let (mut plain_ka, mut tls_ka, mut plain_new, mut tls_new) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        if round % 2 == 0 {
            plain_ka.push(keep_alive(plain_addr, None).await);
            tls_ka.push(keep_alive(tls_addr, Some(tls.clone())).await);
            plain_new.push(new_connections(plain_addr, None).await);
            tls_new.push(new_connections(tls_addr, Some(tls.clone())).await);
        } else {
            tls_new.push(new_connections(tls_addr, Some(tls.clone())).await);
            plain_new.push(new_connections(plain_addr, None).await);
            tls_ka.push(keep_alive(tls_addr, Some(tls.clone())).await);
            plain_ka.push(keep_alive(plain_addr, None).await);
        }
    }
    let ratios = |tls: &[f64], plain: &[f64]| -> Vec<f64> { tls.iter().zip(plain).map(|(t, p)| t / p).collect() };
    let (ka, new) = (ratios(&tls_ka, &plain_ka), ratios(&tls_new, &plain_new));
    let (plain_new_m, tls_new_m) = (median(&plain_new), median(&tls_new));
    println!("median of {ROUNDS} rounds, alternating order; ratios taken within each round (min–max)");
    println!("{:<44} {:>10} {:>10} {:>16}", "", "plain", "TLS", "TLS / plain");
    let row = |name: &str, plain: f64, tls: f64, ratios: &[f64]| {
        let (lo, hi) = (ratios.iter().copied().fold(f64::MAX, f64::min), ratios.iter().copied().fold(0.0, f64::max));
        println!("{name:<44} {plain:>10.0} {tls:>10.0} {:>6.2} ({lo:.2}–{hi:.2})", median(ratios));
    };
    row(&format!("keep-alive requests/s ({CONNECTIONS} connections)"), median(&plain_ka), median(&tls_ka), &ka);
    row(&format!("new connections/s (1 request each, {AT_ONCE} at once)"), plain_new_m, tls_new_m, &new);
    println!(
        "a TLS handshake adds {:.0} µs of wall time per new connection here (client, gateway and backend share the cores)",
        (AT_ONCE as f64) * 1e6 * (1.0 / tls_new_m - 1.0 / plain_new_m)
    );
}
