-- The refresh sweep reads an identity without a known access-token expiry only while its
-- credential may renew (not yet known, or known to renew): keys, passwords and tokens
-- that cannot be renewed are learned once and not read again by every tick.
CREATE INDEX identities_renewal_unknown
    ON identities ((COALESCE(token_obtained_at, granted_at, created_at)))
    WHERE access_expires_at IS NULL AND (access_renews IS NULL OR access_renews = 1);
