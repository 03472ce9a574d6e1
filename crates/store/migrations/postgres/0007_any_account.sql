-- An identity that may be reconnected with another upstream account (after the person confirms).
ALTER TABLE identities ADD COLUMN allow_any_account INTEGER NOT NULL DEFAULT 0;
