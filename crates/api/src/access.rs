//! Enforcement: every resolver that touches a patient's record calls [`authorize`] with
//! its [`Operation`] and the patient. It applies the [`policy`](crate::policy) table, the
//! care-team and break-glass conditions and the purpose-of-use consent check; refusals
//! are recorded (`security.access_denied`); granted record operations are collected, and
//! the HTTP layer writes one `access.recorded` event per patient per request, durably,
//! before any byte of the response is sent ([`AccessCollector::flush`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use async_graphql::Context;
use domain::chart::Chart;
use domain::events::{AccessAction, AccessDenied, DomainEvent, PurposeOfUse, RecordAccessed, ResourceKind};
use uuid::Uuid;

use crate::auth::{ClientInfo, Principal};
use crate::error::{ApiError, ApiResult};
use crate::policy::{self, Operation, Rule};
use crate::AppState;

/// Per-request context, put into the GraphQL request by the HTTP layer.
#[derive(Debug)]
pub struct RequestCtx {
    /// The session behind the bearer token (or why there is none).
    pub principal: Result<Principal, ApiError>,
    pub client: ClientInfo,
    /// The purpose of use the client declared (`X-Purpose-Of-Use`), if any.
    pub declared_purpose: Option<PurposeOfUse>,
    pub collector: AccessCollector,
    /// Care-team decisions already made in this request, by patient (`Some(reason)`:
    /// granted by break-glass; absent: not decided yet). Nested fields of one record
    /// ask again; a request is short, so the answer cannot go stale within it.
    pub care_team: Mutex<BTreeMap<Uuid, Option<Option<String>>>>,
    /// Current charts already read in this request, by patient (the care-team decision
    /// and the chart it lets through are one read of the record).
    charts: Mutex<BTreeMap<Uuid, Option<Arc<Chart>>>>,
}

impl RequestCtx {
    pub fn new(
        principal: Result<Principal, ApiError>,
        client: ClientInfo,
        declared_purpose: Option<PurposeOfUse>,
    ) -> Self {
        // A failure to look the session up is handled here: every use of the request
        // answers `auth.unauthenticated`, so this is where it is logged.
        if let Err(e) = &principal {
            e.report();
        }
        Self {
            principal,
            client,
            declared_purpose,
            collector: AccessCollector::default(),
            care_team: Default::default(),
            charts: Default::default(),
        }
    }

    /// The patient's current chart ([`projections::ReadModels::current_chart`]), read once
    /// per request; `fresh` reads it again (after waiting for a position).
    pub async fn current_chart(
        &self,
        state: &AppState,
        patient: Uuid,
        fresh: bool,
    ) -> ApiResult<Option<Arc<Chart>>> {
        if !fresh {
            if let Some(known) = self.charts.lock().ok().and_then(|m| m.get(&patient).cloned()) {
                return Ok(known);
            }
        }
        let chart = state.read.current_chart(patient).await?;
        if let Ok(mut m) = self.charts.lock() {
            m.insert(patient, chart.clone());
        }
        Ok(chart)
    }

    /// Forget what this request decided and read (a subscription decides afresh for each
    /// notification: care teams change, grants expire).
    fn forget(&self) {
        if let Ok(mut m) = self.care_team.lock() {
            m.clear();
        }
        if let Ok(mut m) = self.charts.lock() {
            m.clear();
        }
    }

    /// The authenticated principal, with its second factor done.
    pub fn principal(&self) -> ApiResult<&Principal> {
        match &self.principal {
            Ok(p) if !p.mfa_verified => Err(ApiError::MfaRequired),
            Ok(p) if p.must_change_password => Err(ApiError::PasswordChangeRequired),
            Ok(p) => Ok(p),
            Err(ApiError::SessionExpired) => Err(ApiError::SessionExpired),
            Err(_) => Err(ApiError::Unauthenticated),
        }
    }

    /// The authenticated principal with its second factor done, password change
    /// pending or not (for `changePassword`).
    pub fn verified(&self) -> ApiResult<&Principal> {
        match self.session()? {
            p if !p.mfa_verified => Err(ApiError::MfaRequired),
            p => Ok(p),
        }
    }

    /// The authenticated principal, second factor pending or not (for `verifyMfa`,
    /// `enrollMfa`, `logout`, `me`).
    pub fn session(&self) -> ApiResult<&Principal> {
        match &self.principal {
            Ok(p) => Ok(p),
            Err(ApiError::SessionExpired) => Err(ApiError::SessionExpired),
            Err(_) => Err(ApiError::Unauthenticated),
        }
    }

