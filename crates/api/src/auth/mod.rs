//! Authentication: unique accounts with argon2id passwords, TOTP second factor, bearer
//! session tokens (only their SHA-256 is stored) that end after inactivity (automatic
//! logoff) or an absolute lifetime, lock-out after repeated failures, and break-glass
//! grants. Every login success or failure, MFA challenge, logout and automatic logoff is
//! a signed event in `$security` before the caller gets an answer.
//!
//! Account existence does not show: an unknown user name, a wrong password and a locked
//! account get the same answer (`auth.invalid_credentials`) after the same work (one
//! argon2 verification, off the async threads). Only after a correct password does an
//! answer say more (`auth.role_required`; `auth.locked` for a second factor on a locked
//! account). Attempts are counted before they are checked ([`lockout`]).

mod break_glass;
pub mod lockout;
mod login;
pub mod password;
mod session;
pub mod totp;

use session::SessionCache;
pub use session::SESSION_RECHECK;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use domain::events::{
    DomainEvent, LoginFailed, LoginFailure, LoginSucceeded, MfaChallenged, MfaEnrolled, PasswordChanged,
    Role, SessionEnd, SessionEnded,
};
use ledger::Actor;
use projections::{ReadModels, Records};
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Row};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::config::ApiConfig;
use crate::error::{ApiError, ApiResult};

/// Who is asking: an authenticated session acting in one role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub user_id: Uuid,
    pub session_id: Uuid,
    pub role: Role,
    /// Patient accounts: their own record.
    pub patient_id: Option<Uuid>,
    /// False while a required second factor is still pending.
    pub mfa_verified: bool,
    /// True until the user replaces a password someone else set (an initial or reset
    /// password): only `changePassword`, `logout` and `me` work until then.
    pub must_change_password: bool,
}

impl Principal {
    pub fn actor(&self) -> Actor {
        Actor { user_id: self.user_id, role: self.role.role_name() }
    }
}

/// Where a request came from (recorded in security and access events).
#[derive(Clone, Debug, Default)]
pub struct ClientInfo {
    pub addr: Option<String>,
    pub user_agent: Option<String>,
}

/// The answer to a correct password. (`Debug` leaves the token out.)
#[derive(Clone)]
pub struct LoginOutcome {
    pub token: String,
    pub principal: Principal,
    /// A second factor must be given (`verifyMfa`) before anything else; `enrolled` says
    /// whether the user already has one or must enrol first (`enrollMfa`).
    pub mfa_pending: bool,
    pub mfa_enrolled: bool,
    pub expires_at: OffsetDateTime,
}

impl std::fmt::Debug for LoginOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginOutcome")
            .field("principal", &self.principal)
            .field("mfa_pending", &self.mfa_pending)
            .field("mfa_enrolled", &self.mfa_enrolled)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug)]
pub struct Auth {
    pool: PgPool,
    records: Records,
    read: ReadModels,
    config: Arc<ApiConfig>,
    sessions: Arc<SessionCache>,
}

fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

fn new_token() -> String {
    let mut b = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn dur(d: Duration) -> time::Duration {
    time::Duration::try_from(d).unwrap_or(time::Duration::MAX)
}

/// A session row's principal (`must_change_password` where the query joined it).
fn principal_from(row: &sqlx::postgres::PgRow) -> ApiResult<Principal> {
    let role: String = row.try_get("role")?;
    Ok(Principal {
        user_id: row.try_get("user_id")?,
        session_id: row.try_get("session_id")?,
        role: Role::parse(&role).ok_or(ApiError::unexpected("auth.corrupt_session"))?,
        patient_id: row.try_get("patient_id")?,
        mfa_verified: row.try_get("mfa_verified")?,
        must_change_password: row.try_get("must_change_password").unwrap_or(false),
    })
}

impl Auth {
    pub fn new(pool: PgPool, records: Records, config: Arc<ApiConfig>) -> Self {
        // The staff directory only: no chart is read through this one.
        let read = ReadModels::with_chart_cache(pool.clone(), 0);
        Self { pool, records, read, config, sessions: Arc::default() }
    }

    async fn security(&self, actor: Actor, event: DomainEvent) -> ApiResult<()> {
        self.records.record_system(actor, Uuid::now_v7(), event).await?;
        Ok(())
    }

    /// Store credentials for a user whose `staff.user_created` event is written.
    pub async fn set_credentials(
        &self,
        user_id: Uuid,
        username: &str,
        password: &str,
        must_change: bool,
    ) -> ApiResult<()> {
        if !password::acceptable(password) {
            return Err(ApiError::InvalidInput { code: "auth.weak_password" });
        }
        let phc = password::hash_off_thread(password)
            .await
            .map_err(|e| ApiError::internal("auth.hash", &e))?
            .map_err(|e| ApiError::internal("auth.hash", &e))?;
        sqlx::query(
            "INSERT INTO auth_credentials (user_id, username, password_hash, must_change_password) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (user_id) DO UPDATE SET password_hash = EXCLUDED.password_hash, \
             must_change_password = EXCLUDED.must_change_password, failed_attempts = 0, locked_until = NULL",
        )
        .bind(user_id)
        .bind(username)
        .bind(phc)
        .bind(must_change)
        .execute(&self.pool)
        .await?;
        self.sessions.forget(|p| p.user_id != user_id);
        Ok(())
    }

    pub async fn username_taken(&self, username: &str) -> ApiResult<bool> {
        Ok(sqlx::query("SELECT 1 FROM auth_credentials WHERE username = $1")
            .bind(username)
            .fetch_optional(&self.pool)
            .await?
            .is_some())
    }
}
