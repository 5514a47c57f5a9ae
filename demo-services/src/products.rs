//! product-service: the product catalogue. Routes as the service sees them, the
//! gateway's `/api/products` stripped:
//!
//! | route | |
//! |---|---|
//! | `GET /?limit=&offset=` | list, by id |
//! | `GET /{id}` | one product |
//! | `POST /` `{name, price}` | create: `201` |
//! | `PUT /{id}` `{name, price}` | replace |
//! | `DELETE /{id}` | delete: `204` |
//! | `GET /feed` (WebSocket) | the price feed: `{"type":"prices","products":[...]}` at once and every 5 s; a text message is answered `{"type":"echo","data":...}` |
//!
//! Reading is open. Deployed, the service verifies the writers itself
//! ([`ProductsState::auth`]): `POST`, `PUT` and `DELETE` need a token with the
//! `admin` role, as at the gateway, so a request that reaches the service
//! around the gateway (another container on the network, a local process)
//! cannot change the catalogue.

use axum::extract::State;
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sqlx::AnyPool;
use sqlx::migrate::Migrator;
use tracing::Instrument;

use tower_gateway_auth::{Authenticator, JwtAuthLayer};

use crate::db;
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, Page};
use crate::money::Cents;

/// The schema and the seed's products.
pub static MIGRATIONS: db::Migrations = db::Migrations { sqlite: &SQLITE_MIGRATIONS, postgres: &POSTGRES_MIGRATIONS };
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite/products");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres/products");

/// The highest price accepted: one million.
pub const MAX_PRICE: Cents = Cents(100_000_000);

/// A product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Product {
    /// Its id.
    pub id: i64,
    /// Its name.
    pub name: String,
    /// Its price.
    #[sqlx(try_from = "i64", rename = "price_cents")]
    pub price: Cents,
}

/// What a client sends to create or replace a product.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewProduct {
    /// Non-empty, at most 200 characters.
    pub name: String,
    /// Positive, at most [`MAX_PRICE`].
    pub price: Cents,
}

impl NewProduct {
    fn validated(self) -> Result<(String, Cents), ApiError> {
        let name = self.name.trim();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(ApiError::invalid("name must be 1 to 200 characters"));
        }
        if self.price.0 <= 0 || self.price > MAX_PRICE {
            return Err(ApiError::invalid(format!("price must be positive and at most {MAX_PRICE}")));
        }
        Ok((name.to_owned(), self.price))
    }
}

/// What the service needs: its database.
#[derive(Debug, Clone)]
pub struct ProductsState {
    /// The products database.
    pub db: AnyPool,
    /// Verifies the token of every write, which needs the `admin` role. `None`
    /// lets anyone write: for tests of the service alone, never deployed.
    pub auth: Option<Authenticator>,
}

impl ProductsState {
    /// Opens the database at `url` and migrates it; writes are open until
    /// [`with_auth`](Self::with_auth).
    pub async fn connect(url: &str) -> Result<Self, sqlx::Error> {
        Ok(Self { db: db::connect(url, &MIGRATIONS).await?, auth: None })
    }

    /// Writes need a token `auth` accepts, with the `admin` role.
    #[must_use]
    pub fn with_auth(mut self, auth: Authenticator) -> Self {
        self.auth = Some(auth);
        self
    }
}

/// The service's routes.
pub fn app(state: ProductsState) -> Router {
    let db = state.db.clone();
    let (mut create, mut change) = (post(create), put(replace).delete(remove));
    if let Some(auth) = &state.auth {
        let admin = JwtAuthLayer::new(auth.clone()).any_role([crate::users::ADMIN]);
        create = create.route_layer(admin.clone());
        change = change.route_layer(admin);
    }
    let routes = Router::new()
        .route("/", get(list).merge(create))
        .route("/feed", get(feed))
        .route("/{id}", get(one).merge(change));
    crate::server::with_common(routes, state, crate::server::Readiness::db(db))
}

