-- The catalogue a new database starts with; a migration runs once, so restarts never re-seed.
INSERT INTO products (name, price_cents) VALUES
    ('Laptop', 99999),
    ('Smartphone', 59900),
    ('Headphones', 7990),
    ('Keyboard', 4950);
