-- Commands (their signed envelope, status and result) and the audit trail.

CREATE TABLE commands (
    machine     text COLLATE "C" NOT NULL,
    id          text COLLATE "C" NOT NULL,
    -- still to be handed out (or handed out again) to its machine
    waiting     boolean NOT NULL,
    status      text NOT NULL,
    expires_at  timestamptz NOT NULL,
    finished_at timestamptz,
    body        jsonb NOT NULL,
    PRIMARY KEY (machine, id)
);

-- A command is looked up by its id alone (status, results); ids are random, never reused.
CREATE INDEX commands_id ON commands (id);
CREATE INDEX commands_waiting ON commands (machine) WHERE waiting;

-- `machine` is empty for operator actions on no machine (tokens).
CREATE TABLE audit (
    machine text COLLATE "C" NOT NULL,
    n       bigserial NOT NULL,
    ts      timestamptz NOT NULL,
    body    jsonb NOT NULL,
    PRIMARY KEY (machine, n)
);

CREATE INDEX audit_ts ON audit (ts, n);