    pub fn purpose(&self, p: &Principal) -> PurposeOfUse {
        self.declared_purpose.unwrap_or_else(|| policy::default_purpose(p.role))
    }
}

/// A granted access waiting to be recorded.
#[derive(Debug, Default)]
struct Pending {
    resources: BTreeSet<ResourceKind>,
    break_glass: Option<String>,
    /// The case or matter the access was made for ([`authorize_read`]).
    case_ref: Option<String>,
}

/// The record accesses a request made, by (patient, action).
#[derive(Debug, Default)]
pub struct AccessCollector {
    pending: Mutex<BTreeMap<(Uuid, AccessAction), Pending>>,
}

impl AccessCollector {
    pub fn add(
        &self,
        patient: Uuid,
        resource: ResourceKind,
        action: AccessAction,
        break_glass: Option<String>,
    ) {
        let mut map = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map.entry((patient, action)).or_default();
        entry.resources.insert(resource);
        if break_glass.is_some() {
            entry.break_glass = break_glass;
        }
    }

    /// Name the case an access collected for (`patient`, `action`) was made for. One
    /// request names at most one case per patient and action
    /// (`access.case_ref_conflict`).
    fn set_case_ref(&self, patient: Uuid, action: AccessAction, case_ref: &str) -> ApiResult<()> {
        let mut map = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map.entry((patient, action)).or_default();
        match &entry.case_ref {
            Some(known) if known != case_ref => {
                Err(ApiError::InvalidInput { code: "access.case_ref_conflict" })
            }
            _ => {
                entry.case_ref = Some(case_ref.to_owned());
                Ok(())
            }
        }
    }

    /// Write one access event per patient and action, concurrently (the store's group
    /// commit takes them in one transaction). Any failure fails the whole request.
    pub async fn flush(&self, state: &AppState, req: &RequestCtx) -> ApiResult<usize> {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        Self::write(pending, state, req).await
    }

    /// Write the accesses collected so far for one patient now (before a write to the
    /// record: see `graphql::execute`).
    pub async fn flush_patient(&self, state: &AppState, req: &RequestCtx, patient: Uuid) -> ApiResult<usize> {
        let taken = {
            let mut map = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let keys: Vec<_> = map.keys().filter(|(p, _)| *p == patient).copied().collect();
            keys.into_iter().filter_map(|k| map.remove(&k).map(|v| (k, v))).collect::<BTreeMap<_, _>>()
        };
        Self::write(taken, state, req).await
    }

    async fn write(
        pending: BTreeMap<(Uuid, AccessAction), Pending>,
        state: &AppState,
        req: &RequestCtx,
    ) -> ApiResult<usize> {
        if pending.is_empty() {
            return Ok(0);
        }
        let p = req.principal()?;
        let purpose = req.purpose(p);
        let writes = pending.into_iter().map(|((patient_id, action), pending)| {
            let access = RecordAccessed {
                patient_id,
                resources: pending.resources,
                action,
                purpose: if pending.break_glass.is_some() { PurposeOfUse::Emergency } else { purpose },
                break_glass_reason: pending.break_glass,
                client_addr: req.client.addr.clone(),
                user_agent: req.client.user_agent.clone(),
                session_id: Some(p.session_id),
                case_ref: pending.case_ref,
            };
            state.records.record_access(p.actor(), Uuid::now_v7(), access)
        });
        let results = futures::future::join_all(writes).await;
        let n = results.len();
        for r in results {
            if let Err(e) = r {
                tracing::error!(code = e.code(), "access event not recorded; response withheld");
                return Err(ApiError::AuditUnavailable);
            }
        }
        Ok(n)
    }
}

/// The request's context pieces.
pub fn parts<'a>(ctx: &Context<'a>) -> ApiResult<(&'a AppState, &'a RequestCtx)> {
    let state = ctx.data::<AppState>().map_err(|_| ApiError::unexpected("api.no_state"))?;
    let req = ctx.data::<std::sync::Arc<RequestCtx>>().map_err(|_| ApiError::unexpected("api.no_request"))?;
    Ok((state, req.as_ref()))
}

