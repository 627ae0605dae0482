//! Staff and patient accounts, roles, deactivation.

use std::collections::BTreeSet;

use async_graphql::{Context, Object, SimpleObject};
use domain::events::{DomainEvent, Role as DRole, RoleChanged, UserCreated, UserDeactivated};
use domain::staff::RoleGrant as DRoleGrant;
use uuid::Uuid;

use crate::error::ApiResult;

use super::grants::{self, RoleGrant};
use super::types::{Role, Written};
use crate::access::{authorize, parts};
use crate::auth::Principal;
use crate::error::ApiError;
use crate::policy::Operation;
use crate::AppState;

#[derive(SimpleObject)]
pub struct User {
    pub user_id: Uuid,
    pub username: String,
    pub display_name: String,
    pub roles: Vec<Role>,
    pub patient_id: Option<Uuid>,
    pub active: bool,
}

#[derive(Debug, Default)]
pub struct StaffQuery;

#[Object]
impl StaffQuery {
    async fn user(&self, ctx: &Context<'_>, user_id: Uuid) -> ApiResult<Option<User>> {
        let (state, _) = parts(ctx)?;
        authorize(ctx, Operation::ReadStaff, None).await?;
        Ok(state.read.user(user_id).await?.map(|u| User {
            user_id: u.user_id,
            username: u.username,
            display_name: u.display_name,
            roles: u.roles.into_iter().map(Into::into).collect(),
            patient_id: u.patient_id,
            active: u.active,
        }))
    }
}

/// Write a staff event and wait until the read models have it (a new user can log in
/// as soon as the mutation answers).
pub(super) async fn staff_event(
    state: &AppState,
    actor: ledger::Actor,
    event_id: Uuid,
    event: DomainEvent,
) -> ApiResult<Written> {
    let done = state.records.record_system(actor, event_id, event).await?;
    state.projections.wait_for(done.position, state.config.max_wait).await?;
    Ok(done.into())
}

#[derive(Debug, Default)]
pub struct StaffMutation;

#[Object]
impl StaffMutation {
    /// Create an account with an initial password (at least 12 characters). Patient
    /// accounts name their own record in `patientId`. Roles that need a second
    /// administrator (every role but receptionist) are not given at once: each is
    /// proposed as a pending grant (`roleGrants(userId:)`), in effect once another
    /// administrator approves it (`approveRoleGrant`).
    #[allow(clippy::too_many_arguments)]
    async fn create_user(
        &self,
        ctx: &Context<'_>,
        user_id: Uuid,
        username: String,
        display_name: String,
        roles: Vec<Role>,
        patient_id: Option<Uuid>,
        initial_password: String,
        event_id: Uuid,
    ) -> ApiResult<Written> {
        let (state, _) = parts(ctx)?;
        let p = authorize(ctx, Operation::ManageStaff, None).await?;
        let roles: BTreeSet<DRole> = roles.into_iter().map(Into::into).collect();
        if roles.is_empty() {
            return Err(ApiError::InvalidInput { code: "staff.roles_missing" });
        }
        if roles.contains(&DRole::Patient) != patient_id.is_some()
            || (roles.contains(&DRole::Patient) && roles.len() > 1)
        {
            return Err(ApiError::InvalidInput { code: "staff.patient_account" });
        }
        let (pending, at_once): (BTreeSet<DRole>, BTreeSet<DRole>) =
            roles.into_iter().partition(|r| r.needs_second_approval());
        let event =
            UserCreated { user_id, username: username.clone(), display_name, roles: at_once, patient_id };
        event.validate().map_err(|e| ApiError::Refused { code: e.code() })?;
        if user_id == p.user_id {
            return Err(ApiError::Refused { code: "staff.user_exists" });
        }
        if state.read.user(user_id).await?.is_some() {
            // A retry of this very creation is answered with its result; anything else
            // must not reset an existing account's password.
            if state.store.event_by_id(event_id).await.map_err(ApiError::from)?.is_some() {
                let written =
                    staff_event(state, p.actor(), event_id, DomainEvent::UserCreated(event)).await?;
                propose_all(ctx, p, user_id, event_id, pending).await?;
                return Ok(written);
            }
            return Err(ApiError::Refused { code: "staff.user_exists" });
        }
        if state.auth.username_taken(&username).await? {
            return Err(ApiError::Refused { code: "staff.username_taken" });
        }
        state.auth.set_credentials(user_id, &username, &initial_password, true).await?;
        let written = staff_event(state, p.actor(), event_id, DomainEvent::UserCreated(event)).await?;
        propose_all(ctx, p, user_id, event_id, pending).await?;
        Ok(written)
    }

    /// Grant a role. Nobody grants a role to themselves (`domain.self_grant`). Every
    /// role but receptionist needs a second administrator: the answer is then a
    /// `PENDING` grant (its id is `eventId`) that takes effect when another
    /// administrator approves it (`approveRoleGrant`).
    async fn grant_role(
        &self,
        ctx: &Context<'_>,
        user_id: Uuid,
        role: Role,
        event_id: Uuid,
    ) -> ApiResult<RoleGrant> {
        let (state, _) = parts(ctx)?;
        let p = authorize(ctx, Operation::ManageStaff, None).await?;
        if state.read.user(user_id).await?.is_none() {
            return Err(ApiError::NotFound);
        }
        grants::propose(ctx, p, DRoleGrant { grant_id: event_id, user_id, role: role.into() }).await
    }

    /// Revoke a role; the user's sessions end (they may have been acting in it).
    async fn revoke_role(
        &self,
        ctx: &Context<'_>,
        user_id: Uuid,
        role: Role,
        event_id: Uuid,
    ) -> ApiResult<Written> {
        let (state, _) = parts(ctx)?;
        let p = authorize(ctx, Operation::ManageStaff, None).await?;
        if state.read.user(user_id).await?.is_none() {
            return Err(ApiError::NotFound);
        }
        let event = DomainEvent::RoleRevoked(RoleChanged { user_id, role: role.into() });
        let written = staff_event(state, p.actor(), event_id, event).await?;
        state.auth.revoke_user_sessions(user_id).await?;
        Ok(written)
    }

    /// Deactivate an account: it can no longer log in, and its sessions end now.
    async fn deactivate_user(&self, ctx: &Context<'_>, user_id: Uuid, event_id: Uuid) -> ApiResult<Written> {
        let (state, _) = parts(ctx)?;
        let p = authorize(ctx, Operation::ManageStaff, None).await?;
        if p.user_id == user_id {
            return Err(ApiError::Refused { code: "staff.cannot_deactivate_self" });
        }
        let written = staff_event(
            state,
            p.actor(),
            event_id,
            DomainEvent::UserDeactivated(UserDeactivated { user_id }),
        )
        .await?;
        state.auth.revoke_user_sessions(user_id).await?;
        Ok(written)
    }
}

/// Propose each of `roles` for a user being created by `create_event`: one grant per
/// role, with ids derived from the creation's event id (a retry proposes the same).
async fn propose_all(
    ctx: &Context<'_>,
    p: &Principal,
    user_id: Uuid,
    create_event: Uuid,
    roles: BTreeSet<DRole>,
) -> ApiResult<()> {
    for role in roles {
        let grant_id = grants::derived_id(create_event, &format!("grant:{}", role.as_str()));
        grants::propose(ctx, p, DRoleGrant { grant_id, user_id, role }).await?;
    }
    Ok(())
}
