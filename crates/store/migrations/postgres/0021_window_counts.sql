-- How many windows each pipeline has in each state, kept by the database itself with every
-- change of the ledger (whatever writes it): /metrics and the listings read these counts,
-- O(pipelines), instead of counting the whole ledger on every request.
-- Instances still running write the ledger meanwhile: it is locked against writes until
-- the counts and the trigger are in place together.
LOCK TABLE ledger IN SHARE ROW EXCLUSIVE MODE;

CREATE TABLE window_counts (
    pipeline_id TEXT NOT NULL REFERENCES pipelines(id) ON DELETE CASCADE,
    state       TEXT NOT NULL,
    n           BIGINT NOT NULL,
    PRIMARY KEY (pipeline_id, state)
);


CREATE FUNCTION window_counts_follow() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.pipeline_id = NEW.pipeline_id AND OLD.state = NEW.state THEN
        RETURN NULL;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        UPDATE window_counts SET n = n - 1
            WHERE pipeline_id = OLD.pipeline_id AND state = OLD.state;
    END IF;
    IF TG_OP IN ('UPDATE', 'INSERT') THEN
        INSERT INTO window_counts (pipeline_id, state, n) VALUES (NEW.pipeline_id, NEW.state, 1)
            ON CONFLICT (pipeline_id, state) DO UPDATE SET n = window_counts.n + 1;
    END IF;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER ledger_window_counts AFTER INSERT OR UPDATE OR DELETE ON ledger
    FOR EACH ROW EXECUTE FUNCTION window_counts_follow();

INSERT INTO window_counts (pipeline_id, state, n)
    SELECT pipeline_id, state, COUNT(*) FROM ledger GROUP BY pipeline_id, state;

-- A pipeline's latest window in a state (the listings' "last loaded") is read from this
-- index, one entry per pipeline, not by reading every window of the pipeline.
CREATE INDEX ledger_by_state ON ledger (pipeline_id, state, window_start);
