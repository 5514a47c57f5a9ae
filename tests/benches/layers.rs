//! Each layer alone, over an inner service that is always ready and answers at
//! once: its cost per request in nanoseconds and in heap allocations, so that a
//! regression has an address. Rounds interleaved, medians; the bare inner
//! service measured in the same rounds.
//!
//! Then the whole gateway, a plain public route over loopback, and the bare
//! hyper proxy of `bench/proxies.sh` beside it: the allocations per proxied
//! request each adds, as the same client's requests through it less the same
//! requests sent to the backend directly (the client's and the backend's own
//! allocations cancel out).
//!
//! `cargo bench -p tower-gateway-tests --bench layers`

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use jsonwebtoken::{EncodingKey, Header};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tower::{Layer, Service, ServiceExt};
use tower_gateway::balance::Endpoints;
use tower_gateway::rate_limit::key::Global;
use tower_gateway::{
    ClientAddrLayer, Limiter, PeerAddr, Quota, RateLimitLayer, RoundRobinLayer, StripPrefixLayer, TimeoutLayer,
};
use tower_gateway_auth::{Authenticator, Claims, JwtAuthLayer, Key};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-bench";
const N: u32 = 100_000;

type Run = Box<dyn FnMut(u32) -> Pin<Box<dyn Future<Output = ()>>>>;

fn inner()
-> impl Service<Request<()>, Response = Response<Bytes>, Error = Infallible, Future: 'static> + Clone + 'static {
    tower::service_fn(|req: Request<()>| async move {
        black_box(&req);
        Ok::<_, Infallible>(Response::new(Bytes::from_static(b"ok")))
    })
}

fn request(token: &str) -> Request<()> {
    // As a server hands it over: origin-form, with its Host.
    let mut req = Request::get("/api/products/1?x=1")
        .header("host", "gateway.test")
        .header("authorization", format!("Bearer {token}"))
        .body(())
        .unwrap();
    req.extensions_mut().insert(PeerAddr(SocketAddr::from(([127, 0, 0, 1], 40000))));
    req
}

/// `n` requests through `svc`, one after another.
fn runner<S, RB>(svc: S, token: String) -> Run
where
    S: Service<Request<()>, Response = Response<RB>> + Clone + 'static,
    S::Error: std::fmt::Debug,
    S::Future: 'static,
    RB: 'static,
{
    Box::new(move |n| {
        let (svc, token) = (svc.clone(), token.clone());
        Box::pin(async move {
            for _ in 0..n {
                let res = svc.clone().oneshot(request(&token)).await.unwrap();
                assert!(res.status().is_success(), "every request passes: {}", res.status());
                black_box(res);
            }
        })
    })
}

struct Case {
    name: &'static str,
    run: Run,
    ns: Vec<f64>,
    allocations: f64,
}