/// The query an [`Product`] is read with, for `concat!` (sqlx wants static SQL).
macro_rules! select_products {
    () => {
        "SELECT id, name, price_cents FROM products"
    };
}

async fn list(State(s): State<ProductsState>, ApiQuery(page): ApiQuery<Page>) -> Result<Json<Vec<Product>>, ApiError> {
    let (limit, offset) = page.checked()?;
    let products = sqlx::query_as::<_, Product>(concat!(select_products!(), " ORDER BY id LIMIT $1 OFFSET $2"))
        .bind(limit)
        .bind(offset)
        .fetch_all(&s.db)
        .await?;
    Ok(Json(products))
}

/// How often the feed sends the prices.
const FEED_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The price feed: the first 100 products now and every [`FEED_EVERY`], and an
/// echo of each text message (a liveness check for clients and operators).
async fn feed(State(s): State<ProductsState>, ws: WebSocketUpgrade) -> impl IntoResponse {
    ws.max_message_size(64 * 1024).on_upgrade(move |mut socket| async move {
        let mut every = tokio::time::interval(FEED_EVERY);
        loop {
            let sent = tokio::select! {
                _ = every.tick() => {
                    let products = sqlx::query_as::<_, Product>(concat!(select_products!(), " ORDER BY id LIMIT 100"))
                        .fetch_all(&s.db)
                        .await;
                    match products {
                        Ok(products) => {
                            let prices = serde_json::json!({ "type": "prices", "products": products });
                            socket.send(Message::text(prices.to_string())).await
                        }
                        Err(err) => {
                            tracing::warn!(%err, "the price feed could not read the products");
                            Ok(())
                        }
                    }
                }
                received = socket.recv() => match received {
                    Some(Ok(Message::Text(text))) => {
                        let echo = serde_json::json!({ "type": "echo", "data": text.as_str() });
                        socket.send(Message::text(echo.to_string())).await
                    }
                    Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                    Some(Ok(_)) => Ok(()),
                },
            };
            if sent.is_err() {
                break;
            }
        }
    })
}

async fn one(State(s): State<ProductsState>, ApiPath(id): ApiPath<i64>) -> Result<Json<Product>, ApiError> {
    let product = sqlx::query_as::<_, Product>(concat!(select_products!(), " WHERE id = $1"))
        .bind(id)
        .fetch_optional(&s.db)
        .instrument(crate::db::span("SELECT", "products"))
        .await?;
    product.map(Json).ok_or_else(|| ApiError::not_found("product"))
}

async fn create(
    State(s): State<ProductsState>,
    ApiJson(new): ApiJson<NewProduct>,
) -> Result<impl IntoResponse, ApiError> {
    let (name, price) = new.validated()?;
    let product = sqlx::query_as::<_, Product>(
        "INSERT INTO products (name, price_cents) VALUES ($1, $2) RETURNING id, name, price_cents",
    )
    .bind(name)
    .bind(price.0)
    .fetch_one(&s.db)
    .await?;
    Ok((StatusCode::CREATED, Json(product)))
}

async fn replace(
    State(s): State<ProductsState>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(new): ApiJson<NewProduct>,
) -> Result<Json<Product>, ApiError> {
    let (name, price) = new.validated()?;
    let product = sqlx::query_as::<_, Product>(
        "UPDATE products SET name = $1, price_cents = $2 WHERE id = $3 RETURNING id, name, price_cents",
    )
    .bind(name)
    .bind(price.0)
    .bind(id)
    .fetch_optional(&s.db)
    .await?;
    product.map(Json).ok_or_else(|| ApiError::not_found("product"))
}

async fn remove(State(s): State<ProductsState>, ApiPath(id): ApiPath<i64>) -> Result<StatusCode, ApiError> {
    let deleted = sqlx::query("DELETE FROM products WHERE id = $1").bind(id).execute(&s.db).await?.rows_affected();
    if deleted == 0 { Err(ApiError::not_found("product")) } else { Ok(StatusCode::NO_CONTENT) }
}
