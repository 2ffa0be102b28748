-- Agents, their versions, org overrides of system agents, per-org stats, and templates.
-- System agents belong to org 'system' and are readable by every org; every other row is its
-- org's alone.
CREATE SCHEMA agents;
GRANT USAGE ON SCHEMA agents TO one_agents_app;

CREATE TABLE agents.agents (
    id            text PRIMARY KEY,
    org_id        text NOT NULL,
    name          text NOT NULL,
    description   text NOT NULL DEFAULT '',
    category      text NOT NULL,
    type          text NOT NULL CHECK (type IN ('system', 'template', 'custom', 'cloned')),
    status        text NOT NULL CHECK (status IN ('draft', 'active', 'paused', 'error')),
    -- trigger, conditions, steps, conflict_behavior, client_scope.
    definition    jsonb NOT NULL,
    version       integer NOT NULL CHECK (version >= 1),
    cloned_from   text,
    template_id   text,
    created_by    text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    deleted_at    timestamptz,
    CHECK ((type = 'system') = (org_id = 'system'))
);
CREATE INDEX agents_org_status ON agents.agents (org_id, status) WHERE deleted_at IS NULL;
ALTER TABLE agents.agents ENABLE ROW LEVEL SECURITY;
ALTER TABLE agents.agents FORCE ROW LEVEL SECURITY;
CREATE POLICY agents_read ON agents.agents FOR SELECT
    USING (org_id = tenancy.current_org_id() OR org_id = 'system');
CREATE POLICY agents_write ON agents.agents FOR ALL
    USING (org_id = tenancy.current_org_id())
    WITH CHECK (org_id = tenancy.current_org_id());
GRANT SELECT, INSERT, UPDATE ON agents.agents TO one_agents_app;

-- Every update stores a version; an execution pins the version it started with.
CREATE TABLE agents.agent_versions (
    agent_id    text NOT NULL REFERENCES agents.agents (id),
    version     integer NOT NULL,
    org_id      text NOT NULL,
    status      text NOT NULL,
    snapshot    jsonb NOT NULL,
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agent_id, version)
);
ALTER TABLE agents.agent_versions ENABLE ROW LEVEL SECURITY;
ALTER TABLE agents.agent_versions FORCE ROW LEVEL SECURITY;
CREATE POLICY versions_read ON agents.agent_versions FOR SELECT
    USING (org_id = tenancy.current_org_id() OR org_id = 'system');
CREATE POLICY versions_write ON agents.agent_versions FOR INSERT
    WITH CHECK (org_id = tenancy.current_org_id());
GRANT SELECT, INSERT ON agents.agent_versions TO one_agents_app;

-- An org's own status for a system agent (paused or active).
CREATE TABLE agents.org_overrides (
    org_id      text NOT NULL,
    agent_id    text NOT NULL REFERENCES agents.agents (id),
    status      text NOT NULL CHECK (status IN ('active', 'paused')),
    updated_by  text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, agent_id)
);
ALTER TABLE agents.org_overrides ENABLE ROW LEVEL SECURITY;
ALTER TABLE agents.org_overrides FORCE ROW LEVEL SECURITY;
CREATE POLICY overrides_org ON agents.org_overrides
    USING (org_id = tenancy.current_org_id())
    WITH CHECK (org_id = tenancy.current_org_id());
GRANT SELECT, INSERT, UPDATE ON agents.org_overrides TO one_agents_app;

-- Run counters per org and agent (system agents run for many orgs), kept by the executions engine.
CREATE TABLE agents.agent_stats (
    org_id             text NOT NULL,
    agent_id           text NOT NULL,
    total_runs         bigint NOT NULL DEFAULT 0 CHECK (total_runs >= 0),
    succeeded_runs     bigint NOT NULL DEFAULT 0 CHECK (succeeded_runs >= 0),
    total_duration_ms  bigint NOT NULL DEFAULT 0 CHECK (total_duration_ms >= 0),
    last_run_at        timestamptz,
    PRIMARY KEY (org_id, agent_id)
);
ALTER TABLE agents.agent_stats ENABLE ROW LEVEL SECURITY;
ALTER TABLE agents.agent_stats FORCE ROW LEVEL SECURITY;
CREATE POLICY stats_org ON agents.agent_stats
    USING (org_id = tenancy.current_org_id())
    WITH CHECK (org_id = tenancy.current_org_id());
GRANT SELECT, INSERT, UPDATE ON agents.agent_stats TO one_agents_app;

-- Which payload fields agents filter on, per event type: the catalog refuses to drop them. It
-- holds no org data, so it is read across orgs without row-level security.
CREATE TABLE agents.filter_field_usage (
    agent_id       text NOT NULL REFERENCES agents.agents (id),
    event_type_id  text NOT NULL,
    field_path     text NOT NULL,
    PRIMARY KEY (event_type_id, field_path, agent_id)
);
CREATE INDEX filter_field_usage_agent ON agents.filter_field_usage (agent_id);
GRANT SELECT, INSERT, DELETE ON agents.filter_field_usage TO one_agents_app;

-- Templates: global, shipped with the plane.
CREATE TABLE agents.templates (
    id           text PRIMARY KEY CHECK (id ~ '^tmpl_[a-z0-9_]+$'),
    category     text NOT NULL CHECK (category IN ('operations', 'security', 'billing', 'hr', 'custom')),
    name         text NOT NULL,
    description  text NOT NULL,
    version      text NOT NULL,
    -- A full agent definition: name, description, category, trigger, conditions, steps, ...
    definition   jsonb NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
GRANT SELECT, INSERT, UPDATE ON agents.templates TO one_agents_app;
