//! user-service through `app(...)` with `oneshot`, on a temporary database.

mod common;

use std::sync::Arc;

use common::{Backend, assert_error, call};
use demo_services::users::{self, Passwords, UsersState};
use http::{Method, StatusCode};
use serde_json::json;
use tower_gateway_auth::{Algorithm, Authenticator, Key, TokenIssuer};

const SECRET: &[u8] = b"a test secret that is 32 bytes or longer";

async fn state(url: &str) -> UsersState {
    let tokens = TokenIssuer::hmac(Algorithm::HS256, SECRET).unwrap().issuer("user-service");
    let auth = Authenticator::builder(Key::hs256(SECRET).unwrap()).issuer("user-service").build().unwrap();
    UsersState {
        db: users::connect(url).await.unwrap(),
        tokens: Arc::new(tokens).into(),
        auth,
        passwords: Passwords::for_tests(),
    }
}

/// `Authorization` for an admin who is not in the database.
fn admin() -> String {
    let tokens = TokenIssuer::hmac(Algorithm::HS256, SECRET).unwrap().issuer("user-service");
    format!("Bearer {}", tokens.issue("1000", None, &["admin".into()]).unwrap())
}

async fn signup_and_login(app: &axum::Router, email: &str) -> (i64, String) {
    let (status, user) = call(
        app,
        Method::POST,
        "/signup",
        Some(json!({"name": "Carol", "email": email, "password": "correct horse"})),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{user}");
    let (status, login) =
        call(app, Method::POST, "/login", Some(json!({"email": email, "password": "correct horse"})), &[]).await;
    assert_eq!(status, StatusCode::OK, "{login}");
    (login["user"]["id"].as_i64().unwrap(), login["token"].as_str().unwrap().to_owned())
}

async fn signup_login_gives_a_token_the_gateway_accepts(backend: Backend) {
    let (_dir, url) = backend.database("users.db").await;
    let state = state(&url).await;
    let app = users::app(state.clone());
    let (id, token) = signup_and_login(&app, "Carol@Example.com").await;
    let who = state.auth.authenticate(&token).await.unwrap();
    assert_eq!(who.sub, id.to_string());
    assert_eq!(who.email.as_deref(), Some("carol@example.com"));
    assert_eq!(who.iss.as_deref(), Some("user-service"));
    assert!(who.jti.is_some());
    let lifetime = who.exp - who.iat.unwrap();
    assert_eq!(lifetime, 15 * 60, "the seed's 15 minutes");
}

async fn password_hash_is_stored_hashed_and_never_returned(backend: Backend) {
    let (_dir, url) = backend.database("users.db").await;
    let state = state(&url).await;
    let app = users::app(state.clone());
    let (id, token) = signup_and_login(&app, "dave@example.com").await;
    let (_, user) =
        call(&app, Method::GET, &format!("/{id}"), None, &[("authorization", &format!("Bearer {token}"))]).await;
    assert_eq!(user, json!({"id": id, "name": "Carol", "email": "dave@example.com", "roles": []}));
    let (_, list) = call(&app, Method::GET, "/", None, &[("authorization", &admin())]).await;
    assert!(!list.to_string().contains("password"), "{list}");
    let hash: String = sqlx::query_scalar("SELECT password_hash FROM users WHERE id = $1")
        .bind(id)
        .fetch_one(&state.db)
        .await
        .unwrap();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(!hash.contains("correct horse"));
}

async fn wrong_credentials_do_not_say_which_part_was_wrong(backend: Backend) {
    let (_dir, url) = backend.database("users.db").await;
    let app = users::app(state(&url).await);
    signup_and_login(&app, "erin@example.com").await;
    let wrong_password =
        call(&app, Method::POST, "/login", Some(json!({"email": "erin@example.com", "password": "wrong pass"})), &[])
            .await;
    let unknown_email = call(
        &app,
        Method::POST,
        "/login",
        Some(json!({"email": "nobody@example.com", "password": "correct horse"})),
        &[],
    )
    .await;
    let no_password =
        call(&app, Method::POST, "/login", Some(json!({"email": "alice@example.com", "password": "anything1"})), &[])
            .await;
    assert_error(&wrong_password, StatusCode::UNAUTHORIZED, "invalid_credentials");
    assert_eq!(wrong_password, unknown_email);
    assert_eq!(wrong_password, no_password, "a seeded user without a password cannot log in");
}

async fn duplicate_email_is_409_whatever_its_case_but_signup_does_not_say(backend: Backend) {
    let (_dir, url) = backend.database("users.db").await;
    let state = state(&url).await;
    let admin = admin();
    let admin = [("authorization", admin.as_str())];
    let app = users::app(state);
    let signup = |email: &str| {
        call(&app, Method::POST, "/signup", Some(json!({"name": "F", "email": email, "password": "12345678"})), &[])
    };
    // A free email and a taken one get the same answer; only the first made an account.
    let free = signup("frank@example.com").await;
    let taken = signup("FRANK@example.com").await;
    assert_eq!(free.0, StatusCode::ACCEPTED, "{}", free.1);
    assert_eq!(taken, free, "signing up tells nobody whether an account exists");
    let (status, _) =
        call(&app, Method::POST, "/login", Some(json!({"email": "frank@example.com", "password": "12345678"})), &[])
            .await;
    assert_eq!(status, StatusCode::OK, "the first sign-up's password");
    let seeded = call(&app, Method::POST, "/", Some(json!({"name": "A", "email": "alice@example.com"})), &admin).await;
    assert_error(&seeded, StatusCode::CONFLICT, "conflict");
    let rename =
        call(&app, Method::PUT, "/2", Some(json!({"name": "Bob", "email": "alice@example.com"})), &admin).await;
    assert_error(&rename, StatusCode::CONFLICT, "conflict");
}

async fn logout_revokes_the_token(backend: Backend) {
    let (_dir, url) = backend.database("users.db").await;
    let state = state(&url).await;
    let app = users::app(state.clone());
    let (_, token) = signup_and_login(&app, "gina@example.com").await;
    assert!(state.auth.authenticate(&token).await.is_ok());
    let bearer = format!("Bearer {token}");
    assert_eq!(
        call(&app, Method::POST, "/logout", None, &[("authorization", &bearer)]).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(state.auth.authenticate(&token).await.unwrap_err(), tower_gateway_auth::Rejection::Revoked);
    assert_error(&call(&app, Method::POST, "/logout", None, &[]).await, StatusCode::UNAUTHORIZED, "missing_token");
    assert_error(
        &call(&app, Method::POST, "/logout", None, &[("authorization", "Bearer x.y.z")]).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    );
}

async fn crud_and_validation(backend: Backend) {
    let (_dir, url) = backend.database("users.db").await;
    let state = state(&url).await;
    let admin = admin();
    let admin = [("authorization", admin.as_str())];
    let app = users::app(state);
    let (_, list) = call(&app, Method::GET, "/", None, &admin).await;
    assert_eq!(
        list,
        json!([{"id": 1, "name": "Alice", "email": "alice@example.com", "roles": []}, {"id": 2, "name": "Bob", "email": "bob@example.com", "roles": []}])
    );
    let (status, created) =
        call(&app, Method::POST, "/", Some(json!({"name": "Hal", "email": "hal@example.com"})), &admin).await;
    assert_eq!((status, created["id"].as_i64()), (StatusCode::CREATED, Some(3)));
    let (status, updated) =
        call(&app, Method::PUT, "/3", Some(json!({"name": "Hal 9000", "email": "hal@example.org"})), &admin).await;
    assert_eq!(
        (status, updated),
        (StatusCode::OK, json!({"id": 3, "name": "Hal 9000", "email": "hal@example.org", "roles": []}))
    );
    assert_eq!(call(&app, Method::DELETE, "/3", None, &admin).await.0, StatusCode::NO_CONTENT);
    assert_error(&call(&app, Method::GET, "/3", None, &admin).await, StatusCode::NOT_FOUND, "not_found");
    assert_error(
        &call(&app, Method::PUT, "/3", Some(json!({"name": "x", "email": "x@y.z"})), &admin).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );

    for body in [
        json!({"name": "", "email": "a@b.c", "password": "12345678"}),
        json!({"name": "A", "email": "not-an-email", "password": "12345678"}),
        json!({"name": "A", "email": "a@b", "password": "12345678"}),
        json!({"name": "A", "email": "a b@c.d", "password": "12345678"}),
        json!({"name": "A", "email": "a@b.c", "password": "short"}),
    ] {
        assert_error(
            &call(&app, Method::POST, "/signup", Some(body), &[]).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        );
    }
    for body in [
        json!({"name": "A", "email": "a@b.c"}),
        json!({"name": 1, "email": "a@b.c", "password": "12345678"}),
        json!("x"),
    ] {
        assert_error(
            &call(&app, Method::POST, "/signup", Some(body), &[]).await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        );
    }
    assert_error(
        &call(&app, Method::POST, "/login", Some(json!({"email": "a@b.c"})), &[]).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
}

async fn users_act_on_themselves_admins_on_anyone_and_only_admins_grant_roles(backend: Backend) {
    let (_dir, url) = backend.database("users.db").await;
    let state = state(&url).await;
    let app = users::app(state.clone());
    let (ivy, ivy_token) = signup_and_login(&app, "ivy@example.com").await;
    let (jon, _) = signup_and_login(&app, "jon@example.com").await;
    let ivy_auth = format!("Bearer {ivy_token}");
    let as_ivy = [("authorization", ivy_auth.as_str())];
    let admin = admin();
    let as_admin = [("authorization", admin.as_str())];
    let body = json!({"name": "Jon", "email": "jon@example.com"});

    for (method, path, body) in [
        (Method::GET, "/".to_owned(), None),
        (Method::POST, "/".to_owned(), Some(json!({"name": "X", "email": "x@example.com"}))),
        (Method::GET, format!("/{jon}"), None),
        (Method::PUT, format!("/{jon}"), Some(body.clone())),
        (Method::DELETE, format!("/{jon}"), None),
    ] {
        assert_error(
            &call(&app, method.clone(), &path, body.clone(), &as_ivy).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        );
        assert_error(&call(&app, method, &path, body, &[]).await, StatusCode::UNAUTHORIZED, "missing_token");
    }
    assert_eq!(call(&app, Method::GET, &format!("/{ivy}"), None, &as_ivy).await.0, StatusCode::OK);
    let grant = json!({"name": "Ivy", "email": "ivy@example.com", "roles": ["admin"]});
    assert_error(
        &call(&app, Method::PUT, &format!("/{ivy}"), Some(grant.clone()), &as_ivy).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    let (status, ivy_now) = call(&app, Method::PUT, &format!("/{ivy}"), Some(grant), &as_admin).await;
    assert_eq!((status, ivy_now["roles"].clone()), (StatusCode::OK, json!(["admin"])));
    // Her roles changed: the token she had is revoked; a new login carries the role.
    assert_eq!(state.auth.authenticate(&ivy_token).await.unwrap_err(), tower_gateway_auth::Rejection::Revoked);
    assert_eq!(call(&app, Method::DELETE, &format!("/{jon}"), None, &as_admin).await.0, StatusCode::NO_CONTENT);
}

async fn ensure_admin_creates_or_promotes_once(backend: Backend) {
    let (_dir, url) = backend.database("users.db").await;
    let state = state(&url).await;
    let app = users::app(state.clone());
    let made = users::ensure_admin(&state, "root@example.com", "admin password".into()).await.unwrap();
    assert_eq!(made.roles, ["admin"]);
    let again = users::ensure_admin(&state, "ROOT@example.com", "admin password".into()).await.unwrap();
    assert_eq!(again, made, "idempotent");
    let (_, login) = call(
        &app,
        Method::POST,
        "/login",
        Some(json!({"email": "root@example.com", "password": "admin password"})),
        &[],
    )
    .await;
    let who = state.auth.authenticate(login["token"].as_str().unwrap()).await.unwrap();
    assert!(who.has_role("admin"));
    // A seeded user is promoted and given the password.
    let alice = users::ensure_admin(&state, "alice@example.com", "alice's new password".into()).await.unwrap();
    assert_eq!((alice.id, alice.roles.as_slice()), (1, ["admin".to_owned()].as_slice()));
}

/// Two replicas of user-service starting at once on one new database: both
/// migrate, both make sure of the admin; there is one admin, and neither fails.
async fn replicas_starting_at_once_make_one_admin(backend: Backend) {
    let (_dir, url) = backend.database("users.db").await;
    for round in 0..5 {
        let (a, b) = tokio::join!(state(&url), state(&url));
        let email = format!("boss{round}@example.com");
        let (x, y) = tokio::join!(
            users::ensure_admin(&a, &email, "the boss's password".into()),
            users::ensure_admin(&b, &email, "the boss's password".into()),
        );
        let (x, y) = (x.unwrap(), y.unwrap());
        assert_eq!(x, y, "both replicas see the one admin");
        let admins: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE lower(email) = $1")
            .bind(&email)
            .fetch_one(&a.db)
            .await
            .unwrap();
        assert_eq!(admins, 1);
    }
}

async fn a_token_alone_cannot_change_its_owners_email_or_password(backend: Backend) {
    let (_dir, url) = backend.database("users.db").await;
    let state = state(&url).await;
    let app = users::app(state.clone());
    let (kim, token) = signup_and_login(&app, "kim@example.com").await;
    let (_, other) = signup_and_login(&app, "lee@example.com").await;
    let auth = format!("Bearer {token}");
    let as_kim = [("authorization", auth.as_str())];
    let path = format!("/{kim}");
    let put = async |body: serde_json::Value| call(&app, Method::PUT, &path, Some(body), &as_kim).await;

    for change in [
        json!({"name": "Kim", "email": "thief@example.com"}),
        json!({"name": "Kim", "email": "kim@example.com", "password": "stolen account"}),
    ] {
        let mut with = change.clone();
        assert_error(&put(change).await, StatusCode::FORBIDDEN, "current_password_required");
        with["current_password"] = json!("a wrong guess");
        assert_error(&put(with).await, StatusCode::FORBIDDEN, "wrong_password");
    }
    // Nothing changed, nothing revoked: the token still works.
    assert!(state.auth.authenticate(&token).await.is_ok());
    // The name alone needs no password.
    assert_eq!(put(json!({"name": "Kimberly", "email": "kim@example.com"})).await.0, StatusCode::OK);
    // An email someone has is refused before any password is checked.
    let taken = json!({"name": "Kim", "email": "lee@example.com", "current_password": "a wrong guess"});
    assert_error(&put(taken).await, StatusCode::CONFLICT, "conflict");

    // With the current password the change is made, and every older token goes.
    let right = json!({"name": "Kim", "email": "kim@example.com", "password": "a new password",
                       "current_password": "correct horse"});
    assert_eq!(put(right).await.0, StatusCode::OK);
    assert_eq!(state.auth.authenticate(&token).await.unwrap_err(), tower_gateway_auth::Rejection::Revoked);
    let (status, _) = call(
        &app,
        Method::POST,
        "/login",
        Some(json!({"email": "kim@example.com", "password": "a new password"})),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // An admin changes anyone's without it.
    let admin = admin();
    let reset = json!({"name": "Lee", "email": "lee@example.com", "password": "reset by admin"});
    let lee = state.auth.authenticate(&other).await.unwrap().sub.clone();
    let (status, body) =
        call(&app, Method::PUT, &format!("/{lee}"), Some(reset), &[("authorization", admin.as_str())]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn ensure_admin_leaves_an_admins_changed_password_alone(backend: Backend) {
    let (_dir, url) = backend.database("users.db").await;
    let state = state(&url).await;
    let app = users::app(state.clone());
    let root = users::ensure_admin(&state, "root@example.com", "first password".into()).await.unwrap();
    let (_, login) = call(
        &app,
        Method::POST,
        "/login",
        Some(json!({"email": "root@example.com", "password": "first password"})),
        &[],
    )
    .await;
    let auth = format!("Bearer {}", login["token"].as_str().unwrap());
    let change = json!({"name": "Admin", "email": "root@example.com", "password": "changed password"});
    let (status, body) =
        call(&app, Method::PUT, &format!("/{}", root.id), Some(change), &[("authorization", auth.as_str())]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The next start names the secret file's password again: the change stays.
    users::ensure_admin(&state, "root@example.com", "first password".into()).await.unwrap();
    let login = async |password: &str| {
        call(&app, Method::POST, "/login", Some(json!({"email": "root@example.com", "password": password})), &[])
            .await
            .0
    };
    assert_eq!(login("changed password").await, StatusCode::OK);
    assert_eq!(login("first password").await, StatusCode::UNAUTHORIZED);
}

async fn a_refused_body_does_not_list_the_fields_the_service_knows(backend: Backend) {
    let (_dir, url) = backend.database("users.db").await;
    let app = users::app(state(&url).await);
    let body = json!({"name": "A", "email": "a@b.c", "password": "12345678", "roles": ["admin"]});
    let (status, error) = call(&app, Method::POST, "/signup", Some(body), &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("unknown field `roles`"), "the refusal is named: {message}");
    assert!(!message.contains("expected") && !message.contains("`password`"), "no schema: {message}");
}

common::on_both_databases!(
    replicas_starting_at_once_make_one_admin,
    signup_login_gives_a_token_the_gateway_accepts,
    password_hash_is_stored_hashed_and_never_returned,
    wrong_credentials_do_not_say_which_part_was_wrong,
    duplicate_email_is_409_whatever_its_case_but_signup_does_not_say,
    logout_revokes_the_token,
    crud_and_validation,
    users_act_on_themselves_admins_on_anyone_and_only_admins_grant_roles,
    ensure_admin_creates_or_promotes_once,
    a_token_alone_cannot_change_its_owners_email_or_password,
    ensure_admin_leaves_an_admins_changed_password_alone,
    a_refused_body_does_not_list_the_fields_the_service_knows,
);
