//! checkout-service: orders, priced from product-service. Routes as the service
//! sees them, the gateway's `/api/checkout` stripped:
//!
//! | route | |
//! |---|---|
//! | `POST /` `{product_id, quantity}` | `201` the order, priced now from product-service |
//! | `GET /?limit=&offset=` | the caller's orders |
//! | `GET /{id}` | one of the caller's orders (`404` for anyone else's) |
//!
//! The caller is the `x-user-id` header set by the JWT layer. Deployed, the
//! service runs that layer itself ([`CheckoutState::auth`]): it verifies the
//! bearer token the gateway forwards, so a request that reaches it without
//! passing the gateway (another container on the network, a local process)
//! cannot name a user by sending `x-user-id` — that header is replaced from the
//! verified token. A request without a caller is refused.
//!
//! **Idempotency.** A `POST` with an `Idempotency-Key` is performed once per user
//! and key: the same key with the same body gets the stored response again (and no
//! second order), the same key with another body `422`, and a duplicate arriving
//! while the first is still in progress `409`. The order and the stored response
//! are written in one transaction.
//!
//! **Stock.** With [`CheckoutState::inventory`], an order first reserves its
//! quantity from inventory-service (gRPC, through tower-gateway's stack), keyed
//! by the user and the idempotency key so a retry takes nothing more; too few
//! left is `409 out_of_stock`, and no order is made.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use serde::{Deserialize, Serialize};
use sqlx::AnyPool;
use sqlx::migrate::Migrator;
use tower::{ServiceBuilder, ServiceExt};
use tower_gateway::balance::Endpoints;
use tower_gateway::retry::ReplayBody;
use tower_gateway::{Proxy, Retry, RetryLayer, RetryPolicy, RoundRobin, RoundRobinLayer, Timeout, TimeoutLayer};
use tower_gateway_auth::{Authenticator, JwtAuthLayer};
use tracing::Instrument;

use crate::db;
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, Page};
use crate::inventory::{InventoryClient, ReserveError};
use crate::money::Cents;
use crate::products::Product;

/// The schema: orders and stored idempotent responses.
pub static MIGRATIONS: db::Migrations = db::Migrations { sqlite: &SQLITE_MIGRATIONS, postgres: &POSTGRES_MIGRATIONS };
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite/orders");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres/orders");

/// How long a request may hold its idempotency key before a retry may take it over.
pub const IN_PROGRESS_TIMEOUT: Duration = Duration::from_secs(60);

/// An order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Order {
    /// Its id.
    pub id: i64,
    /// Who ordered.
    pub user_id: i64,
    /// What.
    pub product_id: i64,
    /// How many.
    pub quantity: i64,
    /// The product's price at the time, times the quantity.
    #[sqlx(try_from = "i64", rename = "total_cents")]
    pub total_price: Cents,
    /// `confirmed`.
    pub status: String,
}

type ProductStack = Retry<RoundRobin<Timeout<Proxy<ReplayBody<Empty<Bytes>>>>>>;

/// Reaches product-service through tower-gateway's own stack: retries with
/// backoff over a round robin of the product instances.
#[derive(Debug, Clone)]
pub struct ProductClient {
    svc: ProductStack,
    endpoints: Endpoints,
}

impl ProductClient {
    /// A client balancing over `endpoints`.
    pub fn new(endpoints: Endpoints) -> Self {
        let svc = ServiceBuilder::new()
            .layer(RetryLayer::new(RetryPolicy::new()))
            .layer(RoundRobinLayer::new(endpoints.clone()))
            .layer(TimeoutLayer::new(Duration::from_secs(2)))
            .service(Proxy::new());
        Self { svc, endpoints }
    }

    /// The product's price; `None` if there is no such product.
    pub async fn price(&self, product_id: i64) -> Result<Option<Cents>, ApiError> {
        let req = http::Request::get(format!("/{product_id}")).body(Empty::new()).map_err(ApiError::internal)?;
        let Ok(res) = self.svc.clone().oneshot(req).await;
        match res.status() {
            StatusCode::OK => {
                let body = Limited::new(res.into_body(), 64 * 1024).collect().await.map_err(|e| {
                    tracing::warn!(error = %e, "product-service response broke off");
                    ApiError::unavailable("product-service is unavailable; try again")
                })?;
                let product: Product = serde_json::from_slice(&body.to_bytes()).map_err(ApiError::internal)?;
                Ok(Some(product.price))
            }
            StatusCode::NOT_FOUND => Ok(None),
            status => {
                tracing::warn!(%status, "product-service could not price an order");
                Err(ApiError::unavailable("product-service is unavailable; try again"))
            }
        }
    }
}

