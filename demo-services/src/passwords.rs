//! Password hashing for user-service: Argon2id off the async threads, with
//! slots of its own for logins, bounded in memory and in waiting time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use argon2::Argon2;
use tokio::sync::Semaphore;

use crate::error::ApiError;

/// Hashes and checks passwords with Argon2id, off the async threads. Logins
/// have hashing slots of their own, apart from everything else that hashes
/// (sign-ups, password changes, the current-password check), so that no amount
/// of those keeps a user from logging in.
#[derive(Clone)]
pub struct Passwords {
    params: argon2::Params,
    /// The hash of a password nobody has, to check against when the user does not
    /// exist, so that a login for an unknown email takes as long as a wrong password.
    decoy: Arc<str>,
    /// The slots of logins.
    login: Lane,
    /// The slots of everything else.
    changes: Lane,
    /// Argon2's working memory, one buffer per slot, made once and reused: a
    /// fresh 19 MiB per hash, freed into the allocator, fragments its heap until
    /// the process holds hundreds of MB after a flood.
    memory: Arc<Mutex<Vec<Vec<argon2::Block>>>>,
}

/// Hashing slots: one permit per hash that may run at once, and the requests
/// waiting for one, at most four per slot (more are refused).
#[derive(Clone)]
struct Lane {
    permits: Arc<Semaphore>,
    slots: usize,
    waiting: Arc<AtomicUsize>,
}

impl Lane {
    fn new(slots: usize) -> Self {
        Self { permits: Arc::new(Semaphore::new(slots)), slots, waiting: Arc::new(AtomicUsize::new(0)) }
    }

    /// A slot, waiting up to `HASH_WAIT` behind at most four per slot.
    async fn acquire(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        let busy = || ApiError::unavailable("too many password checks at once; try again");
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Ok(permit);
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.slots * 4 {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(busy());
        }
        let acquired = tokio::time::timeout(HASH_WAIT, self.permits.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        match acquired {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(busy()),
        }
    }
}

/// What a hash is for: the slots it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Use {
    Login,
    Change,
}

impl std::fmt::Debug for Passwords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Passwords")
            .field("login_permits", &self.login.permits.available_permits())
            .field("change_permits", &self.changes.permits.available_permits())
            .finish_non_exhaustive()
    }
}

/// How long a request waits for a hashing slot before it is told to come back.
const HASH_WAIT: Duration = Duration::from_secs(2);

/// What the hashes running at once may use by default: 64 MiB, three at Argon2's
/// default 19 MiB.
pub const DEFAULT_HASH_MEMORY: usize = 64 * 1024 * 1024;

/// A password hash that could not be made or read.
fn hash_error(err: impl std::fmt::Display) -> ApiError {
    ApiError::internal(format!("password hash: {err}"))
}

/// Argon2 into `out`, in `memory` (grown if these parameters need more).
fn argon2_into(
    argon2: &Argon2<'_>,
    params: &argon2::Params,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
    memory: &mut Vec<argon2::Block>,
) -> Result<(), argon2::Error> {
    let blocks = params.block_count();
    if memory.len() < blocks {
        memory.resize(blocks, argon2::Block::new());
    }
    argon2.hash_password_into_with_memory(password, salt, out, &mut memory[..blocks])
}

/// A new PHC string (`$argon2id$v=19$m=..$salt$hash`) for `password`.
fn new_hash(params: &argon2::Params, password: &[u8], memory: &mut Vec<argon2::Block>) -> Result<String, ApiError> {
    use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
    let argon2 = Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params.clone());
    let salt = argon2::password_hash::generate_salt();
    let mut out = [0u8; argon2::Params::DEFAULT_OUTPUT_LEN];
    argon2_into(&argon2, params, password, &salt, &mut out, memory).map_err(hash_error)?;
    let hash = PasswordHash {
        algorithm: argon2::Algorithm::Argon2id.ident(),
        version: Some(argon2::Version::V0x13.into()),
        params: ParamsString::try_from(params).map_err(hash_error)?,
        salt: Some(Salt::new(&salt).map_err(hash_error)?),
        hash: Some(Output::new(&out).map_err(hash_error)?),
    };
    Ok(hash.to_string())
}

