use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::StatusCode;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use serde::ser::SerializeMap;
use tower::ServiceExt;

use super::*;
use crate::error::StoreError;
use crate::store::{TokenRecord, TokenState, TokenStore, unix_now};
use crate::{Audience, Authenticated, Claims, Key, MemoryStore};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test";
const RSA_PRIVATE: &[u8] = include_bytes!("../../tests/fixtures/rsa-private.pem");
const RSA_PUBLIC: &[u8] = include_bytes!("../../tests/fixtures/rsa-public.pem");
const ED_PRIVATE: &[u8] = include_bytes!("../../tests/fixtures/ed25519-private.pem");
const ED_PUBLIC: &[u8] = include_bytes!("../../tests/fixtures/ed25519-public.pem");

fn claims(sub: &str) -> Claims {
    let now = unix_now();
    let mut claims = Claims::new(sub, now + 900);
    claims.iat = Some(now);
    claims.jti = Some(format!("jti-{sub}-{now}"));
    claims.iss = Some("user-service".into());
    claims.aud = Some(Audience::One("gateway".into()));
    claims.email = Some(format!("{sub}@example.com"));
    claims
}

fn sign_with(header: &Header, claims: &impl Serialize, key: &EncodingKey) -> String {
    crate::install_default_crypto();
    jsonwebtoken::encode(header, claims, key).unwrap()
}

fn hs256(claims: &impl Serialize) -> String {
    sign_with(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(SECRET))
}

/// A token from raw header and payload JSON, HS256-signed with the test secret.
fn raw_hs256(header: &str, payload: &str) -> String {
    let message = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(payload));
    crate::install_default_crypto();
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &EncodingKey::from_secret(SECRET), Algorithm::HS256).unwrap();
    format!("{message}.{signature}")
}

fn builder() -> crate::AuthenticatorBuilder {
    Authenticator::builder(Key::hs256(SECRET).unwrap()).issuer("user-service").audience("gateway")
}

/// What the inner service saw: the identity extension and headers.
#[derive(Debug, Clone, Default)]
struct Seen {
    who: Option<Authenticated>,
    user_id: Option<String>,
    email: Option<String>,
    connection: Option<String>,
}

fn inner() -> impl Service<Request<()>, Response = Response<Bytes>, Error = Infallible, Future: Send> + Clone {
    tower::service_fn(|req: Request<()>| async move {
        let h = |n: &str| req.headers().get(n).map(|v| v.to_str().unwrap().to_owned());
        let seen = Seen {
            who: req.extensions().get::<Authenticated>().cloned(),
            user_id: h("x-user-id"),
            email: h("x-user-email"),
            connection: h("connection"),
        };
        let mut res = Response::new(Bytes::from_static(b"inner"));
        res.extensions_mut().insert(seen);
        Ok::<_, Infallible>(res)
    })
}

async fn send_as(auth: &Authenticator, authorization: Option<&str>) -> Response<Bytes> {
    let mut req = Request::get("/").header("x-user-id", "attacker").header("x-user-email", "evil@example.com");
    if let Some(value) = authorization {
        req = req.header("authorization", value);
    }
    flat(JwtAuthLayer::new(auth.clone()).layer(inner()).oneshot(req.body(()).unwrap()).await.unwrap())
}

/// The inner service answers plain `Bytes`: the response with the bytes, the
/// inner service's or the layer's own.
fn flat(response: Response<ResponseBody<Bytes>>) -> Response<Bytes> {
    response.map(|body| body.into_inner().unwrap_or_else(|answered| answered))
}

async fn send(auth: &Authenticator, token: &str) -> Response<Bytes> {
    send_as(auth, Some(&format!("Bearer {token}"))).await
}

/// The refusal's status, code and `WWW-Authenticate`; asserts the inner service was not called.
fn refusal(res: &Response<Bytes>) -> (StatusCode, String, Option<String>) {
    assert!(res.extensions().get::<Seen>().is_none(), "the inner service was called");
    let body: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
    let challenge = res.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_owned());
    (res.status(), body["error"]["code"].as_str().unwrap().to_owned(), challenge)
}

