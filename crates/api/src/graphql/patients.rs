//! The patient index and demographics.

use async_graphql::connection::{query, Connection, Edge, EmptyFields};
use async_graphql::{Context, InputObject, Object, SimpleObject};
use domain::chart::Demographics;
use domain::commands::Command;
use domain::events::{Contact, DemographicsUpdated, HumanName, PatientRegistered};
use projections::queries::PatientSearch;
use time::{Date, OffsetDateTime};
use uuid::Uuid;

use crate::error::ApiResult;

use super::types::{from_json, page_size, to_json, Sex, Written};
use super::{execute, read_chart};
use crate::access::{authorize, may_list, parts, wait_for};
use crate::error::ApiError;
use crate::policy::Operation;

#[derive(SimpleObject, Clone)]
pub struct Name {
    pub family: String,
    pub given: Vec<String>,
}

/// A patient's demographics (the record's administrative part).
#[derive(SimpleObject, Clone)]
pub struct Patient {
    pub patient_id: Uuid,
    pub mrn: String,
    pub name: Name,
    pub birth_date: Date,
    pub sex: Sex,
    /// Phone, email and address, as in `schema/events.md` (`Contact`).
    pub contact: serde_json::Value,
    pub registered_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    pub version: u32,
    /// Set when this record was merged into another (read that one).
    pub merged_into: Option<Uuid>,
}

impl Patient {
    pub fn from_domain(patient_id: Uuid, d: &Demographics) -> Self {
        Self {
            patient_id,
            mrn: d.mrn.clone(),
            name: Name { family: d.name.family.clone(), given: d.name.given.clone() },
            birth_date: d.birth_date,
            sex: d.sex.into(),
            contact: to_json(&d.contact),
            registered_at: d.registered_at.to_datetime(),
            updated_at: d.updated_at.to_datetime(),
            version: d.version,
            merged_into: d.merged_into,
        }
    }
}

/// One line of a search result.
#[derive(SimpleObject, Clone)]
pub struct PatientSummary {
    pub patient_id: Uuid,
    pub mrn: String,
    pub name: Name,
    pub birth_date: Date,
    pub sex: String,
    pub merged_into: Option<Uuid>,
}

#[derive(InputObject)]
pub struct RegisterPatientInput {
    /// Client-chosen UUIDv7 of the new patient (a retry with the same id is safe).
    pub patient_id: Uuid,
    pub mrn: String,
    pub family: String,
    pub given: Vec<String>,
    pub birth_date: Date,
    pub sex: Sex,
    /// `Contact` as in `schema/events.md`.
    pub contact: Option<serde_json::Value>,
}

#[derive(InputObject)]
pub struct DemographicsInput {
    pub family: Option<String>,
    pub given: Option<Vec<String>>,
    pub birth_date: Option<Date>,
    pub sex: Option<Sex>,
    pub contact: Option<serde_json::Value>,
}

#[derive(Debug, Default)]
pub struct PatientQuery;

#[Object]
impl PatientQuery {
    /// A patient's demographics, now or as they stood at `asOf` (with `caseRef` as for
    /// `chart`).
    async fn patient(
        &self,
        ctx: &Context<'_>,
        patient_id: Uuid,
        as_of: Option<OffsetDateTime>,
        case_ref: Option<String>,
        min_position: Option<u64>,
    ) -> ApiResult<Option<Patient>> {
        let op = Operation::ReadDemographics;
        let chart = read_chart(ctx, op, patient_id, as_of, case_ref.as_deref(), min_position).await?;
        Ok(chart.and_then(|c| c.demographics.as_ref().map(|d| Patient::from_domain(patient_id, d))))
    }

