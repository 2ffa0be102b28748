-- The event catalog is shared by every org and belongs to the products that emit the events:
-- only a product's own key (made by the operator, bound to that product) may write its event
-- types. Tenant integration keys lose `catalog:write`.
CREATE TABLE tenancy.product_keys (
    id           text PRIMARY KEY,
    product      text NOT NULL CHECK (product ~ '^[a-z][a-z0-9_]{0,39}$'),
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    prefix       text NOT NULL UNIQUE CHECK (prefix ~ '^[a-z0-9]{8,32}$'),
    secret_hash  bytea NOT NULL CHECK (length(secret_hash) = 32),
    created_by   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);
-- Not forced: the operator's migration role (the owner) creates and revokes product keys.
ALTER TABLE tenancy.product_keys ENABLE ROW LEVEL SECURITY;
-- The plane reads one product key, by the prefix a caller presents, and nothing else.
CREATE POLICY product_key_lookup_by_prefix ON tenancy.product_keys FOR SELECT
    USING (prefix = NULLIF(current_setting('app.key_prefix', true), ''));
CREATE POLICY product_key_touch ON tenancy.product_keys FOR UPDATE
    USING (prefix = NULLIF(current_setting('app.key_prefix', true), ''));
GRANT SELECT ON tenancy.product_keys TO one_agents_app;
GRANT UPDATE (last_used_at) ON tenancy.product_keys TO one_agents_app;

UPDATE tenancy.integration_keys SET scopes = array_remove(scopes, 'catalog:write')
WHERE 'catalog:write' = ANY (scopes);
