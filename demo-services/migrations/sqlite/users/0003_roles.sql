-- Roles a user's tokens carry, comma-separated (e.g. 'admin').
ALTER TABLE users ADD COLUMN roles TEXT NOT NULL DEFAULT '';
