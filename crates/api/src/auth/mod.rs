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

pub mod lockout;
pub mod password;
pub mod totp;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// How long a session looked up in the database is trusted without looking again. A
/// session this server ends, verifies or changes is forgotten at once; one ended by
/// another server sharing the database is refused here at most this long after.
pub const SESSION_RECHECK: Duration = Duration::from_secs(1);

/// Sessions looked up within the last [`SESSION_RECHECK`], by token hash.
#[derive(Debug, Default)]
struct SessionCache {
    map: Mutex<HashMap<Vec<u8>, CachedSession>>,
    /// Bumped by every [`SessionCache::forget`]: a look-up that began before a session
    /// was changed must not put back what it read (it may be the state before the change).
    epoch: AtomicU64,
}

#[derive(Clone, Debug)]
struct CachedSession {
    principal: Principal,
    last_seen: OffsetDateTime,
    expires_at: OffsetDateTime,
    checked: Instant,
}

/// More sessions than this are pruned to those still fresh.
const SESSION_CACHE_MAX: usize = 10_000;

impl SessionCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, CachedSession>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fresh(&self, hash: &[u8]) -> Option<CachedSession> {
        self.lock().get(hash).filter(|c| c.checked.elapsed() < SESSION_RECHECK).cloned()
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Keep `session`, read by a look-up that began at `epoch`, unless a session was
    /// changed since.
    fn put(&self, hash: Vec<u8>, session: CachedSession, epoch: u64) {
        let mut map = self.lock();
        if self.epoch() != epoch {
            return;
        }
        if map.len() >= SESSION_CACHE_MAX {
            map.retain(|_, c| c.checked.elapsed() < SESSION_RECHECK);
        }
        if map.len() < SESSION_CACHE_MAX {
            map.insert(hash, session);
        }
    }

