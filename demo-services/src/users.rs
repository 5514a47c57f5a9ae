//! user-service: users, sign-up, login (issues a JWT) and logout (revokes it).
//! Routes as the service sees them, the gateway's `/api/users` stripped:
//!
//! | route | who | |
//! |---|---|---|
//! | `GET /?limit=&offset=` | admin | list |
//! | `POST /` `{name, email, password?}` | admin | create: `201` |
//! | `GET /{id}` | that user or admin | one user |
//! | `PUT /{id}` `{name, email, password?, roles?, current_password?}` | that user or admin; `roles` admin only; a user changing their own email or password gives `current_password` | replace |
//! | `DELETE /{id}` | that user or admin | delete: `204` |
//! | `POST /signup` `{name, email, password}` | anyone | `202`, the same answer whether the email was free (the account is made) or not: log in to know |
//! | `POST /login` `{email, password}` | anyone | `200 {"token", "user"}` with the user's `roles`; wrong credentials `401`, never saying which part |
//! | `POST /logout` | a token | revokes that token: `204` |
//! | `GET /.well-known/openid-configuration` | anyone | OpenID discovery: the `issuer` and `jwks_uri` |
//! | `GET /.well-known/jwks.json` | anyone | the public keys tokens are signed with |
//! | `POST /keys/rotate` | admin | rotate the signing key: `200 {"previous","current"}` |
//!
//! The last three need [`Tokens::Rotating`]: keys kept in the users database and
//! rotated (see [`signing`](crate::signing)); with a fixed key they are `404`.
//!
//! The service checks tokens itself (the same [`Authenticator`] and store as the
//! gateway), so it holds even if reached around the gateway. Deleting a user, or
//! changing their email, password or roles, revokes every token issued to them
//! before. Passwords are hashed with Argon2id and never returned. Emails are
//! unique, compared without case: a duplicate is `409` where an admin or the
//! owner asks; sign-up does not say (it would tell anyone who has an account).

use std::time::SystemTime;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use sqlx::AnyPool;
use sqlx::migrate::Migrator;
use tower_gateway_auth::{Authenticated, Authenticator, JwtAuthLayer, Rejection};

use crate::db;
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, Page};
use crate::passwords::Use;
pub use crate::passwords::{DEFAULT_HASH_MEMORY, Passwords};
pub use crate::signing::Tokens;

/// The schema and the seed's users.
pub static MIGRATIONS: db::Migrations = db::Migrations { sqlite: &SQLITE_MIGRATIONS, postgres: &POSTGRES_MIGRATIONS };
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite/users");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres/users");

/// A user, as clients see it: never the password hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Its id: the `sub` of its tokens.
    pub id: i64,
    /// Its name.
    pub name: String,
    /// Its email, lower-case.
    pub email: String,
    /// Its roles, which its tokens carry.
    pub roles: Vec<String>,
}

#[derive(sqlx::FromRow)]
struct UserRow {
    id: i64,
    name: String,
    email: String,
    roles: String,
}

impl From<UserRow> for User {
    fn from(row: UserRow) -> Self {
        Self { id: row.id, name: row.name, email: row.email, roles: split_roles(&row.roles) }
    }
}

fn split_roles(roles: &str) -> Vec<String> {
    roles.split(',').filter(|r| !r.is_empty()).map(str::to_owned).collect()
}

/// What the service needs.
#[derive(Debug, Clone)]
pub struct UsersState {
    /// The users database.
    pub db: AnyPool,
    /// How login signs tokens.
    pub tokens: Tokens,
    /// Verifies the callers of protected routes, and revokes tokens in the store
    /// the gateway reads: one store, so a logout or a changed password is seen there.
    pub auth: Authenticator,
    /// How passwords are hashed.
    pub passwords: Passwords,
}

/// The role that may list, create and change anyone, and grant roles.
pub const ADMIN: &str = "admin";

