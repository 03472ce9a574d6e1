-- How many windows each pipeline has in each state, kept by the database itself with every
-- change of the ledger (whatever writes it): /metrics and the listings read these counts,
-- O(pipelines), instead of counting the whole ledger on every request.
CREATE TABLE window_counts (
    pipeline_id TEXT NOT NULL REFERENCES pipelines(id) ON DELETE CASCADE,
    state       TEXT NOT NULL,
    n           INTEGER NOT NULL,
    PRIMARY KEY (pipeline_id, state)
);

INSERT INTO window_counts (pipeline_id, state, n)
    SELECT pipeline_id, state, COUNT(*) FROM ledger GROUP BY pipeline_id, state;

CREATE TRIGGER ledger_window_counts_insert AFTER INSERT ON ledger
BEGIN
    INSERT INTO window_counts (pipeline_id, state, n) VALUES (NEW.pipeline_id, NEW.state, 1)
        ON CONFLICT (pipeline_id, state) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER ledger_window_counts_update AFTER UPDATE ON ledger
    WHEN OLD.pipeline_id <> NEW.pipeline_id OR OLD.state <> NEW.state
BEGIN
    UPDATE window_counts SET n = n - 1
        WHERE pipeline_id = OLD.pipeline_id AND state = OLD.state;
    INSERT INTO window_counts (pipeline_id, state, n) VALUES (NEW.pipeline_id, NEW.state, 1)
        ON CONFLICT (pipeline_id, state) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER ledger_window_counts_delete AFTER DELETE ON ledger
BEGIN
    UPDATE window_counts SET n = n - 1
        WHERE pipeline_id = OLD.pipeline_id AND state = OLD.state;
END;

-- A pipeline's latest window in a state (the listings' "last loaded") is read from this
-- index, one entry per pipeline, not by reading every window of the pipeline.
CREATE INDEX ledger_by_state ON ledger (pipeline_id, state, window_start);
