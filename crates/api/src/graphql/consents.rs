//! Consent: the version in force and its history, recording and withdrawing.

use std::collections::BTreeSet;

use async_graphql::{Context, Object, SimpleObject};
use domain::chart::{ConsentChange, ConsentVersion as DConsent};
use domain::commands::Command;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::ApiResult;

use super::types::{now, ts, ConsentMethod, ConsentPurpose, Written};
use super::{execute, execute_timed};
use crate::access::{authorize, parts, wait_for};
use crate::policy::Operation;

#[derive(SimpleObject, Clone)]
pub struct ConsentVersion {
    pub version: u32,
    pub consent_id: Uuid,
    /// `recorded` or `withdrawn`.
    pub change: String,
    /// The purposes granted after this change.
    pub granted: Vec<ConsentPurpose>,
    /// For a withdrawal: the purposes withdrawn.
    pub withdrawn: Vec<ConsentPurpose>,
    pub method: Option<ConsentMethod>,
    pub witness_id: Option<Uuid>,
    pub effective_at: OffsetDateTime,
    pub recorded_at: OffsetDateTime,
    pub recorded_by: Uuid,
    pub position: u64,
}

impl From<&DConsent> for ConsentVersion {
    fn from(c: &DConsent) -> Self {
        let (method, withdrawn) = match &c.change {
            ConsentChange::Recorded { method, .. } => (Some((*method).into()), vec![]),
            ConsentChange::Withdrawn { purposes } => (None, purposes.iter().map(|p| (*p).into()).collect()),
        };
        Self {
            version: c.version,
            consent_id: c.consent_id,
            change: c.change.as_str().to_owned(),
            granted: c.granted.iter().map(|p| (*p).into()).collect(),
            withdrawn,
            method,
            witness_id: c.witness_id,
            effective_at: c.effective_at.to_datetime(),
            recorded_at: c.recorded_at.to_datetime(),
            recorded_by: c.recorded_by,
            position: c.position,
        }
    }
}

#[derive(Debug, Default)]
pub struct ConsentQuery;

#[Object]
impl ConsentQuery {
    /// Every consent version of a patient, oldest first (the last is in force).
    async fn consents(
        &self,
        ctx: &Context<'_>,
        patient_id: Uuid,
        min_position: Option<u64>,
    ) -> ApiResult<Vec<ConsentVersion>> {
        let (state, _) = parts(ctx)?;
        authorize(ctx, Operation::ReadConsents, Some(patient_id)).await?;
        wait_for(state, min_position).await?;
        Ok(state.read.consent_history(patient_id).await?.iter().map(Into::into).collect())
    }
}

#[derive(Debug, Default)]
pub struct ConsentMutation;

#[Object]
impl ConsentMutation {
    /// Record a new consent (it supersedes the one in force).
    #[allow(clippy::too_many_arguments)]
    async fn record_consent(
        &self,
        ctx: &Context<'_>,
        patient_id: Uuid,
        consent_id: Uuid,
        granted: Vec<ConsentPurpose>,
        method: ConsentMethod,
        witness_id: Option<Uuid>,
        given_at: Option<OffsetDateTime>,
        event_id: Uuid,
    ) -> ApiResult<Written> {
        let given = given_at.is_some();
        let cmd = Command::RecordConsent {
            consent_id,
            granted: granted.into_iter().map(Into::into).collect::<BTreeSet<_>>(),
            method: method.into(),
            witness_id,
            given_at: given_at.map(ts).transpose()?.unwrap_or_else(now),
        };
        execute_timed(ctx, Operation::WriteConsents, patient_id, event_id, cmd, given).await
    }

    /// Withdraw purposes from the consent in force (all of them when none are named).
    async fn withdraw_consent(
        &self,
        ctx: &Context<'_>,
        patient_id: Uuid,
        purposes: Vec<ConsentPurpose>,
        witness_id: Option<Uuid>,
        event_id: Uuid,
    ) -> ApiResult<Written> {
        let cmd = Command::WithdrawConsent {
            purposes: purposes.into_iter().map(Into::into).collect(),
            witness_id,
            withdrawn_at: now(),
        };
        execute(ctx, Operation::WriteConsents, patient_id, event_id, cmd).await
    }
}
