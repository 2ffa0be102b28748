-- Roles wait, in an init step, until the schema is at their version (`one-agents migrate
-- --check`), as the app role: it may read which migrations were applied, and nothing else of them.
GRANT SELECT ON public._sqlx_migrations TO one_agents_app;
