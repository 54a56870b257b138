-- People: users, sessions, customers, API tokens. Each record is the same JSON document the sled
-- engine keeps; the columns beside it are what queries select or delete by. No secret is stored
-- in clear: users hold argon2id hashes, sessions are keyed by the SHA-256 of the cookie, tokens
-- hold the SHA-256 of their secret.
CREATE TABLE people_users (
    name text PRIMARY KEY,
    doc jsonb NOT NULL
);

CREATE TABLE people_sessions (
    hash text PRIMARY KEY,
    username text NOT NULL,
    created_at timestamptz NOT NULL,
    last_seen timestamptz NOT NULL,
    doc jsonb NOT NULL
);
CREATE INDEX people_sessions_user ON people_sessions (username);

CREATE TABLE people_customers (
    id text PRIMARY KEY,
    doc jsonb NOT NULL
);

CREATE TABLE people_tokens (
    id text PRIMARY KEY,
    username text NOT NULL,
    expires_at timestamptz NOT NULL,
    doc jsonb NOT NULL
);
CREATE INDEX people_tokens_user ON people_tokens (username);