/// The service's routes. Sign-up and login are open; a user's own record needs
/// their token; listing and creating users need the `admin` role, checked here
/// too, not only at the gateway.
pub fn app(state: UsersState) -> Router {
    let db = state.db.clone();
    let token = JwtAuthLayer::new(state.auth.clone());
    let admin = JwtAuthLayer::new(state.auth.clone()).any_role([ADMIN]);
    let routes = Router::new()
        .route("/", get(list).post(create).route_layer(admin))
        .route("/{id}", get(one).put(replace).delete(remove).route_layer(token.clone()))
        .route("/logout", post(logout).route_layer(token))
        .route("/signup", post(signup))
        .route("/login", post(login))
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/keys/rotate", post(rotate).route_layer(JwtAuthLayer::new(state.auth.clone()).any_role([ADMIN])));
    crate::server::with_common(routes, state, crate::server::Readiness::db(db))
}

/// Opens the users database at `url`.
pub async fn connect(url: &str) -> Result<AnyPool, sqlx::Error> {
    db::connect(url, &MIGRATIONS).await
}

/// Makes `email` an admin, for start-up: created with `password` if new; an
/// existing user who is not an admin is promoted and given `password` (whoever
/// signed up with that email first does not keep a password of their own); an
/// existing admin is left as they are, so a password they changed since stays
/// changed. Tokens issued before are revoked if anything changed.
pub async fn ensure_admin(s: &UsersState, email: &str, password: String) -> Result<User, ApiError> {
    let email = valid_email(email)?;
    valid_password(&password)?;
    let lookup = || {
        sqlx::query_as::<_, (i64, Option<String>, String)>(
            "SELECT id, password_hash, roles FROM users WHERE lower(email) = lower($1)",
        )
        .bind(&email)
        .fetch_optional(&s.db)
    };
    let existing = match lookup().await? {
        Some(existing) => existing,
        None => match insert(s, "Admin".into(), email.clone(), Some(password.clone()), &[ADMIN.to_owned()]).await {
            // Another replica starting at the same moment made them first:
            // theirs stands, and is looked at as any existing user's would be.
            Err(err) if err.status == StatusCode::CONFLICT => {
                lookup().await?.ok_or_else(|| ApiError::not_found("user"))?
            }
            made => return made,
        },
    };
    let (id, hash, roles) = existing;
    let mut roles = split_roles(&roles);
    if !roles.iter().any(|r| r == ADMIN) || hash.is_none() {
        if !roles.iter().any(|r| r == ADMIN) {
            roles.push(ADMIN.to_owned());
        }
        let hash = s.passwords.hash(password).await?;
        sqlx::query("UPDATE users SET password_hash = $1, roles = $2 WHERE id = $3")
            .bind(hash)
            .bind(roles.join(","))
            .bind(id)
            .execute(&s.db)
            .await?;
        revoke_all(s, id).await?;
    }
    fetch(s, id).await?.ok_or_else(|| ApiError::not_found("user"))
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
    /// A new password; the old one is kept without it.
    #[serde(default)]
    password: Option<String>,
    /// New roles (admins only); kept without it.
    #[serde(default)]
    roles: Option<Vec<String>>,
    /// The password now: a user changing their own email or password proves it
    /// (an admin does not).
    #[serde(default)]
    current_password: Option<String>,
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

async fn insert(
    s: &UsersState,
    name: String,
    email: String,
    password: Option<String>,
    roles: &[String],
) -> Result<User, ApiError> {
    let hash = match password {
        Some(password) => Some(s.passwords.hash(password).await?),
        None => None,
    };
    sqlx::query_as::<_, UserRow>(
        "INSERT INTO users (name, email, password_hash, roles) VALUES ($1, $2, $3, $4) RETURNING id, name, email, roles",
    )
    .bind(name)
    .bind(email)
    .bind(hash)
    .bind(roles.join(","))
    .fetch_one(&s.db)
    .await
    .map(User::from)
    .map_err(duplicate_email)
}

async fn fetch(s: &UsersState, id: i64) -> Result<Option<User>, ApiError> {
    let row = sqlx::query_as::<_, UserRow>("SELECT id, name, email, roles FROM users WHERE id = $1")
        .bind(id)
        .fetch_optional(&s.db)
        .await?;
    Ok(row.map(User::from))
}

/// Revokes every token of user `id` issued until now, in the store the gateway reads.
async fn revoke_all(s: &UsersState, id: i64) -> Result<(), ApiError> {
    s.auth.revoke_subject(&id.to_string(), SystemTime::now()).await.map_err(|err| {
        tracing::warn!(%err, "could not revoke a user's tokens");
        ApiError::unavailable("the token store is unavailable; try again")
    })
}

/// The caller may act on user `id`: it is them, or they are an admin.
fn owner_or_admin(who: &Authenticated, id: i64) -> Result<(), ApiError> {
    if who.sub == id.to_string() || who.has_role(ADMIN) {
        Ok(())
    } else {
        Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "only the user themselves or an admin may do this"))
    }
}

