-- user_data coverage of each delivery's payload, as a bitmask of the fields
-- listed in sidecar.telemetry.COVERAGE_FIELDS (bit 0 = em, 1 = ph, ...).
-- Ingest computes it from the payload it already holds as a dict, so the
-- drainer counts coverage without parsing what it delivers. Rows written
-- before this migration count as carrying no field.

ALTER TABLE deliveries ADD COLUMN coverage INTEGER NOT NULL DEFAULT 0;
