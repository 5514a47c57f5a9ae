-- Users are looked up by lower(email), the form Postgres indexes too (the column's NOCASE keeps it unique).
CREATE INDEX users_by_lower_email ON users (lower(email));
