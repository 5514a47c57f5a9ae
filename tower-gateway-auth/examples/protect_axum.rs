//! Protecting axum routes with `JwtAuthLayer`, end to end in one process: a
//! token issued, a request with it and one without. Exits when done.
//!
//! `cargo run -p tower-gateway-auth --example protect_axum`

use axum::body::Body;
use axum::routing::get;
use axum::{Extension, Router};
use http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_gateway_auth::{Algorithm, Authenticated, Authenticator, JwtAuthLayer, Key, TokenIssuer};

const SECRET: &[u8] = b"a shared secret of at least 32 bytes!";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let auth = Authenticator::builder(Key::hs256(SECRET)?).issuer("user-service").build()?;
    let app = Router::new()
        .route(
            "/orders",
            get(|Extension(who): Extension<Authenticated>| async move { format!("orders of user {}", who.sub) }),
        )
        .route_layer(JwtAuthLayer::new(auth));

    // What user-service would do at login.
    let token = TokenIssuer::hmac(Algorithm::HS256, SECRET)?.issuer("user-service").issue("42", None, &[])?;

    let with_token =
        Request::get("/orders").header(header::AUTHORIZATION, format!("Bearer {token}")).body(Body::empty())?;
    let response = app.clone().oneshot(with_token).await?;
    assert_eq!(response.status(), StatusCode::OK);
    println!("with a token: {}", String::from_utf8_lossy(&response.into_body().collect().await?.to_bytes()));

    let response = app.oneshot(Request::get("/orders").body(Body::empty())?).await?;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    println!(
        "without: {} {}",
        response.status(),
        String::from_utf8_lossy(&response.into_body().collect().await?.to_bytes())
    );
    Ok(())
}