/// Whether `password` is the one `hash` (a PHC string) was made from, compared in
/// constant time.
fn matches(hash: &str, password: &[u8], memory: &mut Vec<argon2::Block>) -> Result<bool, ApiError> {
    use argon2::password_hash::phc::{Output, PasswordHash};
    let parsed = PasswordHash::new(hash).map_err(hash_error)?;
    let algorithm = argon2::Algorithm::try_from(parsed.algorithm.as_str()).map_err(hash_error)?;
    let version = match parsed.version {
        Some(v) => argon2::Version::try_from(v).map_err(hash_error)?,
        None => argon2::Version::default(),
    };
    let params = argon2::Params::try_from(&parsed).map_err(hash_error)?;
    let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else {
        return Err(hash_error("no salt or output"));
    };
    let argon2 = Argon2::new(algorithm, version, params.clone());
    let mut out = vec![0u8; expected.len()];
    argon2_into(&argon2, &params, password, salt.as_ref(), &mut out, memory).map_err(hash_error)?;
    Ok(Output::new(&out).is_ok_and(|out| &out == expected))
}

impl Passwords {
    /// Argon2id with `params` (use `argon2::Params::default()` in production),
    /// within the default memory budget.
    pub fn new(params: argon2::Params) -> Self {
        Self::with_memory_budget(params, DEFAULT_HASH_MEMORY)
    }

    /// Argon2id with `params`, running only as many hashes at once as fit in
    /// `budget` bytes, each in memory made once and reused: a third of them
    /// (at least one) for sign-ups and changes, the rest (at least one) for
    /// logins. A request that finds its slots all busy waits up to 2 s behind
    /// at most four times as many others; past that it is answered `503` with
    /// `Retry-After` rather than queued without bound.
    pub fn with_memory_budget(params: argon2::Params, budget: usize) -> Self {
        let per_hash = params.block_count().saturating_mul(std::mem::size_of::<argon2::Block>()).max(1);
        let fit = budget / per_hash;
        let changes = (fit / 3).max(1);
        let login = fit.saturating_sub(changes).max(1);
        let mut memory = Vec::new();
        let decoy = new_hash(&params, b"a password nobody has", &mut memory).expect("valid Argon2 parameters");
        Self {
            params,
            decoy: decoy.into(),
            login: Lane::new(login),
            changes: Lane::new(changes),
            memory: Arc::new(Mutex::new(vec![memory])),
        }
    }

    /// The cheapest parameters Argon2 allows: for tests only.
    pub fn for_tests() -> Self {
        Self::new(argon2::Params::new(argon2::Params::MIN_M_COST, 1, 1, None).expect("valid parameters"))
    }

    /// How many hashes may run at once: logins, and everything else.
    pub fn concurrency(&self) -> (usize, usize) {
        (self.login.slots, self.changes.slots)
    }

    /// Runs `work` on a blocking thread, with a hashing slot for `used` and its memory.
    async fn run<T: Send + 'static>(
        &self,
        used: Use,
        work: impl FnOnce(&mut Vec<argon2::Block>) -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let permit = match used {
            Use::Login => self.login.acquire().await?,
            Use::Change => self.changes.acquire().await?,
        };
        let pool = self.memory.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            // At most one buffer per permit ever exists: a permit holder takes one
            // or, if none is free yet, makes the one it will give back.
            let mut memory = pool.lock().unwrap_or_else(|e| e.into_inner()).pop().unwrap_or_default();
            let result = work(&mut memory);
            pool.lock().unwrap_or_else(|e| e.into_inner()).push(memory);
            result
        })
        .await
        .map_err(ApiError::internal)
    }

    pub(crate) async fn hash(&self, password: String) -> Result<String, ApiError> {
        let params = self.params.clone();
        self.run(Use::Change, move |memory| new_hash(&params, password.as_bytes(), memory)).await?
    }

    /// Whether `password` is the one `hash` was made from (never, without a
    /// hash, after as long a check), on the slots of `used`.
    pub(crate) async fn verify(&self, used: Use, password: String, hash: Option<String>) -> Result<bool, ApiError> {
        let (hash, real) = match hash {
            Some(hash) => (hash, true),
            None => (self.decoy.to_string(), false),
        };
        let matched = self.run(used, move |memory| matches(&hash, password.as_bytes(), memory)).await?;
        Ok(matched? && real)
    }
}

