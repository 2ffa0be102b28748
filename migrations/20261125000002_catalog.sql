-- The event catalog: global, not org-owned. Products register their event types through the
-- catalog service; agents validate their triggers against it.
CREATE SCHEMA catalog;
GRANT USAGE ON SCHEMA catalog TO one_agents_app;

CREATE TABLE catalog.event_types (
    id                text PRIMARY KEY,
    source_product    text NOT NULL,
    event_type        text NOT NULL,
    display_name      text NOT NULL,
    description       text NOT NULL,
    category          text NOT NULL,
    filterable_fields jsonb NOT NULL,
    sample_payload    jsonb NOT NULL,
    -- `system` for the shipped catalog, else the principal that registered it last.
    registered_by     text NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (source_product, event_type),
    CHECK (id = source_product || ':' || event_type)
);
CREATE INDEX event_types_category ON catalog.event_types (category);
GRANT SELECT, INSERT, UPDATE ON catalog.event_types TO one_agents_app;
