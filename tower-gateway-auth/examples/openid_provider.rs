//! Tokens from OpenID providers on a plain axum app: keys found by discovery,
//! roles and scopes read where each provider keeps them. Two providers run in
//! this process on loopback ports — one shaped like Keycloak (roles in
//! `realm_access.roles`, scopes in `scope`), one like Auth0 (roles in a
//! namespaced claim, scopes in `scp`) — and one app trusts both. Exits when done.
//!
//! `cargo run -p tower-gateway-auth --example openid_provider`

use std::net::SocketAddr;

use axum::body::Body;
use axum::routing::get;
use axum::{Extension, Json, Router};
use http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tower::ServiceExt;
use tower_gateway_auth::{Authenticated, Authenticator, Issuer, JwtAuthLayer, RemoteKeys};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A provider: its issuer URL and signing key, serving discovery and its JWKS.
struct Provider {
    issuer: String,
    key: EncodingKey,
}

impl Provider {
    async fn start() -> Result<Self, BoxError> {
        tower_gateway_auth::install_default_crypto();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr: SocketAddr = listener.local_addr()?;
        let issuer = format!("http://{addr}");
        let pair = rcgen::KeyPair::generate()?;
        let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes())?;
        let mut jwk = serde_json::to_value(Jwk::from_encoding_key(&key, Algorithm::ES256)?)?;
        jwk["kid"] = json!("2026-12");
        let discovery = json!({ "issuer": issuer, "jwks_uri": format!("{issuer}/jwks") });
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(move || async move { Json(discovery) }))
            .route("/jwks", get(move || async move { Json(json!({ "keys": [jwk] })) }));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self { issuer, key })
    }

    fn token(&self, claims: &Value) -> Result<String, BoxError> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("2026-12".into());
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
        let mut payload = json!({ "iss": self.issuer, "sub": "ada", "aud": "shop", "iat": now, "exp": now + 300 });
        for (name, value) in claims.as_object().into_iter().flatten() {
            payload[name] = value.clone();
        }
        Ok(jsonwebtoken::encode(&header, &payload, &self.key)?)
    }
}

async fn send(app: &Router, path: &str, token: &str) -> Result<(StatusCode, String), BoxError> {
    let request = Request::get(path).header(header::AUTHORIZATION, format!("Bearer {token}")).body(Body::empty())?;
    let response = app.clone().oneshot(request).await?;
    let status = response.status();
    Ok((status, String::from_utf8_lossy(&response.into_body().collect().await?.to_bytes()).into_owned()))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let keycloak = Provider::start().await?;
    let auth0 = Provider::start().await?;
    let auth = Authenticator::builder_for(
        Issuer::new(&keycloak.issuer, RemoteKeys::discovery(&keycloak.issuer).build()?)
            .audience("shop")
            .roles_claim("realm_access.roles"),
    )
    .trust(
        Issuer::new(&auth0.issuer, RemoteKeys::discovery(&auth0.issuer).build()?)
            .audience("shop")
            .roles_claim("https://shop.example/roles")
            .scopes_claim("scp"),
    )
    .build()?;

    let me = |Extension(who): Extension<Authenticated>| async move {
        Json(json!({ "sub": who.sub, "roles": who.roles, "scopes": who.scopes }))
    };
    let app = Router::new()
        .route(
            "/admin",
            get(|| async { "the admin page" }).route_layer(JwtAuthLayer::new(auth.clone()).any_role(["admin"])),
        )
        .route(
            "/orders",
            get(|| async { "your orders" }).route_layer(JwtAuthLayer::new(auth.clone()).all_scopes(["orders:read"])),
        )
        .route("/me", get(me).route_layer(JwtAuthLayer::new(auth)));

    let admin = keycloak.token(&json!({ "realm_access": { "roles": ["admin"] }, "scope": "openid orders:read" }))?;
    let reader = auth0.token(&json!({ "https://shop.example/roles": ["customer"], "scp": ["orders:read"] }))?;
    let nobody = auth0.token(&json!({ "scp": ["profile"] }))?;

    for (who, token, path, expected) in [
        ("Keycloak admin", &admin, "/admin", StatusCode::OK),
        ("Keycloak admin", &admin, "/orders", StatusCode::OK),
        ("Auth0 customer", &reader, "/admin", StatusCode::FORBIDDEN),
        ("Auth0 customer", &reader, "/orders", StatusCode::OK),
        ("Auth0 profile only", &nobody, "/orders", StatusCode::FORBIDDEN),
        ("Auth0 customer", &reader, "/me", StatusCode::OK),
    ] {
        let (status, body) = send(&app, path, token).await?;
        println!("{who:<20} GET {path:<8} -> {} {body}", status.as_u16());
        assert_eq!(status, expected, "{who} GET {path}");
    }
    let (_, me) = send(&app, "/me", &admin).await?;
    let me: Value = serde_json::from_str(&me)?;
    assert_eq!(me["roles"], json!(["admin"]));
    assert_eq!(me["scopes"], json!(["openid", "orders:read"]));
    Ok(())
}
