//! The authenticator of the routes that need a token.

use std::sync::Arc;
use std::time::Duration;

use tower_gateway_auth::{Authenticator, MemoryStore, RedisStore, TokenStore};

use crate::config::{Config, ConfigError};

pub(super) fn authenticator(config: &Config, store: Option<Arc<dyn TokenStore>>) -> Result<Authenticator, ConfigError> {
    let jwt = &config.jwt;
    if jwt.private_key_file.is_some() {
        return Err(ConfigError::new(
            "jwt.private_key_file",
            "the gateway only verifies tokens: give it the public key, and the private key to user-service alone",
        ));
    }
    if !jwt.is_set() && jwt.algorithm.is_none() {
        return Err(ConfigError::new(
            "jwt",
            "routes need tokens but no key is configured (JWT_ALGORITHM and JWT_PUBLIC_KEY_FILE, or JWT_SECRET_FILE)",
        ));
    }
    let store: Arc<dyn TokenStore> = match (store, &config.redis_url) {
        (Some(store), _) => store,
        (None, Some(url)) => Arc::new(RedisStore::with_connection(super::redis::connection(url)?)),
        (None, None) => Arc::new(MemoryStore::new()),
    };
    jwt.authenticator()
        .map_err(|e| ConfigError::new(format!("jwt.{}", e.field), e.message))?
        .store(store)
        .cache_bound(Duration::from_millis(config.revocation.cache_bound_ms))
        .fail_open(config.revocation.fail_open)
        .build()
        .map_err(|e| ConfigError::new("jwt", e))
}

/// What the authenticator is built from: its settings and the bytes of its key
/// files, so that a key rotated in place makes a new one.
pub(super) fn source(config: &Config) -> Vec<u8> {
    let jwt = &config.jwt;
    let mut source = format!("{jwt:?}{:?}{:?}", config.revocation, config.redis_url).into_bytes();
    for file in [&jwt.secret_file, &jwt.public_key_file].into_iter().flatten() {
        source.extend(std::fs::read(file).unwrap_or_default());
    }
    source
}