/// Decide `op` on `patient` for the request's principal; on success the access is
/// collected for the audit trail (for operations on a record). Returns the principal.
pub async fn authorize<'a>(
    ctx: &Context<'a>,
    op: Operation,
    patient: Option<Uuid>,
) -> ApiResult<&'a Principal> {
    let (state, req) = parts(ctx)?;
    let p = req.principal()?;
    let break_glass = match check(state, req, p, op, patient, CareTeamFrom::of(op)).await {
        Ok(bg) => bg,
        Err(e @ (ApiError::Forbidden | ApiError::ConsentRequired | ApiError::BreakGlassRequired)) => {
            deny(state, req, p, op, patient, e.code()).await;
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    if let (Some(patient), Some((resource, action))) = (patient, op.audited_as()) {
        req.collector.add(patient, resource, action, break_glass);
    }
    Ok(p)
}

/// The clock skew allowed for an `asOf` ahead of the server's clock.
pub const AS_OF_SKEW: time::Duration = time::Duration::seconds(5);

/// [`authorize`] for a read of a record now or as of `as_of`, naming the case or matter
/// it is made for: `as_of` must not lie in the future (beyond [`AS_OF_SKEW`]:
/// `access.as_of_in_future`, for everyone), `case_ref` must be a valid reference
/// (`domain::staff::validate_case_ref`), and the roles and operations of
/// [`policy::needs_case_ref`] must name one (`access.case_ref_required`, recorded as a
/// refusal). A named case is recorded in the access event.
pub async fn authorize_read<'a>(
    ctx: &Context<'a>,
    op: Operation,
    patient: Uuid,
    as_of: Option<time::OffsetDateTime>,
    case_ref: Option<&str>,
) -> ApiResult<&'a Principal> {
    let (_, req) = parts(ctx)?;
    if as_of.is_some_and(|t| t > time::OffsetDateTime::now_utc() + AS_OF_SKEW) {
        return Err(ApiError::InvalidInput { code: "access.as_of_in_future" });
    }
    if let Some(c) = case_ref {
        domain::staff::validate_case_ref(c).map_err(|e| ApiError::InvalidInput { code: e.code() })?;
    }
    let p = req.principal()?;
    if case_ref.is_none() && policy::needs_case_ref(p.role, op) {
        return Err(refuse(ctx, op, Some(patient), "access.case_ref_required").await);
    }
    let p = authorize(ctx, op, Some(patient)).await?;
    if let (Some(c), Some((_, action))) = (case_ref, op.audited_as()) {
        req.collector.set_case_ref(patient, action, c)?;
    }
    Ok(p)
}

/// Refuse `op` for a reason of its own (a stable code, e.g. `domain.self_grant`):
/// recorded like a policy refusal (`security.access_denied` with the code as reason),
/// answered as invalid input for `access.*` codes and as a refused command otherwise.
pub async fn refuse(ctx: &Context<'_>, op: Operation, patient: Option<Uuid>, code: &'static str) -> ApiError {
    if let Ok((state, req)) = parts(ctx) {
        if let Ok(p) = req.principal() {
            deny(state, req, p, op, patient, code).await;
        }
    }
    if code.starts_with("access.") {
        ApiError::InvalidInput { code }
    } else {
        ApiError::Refused { code }
    }
}

/// Decide again, outside a request (a subscription's next notification): the session
/// must still be live (not logged out, idle or expired; this does not count as
/// activity) and the operation still allowed.
pub async fn recheck(state: &AppState, req: &RequestCtx, op: Operation, patient: Uuid) -> ApiResult<()> {
    let p = req.principal()?;
    state.auth.check_live(p).await?;
    // A subscription outlives requests: decide afresh (care team changes, grants expire).
    req.forget();
    check(state, req, p, op, Some(patient), CareTeamFrom::of(op)).await.map(|_| ())
}

