CREATE TABLE orders (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id     INTEGER NOT NULL,
    product_id  INTEGER NOT NULL,
    quantity    INTEGER NOT NULL CHECK (quantity > 0),
    total_cents INTEGER NOT NULL CHECK (total_cents > 0),
    status      TEXT    NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX orders_by_user ON orders (user_id, id);

-- One row per (user, Idempotency-Key): the request it was first used with and,
-- once done, the response to give again. status_code NULL = in progress.
CREATE TABLE idempotency_keys (
    user_id     INTEGER NOT NULL,
    key         TEXT    NOT NULL,
    request     TEXT    NOT NULL,
    status_code INTEGER,
    response    TEXT,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (user_id, key)
);
