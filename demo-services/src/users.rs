//! user-service: users, sign-up, login (issues a JWT) and logout (revokes it).
//! Routes as the service sees them, the gateway's `/api/users` stripped:
//!
//! | route | |
//! |---|---|
//! | `GET /?limit=&offset=` | list |
//! | `GET /{id}` | one user |
//! | `POST /` `{name, email, password?}` | create: `201` |
//! | `PUT /{id}` `{name, email}` | replace |
//! | `DELETE /{id}` | delete: `204` |
//! | `POST /signup` `{name, email, password}` | `201` the user |
//! | `POST /login` `{email, password}` | `200 {"token"}`; wrong credentials `401`, never saying which part |
//! | `POST /logout` with `Authorization: Bearer` | revokes that token: `204` |
//!
//! Passwords are hashed with Argon2id and never returned. Emails are unique,
//! compared without case: a duplicate is `409`.

use std::sync::Arc;

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sqlx::SqlitePool;
use sqlx::migrate::Migrator;
use tower_gateway_auth::{Authenticator, Rejection};

use crate::db;
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, Page};
use crate::jwt::JwtSettings;

/// The schema and the seed's users.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations/users");

/// A user, as clients see it: never the password hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct User {
    /// Its id: the `sub` of its tokens.
    pub id: i64,
    /// Its name.
    pub name: String,
    /// Its email, lower-case.
    pub email: String,
}

/// Hashes and checks passwords with Argon2id, off the async threads.
#[derive(Clone)]
pub struct Passwords {
    argon2: Arc<Argon2<'static>>,
    /// A hash to check against when the user does not exist, so that a login for an
    /// unknown email takes as long as one with a wrong password.
    decoy: Arc<str>,
}

impl std::fmt::Debug for Passwords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Passwords").finish_non_exhaustive()
    }
}

impl Passwords {
    /// Argon2id with `params` (use `argon2::Params::default()` in production).
    pub fn new(params: argon2::Params) -> Self {
        let argon2 = Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let decoy = argon2.hash_password(b"decoy password").map(|h| h.to_string()).unwrap_or_default();
        Self { argon2: Arc::new(argon2), decoy: decoy.into() }
    }

    /// The cheapest parameters Argon2 allows: for tests only.
    pub fn for_tests() -> Self {
        Self::new(argon2::Params::new(argon2::Params::MIN_M_COST, 1, 1, None).expect("valid parameters"))
    }

    async fn hash(&self, password: String) -> Result<String, ApiError> {
        let argon2 = self.argon2.clone();
        tokio::task::spawn_blocking(move || argon2.hash_password(password.as_bytes()).map(|h| h.to_string()))
            .await
            .map_err(ApiError::internal)?
            .map_err(ApiError::internal)
    }

    async fn verify(&self, password: String, hash: Option<String>) -> bool {
        let argon2 = self.argon2.clone();
        let (hash, real) = match hash {
            Some(hash) => (hash, true),
            None => (self.decoy.to_string(), false),
        };
        let matches =
            tokio::task::spawn_blocking(move || argon2.verify_password(password.as_bytes(), hash.as_str()).is_ok())
                .await
                .unwrap_or(false);
        matches && real
    }
}

/// What the service needs.
#[derive(Debug, Clone)]
pub struct UsersState {
    /// The users database.
    pub db: SqlitePool,
    /// How login signs tokens.
    pub jwt: Arc<JwtSettings>,
    /// Where logout revokes them: the gateway's authenticator, or one on the same store.
    pub auth: Authenticator,
    /// How passwords are hashed.
    pub passwords: Passwords,
}

/// The service's routes.
pub fn app(state: UsersState) -> Router {
    let db = state.db.clone();
    let routes = Router::new()
        .route("/", get(list).post(create))
        .route("/{id}", get(one).put(replace).delete(remove))
        .route("/signup", post(signup))
        .route("/login", post(login))
        .route("/logout", post(logout));
    crate::server::with_common(routes, state, crate::server::Readiness::db(db))
}

/// Opens the users database at `url`.
pub async fn connect(url: &str) -> Result<SqlitePool, sqlx::Error> {
    db::connect(url, &MIGRATOR).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    name: String,
    email: String,
    #[serde(default)]
    password: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Signup {
    name: String,
    email: String,
    password: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateUser {
    name: String,
    email: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    email: String,
    password: String,
}

fn valid_name(name: &str) -> Result<String, ApiError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ApiError::invalid("name must be 1 to 100 characters"));
    }
    Ok(name.to_owned())
}

fn valid_email(email: &str) -> Result<String, ApiError> {
    let email = email.trim().to_lowercase();
    let ok = email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains('@')
        });
    if ok { Ok(email) } else { Err(ApiError::invalid("email must be an address like name@example.com")) }
}

fn valid_password(password: &str) -> Result<(), ApiError> {
    let n = password.chars().count();
    if !(8..=128).contains(&n) {
        return Err(ApiError::invalid("password must be 8 to 128 characters"));
    }
    Ok(())
}

