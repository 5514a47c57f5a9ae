-- The users a new database starts with (no password: they cannot log in until one is set).
INSERT INTO users (name, email) VALUES
    ('Alice', 'alice@example.com'),
    ('Bob', 'bob@example.com');
