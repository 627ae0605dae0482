-- The `records` projection: one generation's tables. `__SCHEMA__` is replaced by the
-- generation's schema name (rm_records_g<N>). Read-model rows are derived data: the
-- runner is their only writer, and a rebuild recreates them from the ledger.
-- Secondary indexes are in records_indexes.sql: a runner that starts a generation from
-- position 0 creates them when its catch-up by pages ends (building a B-tree once over
-- the filled table costs a fraction of maintaining it row by row). Tables updated in
-- place leave room on their pages (fillfactor) so that updates that change no indexed
-- column (the fold's counters, a status) are HOT: no index entries, pages pruned in place.

CREATE SCHEMA __SCHEMA__;

-- Patient index and demographics; one row per patient stream, with the fold's counters.
CREATE TABLE __SCHEMA__.patients (
    patient_id          uuid PRIMARY KEY,
    registered          boolean NOT NULL,
    mrn                 text,
    family              text,
    given               text[],
    birth_date          date,
    sex                 text,
    contact             jsonb,
    registered_at       timestamptz,
    updated_at          timestamptz,
    demographics_version integer,
    merged_into         uuid,
    revision            bigint NOT NULL,
    position            bigint NOT NULL,
    anomalies           bigint NOT NULL
) WITH (fillfactor = 70);

-- Clinical entries at their current version.
-- Ids come from clients: they are unique within a patient's record, so every key
-- includes the patient (a client reusing another patient's id cannot touch that record).
CREATE TABLE __SCHEMA__.entries (
    entry_id        uuid NOT NULL,
    patient_id      uuid NOT NULL,
    kind            text NOT NULL,
    status          text NOT NULL,
    current_version integer NOT NULL,
    effective_at    timestamptz NOT NULL,
    recorded_at     timestamptz NOT NULL,
    position        bigint NOT NULL,
    PRIMARY KEY (patient_id, entry_id)
) WITH (fillfactor = 70);

-- Every version of every entry (recorded, amended, entered in error). The content is
-- `json`, not `jsonb`: it is only ever read back whole, and `json` stores the text the
-- runner wrote (canonical serde JSON) without parsing it into a tree on the way in or
-- printing it on the way out.
CREATE TABLE __SCHEMA__.entry_versions (
    entry_id     uuid NOT NULL,
    version      integer NOT NULL,
    patient_id   uuid NOT NULL,
    change       text NOT NULL,
    amendment_id uuid,
    reason       text,
    content      json NOT NULL,
    effective_at timestamptz NOT NULL,
    author_id    uuid NOT NULL,
    author_role  text NOT NULL,
    recorded_at  timestamptz NOT NULL,
    event_id     uuid NOT NULL,
    position     bigint NOT NULL,
    PRIMARY KEY (patient_id, entry_id, version)
);

-- Consent versions; the highest version of a patient is in force.
CREATE TABLE __SCHEMA__.consents (
    patient_id   uuid NOT NULL,
    version      integer NOT NULL,
    consent_id   uuid NOT NULL,
    change       text NOT NULL,
    method       text,
    supersedes   uuid,
    withdrawn    text[],
    granted      text[] NOT NULL,
    witness_id   uuid,
    effective_at timestamptz NOT NULL,
    recorded_at  timestamptz NOT NULL,
    recorded_by  uuid NOT NULL,
    position     bigint NOT NULL,
    PRIMARY KEY (patient_id, version)
);

-- Current care-team members ("their own patients").
CREATE TABLE __SCHEMA__.care_team (
    patient_id   uuid NOT NULL,
    clinician_id uuid NOT NULL,
    care_role    text NOT NULL,
    assigned_at  timestamptz NOT NULL,
    assigned_by  uuid NOT NULL,
    PRIMARY KEY (patient_id, clinician_id)
) WITH (fillfactor = 70);

CREATE TABLE __SCHEMA__.appointments (
    appointment_id uuid NOT NULL,
    patient_id     uuid NOT NULL,
    clinician_id   uuid NOT NULL,
    visit_type     text NOT NULL,
    start_at       timestamptz NOT NULL,
    end_at         timestamptz NOT NULL,
    status         text NOT NULL,
    version        integer NOT NULL,
    updated_at     timestamptz NOT NULL,
    PRIMARY KEY (patient_id, appointment_id)
) WITH (fillfactor = 70);

-- Who accessed which record: one row per access event.
CREATE TABLE __SCHEMA__.access_log (
    position           bigint PRIMARY KEY,
    event_id           uuid NOT NULL,
    patient_id         uuid NOT NULL,
    user_id            uuid NOT NULL,
    role               text NOT NULL,
    accessed_at        timestamptz NOT NULL,
    resources          text[] NOT NULL,
    action             text NOT NULL,
    purpose            text NOT NULL,
    break_glass_reason text,
    client_addr        text,
    user_agent         text,
    session_id         uuid,
    case_ref           text
);

-- Staff directory (users and their roles), from `$staff`.
CREATE TABLE __SCHEMA__.users (
    user_id      uuid PRIMARY KEY,
    username     text NOT NULL,
    display_name text NOT NULL,
    roles        text[] NOT NULL,
    patient_id   uuid,
    active       boolean NOT NULL,
    updated_at   timestamptz NOT NULL,
    position     bigint NOT NULL
);

-- (`role_grants` and other later additions: records_upgrade.sql.)

-- Chart snapshots for point-in-time replay (projections/src/snapshot.rs): the chart fold's
-- state after `revision` of the patient's stream, written by replays as they fold. Derived
-- like every table here (dropped with the generation, so a rebuild after a change of the
-- fold starts without any); bound to the ledger by the hash of the event at `revision`,
-- which through the stream's hash links commits to the whole prefix. Stored without
-- compression (replays read them whole; pglz on them has not been measured).
CREATE TABLE __SCHEMA__.chart_snapshots (
    patient_id uuid NOT NULL,
    revision   bigint NOT NULL,
    format     smallint NOT NULL,
    event_hash bytea NOT NULL,
    events     bigint NOT NULL,
    skipped    bigint NOT NULL,
    state      bytea NOT NULL,
    PRIMARY KEY (patient_id, revision)
);
ALTER TABLE __SCHEMA__.chart_snapshots ALTER COLUMN state SET STORAGE EXTERNAL;
