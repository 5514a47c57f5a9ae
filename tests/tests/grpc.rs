//! gRPC through the gateway, from tonic's own client to tonic's own server
//! (`grpc.health.v1` and server reflection), over HTTP/2 both sides: unary,
//! server streaming and bidirectional calls with their trailers, the
//! gateway's refusals as gRPC statuses, and the client's deadline.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use demo_gateway::Config;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::{Channel, Server};
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};
use tower_gateway_auth::{Algorithm, TokenIssuer};
use tower_gateway_tests::{Gateway, test_ca};

const SECRET: &str = "a grpc test secret of at least 32 bytes";

/// A tonic server with health (`inventory.v1.Inventory` serving) and
/// reflection, on a loopback port; stopped with its task.
async fn grpc_server() -> (String, tokio::task::JoinHandle<()>) {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_service_status("inventory.v1.Inventory", ServingStatus::Serving).await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let task = tokio::spawn(async move {
        // The reporter lives as long as the server, so Watch streams stay open.
        let _reporter = reporter;
        Server::builder().add_service(health).add_service(reflection).serve_with_incoming(incoming).await.unwrap();
    });
    (url, task)
}

/// An HTTP/2 server that takes every call and never answers.
async fn silent_h2() -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_: Request<Incoming>| {
                    std::future::pending::<Result<Response<Full<Bytes>>, Infallible>>()
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (url, task)
}

struct Setup {
    gateway: Gateway,
    /// With TLS: the CA (PEM), the HTTPS listener and the redirect listener.
    tls: Option<(String, std::net::SocketAddr, std::net::SocketAddr)>,
    token: String,
    _servers: (tokio::task::JoinHandle<()>, tokio::task::JoinHandle<()>),
    _dir: tempfile::TempDir,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self._servers.0.abort();
        self._servers.1.abort();
    }
}

async fn setup() -> Setup {
    setup_with(false).await
}

/// With `tls`: HTTPS (HTTP/2 by ALPN) beside the plain listener, and a
/// redirect listener that serves gRPC calls (h2c) and redirects the rest.
async fn setup_with(tls: bool) -> Setup {
    let (grpc, grpc_task) = grpc_server().await;
    let (slow, slow_task) = silent_h2().await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let text = format!(
        "[jwt]\nsecret_file = {secret:?}\n\
         [upstreams.grpc]\nendpoints = [{grpc:?}]\nhttp2 = true\n\
         [upstreams.slow]\nendpoints = [{slow:?}]\nhttp2 = true\ntimeout_ms = 30000\n\
         [[routes]]\nprefix = \"/grpc.health.v1.Health\"\nstrip_prefix = \"/\"\nupstream = \"grpc\"\naccess = \"public\"\n\
         [[routes]]\nprefix = \"/grpc.reflection.v1.ServerReflection\"\nstrip_prefix = \"/\"\nupstream = \"grpc\"\naccess = \"token\"\n\
         [[routes]]\nprefix = \"/slow.v1.Slow\"\nstrip_prefix = \"/\"\nupstream = \"slow\"\naccess = \"public\"\n"
    );
    let mut config = Config::from_toml(&text, "the test", |_| None).unwrap();
    let tls = tls.then(|| {
        let (ca, cert, key) = test_ca(dir.path());
        let (listen, redirect) = (tower_gateway_tests::closed_port(), tower_gateway_tests::closed_port());
        config.tls = Some(demo_gateway::config::TlsConfig {
            redirect_listen: Some(redirect.to_string()),
            redirect_serves_grpc: true,
            ..demo_gateway::config::TlsConfig::new(listen.to_string(), cert, key)
        });
        (ca, listen, redirect)
    });
    let gateway = Gateway::start(config).await;
    let token = TokenIssuer::hmac(Algorithm::HS256, SECRET.as_bytes()).unwrap().issue("7", None, &[]).unwrap();
    Setup { gateway, tls, token, _servers: (grpc_task, slow_task), _dir: dir }
}

