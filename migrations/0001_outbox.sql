-- The outbox: one row per accepted message, one delivery row per destination.
-- Raw messages are not stored: ingest maps and hashes each message per
-- destination and keeps only the Meta payload, so no unhashed personal data
-- rests on disk beyond the client IP and user agent that Meta takes as-is.

CREATE TABLE events (
    id           INTEGER PRIMARY KEY,
    message_id   TEXT    NOT NULL UNIQUE,     -- the idempotency key
    type         TEXT    NOT NULL,            -- track, page, screen, identify, ...
    event_name   TEXT,                        -- the Meta event name, when mapped
    received_at  REAL    NOT NULL,            -- Unix seconds
    event_time   INTEGER NOT NULL,            -- Unix seconds, as sent to Meta
    traceparent  TEXT                         -- W3C context of the ingest span
);

CREATE TABLE deliveries (
    id              INTEGER PRIMARY KEY,
    event_id        INTEGER NOT NULL REFERENCES events(id) ON DELETE CASCADE,
    destination     TEXT    NOT NULL,
    state           TEXT    NOT NULL CHECK (state IN ('pending', 'delivered', 'skipped', 'dead')),
    payload         BLOB,                     -- the Meta server event, JSON bytes
    event_time      INTEGER NOT NULL,         -- copied from events for the expiry sweep
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL    NOT NULL,         -- when pending: due time (a claim moves it to the lease end)
    leased          INTEGER NOT NULL DEFAULT 0,  -- 1 while a drainer holds it
    reason          TEXT,                     -- why skipped or dead
    last_error      TEXT,                     -- JSON: code, subcode, message, fbtrace_id
    updated_at      REAL    NOT NULL,
    UNIQUE (event_id, destination)
);

-- Serves the claim: due pending rows of one destination, oldest first.
CREATE INDEX deliveries_due ON deliveries (destination, next_attempt_at) WHERE state = 'pending';
-- Serves retention purges and dead-letter listings.
CREATE INDEX deliveries_final ON deliveries (state, updated_at) WHERE state != 'pending';
-- Serves the expiry sweep.
CREATE INDEX deliveries_age ON deliveries (event_time) WHERE state = 'pending';