fn assert_invalid(res: &Response<Bytes>, code: &str) {
    let (status, got, challenge) = refusal(res);
    assert_eq!((status, got.as_str()), (StatusCode::UNAUTHORIZED, code));
    assert_eq!(challenge.as_deref(), Some("Bearer error=\"invalid_token\""));
}

#[tokio::test]
async fn valid_token_reaches_inner_with_identity_and_replaces_client_headers() {
    let auth = builder().build().unwrap();
    let claims = claims("42");
    let res = send(&auth, &hs256(&claims)).await;
    assert_eq!(res.status(), StatusCode::OK);
    let seen = res.extensions().get::<Seen>().unwrap();
    assert_eq!(seen.who.as_ref().unwrap().claims(), &claims);
    assert_eq!(seen.user_id.as_deref(), Some("42"));
    assert_eq!(seen.email.as_deref(), Some("42@example.com"));
}

#[tokio::test]
async fn bearer_scheme_is_case_insensitive() {
    let auth = builder().build().unwrap();
    let token = hs256(&claims("1"));
    for scheme in ["bearer", "BEARER", "BeArEr"] {
        let res = send_as(&auth, Some(&format!("{scheme} {token}"))).await;
        assert_eq!(res.status(), StatusCode::OK, "{scheme}");
    }
}

#[tokio::test]
async fn missing_or_foreign_credentials_are_401_without_error_code() {
    let auth = builder().build().unwrap();
    for header in [None, Some("Basic dXNlcjpwYXNz")] {
        let (status, code, challenge) = refusal(&send_as(&auth, header).await);
        assert_eq!(
            (status, code.as_str(), challenge.as_deref()),
            (StatusCode::UNAUTHORIZED, "missing_token", Some("Bearer"))
        );
    }
}

#[tokio::test]
async fn malformed_headers_are_refused() {
    let auth = builder().build().unwrap();
    for header in ["Bearer", "Bearer ", "Bearer a b c", "Bearer a.b", "Bearer a.b.c.d", "Bearer ☃.x.y"] {
        let res = send_as(&auth, Some(header)).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{header}");
    }
    let token = hs256(&claims("1"));
    let req = Request::get("/")
        .header("authorization", format!("Bearer {token}"))
        .header("authorization", format!("Bearer {token}"))
        .body(())
        .unwrap();
    let res = flat(JwtAuthLayer::new(auth).layer(inner()).oneshot(req).await.unwrap());
    assert_invalid(&res, "malformed_token");
}

#[tokio::test]
async fn alg_none_and_empty_or_wrong_signatures_are_refused() {
    let auth = builder().build().unwrap();
    let payload = serde_json::to_string(&claims("1")).unwrap();
    let unsigned = |header: &str| format!("{}.{}.", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(&payload));
    for alg in ["none", "None", "NONE"] {
        assert_invalid(
            &send(&auth, &unsigned(&format!("{{\"alg\":\"{alg}\",\"typ\":\"JWT\"}}"))).await,
            "invalid_token",
        );
    }
    // A valid HS256 token with its signature cut off.
    let token = hs256(&claims("1"));
    let stripped = &token[..=token.rfind('.').unwrap()];
    assert_invalid(&send(&auth, stripped).await, "invalid_token");
    // Signed with another secret.
    let forged = sign_with(
        &Header::new(Algorithm::HS256),
        &claims("1"),
        &EncodingKey::from_secret(b"another secret, 32 bytes or more!!"),
    );
    assert_invalid(&send(&auth, &forged).await, "invalid_token");
}

