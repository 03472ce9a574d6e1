-- Identities due for a probe are found by when they were last probed (or last used by a
-- run that got through): a tick reads those near due, not every identity.
CREATE INDEX identities_by_last_probe ON identities (last_probe_at);
