-- The SQLite schema of migrations/sqlite/inventory, in Postgres's words: every integer is BIGINT, as SQLite's are.
CREATE TABLE stock (
    product_id BIGINT PRIMARY KEY,
    available  BIGINT NOT NULL CHECK (available >= 0)
);
-- One row per order that took stock: a reservation retried with its key takes nothing more.
CREATE TABLE reservations (
    order_key  TEXT   PRIMARY KEY,
    product_id BIGINT NOT NULL REFERENCES stock (product_id),
    quantity   BIGINT NOT NULL CHECK (quantity > 0),
    remaining  BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
