//! The gateway trusting two OpenID providers, neither of which it holds a key
//! for: roles from `realm_access.roles` and a namespaced claim, scopes from
//! `scope` and `scp`, each enforced by a route policy; each issuer's tokens only
//! with its own keys.

use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use demo_gateway::config::{Access, Config, RouteConfig, UpstreamConfig};
use http::Request;
use http_body_util::Full;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tower_gateway_auth::KeyConfig;
use tower_gateway_tests::{Client, Gateway, Server, backend};

/// A provider on a loopback port: discovery, a JWKS of one ES256 key, and tokens.
struct Provider {
    server: Server,
    key: EncodingKey,
}

impl Provider {
    async fn start() -> Self {
        tower_gateway_auth::install_default_crypto();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let pair = rcgen::KeyPair::generate().unwrap();
        let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
        let mut jwk = serde_json::to_value(Jwk::from_encoding_key(&key, Algorithm::ES256).unwrap()).unwrap();
        jwk["kid"] = json!("only");
        let discovery = json!({ "issuer": issuer, "jwks_uri": format!("{issuer}/jwks") });
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(move || async move { Json(discovery) }))
            .route("/jwks", get(move || async move { Json(json!({ "keys": [jwk] })) }));
        Self { server: tower_gateway_tests::serve_on(listener, app), key }
    }

    fn issuer(&self) -> String {
        self.server.url()
    }

    fn token(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("only".into());
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let mut payload = json!({ "iss": self.issuer(), "sub": "ada", "aud": "shop", "iat": now, "exp": now + 300 });
        for (name, value) in claims.as_object().unwrap() {
            payload[name] = value.clone();
        }
        jsonwebtoken::encode(&header, &payload, &self.key).unwrap()
    }
}

async fn status(url: &str, token: &str) -> u16 {
    seen(url, Some(token)).await.0
}

/// The status, and the headers the backend saw (a client-sent `x-user-roles` among the request's).
async fn seen(url: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = Request::get(url).header("x-user-roles", "admin");
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let reply = Client::new().send(req.body(Full::new(Bytes::new())).unwrap()).await.unwrap();
    let body: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
    (reply.status.as_u16(), body["headers"].clone())
}

#[tokio::test]
async fn roles_and_scopes_from_two_providers_through_the_gateway() {
    let (keycloak, auth0) = (Provider::start().await, Provider::start().await);
    let upstream = backend("app").await;
    let upstreams =
        [("app".to_owned(), UpstreamConfig { endpoints: vec![upstream.url()], ..UpstreamConfig::default() })].into();
    let mut config = Config { upstreams, ..Config::default() };
    let route = |prefix: &str, access| RouteConfig {
        prefix: Some(prefix.into()),
        upstream: "app".into(),
        access: Some(access),
        ..RouteConfig::default()
    };
    config.routes = vec![
        route("/admin", Access::Roles(vec!["admin".into()])),
        route("/orders", Access::Scopes(vec!["orders:read".into()])),
        route("/me", Access::Token),
        route("/public", Access::Public),
    ];
    config.limits.clear();
    config.jwt = KeyConfig {
        issuer: Some(keycloak.issuer()),
        discovery_url: Some(format!("{}/.well-known/openid-configuration", keycloak.issuer())),
        audience: Some("shop".into()),
        roles_claim: Some("realm_access.roles".into()),
        forward_claims: [("x-user-roles".to_owned(), "realm_access.roles".to_owned())].into(),
        issuers: vec![KeyConfig {
            issuer: Some(auth0.issuer()),
            jwks_url: Some(format!("{}/jwks", auth0.issuer())),
            audience: Some("shop".into()),
            roles_claim: Some("https://shop.example/roles".into()),
            scopes_claim: Some("scp".into()),
            ..KeyConfig::default()
        }],
        ..KeyConfig::default()
    };
    let gateway = Gateway::start(config).await;
    let base = gateway.url();

    let keycloak_admin =
        keycloak.token(&json!({ "realm_access": { "roles": ["admin"] }, "scope": "openid orders:read" }));
    let keycloak_user = keycloak.token(&json!({ "realm_access": { "roles": ["customer"] }, "scope": "openid" }));
    let auth0_admin = auth0.token(&json!({ "https://shop.example/roles": ["admin"], "scp": ["profile"] }));
    let auth0_reader = auth0.token(&json!({ "https://shop.example/roles": [], "scp": ["orders:read"] }));
    for (who, token, path, expected) in [
        ("keycloak admin", &keycloak_admin, "/admin", 200),
        ("keycloak admin", &keycloak_admin, "/orders", 200),
        ("keycloak user", &keycloak_user, "/admin", 403),
        ("keycloak user", &keycloak_user, "/orders", 403),
        ("keycloak user", &keycloak_user, "/me", 200),
        ("auth0 admin", &auth0_admin, "/admin", 200),
        ("auth0 admin", &auth0_admin, "/orders", 403),
        ("auth0 reader", &auth0_reader, "/orders", 200),
        ("auth0 reader", &auth0_reader, "/admin", 403),
    ] {
        assert_eq!(status(&format!("{base}{path}"), token).await, expected, "{who} {path}");
    }
    // A chosen claim reaches the upstream as a header; a client-sent copy never does.
    let (_, headers) = seen(&format!("{base}/me"), Some(&keycloak_user)).await;
    assert_eq!(headers["x-user-roles"], "customer", "{headers}");
    let (_, headers) = seen(&format!("{base}/public"), None).await;
    assert_eq!(headers.get("x-user-roles"), None, "removed on a public route too: {headers}");
    let (_, headers) = seen(&format!("{base}/me"), Some(&auth0_reader)).await;
    assert_eq!(headers.get("x-user-roles"), None, "Auth0 forwards no roles header: {headers}");

    // Keycloak's name, Auth0's key (both publish a kid "only"): refused.
    let impostor = Provider { server: keycloak.server, key: auth0.key.clone() };
    let forged = impostor.token(&json!({ "realm_access": { "roles": ["admin"] } }));
    assert_eq!(status(&format!("{base}/admin"), &forged).await, 401);
    let genuine = Provider { server: impostor.server, key: keycloak.key };
    assert_eq!(
        status(&format!("{base}/admin"), &genuine.token(&json!({ "realm_access": { "roles": ["admin"] } }))).await,
        200
    );
}
