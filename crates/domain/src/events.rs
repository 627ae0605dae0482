//! The event catalog.
//!
//! Every event type has a name (the envelope's `event_type`), a current schema version,
//! and a JSON payload (UTF-8, serde field names; documented in `schema/events.md`). The
//! payload is the erasable part of an event: the envelope only commits to it.
//!
//! Older schema versions are lifted to the current one by [`upcast`], one version step at
//! a time (v1 → v2 → …), on the JSON value, before the payload is decoded. A stored
//! event is never rewritten; upcasting happens on every read.

use std::collections::BTreeSet;

use ledger::{Actor, EventType, Payload, SignedEvent, StreamId, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::codes::{Coding, Quantity, ReferenceRange};
use crate::error::DomainError;
use crate::serde_time;
pub use crate::staff::RoleGrant;

// ---------------------------------------------------------------- patients

/// A person's name as used clinically.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HumanName {
    pub given: Vec<String>,
    pub family: String,
}

/// Administrative sex (FHIR `AdministrativeGender`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sex {
    Female,
    Male,
    Other,
    Unknown,
}

impl Sex {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Female => "female",
            Self::Male => "male",
            Self::Other => "other",
            Self::Unknown => "unknown",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    pub lines: Vec<String>,
    pub city: Option<String>,
    pub postal_code: Option<String>,
    pub country: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    #[serde(default)]
    pub phone: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub address: Option<Address>,
}

/// `patient.registered` v2. (v1 kept `phone` and `email` at the top level; see [`upcast`].)
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatientRegistered {
    pub patient_id: Uuid,
    /// Medical record number, as issued by the clinic.
    pub mrn: String,
    pub name: HumanName,
    #[serde(with = "serde_time::date")]
    pub birth_date: time::Date,
    pub sex: Sex,
    #[serde(default)]
    pub contact: Contact,
}

/// `patient.demographics_updated` v1: only the fields present change.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DemographicsUpdated {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<HumanName>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "serde_time::opt_date")]
    pub birth_date: Option<time::Date>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sex: Option<Sex>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact: Option<Contact>,
}

/// `patient.merged` v1: this record is a duplicate of `into_patient_id`; it is closed
/// for writes and readers are sent to the surviving record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatientMerged {
    pub into_patient_id: Uuid,
}

// ---------------------------------------------------------------- clinical entries

/// The kinds of clinical entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    SoapNote,
    Prescription,
    LabResult,
    Observation,
    Assessment,
    Condition,
    Allergy,
}

impl EntryKind {
    pub const ALL: [EntryKind; 7] = [
        Self::SoapNote,
        Self::Prescription,
        Self::LabResult,
        Self::Observation,
        Self::Assessment,
        Self::Condition,
        Self::Allergy,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SoapNote => "soap_note",
            Self::Prescription => "prescription",
            Self::LabResult => "lab_result",
            Self::Observation => "observation",
            Self::Assessment => "assessment",
            Self::Condition => "condition",
            Self::Allergy => "allergy",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A coded measurement: a lab result or a vital-sign observation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Measurement {
    /// LOINC.
    pub code: Coding,
    pub value: Quantity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_range: Option<ReferenceRange>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConditionStatus {
    Active,
    Recurrence,
    Relapse,
    Inactive,
    Remission,
    Resolved,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Criticality {
    Low,
    High,
    UnableToAssess,
}

/// The clinical content of an entry; the variant is the entry's kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EntryContent {
    SoapNote {
        #[serde(default)]
        subjective: String,
        #[serde(default)]
        objective: String,
        #[serde(default)]
        assessment: String,
        #[serde(default)]
        plan: String,
    },
    /// A medication request.
    Prescription {
        /// RxNorm (or SNOMED CT).
        medication: Coding,
        dosage: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        quantity: Option<Quantity>,
        #[serde(default)]
        refills: u8,
    },
    LabResult(Measurement),
    Observation(Measurement),
    Assessment {
        text: String,
        #[serde(default)]
        codes: Vec<Coding>,
    },
    /// A diagnosis or problem (SNOMED CT or ICD-10).
    Condition {
        code: Coding,
        clinical_status: ConditionStatus,
        #[serde(default, skip_serializing_if = "Option::is_none", with = "serde_time::opt_date")]
        onset: Option<time::Date>,
    },
    Allergy {
        /// SNOMED CT or RxNorm.
        substance: Coding,
        criticality: Criticality,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reaction: Option<String>,
    },
}

impl EntryContent {
    pub fn kind(&self) -> EntryKind {
        match self {
            Self::SoapNote { .. } => EntryKind::SoapNote,
            Self::Prescription { .. } => EntryKind::Prescription,
            Self::LabResult(_) => EntryKind::LabResult,
            Self::Observation(_) => EntryKind::Observation,
            Self::Assessment { .. } => EntryKind::Assessment,
            Self::Condition { .. } => EntryKind::Condition,
            Self::Allergy { .. } => EntryKind::Allergy,
        }
    }
}

/// `entry.recorded` v1. The author is the event's actor; `effective_at` is when the
/// entry clinically took effect (the envelope's recorded-at is when it was written down).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryRecorded {
    pub entry_id: Uuid,
    pub content: EntryContent,
    #[serde(with = "serde_time::instant")]
    pub effective_at: Timestamp,
}

/// `entry.amended` v1: a new version of the entry `amendment_of_id`, by the actor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryAmended {
    pub amendment_id: Uuid,
    pub amendment_of_id: Uuid,
    pub content: EntryContent,
    pub reason: String,
    #[serde(with = "serde_time::instant")]
    pub effective_at: Timestamp,
}

/// `entry.entered_in_error` v1: a retraction. The entry stays in the history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryEnteredInError {
    pub entry_id: Uuid,
    pub reason: String,
}

