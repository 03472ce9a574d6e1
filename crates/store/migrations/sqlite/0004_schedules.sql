-- Per-pipeline schedules (cron) and the last run.
ALTER TABLE pipelines ADD COLUMN schedule TEXT;
ALTER TABLE pipelines ADD COLUMN last_run_at TEXT;
