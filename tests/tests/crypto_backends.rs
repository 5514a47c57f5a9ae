//! This crate enables both of jsonwebtoken's backends (see its Cargo.toml), as a
//! user's dependency graph may: a bare jsonwebtoken panics on the first token
//! then. tower-gateway-auth chooses its backend itself, so tokens sign and
//! verify in this process, through the layer, with no setup by the user.

use std::convert::Infallible;

use http::{Request, Response, StatusCode, header};
use tower::{ServiceBuilder, ServiceExt};
use tower_gateway::Body;
use tower_gateway_auth::{Algorithm, Authenticator, JwtAuthLayer, Key, TokenIssuer};

const SECRET: &[u8] = b"a shared secret of at least 32 bytes!";
const ED_PRIVATE: &[u8] = include_bytes!("../../tower-gateway-auth/tests/fixtures/ed25519-private.pem");
const ED_PUBLIC: &[u8] = include_bytes!("../../tower-gateway-auth/tests/fixtures/ed25519-public.pem");

async fn status_with(auth: Authenticator, token: &str) -> StatusCode {
    let svc = ServiceBuilder::new()
        .layer(JwtAuthLayer::new(auth))
        .service_fn(|_req: Request<Body>| async { Ok::<_, Infallible>(Response::new(Body::from("ok"))) });
    let request =
        Request::get("/orders").header(header::AUTHORIZATION, format!("Bearer {token}")).body(Body::empty()).unwrap();
    svc.oneshot(request).await.unwrap().status()
}

#[tokio::test]
async fn tokens_sign_and_verify_with_both_backends_enabled() {
    // HS256: both sides from this crate.
    let issuer = TokenIssuer::hmac(Algorithm::HS256, SECRET).unwrap();
    let token = issuer.issue("42", None, &[]).unwrap();
    let auth = Authenticator::builder(Key::hs256(SECRET).unwrap()).build().unwrap();
    assert_eq!(status_with(auth.clone(), &token).await, StatusCode::OK);
    assert_eq!(status_with(auth, &format!("{token}x")).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_public_key_verifies_with_both_backends_enabled() {
    let issuer = TokenIssuer::private_pem(Algorithm::EdDSA, ED_PRIVATE).unwrap();
    let token = issuer.issue("7", Some("ada@example.com"), &[]).unwrap();
    let auth = Authenticator::builder(Key::public_pem(Algorithm::EdDSA, ED_PUBLIC).unwrap()).build().unwrap();
    assert_eq!(status_with(auth, &token).await, StatusCode::OK);
}
