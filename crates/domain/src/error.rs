//! Typed domain errors. Each has a stable code (`domain.*`) and names at most a field,
//! never a value: error messages must never carry PHI.

/// Why a command was refused or an event could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("a required field is missing or empty: {field}")]
    MissingField { field: &'static str },
    #[error("field {field} is longer than {max} characters")]
    TooLong { field: &'static str, max: usize },
    #[error("field {field} has a malformed value")]
    MalformedValue { field: &'static str },
    #[error("field {field} has a code that does not match its code system")]
    MalformedCode { field: &'static str },
    #[error("field {field} uses a code system not allowed there")]
    CodeSystemNotAllowed { field: &'static str },
    #[error("field {field} has a malformed UCUM unit")]
    MalformedUnit { field: &'static str },
    #[error("field {field}: the reference range and the value use different units")]
    UnitMismatch { field: &'static str },
    #[error("the patient is not registered")]
    UnknownPatient,
    #[error("the patient is already registered")]
    PatientAlreadyRegistered,
    #[error("the patient record was merged into another record")]
    PatientMerged,
    #[error("a patient cannot be merged into itself")]
    SelfMerge,
    #[error("the entry does not exist")]
    UnknownEntry,
    #[error("an entry with this id already exists")]
    DuplicateEntry,
    #[error("the entry was marked entered in error and cannot change")]
    EntryRetracted,
    #[error("an amendment must keep the entry's kind")]
    EntryKindChanged,
    #[error("the clinical effective time lies in the future")]
    EffectiveInFuture,
    #[error("no consent with this id is in force")]
    UnknownConsent,
    #[error("a consent with this id already exists")]
    DuplicateConsent,
    #[error("the consent grants nothing and withdraws nothing")]
    EmptyConsent,
    #[error("the clinician is already on the care team")]
    AlreadyOnCareTeam,
    #[error("the clinician is not on the care team")]
    NotOnCareTeam,
    #[error("the appointment does not exist")]
    UnknownAppointment,
    #[error("an appointment with this id already exists")]
    DuplicateAppointment,
    #[error("the appointment would start in the past")]
    AppointmentInPast,
    #[error("the appointment must end after it starts and last at most a day")]
    AppointmentBadInterval,
    #[error("the appointment is {state} and cannot be {action}")]
    AppointmentState { state: &'static str, action: &'static str },
    #[error("break-glass access needs a reason")]
    BreakGlassReasonMissing,
    #[error("the role is not one Chartledger knows")]
    UnknownRole,
    #[error("unknown event type")]
    UnknownEventType,
    #[error("event schema version {found} is newer than this build understands ({supported})")]
    FutureSchemaVersion { found: u16, supported: u16 },
    #[error("the event payload does not match its schema ({category})")]
    MalformedPayload { category: &'static str },
    #[error("the event's payload has been erased")]
    PayloadErased,
    #[error("nobody grants a role to themselves")]
    SelfGrant,
    #[error("a role grant must be approved by an administrator other than its proposer")]
    SelfApproval,
    #[error("the role grant is {state}, not pending")]
    GrantNotPending { state: &'static str },
    #[error("nobody assigns themselves to a care team")]
    SelfAssignment,
}

impl DomainError {
    /// The stable, machine-readable code clients match on.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingField { .. } => "domain.missing_field",
            Self::TooLong { .. } => "domain.too_long",
            Self::MalformedValue { .. } => "domain.malformed_value",
            Self::MalformedCode { .. } => "domain.malformed_code",
            Self::CodeSystemNotAllowed { .. } => "domain.code_system_not_allowed",
            Self::MalformedUnit { .. } => "domain.malformed_unit",
            Self::UnitMismatch { .. } => "domain.unit_mismatch",
            Self::UnknownPatient => "domain.unknown_patient",
            Self::PatientAlreadyRegistered => "domain.patient_already_registered",
            Self::PatientMerged => "domain.patient_merged",
            Self::SelfMerge => "domain.self_merge",
            Self::UnknownEntry => "domain.unknown_entry",
            Self::DuplicateEntry => "domain.duplicate_entry",
            Self::EntryRetracted => "domain.entry_retracted",
            Self::EntryKindChanged => "domain.entry_kind_changed",
            Self::EffectiveInFuture => "domain.effective_in_future",
            Self::UnknownConsent => "domain.unknown_consent",
            Self::DuplicateConsent => "domain.duplicate_consent",
            Self::EmptyConsent => "domain.empty_consent",
            Self::AlreadyOnCareTeam => "domain.already_on_care_team",
            Self::NotOnCareTeam => "domain.not_on_care_team",
            Self::UnknownAppointment => "domain.unknown_appointment",
            Self::DuplicateAppointment => "domain.duplicate_appointment",
            Self::AppointmentInPast => "domain.appointment_in_past",
            Self::AppointmentBadInterval => "domain.appointment_bad_interval",
            Self::AppointmentState { .. } => "domain.appointment_state",
            Self::BreakGlassReasonMissing => "domain.break_glass_reason_missing",
            Self::UnknownRole => "domain.unknown_role",
            Self::UnknownEventType => "domain.unknown_event_type",
            Self::FutureSchemaVersion { .. } => "domain.future_schema_version",
            Self::MalformedPayload { .. } => "domain.malformed_payload",
            Self::PayloadErased => "domain.payload_erased",
            Self::SelfGrant => "domain.self_grant",
            Self::SelfApproval => "domain.self_approval",
            Self::GrantNotPending { .. } => "domain.grant_not_pending",
            Self::SelfAssignment => "domain.self_assignment",
        }
    }
}
