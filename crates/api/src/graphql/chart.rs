//! The chart: clinical entries by section with their full version history, now or as
//! the record stood at `asOf`; recording, amending and retracting entries.

use std::sync::Arc;

use async_graphql::{ComplexObject, Context, Json, Object, SimpleObject};
use domain::chart::{Chart, Entry as DEntry, EntryStatus, EntryVersion as DVersion};
use domain::commands::Command;
use domain::events::{EntryContent, EntryKind as DKind};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::ApiResult;

use super::appointments::Appointment;
use super::care::CareTeamMember;
use super::consents::ConsentVersion;
use super::exec::resolved::EntryList;
use super::patients::Patient;
use super::types::{from_json, now, to_json, ts, EntryKind, UserNames, Written};
use super::{execute, execute_timed, read_chart, record_op};
use crate::access::{authorize, parts};
use crate::error::ApiError;
use crate::policy::Operation;

/// One version of an entry: who wrote it, when, why, and what it said. Each field is
/// read from the shared chart when asked for, so a query converts only what it selects.
#[derive(Clone)]
pub struct EntryVersion {
    chart: Arc<Chart>,
    entry_id: Uuid,
    index: usize,
}

impl EntryVersion {
    fn v(&self) -> ApiResult<&DVersion> {
        self.chart
            .entries
            .get(&self.entry_id)
            .and_then(|e| e.versions.get(self.index))
            .ok_or(ApiError::unexpected("api.version_missing"))
    }
}

/// One version of an entry: who wrote it, when, why, and what it said.
#[Object]
impl EntryVersion {
    async fn version(&self) -> ApiResult<u32> {
        Ok(self.v()?.version)
    }
    /// `recorded`, `amended` or `entered_in_error`.
    async fn change(&self) -> ApiResult<&str> {
        Ok(self.v()?.change.as_str())
    }
    /// Why it was amended or retracted.
    async fn reason(&self) -> ApiResult<Option<&str>> {
        Ok(self.v()?.change.reason())
    }
    /// The entry's content as in `schema/events.md` (`EntryContent`).
    async fn content(&self) -> ApiResult<Json<&EntryContent>> {
        Ok(Json(&self.v()?.content))
    }
    async fn effective_at(&self) -> ApiResult<OffsetDateTime> {
        Ok((self.v()?.effective_at).to_datetime())
    }
    async fn recorded_at(&self) -> ApiResult<OffsetDateTime> {
        Ok((self.v()?.recorded_at).to_datetime())
    }
    async fn author_id(&self) -> ApiResult<Uuid> {
        Ok(self.v()?.author.user_id)
    }
    async fn author_role(&self) -> ApiResult<&str> {
        Ok(self.v()?.author.role.as_str())
    }
    async fn event_id(&self) -> ApiResult<Uuid> {
        Ok(self.v()?.event_id)
    }
    async fn position(&self) -> ApiResult<u64> {
        Ok(self.v()?.position)
    }
    /// The author's display name (batched per request).
    async fn author_name(&self, ctx: &Context<'_>) -> ApiResult<Option<String>> {
        let loader = ctx
            .data::<async_graphql::dataloader::DataLoader<UserNames>>()
            .map_err(|_| ApiError::unexpected("api.no_loader"))?;
        loader.load_one(self.v()?.author.user_id).await
    }
}

/// A clinical entry: its current version and every earlier one. Versions are built on
/// demand from the shared chart, so a query that asks only for ids converts no content.
#[derive(Clone)]
pub struct Entry {
    chart: Arc<Chart>,
    entry_id: Uuid,
    kind: EntryKind,
    status: &'static str,
}

impl Entry {
    fn new(chart: &Arc<Chart>, e: &DEntry) -> Self {
        Self { chart: chart.clone(), entry_id: e.entry_id, kind: e.kind.into(), status: e.status.as_str() }
    }

    fn entry(&self) -> Option<&DEntry> {
        self.chart.entries.get(&self.entry_id)
    }

    fn version_at(&self, index: usize) -> EntryVersion {
        EntryVersion { chart: self.chart.clone(), entry_id: self.entry_id, index }
    }
}

/// A clinical entry: its current version and every earlier one.
#[Object]
impl Entry {
    async fn entry_id(&self) -> Uuid {
        self.entry_id
    }
    async fn kind(&self) -> EntryKind {
        self.kind
    }
    /// `active` or `entered_in_error`.
    async fn status(&self) -> &str {
        self.status
    }
    async fn current(&self) -> Option<EntryVersion> {
        let last = self.entry()?.versions.len().checked_sub(1)?;
        Some(self.version_at(last))
    }
    async fn versions(&self) -> Vec<EntryVersion> {
        let n = self.entry().map_or(0, |e| e.versions.len());
        (0..n).map(|i| self.version_at(i)).collect()
    }
}

