//! Unit-testing a layer in isolation: the inner service is a `service_fn`
//! double, requests go through `ServiceExt::oneshot`. The same code goes into
//! a `#[tokio::test]`.
//!
//! `cargo run -p tower-gateway --example unit_test`

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{ServiceBuilder, ServiceExt};
use tower_gateway::StripPrefixLayer;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new().layer(StripPrefixLayer::new("/api/products")).service_fn({
        let calls = calls.clone();
        move |req: Request<()>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(req.uri().to_string())))) }
        }
    });

    // The inner service sees the path without the prefix.
    let response = svc.clone().oneshot(Request::get("/api/products/item?x=1").body(())?).await?;
    let seen = response.into_body().collect().await?.to_bytes();
    assert_eq!(seen, "/item?x=1");

    // A path that could escape the prefix is refused, and the inner service is never called.
    let response = svc.oneshot(Request::get("/api/products/../admin").body(())?).await?;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body = response.into_body().collect().await?.to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("invalid_path"));
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    println!("StripPrefix: rewrote once, refused once, inner service called {} time", calls.load(Ordering::SeqCst));
    Ok(())
}
