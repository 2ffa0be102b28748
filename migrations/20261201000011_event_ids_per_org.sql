-- Event ids are chosen by publishers, so they are unique only within an org: one org reusing
-- another's event id must neither collide with nor suppress the other's executions.
DROP INDEX executions.executions_once_per_event_agent;
CREATE UNIQUE INDEX executions_once_per_event_agent ON executions.executions (org_id, event_id, agent_id)
    WHERE retry_of IS NULL;
