-- The executions role counts live executions across orgs for its gauges
-- (oneagents_executions{status}): a read-only pass in a transaction that sets app.sweeper, as the
-- credits and approvals sweepers do. The partial index keeps the count to the live rows.
CREATE POLICY executions_sweeper ON executions.executions FOR SELECT
    USING (current_setting('app.sweeper', true) = 'on');
CREATE INDEX executions_live_status ON executions.executions (status)
    WHERE status IN ('pending', 'running', 'waiting_approval');
