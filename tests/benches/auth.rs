//! The cost of `JwtAuthLayer` per request, next to the bare inner service, in
//! one run: the cached path (the hot path), the local validation path (cache
//! off, in-memory store), RS256 validation, and the Redis path (cache off, a real
//! redis-server on loopback). Printed as ns per request and as a ratio to the bare
//! service.
//!
//! `cargo bench -p tower-gateway-tests --bench auth`

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tower::{Service, ServiceExt};
use tower_gateway_auth::{Authenticator, Claims, Issuer, JwtAuthLayer, Key, RedisStore, RemoteKeys};
use tower_gateway_tests::RedisServer;
use tower_layer::Layer;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-bench";
const RSA_PRIVATE: &[u8] = include_bytes!("../../tower-gateway-auth/tests/fixtures/rsa-private.pem");
const RSA_PUBLIC: &[u8] = include_bytes!("../../tower-gateway-auth/tests/fixtures/rsa-public.pem");

fn claims() -> Claims {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let mut claims = Claims::new("42", now + 3600);
    claims.iat = Some(now);
    claims.jti = Some("bench-token".into());
    claims.email = Some("user42@example.com".into());
    claims
}

fn inner() -> impl Service<Request<()>, Response = Response<Bytes>, Error = Infallible> + Clone {
    tower::service_fn(|req: Request<()>| async move {
        black_box(&req);
        Ok::<_, Infallible>(Response::new(Bytes::from_static(b"ok")))
    })
}

fn request(token: &str) -> Request<()> {
    Request::get("/api/checkout").header("authorization", format!("Bearer {token}")).body(()).unwrap()
}

/// Mean ns per request over `n` requests through `svc`.
async fn run<S, RB>(svc: &mut S, token: &str, n: u32) -> f64
where
    S: Service<Request<()>, Response = Response<RB>, Error = Infallible>,
{
    let requests: Vec<_> = (0..n).map(|_| request(token)).collect();
    let start = Instant::now();
    for req in requests {
        let res = svc.ready().await.unwrap().call(req).await.unwrap();
        assert!(res.status().is_success(), "{}", res.status());
    }
    start.elapsed().as_nanos() as f64 / f64::from(n)
}

type Runner = Box<dyn FnMut(u32) -> Pin<Box<dyn Future<Output = f64>>>>;

struct Case {
    name: &'static str,
    n: u32,
    run: Runner,
    samples: Vec<f64>,
}

fn runner<S, RB>(svc: S, token: &str) -> Runner
where
    S: Service<Request<()>, Response = Response<RB>, Error = Infallible> + Clone + 'static,
    RB: 'static,
{
    let token = token.to_owned();
    Box::new(move |n| {
        let (mut svc, token) = (svc.clone(), token.clone());
        Box::pin(async move { run(&mut svc, &token, n).await })
    })
}

fn case(name: &'static str, n: u32, token: &str, auth: Option<Authenticator>) -> Case {
    let run = match auth {
        Some(auth) => runner(JwtAuthLayer::new(auth).layer(inner()), token),
        None => runner(inner(), token),
    };
    Case { name, n, run, samples: Vec::new() }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    tower_gateway_auth::install_default_crypto();
    let hs_token = jsonwebtoken::encode(&Header::default(), &claims(), &EncodingKey::from_secret(SECRET)).unwrap();
    let rs_token = jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &claims(),
        &EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(),
    )
    .unwrap();
    let hs = || Authenticator::builder(Key::hs256(SECRET).unwrap());
    let rs = Authenticator::builder(Key::public_pem(Algorithm::RS256, RSA_PUBLIC).unwrap());

    // The RS256 key published as a JWKS on a loopback port: the layer fetches it.
    let jwk =
        jsonwebtoken::jwk::Jwk::from_encoding_key(&EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(), Algorithm::RS256)
            .unwrap();
    let jwks = serde_json::json!({ "keys": [jwk] }).to_string();
    let jwks_server = tower_gateway_tests::serve(tower::service_fn(move |_: Request<hyper::body::Incoming>| {
        let jwks = jwks.clone();
        async move { Ok::<_, Infallible>(Response::new(http_body_util::Full::new(Bytes::from(jwks)))) }
    }))
    .await;
    let remote = RemoteKeys::jwks(&format!("{}/jwks", jwks_server.url())).build().unwrap();
    let from_jwks = Authenticator::builder_for(Issuer::new("bench", remote)).build().unwrap();
    let jwks_claims = {
        let mut claims = claims();
        claims.iss = Some("bench".into());
        claims
    };
    let jwks_token = jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &jwks_claims,
        &EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(),
    )
    .unwrap();
    assert!(from_jwks.prefetch().await, "the JWKS is fetched");

    let mut cases = vec![
        case("bare inner service", 200_000, &hs_token, None),
        case("layer, cached (HS256)", 200_000, &hs_token, Some(hs().build().unwrap())),
        // The same key from a file, and a token of the same length: what the JWKS changes.
        case(
            "layer, cached (RS256 from a file)",
            200_000,
            &jwks_token,
            Some(
                Authenticator::builder(Key::public_pem(Algorithm::RS256, RSA_PUBLIC).unwrap())
                    .issuer("bench")
                    .build()
                    .unwrap(),
            ),
        ),
        case("layer, cached (RS256 from a JWKS)", 200_000, &jwks_token, Some(from_jwks)),
        case(
            "layer, validate HS256 + memory store",
            20_000,
            &hs_token,
            Some(hs().cache_bound(Duration::ZERO).build().unwrap()),
        ),
        case(
            "layer, validate RS256 + memory store",
            5_000,
            &rs_token,
            Some(rs.cache_bound(Duration::ZERO).build().unwrap()),
        ),
    ];
    let redis = if std::process::Command::new("redis-server").arg("--version").output().is_ok() {
        let redis = RedisServer::start().await;
        let store = Arc::new(RedisStore::new(redis.url()).unwrap());
        let auth = hs().store(store).cache_bound(Duration::ZERO).build().unwrap();
        cases.push(case("layer, validate HS256 + Redis round trip", 5_000, &hs_token, Some(auth)));
        Some(redis)
    } else {
        println!("redis-server not found: the Redis path is not measured");
        None
    };

    // Warm up, then interleave rounds so that drift hits every case alike.
    for case in &mut cases {
        (case.run)(case.n / 10).await;
    }
    for _ in 0..5 {
        for case in &mut cases {
            let ns = (case.run)(case.n).await;
            case.samples.push(ns);
        }
    }
    drop(redis);

    let median = |samples: &mut Vec<f64>| {
        samples.sort_by(f64::total_cmp);
        samples[samples.len() / 2]
    };
    let mut results: Vec<(&str, f64)> = cases.iter_mut().map(|c| (c.name, median(&mut c.samples))).collect();
    let bare = results[0].1;
    println!("{:<44} {:>12} {:>14}", "JwtAuthLayer cost per request", "ns/request", "x bare service");
    for (name, ns) in &mut results {
        println!("{name:<44} {ns:>12.0} {:>14.1}", *ns / bare);
    }
}
