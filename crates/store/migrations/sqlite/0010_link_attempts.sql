-- Wrong keys or passwords entered through a reauthorize link: after a few the link is
-- locked (each attempt is a login at the provider, and repeated ones can lock the account).
ALTER TABLE reauth_links ADD COLUMN failed_attempts INTEGER NOT NULL DEFAULT 0;
