-- The step runner reads a step's recorded side effects in the transaction that starts the step
-- (one read instead of a transaction per side effect): look them up by (execution, step).
CREATE INDEX side_effects_by_step ON executions.side_effects (execution_id, step_id);
