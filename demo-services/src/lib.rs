//! The seed's three backend services — users, products, checkout — on axum and
//! SQLite, each a `fn app(state) -> axum::Router` that a test drives with
//! `oneshot`, the demo runs in-process, and a binary serves on its own port; and
//! [`inventory`], a gRPC service (tonic) on SQLite that checkout reserves stock from.
//!
//! Every service keeps its data in one SQLite file (WAL, busy timeout, foreign
//! keys, migrations at start-up, seed rows only in a new database); replicas of a
//! service share that file. Bad input is answered with `{"error":{"code","message"}}`
//! and 400, 404, 409, 413, 415 or 422. Each has `/healthz` and `/readyz`.

pub mod checkout;
pub mod db;
pub mod error;
pub mod inventory;
pub mod money;
pub mod passwords;
pub mod products;
pub mod server;
pub mod signing;
pub mod users;
