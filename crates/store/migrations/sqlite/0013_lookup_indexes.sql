-- The pipelines of an identity are looked up for every probe, expiry warning and incident:
-- by index, not by reading every pipeline.
CREATE INDEX pipelines_by_source_identity ON pipelines (source_identity_id);
CREATE INDEX pipelines_by_destination_identity ON pipelines (destination_identity_id);
