-- (PostgreSQL) Refresh leases with fencing tokens, the durable refresh intent, and probe bookkeeping.

CREATE TABLE leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    token      BIGINT NOT NULL,
    expires_at TEXT NOT NULL
);

ALTER TABLE identities ADD COLUMN token_obtained_at TEXT;
ALTER TABLE identities ADD COLUMN refresh_in_flight_since TEXT;
ALTER TABLE identities ADD COLUMN last_probe_at TEXT;

-- One warning per identity, expiry instant and horizon.
CREATE TABLE expiry_warnings (
    identity_id  TEXT NOT NULL REFERENCES identities(id) ON DELETE CASCADE,
    expires_at   TEXT NOT NULL,
    horizon_secs BIGINT NOT NULL,
    warned_at    TEXT NOT NULL,
    PRIMARY KEY (identity_id, expires_at, horizon_secs)
);
