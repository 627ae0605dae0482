-- Additions to the `records` tables (records.sql) since generations were first made,
-- idempotent: run after records.sql for a new generation, and at start for the active
-- and building ones (`runner::ensure_active`). Each may only add what no event folded
-- by an earlier build needs, so an existing generation is upgraded in place, without a
-- rebuild; anything else changes the fold and needs a rebuild.

-- `access.recorded` v2: the case reference of audited reads (no v1 event had one).
ALTER TABLE __SCHEMA__.access_log ADD COLUMN IF NOT EXISTS case_ref text;

-- Role grants under separation of duties (`staff.role_grant_*`, domain::staff): one
-- row per proposal, `pending` until a second administrator approves it (`approved`,
-- which is when `users.roles` gets the role) or someone cancels it (`cancelled`).
CREATE TABLE IF NOT EXISTS __SCHEMA__.role_grants (
    grant_id    uuid PRIMARY KEY,
    user_id     uuid NOT NULL,
    role        text NOT NULL,
    status      text NOT NULL,
    proposed_by uuid NOT NULL,
    proposed_at timestamptz NOT NULL,
    decided_by  uuid,
    decided_at  timestamptz,
    position    bigint NOT NULL
);