/// A tonic channel to `url`, trusting `ca` if given, once the listener answers.
async fn connect(url: String, ca: Option<&str>) -> Channel {
    let mut endpoint = Channel::from_shared(url).unwrap();
    if let Some(ca) = ca {
        let tls = tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(ca));
        endpoint = endpoint.tls_config(tls).unwrap();
    }
    for _ in 0..250 {
        if let Ok(channel) = endpoint.connect().await {
            return channel;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{:?} did not answer within 5 s", endpoint.uri());
}

/// A tonic channel to the gateway over h2c (prior knowledge).
async fn channel(setup: &Setup) -> Channel {
    Channel::from_shared(setup.gateway.url()).unwrap().connect().await.unwrap()
}

#[tokio::test]
async fn unary_and_server_streaming_calls_pass_with_their_status() {
    let setup = setup().await;
    let mut health = HealthClient::new(channel(&setup).await);
    let serving = health.check(HealthCheckRequest { service: "inventory.v1.Inventory".into() }).await.unwrap();
    assert_eq!(serving.into_inner().status, ServingStatus::Serving as i32);
    // The upstream's own error status arrives in its trailers, intact.
    let unknown = health.check(HealthCheckRequest { service: "no.such.Service".into() }).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    // Server streaming: Watch sends the current status and stays open.
    let mut watch =
        health.watch(HealthCheckRequest { service: "inventory.v1.Inventory".into() }).await.unwrap().into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), watch.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);
}

#[tokio::test]
async fn a_bidirectional_stream_passes_both_ways_behind_a_token_and_is_refused_without_one() {
    let setup = setup().await;
    let mut reflection = ServerReflectionClient::new(channel(&setup).await);
    let ask = |symbol: &str| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(symbol.into())),
    };
    let list = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };

    let refused = reflection.server_reflection_info(tokio_stream::iter([list.clone()])).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    // The gateway's own reason, not one inferred from an HTTP status.
    assert!(refused.message().contains("token"), "{refused:?}");
    assert_eq!(refused.metadata().get("www-authenticate").map(|v| v.to_str().unwrap()), Some("Bearer"), "{refused:?}");

    // Three requests, sent as a stream; two answers read as one, then the
    // server's error status for the third, from the stream's trailers.
    let mut call = tonic::Request::new(tokio_stream::iter([list, ask("grpc.health.v1.Health"), ask("no.Such")]));
    call.metadata_mut().insert("authorization", format!("Bearer {}", setup.token).parse().unwrap());
    let results: Vec<Result<ServerReflectionResponse, tonic::Status>> =
        reflection.server_reflection_info(call).await.unwrap().into_inner().collect().await;
    assert_eq!(results.len(), 3, "{results:?}");
    let status = results[2].as_ref().unwrap_err();
    assert_eq!((status.code(), status.message()), (Code::NotFound, "symbol 'no.Such' not found"));
    let answers: Vec<&ServerReflectionResponse> = results[..2].iter().map(|r| r.as_ref().unwrap()).collect();
    let Some(MessageResponse::ListServicesResponse(services)) = &answers[0].message_response else { panic!() };
    let names: Vec<&str> = services.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
    assert!(matches!(answers[1].message_response, Some(MessageResponse::FileDescriptorResponse(_))));
}

#[tokio::test]
async fn over_tls_and_on_the_redirect_listener_calls_pass_and_the_rest_is_redirected() {
    let setup = setup_with(true).await;
    let (ca, listen, redirect) = setup.tls.clone().unwrap();
    let asked = || HealthCheckRequest { service: "inventory.v1.Inventory".into() };
    // HTTPS, HTTP/2 by ALPN.
    let mut health = HealthClient::new(connect(format!("https://{listen}"), Some(&ca)).await);
    assert_eq!(health.check(asked()).await.unwrap().into_inner().status, ServingStatus::Serving as i32);
    // The redirect listener: gRPC served over h2c, anything else 308 to HTTPS.
    let mut plain = HealthClient::new(connect(format!("http://{redirect}"), None).await);
    assert_eq!(plain.check(asked()).await.unwrap().into_inner().status, ServingStatus::Serving as i32);
    let redirected = tower_gateway_tests::Client::new()
        .get(&format!("http://{redirect}/grpc.health.v1.Health/Check"))
        .await
        .unwrap();
    assert_eq!(redirected.status, http::StatusCode::PERMANENT_REDIRECT);
}

