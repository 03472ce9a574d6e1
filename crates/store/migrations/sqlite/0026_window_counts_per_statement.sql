-- PostgreSQL's kept window counts change once per statement from this version on. SQLite
-- has per-row triggers only, and one writer: its triggers (0021) stay as they are.
SELECT 1;
