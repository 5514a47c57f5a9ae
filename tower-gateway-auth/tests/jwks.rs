//! Keys from a real identity provider over a socket: rotation, a thousand
//! requests for a new key, the provider down, broken members, and every way a
//! fetch is refused.

mod idp;

use std::sync::Arc;
use std::time::{Duration, Instant};

use idp::{Idp, Mode, es256};
use serde_json::json;
use tower_gateway_auth::{Authenticator, FetchOutcome, Issuer, Rejection, RemoteKeys};

fn authenticator(idp: &Idp, keys: &RemoteKeys) -> Authenticator {
    Authenticator::builder_for(Issuer::new(idp.issuer.clone(), keys.clone()).audience("shop")).build().unwrap()
}

/// Polls `check` every 20 ms until it holds, for at most 10 s.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_rotation_is_followed_with_no_401_for_valid_tokens() {
    let idp = Idp::start().await;
    let keys = RemoteKeys::discovery(&idp.issuer).build().unwrap();
    let auth = authenticator(&idp, &keys);
    assert!(auth.prefetch().await);
    let old = idp.sign("k1", json!({ "aud": "shop" }));
    assert_eq!(auth.authenticate(&old).await.unwrap().sub, "7");

    idp.rotate("k2");
    let new = idp.sign("k2", json!({ "aud": "shop" }));
    assert_eq!(auth.authenticate(&new).await.unwrap().sub, "7", "the new key is fetched at once");
    assert_eq!(auth.authenticate(&old).await.unwrap().sub, "7", "the old key still verifies");
    assert_eq!(idp.jwks_hits(), 2);
    let stats = keys.stats();
    assert_eq!((stats.fetched(FetchOutcome::Ok), stats.keys), (2, 2), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_requests_bearing_a_new_kid_cause_exactly_one_fetch() {
    let idp = Idp::start().await;
    let keys = RemoteKeys::jwks(&idp.jwks_url()).build().unwrap();
    let auth = authenticator(&idp, &keys);
    assert!(auth.prefetch().await);
    idp.rotate("k2");
    // Slow enough that every request arrives while the fetch is under way.
    idp.set_mode(Mode::Slow(Duration::from_millis(300)));
    let token = Arc::new(idp.sign("k2", json!({ "aud": "shop" })));
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..1_000 {
        let (auth, token) = (auth.clone(), token.clone());
        requests.spawn(async move { auth.authenticate(&token).await.map(|who| who.sub.clone()) });
    }
    while let Some(result) = requests.join_next().await {
        assert_eq!(result.unwrap().unwrap(), "7");
    }
    assert_eq!(idp.jwks_hits(), 2, "the prefetch, and one fetch for 1,000 requests");
}

#[tokio::test]
async fn a_provider_down_serves_cached_keys_then_503_past_the_bound() {
    let idp = Idp::start().await;
    let keys = RemoteKeys::jwks(&idp.jwks_url())
        .max_stale(Duration::from_secs(2))
        .unknown_kid_cooldown(Duration::from_millis(100))
        .build()
        .unwrap();
    let auth = Authenticator::builder_for(Issuer::new(idp.issuer.clone(), keys.clone()))
        .cache_bound(Duration::ZERO)
        .build()
        .unwrap();
    assert!(auth.prefetch().await);
    let token = idp.sign("k1", json!({}));
    idp.stop();
    assert_eq!(auth.authenticate(&token).await.unwrap().sub, "7", "the last good set serves");
    eventually("503 once the set is older than its bound", async || {
        auth.authenticate(&token).await == Err(Rejection::KeySourceUnavailable)
    })
    .await;
    let stats = keys.stats();
    assert!(stats.fetched(FetchOutcome::Unreachable) >= 1, "{stats:?}");
    assert_eq!(Rejection::KeySourceUnavailable.into_response::<axum::body::Body>().status(), 503);
}

#[tokio::test]
async fn a_set_with_unusable_members_still_verifies_with_its_good_ones() {
    let idp = Idp::start().await;
    let mut enc = es256("enc").jwk;
    enc["use"] = json!("enc");
    let mut mismatched = es256("mismatched").jwk;
    mismatched["alg"] = json!("RS256");
    idp.set_mode(Mode::Extra(vec![
        json!({ "kty": "oct", "kid": "secret", "k": "c2VjcmV0IHNlY3JldCBzZWNyZXQgc2VjcmV0IHNlY3JldA" }),
        enc,
        mismatched,
        json!({ "kty": "EC", "kid": "short", "crv": "P-256", "x": "AAAA", "y": "AAAA" }),
        json!({ "kty": "RSA", "kid": "weak", "n": "AQAB", "e": "AQAB" }),
        json!({ "kty": "XYZ", "kid": "unknown" }),
        json!(42),
    ]));
    let keys = RemoteKeys::jwks(&idp.jwks_url()).build().unwrap();
    let auth = authenticator(&idp, &keys);
    assert!(auth.prefetch().await);
    assert_eq!(auth.authenticate(&idp.sign("k1", json!({ "aud": "shop" }))).await.unwrap().sub, "7");
    let stats = keys.stats();
    assert_eq!((stats.keys, stats.skipped), (1, 7), "{stats:?}");
}

#[tokio::test]
async fn an_oversized_slow_or_redirected_set_is_refused_and_counted() {
    let idp = Idp::start().await;
    let other = Idp::start().await;
    let keys = RemoteKeys::jwks(&idp.jwks_url())
        .max_body(16 * 1024)
        .timeout(Duration::from_millis(300))
        .unknown_kid_cooldown(Duration::from_millis(1))
        .build()
        .unwrap();
    let auth = authenticator(&idp, &keys);
    let token = idp.sign("k1", json!({ "aud": "shop" }));
    for (mode, outcome) in [
        (Mode::Oversized(64 * 1024), FetchOutcome::TooLarge),
        (Mode::Slow(Duration::from_secs(2)), FetchOutcome::Timeout),
        (Mode::Redirect(other.jwks_url()), FetchOutcome::Redirect),
        (Mode::Broken, FetchOutcome::Status),
    ] {
        idp.set_mode(mode.clone());
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(auth.authenticate(&token).await.unwrap_err(), Rejection::KeySourceUnavailable, "{mode:?}");
        assert_eq!(keys.stats().fetched(outcome), 1, "{mode:?}: {:?}", keys.stats());
    }
    assert_eq!(other.jwks_hits(), 0, "the redirect to another origin was not followed");
    idp.set_mode(Mode::Redirect("/jwks-moved".into()));
    assert!(!keys.prefetch().await, "a same-origin redirect is followed, and this one leads nowhere");
    assert_eq!(keys.stats().fetched(FetchOutcome::Status), 2);
    idp.set_mode(Mode::Normal);
    assert!(keys.prefetch().await);
    assert_eq!(auth.authenticate(&token).await.unwrap().sub, "7");
}

#[tokio::test]
async fn an_hs256_token_keyed_with_published_key_material_is_refused() {
    let idp = Idp::start().await;
    let keys = RemoteKeys::jwks(&idp.jwks_url()).build().unwrap();
    let auth = authenticator(&idp, &keys);
    assert!(auth.prefetch().await);
    let jwk = idp.jwk("k1");
    let materials = [
        jwk.to_string(),
        json!({ "keys": [jwk.clone()] }).to_string(),
        jwk["x"].as_str().unwrap().to_owned(),
        format!("{}{}", jwk["x"].as_str().unwrap(), jwk["y"].as_str().unwrap()),
    ];
    for (i, material) in materials.iter().enumerate() {
        for kid in [Some("k1"), None] {
            let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
            header.kid = kid.map(str::to_owned);
            let claims = json!({ "sub": "7", "iss": idp.issuer, "aud": "shop", "exp": idp::now() + 600 });
            let key = jsonwebtoken::EncodingKey::from_secret(material.as_bytes());
            let forged = jsonwebtoken::encode(&header, &claims, &key).unwrap();
            assert_eq!(auth.authenticate(&forged).await.unwrap_err(), Rejection::InvalidToken, "material {i}, {kid:?}");
        }
    }
    assert_eq!(idp.jwks_hits(), 1, "a forged kid of a known key fetches nothing");
}

#[tokio::test]
async fn two_issuers_on_one_authenticator_each_only_with_its_own_keys_and_audience() {
    let (a, b) = (Idp::start().await, Idp::start().await);
    let auth = Authenticator::builder_for(
        Issuer::new(a.issuer.clone(), RemoteKeys::jwks(&a.jwks_url()).build().unwrap()).audience("shop"),
    )
    .trust(Issuer::new(b.issuer.clone(), RemoteKeys::discovery(&b.issuer).build().unwrap()).audience("admin"))
    .build()
    .unwrap();
    assert!(auth.prefetch().await);
    assert_eq!(auth.authenticate(&a.sign("k1", json!({ "aud": "shop" }))).await.unwrap().iss, Some(a.issuer.clone()));
    assert_eq!(auth.authenticate(&b.sign("k1", json!({ "aud": "admin" }))).await.unwrap().iss, Some(b.issuer.clone()));
    // B's key, A's name: both publish a "k1", and A's is tried.
    let forged = b.sign("k1", json!({ "aud": "shop", "iss": a.issuer }));
    assert_eq!(auth.authenticate(&forged).await.unwrap_err(), Rejection::InvalidToken);
    // Each issuer's audience is its own.
    let wrong_audience = a.sign("k1", json!({ "aud": "admin" }));
    assert_eq!(auth.authenticate(&wrong_audience).await.unwrap_err(), Rejection::ClaimsRejected);
    let stranger = Idp::start().await;
    let unknown = stranger.sign("k1", json!({ "aud": "shop" }));
    assert_eq!(auth.authenticate(&unknown).await.unwrap_err(), Rejection::ClaimsRejected);
}

#[tokio::test]
async fn discovery_requires_the_document_to_name_the_configured_issuer() {
    let idp = Idp::start().await;
    let url = format!("{}/.well-known/openid-configuration", idp.issuer);
    let keys = RemoteKeys::discovery_at("https://someone-else.example", &url).build().unwrap();
    assert!(!keys.prefetch().await);
    assert_eq!(keys.stats().fetched(FetchOutcome::Invalid), 1);
    assert_eq!(idp.jwks_hits(), 0, "the key set of a document naming another issuer is never fetched");
}

#[tokio::test]
async fn roles_and_scopes_are_read_where_the_issuer_keeps_them() {
    let idp = Idp::start().await;
    let keys = RemoteKeys::jwks(&idp.jwks_url()).build().unwrap();
    let keycloak =
        Authenticator::builder_for(Issuer::new(idp.issuer.clone(), keys.clone()).roles_claim("realm_access.roles"))
            .build()
            .unwrap();
    let token = idp
        .sign("k1", json!({ "realm_access": { "roles": ["admin", "viewer"] }, "scope": "orders:read orders:write" }));
    let who = keycloak.authenticate(&token).await.unwrap();
    assert_eq!(who.roles, ["admin", "viewer"]);
    assert_eq!(who.scopes, ["orders:read", "orders:write"]);
    assert_eq!(who.value::<Vec<String>>("realm_access.roles").unwrap(), ["admin", "viewer"]);

    let auth0 = Authenticator::builder_for(
        Issuer::new(idp.issuer.clone(), keys).roles_claim("https://shop.example/roles").scopes_claim("scp"),
    )
    .build()
    .unwrap();
    let token = idp.sign("k1", json!({ "https://shop.example/roles": ["ops"], "scp": ["a", "b"], "scope": "ignored" }));
    let who = auth0.authenticate(&token).await.unwrap();
    assert_eq!(
        (who.roles.as_slice(), who.scopes.as_slice()),
        (["ops".to_owned()].as_slice(), ["a".to_owned(), "b".to_owned()].as_slice())
    );
}

#[tokio::test]
async fn revocation_works_for_tokens_of_every_issuer() {
    let (a, b) = (Idp::start().await, Idp::start().await);
    let auth =
        Authenticator::builder_for(Issuer::new(a.issuer.clone(), RemoteKeys::jwks(&a.jwks_url()).build().unwrap()))
            .trust(Issuer::new(b.issuer.clone(), RemoteKeys::jwks(&b.jwks_url()).build().unwrap()))
            .build()
            .unwrap();
    let (from_a, from_b) = (a.sign("k1", json!({ "jti": "a-1" })), b.sign("k1", json!({ "jti": "b-1" })));
    assert!(auth.authenticate(&from_a).await.is_ok() && auth.authenticate(&from_b).await.is_ok());
    auth.revoke_token(&from_b).await.unwrap();
    assert_eq!(auth.authenticate(&from_b).await.unwrap_err(), Rejection::Revoked);
    assert_eq!(
        auth.authenticate(&from_a).await.unwrap().iss,
        Some(a.issuer.clone()),
        "the other issuer's token stands"
    );
}
