-- An execution's created_at is the moment its row is written, not the start of the worker's
-- transaction: event-to-execution latency is measured against it.
ALTER TABLE executions.executions ALTER COLUMN created_at SET DEFAULT clock_timestamp();
