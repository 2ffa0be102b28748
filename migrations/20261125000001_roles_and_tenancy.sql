-- The app role: the plane connects as it. It owns no tables, so row-level security applies to it
-- on every org-owned table. Operators set its password (ALTER ROLE one_agents_app PASSWORD ...).
-- Parallel test databases share one cluster, so a concurrent creation is tolerated.
DO $$
BEGIN
    CREATE ROLE one_agents_app LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;

CREATE SCHEMA tenancy;
GRANT USAGE ON SCHEMA tenancy TO one_agents_app;

-- The org id of the current transaction, or NULL when none was set: every policy compares to it,
-- so a forgotten scope sees nothing.
CREATE FUNCTION tenancy.current_org_id() RETURNS text
    LANGUAGE sql STABLE
    AS $$ SELECT NULLIF(current_setting('app.org_id', true), '') $$;
GRANT EXECUTE ON FUNCTION tenancy.current_org_id() TO one_agents_app;

CREATE TABLE tenancy.orgs (
    id          text PRIMARY KEY CHECK (id ~ '^org_[A-Za-z0-9_-]{1,120}$'),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    tier        text NOT NULL CHECK (tier IN ('starter', 'pro', 'enterprise')),
    -- An operator's override of the tier's monthly credit allocation.
    monthly_credits_override bigint CHECK (monthly_credits_override >= 0),
    created_at  timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE tenancy.orgs ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenancy.orgs FORCE ROW LEVEL SECURITY;
CREATE POLICY org_self ON tenancy.orgs
    USING (id = tenancy.current_org_id())
    WITH CHECK (id = tenancy.current_org_id());
GRANT SELECT ON tenancy.orgs TO one_agents_app;

-- Integration keys: `oak_<prefix>_<secret>`; only the prefix and a SHA-256 of the secret are kept.
CREATE TABLE tenancy.integration_keys (
    id           text PRIMARY KEY,
    org_id       text NOT NULL REFERENCES tenancy.orgs (id),
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    prefix       text NOT NULL UNIQUE CHECK (prefix ~ '^[a-z0-9]{8,32}$'),
    secret_hash  bytea NOT NULL CHECK (length(secret_hash) = 32),
    scopes       text[] NOT NULL,
    created_by   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX integration_keys_org ON tenancy.integration_keys (org_id, created_at DESC);
ALTER TABLE tenancy.integration_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenancy.integration_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY key_org ON tenancy.integration_keys
    USING (org_id = tenancy.current_org_id())
    WITH CHECK (org_id = tenancy.current_org_id());
-- Resolving a presented key happens before its org is known: a transaction that names the key's
-- prefix in `app.key_prefix` may read that one row, and nothing else.
CREATE POLICY key_lookup_by_prefix ON tenancy.integration_keys FOR SELECT
    USING (prefix = NULLIF(current_setting('app.key_prefix', true), ''));
GRANT SELECT, INSERT ON tenancy.integration_keys TO one_agents_app;
GRANT UPDATE (last_used_at, revoked_at) ON tenancy.integration_keys TO one_agents_app;