// ---------------------------------------------------------------- consent

/// What a patient's data may be used for (GDPR Art. 9 purposes, kept apart).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    Treatment,
    Insurance,
    Research,
    Marketing,
}

impl Purpose {
    pub const ALL: [Purpose; 4] = [Self::Treatment, Self::Insurance, Self::Research, Self::Marketing];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Treatment => "treatment",
            Self::Insurance => "insurance",
            Self::Research => "research",
            Self::Marketing => "marketing",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsentMethod {
    Written,
    Electronic,
    Verbal,
}

/// `consent.recorded` v1: a new consent, superseding the one in force (if any).
/// Purposes not listed are refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentRecorded {
    pub consent_id: Uuid,
    pub granted: BTreeSet<Purpose>,
    pub method: ConsentMethod,
    /// The staff member who witnessed it, if anyone did.
    #[serde(default)]
    pub witness_id: Option<Uuid>,
    /// When the patient gave it.
    #[serde(with = "serde_time::instant")]
    pub given_at: Timestamp,
    /// The consent it replaces (set by the command handler from the state).
    #[serde(default)]
    pub supersedes: Option<Uuid>,
}

/// `consent.withdrawn` v1: the patient withdraws some (or all) purposes of the consent
/// in force.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentWithdrawn {
    pub consent_id: Uuid,
    pub purposes: BTreeSet<Purpose>,
    #[serde(default)]
    pub witness_id: Option<Uuid>,
    #[serde(with = "serde_time::instant")]
    pub withdrawn_at: Timestamp,
}

// ---------------------------------------------------------------- care team

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CareRole {
    PrimaryCare,
    Attending,
    Consultant,
    Nurse,
}

impl CareRole {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PrimaryCare => "primary_care",
            Self::Attending => "attending",
            Self::Consultant => "consultant",
            Self::Nurse => "nurse",
        }
    }
}

/// `care_team.member_assigned` v1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CareTeamMemberAssigned {
    pub clinician_id: Uuid,
    pub care_role: CareRole,
}

/// `care_team.member_removed` v1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CareTeamMemberRemoved {
    pub clinician_id: Uuid,
}

// ---------------------------------------------------------------- appointments

/// Administrative visit types: what a receptionist may see (no clinical reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VisitType {
    FirstVisit,
    FollowUp,
    Procedure,
    Telehealth,
    LabDraw,
}

impl VisitType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FirstVisit => "first_visit",
            Self::FollowUp => "follow_up",
            Self::Procedure => "procedure",
            Self::Telehealth => "telehealth",
            Self::LabDraw => "lab_draw",
        }
    }
}

/// `appointment.scheduled` v1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppointmentScheduled {
    pub appointment_id: Uuid,
    pub clinician_id: Uuid,
    pub visit_type: VisitType,
    #[serde(with = "serde_time::instant")]
    pub start: Timestamp,
    #[serde(with = "serde_time::instant")]
    pub end: Timestamp,
}

