CREATE TABLE stock (
    product_id INTEGER PRIMARY KEY,
    available  INTEGER NOT NULL CHECK (available >= 0)
);
-- One row per order that took stock: a reservation retried with its key takes nothing more.
CREATE TABLE reservations (
    order_key  TEXT    PRIMARY KEY,
    product_id INTEGER NOT NULL REFERENCES stock (product_id),
    quantity   INTEGER NOT NULL CHECK (quantity > 0),
    remaining  INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
