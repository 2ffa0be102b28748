-- Executions, their step traces, the side effects they caused, and dead-lettered events.
CREATE SCHEMA executions;
GRANT USAGE ON SCHEMA executions TO one_agents_app;

CREATE TABLE executions.executions (
    id             text PRIMARY KEY,
    org_id         text NOT NULL,
    agent_id       text NOT NULL,
    agent_version  integer NOT NULL,
    -- The definition the execution pinned when it started.
    definition     jsonb NOT NULL,
    event_id       text NOT NULL,
    trigger_event  jsonb NOT NULL,
    status         text NOT NULL CHECK (status IN
                       ('pending', 'running', 'waiting_approval', 'completed', 'failed', 'cancelled')),
    error          jsonb,
    credits_used   bigint NOT NULL DEFAULT 0 CHECK (credits_used >= 0),
    retry_of       text REFERENCES executions.executions (id),
    created_at     timestamptz NOT NULL DEFAULT now(),
    started_at     timestamptz,
    completed_at   timestamptz,
    updated_at     timestamptz NOT NULL DEFAULT now()
);
-- One execution per (event, agent): redelivery, a republished event or two workers never make a
-- second. Retries are new executions linked to the one they retry.
CREATE UNIQUE INDEX executions_once_per_event_agent ON executions.executions (event_id, agent_id)
    WHERE retry_of IS NULL;
CREATE INDEX executions_org_created ON executions.executions (org_id, created_at DESC, id DESC);
CREATE INDEX executions_org_agent ON executions.executions (org_id, agent_id, created_at DESC);
ALTER TABLE executions.executions ENABLE ROW LEVEL SECURITY;
ALTER TABLE executions.executions FORCE ROW LEVEL SECURITY;
CREATE POLICY executions_org ON executions.executions
    USING (org_id = tenancy.current_org_id())
    WITH CHECK (org_id = tenancy.current_org_id());
GRANT SELECT, INSERT, UPDATE ON executions.executions TO one_agents_app;

CREATE TABLE executions.steps (
    execution_id  text NOT NULL REFERENCES executions.executions (id),
    position      integer NOT NULL,
    org_id        text NOT NULL,
    step_id       text NOT NULL,
    step_type     text NOT NULL,
    status        text NOT NULL CHECK (status IN ('pending', 'running', 'completed', 'failed', 'skipped', 'cancelled')),
    attempt       integer NOT NULL DEFAULT 0,
    output        jsonb,
    error         jsonb,
    credits_used  bigint NOT NULL DEFAULT 0 CHECK (credits_used >= 0),
    duration_ms   bigint,
    started_at    timestamptz,
    completed_at  timestamptz,
    PRIMARY KEY (execution_id, position)
);
ALTER TABLE executions.steps ENABLE ROW LEVEL SECURITY;
ALTER TABLE executions.steps FORCE ROW LEVEL SECURITY;
CREATE POLICY steps_org ON executions.steps
    USING (org_id = tenancy.current_org_id())
    WITH CHECK (org_id = tenancy.current_org_id());
GRANT SELECT, INSERT, UPDATE ON executions.steps TO one_agents_app;

-- Side effects (notifications, product actions) keyed by (execution, step, attempt): a resumed
-- step finds its effect done and does not repeat it.
CREATE TABLE executions.side_effects (
    idempotency_key  text PRIMARY KEY,
    org_id           text NOT NULL,
    execution_id     text NOT NULL REFERENCES executions.executions (id),
    step_id          text NOT NULL,
    result           jsonb NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE executions.side_effects ENABLE ROW LEVEL SECURITY;
ALTER TABLE executions.side_effects FORCE ROW LEVEL SECURITY;
CREATE POLICY side_effects_org ON executions.side_effects
    USING (org_id = tenancy.current_org_id())
    WITH CHECK (org_id = tenancy.current_org_id());
GRANT SELECT, INSERT ON executions.side_effects TO one_agents_app;

-- Events that could not be processed, kept with the reason and replayable.
CREATE TABLE executions.dead_letters (
    id           text PRIMARY KEY,
    org_id       text NOT NULL,
    subject      text NOT NULL,
    event_id     text,
    payload      text NOT NULL,
    reason       text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    replayed_at  timestamptz
);
CREATE INDEX dead_letters_org ON executions.dead_letters (org_id, created_at DESC);
ALTER TABLE executions.dead_letters ENABLE ROW LEVEL SECURITY;
ALTER TABLE executions.dead_letters FORCE ROW LEVEL SECURITY;
CREATE POLICY dead_letters_org ON executions.dead_letters
    USING (org_id = tenancy.current_org_id())
    WITH CHECK (org_id = tenancy.current_org_id());
GRANT SELECT, INSERT, UPDATE ON executions.dead_letters TO one_agents_app;