/// Whether the principal may see `patient` in a list (search results): the same rule,
/// without recording a refusal for each patient left out.
pub async fn may_list(state: &AppState, req: &RequestCtx, p: &Principal, patient: Uuid) -> ApiResult<bool> {
    // A search decides for many patients and returns none of their charts: ask the care
    // team table directly rather than load each chart.
    match check(state, req, p, Operation::ReadDemographics, Some(patient), CareTeamFrom::Table).await {
        Ok(_) => Ok(true),
        Err(ApiError::Forbidden | ApiError::ConsentRequired | ApiError::BreakGlassRequired) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Where a care-team decision finds the care team.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CareTeamFrom {
    /// The current chart, which the request goes on to read.
    Chart,
    /// The care-team table: the request reads no current chart.
    Table,
}

impl CareTeamFrom {
    /// The chart for the operations that read the current chart (their resolvers reuse
    /// it); the table for writes, point-in-time reads and the rest.
    fn of(op: Operation) -> Self {
        use Operation::*;
        match op {
            ReadDemographics | ReadClinical | ReadHistory | ReadConsents | ReadCareTeam
            | ReadAppointments => Self::Chart,
            _ => Self::Table,
        }
    }
}

/// The decision. `Ok(Some(reason))` when granted by break-glass.
async fn check(
    state: &AppState,
    req: &RequestCtx,
    p: &Principal,
    op: Operation,
    patient: Option<Uuid>,
    care_team: CareTeamFrom,
) -> ApiResult<Option<String>> {
    let mut break_glass = None;
    match policy::rule(p.role, op) {
        Rule::Deny => return Err(ApiError::Forbidden),
        Rule::Allow => {}
        Rule::OwnRecord => {
            if patient.is_none() || patient != p.patient_id {
                return Err(ApiError::Forbidden);
            }
        }
        Rule::CareTeam => {
            let Some(patient) = patient else { return Err(ApiError::Forbidden) };
            let known = req.care_team.lock().ok().and_then(|m| m.get(&patient).cloned());
            let decided = match known {
                Some(d) => d,
                None => {
                    let on_team = match care_team {
                        CareTeamFrom::Chart => req
                            .current_chart(state, patient, false)
                            .await?
                            .is_some_and(|c| c.care_team.contains_key(&p.user_id)),
                        CareTeamFrom::Table => state.read.is_on_care_team(patient, p.user_id).await?,
                    };
                    let d = if on_team {
                        Some(None)
                    } else {
                        state.auth.break_glass_reason(p, patient).await?.map(Some)
                    };
                    if let Ok(mut m) = req.care_team.lock() {
                        m.insert(patient, d.clone());
                    }
                    d
                }
            };
            match decided {
                Some(reason) => break_glass = reason,
                None => return Err(ApiError::Forbidden),
            }
        }
    }
    // Emergency access is break-glass access: declared without a grant, it is refused
    // before anything is read or written (its access event could not be recorded).
    let emergency = req.declared_purpose == Some(PurposeOfUse::Emergency);
    if emergency && break_glass.is_none() && patient.is_some() && op.audited_as().is_some() {
        return Err(ApiError::BreakGlassRequired);
    }
    if let (Some(patient), Some(needed)) = (patient, policy::consent_needed(req.purpose(p))) {
        if op.touches_record() && break_glass.is_none() {
            let current = state.read.consent_history(patient).await?;
            let granted = current.last().is_some_and(|c| c.granted.contains(&needed));
            if !granted {
                return Err(ApiError::ConsentRequired);
            }
        }
    }
    Ok(break_glass)
}

/// Record a refusal. A failure to record it is logged; the refusal stands either way.
async fn deny(
    state: &AppState,
    req: &RequestCtx,
    p: &Principal,
    op: Operation,
    patient: Option<Uuid>,
    reason: &str,
) {
    state.metrics.denied(op.code());
    let event = DomainEvent::AccessDenied(AccessDenied {
        user_id: p.user_id,
        session_id: p.session_id,
        patient_id: patient,
        operation: op.code().to_owned(),
        reason: reason.to_owned(),
        client_addr: req.client.addr.clone(),
    });
    if let Err(e) = state.records.record_system(p.actor(), Uuid::now_v7(), event).await {
        tracing::error!(code = e.code(), "access refusal not recorded");
    }
}

/// Wait until the read models have applied `position` (read-your-writes). A position
/// the ledger has not reached is refused at once (`request.position_beyond_head`), not
/// waited for: no write acknowledged to anyone can have it. (This server's view of the
/// head may lag a write another server committed, so the database decides.)
pub async fn wait_for(state: &AppState, position: Option<u64>) -> ApiResult<()> {
    if let Some(position) = position {
        if position >= state.store.head().size {
            let head: i64 = sqlx::query_scalar("SELECT COALESCE(max(position) + 1, 0) FROM ledger_events")
                .fetch_one(state.store.pool())
                .await?;
            if position >= u64::try_from(head).unwrap_or(0) {
                return Err(ApiError::InvalidInput { code: "request.position_beyond_head" });
            }
        }
        state.projections.wait_for(position, state.config.max_wait).await?;
    }
    Ok(())
}
