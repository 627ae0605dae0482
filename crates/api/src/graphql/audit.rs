//! The audit trail: who accessed which record (by patient, by user, by time), and the
//! security events (logins, MFA, logoffs, refusals).

use async_graphql::connection::{query, Connection, Edge, EmptyFields};
use async_graphql::{Context, Object, SimpleObject};
use domain::chart::AccessLogEntry;
use domain::events::{DomainEvent, Role};
use domain::streams;
use projections::queries::AccessQuery;
use store::Direction;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::ApiResult;

use super::types::{page_size, ts, AccessAction, PurposeOfUse, ResourceKind};
use crate::access::{authorize, parts, wait_for};
use crate::error::ApiError;
use crate::policy::Operation;

/// One access to a record.
#[derive(SimpleObject, Clone)]
pub struct AccessEvent {
    pub position: u64,
    pub event_id: Uuid,
    pub patient_id: Uuid,
    pub user_id: Uuid,
    pub role: String,
    pub accessed_at: OffsetDateTime,
    pub resources: Vec<ResourceKind>,
    pub action: AccessAction,
    pub purpose: PurposeOfUse,
    /// The reason given for break-glass access. Free text that may hold PHI: shown to
    /// auditors and to the patient only, `null` for everyone else (`purpose` still says
    /// `EMERGENCY`).
    pub break_glass_reason: Option<String>,
    pub client_addr: Option<String>,
    pub user_agent: Option<String>,
    pub session_id: Option<Uuid>,
    /// The case or matter named for the access (auditors and legal staff must name one
    /// for history and point-in-time reads).
    pub case_ref: Option<String>,
}

impl From<AccessLogEntry> for AccessEvent {
    fn from(a: AccessLogEntry) -> Self {
        Self {
            position: a.position,
            event_id: a.event_id,
            patient_id: a.patient_id,
            user_id: a.user_id,
            role: a.role,
            accessed_at: a.accessed_at.to_datetime(),
            resources: a.resources.into_iter().map(Into::into).collect(),
            action: a.action.into(),
            purpose: a.purpose.into(),
            break_glass_reason: a.break_glass_reason,
            client_addr: a.client_addr,
            user_agent: a.user_agent,
            session_id: a.session_id,
            case_ref: a.case_ref,
        }
    }
}

/// A security event (`$security`), with its payload as in `schema/events.md`.
#[derive(SimpleObject, Clone)]
pub struct SecurityEvent {
    pub position: u64,
    pub revision: u64,
    pub event_type: String,
    pub recorded_at: OffsetDateTime,
    pub actor_id: Uuid,
    pub actor_role: String,
    pub payload: Option<serde_json::Value>,
}

#[derive(Debug, Default)]
pub struct AuditQuery;

#[Object]
impl AuditQuery {
    /// Who accessed records, newest first. With `patientId`: that record's log (patients
    /// see their own); without: the trail across patients (administrators, auditors).
    /// `first`: 1 to 500, default 50.
    #[allow(clippy::too_many_arguments)]
    async fn access_log(
        &self,
        ctx: &Context<'_>,
        patient_id: Option<Uuid>,
        user_id: Option<Uuid>,
        from: Option<OffsetDateTime>,
        to: Option<OffsetDateTime>,
        after: Option<String>,
        first: Option<i32>,
        min_position: Option<u64>,
    ) -> ApiResult<Connection<u64, AccessEvent, EmptyFields, EmptyFields>> {
        let (state, _) = parts(ctx)?;
        let p = match patient_id {
            Some(p) => authorize(ctx, Operation::ReadAccessLog, Some(p)).await?,
            None => authorize(ctx, Operation::ReadAuditTrail, None).await?,
        };
        let show_reasons = matches!(p.role, Role::Auditor | Role::Patient);
        let first = page_size(first, 50, 500)?;
        let (from, to) = (from.map(ts).transpose()?, to.map(ts).transpose()?);
        wait_for(state, min_position).await?;
        query(after, None, i32::try_from(first).ok(), None, |after: Option<u64>, _, first, _| async move {
            let want = first.unwrap_or(50);
            let q = AccessQuery {
                patient_id,
                user_id,
                from,
                to,
                limit: u32::try_from(want + 1).unwrap_or(501),
                before_position: after,
            };
            let mut rows = state.read.access_log(&q).await?;
            let has_next = rows.len() > want;
            rows.truncate(want);
            let mut conn = Connection::new(after.is_some(), has_next);
            conn.edges.extend(rows.into_iter().map(|r| {
                let mut event = AccessEvent::from(r);
                if !show_reasons {
                    event.break_glass_reason = None;
                }
                Edge::new(event.position, event)
            }));
            Ok::<_, ApiError>(conn)
        })
        .await
        .map_err(ApiError::from)
    }

    /// Security events from `fromRevision` of `$security`, oldest first (`first`: 1 to
    /// 500, default 100).
    async fn security_events(
        &self,
        ctx: &Context<'_>,
        from_revision: Option<u64>,
        first: Option<i32>,
    ) -> ApiResult<Vec<SecurityEvent>> {
        let (state, _) = parts(ctx)?;
        authorize(ctx, Operation::ReadAuditTrail, None).await?;
        let max = page_size(first, 100, 500)?;
        let rows = state
            .store
            .read_stream(&streams::security(), from_revision.unwrap_or(0), Direction::Forwards, max)
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let body = r.event.body();
                let payload = r
                    .payload
                    .as_ref()
                    .and_then(|p| {
                        DomainEvent::decode(body.event_type.as_str(), body.schema_version, p.bytes()).ok()
                    })
                    .and_then(|e| serde_json::from_slice(&e.to_payload()).ok());
                SecurityEvent {
                    position: r.position,
                    revision: body.stream_revision,
                    event_type: body.event_type.as_str().to_owned(),
                    recorded_at: body.recorded_at.to_datetime(),
                    actor_id: body.actor.user_id,
                    actor_role: body.actor.role.as_str().to_owned(),
                    payload,
                }
            })
            .collect())
    }
}
