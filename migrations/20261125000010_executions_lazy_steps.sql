-- Executions are listed newest first by id (ids are ULIDs, so they sort by creation): the org
-- indexes follow the id, so a page is read in order instead of sorted. Step rows are now written
-- as steps start or end (the ingest path writes executions only); a step without a row is pending,
-- or skipped once its execution ended.
DROP INDEX executions.executions_org_created;
DROP INDEX executions.executions_org_agent;
CREATE INDEX executions_org_id ON executions.executions (org_id, id DESC);
CREATE INDEX executions_org_agent_id ON executions.executions (org_id, agent_id, id DESC);
