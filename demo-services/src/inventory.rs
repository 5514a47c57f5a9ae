//! inventory-service: stock per product, over gRPC (tonic), on SQLite.
//!
//! | method | |
//! |---|---|
//! | `inventory.v1.Inventory/GetStock` | how many of a product are available |
//! | `inventory.v1.Inventory/Reserve` | takes stock for an order, once per `order_key`; `FAILED_PRECONDITION` when too few are left |
//! | `inventory.v1.Inventory/Restock` | puts stock back (the gateway lets only `admin` call it) |
//!
//! beside `grpc.health.v1.Health` (`inventory.v1.Inventory` is `SERVING` while
//! the database answers) and server reflection (`grpc.reflection.v1`).
//!
//! **Never oversold.** A reservation is one
//! `UPDATE … SET available = available - n WHERE available >= n` in an
//! immediate transaction with the reservation's row: two checkouts of the last item cannot both take it, on one replica or
//! several sharing the file. A reservation retried with its `order_key` (the
//! checkout's idempotency key) answers what it took the first time and takes
//! nothing more.
//!
//! checkout-service reserves through [`InventoryClient`]: tonic's generated
//! client over tower-gateway's own stack (round robin, timeout, the `Proxy`
//! speaking HTTP/2).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::AnyPool;
use sqlx::migrate::Migrator;
use tonic::{Request, Response, Status};
use tower::ServiceBuilder;
use tower_gateway::balance::Endpoints;
use tower_gateway::{Proxy, RoundRobin, RoundRobinLayer, Timeout, TimeoutLayer};
use tracing::Instrument;

use crate::db;

/// The generated messages, client and server of `proto/inventory.proto`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("inventory.v1");

    /// The encoded file descriptor set, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/inventory_descriptor.bin"));
}

use pb::inventory_server::{Inventory, InventoryServer};
use pb::{GetStockRequest, Reservation, ReserveRequest, RestockRequest, Stock};

/// The schema: stock and reservations.
pub static MIGRATIONS: db::Migrations = db::Migrations { sqlite: &SQLITE_MIGRATIONS, postgres: &POSTGRES_MIGRATIONS };
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite/inventory");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres/inventory");

/// The gRPC service name health reports on.
pub const SERVICE_NAME: &str = "inventory.v1.Inventory";

/// The most one reservation or restock moves.
const MAX_QUANTITY: i64 = 1_000_000;

/// What the service needs.
#[derive(Debug, Clone)]
pub struct InventoryState {
    /// The stock database.
    pub db: AnyPool,
}

impl InventoryState {
    /// Opens (and migrates) the stock database at `url`.
    pub async fn connect(url: &str) -> Result<Self, sqlx::Error> {
        Ok(Self { db: db::connect(url, &MIGRATIONS).await? })
    }
}

