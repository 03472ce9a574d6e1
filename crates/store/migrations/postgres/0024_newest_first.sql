-- Incidents and messages are listed newest first a page at a time (after the last row
-- shown, by when and id): by these indexes, not by sorting every row ever recorded.
CREATE INDEX incidents_newest ON incidents (opened_at, id);
CREATE INDEX notifications_newest ON notifications (created_at, id);
