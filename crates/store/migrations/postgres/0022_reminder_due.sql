-- Reminders are found by when the next one is due, not by reading every incident: the
-- number of the last reminder queued for an incident, and when the reminder sweep should
-- look at it next (an incident is looked at when it opens, then when its next reminder is
-- due; each look writes the next; NULL, as written by an older version: look now).
ALTER TABLE incidents ADD COLUMN reminded INTEGER NOT NULL DEFAULT 0;
ALTER TABLE incidents ADD COLUMN next_reminder_at TEXT;
UPDATE incidents SET next_reminder_at = opened_at;
CREATE INDEX incidents_reminder_due ON incidents (next_reminder_at)
    WHERE closed_at IS NULL AND recovering_since IS NULL;
-- An incident's messages are read by incident (its page, its timeline).
CREATE INDEX notifications_by_incident ON notifications (incident_id);
