-- Dispatch: the executions that are ready or waiting to run, claimed by workers in per-org
-- weighted round robin (`FOR UPDATE SKIP LOCKED`) under a lease. A row exists from the moment an
-- execution becomes runnable (created, retried, resumed by a decision) until a run of it stops
-- (ended, or waiting for a human). A worker that dies leaves its leases to expire; another claims
-- them and the engine resumes from the last persisted step.
CREATE TABLE executions.runnable (
    execution_id       text PRIMARY KEY REFERENCES executions.executions (id),
    org_id             text NOT NULL,
    agent_id           text NOT NULL,
    -- 0 high, 1 normal, 2 low: the agent's priority within its org.
    priority           smallint NOT NULL DEFAULT 1 CHECK (priority BETWEEN 0 AND 2),
    -- The order work is taken in within an org and priority.
    seq                bigserial NOT NULL,
    -- The BUS stream sequence of the event that started the execution: executions sharing a
    -- concurrency key run in this order. NULL (first) for resumed or retried work.
    event_seq          bigint,
    enqueued_at        timestamptz NOT NULL DEFAULT now(),
    -- Not claimed before this: a debounce period, a throttle's next slot, a retry's backoff.
    not_before         timestamptz NOT NULL DEFAULT now(),
    -- Why the execution is pending, when it is for a reason of its own (concurrency, debounce,
    -- throttle); NULL while it is only queued.
    pending_reason     text CHECK (pending_reason IN ('concurrency', 'debounce', 'throttle', 'retry_backoff')),
    concurrency_key    text,
    concurrency_limit  integer CHECK (concurrency_limit > 0),
    debounce_key       text,
    throttle_key       text,
    throttle_limit     integer CHECK (throttle_limit > 0),
    throttle_period_ms bigint CHECK (throttle_period_ms > 0),
    lease_owner        text,
    lease_until        timestamptz,
    -- Queued again while a run held it (a decision landed as the run stopped at its gate): the
    -- run's end hands it back instead of removing it.
    rerun              boolean NOT NULL DEFAULT false,
    -- The trace context of what queued it: the run continues that trace.
    traceparent        text,
    -- Runs claimed so far that failed with something other than an outage.
    failures           integer NOT NULL DEFAULT 0,
    last_error         text,
    CHECK ((concurrency_key IS NULL) = (concurrency_limit IS NULL))
);
-- What a claim scans: an org's unleased work by priority and order.
CREATE INDEX runnable_claim ON executions.runnable (org_id, priority, seq) WHERE lease_owner IS NULL;
-- (runnable_claim also finds which orgs have unleased work, by a loose index scan.)
-- Which keys hold running work.
CREATE INDEX runnable_keys ON executions.runnable (org_id, agent_id, concurrency_key, event_seq, seq)
    WHERE concurrency_key IS NOT NULL;
CREATE INDEX runnable_debounce ON executions.runnable (org_id, agent_id, debounce_key)
    WHERE debounce_key IS NOT NULL;
CREATE INDEX runnable_leases ON executions.runnable (lease_until) WHERE lease_owner IS NOT NULL;
ALTER TABLE executions.runnable ENABLE ROW LEVEL SECURITY;
ALTER TABLE executions.runnable FORCE ROW LEVEL SECURITY;
CREATE POLICY runnable_org ON executions.runnable
    USING (org_id = tenancy.current_org_id())
    WITH CHECK (org_id = tenancy.current_org_id());
-- The dispatcher works across orgs in transactions that set app.dispatcher.
CREATE POLICY runnable_dispatcher ON executions.runnable
    USING (current_setting('app.dispatcher', true) = 'on')
    WITH CHECK (current_setting('app.dispatcher', true) = 'on');
GRANT SELECT, INSERT, UPDATE, DELETE ON executions.runnable TO one_agents_app;
GRANT USAGE ON SEQUENCE executions.runnable_seq_seq TO one_agents_app;

-- The starts a throttle counted, per (org, agent, key): a claim admits a throttled execution only
-- while fewer than `limit` started within the last `period`.
CREATE TABLE executions.throttle_starts (
    org_id      text NOT NULL,
    agent_id    text NOT NULL,
    key         text NOT NULL,
    started_at  timestamptz NOT NULL
);
CREATE INDEX throttle_starts_key ON executions.throttle_starts (org_id, agent_id, key, started_at DESC);
ALTER TABLE executions.throttle_starts ENABLE ROW LEVEL SECURITY;
ALTER TABLE executions.throttle_starts FORCE ROW LEVEL SECURITY;
CREATE POLICY throttle_starts_org ON executions.throttle_starts
    USING (org_id = tenancy.current_org_id())
    WITH CHECK (org_id = tenancy.current_org_id());
CREATE POLICY throttle_starts_dispatcher ON executions.throttle_starts
    USING (current_setting('app.dispatcher', true) = 'on')
    WITH CHECK (current_setting('app.dispatcher', true) = 'on');
GRANT SELECT, INSERT, DELETE ON executions.throttle_starts TO one_agents_app;

-- A debounced event's execution is cancelled in favour of the later one that replaced it.
ALTER TABLE executions.executions ADD COLUMN superseded_by text;
-- The live gauges count pending and running executions from the queue; only executions waiting
-- for a human are counted from this table, so ingest no longer writes this index.
DROP INDEX executions.executions_live_status;
CREATE INDEX executions_waiting ON executions.executions (org_id) WHERE status = 'waiting_approval';
CREATE POLICY runnable_sweeper ON executions.runnable FOR SELECT
    USING (current_setting('app.sweeper', true) = 'on');
CREATE INDEX executions_superseded_by ON executions.executions (superseded_by) WHERE superseded_by IS NOT NULL;

-- The dispatcher reads every org's tier and the operator's overrides of its weight and cap.
ALTER TABLE tenancy.orgs ADD COLUMN dispatch_weight integer CHECK (dispatch_weight BETWEEN 1 AND 1000);
ALTER TABLE tenancy.orgs ADD COLUMN max_running integer CHECK (max_running BETWEEN 1 AND 100000);
CREATE POLICY orgs_dispatcher ON tenancy.orgs FOR SELECT
    USING (current_setting('app.dispatcher', true) = 'on');
