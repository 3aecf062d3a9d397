-- Payloads move to a table of their own, one row per pending (or dead)
-- delivery. A claim and a retry rewrite the small deliveries row only,
-- instead of copying a ~1.5 KB payload with it on every state change (a
-- third of the writer's CPU per delivered event, docs/performance.md), and
-- delivery deletes the payload row outright. deliveries.payload stays as an
-- always-NULL column: dropping it would rewrite the table.
-- Deleting a delivery row (retention, purging dead letters) deletes its
-- payload with it.

CREATE TABLE payloads (
    delivery_id INTEGER PRIMARY KEY REFERENCES deliveries(id) ON DELETE CASCADE,
    body        BLOB    NOT NULL              -- the Meta server event, JSON bytes
);
INSERT INTO payloads (delivery_id, body) SELECT id, payload FROM deliveries WHERE payload IS NOT NULL;
UPDATE deliveries SET payload = NULL WHERE payload IS NOT NULL;
