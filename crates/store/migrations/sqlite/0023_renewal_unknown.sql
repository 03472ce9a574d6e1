-- The refresh sweep reads an identity without a known access-token expiry only while its
-- credential may renew: once to learn whether it does (not known yet), then, when it does,
-- once it was obtained long enough ago. Keys, passwords and tokens that cannot be renewed
-- are learned once and not read again by every tick.
CREATE INDEX identities_renewal_unlearned ON identities (access_renews)
    WHERE access_expires_at IS NULL AND access_renews IS NULL;
CREATE INDEX identities_renewal_unknown
    ON identities ((COALESCE(token_obtained_at, granted_at, created_at)))
    WHERE access_expires_at IS NULL AND access_renews = 1;
