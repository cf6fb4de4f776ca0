-- Policies and their versions. One schema for SQLite (embedded) and PostgreSQL (fleets):
-- definitions are JSON text, times RFC 3339 text, flags 0/1, so both read the same rows.

-- The live definition of each policy name.
CREATE TABLE policies (
    name        TEXT PRIMARY KEY,
    version     BIGINT NOT NULL,
    deleted     BIGINT NOT NULL DEFAULT 0,
    definition  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);

-- Every change, append-only: a rollback is a new row equal to an earlier definition.
CREATE TABLE policy_versions (
    name        TEXT NOT NULL,
    version     BIGINT NOT NULL,
    operation   TEXT NOT NULL,
    operator    TEXT NOT NULL,
    reason      TEXT NOT NULL,
    at          TEXT NOT NULL,
    definition  TEXT NOT NULL,
    PRIMARY KEY (name, version)
);
