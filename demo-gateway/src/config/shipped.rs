//! The shipped system: its upstreams on this machine, its policy and its limits.

use std::collections::BTreeMap;

use super::{
    Access, Config, ForwardedHeaderName, LimitConfig, LimitKey, Per, RetryConfig, RevocationConfig, RouteConfig,
    RouteMethod, StoreFailure, UpstreamConfig, shipped_jwt,
};

fn local(ports: &[u16]) -> UpstreamConfig {
    UpstreamConfig {
        endpoints: ports.iter().map(|p| format!("http://127.0.0.1:{p}")).collect(),
        ..UpstreamConfig::default()
    }
}

/// The shipped policy, over upstreams named `products`, `users`, `checkout` and `inventory`.
pub fn shipped_routes() -> Vec<RouteConfig> {
    let admin = || Some(Access::Roles(vec!["admin".into()]));
    let route = |prefix: &str, methods: &[RouteMethod], upstream: &str, access| RouteConfig {
        prefix: Some(prefix.into()),
        methods: methods.to_vec(),
        upstream: upstream.into(),
        access,
        ..RouteConfig::default()
    };
    let users_path =
        |path: &str, access| RouteConfig { prefix: None, path: Some(path.into()), ..route("", &[], "users", access) };
    // Forwarded as /signup and /login, under user-service's own root.
    let users_post = |path: &str| RouteConfig {
        methods: vec![RouteMethod::Post],
        strip_prefix: Some("/api/users".into()),
        ..users_path(path, Some(Access::Public))
    };
    let limited = |route: RouteConfig, limits: &[&str]| {
        let mut names = vec!["per-address".to_owned()];
        names.extend(limits.iter().map(|l| (*l).to_owned()));
        RouteConfig { limits: names, ..route }
    };
    vec![
        // The price feed (`GET /api/products/feed`) is a WebSocket.
        RouteConfig {
            websocket: true,
            ..limited(
                route("/api/products", &[RouteMethod::Get, RouteMethod::Head], "products", Some(Access::Public)),
                &[],
            )
        },
        limited(route("/api/products", &[], "products", admin()), &[]),
        limited(users_post("/api/users/signup"), &["signup-address"]),
        limited(users_post("/api/users/login"), &["login-address", "login-account"]),
        // OpenID discovery and the key set, for verifiers outside: read-only, public.
        RouteConfig {
            strip_prefix: Some("/api/users".into()),
            ..limited(
                route("/api/users/.well-known", &[RouteMethod::Get, RouteMethod::Head], "users", Some(Access::Public)),
                &[],
            )
        },
        RouteConfig {
            strip_prefix: Some("/api/users".into()),
            ..limited(users_path("/api/users/keys/rotate", admin()), &[])
        },
        limited(users_path("/api/users", admin()), &[]),
        // A change of a user's record may hash two passwords: counted per user.
        limited(route("/api/users", &[RouteMethod::Put], "users", Some(Access::Token)), &["account-change"]),
        limited(route("/api/users", &[], "users", Some(Access::Token)), &[]),
        limited(route("/api/checkout", &[], "checkout", Some(Access::Token)), &["checkout-user"]),
        // inventory-service (gRPC): its health public, its methods for tokens,
        // Restock for admins; the path forwarded as it came.
        limited(grpc(route("/grpc.health.v1.Health", &[], "inventory", Some(Access::Public))), &[]),
        limited(grpc(route("/inventory.v1.Inventory", &[], "inventory", Some(Access::Token))), &[]),
        limited(
            grpc(RouteConfig {
                prefix: None,
                path: Some("/inventory.v1.Inventory/Restock".into()),
                ..route("", &[], "inventory", admin())
            }),
            &[],
        ),
    ]
}

/// A gRPC route: the path forwarded as it came.
fn grpc(route: RouteConfig) -> RouteConfig {
    RouteConfig { strip_prefix: Some("/".into()), ..route }
}