fn valid_roles(roles: &[String]) -> Result<Vec<String>, ApiError> {
    let mut out: Vec<String> = Vec::new();
    for role in roles {
        let ok = !role.is_empty() && role.len() <= 32 && role.bytes().all(|b| b.is_ascii_lowercase() || b == b'-');
        if !ok {
            return Err(ApiError::invalid("roles are 1 to 32 lower-case letters or '-'"));
        }
        if !out.contains(role) {
            out.push(role.clone());
        }
    }
    Ok(out)
}

async fn list(State(s): State<UsersState>, ApiQuery(page): ApiQuery<Page>) -> Result<Json<Vec<User>>, ApiError> {
    let (limit, offset) = page.checked()?;
    let users = sqlx::query_as::<_, UserRow>("SELECT id, name, email, roles FROM users ORDER BY id LIMIT $1 OFFSET $2")
        .bind(limit)
        .bind(offset)
        .fetch_all(&s.db)
        .await?;
    Ok(Json(users.into_iter().map(User::from).collect()))
}

async fn one(
    State(s): State<UsersState>,
    Extension(who): Extension<Authenticated>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<User>, ApiError> {
    owner_or_admin(&who, id)?;
    fetch(&s, id).await?.map(Json).ok_or_else(|| ApiError::not_found("user"))
}

async fn create(State(s): State<UsersState>, ApiJson(new): ApiJson<NewUser>) -> Result<impl IntoResponse, ApiError> {
    let (name, email) = (valid_name(&new.name)?, valid_email(&new.email)?);
    if let Some(password) = &new.password {
        valid_password(password)?;
    }
    Ok((StatusCode::CREATED, Json(insert(&s, name, email, new.password, &[]).await?)))
}

async fn replace(
    State(s): State<UsersState>,
    Extension(who): Extension<Authenticated>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(update): ApiJson<UpdateUser>,
) -> Result<Json<User>, ApiError> {
    owner_or_admin(&who, id)?;
    let (name, email) = (valid_name(&update.name)?, valid_email(&update.email)?);
    let roles = update.roles.as_deref().map(valid_roles).transpose()?;
    if roles.is_some() && !who.has_role(ADMIN) {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "only an admin may change roles"));
    }
    if let Some(password) = &update.password {
        valid_password(password)?;
    }
    let before = fetch(&s, id).await?.ok_or_else(|| ApiError::not_found("user"))?;
    let roles = roles.unwrap_or_else(|| before.roles.clone());
    // Everything that can be refused without hashing is, before any hash runs.
    let new_email = email != before.email;
    if new_email {
        let taken: Option<i64> = sqlx::query_scalar("SELECT id FROM users WHERE lower(email) = lower($1) AND id != $2")
            .bind(&email)
            .bind(id)
            .fetch_optional(&s.db)
            .await?;
        if taken.is_some() {
            return Err(ApiError::conflict("a user with this email already exists"));
        }
    }
    // A token alone does not take an account over: its owner proves the
    // password before changing what logs them in.
    if (new_email || update.password.is_some()) && !who.has_role(ADMIN) {
        let Some(current) = update.current_password else {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "current_password_required",
                "changing your email or password needs your current password",
            ));
        };
        let stored: Option<Option<String>> =
            sqlx::query_scalar("SELECT password_hash FROM users WHERE id = $1").bind(id).fetch_optional(&s.db).await?;
        if !s.passwords.verify(Use::Change, current, stored.flatten()).await? {
            return Err(ApiError::new(StatusCode::FORBIDDEN, "wrong_password", "the current password is not right"));
        }
    }
    let hash = match update.password {
        Some(password) => Some(s.passwords.hash(password).await?),
        None => None,
    };
    let user = sqlx::query_as::<_, UserRow>(
        "UPDATE users SET name = $1, email = $2, roles = $3, password_hash = COALESCE($4, password_hash) \
         WHERE id = $5 RETURNING id, name, email, roles",
    )
    .bind(name)
    .bind(email)
    .bind(roles.join(","))
    .bind(&hash)
    .bind(id)
    .fetch_optional(&s.db)
    .await
    .map_err(duplicate_email)?
    .map(User::from)
    .ok_or_else(|| ApiError::not_found("user"))?;
    // What a token says (email, roles) or proves (the password) changed: the old ones go.
    if hash.is_some() || user.email != before.email || user.roles != before.roles {
        revoke_all(&s, id).await?;
    }
    Ok(Json(user))
}

