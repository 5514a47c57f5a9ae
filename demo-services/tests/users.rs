//! user-service through `app(...)` with `oneshot`, on a temporary database.

mod common;

use std::sync::Arc;

use common::{assert_error, call, temp_db};
use demo_services::jwt::JwtSettings;
use demo_services::users::{self, Passwords, UsersState};
use http::{Method, StatusCode};
use serde_json::json;

const SECRET: &[u8] = b"a test secret that is 32 bytes or longer";

async fn state(url: &str) -> UsersState {
    let jwt = JwtSettings::hs256(SECRET).unwrap().issuer("user-service");
    let auth = jwt.authenticator().build().unwrap();
    UsersState { db: users::connect(url).await.unwrap(), jwt: Arc::new(jwt), auth, passwords: Passwords::for_tests() }
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
    assert_eq!(status, StatusCode::CREATED, "{user}");
    let (status, login) =
        call(app, Method::POST, "/login", Some(json!({"email": email, "password": "correct horse"})), &[]).await;
    assert_eq!(status, StatusCode::OK, "{login}");
    (user["id"].as_i64().unwrap(), login["token"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn signup_login_gives_a_token_the_gateway_accepts() {
    let (_dir, url) = temp_db("users.db");
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

#[tokio::test]
async fn password_hash_is_stored_hashed_and_never_returned() {
    let (_dir, url) = temp_db("users.db");
    let state = state(&url).await;
    let app = users::app(state.clone());
    let (id, _) = signup_and_login(&app, "dave@example.com").await;
    let (_, user) = call(&app, Method::GET, &format!("/{id}"), None, &[]).await;
    assert_eq!(user, json!({"id": id, "name": "Carol", "email": "dave@example.com"}));
    let (_, list) = call(&app, Method::GET, "/", None, &[]).await;
    assert!(!list.to_string().contains("password"), "{list}");
    let hash: String =
        sqlx::query_scalar("SELECT password_hash FROM users WHERE id = ?").bind(id).fetch_one(&state.db).await.unwrap();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(!hash.contains("correct horse"));
}

#[tokio::test]
async fn wrong_credentials_do_not_say_which_part_was_wrong() {
    let (_dir, url) = temp_db("users.db");
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

#[tokio::test]
async fn duplicate_email_is_409_whatever_its_case() {
    let (_dir, url) = temp_db("users.db");
    let app = users::app(state(&url).await);
    signup_and_login(&app, "frank@example.com").await;
    let again = call(
        &app,
        Method::POST,
        "/signup",
        Some(json!({"name": "F", "email": "FRANK@example.com", "password": "12345678"})),
        &[],
    )
    .await;
    assert_error(&again, StatusCode::CONFLICT, "conflict");
    let seeded = call(&app, Method::POST, "/", Some(json!({"name": "A", "email": "alice@example.com"})), &[]).await;
    assert_error(&seeded, StatusCode::CONFLICT, "conflict");
    let rename = call(&app, Method::PUT, "/2", Some(json!({"name": "Bob", "email": "alice@example.com"})), &[]).await;
    assert_error(&rename, StatusCode::CONFLICT, "conflict");
}

#[tokio::test]
async fn logout_revokes_the_token() {
    let (_dir, url) = temp_db("users.db");
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

#[tokio::test]
async fn crud_and_validation() {
    let (_dir, url) = temp_db("users.db");
    let app = users::app(state(&url).await);
    let (_, list) = call(&app, Method::GET, "/", None, &[]).await;
    assert_eq!(
        list,
        json!([{"id": 1, "name": "Alice", "email": "alice@example.com"}, {"id": 2, "name": "Bob", "email": "bob@example.com"}])
    );
    let (status, created) =
        call(&app, Method::POST, "/", Some(json!({"name": "Hal", "email": "hal@example.com"})), &[]).await;
    assert_eq!((status, created["id"].as_i64()), (StatusCode::CREATED, Some(3)));
    let (status, updated) =
        call(&app, Method::PUT, "/3", Some(json!({"name": "Hal 9000", "email": "hal@example.org"})), &[]).await;
    assert_eq!((status, updated), (StatusCode::OK, json!({"id": 3, "name": "Hal 9000", "email": "hal@example.org"})));
    assert_eq!(call(&app, Method::DELETE, "/3", None, &[]).await.0, StatusCode::NO_CONTENT);
    assert_error(&call(&app, Method::GET, "/3", None, &[]).await, StatusCode::NOT_FOUND, "not_found");
    assert_error(
        &call(&app, Method::PUT, "/3", Some(json!({"name": "x", "email": "x@y.z"})), &[]).await,
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
