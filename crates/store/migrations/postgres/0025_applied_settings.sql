-- What part of the configuration the stored state was last computed with, by name: an
-- instance that starts with the same reminder schedule as the last one does not look at
-- every open incident again (one row read instead of every open incident).
CREATE TABLE applied_settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
