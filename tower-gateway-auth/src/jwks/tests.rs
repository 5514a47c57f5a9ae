//! The source's schedule, single flight, cooldown and staleness, on paused time
//! with a fetch that is a function (the fetches over sockets are in `tests/jwks.rs`).

use std::sync::atomic::{AtomicUsize, Ordering};

use jsonwebtoken::{EncodingKey, Header};

use super::*;
use crate::{Authenticator, Claims, Issuer, Rejection};

const ED_PRIVATE: &[u8] = include_bytes!("../../tests/fixtures/ed25519-private.pem");
const ED_PUBLIC: &[u8] = include_bytes!("../../tests/fixtures/ed25519-public.pem");

fn key(kid: &str) -> Key {
    Key::public_pem(Algorithm::EdDSA, ED_PUBLIC).unwrap().with_kid(kid)
}

fn token(kid: &str) -> String {
    crate::install_default_crypto();
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid.into());
    let now = crate::store::unix_now();
    let mut claims = Claims::new("7", now + 600);
    claims.iss = Some("idp".into());
    claims.iat = Some(now);
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_pem(ED_PRIVATE).unwrap()).unwrap()
}

use jsonwebtoken::Algorithm;

/// A provider as a function: it serves the kids in `kids` (none: it is down),
/// takes 50 ms, and counts its fetches.
#[derive(Clone, Default)]
struct Provider {
    kids: Arc<Mutex<Vec<&'static str>>>,
    fetches: Arc<AtomicUsize>,
}

impl Provider {
    fn serve(&self, kids: &[&'static str]) {
        *self.kids.lock().unwrap() = kids.to_vec();
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    fn source(&self, settings: impl FnOnce(RemoteKeysBuilder) -> RemoteKeysBuilder) -> RemoteKeys {
        let provider = self.clone();
        let fetch: FetchFn = Arc::new(move || {
            let provider = provider.clone();
            Box::pin(async move {
                provider.fetches.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                let kids = provider.kids.lock().unwrap().clone();
                if kids.is_empty() {
                    return Err(FetchError::new(FetchOutcome::Unreachable, "down"));
                }
                let keys = kids.into_iter().map(key).collect();
                Ok(Fetched { parsed: Parsed { keys, skipped: Vec::new() }, max_age: Some(Duration::from_secs(300)) })
            })
        });
        RemoteKeys::from_fn(|builder| *builder = settings(builder.clone()), fetch)
    }
}

fn authenticator(keys: &RemoteKeys) -> Authenticator {
    Authenticator::builder_for(Issuer::new("idp", keys.clone())).build().unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_thousand_requests_bearing_a_new_kid_cause_one_fetch() {
    let provider = Provider::default();
    provider.serve(&["k1"]);
    let keys = provider.source(|b| b);
    let auth = authenticator(&keys);
    assert!(keys.prefetch().await);
    assert_eq!(auth.authenticate(&token("k1")).await.unwrap().sub, "7");
    assert_eq!(provider.fetches(), 1);

    provider.serve(&["k1", "k2"]);
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..1_000 {
        let (auth, token) = (auth.clone(), token("k2"));
        requests.spawn(async move { auth.authenticate(&token).await.map(|who| who.sub.clone()) });
    }
    let mut accepted = 0;
    while let Some(result) = requests.join_next().await {
        assert_eq!(result.unwrap().unwrap(), "7");
        accepted += 1;
    }
    assert_eq!((accepted, provider.fetches()), (1_000, 2), "one fetch for the new kid");
    let stats = keys.stats();
    assert_eq!((stats.fetched(FetchOutcome::Ok), stats.keys), (2, 2));
}

#[tokio::test(start_paused = true)]
async fn made_up_kids_fetch_at_most_once_per_cooldown() {
    let provider = Provider::default();
    provider.serve(&["k1"]);
    let keys = provider.source(|b| b);
    let auth = authenticator(&keys);
    assert!(keys.prefetch().await);
    for i in 0..50 {
        let err = auth.authenticate(&token(&format!("made-up-{i}"))).await.unwrap_err();
        assert_eq!(err, Rejection::InvalidToken, "an unknown kid after the fetch is an invalid token");
    }
    assert_eq!(provider.fetches(), 2, "the prefetch, and one for the first made-up kid");
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(auth.authenticate(&token("made-up-again")).await.unwrap_err(), Rejection::InvalidToken);
    assert_eq!(provider.fetches(), 3, "one more once the cooldown is over");
}

#[tokio::test(start_paused = true)]
async fn a_provider_down_serves_the_last_set_until_its_bound_then_503() {
    let provider = Provider::default();
    provider.serve(&["k1"]);
    let keys = provider.source(|b| b.max_stale(Duration::from_secs(3_600)));
    let auth = authenticator(&keys).clone();
    assert!(keys.prefetch().await);
    provider.serve(&[]);
    // The schedule refreshes every 300 s (the max-age) and fails from now on.
    tokio::time::sleep(Duration::from_secs(3_000)).await;
    assert_eq!(auth.authenticate(&token("k1")).await.unwrap().sub, "7", "the last good set serves");
    let stats = keys.stats();
    assert!(stats.fetched(FetchOutcome::Unreachable) >= 5, "{stats:?}");
    assert!(stats.age.unwrap() >= Duration::from_secs(3_000));

    tokio::time::sleep(Duration::from_secs(700)).await;
    let err = auth.authenticate(&token("k1")).await.unwrap_err();
    assert_eq!(err, Rejection::KeySourceUnavailable, "past the bound: 503, not 401");
    let response = err.into_response::<bytes::Bytes>();
    assert_eq!(response.status(), http::StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key(http::header::RETRY_AFTER));

    provider.serve(&["k1"]);
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(auth.authenticate(&token("k1")).await.unwrap().sub, "7", "back once the provider is");
}

#[tokio::test(start_paused = true)]
async fn with_no_set_ever_fetched_a_token_is_503_not_401() {
    let provider = Provider::default();
    let keys = provider.source(|b| b);
    let auth = authenticator(&keys);
    assert!(!keys.prefetch().await);
    assert_eq!(auth.authenticate(&token("k1")).await.unwrap_err(), Rejection::KeySourceUnavailable);
    assert_eq!(auth.authenticate(&token("k1")).await.unwrap_err(), Rejection::KeySourceUnavailable);
    let fetches = provider.fetches();
    assert!(fetches <= 3, "the prefetch, and at most one per cooldown: {fetches}");
}

#[tokio::test(start_paused = true)]
async fn a_slow_fetch_bounds_how_long_requests_wait() {
    let provider = Provider::default();
    provider.serve(&["k1"]);
    let slow = provider.clone();
    let fetch: FetchFn = Arc::new(move || {
        let slow = slow.clone();
        Box::pin(async move {
            slow.fetches.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(60)).await;
            Err(FetchError::new(FetchOutcome::Timeout, "slow"))
        })
    });
    let keys = RemoteKeys::from_fn(|b| *b = b.clone().wait(Duration::from_secs(2)), fetch);
    let auth = authenticator(&keys);
    let started = Instant::now();
    assert_eq!(auth.authenticate(&token("k1")).await.unwrap_err(), Rejection::KeySourceUnavailable);
    assert_eq!(started.elapsed(), Duration::from_secs(2), "answered at the wait bound");
}
