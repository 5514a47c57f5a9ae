//! One contract for every `TokenStore`, run against `MemoryStore` and against
//! `RedisStore` on a real redis-server: what each method promises, and that the
//! two stores agree.

use std::sync::Arc;

use tower_gateway_auth::{MemoryStore, RedisStore, TokenStore};
use tower_gateway_tests::{RedisServer, token_store_contract as contract};

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
