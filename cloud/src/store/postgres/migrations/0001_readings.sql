-- Readings, latest values, hourly roll-ups, machines, unattached hubs, relay quarantine counts.
-- Every primary key starts with the machine, so each table can be distributed by it (Citus).
-- Key columns collate "C": byte order, as the sled engine lists them, and cheaper comparisons.

-- Raw readings, one range partition per UTC day (created ahead by the cloud, dropped whole by
-- retention once folded into `hourly`). A partitioned table's key must hold the partition
-- column, so `ts` is in it; ingest keeps (machine, sensor, seq) unique across days itself.
CREATE TABLE raw (
    machine text COLLATE "C" NOT NULL,
    sensor  text COLLATE "C" NOT NULL,
    seq     bigint NOT NULL,
    ts      timestamptz NOT NULL,
    -- the value as a number when it has one (what roll-ups are made of), else NULL
    num     double precision,
    -- value, state, unit and message as the hub sent them
    body    jsonb NOT NULL,
    PRIMARY KEY (machine, sensor, seq, ts)
) PARTITION BY RANGE (ts);

CREATE INDEX raw_machine_ts ON raw (machine, ts);

CREATE TABLE latest (
    machine text COLLATE "C" NOT NULL,
    sensor  text COLLATE "C" NOT NULL,
    ts      timestamptz NOT NULL,
    body    jsonb NOT NULL,
    PRIMARY KEY (machine, sensor)
);

CREATE TABLE hourly (
    machine text COLLATE "C" NOT NULL,
    sensor  text COLLATE "C" NOT NULL,
    hour    timestamptz NOT NULL,
    min     double precision NOT NULL,
    max     double precision NOT NULL,
    sum     double precision NOT NULL,
    count   bigint NOT NULL,
    PRIMARY KEY (machine, sensor, hour)
);

CREATE INDEX hourly_hour ON hourly (hour);

CREATE TABLE machines (
    machine text COLLATE "C" NOT NULL PRIMARY KEY,
    info    jsonb NOT NULL
);

CREATE TABLE unattached (
    machine text COLLATE "C" NOT NULL PRIMARY KEY,
    seen_at timestamptz NOT NULL,
    info    jsonb NOT NULL
);

-- What each connector put aside of a hub's data (its latest total): `machine` is the hub.
CREATE TABLE relay_quarantine (
    machine   text COLLATE "C" NOT NULL,
    connector text COLLATE "C" NOT NULL,
    n         bigint NOT NULL,
    PRIMARY KEY (machine, connector)
);