/// A patient's chart. Sections other than the clinical entries are authorized (and
/// audited) on their own, so a role sees exactly the sections it may.
#[derive(SimpleObject)]
#[graphql(complex)]
pub struct ChartView {
    pub patient_id: Uuid,
    /// The stream revision the chart reflects.
    pub revision: Option<u64>,
    /// The time asked for, when this is a point-in-time view.
    pub as_of: Option<OffsetDateTime>,
    #[graphql(skip)]
    pub chart: Arc<Chart>,
}

impl ChartView {
    fn op(&self, present: Operation) -> Operation {
        record_op(present, self.as_of.is_some())
    }

    /// The entries of `kinds`, active ones only.
    fn section(&self, kinds: &[DKind]) -> EntryList {
        let items = self
            .chart
            .entries
            .values()
            .filter(|e| kinds.contains(&e.kind) && e.status == EntryStatus::Active)
            .map(|e| Entry::new(&self.chart, e))
            .collect();
        EntryList::new(&self.chart, items, self.as_of.is_none())
    }
}

#[ComplexObject]
impl ChartView {
    /// All entries (retracted ones included, with status `entered_in_error`).
    async fn entries(&self) -> EntryList {
        let items = self.chart.entries.values().map(|e| Entry::new(&self.chart, e)).collect();
        EntryList::new(&self.chart, items, self.as_of.is_none())
    }
    /// Conditions (diagnoses), active entries only.
    async fn problems(&self) -> EntryList {
        self.section(&[DKind::Condition])
    }
    async fn medications(&self) -> EntryList {
        self.section(&[DKind::Prescription])
    }
    async fn allergies(&self) -> EntryList {
        self.section(&[DKind::Allergy])
    }
    /// Vital signs and other observations, and lab results.
    async fn observations(&self) -> EntryList {
        self.section(&[DKind::Observation, DKind::LabResult])
    }
    /// SOAP notes and assessments.
    async fn notes(&self) -> EntryList {
        self.section(&[DKind::SoapNote, DKind::Assessment])
    }
    async fn demographics(&self, ctx: &Context<'_>) -> ApiResult<Option<Patient>> {
        authorize(ctx, self.op(Operation::ReadDemographics), Some(self.patient_id)).await?;
        Ok(self.chart.demographics.as_ref().map(|d| Patient::from_domain(self.patient_id, d)))
    }
    async fn consents(&self, ctx: &Context<'_>) -> ApiResult<Vec<ConsentVersion>> {
        authorize(ctx, self.op(Operation::ReadConsents), Some(self.patient_id)).await?;
        Ok(self.chart.consent.versions.iter().map(Into::into).collect())
    }
    async fn care_team(&self, ctx: &Context<'_>) -> ApiResult<Vec<CareTeamMember>> {
        authorize(ctx, self.op(Operation::ReadCareTeam), Some(self.patient_id)).await?;
        Ok(self.chart.care_team.values().map(Into::into).collect())
    }
    async fn appointments(&self, ctx: &Context<'_>) -> ApiResult<Vec<Appointment>> {
        authorize(ctx, self.op(Operation::ReadAppointments), Some(self.patient_id)).await?;
        Ok(self.chart.appointments.values().map(Into::into).collect())
    }
}

#[derive(Debug, Default)]
pub struct ChartQuery;

#[Object]
impl ChartQuery {
    /// A patient's chart now, or as the record stood at `asOf` (auditors; not in the
    /// future: `access.as_of_in_future`). `caseRef` names the case or matter the read is
    /// for (1-128 printable characters), recorded in the access event; auditors and legal
    /// staff must give it for point-in-time reads (`access.case_ref_required`).
    async fn chart(
        &self,
        ctx: &Context<'_>,
        patient_id: Uuid,
        as_of: Option<OffsetDateTime>,
        case_ref: Option<String>,
        min_position: Option<u64>,
    ) -> ApiResult<Option<ChartView>> {
        let chart =
            read_chart(ctx, Operation::ReadClinical, patient_id, as_of, case_ref.as_deref(), min_position)
                .await?;
        Ok(chart.filter(|c| c.demographics.is_some()).map(|chart| ChartView {
            patient_id,
            revision: chart.revision,
            as_of,
            chart,
        }))
    }

    /// One entry with every version (named by its id or by one of its amendments' ids),
    /// now or as of an earlier time. `caseRef` as for `chart`: auditors and legal staff
    /// must give it (the history holds the current content too).
    async fn entry(
        &self,
        ctx: &Context<'_>,
        patient_id: Uuid,
        entry_id: Uuid,
        as_of: Option<OffsetDateTime>,
        case_ref: Option<String>,
        min_position: Option<u64>,
    ) -> ApiResult<Option<Entry>> {
        let chart =
            read_chart(ctx, Operation::ReadHistory, patient_id, as_of, case_ref.as_deref(), min_position)
                .await?;
        let Some(chart) = chart else { return Ok(None) };
        Ok(projections::pit::entry_named(&chart, entry_id).map(|e| Entry::new(&chart, e)))
    }
}

