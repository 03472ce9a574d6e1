-- Work is claimed, not looped: a pipeline is due at `due_at` (found by index) and run by
-- the instance that claimed it until `claim_until`; `claim_token` grows with every claim
-- and fences the claim's writes. A notification is claimed the same way while it is
-- delivered: its `next_attempt_at` moves past the claim, so no other instance picks it up.
ALTER TABLE pipelines ADD COLUMN due_at TEXT NOT NULL DEFAULT '1970-01-01T00:00:00.000000Z';
ALTER TABLE pipelines ADD COLUMN claim_holder TEXT;
ALTER TABLE pipelines ADD COLUMN claim_token BIGINT NOT NULL DEFAULT 0;
ALTER TABLE pipelines ADD COLUMN claim_until TEXT;
CREATE INDEX pipelines_due ON pipelines (due_at);
ALTER TABLE notifications ADD COLUMN claim_holder TEXT;
ALTER TABLE notifications ADD COLUMN claim_token BIGINT NOT NULL DEFAULT 0;