#[tokio::test]
async fn a_service_no_route_names_is_unimplemented_at_the_gateway() {
    let setup = setup().await;
    // Health's client, sent to a path the gateway routes nowhere.
    let channel = channel(&setup).await;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/unrouted.v1.Nothing/Call");
    let codec = tonic_prost::ProstCodec::<HealthCheckRequest, tonic_health::pb::HealthCheckResponse>::default();
    let status = grpc.unary(tonic::Request::new(HealthCheckRequest::default()), path, codec).await.unwrap_err();
    assert_eq!((status.code(), status.message()), (Code::Unimplemented, "no service is routed at this path"));
}

#[tokio::test]
async fn the_clients_deadline_ends_a_call_the_upstream_never_answers() {
    let setup = setup().await;
    let stream = tokio::net::TcpStream::connect(setup.gateway.addr()).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    // An empty message: no compression, length 0.
    let req = Request::post(format!("{}/slow.v1.Slow/Call", setup.gateway.url()))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "300m")
        .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
        .unwrap();
    let started = Instant::now();
    let res = send.send_request(req).await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["grpc-status"], "4", "DEADLINE_EXCEEDED");
    // The client's 300 ms, not the upstream's 30 s.
    assert!(elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(10), "{elapsed:?}");
    assert!(res.into_body().collect().await.unwrap().to_bytes().is_empty(), "trailers-only");
}

