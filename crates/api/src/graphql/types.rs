//! Types shared by the schema modules: times, enums mirrored from the domain, and the
//! result of a write.

use async_graphql::{Enum, SimpleObject};
use ledger::Timestamp;
use projections::Executed;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::ApiError;

/// A time from the client. Timestamps are microseconds: a time with finer digits is
/// refused (`input.time_precision`), never silently truncated.
pub fn ts(t: OffsetDateTime) -> Result<Timestamp, ApiError> {
    Timestamp::from_datetime_exact(t).ok_or(ApiError::InvalidInput { code: "input.time_precision" })
}

pub use store::now;

/// The page size a client asked for: 1 to `max`, `default` when not given. Anything
/// else is refused (`request.bad_page_size`), never clamped into a page.
pub fn page_size(first: Option<i32>, default: usize, max: usize) -> Result<usize, ApiError> {
    match first {
        None => Ok(default),
        Some(n) => usize::try_from(n)
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or(ApiError::InvalidInput { code: "request.bad_page_size" }),
    }
}

/// A JSON value from the client into a domain type; the error names the field only
/// (serde's message could quote the value).
pub fn from_json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, ApiError> {
    serde_json::from_value(v).map_err(|_| ApiError::InvalidInput { code: "input.malformed" })
}

pub fn to_json<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

/// What a mutation wrote: the new event and its global position (pass it as
/// `minPosition` to read your own write).
#[derive(SimpleObject, Clone, Debug)]
pub struct Written {
    pub event_id: Uuid,
    pub event_type: String,
    pub position: u64,
    pub revision: u64,
    /// True when this was a retry of an event already stored (nothing new was written).
    pub replayed: bool,
}

impl From<Executed> for Written {
    fn from(e: Executed) -> Self {
        Self {
            event_id: e.event_id,
            event_type: e.event_type.to_owned(),
            position: e.position,
            revision: e.revision,
            replayed: e.idempotent_replay,
        }
    }
}

#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
#[graphql(remote = "domain::events::Role")]
pub enum Role {
    Physician,
    Nurse,
    Receptionist,
    Administrator,
    Auditor,
    Legal,
    Patient,
}

#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
#[graphql(remote = "domain::events::Purpose")]
pub enum ConsentPurpose {
    Treatment,
    Insurance,
    Research,
    Marketing,
}

#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
#[graphql(remote = "domain::events::PurposeOfUse")]
pub enum PurposeOfUse {
    Treatment,
    Payment,
    Operations,
    Emergency,
    PatientRequest,
    Legal,
    Audit,
    Research,
    Marketing,
}

#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
#[graphql(remote = "domain::events::EntryKind")]
pub enum EntryKind {
    SoapNote,
    Prescription,
    LabResult,
    Observation,
    Assessment,
    Condition,
    Allergy,
}

#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
#[graphql(remote = "domain::events::Sex")]
pub enum Sex {
    Female,
    Male,
    Other,
    Unknown,
}

#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
#[graphql(remote = "domain::events::CareRole")]
pub enum CareRole {
    PrimaryCare,
    Attending,
    Consultant,
    Nurse,
}

#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
#[graphql(remote = "domain::events::VisitType")]
pub enum VisitType {
    FirstVisit,
    FollowUp,
    Procedure,
    Telehealth,
    LabDraw,
}

#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
#[graphql(remote = "domain::events::CancelledBy")]
pub enum CancelledBy {
    Patient,
    Clinic,
}

#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
#[graphql(remote = "domain::events::ConsentMethod")]
pub enum ConsentMethod {
    Written,
    Electronic,
    Verbal,
}

#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
#[graphql(remote = "domain::events::ResourceKind")]
pub enum ResourceKind {
    Demographics,
    ClinicalEntries,
    Consents,
    CareTeam,
    Appointments,
    AccessLog,
    History,
    Proof,
    Export,
}

#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
#[graphql(remote = "domain::events::AccessAction")]
pub enum AccessAction {
    View,
    Create,
    Update,
    Export,
    Print,
}

/// Staff display names, batched per request (one query for all the authors a response
/// names). A loader lives for one request only: nothing is cached across users.
#[derive(Debug)]
pub struct UserNames(pub projections::ReadModels);

impl async_graphql::dataloader::Loader<Uuid> for UserNames {
    type Value = String;
    type Error = ApiError;

    async fn load(&self, keys: &[Uuid]) -> Result<std::collections::HashMap<Uuid, String>, ApiError> {
        // One failed query answers every author field that asked: logged once, here.
        self.0.display_names(keys).await.map_err(|e| ApiError::from(e).reported())
    }
}