#[tokio::test]
async fn public_key_used_as_hmac_secret_is_refused() {
    let key = Key::public_pem(Algorithm::RS256, RSA_PUBLIC).unwrap();
    let auth = Authenticator::builder(key).build().unwrap();
    let genuine =
        sign_with(&Header::new(Algorithm::RS256), &claims("1"), &EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap());
    assert_eq!(send(&auth, &genuine).await.status(), StatusCode::OK);
    let confused = sign_with(&Header::new(Algorithm::HS256), &claims("1"), &EncodingKey::from_secret(RSA_PUBLIC));
    assert_invalid(&send(&auth, &confused).await, "invalid_token");
}

#[tokio::test]
async fn eddsa_public_key_verifies() {
    let auth = Authenticator::builder(Key::public_pem(Algorithm::EdDSA, ED_PUBLIC).unwrap()).build().unwrap();
    let token = sign_with(&Header::new(Algorithm::EdDSA), &claims("7"), &EncodingKey::from_ed_pem(ED_PRIVATE).unwrap());
    assert_eq!(send(&auth, &token).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn wrong_issuer_or_audience_is_refused() {
    let auth = builder().build().unwrap();
    let mut wrong_iss = claims("1");
    wrong_iss.iss = Some("someone-else".into());
    assert_invalid(&send(&auth, &hs256(&wrong_iss)).await, "claims_rejected");
    let mut wrong_aud = claims("1");
    wrong_aud.aud = Some(Audience::Many(vec!["billing".into(), "admin".into()]));
    assert_invalid(&send(&auth, &hs256(&wrong_aud)).await, "claims_rejected");
    let mut no_iss = claims("1");
    no_iss.iss = None;
    assert_eq!(send(&auth, &hs256(&no_iss)).await.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn time_claims_are_enforced_with_small_leeway() {
    let auth = builder().build().unwrap();
    let now = unix_now();
    let mut expired = claims("1");
    expired.exp = now - 30;
    expired.iat = Some(now - 300);
    assert_invalid(&send(&auth, &hs256(&expired)).await, "expired_token");
    let mut early = claims("1");
    early.nbf = Some(now + 60);
    assert_invalid(&send(&auth, &hs256(&early)).await, "token_not_yet_valid");
    let mut from_future = claims("1");
    from_future.iat = Some(now + 60);
    assert_invalid(&send(&auth, &hs256(&from_future)).await, "token_not_yet_valid");
    // Within the 2 s leeway.
    let mut just_expired = claims("1");
    just_expired.exp = now - 1;
    assert_eq!(send(&auth, &hs256(&just_expired)).await.status(), StatusCode::OK);
    // Longer than the maximum lifetime.
    let mut forever = claims("1");
    forever.exp = now + 10 * 24 * 3600;
    assert_invalid(&send(&auth, &hs256(&forever)).await, "claims_rejected");
    let without_iat = {
        let mut c = claims("1");
        c.iat = None;
        c.exp = now + 30 * 24 * 3600;
        c
    };
    assert_invalid(&send(&auth, &hs256(&without_iat)).await, "claims_rejected");
    assert!(builder().leeway(Duration::from_secs(60)).build().is_err(), "leeway is capped");
}

#[tokio::test]
async fn exp_and_sub_are_required() {
    let auth = Authenticator::builder(Key::hs256(SECRET).unwrap()).build().unwrap();
    let no_exp = raw_hs256(r#"{"alg":"HS256"}"#, r#"{"sub":"1"}"#);
    assert_invalid(&send(&auth, &no_exp).await, "invalid_token");
    let no_sub = raw_hs256(r#"{"alg":"HS256"}"#, &format!(r#"{{"exp":{}}}"#, unix_now() + 60));
    assert_invalid(&send(&auth, &no_sub).await, "invalid_token");
    let ok = raw_hs256(r#"{"alg":"HS256"}"#, &format!(r#"{{"sub":"1","exp":{}}}"#, unix_now() + 60));
    assert_eq!(send(&auth, &ok).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn oversized_token_is_refused() {
    let auth = builder().build().unwrap();
    let mut big = claims("1");
    big.email = Some("x".repeat(100 * 1024));
    let token = hs256(&big);
    assert!(token.len() > 100 * 1024);
    assert_invalid(&send(&auth, &token).await, "malformed_token");
}

#[tokio::test]
async fn crit_header_is_refused() {
    let auth = Authenticator::builder(Key::hs256(SECRET).unwrap()).build().unwrap();
    let payload = format!(r#"{{"sub":"1","exp":{}}}"#, unix_now() + 60);
    let token = raw_hs256(r#"{"alg":"HS256","crit":["exp"]}"#, &payload);
    assert_invalid(&send(&auth, &token).await, "invalid_token");
}

#[tokio::test]
async fn remote_key_headers_are_never_followed() {
    let auth = Authenticator::builder(Key::hs256(SECRET).unwrap()).build().unwrap();
    let payload = format!(r#"{{"sub":"1","exp":{}}}"#, unix_now() + 60);
    // Signed correctly with our key, so only that matters: the URLs are ignored.
    let token = raw_hs256(r#"{"alg":"HS256","jku":"http://127.0.0.1:1/keys","x5u":"http://127.0.0.1:1/x"}"#, &payload);
    assert_eq!(send(&auth, &token).await.status(), StatusCode::OK);
}

/// Claims with one key written twice.
struct Duplicated(&'static str, serde_json::Value, serde_json::Value);

impl Serialize for Duplicated {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("exp", &(unix_now() + 60))?;
        map.serialize_entry(self.0, &self.1)?;
        map.serialize_entry(self.0, &self.2)?;
        if self.0 != "sub" {
            map.serialize_entry("sub", "1")?;
        }
        map.end()
    }
}

#[tokio::test]
async fn duplicate_claims_or_header_fields_are_refused() {
    let auth = Authenticator::builder(Key::hs256(SECRET).unwrap()).build().unwrap();
    for dup in [
        Duplicated("sub", "1".into(), "2".into()),
        Duplicated("role", "user".into(), "admin".into()),
        Duplicated("exp", 1.into(), (unix_now() + 60).into()),
    ] {
        let token = hs256(&dup);
        assert_invalid(&send(&auth, &token).await, "invalid_token");
    }
    let payload = format!(r#"{{"sub":"1","exp":{}}}"#, unix_now() + 60);
    let token = raw_hs256(r#"{"alg":"HS256","alg":"HS256"}"#, &payload);
    assert_invalid(&send(&auth, &token).await, "invalid_token");
}

#[tokio::test]
async fn kid_selects_a_key_exactly() {
    let other = b"the other shared secret, 32 bytes+";
    let auth = Authenticator::builder(Key::hs256(SECRET).unwrap().with_kid("k1"))
        .key(Key::hs256(other).unwrap().with_kid("k2"))
        .build()
        .unwrap();
    let with_kid = |kid: Option<&str>, secret: &[u8]| {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = kid.map(str::to_owned);
        sign_with(&header, &claims("1"), &EncodingKey::from_secret(secret))
    };
    assert_eq!(send(&auth, &with_kid(Some("k1"), SECRET)).await.status(), StatusCode::OK);
    assert_eq!(send(&auth, &with_kid(Some("k2"), other)).await.status(), StatusCode::OK);
    assert_invalid(&send(&auth, &with_kid(Some("k2"), SECRET)).await, "invalid_token");
    assert_invalid(&send(&auth, &with_kid(Some("K1"), SECRET)).await, "invalid_token");
    assert_invalid(&send(&auth, &with_kid(Some("../k1"), SECRET)).await, "invalid_token");
    assert_invalid(&send(&auth, &with_kid(None, SECRET)).await, "invalid_token");
}

#[tokio::test]
async fn revoked_tokens_are_refused_at_once() {
    let auth = builder().build().unwrap();
    let token = hs256(&claims("1"));
    assert_eq!(send(&auth, &token).await.status(), StatusCode::OK);
    assert_eq!(auth.cached(), 1);
    let who = auth.revoke_token(&token).await.unwrap();
    assert_eq!(who.sub, "1");
    assert_invalid(&send(&auth, &token).await, "revoked_token");

    let other = hs256(&claims("2"));
    assert_eq!(send(&auth, &other).await.status(), StatusCode::OK);
    let mut later = claims("2");
    later.jti = Some("issued-later".into());
    later.iat = Some(unix_now() + 1);
    auth.revoke_subject("2", SystemTime::now()).await.unwrap();
    assert_invalid(&send(&auth, &other).await, "revoked_token");
    assert_eq!(send(&auth, &hs256(&later)).await.status(), StatusCode::OK, "issued after the cut-off");
}

#[tokio::test]
async fn a_revocation_elsewhere_is_seen_within_the_cache_bound() {
    tokio::time::pause();
    // Two authenticators on one store: two gateway replicas.
    let store = Arc::new(MemoryStore::new());
    let a = builder().store(store.clone()).build().unwrap();
    let b = builder().store(store).build().unwrap();
    let token = hs256(&claims("1"));
    assert_eq!(send(&a, &token).await.status(), StatusCode::OK);
    b.revoke_token(&token).await.unwrap();
    // `a` may still trust its cache, but not past the bound.
    tokio::time::advance(Duration::from_millis(1001)).await;
    assert_invalid(&send(&a, &token).await, "revoked_token");
}

/// A store that counts checks and can be switched off.
#[derive(Debug, Default)]
struct Flaky {
    checks: AtomicUsize,
    down: std::sync::atomic::AtomicBool,
}

impl TokenStore for Flaky {
    fn check<'a>(&'a self, _: TokenRecord<'a>) -> crate::store::BoxFuture<'a, Result<TokenState, StoreError>> {
        self.checks.fetch_add(1, Ordering::SeqCst);
        let down = self.down.load(Ordering::SeqCst);
        Box::pin(async move { if down { Err(StoreError::new("down")) } else { Ok(TokenState::Active) } })
    }
    fn revoke<'a>(&'a self, _: TokenRecord<'a>) -> crate::store::BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }
    fn revoke_subject<'a>(&'a self, _: &'a str, _: u64, _: u64) -> crate::store::BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }
    fn ping(&self) -> crate::store::BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }
}

#[tokio::test]
async fn the_cache_keeps_the_store_off_the_hot_path() {
    tokio::time::pause();
    let store = Arc::new(Flaky::default());
    let auth = builder().store(store.clone()).build().unwrap();
    let token = hs256(&claims("1"));
    for _ in 0..100 {
        assert_eq!(send(&auth, &token).await.status(), StatusCode::OK);
    }
    assert_eq!(store.checks.load(Ordering::SeqCst), 1);
    tokio::time::advance(Duration::from_millis(1001)).await;
    assert_eq!(send(&auth, &token).await.status(), StatusCode::OK);
    assert_eq!(store.checks.load(Ordering::SeqCst), 2, "asked again after the bound");
}

#[tokio::test]
async fn store_down_fails_closed_with_503_unless_opted_open() {
    let store = Arc::new(Flaky::default());
    store.down.store(true, Ordering::SeqCst);
    let closed = builder().store(store.clone()).build().unwrap();
    let token = hs256(&claims("1"));
    let res = send(&closed, &token).await;
    let (status, code, _) = refusal(&res);
    assert_eq!((status, code.as_str()), (StatusCode::SERVICE_UNAVAILABLE, "auth_unavailable"));
    assert_eq!(res.headers()["retry-after"], "1");
    assert_eq!(res.extensions().get::<Rejection>(), Some(&Rejection::StoreUnavailable));

    let open = builder().store(store.clone()).fail_open(true).build().unwrap();
    assert_eq!(send(&open, &token).await.status(), StatusCode::OK);
    // An invalid token is refused either way.
    assert_eq!(send(&open, "a.b.c").await.status(), StatusCode::UNAUTHORIZED);

    store.down.store(false, Ordering::SeqCst);
    assert_eq!(send(&closed, &token).await.status(), StatusCode::OK, "recovers with the store");
}

#[tokio::test]
async fn connection_cannot_name_identity_headers_away() {
    let auth = builder().build().unwrap();
    let token = hs256(&claims("9"));
    let req = Request::get("/")
        .header("authorization", format!("Bearer {token}"))
        .header("connection", "keep-alive, X-User-Id")
        .header("connection", "x-user-email")
        .body(())
        .unwrap();
    let res = JwtAuthLayer::new(auth).layer(inner()).oneshot(req).await.unwrap();
    let seen = res.extensions().get::<Seen>().unwrap();
    assert_eq!(seen.user_id.as_deref(), Some("9"));
    assert_eq!(seen.connection.as_deref(), Some("keep-alive"));
}

#[test]
fn weak_or_mismatched_keys_are_configuration_errors() {
    assert!(Key::hs256(b"short").is_err());
    assert!(Key::hmac(Algorithm::RS256, SECRET).is_err());
    assert!(Key::public_pem(Algorithm::HS256, RSA_PUBLIC).is_err());
    assert!(Key::public_pem(Algorithm::RS256, b"not a pem").is_err());
    assert!(Key::public_pem(Algorithm::RS256, ED_PUBLIC).is_err());
}

#[tokio::test]
async fn a_required_role_is_403_without_it_and_checked_on_every_path() {
    let auth = builder().build().unwrap();
    let admin_only = |auth: &Authenticator| JwtAuthLayer::new(auth.clone()).any_role(["admin", "ops"]).layer(inner());
    let send_with =
        |token: String| Request::get("/").header("authorization", format!("Bearer {token}")).body(()).unwrap();

    let user = hs256(&claims("1"));
    let admin = hs256(&{
        let mut claims = claims("2");
        claims.roles = vec!["reader".into(), "ops".into()];
        claims
    });
    let roles_as_words = raw_hs256(
        r#"{"alg":"HS256","typ":"JWT"}"#,
        &format!(
            r#"{{"sub":"3","exp":{},"iss":"user-service","aud":"gateway","roles":"reader admin"}}"#,
            unix_now() + 60
        ),
    );
    let roles_a_number = raw_hs256(
        r#"{"alg":"HS256","typ":"JWT"}"#,
        &format!(r#"{{"sub":"4","exp":{},"iss":"user-service","aud":"gateway","roles":7}}"#, unix_now() + 60),
    );
    // Twice each: the first asks the store, the second is served from the cache.
    for round in ["store", "cache"] {
        let res = flat(admin_only(&auth).oneshot(send_with(user.clone())).await.unwrap());
        let (status, code, challenge) = refusal(&res);
        assert_eq!(
            (status, code.as_str(), challenge.as_deref()),
            (StatusCode::FORBIDDEN, "forbidden", Some("Bearer error=\"insufficient_scope\"")),
            "{round}"
        );
        assert_eq!(res.extensions().get::<Rejection>(), Some(&Rejection::Forbidden));

        let res = admin_only(&auth).oneshot(send_with(admin.clone())).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{round}");
        assert_eq!(res.extensions().get::<Seen>().unwrap().user_id.as_deref(), Some("2"));
    }
    let res = admin_only(&auth).oneshot(send_with(roles_as_words)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK, "roles as a space-separated string, as `scope` is");
    let res = flat(admin_only(&auth).oneshot(send_with(roles_a_number)).await.unwrap());
    assert_eq!(refusal(&res).0, StatusCode::FORBIDDEN, "a roles claim of no words gives no role");
    // No token at all is still 401, not 403.
    let res = flat(admin_only(&auth).oneshot(Request::get("/").body(()).unwrap()).await.unwrap());
    assert_eq!(refusal(&res).0, StatusCode::UNAUTHORIZED);
}
