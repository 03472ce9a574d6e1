-- Incidents recover before they close: the back-fill runs while recovering_since is set, and
-- the recovery notice is written in the transaction that closes the incident. A failure while
-- recovering or soon after the close continues the incident (reopened counts how often).
-- origin names the report request that failed (pipeline, resource, stream): only that request
-- succeeding again, not a who-am-I probe, is evidence that the incident is over.
ALTER TABLE incidents ADD COLUMN origin TEXT;
ALTER TABLE incidents ADD COLUMN recovering_since TEXT;
ALTER TABLE incidents ADD COLUMN reopened BIGINT NOT NULL DEFAULT 0;
CREATE INDEX incidents_recovering ON incidents (recovering_since) WHERE recovering_since IS NOT NULL AND closed_at IS NULL;
CREATE INDEX incidents_by_identity ON incidents (identity_id, opened_at);
