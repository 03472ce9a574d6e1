-- The refresh sweep reads the identities whose access token may be near its expiry (or
-- has none known, or has a refresh in flight), and the outage sweep reads the degraded
-- identities and counts the usable ones of a failing provider: by index, not by reading
-- every identity.
CREATE INDEX identities_by_access_expiry ON identities (access_expires_at);
CREATE INDEX identities_refreshing ON identities (refresh_in_flight_since)
    WHERE refresh_in_flight_since IS NOT NULL;
CREATE INDEX identities_by_health_provider ON identities (health_state, provider);