/// A unique-constraint failure on the email is the client's `409`.
fn duplicate_email(err: sqlx::Error) -> ApiError {
    match &err {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            ApiError::conflict("a user with this email already exists")
        }
        _ => err.into(),
    }
}

async fn insert(s: &UsersState, name: String, email: String, password: Option<String>) -> Result<User, ApiError> {
    let hash = match password {
        Some(password) => Some(s.passwords.hash(password).await?),
        None => None,
    };
    sqlx::query_as::<_, User>(
        "INSERT INTO users (name, email, password_hash) VALUES (?, ?, ?) RETURNING id, name, email",
    )
    .bind(name)
    .bind(email)
    .bind(hash)
    .fetch_one(&s.db)
    .await
    .map_err(duplicate_email)
}

async fn list(State(s): State<UsersState>, ApiQuery(page): ApiQuery<Page>) -> Result<Json<Vec<User>>, ApiError> {
    let (limit, offset) = page.checked()?;
    let users = sqlx::query_as::<_, User>("SELECT id, name, email FROM users ORDER BY id LIMIT ? OFFSET ?")
        .bind(limit)
        .bind(offset)
        .fetch_all(&s.db)
        .await?;
    Ok(Json(users))
}

async fn one(State(s): State<UsersState>, ApiPath(id): ApiPath<i64>) -> Result<Json<User>, ApiError> {
    let user = sqlx::query_as::<_, User>("SELECT id, name, email FROM users WHERE id = ?")
        .bind(id)
        .fetch_optional(&s.db)
        .await?;
    user.map(Json).ok_or_else(|| ApiError::not_found("user"))
}

async fn create(State(s): State<UsersState>, ApiJson(new): ApiJson<NewUser>) -> Result<impl IntoResponse, ApiError> {
    let (name, email) = (valid_name(&new.name)?, valid_email(&new.email)?);
    if let Some(password) = &new.password {
        valid_password(password)?;
    }
    Ok((StatusCode::CREATED, Json(insert(&s, name, email, new.password).await?)))
}

async fn replace(
    State(s): State<UsersState>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(update): ApiJson<UpdateUser>,
) -> Result<Json<User>, ApiError> {
    let (name, email) = (valid_name(&update.name)?, valid_email(&update.email)?);
    let user = sqlx::query_as::<_, User>("UPDATE users SET name = ?, email = ? WHERE id = ? RETURNING id, name, email")
        .bind(name)
        .bind(email)
        .bind(id)
        .fetch_optional(&s.db)
        .await
        .map_err(duplicate_email)?;
    user.map(Json).ok_or_else(|| ApiError::not_found("user"))
}

async fn remove(State(s): State<UsersState>, ApiPath(id): ApiPath<i64>) -> Result<StatusCode, ApiError> {
    let deleted = sqlx::query("DELETE FROM users WHERE id = ?").bind(id).execute(&s.db).await?.rows_affected();
    if deleted == 0 { Err(ApiError::not_found("user")) } else { Ok(StatusCode::NO_CONTENT) }
}

async fn signup(State(s): State<UsersState>, ApiJson(new): ApiJson<Signup>) -> Result<impl IntoResponse, ApiError> {
    let (name, email) = (valid_name(&new.name)?, valid_email(&new.email)?);
    valid_password(&new.password)?;
    Ok((StatusCode::CREATED, Json(insert(&s, name, email, Some(new.password)).await?)))
}

async fn login(State(s): State<UsersState>, ApiJson(login): ApiJson<Login>) -> Result<impl IntoResponse, ApiError> {
    let email = login.email.trim().to_lowercase();
    let row: Option<(i64, String, Option<String>)> =
        sqlx::query_as("SELECT id, email, password_hash FROM users WHERE email = ?")
            .bind(&email)
            .fetch_optional(&s.db)
            .await?;
    let (id, hash) = match row {
        Some((id, _, hash)) => (Some(id), hash),
        None => (None, None),
    };
    let verified = s.passwords.verify(login.password, hash).await;
    let Some(id) = id.filter(|_| verified) else {
        return Err(ApiError::unauthorized("invalid_credentials", "wrong email or password"));
    };
    let token = s.jwt.issue(id, &email).map_err(ApiError::internal)?;
    Ok(Json(serde_json::json!({ "token": token, "token_type": "Bearer", "expires_in": s.jwt.ttl_secs() })))
}

async fn logout(State(s): State<UsersState>, headers: HeaderMap) -> Result<StatusCode, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .ok_or_else(|| ApiError::unauthorized("missing_token", "an Authorization: Bearer token is required"))?;
    match s.auth.revoke_token(token).await {
        Ok(_) => Ok(StatusCode::NO_CONTENT),
        Err(Rejection::StoreUnavailable) => Err(ApiError::unavailable("the token store is unavailable; try again")),
        Err(rejection) => Err(ApiError::unauthorized(rejection.code(), rejection.to_string())),
    }
}