/// What the service needs.
#[derive(Debug, Clone)]
pub struct CheckoutState {
    /// The orders database.
    pub db: AnyPool,
    /// How to reach product-service.
    pub products: ProductClient,
    /// Verifies the forwarded token and sets `x-user-id` from it. `None` trusts
    /// `x-user-id` as sent: for tests of the service alone, never deployed.
    pub auth: Option<Authenticator>,
    /// Where stock is reserved before an order is made (`None`: stock is not
    /// kept, as before inventory-service).
    pub inventory: Option<InventoryClient>,
}

/// Opens the orders database at `url`.
pub async fn connect(url: &str) -> Result<AnyPool, sqlx::Error> {
    db::connect(url, &MIGRATIONS).await
}

/// The service's routes.
pub fn app(state: CheckoutState) -> Router {
    let db = state.db.clone();
    let mut routes = Router::new().route("/", get(list).post(create)).route("/{id}", get(one));
    if let Some(auth) = &state.auth {
        routes = routes.route_layer(JwtAuthLayer::new(auth.clone()));
    }
    let mut ready = crate::server::Readiness::db(db).upstream("product-service", state.products.endpoints.clone());
    if let Some(inventory) = &state.inventory {
        ready = ready.upstream("inventory-service", inventory.endpoints().clone());
    }
    crate::server::with_common(routes, state, ready)
}

/// The user the gateway authenticated, from `x-user-id`.
#[derive(Debug, Clone, Copy)]
pub struct Caller(pub i64);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .headers
            .get("x-user-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i64>().ok())
            .filter(|id| *id > 0)
            .map(Caller)
            .ok_or_else(|| {
                ApiError::unauthorized("missing_identity", "checkout is reached through the gateway with a token")
            })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewOrder {
    product_id: i64,
    quantity: i64,
}

/// The columns an [`Order`] is read from, for `concat!` (sqlx wants static SQL).
macro_rules! order_columns {
    () => {
        "id, user_id, product_id, quantity, total_cents, status"
    };
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    let key = value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()));
    key.map(|k| Some(k.to_owned()))
        .ok_or_else(|| ApiError::bad_request("Idempotency-Key must be 1 to 255 visible ASCII characters"))
}

fn json_response(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
}

async fn create(
    State(s): State<CheckoutState>,
    Caller(user): Caller,
    headers: HeaderMap,
    ApiJson(new): ApiJson<NewOrder>,
) -> Result<Response, ApiError> {
    if new.product_id <= 0 {
        return Err(ApiError::invalid("product_id must be a positive id"));
    }
    if !(1..=1000).contains(&new.quantity) {
        return Err(ApiError::invalid("quantity must be between 1 and 1000"));
    }
    let Some(key) = idempotency_key(&headers)? else {
        let total = total(&s, &new).await?;
        reserve(&s, &uuid::Uuid::new_v4().to_string(), &new).await?;
        let mut tx = db::begin_write(&s.db).await?;
        let order = insert_order(&mut tx, user, &new, total).await?;
        tx.commit().await?;
        return Ok((StatusCode::CREATED, Json(order)).into_response());
    };

    let request = format!("{}:{}", new.product_id, new.quantity);
    if let Some(stored) = claim(&s.db, user, &key, &request).await? {
        return Ok(stored);
    }
    // The stock is reserved under the user's key: a retry takes nothing more.
    let order_key = format!("{user}:{key}");
    let priced = async {
        let total = total(&s, &new).await?;
        reserve(&s, &order_key, &new).await?;
        Ok::<_, ApiError>(total)
    };
    let total = match priced.await {
        Ok(total) => total,
        Err(err) => {
            // Nothing was done: let the client try again with the same key.
            sqlx::query("DELETE FROM idempotency_keys WHERE user_id = $1 AND key = $2 AND status_code IS NULL")
                .bind(user)
                .bind(&key)
                .execute(&s.db)
                .await?;
            return Err(err);
        }
    };
    let mut tx = db::begin_write(&s.db).await?;
    let order = insert_order(&mut tx, user, &new, total).await?;
    let body = serde_json::to_string(&order).map_err(ApiError::internal)?;
    sqlx::query("UPDATE idempotency_keys SET status_code = 201, response = $1 WHERE user_id = $2 AND key = $3")
        .bind(&body)
        .bind(user)
        .bind(&key)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(json_response(StatusCode::CREATED, body))
}

