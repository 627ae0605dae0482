//! Role grants under separation of duties (`domain::staff`): nobody grants a role to
//! themselves, and a role that reads clinical content or grants roles takes effect only
//! when a second administrator approves it.
//!
//! `grantRole` (and `createUser`, for each such role it names) writes a
//! `staff.role_grant_proposed` whose event id is the grant's id; `approveRoleGrant` by
//! another administrator writes `staff.role_grant_approved`, which adds the role;
//! `cancelRoleGrant` withdraws a pending grant; `roleGrants` lists grants (pending ones
//! for the administrators who review them). Refusals (`domain.self_grant`,
//! `domain.self_approval`, ...) are recorded as `security.access_denied`.
//!
//! Decisions are taken on the read models, which every write here waits for, under one
//! lock per process, so two decisions on grants never interleave within a server. Across
//! servers sharing a database, two approvals of one grant can both be written; the fold
//! applies the first only (`projections::staff`), and neither can be by the proposer or
//! the grantee. The first-administrator exception (`domain::staff::Approval`) is
//! checked under the same lock.

use std::sync::OnceLock;

use async_graphql::{Context, Enum, Object, SimpleObject};
use domain::events::{DomainEvent, Role as DRole};
use domain::staff::{self as rules, Approval, GrantStatus as DStatus, RoleGrant as DGrant};
use projections::staff::GrantRow;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use uuid::Uuid;

use super::staff::staff_event;
use super::types::{Role, Written};
use crate::access::{authorize, parts, refuse};
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::policy::Operation;
use crate::AppState;

#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
#[graphql(remote = "domain::staff::GrantStatus")]
pub enum RoleGrantStatus {
    /// Waiting for a second administrator.
    Pending,
    /// In effect: the user has the role (until it is revoked).
    Approved,
    /// Withdrawn before it took effect.
    Cancelled,
}

/// A role grant: who proposed which role for whom, and who decided it.
#[derive(SimpleObject, Clone, Debug)]
pub struct RoleGrant {
    /// The proposal's event id (for a role granted at once, the grant's event id).
    pub grant_id: Uuid,
    pub user_id: Uuid,
    pub role: Role,
    pub status: RoleGrantStatus,
    pub proposed_by: Uuid,
    pub proposed_at: OffsetDateTime,
    /// Who approved or cancelled it.
    pub decided_by: Option<Uuid>,
    pub decided_at: Option<OffsetDateTime>,
    /// The position of the event this answer wrote (for a list: of the grant's last
    /// event); wait for it with `minPosition` to read your write.
    pub position: u64,
    /// True when this was a retry of an event already stored (nothing new was written).
    pub replayed: bool,
}

impl From<GrantRow> for RoleGrant {
    fn from(g: GrantRow) -> Self {
        Self {
            grant_id: g.state.grant.grant_id,
            user_id: g.state.grant.user_id,
            role: g.state.grant.role.into(),
            status: g.state.status.into(),
            proposed_by: g.state.proposed_by,
            proposed_at: g.proposed_at.to_datetime(),
            decided_by: g.decided_by,
            decided_at: g.decided_at.map(ledger::Timestamp::to_datetime),
            position: g.position,
            replayed: false,
        }
    }
}

/// The process's lock for decisions on grants.
fn lock() -> &'static tokio::sync::Mutex<()> {
    static LOCK: OnceLock<tokio::sync::Mutex<()>> = OnceLock::new();
    LOCK.get_or_init(|| tokio::sync::Mutex::new(()))
}

/// A UUIDv7 derived from `base` (same millisecond) and `what`: the ids of the events a
/// request writes besides its own, so that a retry writes the same ones (and is answered
/// as a replay by the store).
pub(super) fn derived_id(base: Uuid, what: &str) -> Uuid {
    let h = Sha256::new()
        .chain_update(b"chartledger.derived-id\0")
        .chain_update(base.as_bytes())
        .chain_update(what)
        .finalize();
    let mut b = *base.as_bytes();
    b[6] = 0x70 | (h[0] & 0x0f);
    b[7] = h[1];
    b[8] = 0x80 | (h[2] & 0x3f);
    b[9..16].copy_from_slice(&h[3..10]);
    Uuid::from_bytes(b)
}

fn refused(e: domain::DomainError) -> &'static str {
    e.code()
}

/// The grant as the read model has it now, with the position and replay flag of `w`.
async fn answer(state: &AppState, grant_id: Uuid, w: &Written) -> ApiResult<RoleGrant> {
    let row = state.read.role_grant(grant_id).await?.ok_or(ApiError::unexpected("api.grant_missing"))?;
    Ok(RoleGrant { position: w.position, replayed: w.replayed, ..row.into() })
}