/// The shipped limits, named by [`shipped_routes`]:
///
/// | limit | key | rate | burst |
/// |---|---|---|---|
/// | `per-address` | client address, every route | 100 / s | 200 |
/// | `login-address` | client address, login | 30 / min | 10 |
/// | `login-account` | client address and the `email` of the body, login | 10 / min | 5 |
/// | `signup-address` | client address, signup | 20 / hour | 10 |
/// | `account-change` | the token's subject, `PUT /api/users/{id}` | 10 / min | 5 |
/// | `checkout-user` | the token's subject, checkout | 120 / min | 30 |
///
/// An account's login attempts are counted per address: nobody elsewhere can
/// spend its owner's quota (a quota per account alone let anyone lock a chosen
/// user out with a request every 6 s), and sign-ups, which name an email too,
/// count against a limit of their own.
pub fn shipped_limits() -> BTreeMap<String, LimitConfig> {
    let limit = |rate, per: Per, burst, key: &[&str]| LimitConfig {
        rate,
        per,
        burst: Some(burst),
        key: match key {
            [one] => LimitKey::One((*one).into()),
            parts => LimitKey::Many(parts.iter().map(|p| (*p).into()).collect()),
        },
        store: None,
        on_store_error: StoreFailure::Open,
    };
    BTreeMap::from([
        ("per-address".into(), limit(100, Per::Second, 200, &["client_ip"])),
        ("login-address".into(), limit(30, Per::Minute, 10, &["client_ip"])),
        ("login-account".into(), limit(10, Per::Minute, 5, &["client_ip", "json:email"])),
        ("signup-address".into(), limit(20, Per::Hour, 10, &["client_ip"])),
        ("account-change".into(), limit(10, Per::Minute, 5, &["subject"])),
        ("checkout-user".into(), limit(120, Per::Minute, 30, &["subject"])),
    ])
}

impl Default for Config {
    /// The shipped system on 127.0.0.1: products on 3001 and 3003, users on 3002 and
    /// 3004, checkout on 3005, inventory (gRPC, h2c) on 50051, with the
    /// [shipped policy](shipped_routes).
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            admin_listen: None,
            admin_token_file: None,
            tls: None,
            request_timeout_ms: 30_000,
            max_body_bytes: 1024 * 1024,
            max_concurrent_requests: 1024,
            max_route_concurrent_requests: None,
            max_anonymous_concurrent_requests: None,
            body_idle_timeout_ms: 10_000,
            header_read_timeout_ms: 5_000,
            max_connections: 5_000,
            max_connections_per_client: 256,
            workers: None,
            idle_timeout_ms: 60_000,
            max_header_bytes: 16 * 1024,
            websocket_max_connections: 1024,
            websocket_idle_timeout_ms: 60_000,
            websocket_max_connections_per_client: 16,
            websocket_max_lifetime_ms: 3_600_000,
            websocket_removed_route_grace_ms: 60_000,
            grace_period_ms: 10_000,
            drain_delay_ms: 0,
            cors_origins: Vec::new(),
            redis_url: None,
            trusted_proxies: Vec::new(),
            forwarded_header: ForwardedHeaderName::XForwardedFor,
            limits: shipped_limits(),
            jwt: shipped_jwt(),
            revocation: RevocationConfig::default(),
            telemetry: super::TelemetryConfig::default(),
            upstreams: BTreeMap::from([
                ("products".into(), local(&[3001, 3003])),
                ("users".into(), local(&[3002, 3004])),
                (
                    "checkout".into(),
                    UpstreamConfig {
                        retry: RetryConfig { idempotency_key: true, ..RetryConfig::default() },
                        ..local(&[3005])
                    },
                ),
                ("inventory".into(), UpstreamConfig { http2: true, ..local(&[50051]) }),
            ]),
            routes: shipped_routes(),
        }
    }
}
