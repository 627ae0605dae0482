-- The read models get a writer of their own. Until now `chartledger_app` (the server's
-- requests) also created and wrote the read models; from here on `chartledger_projector`
-- (the projection runner) does, and `chartledger_app` only reads them: the views in `rm`,
-- which the runner grants it SELECT on at each switch. The server's connection can then
-- neither write a read model nor move a projection's position.
-- With DATABASE_URL and a single login role, make that role a member of both
-- (deploy/README.md).
DO $$
BEGIN
    CREATE ROLE chartledger_projector NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END $$;

GRANT SELECT ON ledger_events, ledger_payloads, ledger_checkpoints TO chartledger_projector;
GRANT SELECT, INSERT, UPDATE ON projection_generations TO chartledger_projector;
GRANT USAGE, CREATE ON SCHEMA rm TO chartledger_projector;
DO $$ BEGIN
    EXECUTE format('GRANT CREATE ON DATABASE %I TO chartledger_projector', current_database());
    EXECUTE format('REVOKE CREATE ON DATABASE %I FROM chartledger_app', current_database());
END $$;
REVOKE INSERT, UPDATE ON projection_generations FROM chartledger_app;
REVOKE CREATE ON SCHEMA rm FROM chartledger_app;
