-- Why an agent is in `error`, shown in the API as `status_reason`; cleared by the next update.
ALTER TABLE agents.agents ADD COLUMN status_reason text;

-- Destructive product operations run only after a human approved them (the action catalogue marks
-- them; these are the ones it marks today). A stored org agent in which such an action has no
-- approval gate before it that a human decides (on_timeout other than approve), or that names an
-- operation the catalogue does not have, is set to `error` with the reason. It runs no more until
-- an admin fixes it; the API shows why.
CREATE FUNCTION agents.flag_unsafe_actions() RETURNS integer LANGUAGE sql AS $$
    WITH steps AS (
        SELECT a.id, s.position, s.step
        FROM agents.agents a,
             jsonb_array_elements(a.definition -> 'steps') WITH ORDINALITY AS s(step, position)
        WHERE a.org_id <> 'system' AND a.deleted_at IS NULL
    ),
    unsafe AS (
        SELECT DISTINCT ON (action.id) action.id,
            CASE WHEN action.step ->> 'action' NOT IN (
                    'psa.create_ticket', 'psa.update_ticket', 'rmm.isolate_device', 'rmm.run_script',
                    'hub.disable_user', 'hub.force_password_reset')
                THEN format('step %s calls %s, which is not an operation of the action catalogue',
                            action.step ->> 'id', action.step ->> 'action')
                ELSE format('step %s calls %s, which is destructive, with no approval gate a human decides before it',
                            action.step ->> 'id', action.step ->> 'action')
            END AS reason
        FROM steps action
        WHERE action.step ->> 'type' = 'action'
          AND (action.step ->> 'action' NOT IN (
                    'psa.create_ticket', 'psa.update_ticket', 'rmm.isolate_device', 'rmm.run_script',
                    'hub.disable_user', 'hub.force_password_reset')
               OR (action.step ->> 'action' IN (
                       'rmm.isolate_device', 'rmm.run_script', 'hub.disable_user', 'hub.force_password_reset')
                   AND NOT EXISTS (
                       SELECT 1 FROM steps gate
                       WHERE gate.id = action.id AND gate.position < action.position
                         AND gate.step ->> 'type' = 'approval'
                         AND COALESCE(gate.step ->> 'on_timeout', 'deny') <> 'approve')))
        ORDER BY action.id, action.position
    ),
    flagged AS (
        UPDATE agents.agents a SET status = 'error', status_reason = unsafe.reason, updated_at = now()
        FROM unsafe WHERE a.id = unsafe.id
        RETURNING a.id
    )
    SELECT count(*)::integer FROM flagged;
$$;

SELECT agents.flag_unsafe_actions();
