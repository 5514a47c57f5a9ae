//! No spelling of a protected path reaches its backend without the policy, and
//! none falls through to a less protected route: nested routes over recording
//! backends, a table of spellings, and generated paths.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use demo_gateway::config::{RouteConfig, UpstreamConfig};
use demo_gateway::{Access, Config, Plan};
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestRunner};
use tower_gateway_auth::{Algorithm, KeyConfig, TokenIssuer};
use tower_gateway_tests::{Server, raw_get, serve};

const SECRET: &str = "a policy-path test secret of 32+ bytes";

/// A backend that records the raw path of every request it gets.
async fn recording() -> (Server, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let server = serve(tower::service_fn(move |req: Request<Incoming>| {
        log.lock().unwrap().push(req.uri().path().to_owned());
        async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok")))) }
    }))
    .await;
    (server, seen)
}

struct Setup {
    gateway: std::net::SocketAddr,
    public_seen: Arc<Mutex<Vec<String>>>,
    admin_seen: Arc<Mutex<Vec<String>>>,
    admin_token: String,
    _servers: (Server, Server),
    _dir: tempfile::TempDir,
}

/// `/api/users` public, `/api/users/admin` for the admin role, each its own backend.
async fn setup() -> Setup {
    let (public, public_seen) = recording().await;
    let (admin, admin_seen) = recording().await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let upstream = |url: String| UpstreamConfig { endpoints: vec![url], ..UpstreamConfig::default() };
    let route = |prefix: &str, upstream: &str, access| RouteConfig {
        prefix: Some(prefix.into()),
        upstream: upstream.into(),
        access: Some(access),
        ..RouteConfig::default()
    };
    let config = Config {
        listen: "127.0.0.1:0".into(),
        jwt: KeyConfig { secret_file: Some(secret), ..KeyConfig::default() },
        upstreams: [("public".to_owned(), upstream(public.url())), ("admin".to_owned(), upstream(admin.url()))].into(),
        routes: vec![
            route("/api/users", "public", Access::Public),
            route("/api/users/admin", "admin", Access::Roles(vec!["admin".into()])),
        ],
        ..Config::default()
    };
    let plan = Plan::compile(config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway = listener.local_addr().unwrap();
    tokio::spawn(demo_gateway::serve(plan, listener, std::future::pending()));
    let issuer = TokenIssuer::hmac(Algorithm::HS256, SECRET.as_bytes()).unwrap();
    let admin_token = issuer.issue("1", None, &["admin".into()]).unwrap();
    Setup { gateway, public_seen, admin_seen, admin_token, _servers: (public, admin), _dir: dir }
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// What the most lenient backend could make of a path: percent-decoded (twice),
/// backslashes as slashes, `;` parameters dropped, empty and dot segments resolved.
fn as_lenient_backend_sees(path: &str) -> Vec<String> {
    let mut bytes = path.as_bytes().to_vec();
    for _ in 0..2 {
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
                (b'%', Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 3;
                }
                (b, ..) => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        bytes = out;
    }
    let text = String::from_utf8_lossy(&bytes).replace('\\', "/");
    let mut segments: Vec<String> = Vec::new();
    for segment in text.split('/') {
        let name = segment.split(';').next().unwrap_or_default();
        match name {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            name => segments.push(name.to_owned()),
        }
    }
    segments
}

/// Whether a path the public backend received could mean the protected one.
fn means_admin(received: &str) -> bool {
    as_lenient_backend_sees(received).first().is_some_and(|s| s == "admin")
}

fn assert_policy_held(setup: &Setup, context: &str) {
    let admin = setup.admin_seen.lock().unwrap();
    assert!(admin.is_empty(), "{context}: the admin backend was reached without a token: {admin:?}");
    let public = setup.public_seen.lock().unwrap();
    if let Some(leak) = public.iter().find(|p| means_admin(p)) {
        panic!("{context}: the public backend got {leak:?}, which a backend could read as the admin path");
    }
}

/// Spellings of the protected path, each refused (400) or held to its policy
/// (401 without a token), never sent to the public route.
const PROTECTED: &[&str] = &[
    "/api/users/admin",
    "/api/users/admin/",
    "/api/users/admin/x",
    "/api/users/admin?x=/../y",
    "/api/users/%61dmin/x",
    "/api/users/%61%64%6d%69%6e",
    "/api/users/adm%69n",
    "/api/users/ad%6Din/x",
    "/api/%75sers/admin",
    "/%61pi/users/%61dmin/x",
    "/api/users/admin;x=1/x",
    "/api/users/admin;x",
    "/api/users/admin%3bx",
    "/api/users/admin%3Bx=1/x",
    "/api/users;x=1/admin",
    "/api/users/./admin",
    "/api/users/x/../admin",
    "/api/users/%2e/admin",
    "/api/users/%2e%2e/users/admin",
    "/api/users/x/%2E%2E/admin",
    "/api/users/x/.%2e/admin",
    "/api/users//admin",
    "//api/users/admin",
    "/api/users/%2fadmin",
    "/api/users%2fadmin",
    "/api/users/%5cadmin",
    "/api/users/x%5c..%5cadmin",
    "/api/users/%2561dmin",
    "/api/users/%252e%252e/admin",
    "/api/users/x/..;/admin",
    "/api/users/admin%00",
    "/api/users/x/..%2fadmin",
];

#[tokio::test]
async fn every_spelling_of_a_protected_path_gets_its_policy() {
    let setup = setup().await;
    let mut by_status = std::collections::BTreeMap::<u16, usize>::new();
    for path in PROTECTED {
        let status = raw_get(setup.gateway, path, "").await;
        assert!(status == 400 || status == 401, "{path}: {status}");
        *by_status.entry(status).or_default() += 1;
    }
    assert!(PROTECTED.len() >= 30);
    assert_policy_held(&setup, "the spelling table");
    assert!(setup.public_seen.lock().unwrap().is_empty(), "no spelling went to the public route");

    // The same spellings with the admin's token: the ones that were not refused
    // reach the admin backend, so the counter above could have moved.
    let bearer = format!("authorization: Bearer {}\r\n", setup.admin_token);
    let mut reached = 0;
    for path in PROTECTED {
        let status = raw_get(setup.gateway, path, &bearer).await;
        assert!(status == 400 || status == 200, "{path} with a token: {status}");
        reached += usize::from(status == 200);
    }
    assert_eq!(reached, by_status[&401], "{by_status:?}");
    {
        let admin_seen = setup.admin_seen.lock().unwrap();
        assert_eq!(admin_seen.len(), reached);
        assert!(admin_seen.iter().all(|p| !p.contains('%') && !p.contains(';')), "forwarded canonical: {admin_seen:?}");
    }
    for (path, seen) in
        [("/api/users/Admin", "/Admin"), ("/api/users/admins", "/admins"), ("/api/users/x/admin", "/x/admin")]
    {
        assert_eq!(raw_get(setup.gateway, path, "").await, 200, "{path}");
        assert_eq!(setup.public_seen.lock().unwrap().last().map(String::as_str), Some(seen));
    }
}

#[test]
fn generated_paths_never_bypass_the_policy() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let setup = runtime.block_on(setup());
    let pieces = [
        "api",
        "users",
        "admin",
        "%61dmin",
        "adm%69n",
        "%41DMIN",
        "ADMIN",
        ".",
        "..",
        "%2e",
        "%2E%2e",
        "",
        ";x",
        "admin;x=1",
        "admin%3b",
        "%3B",
        "%2f",
        "%5c",
        "\\",
        "x",
        "%252e",
        "%2561dmin",
        "a%20b",
        "%75sers",
        "%7e",
    ];
    let segment = proptest::sample::select(pieces.to_vec());
    let path = proptest::collection::vec(segment, 1..7).prop_map(|segments| format!("/{}", segments.join("/")));
    // Half the paths start with the real prefix, so the nested routes are exercised.
    let strategy = prop_oneof![path.clone(), path.prop_map(|rest| format!("/api/users{rest}"))];
    let mut runner = TestRunner::new(RunnerConfig { cases: 400, failure_persistence: None, ..RunnerConfig::default() });
    runner
        .run(&strategy, |path| {
            let status = runtime.block_on(raw_get(setup.gateway, &path, ""));
            prop_assert!(status != 0 && status != 500 && status != 502, "{path}: {status}");
            let admin = setup.admin_seen.lock().unwrap();
            prop_assert!(admin.is_empty(), "{path} reached the admin backend without a token");
            let public = setup.public_seen.lock().unwrap();
            prop_assert!(
                !public.last().is_some_and(|p| means_admin(p)),
                "{path}: the public backend got {:?}",
                public.last()
            );
            Ok(())
        })
        .unwrap();
    assert_policy_held(&setup, "generated paths");
}

#[test]
fn the_lenient_reading_is_lenient() {
    assert!(means_admin("/admin"));
    assert!(means_admin("/%61dmin/x"));
    assert!(means_admin("/x/../admin"));
    assert!(means_admin("/admin;x=1"));
    assert!(means_admin("//admin"));
    assert!(means_admin("/%2561dmin"));
    assert!(!means_admin("/admins"));
    assert!(!means_admin("/Admin"));
}
