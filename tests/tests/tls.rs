//! The gateway's HTTPS listener, with a CA made in the test: HTTP/1.1 and
//! HTTP/2 over TLS by ALPN, `X-Forwarded-Proto: https` upstream, the
//! certificate reloaded from its files (a bad one refused, the old one kept),
//! and plain HTTP or a silent client on the TLS port bounded without harm.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use demo_gateway::config::{RouteConfig, SniCertificate, TlsConfig, UpstreamConfig};
use demo_gateway::{Access, Config};
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tower_gateway_tests::{Gateway, Server, backend, closed_port, read_response};

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
    pem: String,
}

impl Ca {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let (der, pem) = (cert.der().clone(), cert.pem());
        Self { issuer: Issuer::new(params, key), der, pem }
    }

    /// A leaf for `localhost` and 127.0.0.1, written to `cert` and `key`; its DER.
    fn issue(&self, cert: &Path, key: &Path) -> CertificateDer<'static> {
        self.issue_for(&["localhost", "127.0.0.1"], cert, key)
    }

    /// A leaf for `names`, written to `cert` and `key`; its DER.
    fn issue_for(&self, names: &[&str], cert: &Path, key: &Path) -> CertificateDer<'static> {
        let params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = params.signed_by(&leaf_key, &self.issuer).unwrap();
        std::fs::write(cert, leaf.pem()).unwrap();
        std::fs::write(key, leaf_key.serialize_pem()).unwrap();
        leaf.der().clone()
    }

    fn connector(&self, alpn: &[&[u8]]) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsConnector::from(Arc::new(config))
    }
}

async fn connect(ca: &Ca, addr: SocketAddr, alpn: &[&[u8]]) -> std::io::Result<TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    ca.connector(alpn).connect(ServerName::try_from("localhost").unwrap(), tcp).await
}

/// Status and body of GET `path` over one TLS connection, HTTP/2 if ALPN chose it.
async fn get(stream: TlsStream<tokio::net::TcpStream>, path: &str) -> (u16, String, http::Version) {
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let request = Request::get(format!("https://localhost{path}")).body(Empty::<Bytes>::new()).unwrap();
    let response = if h2 {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        sender.send_request(request).await.unwrap()
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        let mut request = request;
        request.headers_mut().insert(http::header::HOST, http::HeaderValue::from_static("localhost"));
        *request.uri_mut() = path.parse().unwrap();
        sender.send_request(request).await.unwrap()
    };
    let (status, version) = (response.status().as_u16(), response.version());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned(), version)
}

