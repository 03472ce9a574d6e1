-- Provider outages being reported (one notice per outage).
CREATE TABLE provider_outages (
    provider TEXT PRIMARY KEY,
    since    TEXT NOT NULL
);
