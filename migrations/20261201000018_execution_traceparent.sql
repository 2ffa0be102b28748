-- The W3C traceparent of each execution's span (opened when the event that started it was
-- ingested): every run of the execution, the first and those after an approval, is a child of it,
-- so the whole execution is one trace.
ALTER TABLE executions.executions ADD COLUMN traceparent text;
