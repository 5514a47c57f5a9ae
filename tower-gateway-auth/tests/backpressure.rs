//! Back-pressure: `JwtAuth` is ready only when its inner service is, for
//! requests answered from the cache and for those that ask the store.

use std::task::Poll;

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::Full;
use tower_gateway_auth::{Algorithm, Authenticator, JwtAuthLayer, Key, TokenIssuer};
use tower_test::mock;

const SECRET: &[u8] = b"a shared secret of at least 32 bytes!";

#[tokio::test]
async fn jwt_auth_is_ready_only_when_its_inner_service_is() {
    let auth = Authenticator::builder(Key::hs256(SECRET).unwrap()).build().unwrap();
    let token = TokenIssuer::hmac(Algorithm::HS256, SECRET).unwrap().issue("42", None, &[]).unwrap();
    let (mut svc, mut handle) =
        mock::spawn_layer::<Request<Full<Bytes>>, Response<Full<Bytes>>, _>(JwtAuthLayer::new(auth));

    // Twice: the first asks the store, the second is served from the cache.
    for round in ["store", "cache"] {
        handle.allow(0);
        assert!(svc.poll_ready().is_pending(), "{round}: ready while the inner service is not");
        handle.allow(1);
        assert!(matches!(svc.poll_ready(), Poll::Ready(Ok(()))), "{round}: not ready once it is");
        let request =
            Request::get("/").header(header::AUTHORIZATION, format!("Bearer {token}")).body(Full::default()).unwrap();
        // The response future asks the store first: drive it and the mock together.
        let (response, ()) = tokio::join!(svc.call(request), async {
            let (seen, send) = handle.next_request().await.expect("the request reached the inner service");
            assert_eq!(seen.headers()["x-user-id"], "42");
            send.send_response(Response::new(Full::new(Bytes::from_static(b"inner"))));
        });
        assert!(response.unwrap().status().is_success(), "{round}");
    }
}
