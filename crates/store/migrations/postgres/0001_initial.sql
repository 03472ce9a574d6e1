-- gapless state, PostgreSQL dialect. Timestamps are RFC 3339 UTC text with microseconds, so text
-- order is time order. JSON documents are text.

CREATE TABLE identities (
    id                       TEXT PRIMARY KEY,
    provider                 TEXT NOT NULL,
    label                    TEXT NOT NULL UNIQUE,
    upstream_account_id      TEXT,
    upstream_account_name    TEXT,
    scopes                   TEXT NOT NULL,
    owners                   TEXT NOT NULL,
    granted_at               TEXT,
    access_expires_at        TEXT,
    refresh_expires_at       TEXT,
    authorization_expires_at TEXT,
    health_state             TEXT NOT NULL,
    health                   TEXT NOT NULL,
    credential_key_version   BIGINT NOT NULL,
    credential               BYTEA NOT NULL,
    credential_generation    BIGINT NOT NULL,
    created_at               TEXT NOT NULL,
    updated_at               TEXT NOT NULL
);

CREATE TABLE health_transitions (
    id          BIGSERIAL PRIMARY KEY,
    identity_id TEXT NOT NULL REFERENCES identities(id) ON DELETE CASCADE,
    at          TEXT NOT NULL,
    from_state  TEXT NOT NULL,
    to_state    TEXT NOT NULL,
    reason      TEXT NOT NULL
);
CREATE INDEX health_transitions_by_identity ON health_transitions(identity_id, at);

CREATE TABLE pipelines (
    id                      TEXT PRIMARY KEY,
    name                    TEXT NOT NULL UNIQUE,
    source_identity_id      TEXT NOT NULL REFERENCES identities(id),
    source_resource         TEXT NOT NULL,
    streams                 TEXT NOT NULL,
    destination_kind        TEXT NOT NULL,
    destination_target      TEXT NOT NULL,
    destination_identity_id TEXT REFERENCES identities(id),
    window_seconds          BIGINT NOT NULL,
    settle_windows          BIGINT NOT NULL,
    start_at                TEXT NOT NULL,
    state                   TEXT NOT NULL,
    state_detail            TEXT NOT NULL,
    created_at              TEXT NOT NULL,
    updated_at              TEXT NOT NULL
);

CREATE TABLE ledger (
    pipeline_id  TEXT NOT NULL REFERENCES pipelines(id) ON DELETE CASCADE,
    stream       TEXT NOT NULL,
    window_start TEXT NOT NULL,
    window_end   TEXT NOT NULL,
    state        TEXT NOT NULL,
    detail       TEXT NOT NULL,
    attempts     BIGINT NOT NULL,
    updated_at   TEXT NOT NULL,
    PRIMARY KEY (pipeline_id, stream, window_start)
);

CREATE TABLE ledger_history (
    id           BIGSERIAL PRIMARY KEY,
    pipeline_id  TEXT NOT NULL REFERENCES pipelines(id) ON DELETE CASCADE,
    stream       TEXT NOT NULL,
    window_start TEXT NOT NULL,
    at           TEXT NOT NULL,
    state        TEXT NOT NULL,
    detail       TEXT NOT NULL
);
CREATE INDEX ledger_history_by_window ON ledger_history(pipeline_id, stream, window_start);

CREATE TABLE incidents (
    id                 TEXT PRIMARY KEY,
    identity_id        TEXT NOT NULL REFERENCES identities(id) ON DELETE CASCADE,
    failure            TEXT NOT NULL,
    opened_at          TEXT NOT NULL,
    closed_at          TEXT,
    affected_pipelines TEXT NOT NULL
);
-- Invariant: one broken identity, one open incident.
CREATE UNIQUE INDEX incidents_one_open_per_identity ON incidents(identity_id) WHERE closed_at IS NULL;

CREATE TABLE notifications (
    id              TEXT PRIMARY KEY,
    incident_id     TEXT REFERENCES incidents(id) ON DELETE SET NULL,
    kind            TEXT NOT NULL,
    dedupe_key      TEXT NOT NULL UNIQUE,
    channel         TEXT NOT NULL,
    recipients      TEXT NOT NULL,
    subject         TEXT NOT NULL,
    body_text       TEXT NOT NULL,
    body_html       TEXT NOT NULL,
    message_id      TEXT NOT NULL,
    state           TEXT NOT NULL,
    attempts        BIGINT NOT NULL,
    last_error      TEXT,
    created_at      TEXT NOT NULL,
    next_attempt_at TEXT NOT NULL,
    delivered_at    TEXT
);
CREATE INDEX notifications_due ON notifications(state, next_attempt_at);
