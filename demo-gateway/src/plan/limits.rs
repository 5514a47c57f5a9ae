//! Rate limits: each named limit's quota, store and key.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::HeaderName;
use tower_gateway::rate_limit::key::{ClientIp, Global, Header, JsonField};
use tower_gateway::rate_limit::{self, Limiter, OnStoreError, Quota};
use tower_gateway_auth::{Claim, ClaimKey};

use super::{BuiltLimit, RouteKey};
use crate::config::{Config, ConfigError, LimitConfig, LimitStore, StoreFailure};

/// One part of a limit's key, from its name in the configuration.
pub(super) fn key_part(at: &str, part: &str, built: &mut BuiltLimit) -> Result<RouteKey, ConfigError> {
    let wrong = |why: &str| ConfigError::new(at, format!("{part:?}: {why}"));
    Ok(match part.split_once(':') {
        None if part == "client_ip" => Arc::new(ClientIp::new()),
        None if part == "global" => Arc::new(Global),
        None if part == "subject" => {
            built.needs_identity = true;
            Arc::new(ClaimKey::subject())
        }
        Some(("claim", claim)) => {
            built.needs_identity = true;
            Arc::new(ClaimKey::new(match claim {
                "sub" => Claim::Subject,
                "email" => Claim::Email,
                "iss" => Claim::Issuer,
                _ => return Err(wrong("the claims are sub, email and iss")),
            }))
        }
        Some(("header", name)) => {
            Arc::new(Header::new(HeaderName::try_from(name).map_err(|_| wrong("not a header name"))?))
        }
        Some(("json", field)) if !field.is_empty() => {
            built.json_fields.push(field.to_owned());
            Arc::new(JsonField::new(field))
        }
        _ => {
            return Err(wrong(
                r#"use "client_ip", "subject", "claim:<name>", "header:<name>", "json:<field>" or "global""#,
            ));
        }
    })
}

pub(super) fn limit_of(
    name: &str,
    config: &LimitConfig,
    redis: Option<&Arc<dyn rate_limit::Store>>,
) -> Result<BuiltLimit, ConfigError> {
    let at = format!("limits.{name}");
    let period = config.per.duration();
    let mut quota = Quota::try_new(config.rate, period).map_err(|e| ConfigError::new(format!("{at}.rate"), e))?;
    if let Some(burst) = config.burst {
        if burst == 0 {
            return Err(ConfigError::new(format!("{at}.burst"), "must be at least 1"));
        }
        quota = quota.burst(burst);
    }
    let mut builder = Limiter::builder(name, quota);
    match (config.store, redis) {
        (None | Some(LimitStore::Redis), Some(redis)) => builder = builder.store(redis.clone()),
        (Some(LimitStore::Redis), None) => {
            return Err(ConfigError::new(format!("{at}.store"), "\"redis\" needs redis_url"));
        }
        (None | Some(LimitStore::Memory), _) => {}
    }
    builder = builder.on_store_error(match config.on_store_error {
        StoreFailure::Open => OnStoreError::FailOpen,
        StoreFailure::Closed => OnStoreError::FailClosed,
    });
    let limiter = builder.build().map_err(|e| ConfigError::new(&at, e))?;
    let mut built = BuiltLimit { limiter, key: Arc::new(Global), needs_identity: false, json_fields: Vec::new() };
    let parts = config.key.parts();
    let field = |i: usize| if parts.len() == 1 { format!("{at}.key") } else { format!("{at}.key[{i}]") };
    let mut keys = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        keys.push(key_part(&field(i), part, &mut built)?);
    }
    let mut keys = keys.into_iter();
    built.key = match (keys.next(), keys.next(), keys.next(), keys.next()) {
        (Some(a), None, None, None) => a,
        (Some(a), Some(b), None, None) => Arc::new((a, b)),
        (Some(a), Some(b), Some(c), None) => Arc::new((a, b, c)),
        _ => return Err(ConfigError::new(format!("{at}.key"), "give one to three parts")),
    };
    Ok(built)
}

/// Every named limit; one whose configuration (and Redis) is as in `previous`
/// is kept, with its state and counts. Each limit refused adds to `errors`.
pub(super) fn limits_of(
    config: &Config,
    previous: Option<(&Config, &BTreeMap<String, Arc<BuiltLimit>>)>,
    errors: &mut Vec<ConfigError>,
) -> BTreeMap<String, Arc<BuiltLimit>> {
    let mut limits = BTreeMap::new();
    let redis: Option<Arc<dyn rate_limit::Store>> = match &config.redis_url {
        Some(url) if !config.limits.is_empty() => match super::redis::connection(url) {
            Ok(conn) => Some(Arc::new(rate_limit::RedisStore::with_connection(conn))),
            Err(err) => {
                errors.push(err);
                return limits;
            }
        },
        _ => None,
    };
    for (name, limit) in &config.limits {
        let kept = previous
            .filter(|(old, _)| old.redis_url == config.redis_url && old.limits.get(name) == Some(limit))
            .and_then(|(_, built)| built.get(name));
        match kept {
            Some(kept) => drop(limits.insert(name.clone(), kept.clone())),
            None => match limit_of(name, limit, redis.as_ref()) {
                Ok(built) => drop(limits.insert(name.clone(), Arc::new(built))),
                Err(err) => errors.push(err),
            },
        }
    }
    limits
}