    fn forget(&self, keep: impl Fn(&Principal) -> bool) {
        let mut map = self.lock();
        self.epoch.fetch_add(1, Ordering::SeqCst);
        map.retain(|_, c| keep(&c.principal));
    }
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

/// Check a password against its PHC string (or, with `None`, do the same work and
/// answer false) off the async threads (argon2 is slow by design).
async fn verify_password(password: &str, phc: Option<String>) -> ApiResult<bool> {
    password::verify_off_thread(password, phc).await.map_err(|e| ApiError::internal("auth.hash", &e))
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

    /// Check a user name and password. On success a session starts (pending its second
    /// factor where one is required).
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        role: Option<Role>,
        client: &ClientInfo,
    ) -> ApiResult<LoginOutcome> {
        let now = OffsetDateTime::now_utc();
        let row = sqlx::query(
            "SELECT user_id, password_hash, mfa_enrolled, must_change_password FROM auth_credentials WHERE username = $1",
        )
        .bind(username)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            // Same work as for a real user, then the same answer.
            verify_password(password, None).await?;
            self.failed(None, LoginFailure::UnknownUser, client).await?;
            return Err(ApiError::InvalidCredentials);
        };
        let user_id: Uuid = row.try_get("user_id")?;
        let locks = match self.reserve_attempt(user_id, now).await? {
            lockout::Attempt::Counted { locks } => locks,
            lockout::Attempt::Refused => {
                // As for an unknown user: the real hash is not checked while locked.
                verify_password(password, None).await?;
                self.failed(Some(user_id), LoginFailure::Locked, client).await?;
                return Err(ApiError::InvalidCredentials);
            }
        };
        let phc: String = row.try_get("password_hash")?;
        if !verify_password(password, Some(phc)).await? {
            self.failed(Some(user_id), LoginFailure::BadPassword, client).await?;
            return Err(ApiError::InvalidCredentials);
        }
        // From here the password was right; the attempt stays counted until the login
        // has fully succeeded.
        let user = self.read.user(user_id).await?;
        let Some(user) = user.filter(|u| u.active) else {
            self.failed(Some(user_id), LoginFailure::Deactivated, client).await?;
            return Err(ApiError::InvalidCredentials);
        };
        let role = match role {
            Some(r) if user.roles.contains(&r) => r,
            Some(_) => {
                self.failed(Some(user_id), LoginFailure::RoleNotHeld, client).await?;
                return Err(ApiError::InvalidCredentials);
            }
            None if user.roles.len() == 1 => {
                user.roles.iter().next().copied().ok_or(ApiError::InvalidCredentials)?
            }
            None => {
                self.failed(Some(user_id), LoginFailure::RoleRequired, client).await?;
                return Err(ApiError::InvalidInput { code: "auth.role_required" });
            }
        };
        let enrolled: bool = row.try_get("mfa_enrolled")?;
        let mfa_pending = enrolled || self.config.mfa_required_roles.contains(&role);
        if role == Role::Patient && user.patient_id.is_none() {
            return Err(ApiError::InvalidCredentials);
        }
        if !mfa_pending {
            lockout::reset(&self.pool, user_id).await?;
        } else if locks {
            // This attempt used the last slot: no second factor may be tried now.
            self.failed(Some(user_id), LoginFailure::Locked, client).await?;
            return Err(ApiError::InvalidCredentials);
        } else {
            lockout::release(&self.pool, user_id).await?;
        }
        let principal = Principal {
            user_id,
            session_id: Uuid::now_v7(),
            role,
            patient_id: if role == Role::Patient { user.patient_id } else { None },
            mfa_verified: !mfa_pending,
            must_change_password: row.try_get("must_change_password")?,
        };
        let token = new_token();
        let expires_at = now + dur(self.config.absolute_timeout);
        sqlx::query(
            "INSERT INTO auth_sessions (token_hash, session_id, user_id, role, patient_id, mfa_verified, created_at, last_seen, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8)",
        )
        .bind(token_hash(&token))
        .bind(principal.session_id)
        .bind(user_id)
        .bind(role.as_str())
        .bind(principal.patient_id)
        .bind(principal.mfa_verified)
        .bind(now)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        let event = if mfa_pending {
            DomainEvent::MfaChallenged(MfaChallenged { user_id, session_id: principal.session_id })
        } else {
            DomainEvent::LoginSucceeded(LoginSucceeded {
                user_id,
                session_id: principal.session_id,
                mfa: false,
                client_addr: client.addr.clone(),
            })
        };
        self.security(principal.actor(), event).await?;
        Ok(LoginOutcome { token, principal, mfa_pending, mfa_enrolled: enrolled, expires_at })
    }

    async fn reserve_attempt(&self, user_id: Uuid, now: OffsetDateTime) -> ApiResult<lockout::Attempt> {
        let until = now + dur(self.config.lockout_duration);
        lockout::reserve(&self.pool, user_id, now, self.config.lockout_threshold, until).await
    }

    async fn failed(
        &self,
        user_id: Option<Uuid>,
        failure: LoginFailure,
        client: &ClientInfo,
    ) -> ApiResult<()> {
        let actor = Actor { user_id: user_id.unwrap_or(Uuid::nil()), role: ledger::RoleName::system() };
        let event =
            DomainEvent::LoginFailed(LoginFailed { user_id, failure, client_addr: client.addr.clone() });
        self.security(actor, event).await
    }

    /// Replace one's own password: the current one is required (a wrong one counts
    /// towards lock-out and is recorded like a failed login), the new one must be
    /// acceptable and different.
    pub async fn change_password(
        &self,
        p: &Principal,
        old: &str,
        new: &str,
        client: &ClientInfo,
    ) -> ApiResult<()> {
        if !password::acceptable(new) || old == new {
            return Err(ApiError::InvalidInput { code: "auth.weak_password" });
        }
        let row = sqlx::query("SELECT username, password_hash FROM auth_credentials WHERE user_id = $1")
            .bind(p.user_id)
            .fetch_one(&self.pool)
            .await?;
        let locks = match self.reserve_attempt(p.user_id, OffsetDateTime::now_utc()).await? {
            lockout::Attempt::Counted { locks } => locks,
            lockout::Attempt::Refused => {
                self.end_session(p, SessionEnd::Revoked).await?;
                self.failed(Some(p.user_id), LoginFailure::Locked, client).await?;
                return Err(ApiError::Locked);
            }
        };
        let phc: String = row.try_get("password_hash")?;
        if !verify_password(old, Some(phc)).await? {
            self.failed(Some(p.user_id), LoginFailure::BadPassword, client).await?;
            if locks {
                self.end_session(p, SessionEnd::Revoked).await?;
                return Err(ApiError::Locked);
            }
            return Err(ApiError::InvalidCredentials);
        }
        let username: String = row.try_get("username")?;
        self.set_credentials(p.user_id, &username, new, false).await?;
        self.security(p.actor(), DomainEvent::PasswordChanged(PasswordChanged { user_id: p.user_id })).await
    }

    /// Start TOTP enrolment for a user who has none: a new secret, returned once.
    pub async fn enroll_mfa(&self, p: &Principal) -> ApiResult<(String, String)> {
        let row = sqlx::query("SELECT username, mfa_enrolled FROM auth_credentials WHERE user_id = $1")
            .bind(p.user_id)
            .fetch_one(&self.pool)
            .await?;
        if row.try_get::<bool, _>("mfa_enrolled")? {
            return Err(ApiError::Refused { code: "auth.mfa_already_enrolled" });
        }
        let username: String = row.try_get("username")?;
        let secret = totp::new_secret();
        let out = totp::provisioning(&secret, &username).ok_or(ApiError::unexpected("auth.totp"))?;
        sqlx::query("UPDATE auth_credentials SET totp_secret = $2 WHERE user_id = $1 AND NOT mfa_enrolled")
            .bind(p.user_id)
            .bind(secret)
            .execute(&self.pool)
            .await?;
        Ok(out)
    }

    /// Complete the second factor of a pending session (and the enrolment, the first time).
    /// Each attempt counts towards lock-out before the code is checked; a right code is
    /// the login's full success, and a code already used (even by a racing request) is
    /// wrong.
    pub async fn verify_mfa(&self, p: &Principal, code: &str, client: &ClientInfo) -> ApiResult<()> {
        let now = OffsetDateTime::now_utc();
        let row = sqlx::query(
            "SELECT totp_secret, mfa_enrolled, last_totp_step FROM auth_credentials WHERE user_id = $1",
        )
        .bind(p.user_id)
        .fetch_one(&self.pool)
        .await?;
        let Some(secret) = row.try_get::<Option<Vec<u8>>, _>("totp_secret")? else {
            return Err(ApiError::Refused { code: "auth.mfa_not_enrolled" });
        };
        let locks = match self.reserve_attempt(p.user_id, now).await? {
            lockout::Attempt::Counted { locks } => locks,
            lockout::Attempt::Refused => {
                self.end_session(p, SessionEnd::Revoked).await?;
                self.failed(Some(p.user_id), LoginFailure::Locked, client).await?;
                return Err(ApiError::Locked);
            }
        };
        let last: Option<i64> = row.try_get("last_totp_step")?;
        let unix = u64::try_from(now.unix_timestamp()).unwrap_or(0);
        let step = totp::matching_step(&secret, code, unix)
            .and_then(|s| i64::try_from(s).ok())
            .filter(|s| last.is_none_or(|l| *s > l));
        // Taking the step is atomic: of two requests with the same code, one wins.
        let taken = match step {
            Some(step) => {
                sqlx::query(
                    "UPDATE auth_credentials SET last_totp_step = $2, mfa_enrolled = true, failed_attempts = 0, \
                     locked_until = NULL WHERE user_id = $1 AND (last_totp_step IS NULL OR last_totp_step < $2)",
                )
                .bind(p.user_id)
                .bind(step)
                .execute(&self.pool)
                .await?
                .rows_affected()
                    == 1
            }
            None => false,
        };
        if !taken {
            self.failed(Some(p.user_id), LoginFailure::BadMfaCode, client).await?;
            if locks {
                self.end_session(p, SessionEnd::Revoked).await?;
                return Err(ApiError::Locked);
            }
            return Err(ApiError::InvalidCredentials);
        }
        let enrolled: bool = row.try_get("mfa_enrolled")?;
        sqlx::query("UPDATE auth_sessions SET mfa_verified = true, last_seen = $2 WHERE session_id = $1 AND ended_at IS NULL")
            .bind(p.session_id)
            .bind(now)
            .execute(&self.pool)
            .await?;
        self.sessions.forget(|s| s.session_id != p.session_id);
        if !enrolled {
            self.security(p.actor(), DomainEvent::MfaEnrolled(MfaEnrolled { user_id: p.user_id })).await?;
        }
        let event = DomainEvent::LoginSucceeded(LoginSucceeded {
            user_id: p.user_id,
            session_id: p.session_id,
            mfa: true,
            client_addr: client.addr.clone(),
        });
        self.security(p.actor(), event).await
    }

    /// The principal behind a bearer token, ending the session (and recording why) if
    /// it has been idle too long or outlived its absolute lifetime. A session looked up
    /// less than [`SESSION_RECHECK`] ago is not looked up again (its idle and absolute
    /// limits are still checked against the clock).
    pub async fn authenticate(&self, token: &str) -> ApiResult<Principal> {
        let now = OffsetDateTime::now_utc();
        let hash = token_hash(token);
        if let Some(c) = self.sessions.fresh(&hash) {
            if now < c.expires_at && now - c.last_seen < dur(self.config.idle_timeout) {
                return Ok(c.principal);
            }
        }
        // Taken before the look-up: the entry is trusted from when it was read, and is
        // not kept if any session changed meanwhile.
        let (epoch, checked) = (self.sessions.epoch(), Instant::now());
        let row = sqlx::query(
            "SELECT s.session_id, s.user_id, s.role, s.patient_id, s.mfa_verified, s.last_seen, s.expires_at, s.ended_at, \
             c.must_change_password FROM auth_sessions s JOIN auth_credentials c USING (user_id) WHERE s.token_hash = $1",
        )
        .bind(&hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Err(ApiError::Unauthenticated) };
        let p = principal_from(&row)?;
        if row.try_get::<Option<OffsetDateTime>, _>("ended_at")?.is_some() {
            return Err(ApiError::SessionExpired);
        }
        let mut last_seen: OffsetDateTime = row.try_get("last_seen")?;
        let expires_at: OffsetDateTime = row.try_get("expires_at")?;
        if now >= expires_at {
            self.end_session(&p, SessionEnd::AbsoluteTimeout).await?;
            return Err(ApiError::SessionExpired);
        }
        if now - last_seen >= dur(self.config.idle_timeout) {
            self.end_session(&p, SessionEnd::IdleTimeout).await?;
            return Err(ApiError::SessionExpired);
        }
        // Touch at most once a second: activity within the second changes nothing.
        if now - last_seen >= time::Duration::SECOND {
            let touched = sqlx::query(
                "UPDATE auth_sessions SET last_seen = $2 WHERE session_id = $1 AND ended_at IS NULL",
            )
            .bind(p.session_id)
            .bind(now)
            .execute(&self.pool)
            .await?
            .rows_affected();
            if touched == 0 {
                // Ended since it was read.
                return Err(ApiError::SessionExpired);
            }
            last_seen = now;
        }
        let cached = CachedSession { principal: p.clone(), last_seen, expires_at, checked };
        self.sessions.put(hash, cached, epoch);
        Ok(p)
    }

    /// Whether a session is still live, without counting as activity; ends it (and
    /// records why) when it has idled out or expired.
    pub async fn check_live(&self, p: &Principal) -> ApiResult<()> {
        let row =
            sqlx::query("SELECT last_seen, expires_at, ended_at FROM auth_sessions WHERE session_id = $1")
                .bind(p.session_id)
                .fetch_optional(&self.pool)
                .await?;
        let Some(row) = row else { return Err(ApiError::SessionExpired) };
        if row.try_get::<Option<OffsetDateTime>, _>("ended_at")?.is_some() {
            return Err(ApiError::SessionExpired);
        }
        let now = OffsetDateTime::now_utc();
        if now >= row.try_get::<OffsetDateTime, _>("expires_at")? {
            self.end_session(p, SessionEnd::AbsoluteTimeout).await?;
            return Err(ApiError::SessionExpired);
        }
        if now - row.try_get::<OffsetDateTime, _>("last_seen")? >= dur(self.config.idle_timeout) {
            self.end_session(p, SessionEnd::IdleTimeout).await?;
            return Err(ApiError::SessionExpired);
        }
        Ok(())
    }

    /// End a session once (the first caller records the event).
    pub async fn end_session(&self, p: &Principal, end: SessionEnd) -> ApiResult<()> {
        let reason = match end {
            SessionEnd::Logout => "logout",
            SessionEnd::IdleTimeout => "idle_timeout",
            SessionEnd::AbsoluteTimeout => "absolute_timeout",
            SessionEnd::Revoked => "revoked",
        };
        let ended = sqlx::query(
            "UPDATE auth_sessions SET ended_at = $2, end_reason = $3 WHERE session_id = $1 AND ended_at IS NULL",
        )
        .bind(p.session_id)
        .bind(OffsetDateTime::now_utc())
        .bind(reason)
        .execute(&self.pool)
        .await?
        .rows_affected();
        self.sessions.forget(|s| s.session_id != p.session_id);
        if ended == 1 {
            let event =
                DomainEvent::SessionEnded(SessionEnded { user_id: p.user_id, session_id: p.session_id, end });
            self.security(p.actor(), event).await?;
        }
        Ok(())
    }

    /// End every live session of a user (deactivation, role revocation).
    pub async fn revoke_user_sessions(&self, user_id: Uuid) -> ApiResult<usize> {
        let rows = sqlx::query(
            "SELECT session_id, user_id, role, patient_id, mfa_verified FROM auth_sessions \
             WHERE user_id = $1 AND ended_at IS NULL",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        for r in &rows {
            self.end_session(&principal_from(r)?, SessionEnd::Revoked).await?;
        }
        Ok(rows.len())
    }

    /// Automatic logoff of sessions nobody came back to: ends every session idle past
    /// the limit (or past its lifetime) and records it. Returns how many ended.
    pub async fn sweep(&self) -> ApiResult<usize> {
        let now = OffsetDateTime::now_utc();
        let rows = sqlx::query(
            "SELECT session_id, user_id, role, patient_id, mfa_verified, expires_at FROM auth_sessions \
             WHERE ended_at IS NULL AND (last_seen <= $1 OR expires_at <= $2)",
        )
        .bind(now - dur(self.config.idle_timeout))
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        for r in &rows {
            let p = principal_from(r)?;
            let expires_at: OffsetDateTime = r.try_get("expires_at")?;
            let end = if expires_at <= now { SessionEnd::AbsoluteTimeout } else { SessionEnd::IdleTimeout };
            self.end_session(&p, end).await?;
        }
        Ok(rows.len())
    }

    /// Grant break-glass access to one patient for this session.
    pub async fn grant_break_glass(
        &self,
        p: &Principal,
        patient_id: Uuid,
        reason: &str,
    ) -> ApiResult<OffsetDateTime> {
        let now = OffsetDateTime::now_utc();
        let expires = now + dur(self.config.break_glass_duration);
        sqlx::query(
            "INSERT INTO auth_break_glass (session_id, patient_id, reason, granted_at, expires_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (session_id, patient_id) DO UPDATE SET reason = EXCLUDED.reason, granted_at = EXCLUDED.granted_at, \
             expires_at = EXCLUDED.expires_at",
        )
        .bind(p.session_id)
        .bind(patient_id)
        .bind(reason)
        .bind(now)
        .bind(expires)
        .execute(&self.pool)
        .await?;
        Ok(expires)
    }

    /// The reason of a live break-glass grant of this session for this patient.
    pub async fn break_glass_reason(&self, p: &Principal, patient_id: Uuid) -> ApiResult<Option<String>> {
        let row = sqlx::query(
            "SELECT reason FROM auth_break_glass WHERE session_id = $1 AND patient_id = $2 AND expires_at > $3",
        )
        .bind(p.session_id)
        .bind(patient_id)
        .bind(OffsetDateTime::now_utc())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.try_get("reason")).transpose()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(user_id: Uuid) -> CachedSession {
        let now = OffsetDateTime::now_utc();
        CachedSession {
            principal: Principal {
                user_id,
                session_id: Uuid::now_v7(),
                role: Role::Nurse,
                patient_id: None,
                mfa_verified: true,
                must_change_password: false,
            },
            last_seen: now,
            expires_at: now + time::Duration::HOUR,
            checked: Instant::now(),
        }
    }

    #[test]
    fn a_look_up_that_began_before_a_change_is_not_kept() {
        let cache = SessionCache::default();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        // A look-up begins, the session is changed (logout) and forgotten, then the
        // look-up finishes with what it read before the change: not kept.
        let epoch = cache.epoch();
        cache.forget(|p| p.user_id != a);
        cache.put(b"a".to_vec(), session(a), epoch);
        assert!(cache.fresh(b"a").is_none());
        // A look-up after the change is kept, and forgotten by the next change.
        cache.put(b"a".to_vec(), session(a), cache.epoch());
        cache.put(b"b".to_vec(), session(b), cache.epoch());
        assert!(cache.fresh(b"a").is_some());
        cache.forget(|p| p.user_id != a);
        assert!(cache.fresh(b"a").is_none());
        assert!(cache.fresh(b"b").is_some(), "other sessions stay");
    }

    #[test]
    fn an_entry_is_trusted_for_at_most_the_recheck_interval() {
        let cache = SessionCache::default();
        let mut old = session(Uuid::now_v7());
        old.checked = Instant::now() - SESSION_RECHECK;
        cache.put(b"old".to_vec(), old, cache.epoch());
        assert!(cache.fresh(b"old").is_none());
    }
}
