-- Active agents with a schedule trigger, read across orgs by the workers' scheduler through the
-- agents service. It is derived from agents.agents on every write and holds only what a tick
-- needs, so it carries no row-level security; only the plane's own service principal reads it.
CREATE TABLE agents.schedules (
    agent_id    text PRIMARY KEY REFERENCES agents.agents (id),
    org_id      text NOT NULL,
    version     integer NOT NULL,
    cron        text NOT NULL,
    timezone    text NOT NULL,
    definition  jsonb NOT NULL
);
GRANT SELECT, INSERT, DELETE ON agents.schedules TO one_agents_app;
