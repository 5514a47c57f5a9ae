//! tower-gateway-auth against a real redis-server: the token state two gateway
//! replicas share, and what happens when Redis goes away.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use jsonwebtoken::{EncodingKey, Header};
use tower::{Service, ServiceExt};
use tower_gateway_auth::{Authenticator, Claims, JwtAuthLayer, Key, RedisStore};
use tower_gateway_tests::RedisServer;
use tower_layer::Layer;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn token(sub: &str, jti: &str, lifetime: u64) -> String {
    let now = now();
    let mut claims = Claims::new(sub, now + lifetime);
    claims.iat = Some(now);
    claims.jti = Some(jti.into());
    tower_gateway_auth::install_default_crypto();
    jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(SECRET)).unwrap()
}

/// One gateway replica: its own authenticator, its own Redis pool.
fn replica(redis: &RedisServer) -> Authenticator {
    let store = Arc::new(RedisStore::new(redis.url()).unwrap());
    Authenticator::builder(Key::hs256(SECRET).unwrap()).store(store).build().unwrap()
}

fn protected(
    auth: &Authenticator,
) -> impl Service<Request<()>, Response = Response<tower_gateway::ResponseBody<Bytes>>, Error = Infallible> + Clone {
    JwtAuthLayer::new(auth.clone())
        .layer(tower::service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new(Bytes::from("ok"))) }))
}

async fn status(auth: &Authenticator, token: &str) -> StatusCode {
    let req = Request::get("/").header("authorization", format!("Bearer {token}")).body(()).unwrap();
    protected(auth).oneshot(req).await.unwrap().status()
}

async fn ttl(redis: &RedisServer, key: &str) -> i64 {
    let mut conn = redis.connection().await;
    redis::cmd("TTL").arg(key).query_async(&mut conn).await.unwrap()
}

#[tokio::test]
async fn valid_tokens_are_cached_in_redis_for_their_remaining_lifetime() {
    let redis = RedisServer::start().await;
    let auth = replica(&redis);
    let token = token("1", "t-cache", 600);
    assert_eq!(status(&auth, &token).await, StatusCode::OK);
    let ttl = ttl(&redis, "tower-gateway:valid:t-cache").await;
    // The remaining lifetime, plus the largest leeway a verifier may grant past `exp`, plus 1 s.
    let slack = tower_gateway_auth::MAX_LEEWAY.as_secs() as i64 + 1;
    assert!((598 + slack..=600 + slack).contains(&ttl), "TTL {ttl} is not the remaining lifetime");
}

#[tokio::test]
async fn revocation_is_one_write_outliving_the_token() {
    let redis = RedisServer::start().await;
    let auth = replica(&redis);
    let token = token("1", "t-revoke", 300);
    assert_eq!(status(&auth, &token).await, StatusCode::OK);
    auth.revoke_token(&token).await.unwrap();
    assert_eq!(status(&auth, &token).await, StatusCode::UNAUTHORIZED);
    let revoked = ttl(&redis, "tower-gateway:revoked:t-revoke").await;
    // Outlives the token by the largest leeway a verifier grants past `exp`, so a
    // verifier still accepting the token still finds it revoked.
    let slack = tower_gateway_auth::MAX_LEEWAY.as_secs() as i64 + 1;
    assert!((298 + slack..=300 + slack).contains(&revoked), "TTL {revoked}");
    assert_eq!(ttl(&redis, "tower-gateway:valid:t-revoke").await, -2, "the valid-token record is gone");
}

#[tokio::test]
async fn revocation_by_subject_covers_earlier_tokens() {
    let redis = RedisServer::start().await;
    let auth = replica(&redis);
    let (a, b) = (token("7", "t-a", 300), token("7", "t-b", 300));
    let other = token("8", "t-c", 300);
    auth.revoke_subject("7", SystemTime::now()).await.unwrap();
    assert_eq!(status(&auth, &a).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status(&auth, &b).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status(&auth, &other).await, StatusCode::OK);
    let ttl = ttl(&redis, "tower-gateway:revoked-before:7").await;
    assert!(ttl > 23 * 3600, "kept as long as a token may live: {ttl}");
}

#[tokio::test]
async fn a_second_replica_sees_a_revocation_within_the_bound() {
    let redis = RedisServer::start().await;
    let (first, second) = (replica(&redis), replica(&redis));
    let token = token("1", "t-replicas", 300);
    assert_eq!(status(&first, &token).await, StatusCode::OK);
    assert_eq!(status(&second, &token).await, StatusCode::OK, "now in the second replica's cache");

    first.revoke_token(&token).await.unwrap();
    let revoked_at = Instant::now();
    assert_eq!(status(&first, &token).await, StatusCode::UNAUTHORIZED, "at once where it was revoked");
    loop {
        if status(&second, &token).await == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(revoked_at.elapsed() < Duration::from_secs(3), "the second replica never saw the revocation");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen_after = revoked_at.elapsed();
    // The cache bound is 1 s; allow for the polling step.
    assert!(seen_after <= Duration::from_millis(1_300), "seen after {seen_after:?}");
}

#[tokio::test]
async fn redis_killed_fails_closed_fast_and_recovers_when_it_returns() {
    let mut redis = RedisServer::start().await;
    let auth = replica(&redis);
    assert_eq!(status(&auth, &token("1", "t-before", 300)).await, StatusCode::OK);

    redis.kill();
    for i in 0..3 {
        let started = Instant::now();
        let req = Request::get("/")
            .header("authorization", format!("Bearer {}", token("1", &format!("t-down-{i}"), 300)))
            .body(())
            .unwrap();
        let res = protected(&auth).oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers()["retry-after"], "1");
        assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
    }

    redis.restart().await;
    let back = Instant::now();
    loop {
        if status(&auth, &token("1", "t-after", 300)).await == StatusCode::OK {
            break;
        }
        assert!(back.elapsed() < Duration::from_secs(5), "never recovered after Redis came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
