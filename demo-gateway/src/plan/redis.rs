//! The gateway's one Redis connection: the token store and every limit share
//! it, and a reload that keeps `redis_url` keeps it.

use std::sync::Mutex;

use tower_gateway::redis_connection::{RedisConfig, RedisConnection};

use crate::config::ConfigError;

/// The connection for `url`: the one made before when the URL is the same,
/// else a new one (dialled when first used).
pub(super) fn connection(url: &str) -> Result<RedisConnection, ConfigError> {
    static LAST: Mutex<Option<(String, RedisConnection)>> = Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((made_for, conn)) = last.as_ref()
        && made_for == url
    {
        return Ok(conn.clone());
    }
    let conn =
        RedisConfig::from_url(url).and_then(|config| config.connect()).map_err(|e| ConfigError::new("redis_url", e))?;
    *last = Some((url.to_owned(), conn.clone()));
    Ok(conn)
}
