-- Whether an identity's credential renews its access token without a person (1), does not
-- (0), or is not known yet (NULL): the expiry sweep reads the identities with an expiry
-- inside a warning horizon that a person may have to renew, by index, not every identity
-- (an access token's expiry only where it does not renew by itself).
ALTER TABLE identities ADD COLUMN access_renews INTEGER;
CREATE INDEX identities_by_refresh_expiry ON identities (refresh_expires_at);
CREATE INDEX identities_by_authorization_expiry ON identities (authorization_expires_at);
CREATE INDEX identities_by_unrenewed_access_expiry ON identities (access_expires_at)
    WHERE access_renews IS NULL OR access_renews = 0;
