-- pecora registry, version 1 (SQLite).
--
-- Chained, append-only (tamper-evident): registry_events, with registry_chain_head
-- (the last seq and hash, updated with every append) and registry_checkpoints
-- (signed chain heads). Operational tables, which change by design and are not chained:
-- transaction_state, recipient_state, outbox_messages, quarantine_entries, unique_counter.

CREATE TABLE registry_events (
    seq             INTEGER PRIMARY KEY,
    recorded_at     TEXT NOT NULL,
    event_time      TEXT NOT NULL,
    event_zone      TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    pec_id          TEXT,
    client_msgid    TEXT,
    sender          TEXT,
    recipients      TEXT NOT NULL,
    subject         TEXT,
    generated_ids   TEXT NOT NULL,
    provider        TEXT,
    queue_id        TEXT,
    host            TEXT NOT NULL,
    details         TEXT NOT NULL,
    idempotency_key TEXT UNIQUE,
    prev_hash       TEXT NOT NULL,
    hash            TEXT NOT NULL
);
CREATE INDEX registry_events_pec_id ON registry_events (pec_id);
CREATE INDEX registry_events_client_msgid ON registry_events (client_msgid);
CREATE INDEX registry_events_sender ON registry_events (lower(sender));
CREATE INDEX registry_events_queue_id ON registry_events (queue_id);
CREATE INDEX registry_events_event_time ON registry_events (event_time);
CREATE INDEX registry_events_recorded_at ON registry_events (recorded_at);

CREATE TABLE registry_chain_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO registry_chain_head (id, seq, hash)
    VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

CREATE TABLE registry_checkpoints (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    seq        INTEGER NOT NULL,
    head_hash  TEXT NOT NULL,
    created_at TEXT NOT NULL,
    host       TEXT NOT NULL,
    content    TEXT NOT NULL,
    cms        BLOB NOT NULL
);
CREATE INDEX registry_checkpoints_seq ON registry_checkpoints (seq);

CREATE TABLE transaction_state (
    pec_id           TEXT PRIMARY KEY,
    client_msgid     TEXT,
    sender           TEXT NOT NULL,
    subject          TEXT,
    queue_id         TEXT,
    event_time       TEXT NOT NULL,
    event_zone       TEXT NOT NULL,
    accepted_at      TEXT,
    envelope_sent_at TEXT,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL
);
CREATE INDEX transaction_state_sent ON transaction_state (envelope_sent_at);

CREATE TABLE recipient_state (
    pec_id             TEXT NOT NULL,
    recipient          TEXT NOT NULL,
    recipient_type     TEXT NOT NULL,
    taken_in_charge_at TEXT,
    delivered_at       TEXT,
    failed_at          TEXT,
    failure            TEXT,
    notice_12h_at      TEXT,
    notice_24h_at      TEXT,
    PRIMARY KEY (pec_id, recipient)
);

CREATE TABLE outbox_messages (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    event_seq       INTEGER NOT NULL,
    kind            TEXT NOT NULL,
    mail_from       TEXT NOT NULL,
    rcpts           TEXT NOT NULL,
    message         BLOB NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('held', 'pending', 'sent', 'failed', 'cancelled')),
    queue_id        TEXT,
    attempts        INTEGER NOT NULL,
    next_attempt_at TEXT NOT NULL,
    lease_owner     TEXT,
    lease_until     TEXT,
    last_error      TEXT,
    created_at      TEXT NOT NULL,
    sent_at         TEXT
);
CREATE INDEX outbox_messages_due ON outbox_messages (status, next_attempt_at);
CREATE INDEX outbox_messages_queue_id ON outbox_messages (queue_id);
CREATE INDEX outbox_messages_event_seq ON outbox_messages (event_seq);

CREATE TABLE quarantine_entries (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    pec_id     TEXT,
    reason     TEXT NOT NULL,
    path       TEXT,
    content    BLOB,
    created_at TEXT NOT NULL
);
CREATE INDEX quarantine_entries_created_at ON quarantine_entries (created_at);

CREATE TABLE unique_counter (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    value INTEGER NOT NULL
);
INSERT INTO unique_counter (id, value) VALUES (1, 0);
