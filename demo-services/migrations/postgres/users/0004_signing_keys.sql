-- The keys user-service signs tokens with, shared by its replicas. A key is
-- published while it is `next` (before it signs: verifiers learn it ahead),
-- `current` (it signs), and `retired` until every token it signed has expired.
CREATE TABLE signing_keys (
    kid TEXT PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('next', 'current', 'retired')),
    public_jwk TEXT NOT NULL,
    -- The PKCS#8 private key, AES-256-GCM sealed: nonce, then ciphertext and tag.
    private_sealed BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    activated_at BIGINT,
    retired_at BIGINT
);
CREATE UNIQUE INDEX one_current_key ON signing_keys (state) WHERE state IN ('next', 'current');