/// Waits until the TLS listener at `addr` completes a handshake (it is up).
async fn until_tls_answers(ca: &Ca, addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while connect(ca, addr, &[b"http/1.1"]).await.is_err() {
        assert!(Instant::now() < deadline, "the TLS listener never answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How many certificate reloads `gw` has refused so far.
async fn reloads_refused(gw: &Gateway) -> u64 {
    let reply = tower_gateway_tests::Client::new().get(&format!("{}/metrics", gw.url())).await.unwrap();
    String::from_utf8_lossy(&reply.body)
        .lines()
        .find_map(|l| l.strip_prefix("gateway_tls_reloads_total{outcome=\"refused\"} "))
        .map_or(0, |v| v.parse::<u64>().unwrap())
}

struct Setup {
    _dir: tempfile::TempDir,
    ca: Ca,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    first: CertificateDer<'static>,
    tls: SocketAddr,
    redirect: SocketAddr,
    other: CertificateDer<'static>,
    gw: Gateway,
    _products: Server,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let ca = Ca::new();
    let first = ca.issue(&cert, &key);
    let (other_cert, other_key) = (dir.path().join("other.pem"), dir.path().join("other.key"));
    let other = ca.issue_for(&["other.test"], &other_cert, &other_key);
    let products = backend("products").await;
    let (tls, redirect) = (closed_port(), closed_port());
    let config = Config {
        tls: Some(TlsConfig {
            listen: tls.to_string(),
            cert_file: cert.clone(),
            key_file: key.clone(),
            handshake_timeout_ms: 500,
            max_handshakes: 1024,
            reload_interval_ms: 100,
            sni: vec![SniCertificate { names: vec!["Other.Test".into()], cert_file: other_cert, key_file: other_key }],
            hsts_max_age_secs: Some(600),
            redirect_listen: Some(redirect.to_string()),
            redirect_serves_grpc: false,
        }),
        upstreams: [("products".to_owned(), UpstreamConfig { endpoints: vec![products.url()], ..Default::default() })]
            .into(),
        routes: vec![RouteConfig {
            prefix: Some("/api/products".into()),
            upstream: "products".into(),
            access: Some(Access::Public),
            ..RouteConfig::default()
        }],
        limits: Default::default(),
        ..Config::default()
    };
    let gw = Gateway::start(config).await;
    until_tls_answers(&ca, tls).await;
    Setup { _dir: dir, ca, cert, key, first, tls, redirect, other, gw, _products: products }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_and_http2_over_tls_and_the_upstream_hears_https() {
    let s = setup().await;
    let (status, body, version) = get(connect(&s.ca, s.tls, &[b"http/1.1"]).await.unwrap(), "/healthz").await;
    assert_eq!((status, version), (200, http::Version::HTTP_11), "{body}");

    let stream = connect(&s.ca, s.tls, &[b"h2", b"http/1.1"]).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (status, body, version) = get(stream, "/api/products/1").await;
    assert_eq!((status, version), (200, http::Version::HTTP_2), "{body}");
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https");

    // The plain listener still says http.
    let reply = tower_gateway_tests::Client::new().get(&format!("{}/api/products/1", s.gw.url())).await.unwrap();
    assert_eq!(reply.json()["headers"]["x-forwarded-proto"], "http");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_certificate_is_served_without_a_restart_and_a_bad_one_is_refused() {
    let s = setup().await;
    let leaf = |stream: &TlsStream<tokio::net::TcpStream>| stream.get_ref().1.peer_certificates().unwrap()[0].clone();
    // An open connection, kept across the reloads.
    let kept = connect(&s.ca, s.tls, &[b"http/1.1"]).await.unwrap();
    assert_eq!(leaf(&kept), s.first);

    let second = s.ca.issue(&s.cert, &s.key);
    let deadline = Instant::now() + Duration::from_secs(10);
    while leaf(&connect(&s.ca, s.tls, &[b"http/1.1"]).await.unwrap()) != second {
        assert!(Instant::now() < deadline, "the new certificate was never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A broken pair: refused, the second keeps serving. (The files are written
    // one after the other, so a reload may already have refused a half-new pair.)
    let refused = || reloads_refused(&s.gw);
    let before = refused().await;
    std::fs::write(&s.cert, "-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while refused().await <= before {
        assert!(Instant::now() < deadline, "the bad certificate was never looked at");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(leaf(&connect(&s.ca, s.tls, &[b"http/1.1"]).await.unwrap()), second);
    // The connection opened before both reloads still works.
    assert_eq!(get(kept, "/healthz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_and_silent_clients_on_the_tls_port_are_bounded() {
    let s = setup().await;
    // Plain HTTP to the TLS port: closed, counted as a failed handshake.
    let mut plain = tokio::net::TcpStream::connect(s.tls).await.unwrap();
    plain.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the plain client was not closed");
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));

    // A client that connects and says nothing: closed at the handshake timeout (500 ms).
    let mut silent = tokio::net::TcpStream::connect(s.tls).await.unwrap();
    let started = Instant::now();
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut [0u8; 16])).await;
    assert!(read.is_ok(), "the silent client was not closed");
    assert!(started.elapsed() >= Duration::from_millis(400), "{:?}", started.elapsed());

    // Meanwhile, a proper client is served.
    assert_eq!(get(connect(&s.ca, s.tls, &[b"h2"]).await.unwrap(), "/healthz").await.0, 200);
    let reply = tower_gateway_tests::Client::new().get(&format!("{}/metrics", s.gw.url())).await.unwrap();
    let text = String::from_utf8_lossy(&reply.body).into_owned();
    assert!(text.contains("gateway_tls_handshakes_total{outcome=\"failed\"}"), "{text}");
    assert!(text.contains("gateway_tls_handshakes_total{outcome=\"timed_out\"}"), "{text}");
}

/// How many connections `gw` holds parked.
async fn parked(gw: &Gateway) -> i64 {
    gw.metric_now("gateway_connections_parked").await
}

/// A TLS client that named HTTP/1.1 by ALPN is parked between requests like a
/// plain one (hyper's buffers freed), and served again with whatever it sent
/// ahead or in pieces; an HTTP/2 one is not parked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tls_http1_connection_is_parked_and_served_again() {
    let s = setup().await;
    tower_gateway_tests::eventually("no connection left parked from start-up", async || parked(&s.gw).await == 0).await;
    let stream = connect(&s.ca, s.tls, &[b"http/1.1"]).await.unwrap();
    let mut stream = tokio::io::BufReader::new(stream);
    let get = |path: &str| format!("GET /api/products/{path} HTTP/1.1\r\nHost: localhost\r\n\r\n");

    // Parked before its first request, and after each answer.
    tower_gateway_tests::eventually("parked before it spoke", async || parked(&s.gw).await == 1).await;
    stream.write_all(get("one").as_bytes()).await.unwrap();
    let (status, body) = read_response(&mut stream).await;
    assert_eq!((status, body.contains("\"/one\"")), (200, true), "{body}");
    tower_gateway_tests::eventually("parked after its answer", async || parked(&s.gw).await == 1).await;

    // Two requests in one write: the second, read ahead, is answered too.
    stream.write_all(format!("{}{}", get("two"), get("three")).as_bytes()).await.unwrap();
    for path in ["\"/two\"", "\"/three\""] {
        let (status, body) = read_response(&mut stream).await;
        assert_eq!((status, body.contains(path)), (200, true), "{body}");
    }

    // A head in two pieces: served from the first, answered once whole.
    tower_gateway_tests::eventually("parked again", async || parked(&s.gw).await == 1).await;
    let whole = get("four");
    let (first, rest) = whole.split_at(20);
    stream.write_all(first.as_bytes()).await.unwrap();
    stream.flush().await.unwrap();
    tower_gateway_tests::eventually("taken up at its first bytes", async || parked(&s.gw).await == 0).await;
    stream.write_all(rest.as_bytes()).await.unwrap();
    let (status, body) = read_response(&mut stream).await;
    assert_eq!((status, body.contains("\"/four\"")), (200, true), "{body}");

    // HTTP/2 over TLS stays with hyper: the count is the HTTP/1.1 one's alone.
    let h2 = connect(&s.ca, s.tls, &[b"h2"]).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(h2)).await.unwrap();
    tokio::spawn(conn);
    let request = Request::get("https://localhost/api/products/h2").body(Empty::<Bytes>::new()).unwrap();
    assert_eq!(sender.send_request(request).await.unwrap().status(), 200);
    tower_gateway_tests::eventually("the HTTP/1.1 one parked", async || parked(&s.gw).await == 1).await;
    assert_eq!(parked(&s.gw).await, 1, "the HTTP/2 connection is not parked");

    // A client gone while parked is let go of.
    drop(stream);
    tower_gateway_tests::eventually("let go", async || parked(&s.gw).await == 0).await;
    drop(sender);
}

/// A client offering only TLS 1.0: refused with an alert, never served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_1_0_client_is_refused() {
    let s = setup().await;
    // A minimal TLS 1.0 ClientHello: version 3.1, one RSA/AES-128-CBC/SHA suite, no extensions.
    let mut hello = vec![0x03, 0x01];
    hello.extend_from_slice(&[7u8; 32]); // random
    hello.extend_from_slice(&[0x00, 0x00, 0x02, 0x00, 0x2f, 0x01, 0x00]); // session id, suites, compression
    let mut handshake = vec![0x01, 0x00, 0x00, u8::try_from(hello.len()).unwrap()];
    handshake.extend_from_slice(&hello);
    let mut record = vec![0x16, 0x03, 0x01, 0x00, u8::try_from(handshake.len()).unwrap()];
    record.extend_from_slice(&handshake);

    let mut old = tokio::net::TcpStream::connect(s.tls).await.unwrap();
    old.write_all(&record).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), old.read_to_end(&mut answer)).await.unwrap().ok();
    // The first record back is an alert (content type 21), not a ServerHello
    // (a handshake record, 22); then the connection is closed.
    assert_eq!(answer.first(), Some(&0x15), "{answer:?}");
}

/// An `https://` upstream trusted through the upstream's `ca_file`: served,
/// and told the request came over plain HTTP to the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_is_reached_through_its_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let (cert, key, ca_file) = (dir.path().join("up.pem"), dir.path().join("up.key"), dir.path().join("ca.pem"));
    ca.issue(&cert, &key);
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let chain = CertificateDer::pem_file_iter(&cert).unwrap().collect::<Result<Vec<_>, _>>().unwrap();
    let private = rustls::pki_types::PrivateKeyDer::from_pem_file(&key).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else { return };
                let svc = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let body = format!("secure upstream saw {}", req.uri());
                    Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(Bytes::from(body))))
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), svc).await;
            });
        }
    });
    let upstream = UpstreamConfig {
        endpoints: vec![format!("https://localhost:{port}")],
        ca_file: Some(ca_file),
        ..Default::default()
    };
    let config = Config {
        upstreams: [("secure".to_owned(), upstream)].into(),
        routes: vec![RouteConfig {
            prefix: Some("/api/secure".into()),
            upstream: "secure".into(),
            access: Some(Access::Public),
            ..RouteConfig::default()
        }],
        limits: Default::default(),
        ..Config::default()
    };
    let gw = Gateway::start(config).await;
    let reply = tower_gateway_tests::Client::new().get(&format!("{}/api/secure/x", gw.url())).await.unwrap();
    assert_eq!(reply.status, http::StatusCode::OK);
    assert_eq!(reply.body, "secure upstream saw /x");

    // A CA file that is not there is a configuration error naming the field.
    let mut bad = UpstreamConfig { endpoints: vec![format!("https://localhost:{port}")], ..Default::default() };
    bad.ca_file = Some(dir.path().join("missing.pem"));
    let config = Config { upstreams: [("secure".to_owned(), bad)].into(), ..Config::default() };
    let err = demo_gateway::Plan::compile(config).expect_err("a missing CA file is refused");
    assert!(err.to_string().contains("upstreams.secure.ca_file"), "{err}");
}

