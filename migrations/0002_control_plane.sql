-- Secrets (metadata and source references only: values never reach the store), enrollment
-- tokens (SHA-256 only), audit events, and the store revision every change bumps. Same
-- conventions as 0001: JSON and RFC 3339 as text, flags 0/1, one schema for both backends.

CREATE TABLE secrets (
    name        TEXT PRIMARY KEY,
    version     BIGINT NOT NULL,
    deleted     BIGINT NOT NULL DEFAULT 0,
    definition  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);

CREATE TABLE secret_versions (
    name        TEXT NOT NULL,
    version     BIGINT NOT NULL,
    operation   TEXT NOT NULL,
    operator    TEXT NOT NULL,
    reason      TEXT NOT NULL,
    at          TEXT NOT NULL,
    definition  TEXT NOT NULL,
    PRIMARY KEY (name, version)
);

-- A workload presents the token as a proxy credential; only its SHA-256 is kept.
CREATE TABLE enrollment_tokens (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    sha256      TEXT NOT NULL UNIQUE,
    tags        TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    revoked_at  TEXT,
    revoked_by  TEXT
);

-- Every write to policies, secrets or tokens bumps this one row, so an instance can ask
-- "did anything change?" with one read.
CREATE TABLE store_revision (
    id          BIGINT PRIMARY KEY,
    revision    BIGINT NOT NULL
);
INSERT INTO store_revision (id, revision) VALUES (1, 0);

-- One row per decided request; `record` is the audit line as written to the sink.
CREATE TABLE audit_events (
    ts              TEXT NOT NULL,
    request_id      TEXT NOT NULL,
    decision        TEXT NOT NULL,
    policy          TEXT,
    policy_version  BIGINT,
    status          BIGINT,
    reason          TEXT,
    method          TEXT NOT NULL,
    scheme          TEXT NOT NULL,
    host            TEXT NOT NULL,
    port            BIGINT NOT NULL,
    path            TEXT NOT NULL,
    identity        TEXT,
    record          TEXT NOT NULL,
    PRIMARY KEY (ts, request_id)
);
CREATE INDEX audit_events_policy ON audit_events (policy, ts);
CREATE INDEX audit_events_host ON audit_events (host, ts);

CREATE TABLE audit_event_tags (
    tag         TEXT NOT NULL,
    ts          TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    PRIMARY KEY (tag, ts, request_id)
);
