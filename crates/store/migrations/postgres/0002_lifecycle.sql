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
