-- The store revision at which each live policy or secret row last changed, so an instance
-- that holds the store at revision R reads only the rows changed since (docs/store.md).
-- Rows written before this migration carry 0 until their next change; an instance reads
-- everything on start and at each resync, so nothing depends on their value.
ALTER TABLE policies ADD COLUMN revision BIGINT NOT NULL DEFAULT 0;
ALTER TABLE secrets ADD COLUMN revision BIGINT NOT NULL DEFAULT 0;
CREATE INDEX policies_by_revision ON policies (revision);
CREATE INDEX secrets_by_revision ON secrets (revision);