#[cfg(test)]
mod tests {
    use argon2::password_hash::{PasswordHasher, PasswordVerifier};

    use axum::http::StatusCode;

    use super::*;

    fn cheap() -> argon2::Params {
        argon2::Params::new(argon2::Params::MIN_M_COST, 1, 1, None).unwrap()
    }

    #[test]
    fn hashes_are_standard_phc_strings_both_ways() {
        let mut memory = Vec::new();
        // Made here, checked by the argon2 crate's own verifier...
        let ours = new_hash(&cheap(), b"correct horse", &mut memory).unwrap();
        assert!(ours.starts_with("$argon2id$v=19$m=8,t=1,p=1$"), "{ours}");
        let argon2 = Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, cheap());
        assert!(argon2.verify_password(b"correct horse", ours.as_str()).is_ok());
        // ...and hashes the crate made (databases from before) checked here, with
        // other parameters than the service's.
        let theirs = Argon2::default().hash_password(b"correct horse").unwrap().to_string();
        assert_eq!(matches(&theirs, b"correct horse", &mut memory), Ok(true));
        assert_eq!(matches(&theirs, b"wrong horse", &mut memory), Ok(false));
        assert_eq!(matches(&ours, b"wrong horse", &mut memory), Ok(false));
        assert!(matches("not a hash", b"x", &mut memory).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn sign_ups_and_changes_cannot_take_the_slots_of_logins() {
        let passwords = Passwords::with_memory_budget(cheap(), 1);
        let hash = passwords.hash("correct horse".into()).await.unwrap();
        // Every slot of changes is held, and its queue is full.
        let slots = u32::try_from(passwords.changes.slots).unwrap();
        let _held = passwords.changes.permits.clone().acquire_many_owned(slots).await.unwrap();
        passwords.changes.waiting.store(passwords.changes.slots * 4, Ordering::Relaxed);
        let refused = passwords.hash("another password".into()).await.unwrap_err();
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
        // A login still hashes at once.
        assert_eq!(passwords.verify(Use::Login, "correct horse".into(), Some(hash)).await, Ok(true));
    }

    #[test]
    fn a_memory_budget_gives_logins_two_thirds_of_the_slots() {
        let params = argon2::Params::default();
        let per_hash = params.block_count() * std::mem::size_of::<argon2::Block>();
        assert_eq!(Passwords::with_memory_budget(params.clone(), 3 * per_hash).concurrency(), (2, 1));
        assert_eq!(Passwords::with_memory_budget(params.clone(), 6 * per_hash).concurrency(), (4, 2));
        assert_eq!(Passwords::with_memory_budget(params, 1).concurrency(), (1, 1), "at least one each");
    }

    #[tokio::test]
    async fn a_flood_is_told_to_come_back_instead_of_queueing() {
        // One slot; four may wait; the rest are 503 at once.
        let passwords = Passwords::with_memory_budget(cheap(), 1);
        assert_eq!(passwords.concurrency(), (1, 1), "one slot for logins, one for the rest");
        let hash = passwords.hash("correct horse".into()).await.unwrap();
        let mut checks = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let (passwords, hash) = (passwords.clone(), hash.clone());
            checks.spawn(async move { passwords.verify(Use::Login, "correct horse".into(), Some(hash)).await });
        }
        let (mut ok, mut busy) = (0, 0);
        while let Some(done) = checks.join_next().await {
            match done.unwrap() {
                Ok(true) => ok += 1,
                Err(err) if err.status == StatusCode::SERVICE_UNAVAILABLE => busy += 1,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(ok + busy, 50);
        assert!(ok >= 5 && busy > 0, "{ok} checked, {busy} refused");
        assert_eq!(passwords.memory.lock().unwrap().len(), 1, "one buffer for one slot, reused");
    }
}