    /// Search the patient index (every given criterion must match). Results the caller
    /// may not see (consent for the declared purpose) are left out.
    #[allow(clippy::too_many_arguments)]
    async fn search_patients(
        &self,
        ctx: &Context<'_>,
        family_prefix: Option<String>,
        birth_date: Option<Date>,
        mrn: Option<String>,
        after: Option<String>,
        first: Option<i32>,
        min_position: Option<u64>,
    ) -> ApiResult<Connection<usize, PatientSummary, EmptyFields, EmptyFields>> {
        let (state, req) = parts(ctx)?;
        let p = authorize(ctx, Operation::SearchPatients, None).await?;
        if family_prefix.is_none() && birth_date.is_none() && mrn.is_none() {
            return Err(ApiError::InvalidInput { code: "search.no_criteria" });
        }
        wait_for(state, min_position).await?;
        let q = PatientSearch { family_prefix, birth_date, mrn };
        let first = page_size(first, 20, 100)?;
        query(after, None, i32::try_from(first).ok(), None, |after: Option<usize>, _, first, _| async move {
            // The cursor comes from the client: any number. Searches page through at
            // most MAX_SEARCH_RESULTS results (refine the criteria beyond that).
            let skip = after.map_or(0, |a| a.saturating_add(1));
            if skip > MAX_SEARCH_RESULTS {
                return Err(ApiError::InvalidInput { code: "request.bad_cursor" });
            }
            let want = first.unwrap_or(20);
            let found =
                state.read.search_patients(&q, u32::try_from(skip + want + 1).unwrap_or(u32::MAX)).await?;
            let mut page = Vec::new();
            for (i, s) in found.into_iter().enumerate().skip(skip) {
                if page.len() > want {
                    break;
                }
                if !may_list(state, req, p, s.patient_id).await? {
                    continue;
                }
                page.push((i, s));
            }
            let has_next = page.len() > want;
            page.truncate(want);
            let mut conn = Connection::new(skip > 0, has_next);
            for (i, s) in page {
                req.collector.add(
                    s.patient_id,
                    domain::events::ResourceKind::Demographics,
                    domain::events::AccessAction::View,
                    None,
                );
                let summary = PatientSummary {
                    patient_id: s.patient_id,
                    mrn: s.mrn,
                    name: Name { family: s.family, given: s.given },
                    birth_date: s.birth_date,
                    sex: s.sex,
                    merged_into: s.merged_into,
                };
                conn.edges.push(Edge::new(i, summary));
            }
            Ok::<_, ApiError>(conn)
        })
        .await
        .map_err(ApiError::from)
    }
}

#[derive(Debug, Default)]
pub struct PatientMutation;

#[Object]
impl PatientMutation {
    async fn register_patient(
        &self,
        ctx: &Context<'_>,
        input: RegisterPatientInput,
        event_id: Uuid,
    ) -> ApiResult<Written> {
        let contact: Contact = input.contact.map(from_json).transpose()?.unwrap_or_default();
        let reg = PatientRegistered {
            patient_id: input.patient_id,
            mrn: input.mrn,
            name: HumanName { given: input.given, family: input.family },
            birth_date: input.birth_date,
            sex: input.sex.into(),
            contact,
        };
        execute(ctx, Operation::RegisterPatient, input.patient_id, event_id, Command::RegisterPatient(reg))
            .await
    }

    async fn update_demographics(
        &self,
        ctx: &Context<'_>,
        patient_id: Uuid,
        input: DemographicsInput,
        event_id: Uuid,
    ) -> ApiResult<Written> {
        let (state, _) = parts(ctx)?;
        let p = authorize(ctx, Operation::UpdateDemographics, Some(patient_id)).await?;
        let name = match (input.family, input.given) {
            (None, None) => None,
            (family, given) => {
                let current = state.records.current_chart(patient_id).await?;
                let old = current
                    .demographics
                    .map(|d| d.name)
                    .unwrap_or(HumanName { given: vec![], family: String::new() });
                Some(HumanName { family: family.unwrap_or(old.family), given: given.unwrap_or(old.given) })
            }
        };
        let update = DemographicsUpdated {
            name,
            birth_date: input.birth_date,
            sex: input.sex.map(Into::into),
            contact: input.contact.map(from_json).transpose()?,
        };
        let done = state
            .records
            .execute(patient_id, p.actor(), event_id, Command::UpdateDemographics(update))
            .await?;
        Ok(done.into())
    }
}

/// The deepest a search pages (by `after`), in results.
const MAX_SEARCH_RESULTS: usize = 10_000;