/// An HTTP/2 upstream gets one connection (from each gateway worker: one here),
/// and at most as many requests at once as its `SETTINGS_MAX_CONCURRENT_STREAMS`:
/// the rest wait their turn on that connection and are all answered.
#[tokio::test]
async fn an_http2_upstream_gets_one_connection_bounded_by_its_max_concurrent_streams() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let (connections, in_flight, most) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (c, f, m, r) = (connections.clone(), in_flight.clone(), most.clone(), release.clone());
    let server = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let (f, m, r) = (f.clone(), m.clone(), r.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_: Request<Incoming>| {
                    let (f, m, r) = (f.clone(), m.clone(), r.clone());
                    async move {
                        let now = f.fetch_add(1, Ordering::SeqCst) + 1;
                        m.fetch_max(now, Ordering::SeqCst);
                        r.acquire().await.unwrap().forget();
                        f.fetch_sub(1, Ordering::SeqCst);
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .max_concurrent_streams(2)
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let text = format!(
        "workers = 1\n[upstreams.h2]\nendpoints = [{url:?}]\nhttp2 = true\n\
         [[routes]]\nprefix = \"/items\"\nupstream = \"h2\"\naccess = \"public\"\n"
    );
    let gateway = Gateway::start(Config::from_toml(&text, "the test", |_| None).unwrap()).await;
    let client = tower_gateway_tests::Client::new();
    // A first request opens the connection.
    release.add_permits(1);
    let probe = client.get(&format!("{}/items/x", gateway.url())).await.unwrap();
    assert_eq!(probe.status, http::StatusCode::OK, "{}", String::from_utf8_lossy(&probe.body));
    let requests: Vec<_> = (0..8)
        .map(|i| {
            let (client, url) = (client.clone(), format!("{}/items/{i}", gateway.url()));
            tokio::spawn(async move { client.get(&url).await.unwrap().status })
        })
        .collect();
    for _ in 0..250 {
        if in_flight.load(Ordering::SeqCst) >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Held there: no third stream is opened, and no second connection.
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    assert_eq!((in_flight.load(Ordering::SeqCst), connections.load(Ordering::SeqCst)), (2, 1));
    release.add_permits(8);
    for request in requests {
        assert_eq!(request.await.unwrap(), http::StatusCode::OK);
    }
    assert_eq!((most.load(Ordering::SeqCst), connections.load(Ordering::SeqCst)), (2, 1));
    server.abort();
}

/// A health service that answers UNAVAILABLE to its first `failures` calls.
#[derive(Debug, Clone)]
struct Flaky {
    calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    failures: usize,
}

#[tonic::async_trait]
impl tonic_health::pb::health_server::Health for Flaky {
    type WatchStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<tonic_health::pb::HealthCheckResponse, tonic::Status>> + Send>,
    >;

    async fn check(
        &self,
        _: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<tonic_health::pb::HealthCheckResponse>, tonic::Status> {
        if self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < self.failures {
            return Err(tonic::Status::unavailable("warming up"));
        }
        Ok(tonic::Response::new(tonic_health::pb::HealthCheckResponse { status: ServingStatus::Serving as i32 }))
    }

    async fn watch(
        &self,
        _: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("not here"))
    }
}

/// A gRPC call is retried only when configured for its method and status: the
/// configured route gets SERVING after two UNAVAILABLE attempts, an unconfigured
/// one passes the first UNAVAILABLE on.
#[tokio::test]
async fn grpc_calls_are_retried_only_for_configured_methods_and_statuses() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let mut servers = Vec::new();
    let mut urls = Vec::new();
    let mut counters = Vec::new();
    for _ in 0..2 {
        let calls = Arc::new(AtomicUsize::new(0));
        let flaky = Flaky { calls: calls.clone(), failures: 2 };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        urls.push(format!("http://{}", listener.local_addr().unwrap()));
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let service = tonic_health::pb::health_server::HealthServer::new(flaky);
        servers.push(tokio::spawn(async move {
            Server::builder().add_service(service).serve_with_incoming(incoming).await.unwrap();
        }));
        counters.push(calls);
    }
    let text = format!(
        "[upstreams.retried]\nendpoints = [{:?}]\nhttp2 = true\n\
         retry = {{ attempts = 3, backoff_ms = 10, max_backoff_ms = 10, grpc_statuses = [\"unavailable\"], \
           grpc_methods = [\"/grpc.health.v1.Health/Check\"] }}\n\
         [upstreams.plain]\nendpoints = [{:?}]\nhttp2 = true\n\
         [[routes]]\nprefix = \"/grpc.health.v1.Health\"\nstrip_prefix = \"/\"\nupstream = \"retried\"\naccess = \"public\"\n\
         [[routes]]\nprefix = \"/grpc.health.v1.Health\"\nhostnames = [\"plain.test\"]\nstrip_prefix = \"/\"\nupstream = \"plain\"\naccess = \"public\"\n",
        urls[0], urls[1]
    );
    let gateway = Gateway::start(Config::from_toml(&text, "the test", |_| None).unwrap()).await;
    let asked = || HealthCheckRequest { service: String::new() };

    let retried = Channel::from_shared(gateway.url()).unwrap().connect().await.unwrap();
    let answer = HealthClient::new(retried).check(asked()).await.unwrap();
    assert_eq!(answer.into_inner().status, ServingStatus::Serving as i32);
    assert_eq!(counters[0].load(Ordering::SeqCst), 3, "two UNAVAILABLE attempts, then SERVING");

    let plain = Channel::from_shared(gateway.url())
        .unwrap()
        .origin("http://plain.test".parse().unwrap())
        .connect()
        .await
        .unwrap();
    let refused = HealthClient::new(plain).check(asked()).await.unwrap_err();
    assert_eq!((refused.code(), refused.message()), (Code::Unavailable, "warming up"));
    assert_eq!(counters[1].load(Ordering::SeqCst), 1, "not configured: not retried");
    for server in servers {
        server.abort();
    }
}
