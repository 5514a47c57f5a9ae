//! One contract for every `TokenStore`, run against `MemoryStore` and against
//! `RedisStore` on a real redis-server: what each method promises, and that the
//! two stores agree.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tower_gateway_auth::store::{TokenRecord, TokenState};
use tower_gateway_auth::{MemoryStore, RedisStore, TokenStore};
use tower_gateway_tests::RedisServer;

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn record<'a>(id: &'a str, subject: &'a str, issued_at: Option<u64>) -> TokenRecord<'a> {
    TokenRecord { id, subject, issued_at, expires_at: now() + 600 }
}

async fn contract(store: Arc<dyn TokenStore>) {
    let t = now();
    store.ping().await.expect("ping answers");

    // check: an unknown token is active, and stays so when checked again.
    assert_eq!(store.check(record("a", "u1", Some(t))).await.unwrap(), TokenState::Active);
    assert_eq!(store.check(record("a", "u1", Some(t))).await.unwrap(), TokenState::Active);

    // revoke: that token only, not its subject's others.
    store.revoke(record("a", "u1", Some(t))).await.unwrap();
    assert_eq!(store.check(record("a", "u1", Some(t))).await.unwrap(), TokenState::Revoked);
    assert_eq!(store.check(record("b", "u1", Some(t))).await.unwrap(), TokenState::Active);
    // Revoking twice is the same as once.
    store.revoke(record("a", "u1", Some(t))).await.unwrap();
    assert_eq!(store.check(record("a", "u1", Some(t))).await.unwrap(), TokenState::Revoked);

    // revoke_subject: tokens issued up to the cut-off (that second included, and
    // those that do not say), not after; other subjects untouched.
    store.revoke_subject("u2", t - 100, t + 600).await.unwrap();
    assert_eq!(store.check(record("c", "u2", Some(t - 200))).await.unwrap(), TokenState::Revoked);
    assert_eq!(store.check(record("d", "u2", Some(t - 100))).await.unwrap(), TokenState::Revoked);
    assert_eq!(store.check(record("e", "u2", Some(t - 99))).await.unwrap(), TokenState::Active);
    assert_eq!(store.check(record("f", "u2", None)).await.unwrap(), TokenState::Revoked);
    assert_eq!(store.check(record("g", "u3", Some(t - 200))).await.unwrap(), TokenState::Active);

    // A later cut-off moves it forward...
    store.revoke_subject("u2", t - 50, t + 600).await.unwrap();
    assert_eq!(store.check(record("h", "u2", Some(t - 60))).await.unwrap(), TokenState::Revoked);
    // ...and an earlier one arriving late never moves it back.
    store.revoke_subject("u2", t - 500, t + 10).await.unwrap();
    assert_eq!(store.check(record("i", "u2", Some(t - 60))).await.unwrap(), TokenState::Revoked);
    assert_eq!(store.check(record("j", "u2", Some(t - 49))).await.unwrap(), TokenState::Active);

    // A token checked active before its subject was revoked is revoked after.
    assert_eq!(store.check(record("k", "u4", Some(t - 10))).await.unwrap(), TokenState::Active);
    store.revoke_subject("u4", t, t + 600).await.unwrap();
    assert_eq!(store.check(record("k", "u4", Some(t - 10))).await.unwrap(), TokenState::Revoked);
}

#[tokio::test]
async fn memory_store_keeps_the_contract() {
    contract(Arc::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn redis_store_keeps_the_contract() {
    let redis = RedisServer::start().await;
    contract(Arc::new(RedisStore::new(redis.url()).unwrap())).await;
}

/// Failures are values a caller can match, with the store's own error to downcast.
#[tokio::test]
async fn store_and_config_errors_are_typed() {
    use tower_gateway_auth::{ConfigError, Key, StoreErrorKind};

    let nobody = tower_gateway_tests::closed_port();
    let store = RedisStore::builder(format!("redis://{nobody}")).build().unwrap();
    let err = store.ping().await.unwrap_err();
    assert!(matches!(err.kind(), StoreErrorKind::Unavailable | StoreErrorKind::Timeout), "{err}");
    if err.kind() == StoreErrorKind::Unavailable {
        let source = std::error::Error::source(&err).expect("the cause is kept");
        assert!(source.downcast_ref::<redis::RedisError>().is_some(), "{source}");
    }

    let err = RedisStore::new("not a url").unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Config, "{err}");

    assert_eq!(Key::hs256(b"short").unwrap_err(), ConfigError::SecretTooShort);
}
