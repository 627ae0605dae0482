//! Sessions: log in, second factor, log out, who am I.

use async_graphql::{Context, Object, SimpleObject};
use domain::events::SessionEnd;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::ApiResult;

use super::types::Role;
use crate::access::parts;

#[derive(SimpleObject)]
pub struct LoginResult {
    /// The bearer token: send it as `Authorization: Bearer <token>`.
    pub token: String,
    pub user_id: Uuid,
    pub session_id: Uuid,
    pub role: Role,
    /// A second factor is required before anything else: `verifyMfa` (after
    /// `enrollMfa` when `mfaEnrolled` is false).
    pub mfa_required: bool,
    pub mfa_enrolled: bool,
    /// The password was set by someone else: `changePassword` before anything else.
    pub password_change_required: bool,
    pub expires_at: OffsetDateTime,
}

#[derive(SimpleObject)]
pub struct MfaEnrollment {
    /// The TOTP secret (base32), shown once.
    pub secret: String,
    /// `otpauth://` URL for authenticator apps.
    pub otpauth_url: String,
}

#[derive(SimpleObject)]
pub struct Me {
    pub user_id: Uuid,
    pub session_id: Uuid,
    pub role: Role,
    pub patient_id: Option<Uuid>,
    pub mfa_verified: bool,
}

#[derive(Debug, Default)]
pub struct AuthQuery;

#[Object]
impl AuthQuery {
    /// The current session.
    async fn me(&self, ctx: &Context<'_>) -> ApiResult<Me> {
        let (_, req) = parts(ctx)?;
        let p = req.session()?;
        Ok(Me {
            user_id: p.user_id,
            session_id: p.session_id,
            role: p.role.into(),
            patient_id: p.patient_id,
            mfa_verified: p.mfa_verified,
        })
    }

    /// Seconds of inactivity before automatic logoff (for the client's countdown).
    async fn idle_timeout_seconds(&self, ctx: &Context<'_>) -> ApiResult<u64> {
        let (state, _) = parts(ctx)?;
        Ok(state.config.idle_timeout.as_secs())
    }
}

#[derive(Debug, Default)]
pub struct AuthMutation;

#[Object]
impl AuthMutation {
    /// Log in with a user name and password. Users with several roles name the one to
    /// act in.
    async fn login(
        &self,
        ctx: &Context<'_>,
        username: String,
        password: String,
        role: Option<Role>,
    ) -> ApiResult<LoginResult> {
        let (state, req) = parts(ctx)?;
        let out = state.auth.login(&username, &password, role.map(Into::into), &req.client).await?;
        Ok(LoginResult {
            token: out.token,
            user_id: out.principal.user_id,
            session_id: out.principal.session_id,
            role: out.principal.role.into(),
            mfa_required: out.mfa_pending,
            mfa_enrolled: out.mfa_enrolled,
            password_change_required: out.principal.must_change_password,
            expires_at: out.expires_at,
        })
    }

    /// Start TOTP enrolment (only for a user without a second factor yet).
    async fn enroll_mfa(&self, ctx: &Context<'_>) -> ApiResult<MfaEnrollment> {
        let (state, req) = parts(ctx)?;
        let p = req.session()?;
        let (secret, otpauth_url) = state.auth.enroll_mfa(p).await?;
        Ok(MfaEnrollment { secret, otpauth_url })
    }

    /// Give the current TOTP code; completes the login (and the enrolment).
    async fn verify_mfa(&self, ctx: &Context<'_>, code: String) -> ApiResult<bool> {
        let (state, req) = parts(ctx)?;
        let p = req.session()?;
        state.auth.verify_mfa(p, &code, &req.client).await?;
        Ok(true)
    }

    /// Replace one's own password (required after an initial or reset password).
    async fn change_password(
        &self,
        ctx: &Context<'_>,
        old_password: String,
        new_password: String,
    ) -> ApiResult<bool> {
        let (state, req) = parts(ctx)?;
        let p = req.verified()?;
        state.auth.change_password(p, &old_password, &new_password, &req.client).await?;
        Ok(true)
    }

    /// End the current session.
    async fn logout(&self, ctx: &Context<'_>) -> ApiResult<bool> {
        let (state, req) = parts(ctx)?;
        let p = req.session()?;
        state.auth.end_session(p, SessionEnd::Logout).await?;
        Ok(true)
    }
}
