-- Operator sessions ended by signing out: their cookie is refused until it would have
-- expired anyway (then the row goes).
CREATE TABLE ended_sessions (
    nonce      TEXT PRIMARY KEY,
    expires_at TEXT NOT NULL
);
