-- deliveries_final gains the destination, between the state and the time:
-- the per-destination counts behind metrics and /v1/status become one pass
-- over this index in its own order (no table rows read, no sort), and the
-- retention purge and dead-letter listings seek one destination's rows by
-- age. Rebuilding the index reads every final row once, at the first start
-- after the upgrade.

DROP INDEX deliveries_final;
CREATE INDEX deliveries_final ON deliveries (state, destination, updated_at) WHERE state != 'pending';