/// `appointment.rescheduled` v1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppointmentRescheduled {
    pub appointment_id: Uuid,
    #[serde(with = "serde_time::instant")]
    pub start: Timestamp,
    #[serde(with = "serde_time::instant")]
    pub end: Timestamp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelledBy {
    Patient,
    Clinic,
}

/// `appointment.cancelled` v1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppointmentCancelled {
    pub appointment_id: Uuid,
    pub cancelled_by: CancelledBy,
}

/// `appointment.completed` v1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppointmentCompleted {
    pub appointment_id: Uuid,
}

// ---------------------------------------------------------------- access

/// What part of a record was touched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessAction {
    View,
    Create,
    Update,
    Export,
    Print,
}

impl AccessAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::View => "view",
            Self::Create => "create",
            Self::Update => "update",
            Self::Export => "export",
            Self::Print => "print",
        }
    }
}

/// Purpose of use (after HL7 `PurposeOfUse`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PurposeOfUse {
    Treatment,
    Payment,
    Operations,
    Emergency,
    PatientRequest,
    Legal,
    Audit,
    /// Secondary use for research: needs the patient's research consent.
    Research,
    /// Marketing: needs the patient's marketing consent.
    Marketing,
}

impl PurposeOfUse {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Treatment => "treatment",
            Self::Payment => "payment",
            Self::Operations => "operations",
            Self::Emergency => "emergency",
            Self::PatientRequest => "patient_request",
            Self::Legal => "legal",
            Self::Audit => "audit",
            Self::Research => "research",
            Self::Marketing => "marketing",
        }
    }
}

/// `access.recorded` v2, in the patient's access stream: who (the actor, with the role
/// held), what, why, and from where.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordAccessed {
    pub patient_id: Uuid,
    pub resources: BTreeSet<ResourceKind>,
    pub action: AccessAction,
    pub purpose: PurposeOfUse,
    /// Present exactly when access was granted by break-glass.
    #[serde(default)]
    pub break_glass_reason: Option<String>,
    #[serde(default)]
    pub client_addr: Option<String>,
    #[serde(default)]
    pub user_agent: Option<String>,
    #[serde(default)]
    pub session_id: Option<Uuid>,
    /// v2: the case or matter the access was made for (auditors and legal staff must
    /// name one for history and point-in-time reads); free text, bounded, validated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub case_ref: Option<String>,
}

// ---------------------------------------------------------------- security and staff

/// The roles of a clinic's users.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Physician,
    Nurse,
    Receptionist,
    Administrator,
    Auditor,
    Legal,
    Patient,
}