/// Takes the key for this request, or answers for it: the stored response, `422`
/// for a different request under the same key, `409` while another holds it.
async fn claim(db: &AnyPool, user: i64, key: &str, request: &str) -> Result<Option<Response>, ApiError> {
    let mut tx = db::begin_write(db).await?;
    let row: Option<(String, Option<i64>, Option<String>, i64)> = sqlx::query_as(
        "SELECT request, status_code, response, created_at FROM idempotency_keys WHERE user_id = $1 AND key = $2",
    )
    .bind(user)
    .bind(key)
    .fetch_optional(&mut *tx)
    .instrument(db::span("SELECT", "idempotency_keys"))
    .await?;
    match row {
        Some((stored, ..)) if stored != request => {
            Err(ApiError::invalid("this Idempotency-Key was used with a different request"))
        }
        Some((_, Some(status), Some(body), _)) => {
            let status =
                u16::try_from(status).ok().and_then(|s| StatusCode::from_u16(s).ok()).unwrap_or(StatusCode::OK);
            let mut response = json_response(status, body);
            response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
            Ok(Some(response))
        }
        Some((_, None, _, started)) if now() - started < IN_PROGRESS_TIMEOUT.as_secs() as i64 => {
            Err(ApiError::conflict("a request with this Idempotency-Key is in progress"))
        }
        Some(_) => {
            // Abandoned by a request that never finished: take it over.
            sqlx::query("UPDATE idempotency_keys SET created_at = $1 WHERE user_id = $2 AND key = $3")
                .bind(now())
                .bind(user)
                .bind(key)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(None)
        }
        None => {
            sqlx::query("INSERT INTO idempotency_keys (user_id, key, request, created_at) VALUES ($1, $2, $3, $4)")
                .bind(user)
                .bind(key)
                .bind(request)
                .bind(now())
                .execute(&mut *tx)
                .instrument(db::span("INSERT", "idempotency_keys"))
                .await?;
            tx.commit().await?;
            Ok(None)
        }
    }
}

/// Takes the order's stock from inventory-service, if stock is kept: `409`
/// `out_of_stock` when too few are left.
async fn reserve(s: &CheckoutState, order_key: &str, new: &NewOrder) -> Result<(), ApiError> {
    let Some(inventory) = &s.inventory else { return Ok(()) };
    match inventory.reserve(order_key, new.product_id, new.quantity).await {
        Ok(_remaining) => Ok(()),
        Err(ReserveError::OutOfStock(message)) => Err(ApiError::new(StatusCode::CONFLICT, "out_of_stock", message)),
        Err(ReserveError::UnknownProduct) => Err(ApiError::invalid("no stock is kept for this product")),
        Err(ReserveError::Unavailable(_)) => Err(ApiError::unavailable("inventory-service is unavailable; try again")),
    }
}

async fn total(s: &CheckoutState, new: &NewOrder) -> Result<Cents, ApiError> {
    let price = s.products.price(new.product_id).await?.ok_or_else(|| ApiError::invalid("no such product"))?;
    price.0.checked_mul(new.quantity).map(Cents).ok_or_else(|| ApiError::invalid("the total is too large"))
}

async fn insert_order(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    user: i64,
    new: &NewOrder,
    total: Cents,
) -> Result<Order, ApiError> {
    let order = sqlx::query_as::<_, Order>(concat!(
        "INSERT INTO orders (user_id, product_id, quantity, total_cents, status, created_at) ",
        "VALUES ($1, $2, $3, $4, 'confirmed', $5) RETURNING ",
        order_columns!()
    ))
    .bind(user)
    .bind(new.product_id)
    .bind(new.quantity)
    .bind(total.0)
    .bind(now())
    .fetch_one(&mut **tx)
    .instrument(db::span("INSERT", "orders"))
    .await?;
    Ok(order)
}

async fn list(
    State(s): State<CheckoutState>,
    Caller(user): Caller,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<Vec<Order>>, ApiError> {
    let (limit, offset) = page.checked()?;
    let orders = sqlx::query_as::<_, Order>(concat!(
        "SELECT ",
        order_columns!(),
        " FROM orders WHERE user_id = $1 ORDER BY id LIMIT $2 OFFSET $3"
    ))
    .bind(user)
    .bind(limit)
    .bind(offset)
    .fetch_all(&s.db)
    .await?;
    Ok(Json(orders))
}

async fn one(
    State(s): State<CheckoutState>,
    Caller(user): Caller,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<Order>, ApiError> {
    let order =
        sqlx::query_as::<_, Order>(concat!("SELECT ", order_columns!(), " FROM orders WHERE id = $1 AND user_id = $2"))
            .bind(id)
            .bind(user)
            .fetch_optional(&s.db)
            .await?;
    order.map(Json).ok_or_else(|| ApiError::not_found("order"))
}