/// A signed record proof (`schema/proof-format.md`) as JSON: every version of an entry
/// (or one event), checkable offline with `chartledger verify` and the ledger's key.
#[derive(Debug, Default)]
pub struct ProofQuery;

#[Object]
impl ProofQuery {
    /// The proof of one entry of a patient's record, all its versions (legal staff and
    /// auditors; patients for their own record). Asking for it is an audited export.
    async fn entry_proof(
        &self,
        ctx: &Context<'_>,
        patient_id: Uuid,
        entry_id: Uuid,
        consistent_from: Option<u64>,
    ) -> ApiResult<serde_json::Value> {
        let (state, _) = parts(ctx)?;
        authorize(ctx, Operation::ReadProof, Some(patient_id)).await?;
        let mut bundle = state.store.entry_proof(patient_id, entry_id).await.map_err(proof_error)?;
        if let Some(old) = consistent_from {
            store::proofs::add_consistency(state.store.pool(), &mut bundle, old)
                .await
                .map_err(proof_error)?;
        }
        Ok(to_json(&bundle))
    }
}

/// The proof of one event (any stream: a consent, an access, a key event...).
#[Object]
impl EventProofQuery {
    async fn event_proof(&self, ctx: &Context<'_>, event_id: Uuid) -> ApiResult<serde_json::Value> {
        let (state, _) = parts(ctx)?;
        // Decide on the record the event belongs to; an unknown id is decided on none
        // (so the answer does not tell who may ask whether an id exists).
        let found = state.store.event_by_id(event_id).await?;
        let patient = found.as_ref().and_then(|r| domain::streams::patient_of(r.event.stream_id()));
        authorize(ctx, Operation::ReadProof, patient).await?;
        if found.is_none() {
            return Err(ApiError::NotFound);
        }
        Ok(to_json(&state.store.event_proof(event_id).await.map_err(proof_error)?))
    }
}

#[derive(Debug, Default)]
pub struct EventProofQuery;

fn proof_error(e: store::proofs::ProofExportError) -> ApiError {
    match e {
        store::proofs::ProofExportError::NotFound => ApiError::NotFound,
        store::proofs::ProofExportError::NoSuchCheckpoint(_) => {
            ApiError::InvalidInput { code: "proof.no_such_checkpoint" }
        }
        other => ApiError::internal(other.code(), &other),
    }
}

#[derive(Debug, Default)]
pub struct ChartMutation;

#[Object]
impl ChartMutation {
    /// Record a clinical entry. `content` is an `EntryContent` (schema/events.md).
    async fn record_entry(
        &self,
        ctx: &Context<'_>,
        patient_id: Uuid,
        entry_id: Uuid,
        content: serde_json::Value,
        effective_at: Option<OffsetDateTime>,
        event_id: Uuid,
    ) -> ApiResult<Written> {
        let content: EntryContent = from_json(content)?;
        let given = effective_at.is_some();
        let effective_at = effective_at.map(ts).transpose()?.unwrap_or_else(now);
        let cmd = Command::RecordEntry { entry_id, content, effective_at };
        execute_timed(ctx, Operation::WriteClinical, patient_id, event_id, cmd, given).await
    }

    /// Amend an entry (the original or any amendment): new content and the reason.
    #[allow(clippy::too_many_arguments)]
    async fn amend_entry(
        &self,
        ctx: &Context<'_>,
        patient_id: Uuid,
        entry_id: Uuid,
        amendment_id: Uuid,
        content: serde_json::Value,
        reason: String,
        effective_at: Option<OffsetDateTime>,
        event_id: Uuid,
    ) -> ApiResult<Written> {
        let content: EntryContent = from_json(content)?;
        let given = effective_at.is_some();
        let effective_at = effective_at.map(ts).transpose()?.unwrap_or_else(now);
        let cmd = Command::AmendEntry { amendment_id, entry_id, content, reason, effective_at };
        execute_timed(ctx, Operation::WriteClinical, patient_id, event_id, cmd, given).await
    }

    /// Retract an entry as entered in error; it stays in the history.
    async fn mark_entered_in_error(
        &self,
        ctx: &Context<'_>,
        patient_id: Uuid,
        entry_id: Uuid,
        reason: String,
        event_id: Uuid,
    ) -> ApiResult<Written> {
        let cmd = Command::MarkEnteredInError { entry_id, reason };
        execute(ctx, Operation::WriteClinical, patient_id, event_id, cmd).await
    }
}
