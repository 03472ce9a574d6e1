-- One fingerprint per master key version (HKDF of the key; it reveals nothing of it): a key
-- given for a version that does not match its fingerprint is refused at start, before
-- anything is sealed with it.
CREATE TABLE key_checks (
    version     BIGINT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
