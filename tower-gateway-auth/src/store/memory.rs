use std::collections::HashMap;
use std::sync::Mutex;

use super::{BoxFuture, TokenRecord, TokenState, TokenStore, revoked_by_subject, unix_now};
use crate::error::StoreError;

/// Revocations kept in this process: for one gateway, the demo, and tests.
///
/// Share one `Arc<MemoryStore>` between the layer and whatever revokes tokens.
/// Records are dropped once the tokens they speak of have expired.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Token id → when its revocation may be forgotten.
    revoked: HashMap<String, u64>,
    /// Subject → (tokens issued before this are revoked, forget after).
    revoked_before: HashMap<String, (u64, u64)>,
    writes: u64,
}

impl State {
    /// Drops expired records every so many writes, so the maps stay small.
    fn after_write(&mut self) {
        self.writes += 1;
        if self.writes.is_multiple_of(256) {
            let now = unix_now();
            self.revoked.retain(|_, until| *until > now);
            self.revoked_before.retain(|_, (_, until)| *until > now);
        }
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-written.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl TokenStore for MemoryStore {
    fn check<'a>(&'a self, token: TokenRecord<'a>) -> BoxFuture<'a, Result<TokenState, StoreError>> {
        let state = self.state();
        let now = unix_now();
        let by_id = state.revoked.get(token.id).is_some_and(|until| *until > now);
        let by_subject = state
            .revoked_before
            .get(token.subject)
            .is_some_and(|(before, until)| *until > now && revoked_by_subject(token.issued_at, *before));
        let result = if by_id || by_subject { TokenState::Revoked } else { TokenState::Active };
        Box::pin(std::future::ready(Ok(result)))
    }

    fn revoke<'a>(&'a self, token: TokenRecord<'a>) -> BoxFuture<'a, Result<(), StoreError>> {
        let mut state = self.state();
        state.revoked.insert(token.id.to_owned(), token.expires_at);
        state.after_write();
        Box::pin(std::future::ready(Ok(())))
    }

    fn revoke_subject<'a>(
        &'a self,
        subject: &'a str,
        before: u64,
        until: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let mut state = self.state();
        let entry = state.revoked_before.entry(subject.to_owned()).or_insert((before, until));
        *entry = (entry.0.max(before), entry.1.max(until));
        state.after_write();
        Box::pin(std::future::ready(Ok(())))
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(std::future::ready(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record<'a>(id: &'a str, subject: &'a str, issued_at: u64) -> TokenRecord<'a> {
        TokenRecord { id, subject, issued_at: Some(issued_at), expires_at: unix_now() + 60 }
    }

    #[tokio::test]
    async fn revokes_by_id_and_by_subject() {
        let store = MemoryStore::new();
        let now = unix_now();
        assert_eq!(store.check(record("t1", "u1", now)).await.unwrap(), TokenState::Active);
        store.revoke(record("t1", "u1", now)).await.unwrap();
        assert_eq!(store.check(record("t1", "u1", now)).await.unwrap(), TokenState::Revoked);
        assert_eq!(store.check(record("t2", "u1", now)).await.unwrap(), TokenState::Active);

        store.revoke_subject("u2", now, now + 60).await.unwrap();
        assert_eq!(store.check(record("t3", "u2", now - 10)).await.unwrap(), TokenState::Revoked);
        assert_eq!(store.check(record("t4", "u2", now)).await.unwrap(), TokenState::Revoked, "same second");
        assert_eq!(store.check(record("t6", "u2", now + 1)).await.unwrap(), TokenState::Active, "issued after T");
        let no_iat = TokenRecord { issued_at: None, ..record("t5", "u2", 0) };
        assert_eq!(store.check(no_iat).await.unwrap(), TokenState::Revoked);
    }

    #[tokio::test]
    async fn expired_records_are_forgotten() {
        let store = MemoryStore::new();
        let past = TokenRecord { expires_at: unix_now() - 1, ..record("old", "u", 0) };
        store.revoke(past).await.unwrap();
        for i in 0..300 {
            store.revoke(record(&format!("t{i}"), "u", 0)).await.unwrap();
        }
        assert!(!store.state().revoked.contains_key("old"));
        assert_eq!(store.state().revoked.len(), 300);
    }
}