async fn remove(
    State(s): State<UsersState>,
    Extension(who): Extension<Authenticated>,
    ApiPath(id): ApiPath<i64>,
) -> Result<StatusCode, ApiError> {
    owner_or_admin(&who, id)?;
    let deleted = sqlx::query("DELETE FROM users WHERE id = $1").bind(id).execute(&s.db).await?.rows_affected();
    if deleted == 0 {
        return Err(ApiError::not_found("user"));
    }
    revoke_all(&s, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Answers the same whether the email was free or taken, after as long a
/// wait (a taken one still costs its hash): which addresses have an account is
/// not for anyone to learn by signing up.
async fn signup(State(s): State<UsersState>, ApiJson(new): ApiJson<Signup>) -> Result<impl IntoResponse, ApiError> {
    let (name, email) = (valid_name(&new.name)?, valid_email(&new.email)?);
    valid_password(&new.password)?;
    match insert(&s, name, email, Some(new.password), &[]).await {
        Ok(_) => {}
        Err(err) if err.status == StatusCode::CONFLICT => {}
        Err(err) => return Err(err),
    }
    let body = serde_json::json!({
        "status": "accepted",
        "message": "if no account used this email, it has one now: log in with it",
    });
    Ok((StatusCode::ACCEPTED, Json(body)))
}

async fn login(State(s): State<UsersState>, ApiJson(login): ApiJson<Login>) -> Result<impl IntoResponse, ApiError> {
    let email = login.email.trim().to_lowercase();
    let row: Option<(i64, Option<String>, String)> =
        sqlx::query_as("SELECT id, password_hash, roles FROM users WHERE lower(email) = lower($1)")
            .bind(&email)
            .fetch_optional(&s.db)
            .await?;
    let (id, hash, roles) = match row {
        Some((id, hash, roles)) => (Some(id), hash, split_roles(&roles)),
        None => (None, None, Vec::new()),
    };
    let verified = s.passwords.verify(Use::Login, login.password, hash).await?;
    let Some(id) = id.filter(|_| verified) else {
        return Err(ApiError::unauthorized("invalid_credentials", "wrong email or password"));
    };
    let token = s.tokens.issue(&id.to_string(), Some(&email), &roles).await?;
    let expires_in = s.tokens.token_ttl().as_secs();
    let user =
        fetch(&s, id).await?.ok_or_else(|| ApiError::unauthorized("invalid_credentials", "wrong email or password"))?;
    Ok(Json(serde_json::json!({ "token": token, "token_type": "Bearer", "expires_in": expires_in, "user": user })))
}

/// OpenID discovery: enough of it for a verifier to find the keys.
async fn discovery(State(s): State<UsersState>) -> Result<impl IntoResponse, ApiError> {
    let (keys, jwks_uri) = s.tokens.rotating()?;
    let document = serde_json::json!({
        "issuer": keys.issuer(),
        "jwks_uri": jwks_uri,
        "id_token_signing_alg_values_supported": ["EdDSA"],
        "subject_types_supported": ["public"],
        "response_types_supported": ["token"],
    });
    Ok(([(header::CACHE_CONTROL, "max-age=60")], Json(document)))
}

/// The published keys; verifiers refetch them every minute.
async fn jwks(State(s): State<UsersState>) -> Result<impl IntoResponse, ApiError> {
    let (keys, _) = s.tokens.rotating()?;
    let set = keys.jwks().await.map_err(ApiError::internal)?;
    Ok(([(header::CACHE_CONTROL, "max-age=60")], Json(set)))
}

/// Behind the admin layer.
async fn rotate(State(s): State<UsersState>) -> Result<impl IntoResponse, ApiError> {
    let (keys, _) = s.tokens.rotating()?;
    Ok(Json(keys.rotate().await.map_err(ApiError::internal)?))
}

/// Behind the token layer, so the header holds a valid bearer token.
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
