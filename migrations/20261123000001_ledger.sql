-- Chartledger event store: signed envelopes, payloads stored apart, signed checkpoints.
-- Everything here is append-only, enforced by triggers (for every role, owners included)
-- and by privileges (the application role can only SELECT and INSERT).

-- Roles. Cluster-wide, so created only if missing (several databases may share a cluster).
DO $$
BEGIN
    CREATE ROLE chartledger_app NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END $$;
DO $$
BEGIN
    CREATE ROLE chartledger_readonly NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END $$;

-- One row per event, in global order. `position` is the leaf index in the ledger's
-- RFC 9162 Merkle tree: gapless, 0-based, assigned in commit order by the single writer
-- holding the ledger's advisory lock (never by a sequence).
CREATE TABLE ledger_events (
    position        BIGINT      NOT NULL PRIMARY KEY CHECK (position >= 0),
    stream_id       TEXT        NOT NULL,
    stream_revision BIGINT      NOT NULL CHECK (stream_revision >= 0),
    event_id        UUID        NOT NULL UNIQUE,
    event_type      TEXT        NOT NULL,
    recorded_at     TIMESTAMPTZ NOT NULL,
    -- canonical signed bytes (schema/ledger-format.md): never changed
    envelope        BYTEA       NOT NULL CHECK (octet_length(envelope) <= 1024),
    -- SHA-256(EVENT_HASH_TAG || envelope), denormalised for links and proofs
    event_hash      BYTEA       NOT NULL CHECK (octet_length(event_hash) = 32),
    -- Merkle nodes completed by this leaf, levels 1..k concatenated (32 bytes each), where
    -- k = trailing zero bits of (position + 1). Node (level L, index i) lives in the row
    -- at position ((i + 1) << L) - 1.
    merkle_nodes    BYTEA       NOT NULL CHECK (octet_length(merkle_nodes) % 32 = 0),
    UNIQUE (stream_id, stream_revision)
);
CREATE INDEX ledger_events_type_idx ON ledger_events (event_type, position);
CREATE INDEX ledger_events_stream_time_idx ON ledger_events (stream_id, recorded_at);

-- Payloads and their salts, apart from the envelopes (erasure destroys these, one audited
-- path, in a later migration; until then they are as immutable as the envelopes).
-- No foreign key to ledger_events: the writer inserts both in one statement, and ledger
-- verification reports a missing or altered payload at its position; a per-row RI check
-- measured a third of the insert cost of a 1,000-event batch.
CREATE TABLE ledger_payloads (
    position BIGINT NOT NULL PRIMARY KEY,
    salt     BYTEA  NOT NULL CHECK (octet_length(salt) = 32),
    payload  BYTEA  NOT NULL CHECK (octet_length(payload) <= 1048576)
);

-- Signed checkpoints (C2SP tlog-checkpoint notes), one per tree size.
CREATE TABLE ledger_checkpoints (
    tree_size  BIGINT      NOT NULL PRIMARY KEY CHECK (tree_size >= 0),
    root_hash  BYTEA       NOT NULL CHECK (octet_length(root_hash) = 32),
    note       TEXT        NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);

-- Immutability: reject UPDATE, DELETE and TRUNCATE for everyone.
CREATE FUNCTION ledger_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'chartledger: % on % is forbidden: the ledger is append-only', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER ledger_events_immutable BEFORE UPDATE OR DELETE ON ledger_events
    FOR EACH ROW EXECUTE FUNCTION ledger_reject_change();
CREATE TRIGGER ledger_events_no_truncate BEFORE TRUNCATE ON ledger_events
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_reject_change();
CREATE TRIGGER ledger_payloads_immutable BEFORE UPDATE OR DELETE ON ledger_payloads
    FOR EACH ROW EXECUTE FUNCTION ledger_reject_change();
CREATE TRIGGER ledger_payloads_no_truncate BEFORE TRUNCATE ON ledger_payloads
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_reject_change();
CREATE TRIGGER ledger_checkpoints_immutable BEFORE UPDATE OR DELETE ON ledger_checkpoints
    FOR EACH ROW EXECUTE FUNCTION ledger_reject_change();
CREATE TRIGGER ledger_checkpoints_no_truncate BEFORE TRUNCATE ON ledger_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_reject_change();

-- Gaplessness, enforced by the database too: every INSERT statement must append one
-- contiguous block of positions directly after an existing row (or from 0). By induction
-- the table is then always 0..head without holes (a block cannot land in a hole, as there
-- is none, and primary keys forbid overlaps). Two primary-key probes per statement.
CREATE FUNCTION ledger_check_append() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    lo BIGINT; hi BIGINT; n BIGINT;
BEGIN
    SELECT min(position), max(position), count(*) INTO lo, hi, n FROM new_rows;
    IF n = 0 THEN RETURN NULL; END IF;
    IF hi - lo + 1 <> n
       OR (lo > 0 AND NOT EXISTS (SELECT 1 FROM ledger_events WHERE position = lo - 1))
       OR EXISTS (SELECT 1 FROM ledger_events WHERE position = hi + 1) THEN
        RAISE EXCEPTION 'chartledger: positions % to % do not extend the ledger head', lo, hi
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NULL;
END $$;
-- Resolve `ledger_events` in the schema the migration runs in, never in pg_temp (a
-- temporary table of the same name must not be able to fool the check).
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION ledger_check_append() SET search_path = %I, pg_temp', current_schema());
END $$;
CREATE TRIGGER ledger_events_gapless AFTER INSERT ON ledger_events
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_check_append();

-- Privileges: the application may read and append, nothing else.
REVOKE ALL ON ledger_events, ledger_payloads, ledger_checkpoints FROM PUBLIC;
GRANT SELECT, INSERT ON ledger_events, ledger_payloads, ledger_checkpoints TO chartledger_app;
GRANT SELECT ON ledger_events, ledger_payloads, ledger_checkpoints TO chartledger_readonly;
