-- Who the plane talks to on an org's behalf: its contacts and its own incoming webhooks.
CREATE TABLE agents.org_settings (
    org_id      text PRIMARY KEY,
    settings    jsonb NOT NULL,
    updated_by  text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE agents.org_settings ENABLE ROW LEVEL SECURITY;
ALTER TABLE agents.org_settings FORCE ROW LEVEL SECURITY;
CREATE POLICY org_settings_org ON agents.org_settings
    USING (org_id = tenancy.current_org_id())
    WITH CHECK (org_id = tenancy.current_org_id());
GRANT SELECT, INSERT, UPDATE ON agents.org_settings TO one_agents_app;
