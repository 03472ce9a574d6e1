-- The kept window counts change once per statement and pipeline, not once per window: a
-- statement that writes a hundred windows of a pipeline updated its count row a hundred
-- times (a hundred dead row versions until vacuum), now once. The counts are the ones the
-- per-row trigger kept; only how they are kept changes.
DROP TRIGGER ledger_window_counts ON ledger;
DROP FUNCTION window_counts_follow();

-- Windows inserted: counted in.
CREATE FUNCTION window_counts_add() RETURNS trigger AS $$
BEGIN
    INSERT INTO window_counts (pipeline_id, state, n)
        SELECT pipeline_id, state, COUNT(*) FROM new_rows GROUP BY pipeline_id, state
        ON CONFLICT (pipeline_id, state) DO UPDATE SET n = window_counts.n + excluded.n;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

-- Windows changed (also by an upsert): their new states counted in, their old ones out; a
-- pipeline and state whose count does not move is not written.
CREATE FUNCTION window_counts_move() RETURNS trigger AS $$
BEGIN
    INSERT INTO window_counts (pipeline_id, state, n)
        SELECT pipeline_id, state, SUM(d) FROM (
            SELECT pipeline_id, state, 1 AS d FROM new_rows
            UNION ALL
            SELECT pipeline_id, state, -1 AS d FROM old_rows
        ) AS changes
        GROUP BY pipeline_id, state
        HAVING SUM(d) <> 0
        ON CONFLICT (pipeline_id, state) DO UPDATE SET n = window_counts.n + excluded.n;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

-- Windows deleted: counted out where their pipeline's counts still exist (deleting a
-- pipeline deletes its counts with it).
CREATE FUNCTION window_counts_remove() RETURNS trigger AS $$
BEGIN
    UPDATE window_counts AS w SET n = w.n - gone.n
        FROM (SELECT pipeline_id, state, COUNT(*) AS n FROM old_rows GROUP BY pipeline_id, state) AS gone
        WHERE w.pipeline_id = gone.pipeline_id AND w.state = gone.state;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER ledger_window_counts_insert AFTER INSERT ON ledger
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION window_counts_add();
CREATE TRIGGER ledger_window_counts_update AFTER UPDATE ON ledger
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION window_counts_move();
CREATE TRIGGER ledger_window_counts_delete AFTER DELETE ON ledger
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION window_counts_remove();
