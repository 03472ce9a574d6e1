-- The audit log: every change of trust, append-only, each row chained to the one before by
-- its hash (seq is assigned by the writer as the last seq + 1, so a gap is visible).
CREATE TABLE audit_log (
    seq         INTEGER PRIMARY KEY,
    at          TEXT NOT NULL,
    actor_kind  TEXT NOT NULL,
    actor       TEXT NOT NULL,
    source      TEXT,
    action      TEXT NOT NULL,
    identity_id TEXT,
    subject     TEXT NOT NULL,
    detail      TEXT NOT NULL,
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL
);
CREATE INDEX audit_log_identity ON audit_log (identity_id, seq);
CREATE INDEX audit_log_at ON audit_log (at);

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;

CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
