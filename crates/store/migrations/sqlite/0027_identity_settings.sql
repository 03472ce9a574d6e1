-- An identity's own region and per-identity setting values at its provider (JSON, not
-- secret); NULL: none, the provider as the installation configured it.
ALTER TABLE identities ADD COLUMN settings TEXT;