/// HSTS on HTTPS responses only, the plain redirect listener, and a second
/// certificate chosen by the name the client asks for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hsts_the_redirect_listener_and_sni() {
    let s = setup().await;
    let stream = connect(&s.ca, s.tls, &[b"http/1.1"]).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let request = Request::get("/healthz").header("host", "localhost").body(Empty::<Bytes>::new()).unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.headers()["strict-transport-security"], "max-age=600");
    let plain = tower_gateway_tests::Client::new().get(&format!("{}/healthz", s.gw.url())).await.unwrap();
    assert!(!plain.headers.contains_key("strict-transport-security"), "HSTS over plain HTTP");

    let mut stream = tokio::net::TcpStream::connect(s.redirect).await.unwrap();
    stream.write_all(b"GET /api/x?y=1 HTTP/1.1\r\nHost: example.com:8080\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 308"), "{answer}");
    let location = format!("location: https://example.com:{}/api/x?y=1\r\n", s.tls.port());
    assert!(answer.to_ascii_lowercase().contains(&location), "{answer}");

    let named = |name: &'static str| {
        let ca = &s.ca;
        async move {
            let tcp = tokio::net::TcpStream::connect(s.tls).await.unwrap();
            let stream = ca.connector(&[b"http/1.1"]).connect(ServerName::try_from(name).unwrap(), tcp).await.unwrap();
            stream.get_ref().1.peer_certificates().unwrap()[0].clone()
        }
    };
    assert_eq!(named("other.test").await, s.other);
    assert_eq!(named("localhost").await, s.first);
}