fn case(name: &'static str, run: Run) -> Case {
    Case { name, run, ns: Vec::new(), allocations: 0.0 }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    tower_gateway_auth::install_default_crypto();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let mut claims = Claims::new("42", now + 3600);
    claims.iat = Some(now);
    let token = jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(SECRET)).unwrap();
    let auth = Authenticator::builder(Key::hs256(SECRET).unwrap()).build().unwrap();
    let endpoints = Endpoints::new(["http://127.0.0.1:1", "http://127.0.0.1:2"]).unwrap();
    let limiter = Limiter::new("bench", Quota::per_second(1_000_000));

    let mut cases = vec![
        case("bare inner service", runner(inner(), token.clone())),
        case("StripPrefixLayer", runner(StripPrefixLayer::new("/api/products").layer(inner()), token.clone())),
        case("TimeoutLayer", runner(TimeoutLayer::new(Duration::from_secs(5)).layer(inner()), token.clone())),
        case("RoundRobinLayer (2 endpoints)", runner(RoundRobinLayer::new(endpoints).layer(inner()), token.clone())),
        case(
            "RateLimitLayer (in memory, one key)",
            runner(RateLimitLayer::new(limiter, Global).layer(inner()), token.clone()),
        ),
        case("ClientAddrLayer", runner(ClientAddrLayer::new().layer(inner()), token.clone())),
        case("JwtAuthLayer (cached token)", runner(JwtAuthLayer::new(auth).layer(inner()), token.clone())),
    ];
    for case in &mut cases {
        (case.run)(N / 10).await;
    }
    for _ in 0..5 {
        for case in &mut cases {
            let start = Instant::now();
            (case.run)(N).await;
            case.ns.push(start.elapsed().as_nanos() as f64 / f64::from(N));
        }
    }
    for case in &mut cases {
        let region = Region::new(GLOBAL);
        (case.run)(N / 10).await;
        case.allocations = region.change().allocations as f64 / f64::from(N / 10);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let bare_ns = median(&mut cases[0].ns.clone());
    let bare_allocs = cases[0].allocations;
    println!("{:<38} {:>10} {:>12} {:>14}", "each layer alone", "ns/request", "+ns on bare", "+allocations");
    for case in &mut cases {
        let ns = median(&mut case.ns);
        println!("{:<38} {:>10.0} {:>12.0} {:>14.2}", case.name, ns, ns - bare_ns, case.allocations - bare_allocs);
    }
    println!("(the bare inner service: {bare_allocs:.2} allocations per request, the request's own included)");

    let backend = tower_gateway_tests::product_backend().await;
    let mut config = demo_gateway::Config {
        upstreams: [(
            "products".to_owned(),
            demo_gateway::config::UpstreamConfig { endpoints: vec![backend.url()], ..Default::default() },
        )]
        .into(),
        ..demo_gateway::Config::default()
    };
    config.routes = vec![demo_gateway::config::RouteConfig {
        prefix: Some("/api/products".into()),
        upstream: "products".into(),
        access: Some(demo_gateway::Access::Public),
        ..Default::default()
    }];
    config.limits.clear();
    let gateway = tower_gateway_tests::Gateway::start(config).await;
    // The floor: the bare hyper proxy, on a thread of its own as on each core.
    let bare = tower_gateway_tests::closed_port();
    let (prefix, upstreams) = ("/api/products".to_owned(), vec![backend.url()]);
    std::thread::spawn(move || tower_gateway_tests::bare_proxy::serve(bare, prefix, upstreams));
    tower_gateway_tests::eventually("the bare proxy listens", async || {
        tokio::net::TcpStream::connect(bare).await.is_ok()
    })
    .await;
    let direct = allocations_per_request(&format!("{}/1", backend.url())).await;
    let through = allocations_per_request(&format!("{}/api/products/1", gateway.url())).await;
    let floor = allocations_per_request(&format!("http://{bare}/api/products/1")).await;
    println!("\nallocations per proxied request (keep-alive HTTP/1.1 GET, the client's and backend's own taken out):");
    println!("  the bare hyper proxy (the floor)                          {:>6.1}", floor - direct);
    println!(
        "  the whole gateway, a plain public route (no access log)   {:>6.1}  ({:.2}x the floor)",
        through - direct,
        (through - direct) / (floor - direct)
    );
}

/// Heap allocations per keep-alive GET of `url`, client and server sides together.
async fn allocations_per_request(url: &str) -> f64 {
    use http_body_util::{BodyExt, Empty};
    let client: hyper_util::client::legacy::Client<_, Empty<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let uri: http::Uri = url.parse().unwrap();
    let get = || async {
        let res = client.get(uri.clone()).await.unwrap();
        assert!(res.status().is_success(), "{url}: {}", res.status());
        res.into_body().collect().await.unwrap();
    };
    for _ in 0..200 {
        get().await;
    }
    const REQUESTS: u32 = 2_000;
    let region = Region::new(GLOBAL);
    for _ in 0..REQUESTS {
        get().await;
    }
    region.change().allocations as f64 / f64::from(REQUESTS)
}
