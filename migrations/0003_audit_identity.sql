-- Audit search by the workload identity's name (`GET /v1/audit?identity=`).
CREATE INDEX audit_events_identity ON audit_events (identity, ts);
