//! Throughput through the gateway next to the same backend reached directly, in
//! one run, over loopback: the cost of the whole stack (tower-http layers,
//! StripPrefix, Retry, RoundRobin, Proxy) as a ratio; and of a rate-limited
//! route next to an unlimited one, with the limit in memory and in Redis (a real
//! `redis-server`, started here). Bounded: a fixed number of requests from a
//! fixed number of connections.
//!
//! `cargo bench -p tower-gateway-tests --bench gateway`

use std::time::Duration;

use demo_gateway::config::{LimitConfig, LimitKey, LimitStore, Per, RouteConfig, StoreFailure, UpstreamConfig};
use demo_gateway::{Access, Config, Plan};
use tower_gateway_tests::{RedisServer, get_throughput, median, product_backend};

const CONNECTIONS: usize = 16;
const REQUESTS: usize = 20_000;

/// Requests per second for `REQUESTS` GETs of `url` from `CONNECTIONS` concurrent clients.
async fn throughput(url: &str) -> f64 {
    get_throughput(url, CONNECTIONS, REQUESTS).await
}

#[tokio::main]
async fn main() {
    let backend = product_backend().await;

    // One gateway, three routes to the same backend: no limit, a limit kept in
    // this process, a limit kept in Redis. The quotas are never reached: this
    // measures what deciding costs.
    let redis = RedisServer::start().await;
    let never_reached = |store: LimitStore| LimitConfig {
        rate: 500_000,
        per: Per::Second,
        burst: Some(1_000_000),
        key: LimitKey::One("client_ip".into()),
        store: Some(store),
        on_store_error: StoreFailure::Open,
    };
    let route = |prefix: &str, limits: &[&str]| RouteConfig {
        prefix: Some(prefix.into()),
        upstream: "products".into(),
        access: Some(Access::Public),
        limits: limits.iter().map(|l| (*l).to_owned()).collect(),
        ..RouteConfig::default()
    };
    let config = Config {
        listen: "127.0.0.1:0".into(),
        redis_url: Some(redis.url()),
        upstreams: [("products".to_owned(), UpstreamConfig { endpoints: vec![backend.url()], ..Default::default() })]
            .into(),
        limits: [
            ("memory".to_owned(), never_reached(LimitStore::Memory)),
            ("redis".to_owned(), never_reached(LimitStore::Redis)),
        ]
        .into(),
        routes: vec![
            route("/api/products", &[]),
            route("/limited/memory", &["memory"]),
            route("/limited/redis", &["redis"]),
        ],
        ..Config::default()
    };
    let plan = Plan::compile(config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(demo_gateway::serve(plan, listener, async move {
        let _ = stopped.await;
    }));

    let targets = [
        ("backend directly", format!("{}/1", backend.url())),
        ("through the gateway", format!("http://{addr}/api/products/1")),
        ("gateway, limit in memory", format!("http://{addr}/limited/memory/1")),
        ("gateway, limit in Redis", format!("http://{addr}/limited/redis/1")),
    ];
    // Warm every path up, then run rounds in alternating order (ABCD, DCBA, ...)
    // so that drift hits all alike.
    for (_, url) in &targets {
        throughput(url).await;
    }
    const ROUNDS: usize = 4;
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    for round in 0..ROUNDS {
        let mut order: Vec<usize> = (0..targets.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            results[i].push(throughput(&targets[i].1).await);
        }
    }
    let medians: Vec<f64> = results.iter().map(|r| median(r)).collect();
    println!(
        "{REQUESTS} GETs from {CONNECTIONS} connections, median of {ROUNDS} rounds (no log subscriber: access logs cost nothing here)"
    );
    println!("{:<28} {:>12} {:>10} {:>12}", "path", "requests/s", "/ direct", "/ unlimited");
    for ((name, _), rps) in targets.iter().zip(&medians) {
        println!("{name:<28} {rps:>12.0} {:>10.2} {:>12.2}", rps / medians[0], rps / medians[1]);
    }
    println!("gateway throughput / direct throughput = {:.2}", medians[1] / medians[0]);

    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), running).await;
}
