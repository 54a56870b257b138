-- The mail outbox (mails wait here until the mail server accepted them) and when each
-- network's last status report ended.

CREATE TABLE mail_outbox (
    id         bigserial PRIMARY KEY,
    message_id text NOT NULL,
    -- set aside: refused for good by the server, or pushed out of a full queue
    dead       boolean NOT NULL DEFAULT false,
    queued_at  timestamptz NOT NULL DEFAULT now(),
    body       jsonb NOT NULL
);

CREATE INDEX mail_outbox_waiting ON mail_outbox (id) WHERE NOT dead;

CREATE TABLE report_runs (
    network text COLLATE "C" NOT NULL PRIMARY KEY,
    until   timestamptz NOT NULL
);
