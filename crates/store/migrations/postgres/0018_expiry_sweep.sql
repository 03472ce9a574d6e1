-- Whether an identity's credential renews its access token without a person (1), does not
-- (0), or is not known yet (NULL): the expiry sweep reads the identities with an expiry
-- inside a warning horizon that a person must renew, by index, not every identity.
ALTER TABLE identities ADD COLUMN access_renews INTEGER;
CREATE INDEX identities_by_refresh_expiry ON identities (refresh_expires_at);
CREATE INDEX identities_by_authorization_expiry ON identities (authorization_expires_at);
