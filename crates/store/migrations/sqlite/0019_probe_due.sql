-- When an identity's next probe is due (its provider's interval, less its jitter, after
-- the last probe), written with each probe: a tick reads the identities due, not those
-- "near due". NULL: not known yet, read at the next tick.
ALTER TABLE identities ADD COLUMN probe_due_at TEXT;
CREATE INDEX identities_by_probe_due ON identities (probe_due_at);
DROP INDEX identities_by_last_probe;