/// Propose `grant` (its id is the proposal's event id) by `p`, or grant it at once if
/// the role needs no second administrator. Refusals are recorded.
pub(super) async fn propose(ctx: &Context<'_>, p: &Principal, grant: DGrant) -> ApiResult<RoleGrant> {
    let (state, _) = parts(ctx)?;
    if let Err(e) = rules::propose(p.user_id, &grant) {
        return Err(refuse(ctx, Operation::ManageStaff, None, refused(e)).await);
    }
    if !grant.role.needs_second_approval() {
        let event = DomainEvent::RoleGranted(domain::events::RoleChanged {
            user_id: grant.user_id,
            role: grant.role,
        });
        let w = staff_event(state, p.actor(), grant.grant_id, event).await?;
        let now = OffsetDateTime::now_utc();
        return Ok(RoleGrant {
            grant_id: grant.grant_id,
            user_id: grant.user_id,
            role: grant.role.into(),
            status: RoleGrantStatus::Approved,
            proposed_by: p.user_id,
            proposed_at: now,
            decided_by: Some(p.user_id),
            decided_at: Some(now),
            position: w.position,
            replayed: w.replayed,
        });
    }
    let _decisions = lock().lock().await;
    let grant_id = grant.grant_id;
    let admin = grant.role == DRole::Administrator;
    let mut w = staff_event(state, p.actor(), grant_id, DomainEvent::RoleGrantProposed(grant)).await?;
    if admin && state.read.first_administrator_grant_open(grant_id).await? {
        let row = state.read.role_grant(grant_id).await?.ok_or(ApiError::unexpected("api.grant_missing"))?;
        if row.state.status == DStatus::Pending && row.state.proposed_by == p.user_id {
            let approved = rules::approve(&row.state, p.user_id, Approval::FirstAdministrator)
                .map_err(|e| ApiError::Refused { code: e.code() })?;
            let id = derived_id(grant_id, "approval");
            w = staff_event(state, p.actor(), id, DomainEvent::RoleGrantApproved(approved)).await?;
        }
    }
    answer(state, grant_id, &w).await
}

#[derive(Debug, Default)]
pub struct GrantQuery;

#[Object]
impl GrantQuery {
    /// Role grants, oldest first (administrators and auditors): pending ones to review
    /// with `status: PENDING`, or one user's with `userId`. At most `first` (1-1000).
    async fn role_grants(
        &self,
        ctx: &Context<'_>,
        status: Option<RoleGrantStatus>,
        user_id: Option<Uuid>,
        #[graphql(default = 100)] first: i32,
    ) -> ApiResult<Vec<RoleGrant>> {
        let (state, _) = parts(ctx)?;
        authorize(ctx, Operation::ReadStaff, None).await?;
        if !(1..=1000).contains(&first) {
            return Err(ApiError::InvalidInput { code: "request.bad_page_size" });
        }
        let rows = state.read.role_grants(status.map(Into::into), user_id, first.unsigned_abs()).await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }
}

#[derive(Debug, Default)]
pub struct GrantMutation;

#[Object]
impl GrantMutation {
    /// Approve a pending role grant: the role takes effect now. The approver must be an
    /// administrator other than its proposer (`domain.self_approval`) and its grantee
    /// (`domain.self_grant`); a decided grant is `domain.grant_not_pending`.
    async fn approve_role_grant(
        &self,
        ctx: &Context<'_>,
        grant_id: Uuid,
        event_id: Uuid,
    ) -> ApiResult<RoleGrant> {
        decide(ctx, grant_id, event_id, true).await
    }

    /// Withdraw a pending role grant (any administrator, its proposer included).
    async fn cancel_role_grant(
        &self,
        ctx: &Context<'_>,
        grant_id: Uuid,
        event_id: Uuid,
    ) -> ApiResult<RoleGrant> {
        decide(ctx, grant_id, event_id, false).await
    }
}

async fn decide(ctx: &Context<'_>, grant_id: Uuid, event_id: Uuid, approve: bool) -> ApiResult<RoleGrant> {
    let (state, _) = parts(ctx)?;
    let p = authorize(ctx, Operation::ManageStaff, None).await?;
    let _decisions = lock().lock().await;
    let row = state.read.role_grant(grant_id).await?.ok_or(ApiError::NotFound)?;
    let wrap = |g: DGrant| {
        if approve {
            DomainEvent::RoleGrantApproved(g)
        } else {
            DomainEvent::RoleGrantCancelled(g)
        }
    };
    // A retry of this very decision is answered with its result.
    if state.store.event_by_id(event_id).await.map_err(ApiError::from)?.is_some() {
        let w = staff_event(state, p.actor(), event_id, wrap(row.state.grant.clone())).await?;
        return answer(state, grant_id, &w).await;
    }
    let decided = if approve {
        rules::approve(&row.state, p.user_id, Approval::SecondAdministrator)
    } else {
        rules::cancel(&row.state)
    };
    let grant = match decided {
        Ok(g) => g,
        Err(e) => return Err(refuse(ctx, Operation::ManageStaff, None, refused(e)).await),
    };
    if approve && !state.read.user(grant.user_id).await?.is_some_and(|u| u.active) {
        return Err(ApiError::Refused { code: "staff.user_deactivated" });
    }
    let w = staff_event(state, p.actor(), event_id, wrap(grant)).await?;
    answer(state, grant_id, &w).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_v7_stable_and_distinct() {
        let base = Uuid::now_v7();
        let a = derived_id(base, "approval");
        assert_eq!(ledger::ids::validate_event_id(a), Ok(a));
        assert_eq!(a, derived_id(base, "approval"));
        assert_ne!(a, derived_id(base, "grant:physician"));
        assert_ne!(a, base);
        assert_eq!(a.get_timestamp(), base.get_timestamp());
    }
}