impl Role {
    pub const ALL: [Role; 7] = [
        Self::Physician,
        Self::Nurse,
        Self::Receptionist,
        Self::Administrator,
        Self::Auditor,
        Self::Legal,
        Self::Patient,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Physician => "physician",
            Self::Nurse => "nurse",
            Self::Receptionist => "receptionist",
            Self::Administrator => "administrator",
            Self::Auditor => "auditor",
            Self::Legal => "legal",
            Self::Patient => "patient",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
    /// The role as the envelope spells it.
    pub fn role_name(self) -> ledger::RoleName {
        ledger::RoleName::new(self.as_str()).unwrap_or_else(|_| ledger::RoleName::system())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoginFailure {
    UnknownUser,
    BadPassword,
    BadMfaCode,
    Locked,
    Deactivated,
    /// The password was right, but the user holds several roles and named none.
    RoleRequired,
    /// The password was right, but the user does not hold the role named.
    RoleNotHeld,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionEnd {
    Logout,
    IdleTimeout,
    AbsoluteTimeout,
    Revoked,
}

/// `security.*` v1 events, in the `$security` stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginSucceeded {
    pub user_id: Uuid,
    pub session_id: Uuid,
    pub mfa: bool,
    #[serde(default)]
    pub client_addr: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginFailed {
    /// Absent when the user name matched nobody.
    #[serde(default)]
    pub user_id: Option<Uuid>,
    pub failure: LoginFailure,
    #[serde(default)]
    pub client_addr: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MfaEnrolled {
    pub user_id: Uuid,
}

/// `security.mfa_challenged` v1: the password was right and a second factor was asked for
/// (`session_id` is the pending session the code must complete).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MfaChallenged {
    pub user_id: Uuid,
    pub session_id: Uuid,
}

/// `security.password_changed` v1: the user replaced their password.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasswordChanged {
    pub user_id: Uuid,
}

/// `security.access_denied` v1: an authenticated request was refused by the access
/// policy (role, care team, consent). `operation` and `reason` are stable codes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessDenied {
    pub user_id: Uuid,
    pub session_id: Uuid,
    #[serde(default)]
    pub patient_id: Option<Uuid>,
    pub operation: String,
    pub reason: String,
    #[serde(default)]
    pub client_addr: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionEnded {
    pub user_id: Uuid,
    pub session_id: Uuid,
    pub end: SessionEnd,
}

/// `staff.*` v1 events, in the `$staff` stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserCreated {
    pub user_id: Uuid,
    pub username: String,
    pub display_name: String,
    pub roles: BTreeSet<Role>,
    /// For patient users: their own record.
    #[serde(default)]
    pub patient_id: Option<Uuid>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleChanged {
    pub user_id: Uuid,
    pub role: Role,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserDeactivated {
    pub user_id: Uuid,
}

// ---------------------------------------------------------------- the catalog

macro_rules! catalog {
    ($( $variant:ident($ty:ty) = $name:literal v $version:literal ),+ $(,)?) => {
        /// Every domain event, at its current schema version.
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum DomainEvent {
            $( $variant($ty), )+
        }

        /// Event type names with their current schema versions.
        pub const CATALOG: &[(&str, u16)] = &[ $( ($name, $version), )+ ];

        impl DomainEvent {
            /// The envelope's `event_type`.
            pub fn type_name(&self) -> &'static str {
                match self { $( Self::$variant(_) => $name, )+ }
            }
            /// The current schema version of this event's type.
            pub fn schema_version(&self) -> u16 {
                match self { $( Self::$variant(_) => $version, )+ }
            }
            /// The canonical payload: compact JSON, fields in declaration order.
            pub fn to_payload(&self) -> Vec<u8> {
                let r = match self { $( Self::$variant(e) => serde_json::to_vec(e), )+ };
                // Serializing these plain structs to a Vec cannot fail.
                r.unwrap_or_default()
            }
            fn decode_current(type_name: &str, payload: &[u8]) -> Result<Self, DomainError> {
                match type_name {
                    $( $name => serde_json::from_slice::<$ty>(payload).map(Self::$variant).map_err(json_error), )+
                    _ => Err(DomainError::UnknownEventType),
                }
            }
            fn from_current(type_name: &str, v: Value) -> Result<Self, DomainError> {
                match type_name {
                    $( $name => serde_json::from_value::<$ty>(v).map(Self::$variant).map_err(json_error), )+
                    _ => Err(DomainError::UnknownEventType),
                }
            }
        }
    };
}

catalog! {
    PatientRegistered(PatientRegistered) = "patient.registered" v 2,
    DemographicsUpdated(DemographicsUpdated) = "patient.demographics_updated" v 1,
    PatientMerged(PatientMerged) = "patient.merged" v 1,
    EntryRecorded(EntryRecorded) = "entry.recorded" v 1,
    EntryAmended(EntryAmended) = "entry.amended" v 1,
    EntryEnteredInError(EntryEnteredInError) = "entry.entered_in_error" v 1,
    ConsentRecorded(ConsentRecorded) = "consent.recorded" v 1,
    ConsentWithdrawn(ConsentWithdrawn) = "consent.withdrawn" v 1,
    CareTeamMemberAssigned(CareTeamMemberAssigned) = "care_team.member_assigned" v 1,
    CareTeamMemberRemoved(CareTeamMemberRemoved) = "care_team.member_removed" v 1,
    AppointmentScheduled(AppointmentScheduled) = "appointment.scheduled" v 1,
    AppointmentRescheduled(AppointmentRescheduled) = "appointment.rescheduled" v 1,
    AppointmentCancelled(AppointmentCancelled) = "appointment.cancelled" v 1,
    AppointmentCompleted(AppointmentCompleted) = "appointment.completed" v 1,
    RecordAccessed(RecordAccessed) = "access.recorded" v 2,
    LoginSucceeded(LoginSucceeded) = "security.login_succeeded" v 1,
    LoginFailed(LoginFailed) = "security.login_failed" v 1,
    MfaEnrolled(MfaEnrolled) = "security.mfa_enrolled" v 1,
    SessionEnded(SessionEnded) = "security.session_ended" v 1,
    MfaChallenged(MfaChallenged) = "security.mfa_challenged" v 1,
    AccessDenied(AccessDenied) = "security.access_denied" v 1,
    PasswordChanged(PasswordChanged) = "security.password_changed" v 1,
    UserCreated(UserCreated) = "staff.user_created" v 1,
    RoleGranted(RoleChanged) = "staff.role_granted" v 1,
    RoleRevoked(RoleChanged) = "staff.role_revoked" v 1,
    UserDeactivated(UserDeactivated) = "staff.user_deactivated" v 1,
    RoleGrantProposed(RoleGrant) = "staff.role_grant_proposed" v 1,
    RoleGrantApproved(RoleGrant) = "staff.role_grant_approved" v 1,
    RoleGrantCancelled(RoleGrant) = "staff.role_grant_cancelled" v 1,
}

/// serde_json's messages can quote the offending value (PHI): keep only its category.
fn json_error(e: serde_json::Error) -> DomainError {
    let category = match e.classify() {
        serde_json::error::Category::Io => "io",
        serde_json::error::Category::Syntax => "syntax",
        serde_json::error::Category::Data => "data",
        serde_json::error::Category::Eof => "eof",
    };
    DomainError::MalformedPayload { category }
}

/// The current schema version of `type_name`.
pub fn current_version(type_name: &str) -> Option<u16> {
    CATALOG.iter().find(|(n, _)| *n == type_name).map(|(_, v)| *v)
}

/// Lift a payload of `type_name` at schema `version` to the current version, one step
/// at a time. Each step is a pure function of the JSON value; a version newer than this
/// build knows is refused rather than guessed at.
pub fn upcast(type_name: &str, version: u16, mut value: Value) -> Result<Value, DomainError> {
    let current = current_version(type_name).ok_or(DomainError::UnknownEventType)?;
    if version > current || version == 0 {
        return Err(DomainError::FutureSchemaVersion { found: version, supported: current });
    }
    for from in version..current {
        value = match (type_name, from) {
            ("patient.registered", 1) => patient_registered_v1_to_v2(value)?,
            ("access.recorded", 1) => access_recorded_v1_to_v2(value)?,
            _ => return Err(DomainError::MalformedPayload { category: "missing_upcaster" }),
        };
    }
    Ok(value)
}

/// v1 carried `phone` and `email` beside the name; v2 groups them (with an address)
/// under `contact`.
fn patient_registered_v1_to_v2(mut v: Value) -> Result<Value, DomainError> {
    let obj = v.as_object_mut().ok_or(DomainError::MalformedPayload { category: "data" })?;
    let phone = obj.remove("phone").unwrap_or(Value::Null);
    let email = obj.remove("email").unwrap_or(Value::Null);
    obj.insert("contact".into(), serde_json::json!({ "phone": phone, "email": email, "address": null }));
    Ok(v)
}

/// v2 added the optional `case_ref`. A v1 payload names no case: a `case_ref` member in
/// one (unknown to v1, so ignored by v1 readers) is dropped, never read as a case.
fn access_recorded_v1_to_v2(mut v: Value) -> Result<Value, DomainError> {
    let obj = v.as_object_mut().ok_or(DomainError::MalformedPayload { category: "data" })?;
    obj.remove("case_ref");
    Ok(v)
}

impl DomainEvent {
    /// Decode a stored payload of `type_name` at `version`, upcasting older versions.
    pub fn decode(type_name: &str, version: u16, payload: &[u8]) -> Result<Self, DomainError> {
        let current = current_version(type_name).ok_or(DomainError::UnknownEventType)?;
        if version == current {
            // Fast path: no intermediate JSON value.
            return Self::decode_current(type_name, payload);
        }
        let value: Value = serde_json::from_slice(payload).map_err(json_error)?;
        Self::from_current(type_name, upcast(type_name, version, value)?)
    }

    /// The patient this event is about, if any.
    pub fn patient_id(&self, stream: &StreamId) -> Option<Uuid> {
        match self {
            Self::RecordAccessed(a) => Some(a.patient_id),
            Self::PatientRegistered(p) => Some(p.patient_id),
            _ => crate::streams::patient_of(stream),
        }
    }

    /// The envelope's event type.
    #[allow(clippy::expect_used)] // catalog names are valid event types: `catalog_names_are_valid_and_unique`
    pub fn event_type(&self) -> EventType {
        EventType::new(self.type_name()).expect("catalog names are valid event types")
    }
}

/// A decoded event with the envelope facts the folds need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub position: u64,
    pub stream: StreamId,
    pub stream_revision: u64,
    pub event_id: Uuid,
    pub recorded_at: Timestamp,
    pub actor: Actor,
    pub event: DomainEvent,
}

impl Recorded {
    /// Decode an envelope and its payload. An erased payload is reported as
    /// [`DomainError::PayloadErased`].
    pub fn decode(
        position: u64,
        event: &SignedEvent,
        payload: Option<&Payload>,
    ) -> Result<Self, DomainError> {
        let body = event.body();
        let payload = payload.ok_or(DomainError::PayloadErased)?;
        let decoded = DomainEvent::decode(body.event_type.as_str(), body.schema_version, payload.bytes())?;
        Ok(Self {
            position,
            stream: body.stream_id.clone(),
            stream_revision: body.stream_revision,
            event_id: body.event_id,
            recorded_at: body.recorded_at,
            actor: body.actor.clone(),
            event: decoded,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_names_are_valid_and_unique() {
        let mut seen = BTreeSet::new();
        for (name, version) in CATALOG {
            assert!(EventType::new(*name).is_ok(), "{name}");
            assert!(*version >= 1);
            assert!(seen.insert(*name), "duplicate {name}");
        }
    }

    #[test]
    fn patient_registered_v1_upcasts_to_v2() {
        let v1 = br#"{"patient_id":"0193a4b2-0000-7000-8000-000000000001","mrn":"MRN-1","name":{"given":["Ada"],"family":"Lovelace"},"birth_date":"1815-12-10","sex":"female","phone":"+44 20 0000","email":null}"#;
        let e = DomainEvent::decode("patient.registered", 1, v1).unwrap();
        let DomainEvent::PatientRegistered(p) = e else { panic!("wrong variant") };
        assert_eq!(p.contact.phone.as_deref(), Some("+44 20 0000"));
        assert_eq!(p.contact.email, None);
        assert_eq!(p.mrn, "MRN-1");
    }

    #[test]
    fn access_recorded_v1_decodes_without_a_case_and_v2_keeps_it() {
        let v1 = br#"{"patient_id":"0193a4b2-0000-7000-8000-000000000001","resources":["history"],"action":"view","purpose":"audit","break_glass_reason":null,"client_addr":null,"user_agent":null,"session_id":null,"case_ref":"smuggled"}"#;
        let DomainEvent::RecordAccessed(a) = DomainEvent::decode("access.recorded", 1, v1).unwrap() else {
            panic!("wrong variant")
        };
        assert_eq!(a.case_ref, None);
        let v2 = DomainEvent::RecordAccessed(RecordAccessed { case_ref: Some("CASE-1".into()), ..a.clone() });
        assert_eq!(DomainEvent::decode("access.recorded", 2, &v2.to_payload()).unwrap(), v2);
        // Without a case, a v2 payload is byte for byte what v1 wrote.
        let plain = DomainEvent::RecordAccessed(a).to_payload();
        assert!(!String::from_utf8(plain).unwrap().contains("case_ref"));
    }

    #[test]
    fn future_and_unknown_versions_are_refused() {
        assert_eq!(
            DomainEvent::decode("patient.registered", 3, b"{}"),
            Err(DomainError::FutureSchemaVersion { found: 3, supported: 2 })
        );
        assert_eq!(DomainEvent::decode("nope.nope", 1, b"{}"), Err(DomainError::UnknownEventType));
    }

    #[test]
    fn malformed_payload_errors_do_not_quote_the_payload() {
        let bad = br#"{"entry_id":"not-a-uuid-SECRET-DIAGNOSIS","content":{},"effective_at":"x"}"#;
        let err = DomainEvent::decode("entry.recorded", 1, bad).unwrap_err();
        assert_eq!(err.code(), "domain.malformed_payload");
        assert!(!err.to_string().contains("SECRET"));
    }
}
