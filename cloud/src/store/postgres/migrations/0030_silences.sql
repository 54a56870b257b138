-- Acknowledgements of sensor problems and maintenance windows (they silence alert mail).

CREATE TABLE acks (
    machine    text COLLATE "C" NOT NULL,
    sensor     text COLLATE "C" NOT NULL,
    -- when the acknowledged reading was taken: a change after it ends the acknowledgement
    reading_ts timestamptz NOT NULL,
    body       jsonb NOT NULL,
    PRIMARY KEY (machine, sensor)
);

CREATE TABLE maintenance (
    id   text COLLATE "C" PRIMARY KEY,
    body jsonb NOT NULL
);
