//! Care teams (who "their own patients" are) and break-glass access.

use async_graphql::{Context, Object, SimpleObject};
use domain::chart::CareTeamMember as DMember;
use domain::commands::Command;
use domain::events::{AccessAction, ResourceKind};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::ApiResult;

use super::execute;
use super::types::{CareRole, Written};
use crate::access::{authorize, parts, refuse, wait_for};
use crate::error::ApiError;
use crate::policy::Operation;

#[derive(SimpleObject, Clone)]
pub struct CareTeamMember {
    pub clinician_id: Uuid,
    pub care_role: CareRole,
    pub assigned_at: OffsetDateTime,
    pub assigned_by: Uuid,
}

impl From<&DMember> for CareTeamMember {
    fn from(m: &DMember) -> Self {
        Self {
            clinician_id: m.clinician_id,
            care_role: m.care_role.into(),
            assigned_at: m.assigned_at.to_datetime(),
            assigned_by: m.assigned_by,
        }
    }
}

#[derive(SimpleObject)]
pub struct BreakGlassGrant {
    pub patient_id: Uuid,
    pub expires_at: OffsetDateTime,
}

#[derive(Debug, Default)]
pub struct CareQuery;

#[Object]
impl CareQuery {
    async fn care_team(
        &self,
        ctx: &Context<'_>,
        patient_id: Uuid,
        min_position: Option<u64>,
    ) -> ApiResult<Vec<CareTeamMember>> {
        let (state, _) = parts(ctx)?;
        authorize(ctx, Operation::ReadCareTeam, Some(patient_id)).await?;
        wait_for(state, min_position).await?;
        Ok(state.read.care_team(patient_id).await?.iter().map(Into::into).collect())
    }

    /// The patients on the caller's own care team.
    async fn my_patients(&self, ctx: &Context<'_>) -> ApiResult<Vec<Uuid>> {
        let (state, req) = parts(ctx)?;
        let p = req.principal()?;
        Ok(state.read.patients_of(p.user_id).await?)
    }
}

#[derive(Debug, Default)]
pub struct CareMutation;

#[Object]
impl CareMutation {
    /// Put a clinician on the patient's care team. Nobody assigns themselves
    /// (`domain.self_assignment`): an administrator would give themselves a clinical
    /// role's access, a clinician under break-glass would make it permanent.
    async fn assign_care_team_member(
        &self,
        ctx: &Context<'_>,
        patient_id: Uuid,
        clinician_id: Uuid,
        care_role: CareRole,
        event_id: Uuid,
    ) -> ApiResult<Written> {
        let (_, req) = parts(ctx)?;
        if req.principal()?.user_id == clinician_id {
            let code = domain::DomainError::SelfAssignment.code();
            return Err(refuse(ctx, Operation::ManageCareTeam, Some(patient_id), code).await);
        }
        let cmd = Command::AssignCareTeamMember { clinician_id, care_role: care_role.into() };
        execute(ctx, Operation::ManageCareTeam, patient_id, event_id, cmd).await
    }

    async fn remove_care_team_member(
        &self,
        ctx: &Context<'_>,
        patient_id: Uuid,
        clinician_id: Uuid,
        event_id: Uuid,
    ) -> ApiResult<Written> {
        let cmd = Command::RemoveCareTeamMember { clinician_id };
        execute(ctx, Operation::ManageCareTeam, patient_id, event_id, cmd).await
    }

    /// Emergency access to a patient outside the caller's care team: time-limited,
    /// with a stated reason that is recorded in every access it grants.
    async fn break_glass(
        &self,
        ctx: &Context<'_>,
        patient_id: Uuid,
        reason: String,
        min_position: Option<u64>,
    ) -> ApiResult<BreakGlassGrant> {
        let (state, req) = parts(ctx)?;
        let p = authorize(ctx, Operation::BreakGlass, Some(patient_id)).await?;
        let trimmed = reason.trim();
        if trimmed.len() < 10 || trimmed.len() > 1000 {
            return Err(ApiError::InvalidInput { code: "break_glass.reason_required" });
        }
        wait_for(state, min_position).await?;
        if req.current_chart(state, patient_id, true).await?.is_none_or(|c| c.demographics.is_none()) {
            return Err(ApiError::NotFound);
        }
        let expires = state.auth.grant_break_glass(p, patient_id, trimmed).await?;
        // The grant itself is an access to the record, flagged with its reason.
        req.collector.add(
            patient_id,
            ResourceKind::Demographics,
            AccessAction::View,
            Some(trimmed.to_owned()),
        );
        Ok(BreakGlassGrant { patient_id, expires_at: expires })
    }
}
