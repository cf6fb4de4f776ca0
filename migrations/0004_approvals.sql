-- Approvals: a request a policy (`action: approve`) sent to a person, and what they
-- decided. An approved one names the grant (a versioned policy) it created. Same
-- conventions as 0001: JSON and RFC 3339 (UTC) as text.
CREATE TABLE approvals (
    id                TEXT PRIMARY KEY,
    state             TEXT NOT NULL,
    -- What identifies "the same request" while it waits: identity, policy and scope.
    scope_key         TEXT NOT NULL,
    identity          TEXT,
    policy            TEXT NOT NULL,
    request           TEXT NOT NULL,
    request_id        TEXT NOT NULL,
    requested_at      TEXT NOT NULL,
    -- A pending approval nobody decides lapses at this time.
    lapses_at         TEXT NOT NULL,
    asked             BIGINT NOT NULL,
    decided_at        TEXT,
    decided_by        TEXT,
    note              TEXT,
    grant_policy      TEXT,
    grant_expires_at  TEXT
);
CREATE INDEX approvals_scope ON approvals (scope_key, state);
CREATE INDEX approvals_identity ON approvals (identity, state);
CREATE INDEX approvals_requested ON approvals (requested_at);
