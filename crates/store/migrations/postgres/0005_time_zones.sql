-- The time zone whose calendar days a pipeline's windows follow.
ALTER TABLE pipelines ADD COLUMN time_zone TEXT NOT NULL DEFAULT 'UTC';
