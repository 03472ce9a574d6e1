-- The audit log: every change of trust, append-only, each row chained to the one before by
-- its hash (seq is assigned by the writer as the last seq + 1 under an advisory lock, so a
-- gap is visible).
CREATE TABLE audit_log (
    seq         BIGINT PRIMARY KEY,
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

CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only';
END;
$$;

CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