/// Opens `count` connections to `addr` that send nothing, and holds them.
async fn silent(addr: SocketAddr, count: usize) -> Vec<tokio::net::TcpStream> {
    let mut held = Vec::with_capacity(count);
    for _ in 0..count {
        held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    held
}

/// The status of `GET path` on a fresh connection, if one is answered within 1 s.
async fn probe(addr: SocketAddr, path: &str) -> Option<u16> {
    let ask = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        String::from_utf8_lossy(&response).split_whitespace().nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(1), ask).await.ok().flatten()
}

/// Asks the plain port for `/healthz` every 50 ms for `over`, each answer due
/// within 1 s; returns how many were asked.
async fn plain_port_serves_throughout(gw: &Gateway, over: Duration, during: &str) -> usize {
    let end = Instant::now() + over;
    let mut probes = 0;
    while Instant::now() < end {
        assert_eq!(probe(gw.addr(), "/healthz").await, Some(200), "probe {probes} of the plain port {during}");
        probes += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    probes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_on_the_tls_admin_and_redirect_ports_leave_the_plain_port_serving() {
    const CAP: usize = 50;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let ca = Ca::new();
    ca.issue(&cert, &key);
    let (tls, redirect, admin) = (closed_port(), closed_port(), closed_port());
    let config = Config {
        max_connections: CAP,
        // The floods below come from one address: this test is of each
        // listener's cap, not of the client's.
        max_connections_per_client: 100_000,
        admin_listen: Some(admin.to_string()),
        tls: Some(TlsConfig {
            max_handshakes: CAP,
            redirect_listen: Some(redirect.to_string()),
            ..TlsConfig::new(tls.to_string(), &cert, &key)
        }),
        upstreams: [(
            "none".to_owned(),
            UpstreamConfig { endpoints: vec![format!("http://{}", closed_port())], ..Default::default() },
        )]
        .into(),
        routes: vec![RouteConfig {
            prefix: Some("/api".into()),
            upstream: "none".into(),
            access: Some(Access::Public),
            ..RouteConfig::default()
        }],
        limits: Default::default(),
        ..Config::default()
    };
    let gw = Gateway::start(config).await;
    until_tls_answers(&ca, tls).await;

    // Twice the cap of silent handshakes: the plain port does not notice, and
    // a real TLS client still gets in (silent handshakes make room).
    let held = silent(tls, 2 * CAP).await;
    let probes = plain_port_serves_throughout(&gw, Duration::from_secs(2), "under a TLS handshake flood").await;
    let started = Instant::now();
    let stream = loop {
        if let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_secs(1), connect(&ca, tls, &[b"http/1.1"])).await {
            break stream;
        }
        assert!(started.elapsed() < Duration::from_secs(3), "no TLS client got in during the flood");
    };
    assert!(started.elapsed() < Duration::from_secs(2), "a TLS client waited {:?}", started.elapsed());
    assert_eq!(get(stream, "/healthz").await.0, 200);
    drop(held);

    // The admin and redirect listeners filled past their caps (64 and 1024).
    let held_admin = silent(admin, 64 + 16).await;
    let held_redirect = silent(redirect, 1024 + 16).await;
    let more = plain_port_serves_throughout(&gw, Duration::from_secs(2), "under admin and redirect floods").await;
    // Each of them still answers a real client once the silent ones make room.
    for (addr, path, status) in [(admin, "/metrics", 200), (redirect, "/anything", 308)] {
        let started = Instant::now();
        loop {
            let answered = probe(addr, path).await;
            if answered == Some(status) {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(3), "{addr} answered {answered:?} during its flood");
        }
    }
    drop((held_admin, held_redirect));
    println!("plain port: {probes} probes under the TLS flood, {more} under the admin and redirect floods");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_refuses_an_expired_certificate_and_one_for_other_names() {
    let s = setup().await;
    let leaf = |stream: &TlsStream<tokio::net::TcpStream>| stream.get_ref().1.peer_certificates().unwrap()[0].clone();
    let refused = || reloads_refused(&s.gw);
    let expired = |cert: &Path, key: &Path| {
        let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = params.signed_by(&leaf_key, &s.ca.issuer).unwrap();
        std::fs::write(cert, leaf.pem()).unwrap();
        std::fs::write(key, leaf_key.serialize_pem()).unwrap();
    };
    for (what, write) in [
        ("an expired certificate", Box::new(expired) as Box<dyn Fn(&Path, &Path)>),
        (
            "a certificate for other names",
            Box::new(|cert: &Path, key: &Path| drop(s.ca.issue_for(&["elsewhere.example"], cert, key))),
        ),
    ] {
        let before = refused().await;
        write(&s.cert, &s.key);
        let deadline = Instant::now() + Duration::from_secs(10);
        while refused().await <= before {
            assert!(Instant::now() < deadline, "{what} was never looked at");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The first refusal may be of a half-written pair: the old certificate
        // keeps serving across ten more reload intervals (100 ms) with both
        // files in place.
        for _ in 0..10 {
            let served = leaf(&connect(&s.ca, s.tls, &[b"http/1.1"]).await.unwrap());
            assert_eq!(served, s.first, "{what} was served");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
