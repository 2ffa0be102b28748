-- Credits: each org's plan, its monthly balance, reservations, an append-only ledger, and usage by
-- agent and model tier. Months are calendar months in UTC ('YYYY-MM').
CREATE SCHEMA credits;
GRANT USAGE ON SCHEMA credits TO one_agents_app;

CREATE TABLE credits.org_plans (
    org_id            text PRIMARY KEY,
    tier              text NOT NULL CHECK (tier IN ('starter', 'pro', 'enterprise')),
    monthly_override  bigint CHECK (monthly_override >= 0),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- One row per org and month. The constraints are the guarantee: whatever the concurrency, nothing
-- is negative and nothing is spent or held beyond the allocation.
CREATE TABLE credits.balances (
    org_id      text NOT NULL,
    month       text NOT NULL CHECK (month ~ '^[0-9]{4}-[0-9]{2}$'),
    allocation  bigint NOT NULL CHECK (allocation >= 0),
    used        bigint NOT NULL DEFAULT 0 CHECK (used >= 0),
    reserved    bigint NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, month),
    CHECK (used + reserved <= allocation)
);

CREATE TABLE credits.reservations (
    id               text PRIMARY KEY,
    org_id           text NOT NULL,
    month            text NOT NULL,
    idempotency_key  text NOT NULL,
    amount           bigint NOT NULL CHECK (amount > 0),
    committed_amount bigint CHECK (committed_amount >= 0),
    status           text NOT NULL CHECK (status IN ('reserved', 'committed', 'released')),
    execution_id     text NOT NULL,
    step_id          text NOT NULL,
    agent_id         text NOT NULL,
    model_tier       text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    settled_at       timestamptz,
    UNIQUE (org_id, idempotency_key),
    CHECK (committed_amount IS NULL OR committed_amount <= amount)
);
CREATE INDEX reservations_open ON credits.reservations (created_at) WHERE status = 'reserved';

CREATE TABLE credits.ledger (
    id              bigserial PRIMARY KEY,
    org_id          text NOT NULL,
    month           text NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('reserve', 'commit', 'release')),
    amount          bigint NOT NULL CHECK (amount >= 0),
    reservation_id  text NOT NULL REFERENCES credits.reservations (id),
    execution_id    text NOT NULL,
    step_id         text NOT NULL,
    agent_id        text NOT NULL,
    model_tier      text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ledger_org_month ON credits.ledger (org_id, month);

CREATE TABLE credits.usage (
    org_id      text NOT NULL,
    month       text NOT NULL,
    agent_id    text NOT NULL,
    model_tier  text NOT NULL,
    amount      bigint NOT NULL CHECK (amount >= 0),
    PRIMARY KEY (org_id, month, agent_id, model_tier)
);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['org_plans', 'balances', 'reservations', 'ledger', 'usage'] LOOP
        EXECUTE format('ALTER TABLE credits.%I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE credits.%I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY %I ON credits.%I USING (org_id = tenancy.current_org_id())
                        WITH CHECK (org_id = tenancy.current_org_id())', t || '_org', t);
    END LOOP;
END
$$;
GRANT SELECT, INSERT, UPDATE ON credits.org_plans, credits.balances, credits.reservations, credits.usage
    TO one_agents_app;
-- The ledger is append-only for the plane.
GRANT SELECT, INSERT ON credits.ledger TO one_agents_app;
GRANT USAGE ON SEQUENCE credits.ledger_id_seq TO one_agents_app;
