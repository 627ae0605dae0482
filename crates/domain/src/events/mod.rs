//! The event catalog.
//!
//! Every event type has a name (the envelope's `event_type`), a current schema version,
//! and a JSON payload (UTF-8, serde field names; documented in `schema/events.md`). The
//! payload is the erasable part of an event: the envelope only commits to it.
//!
//! Older schema versions are lifted to the current one by [`upcast`], one version step at
//! a time (v1 → v2 → …), on the JSON value, before the payload is decoded. A stored
//! event is never rewritten; upcasting happens on every read.
//!
//! The payload types are grouped by area, one module each (patients, clinical entries,
//! consent, care team, appointments, access, security and staff), and all named here:
//! `domain::events::PatientRegistered`. This module holds the catalog itself
//! ([`DomainEvent`], [`CATALOG`]), the upcasters and [`Recorded`].

mod access;
mod appointments;
mod care_team;
mod consent;
mod entries;
mod patients;
mod security;

use ledger::{Actor, EventType, Payload, SignedEvent, StreamId, Timestamp};
use serde_json::Value;
use uuid::Uuid;

use crate::error::DomainError;
pub use crate::staff::RoleGrant;

pub use access::*;
pub use appointments::*;
pub use care_team::*;
pub use consent::*;
pub use entries::*;
pub use patients::*;
pub use security::*;

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
mod tests;
