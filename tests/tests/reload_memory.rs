//! A thousand reloads leave the gateway as they found it: resident memory flat
//! and nothing of an old generation alive (tables, upstreams with their pools,
//! DNS watchers), counted by the gateway itself. Alone in its test binary, so
//! that no other test's memory moves the figure.

use demo_gateway::config::{Access, Config, RouteConfig, UpstreamConfig};
use demo_gateway::{Gateway as Live, Plan};
use tower_gateway_tests::{Client, Gateway, backend, eventually, metric};

/// Resident memory of this process, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// `/api` to a listed upstream and `/dns` to one found by DNS; `flip` changes
/// both upstreams (and so rebuilds them, pool and watcher) and a route.
fn config(backend: &str, flip: bool) -> Config {
    let route = |prefix: &str, upstream: &str| RouteConfig {
        prefix: Some(prefix.into()),
        upstream: upstream.into(),
        access: Some(Access::Public),
        ..Default::default()
    };
    let mut routes = vec![route("/api", "listed"), route("/dns", "found")];
    if flip {
        routes.push(route("/extra", "listed"));
    }
    let port = backend.rsplit(':').next().unwrap();
    Config {
        listen: "127.0.0.1:0".into(),
        upstreams: [
            (
                "listed".to_owned(),
                UpstreamConfig {
                    endpoints: vec![backend.to_owned()],
                    timeout_ms: if flip { 4000 } else { 5000 },
                    ..Default::default()
                },
            ),
            (
                "found".to_owned(),
                UpstreamConfig {
                    dns: Some(format!("localhost:{port}")),
                    dns_refresh_ms: if flip { 600_000 } else { 500_000 },
                    ..Default::default()
                },
            ),
        ]
        .into(),
        limits: Default::default(),
        routes,
        ..Config::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_reloads_leave_memory_flat_and_no_old_generation_alive() {
    let a = backend("a").await;
    let live = Live::new(Plan::compile(config(&a.url(), false)).unwrap());
    let gw = Gateway::serve(live.clone()).await;
    let client = Client::new();
    let mut flip = false;
    let mut reload = async |n: usize| {
        for _ in 0..n {
            flip = !flip;
            live.apply(config(&a.url(), flip)).await.unwrap();
            // Each generation serves, so that its pools hold connections.
            assert_eq!(client.get(&format!("{}/api/1", gw.url())).await.unwrap().status, 200);
            assert_eq!(client.get(&format!("{}/dns/1", gw.url())).await.unwrap().status, 200);
        }
    };
    // Warm up: allocator arenas, pools, the metrics' series.
    reload(100).await;
    let before = rss_kib();
    reload(1000).await;
    let after = rss_kib();

    eprintln!("1,000 reloads: RSS {before} KiB before, {after} KiB after");
    let alive = async |kind: &str| metric(&gw.url(), &format!("gateway_config_alive{{kind=\"{kind}\"}}")).await;
    eventually("one generation's table, two upstreams and one DNS watcher alive", async || {
        alive("tables").await == Some(1.0)
            && alive("upstreams").await == Some(2.0)
            && alive("dns_watchers").await == Some(1.0)
    })
    .await;
    assert_eq!(live.generation(), 1101);
    let growth = after as f64 / before as f64 - 1.0;
    assert!(growth < 0.05, "RSS grew {:.1}% over 1,000 reloads: {before} → {after} KiB", growth * 100.0);
}
