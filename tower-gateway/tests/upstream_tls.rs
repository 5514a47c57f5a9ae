//! `https://` upstreams: verified against a CA made in the test (trusted through
//! `Builder::tls_config`), SNI set to the endpoint's host; an upstream whose
//! certificate the proxy does not trust is a 502 naming the TLS failure, and
//! the upstream never sees the request.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tower::{ServiceBuilder, ServiceExt};
use tower_gateway::balance::Endpoints;
use tower_gateway::error::{UpstreamError, UpstreamErrorKind};
use tower_gateway::{Proxy, RoundRobinLayer};

/// A CA, and an HTTPS server for `localhost` signed by it that answers with
/// the SNI name it was asked for; how many requests reached it.
async fn https_upstream() -> (CertificateDer<'static>, SocketAddr, Arc<AtomicUsize>) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_der = ca_params.self_signed(&ca_key).unwrap().der().clone();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".into()]).unwrap().signed_by(&leaf_key, &issuer).unwrap();
    let key = PrivateKeyDer::from_pem_slice(leaf_key.serialize_pem().as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, counter) = (acceptor.clone(), counter.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else { return };
                let sni = tls.get_ref().1.server_name().unwrap_or("-").to_owned();
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let body = format!("sni={sni} path={}", req.uri());
                    async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body)))) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (ca_der, addr, hits)
}

fn trusting(ca: CertificateDer<'static>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

#[tokio::test]
async fn an_https_upstream_signed_by_a_trusted_ca_is_served() {
    let (ca, addr, hits) = https_upstream().await;
    let endpoints = Endpoints::new([format!("https://localhost:{}", addr.port())]).unwrap();
    let route = ServiceBuilder::new()
        .layer(RoundRobinLayer::new(endpoints))
        .service(Proxy::builder().tls_config(trusting(ca)).build());
    let response = route.oneshot(Request::get("/items?x=1").body(Full::<Bytes>::default()).unwrap()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "sni=localhost path=/items?x=1");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_upstream_with_an_untrusted_certificate_is_a_502_naming_tls() {
    let (_, addr, hits) = https_upstream().await;
    let endpoints = Endpoints::new([format!("https://localhost:{}", addr.port())]).unwrap();
    // The default roots (Mozilla's) do not know the test's CA.
    let route = ServiceBuilder::new().layer(RoundRobinLayer::new(endpoints)).service(Proxy::new());
    let response = route.oneshot(Request::get("/items").body(Full::<Bytes>::default()).unwrap()).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(response.extensions().get::<UpstreamError>().unwrap().kind(), UpstreamErrorKind::Tls);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["error"]["code"], "upstream_tls_failed");
    assert_eq!(hits.load(Ordering::SeqCst), 0, "nothing reached the upstream");
}
