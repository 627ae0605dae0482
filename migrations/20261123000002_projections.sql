-- Projection bookkeeping. Each generation of a projection lives in its own schema
-- (rm_<projection>_g<N>, created from projections/sql/<projection>.sql); the views in
-- schema `rm` point at the active generation, so a rebuild can fill a new generation
-- while the old one keeps serving, and switch over in one transaction.

CREATE SCHEMA IF NOT EXISTS rm;

CREATE TABLE projection_generations (
    projection   text        NOT NULL,
    generation   integer     NOT NULL CHECK (generation > 0),
    schema_name  text        NOT NULL UNIQUE,
    status       text        NOT NULL CHECK (status IN ('building', 'active', 'retired')),
    -- The next $all position to apply: every event below it is in the read model.
    position     bigint      NOT NULL DEFAULT 0 CHECK (position >= 0),
    -- Events skipped because their payload was erased or could not be decoded.
    skipped      bigint      NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now(),
    activated_at timestamptz,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, generation)
);

-- At most one active generation per projection.
CREATE UNIQUE INDEX projection_generations_one_active
    ON projection_generations (projection) WHERE status = 'active';

REVOKE ALL ON projection_generations FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE ON projection_generations TO chartledger_app;
GRANT SELECT ON projection_generations TO chartledger_readonly;
GRANT USAGE ON SCHEMA rm TO chartledger_app, chartledger_readonly;
-- The runner (re)creates the rm.* views at each switch and grants SELECT on them to
-- chartledger_readonly.
GRANT CREATE ON SCHEMA rm TO chartledger_app;
-- The runner creates one schema per generation.
DO $$ BEGIN
    EXECUTE format('GRANT CREATE ON DATABASE %I TO chartledger_app', current_database());
END $$;