#[allow(clippy::needless_pass_by_value)] // the shape `map_err` hands over
fn internal(err: sqlx::Error) -> Status {
    tracing::error!(%err, "inventory database");
    Status::unavailable("the stock database is unavailable; try again")
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

#[tonic::async_trait]
impl Inventory for InventoryState {
    async fn get_stock(&self, request: Request<GetStockRequest>) -> Result<Response<Stock>, Status> {
        let product_id = request.into_inner().product_id;
        let available: Option<i64> = sqlx::query_scalar("SELECT available FROM stock WHERE product_id = $1")
            .bind(product_id)
            .fetch_optional(&self.db)
            .instrument(db::span("SELECT", "stock"))
            .await
            .map_err(internal)?;
        match available {
            Some(available) => Ok(Response::new(Stock { product_id, available })),
            None => Err(Status::not_found(format!("no stock is kept for product {product_id}"))),
        }
    }

    async fn reserve(&self, request: Request<ReserveRequest>) -> Result<Response<Reservation>, Status> {
        let ReserveRequest { order_key, product_id, quantity } = request.into_inner();
        if order_key.is_empty() || order_key.len() > 200 {
            return Err(Status::invalid_argument("order_key must be 1 to 200 bytes"));
        }
        if !(1..=MAX_QUANTITY).contains(&quantity) {
            return Err(Status::invalid_argument(format!("quantity must be between 1 and {MAX_QUANTITY}")));
        }
        let mut tx = db::begin_write(&self.db).await.map_err(internal)?;
        let before: Option<(i64, i64, i64)> =
            sqlx::query_as("SELECT product_id, quantity, remaining FROM reservations WHERE order_key = $1")
                .bind(&order_key)
                .fetch_optional(&mut *tx)
                .instrument(db::span("SELECT", "reservations"))
                .await
                .map_err(internal)?;
        if let Some((product, reserved, remaining)) = before {
            if (product, reserved) != (product_id, quantity) {
                return Err(Status::invalid_argument("this order_key reserved another product or quantity"));
            }
            return Ok(Response::new(Reservation { order_key, product_id, quantity, remaining }));
        }
        let remaining: Option<i64> = sqlx::query_scalar(
            "UPDATE stock SET available = available - $1 WHERE product_id = $2 AND available >= $1 RETURNING available",
        )
        .bind(quantity)
        .bind(product_id)
        .fetch_optional(&mut *tx)
        .instrument(db::span("UPDATE", "stock"))
        .await
        .map_err(internal)?;
        let Some(remaining) = remaining else {
            let available: Option<i64> = sqlx::query_scalar("SELECT available FROM stock WHERE product_id = $1")
                .bind(product_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(internal)?;
            return Err(match available {
                None => Status::not_found(format!("no stock is kept for product {product_id}")),
                Some(available) => Status::failed_precondition(format!(
                    "only {available} of product {product_id} left; {quantity} asked"
                )),
            });
        };
        sqlx::query(
            "INSERT INTO reservations (order_key, product_id, quantity, remaining, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&order_key)
        .bind(product_id)
        .bind(quantity)
        .bind(remaining)
        .bind(now())
        .execute(&mut *tx)
        .instrument(db::span("INSERT", "reservations"))
        .await
        .map_err(internal)?;
        tx.commit().await.map_err(internal)?;
        Ok(Response::new(Reservation { order_key, product_id, quantity, remaining }))
    }

    async fn restock(&self, request: Request<RestockRequest>) -> Result<Response<Stock>, Status> {
        let RestockRequest { product_id, quantity } = request.into_inner();
        if product_id <= 0 || !(1..=MAX_QUANTITY).contains(&quantity) {
            return Err(Status::invalid_argument(format!(
                "product_id must be positive and quantity between 1 and {MAX_QUANTITY}"
            )));
        }
        let available: i64 = sqlx::query_scalar(
            "INSERT INTO stock (product_id, available) VALUES ($1, $2) \
             ON CONFLICT (product_id) DO UPDATE SET available = CASE WHEN stock.available + $2 > 1000000000 THEN 1000000000 \
             ELSE stock.available + $2 END RETURNING available",
        )
        .bind(product_id)
        .bind(quantity)
        .fetch_one(&self.db)
        .instrument(db::span("UPSERT", "stock"))
        .await
        .map_err(internal)?;
        Ok(Response::new(Stock { product_id, available }))
    }
}

/// Every gRPC service inventory-service serves: the inventory, health and
/// reflection. Health says `SERVING` for [`SERVICE_NAME`] while the database
/// answers (looked at every second), `NOT_SERVING` when it does not.
pub async fn services(state: InventoryState) -> tonic::service::Routes {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<InventoryServer<InventoryState>>().await;
    let db = state.db.clone();
    tokio::spawn(async move {
        let mut serving = true;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let up = db::ping(&db).await;
            if up != serving {
                serving = up;
                let status =
                    if up { tonic_health::ServingStatus::Serving } else { tonic_health::ServingStatus::NotServing };
                reporter.set_service_status(SERVICE_NAME, status).await;
            }
            if db.is_closed() {
                return;
            }
        }
    });
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the built-in descriptor sets are valid");
    tonic::service::Routes::new(InventoryServer::new(state)).add_service(health).add_service(reflection)
}

/// Serves [`services`] on `listener` until `shutdown` resolves.
pub async fn serve(
    state: InventoryState,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let routes = services(state).await;
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tonic::transport::Server::builder()
        .layer(tower_gateway::telemetry::TraceContextLayer::new())
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

type Stack = RoundRobin<Timeout<Proxy<tonic::body::Body>>>;

/// A client of inventory-service through tower-gateway's own stack: a round
/// robin of its instances, each call bounded, HTTP/2.
#[derive(Debug, Clone)]
pub struct InventoryClient {
    inner: pb::inventory_client::InventoryClient<Stack>,
    endpoints: Endpoints,
}

/// Why a reservation was not made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReserveError {
    /// Fewer are left than asked.
    OutOfStock(String),
    /// No stock is kept for the product.
    UnknownProduct,
    /// The service could not be reached or failed.
    Unavailable(String),
}

impl InventoryClient {
    /// A client balancing over `endpoints`.
    pub fn new(endpoints: Endpoints) -> Self {
        let svc = ServiceBuilder::new()
            .layer(RoundRobinLayer::new(endpoints.clone()))
            .layer(TimeoutLayer::new(Duration::from_secs(2)))
            .service(Proxy::builder().http2(true).build());
        Self { inner: pb::inventory_client::InventoryClient::new(svc), endpoints }
    }

    /// Its endpoints, for readiness.
    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// Reserves `quantity` of `product_id` for the order `order_key`.
    pub async fn reserve(&self, order_key: &str, product_id: i64, quantity: i64) -> Result<i64, ReserveError> {
        let request = ReserveRequest { order_key: order_key.to_owned(), product_id, quantity };
        match self.inner.clone().reserve(request).await {
            Ok(reservation) => Ok(reservation.into_inner().remaining),
            Err(status) => Err(match status.code() {
                tonic::Code::FailedPrecondition => ReserveError::OutOfStock(status.message().to_owned()),
                tonic::Code::NotFound => ReserveError::UnknownProduct,
                _ => {
                    tracing::warn!(code = ?status.code(), message = status.message(), "inventory-service refused a reservation");
                    ReserveError::Unavailable(status.message().to_owned())
                }
            }),
        }
    }
}
