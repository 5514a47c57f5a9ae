//! Where token state lives: which tokens were revoked.
//!
//! [`RedisStore`] shares state between gateway replicas and with the services
//! that revoke tokens; [`MemoryStore`] keeps it in one process (the demo's
//! default, and the unit tests' double).

mod memory;
mod redis;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::{SystemTime, UNIX_EPOCH};

pub use self::memory::MemoryStore;
pub use self::redis::{RedisStore, RedisStoreBuilder};
use crate::error::StoreError;

/// A boxed, sendable future, as the store methods return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a store knows of a token that validated locally.
#[derive(Debug, Clone, Copy)]
pub struct TokenRecord<'a> {
    /// Its id: the `jti` claim, or the signature when there is none.
    pub id: &'a str,
    /// Its subject.
    pub subject: &'a str,
    /// When it was issued (seconds since the Unix epoch), if it says.
    pub issued_at: Option<u64>,
    /// When it expires (seconds since the Unix epoch).
    pub expires_at: u64,
}

impl TokenRecord<'_> {
    /// How long a record about the token must live: until it expires, plus the
    /// largest leeway a verifier may grant past `exp`, plus a second for rounding
    /// (a revocation that lapsed while a verifier still accepted the token would
    /// bring it back to life).
    pub fn remaining_secs(&self) -> u64 {
        self.expires_at.saturating_sub(unix_now()) + crate::MAX_LEEWAY.as_secs() + 1
    }
}

/// The state of a token in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenState {
    /// Not revoked.
    Active,
    /// Revoked, by id or by subject.
    Revoked,
}

/// Keeps the state of tokens. All records expire on their own once the tokens
/// they speak of have expired.
pub trait TokenStore: fmt::Debug + Send + Sync + 'static {
    /// The state of a token that validated locally. A store may record it as
    /// active (the seed's cache of valid tokens).
    fn check<'a>(&'a self, token: TokenRecord<'a>) -> BoxFuture<'a, Result<TokenState, StoreError>>;

    /// Revokes one token until it expires: a single write.
    fn revoke<'a>(&'a self, token: TokenRecord<'a>) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Revokes every token of `subject` issued before `before` (seconds since the
    /// Unix epoch; the second itself included); the record may be dropped after `until`.
    fn revoke_subject<'a>(&'a self, subject: &'a str, before: u64, until: u64)
    -> BoxFuture<'a, Result<(), StoreError>>;

    /// Answers if the store is reachable.
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>>;
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Whether a subject revocation at `before` covers a token issued at `issued_at`.
/// `iat` has a granularity of seconds, so a token issued in the very second of
/// the revocation is covered too; so is a token that does not say when it was issued.
pub(crate) fn revoked_by_subject(issued_at: Option<u64>, before: u64) -> bool {
    issued_at.is_none_or(|iat| iat <= before)
}

#[cfg(test)]
mod ttl_tests {
    use super::*;

    #[test]
    fn records_outlive_the_token_by_the_largest_leeway() {
        let record = TokenRecord { id: "t", subject: "7", issued_at: None, expires_at: unix_now() + 10 };
        assert!(record.remaining_secs() >= 10 + crate::MAX_LEEWAY.as_secs() + 1 - 1, "{}", record.remaining_secs());
        let expired = TokenRecord { expires_at: unix_now().saturating_sub(100), ..record };
        assert_eq!(expired.remaining_secs(), crate::MAX_LEEWAY.as_secs() + 1);
    }
}
