-- Authentication state of the server (crate `api`). These rows are secrets and counters,
-- not record history: the facts (user created, MFA enrolled, login succeeded or failed,
-- session ended) are signed events in `$staff` and `$security`; what changes here is the
-- password hash, the TOTP secret, the failure counter and live sessions.

CREATE TABLE auth_credentials (
    user_id          uuid PRIMARY KEY,
    username         text NOT NULL UNIQUE,
    password_hash    text NOT NULL,                -- PHC string, argon2id
    totp_secret      bytea,                        -- set when enrolment starts
    mfa_enrolled     boolean NOT NULL DEFAULT false,
    failed_attempts  integer NOT NULL DEFAULT 0,
    locked_until     timestamptz,
    must_change_password boolean NOT NULL DEFAULT false,
    last_totp_step   bigint                         -- a TOTP code is accepted once
);

CREATE TABLE auth_sessions (
    token_hash    bytea PRIMARY KEY,                -- SHA-256 of the bearer token; the token itself is never stored
    session_id    uuid NOT NULL UNIQUE,
    user_id       uuid NOT NULL,
    role          text NOT NULL,                    -- the one role this session acts in
    patient_id    uuid,                             -- patient users: their own record
    mfa_verified  boolean NOT NULL,
    created_at    timestamptz NOT NULL,
    last_seen     timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL,             -- absolute lifetime
    ended_at      timestamptz,
    end_reason    text
);
CREATE INDEX auth_sessions_live ON auth_sessions (last_seen) WHERE ended_at IS NULL;

-- Break-glass grants: a clinician outside the care team, for one patient, for a
-- limited time, with a stated reason (the reason is also in every access event).
CREATE TABLE auth_break_glass (
    session_id  uuid NOT NULL,
    patient_id  uuid NOT NULL,
    reason      text NOT NULL,
    granted_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (session_id, patient_id)
);

GRANT SELECT, INSERT, UPDATE ON auth_credentials, auth_sessions, auth_break_glass TO chartledger_app;
GRANT DELETE ON auth_break_glass TO chartledger_app;
