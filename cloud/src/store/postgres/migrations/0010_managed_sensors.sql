-- Sensors managed from the cloud: each machine's own sensors, templates, which templates apply
-- to which machine, the signed document of every version, and the commands that carried them.
-- Keys start with the machine where there is one (Citus). Passwords in these JSON bodies are
-- sealed (to the machine's key, or to the cloud's key for templates), never plaintext.

CREATE TABLE managed_sensors (
    machine text COLLATE "C" PRIMARY KEY,
    -- the machine's own [[sensor]] tables, as JSON
    sensors jsonb NOT NULL
);

CREATE TABLE managed_templates (
    name text COLLATE "C" PRIMARY KEY,
    body jsonb NOT NULL
);

CREATE TABLE managed_assignments (
    machine  text COLLATE "C" NOT NULL,
    template text COLLATE "C" NOT NULL,
    -- the order templates apply in, from 0
    position int NOT NULL,
    PRIMARY KEY (machine, template)
);

CREATE INDEX managed_assignments_template ON managed_assignments (template);

CREATE TABLE managed_versions (
    machine text COLLATE "C" NOT NULL,
    version bigint NOT NULL,
    at      timestamptz NOT NULL,
    body    jsonb NOT NULL,
    PRIMARY KEY (machine, version)
);

CREATE TABLE managed_deliveries (
    machine text COLLATE "C" NOT NULL,
    version bigint NOT NULL,
    command text COLLATE "C" NOT NULL,
    at      timestamptz NOT NULL,
    PRIMARY KEY (machine, version, command)
);
