-- Approval gates that pause executions, their one decision, and an append-only audit of every
-- decision, expiry and escalation.
CREATE SCHEMA approvals;
GRANT USAGE ON SCHEMA approvals TO one_agents_app;

CREATE TABLE approvals.gates (
    id              text PRIMARY KEY,
    org_id          text NOT NULL,
    execution_id    text NOT NULL,
    agent_id        text NOT NULL,
    step_id         text NOT NULL,
    message         text NOT NULL,
    -- Who may decide now (an escalation replaces it).
    approvers       text[] NOT NULL CHECK (cardinality(approvers) > 0),
    status          text NOT NULL CHECK (status IN ('pending', 'approved', 'denied', 'expired')),
    -- What the execution does: approved or denied (an expired gate follows its on_timeout).
    outcome         text CHECK (outcome IN ('approved', 'denied')),
    on_timeout      text NOT NULL CHECK (on_timeout IN ('deny', 'approve', 'escalate')),
    escalate_to     text,
    expires_in_secs bigint NOT NULL CHECK (expires_in_secs > 0),
    escalated_at    timestamptz,
    expires_at      timestamptz NOT NULL,
    decided_by      text,
    decided_via     text CHECK (decided_via IN ('user', 'integration_key', 'signed_link', 'timeout', 'cancel')),
    decided_at      timestamptz,
    note            text,
    -- Outbox: every change the engine must see bumps `version`; the change is published on the
    -- work stream and `published_version` catches up. The sweeper republishes what lags.
    version         integer NOT NULL DEFAULT 1,
    published_version integer NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'pending') = (outcome IS NULL)),
    CHECK ((status = 'pending') = (decided_at IS NULL))
);
-- One gate per step of an execution: a resumed worker reopening it finds the same gate.
CREATE UNIQUE INDEX gates_once_per_step ON approvals.gates (execution_id, step_id);
CREATE INDEX gates_org_status ON approvals.gates (org_id, status, id DESC);
CREATE INDEX gates_org ON approvals.gates (org_id, id DESC);
CREATE INDEX gates_due ON approvals.gates (expires_at) WHERE status = 'pending';
CREATE INDEX gates_unpublished ON approvals.gates (updated_at) WHERE published_version < version;
ALTER TABLE approvals.gates ENABLE ROW LEVEL SECURITY;
ALTER TABLE approvals.gates FORCE ROW LEVEL SECURITY;
CREATE POLICY gates_org ON approvals.gates
    USING (org_id = tenancy.current_org_id())
    WITH CHECK (org_id = tenancy.current_org_id());
-- The sweeper finds due and unpublished gates across orgs, then handles each in its org.
CREATE POLICY gates_sweeper ON approvals.gates FOR SELECT
    USING (current_setting('app.sweeper', true) = 'on');
GRANT SELECT, INSERT, UPDATE ON approvals.gates TO one_agents_app;

CREATE TABLE approvals.audit (
    id              bigserial PRIMARY KEY,
    org_id          text NOT NULL,
    approval_id     text NOT NULL REFERENCES approvals.gates (id),
    action          text NOT NULL CHECK (action IN ('opened', 'approved', 'denied', 'expired', 'escalated')),
    actor           text NOT NULL,
    principal_type  text NOT NULL CHECK (principal_type IN
                        ('user', 'integration_key', 'signed_link', 'system')),
    note            text,
    detail          jsonb,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_approval ON approvals.audit (approval_id, id);
ALTER TABLE approvals.audit ENABLE ROW LEVEL SECURITY;
ALTER TABLE approvals.audit FORCE ROW LEVEL SECURITY;
CREATE POLICY audit_org ON approvals.audit
    USING (org_id = tenancy.current_org_id())
    WITH CHECK (org_id = tenancy.current_org_id());
-- Append-only: the app may add and read, never change or remove; the trigger holds for owners too.
GRANT SELECT, INSERT ON approvals.audit TO one_agents_app;
GRANT USAGE ON SEQUENCE approvals.audit_id_seq TO one_agents_app;
CREATE FUNCTION approvals.audit_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'approvals.audit is append-only';
END;
$$;
CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON approvals.audit
    FOR EACH ROW EXECUTE FUNCTION approvals.audit_is_append_only();
