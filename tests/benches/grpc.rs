//! HTTP/2 and gRPC upstreams, each next to its baseline in the same run, over
//! loopback:
//!
//! - **an HTTP/2 upstream** (h2c, one multiplexed connection) next to the
//!   same backend reached over HTTP/1.1 (a pool of connections), through the
//!   same gateway, by the same HTTP/1.1 clients;
//! - **gRPC unary** (`grpc.health.v1.Health/Check`) through the gateway next to
//!   the same tonic client calling the same tonic server directly.
//!
//! Rounds alternate their order (ABAB, BABA) so drift hits both alike; the
//! ratios are of medians. Bounded: a fixed number of requests.
//!
//! `cargo bench -p tower-gateway-tests --bench grpc`

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tonic::transport::{Channel, Server};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tower_gateway_tests::{get_throughput, median};

const CONCURRENCY: usize = 16;
const REQUESTS: usize = 20_000;
const ROUNDS: usize = 4;

/// The benchmarks' product, served over HTTP/1.1 and h2c (prior knowledge) alike.
async fn product_backend() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                        b"{\"id\":1,\"name\":\"Laptop\",\"price\":999.99}",
                    ))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    url
}

/// A tonic health server; its URL.
async fn grpc_backend() -> String {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_service_status("bench", tonic_health::ServingStatus::Serving).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    // No Nagle on the server's sockets, as the gateway has none on its own.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tokio::spawn(async move {
        let _reporter = reporter;
        Server::builder().add_service(health).serve_with_incoming(incoming).await.unwrap();
    });
    url
}

/// Requests per second for `REQUESTS` GETs of `url` from `CONCURRENCY` concurrent clients.
async fn http_throughput(url: &str) -> f64 {
    get_throughput(url, CONCURRENCY, REQUESTS).await
}

/// Calls per second: `REQUESTS` health checks from `CONCURRENCY` tasks on one channel.
async fn grpc_throughput(channel: &Channel) -> f64 {
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        let mut client = HealthClient::new(channel.clone());
        tasks.spawn(async move {
            for _ in 0..REQUESTS / CONCURRENCY {
                let answer = client.check(HealthCheckRequest { service: "bench".into() }).await.unwrap();
                assert_eq!(answer.into_inner().status, tonic_health::ServingStatus::Serving as i32);
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    REQUESTS as f64 / start.elapsed().as_secs_f64()
}

/// Medians of `ROUNDS` rounds of `a` and `b`, alternating which goes first.
async fn side_by_side(mut a: impl AsyncFnMut() -> f64, mut b: impl AsyncFnMut() -> f64) -> (f64, f64) {
    a().await;
    b().await;
    let (mut ra, mut rb) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        if round % 2 == 0 {
            ra.push(a().await);
            rb.push(b().await);
        } else {
            rb.push(b().await);
            ra.push(a().await);
        }
    }
    (median(&ra), median(&rb))
}

#[tokio::main]
async fn main() {
    let (product, grpc) = (product_backend().await, grpc_backend().await);
    let text = format!(
        "[upstreams.h1]\nendpoints = [{product:?}]\n\
         [upstreams.h2]\nendpoints = [{product:?}]\nhttp2 = true\n\
         [upstreams.grpc]\nendpoints = [{grpc:?}]\nhttp2 = true\n\
         [[routes]]\nprefix = \"/h1\"\nupstream = \"h1\"\naccess = \"public\"\n\
         [[routes]]\nprefix = \"/h2\"\nupstream = \"h2\"\naccess = \"public\"\n\
         [[routes]]\nprefix = \"/grpc.health.v1.Health\"\nstrip_prefix = \"/\"\nupstream = \"grpc\"\naccess = \"public\"\n"
    );
    let mut config = demo_gateway::Config::from_toml(&text, "the bench", |_| None).unwrap();
    // Every request of the run, from one address: no limit applies here.
    config.limits.clear();
    let plan = demo_gateway::Plan::compile(config).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(demo_gateway::serve(plan, listener, async move {
        let _ = stopped.await;
    }));

    let (h1, h2) = (format!("http://{addr}/h1/1"), format!("http://{addr}/h2/1"));
    let (h1_rps, h2_rps) = side_by_side(async || http_throughput(&h1).await, async || http_throughput(&h2).await).await;

    let direct = Channel::from_shared(grpc).unwrap().connect().await.unwrap();
    let gateway = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let (direct_cps, gateway_cps) =
        side_by_side(async || grpc_throughput(&direct).await, async || grpc_throughput(&gateway).await).await;

    println!(
        "{REQUESTS} requests from {CONCURRENCY} concurrent clients, median of {ROUNDS} rounds (alternating order)"
    );
    println!("{:<44} {:>12} {:>8}", "path", "per second", "ratio");
    println!("{:<44} {h1_rps:>12.0} {:>8.2}", "gateway -> HTTP/1.1 upstream (pool)", 1.0);
    println!("{:<44} {h2_rps:>12.0} {:>8.2}", "gateway -> HTTP/2 upstream (h2c, multiplexed)", h2_rps / h1_rps);
    println!("{:<44} {direct_cps:>12.0} {:>8.2}", "gRPC unary, tonic client -> server directly", 1.0);
    println!(
        "{:<44} {gateway_cps:>12.0} {:>8.2}",
        "gRPC unary, through the gateway (h2c both)",
        gateway_cps / direct_cps
    );

    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), running).await;
}
