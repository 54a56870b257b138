-- Enrollment keys, tokens, revocations and mail-command grants. Records are kept as JSON (the
-- same documents the sled engine keeps), with the columns queries filter on beside them.
-- Every primary key starts with the machine where there is one (Citus: distribute by machine).

CREATE TABLE machine_keys (
    machine text COLLATE "C" NOT NULL PRIMARY KEY,
    network text COLLATE "C" NOT NULL,
    role    text NOT NULL,
    body    jsonb NOT NULL
);

CREATE INDEX machine_keys_network ON machine_keys (network, role);

-- A token is about a machine that does not exist yet: keyed by the hash of its secret.
CREATE TABLE enrollment_tokens (
    hash text COLLATE "C" NOT NULL PRIMARY KEY,
    body jsonb NOT NULL
);

CREATE TABLE revoked_keys (
    machine    text COLLATE "C" NOT NULL PRIMARY KEY,
    revoked_at timestamptz NOT NULL,
    body       jsonb NOT NULL
);

-- `machine` is the connector the grant is for.
CREATE TABLE mail_grants (
    machine text COLLATE "C" NOT NULL PRIMARY KEY,
    body    jsonb NOT NULL
);
