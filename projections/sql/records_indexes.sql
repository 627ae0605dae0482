-- The `records` projection's secondary indexes (the tables are in records.sql). Created
-- by the runner when its catch-up by pages ends, idempotently (generations made before
-- this file have the same names, given by PostgreSQL then).

CREATE INDEX IF NOT EXISTS patients_mrn_idx ON __SCHEMA__.patients (mrn);
CREATE INDEX IF NOT EXISTS patients_lower_idx ON __SCHEMA__.patients (lower(family) text_pattern_ops);
CREATE INDEX IF NOT EXISTS patients_birth_date_idx ON __SCHEMA__.patients (birth_date);
CREATE INDEX IF NOT EXISTS entries_patient_id_kind_effective_at_idx ON __SCHEMA__.entries (patient_id, kind, effective_at DESC);
CREATE INDEX IF NOT EXISTS entry_versions_patient_id_amendment_id_idx ON __SCHEMA__.entry_versions (patient_id, amendment_id) WHERE amendment_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS care_team_clinician_id_idx ON __SCHEMA__.care_team (clinician_id);
CREATE INDEX IF NOT EXISTS appointments_patient_id_start_at_idx ON __SCHEMA__.appointments (patient_id, start_at);
CREATE INDEX IF NOT EXISTS appointments_clinician_id_start_at_idx ON __SCHEMA__.appointments (clinician_id, start_at);
CREATE INDEX IF NOT EXISTS access_log_patient_id_accessed_at_idx ON __SCHEMA__.access_log (patient_id, accessed_at);
CREATE INDEX IF NOT EXISTS access_log_user_id_accessed_at_idx ON __SCHEMA__.access_log (user_id, accessed_at);
CREATE INDEX IF NOT EXISTS access_log_accessed_at_idx ON __SCHEMA__.access_log (accessed_at);
CREATE INDEX IF NOT EXISTS users_username_idx ON __SCHEMA__.users (username);
CREATE INDEX IF NOT EXISTS role_grants_pending_idx ON __SCHEMA__.role_grants (proposed_at) WHERE status = 'pending';
