-- Audit entries written with their change and not chained yet: they are moved to audit_log
-- in batches, in the order they are found, each chained to the one before.
CREATE TABLE audit_pending (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          TEXT NOT NULL,
    actor_kind  TEXT NOT NULL,
    actor       TEXT NOT NULL,
    source      TEXT,
    action      TEXT NOT NULL,
    identity_id TEXT,
    subject     TEXT NOT NULL,
    detail      TEXT NOT NULL
);
