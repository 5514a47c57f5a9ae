//! Throughput through the gateway next to the same backend reached directly, in
//! one run, over loopback: the cost of the whole stack (tower-http layers,
//! StripPrefix, Retry, RoundRobin, Proxy) as a ratio. Bounded: a fixed number of
//! requests from a fixed number of connections.
//!
//! `cargo bench -p tower-gateway-tests --bench gateway`

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use demo_gateway::config::{RouteConfig, UpstreamConfig};
use demo_gateway::{Access, Config, Plan};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower_gateway_tests::serve;

const CONNECTIONS: usize = 16;
const REQUESTS: usize = 20_000;

/// Requests per second for `REQUESTS` GETs of `url` from `CONNECTIONS` concurrent clients.
async fn throughput(url: &str) -> f64 {
    let client: Client<_, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).pool_max_idle_per_host(CONNECTIONS).build_http();
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CONNECTIONS {
        let (client, uri) = (client.clone(), url.parse::<http::Uri>().unwrap());
        tasks.spawn(async move {
            for _ in 0..REQUESTS / CONNECTIONS {
                let res = client.get(uri.clone()).await.unwrap();
                assert!(res.status().is_success());
                res.into_body().collect().await.unwrap();
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    REQUESTS as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let backend = serve(tower::service_fn(|_: Request<Incoming>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
            b"{\"id\":1,\"name\":\"Laptop\",\"price\":999.99}",
        ))))
    }))
    .await;

    let config = Config {
        listen: "127.0.0.1:0".into(),
        upstreams: [("products".to_owned(), UpstreamConfig { endpoints: vec![backend.url()], ..Default::default() })]
            .into(),
        routes: vec![RouteConfig {
            prefix: Some("/api/products".into()),
            upstream: "products".into(),
            access: Some(Access::Public),
            ..RouteConfig::default()
        }],
        ..Config::default()
    };
    let plan = Plan::compile(config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(demo_gateway::serve(plan, listener, async move {
        let _ = stopped.await;
    }));

    let direct_url = format!("{}/1", backend.url());
    let gateway_url = format!("http://{addr}/api/products/1");
    // Warm up both paths, then alternate rounds so that drift hits both alike.
    throughput(&direct_url).await;
    throughput(&gateway_url).await;
    let (mut direct, mut through) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        direct.push(throughput(&direct_url).await);
        through.push(throughput(&gateway_url).await);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (direct, through) = (median(&mut direct), median(&mut through));
    println!(
        "{REQUESTS} GETs from {CONNECTIONS} connections, median of 3 rounds (no log subscriber: access logs cost nothing here)"
    );
    println!("{:<28} {:>12}", "path", "requests/s");
    println!("{:<28} {:>12.0}", "backend directly", direct);
    println!("{:<28} {:>12.0}", "through the gateway", through);
    println!("gateway throughput / direct throughput = {:.2}", through / direct);

    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), running).await;
}
