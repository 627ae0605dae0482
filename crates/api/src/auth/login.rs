//! Login, lock-out and the second factor: every attempt is counted before it is
//! checked, and every success or failure is a signed `$security` event before the
//! caller gets an answer.

use super::*;

/// Check a password against its PHC string (or, with `None`, do the same work and
/// answer false) off the async threads (argon2 is slow by design).
async fn verify_password(password: &str, phc: Option<String>) -> ApiResult<bool> {
    password::verify_off_thread(password, phc).await.map_err(|e| ApiError::internal("auth.hash", &e))
}

impl Auth {
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
}
