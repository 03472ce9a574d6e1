-- Asynchronous report jobs in flight: the provider's job id for one request (identity,
-- resource, stream, range), kept until its result is read, so that a run after a restart
-- polls the same job instead of asking for another.
CREATE TABLE report_jobs (
    identity_id TEXT NOT NULL REFERENCES identities(id) ON DELETE CASCADE,
    resource    TEXT NOT NULL,
    stream      TEXT NOT NULL,
    range_start TEXT NOT NULL,
    range_end   TEXT NOT NULL,
    job_id      TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (identity_id, resource, stream, range_start, range_end)
);
