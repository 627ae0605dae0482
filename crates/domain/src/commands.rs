//! Commands: what a user asks for, validated against the current chart into exactly one
//! event, or refused with a typed error. `decide` is pure; invalid input changes nothing.

use std::collections::BTreeSet;

use ledger::Timestamp;
use uuid::Uuid;

use crate::chart::{AppointmentStatus, Chart, EntryStatus};
use crate::codes::{text, CodeSystem};
use crate::error::DomainError;
use crate::events::*;

/// How far in the future a clinical effective time may lie (clock skew between devices).
pub const EFFECTIVE_SKEW_MICROS: i64 = 5 * 60 * 1_000_000;
const DAY_MICROS: i64 = 24 * 3600 * 1_000_000;

/// A change to one patient's record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    RegisterPatient(PatientRegistered),
    UpdateDemographics(DemographicsUpdated),
    MergePatient {
        into_patient_id: Uuid,
    },
    RecordEntry {
        entry_id: Uuid,
        content: EntryContent,
        effective_at: Timestamp,
    },
    /// Amend `entry_id` (the original entry, or any of its amendments).
    AmendEntry {
        amendment_id: Uuid,
        entry_id: Uuid,
        content: EntryContent,
        reason: String,
        effective_at: Timestamp,
    },
    MarkEnteredInError {
        entry_id: Uuid,
        reason: String,
    },
    RecordConsent {
        consent_id: Uuid,
        granted: BTreeSet<Purpose>,
        method: ConsentMethod,
        witness_id: Option<Uuid>,
        given_at: Timestamp,
    },
    /// Withdraw `purposes` (all, when empty) from the consent in force.
    WithdrawConsent {
        purposes: BTreeSet<Purpose>,
        witness_id: Option<Uuid>,
        withdrawn_at: Timestamp,
    },
    AssignCareTeamMember {
        clinician_id: Uuid,
        care_role: CareRole,
    },
    RemoveCareTeamMember {
        clinician_id: Uuid,
    },
    ScheduleAppointment {
        appointment_id: Uuid,
        clinician_id: Uuid,
        visit_type: VisitType,
        start: Timestamp,
        end: Timestamp,
    },
    RescheduleAppointment {
        appointment_id: Uuid,
        start: Timestamp,
        end: Timestamp,
    },
    CancelAppointment {
        appointment_id: Uuid,
        cancelled_by: CancelledBy,
    },
    CompleteAppointment {
        appointment_id: Uuid,
    },
}

impl Command {
    /// The access action this command is, for the access log.
    pub fn action(&self) -> AccessAction {
        match self {
            Self::RegisterPatient(_) | Self::RecordEntry { .. } | Self::RecordConsent { .. } => {
                AccessAction::Create
            }
            _ => AccessAction::Update,
        }
    }
}

/// Validate `cmd` against `chart` at time `now`.
pub fn decide(chart: &Chart, cmd: Command, now: Timestamp) -> Result<DomainEvent, DomainError> {
    if let Command::RegisterPatient(p) = cmd {
        if chart.is_registered() {
            return Err(DomainError::PatientAlreadyRegistered);
        }
        if p.patient_id != chart.patient_id {
            return Err(DomainError::MalformedValue { field: "patient_id" });
        }
        new_id(p.patient_id, "patient_id")?;
        validate_registration(&p, now)?;
        return Ok(DomainEvent::PatientRegistered(p));
    }
    let demographics = chart.demographics.as_ref().ok_or(DomainError::UnknownPatient)?;
    if demographics.merged_into.is_some() {
        return Err(DomainError::PatientMerged);
    }
    Ok(match cmd {
        Command::RegisterPatient(_) => return Err(DomainError::PatientAlreadyRegistered),
        Command::UpdateDemographics(u) => {
            if u == DemographicsUpdated::default() {
                return Err(DomainError::MissingField { field: "demographics" });
            }
            if let Some(n) = &u.name {
                validate_name(n)?;
            }
            if let Some(b) = u.birth_date {
                validate_birth_date(b, now)?;
            }
            if let Some(c) = &u.contact {
                validate_contact(c)?;
            }
            DomainEvent::DemographicsUpdated(u)
        }
        Command::MergePatient { into_patient_id } => {
            if into_patient_id == chart.patient_id {
                return Err(DomainError::SelfMerge);
            }
            DomainEvent::PatientMerged(PatientMerged { into_patient_id })
        }
        Command::RecordEntry { entry_id, content, effective_at } => {
            if chart.entries.contains_key(&entry_id) {
                return Err(DomainError::DuplicateEntry);
            }
            new_id(entry_id, "entry_id")?;
            validate_content(&content)?;
            validate_effective(effective_at, now)?;
            DomainEvent::EntryRecorded(EntryRecorded { entry_id, content, effective_at })
        }
        Command::AmendEntry { amendment_id, entry_id, content, reason, effective_at } => {
            let root = resolve_entry(chart, entry_id)?;
            let entry = chart.entries.get(&root).ok_or(DomainError::UnknownEntry)?;
            if entry.status == EntryStatus::EnteredInError {
                return Err(DomainError::EntryRetracted);
            }
            if entry.kind != content.kind() {
                return Err(DomainError::EntryKindChanged);
            }
            if chart.entries.contains_key(&amendment_id) || resolve_entry(chart, amendment_id).is_ok() {
                return Err(DomainError::DuplicateEntry);
            }
            new_id(amendment_id, "amendment_id")?;
            text(&reason, 1000, "reason")?;
            validate_content(&content)?;
            validate_effective(effective_at, now)?;
            DomainEvent::EntryAmended(EntryAmended {
                amendment_id,
                amendment_of_id: root,
                content,
                reason,
                effective_at,
            })
        }
        Command::MarkEnteredInError { entry_id, reason } => {
            let root = resolve_entry(chart, entry_id)?;
            let entry = chart.entries.get(&root).ok_or(DomainError::UnknownEntry)?;
            if entry.status == EntryStatus::EnteredInError {
                return Err(DomainError::EntryRetracted);
            }
            text(&reason, 1000, "reason")?;
            DomainEvent::EntryEnteredInError(EntryEnteredInError { entry_id: root, reason })
        }
        Command::RecordConsent { consent_id, granted, method, witness_id, given_at } => {
            if chart.consent.versions.iter().any(|v| v.consent_id == consent_id) {
                return Err(DomainError::DuplicateConsent);
            }
            new_id(consent_id, "consent_id")?;
            validate_effective(given_at, now)?;
            let supersedes = chart.consent.current().map(|c| c.consent_id);
            DomainEvent::ConsentRecorded(ConsentRecorded {
                consent_id,
                granted,
                method,
                witness_id,
                given_at,
                supersedes,
            })
        }
        Command::WithdrawConsent { purposes, witness_id, withdrawn_at } => {
            let current = chart.consent.current().ok_or(DomainError::UnknownConsent)?;
            let purposes: BTreeSet<Purpose> =
                if purposes.is_empty() { current.granted.clone() } else { purposes };
            if purposes.is_disjoint(&current.granted) {
                return Err(DomainError::EmptyConsent);
            }
            validate_effective(withdrawn_at, now)?;
            DomainEvent::ConsentWithdrawn(ConsentWithdrawn {
                consent_id: current.consent_id,
                purposes,
                witness_id,
                withdrawn_at,
            })
        }
        Command::AssignCareTeamMember { clinician_id, care_role } => {
            if chart.care_team.contains_key(&clinician_id) {
                return Err(DomainError::AlreadyOnCareTeam);
            }
            DomainEvent::CareTeamMemberAssigned(CareTeamMemberAssigned { clinician_id, care_role })
        }
        Command::RemoveCareTeamMember { clinician_id } => {
            if !chart.care_team.contains_key(&clinician_id) {
                return Err(DomainError::NotOnCareTeam);
            }
            DomainEvent::CareTeamMemberRemoved(CareTeamMemberRemoved { clinician_id })
        }
        Command::ScheduleAppointment { appointment_id, clinician_id, visit_type, start, end } => {
            if chart.appointments.contains_key(&appointment_id) {
                return Err(DomainError::DuplicateAppointment);
            }
            new_id(appointment_id, "appointment_id")?;
            validate_slot(start, end, now)?;
            DomainEvent::AppointmentScheduled(AppointmentScheduled {
                appointment_id,
                clinician_id,
                visit_type,
                start,
                end,
            })
        }
        Command::RescheduleAppointment { appointment_id, start, end } => {
            scheduled(chart, appointment_id, "rescheduled")?;
            validate_slot(start, end, now)?;
            DomainEvent::AppointmentRescheduled(AppointmentRescheduled { appointment_id, start, end })
        }
        Command::CancelAppointment { appointment_id, cancelled_by } => {
            scheduled(chart, appointment_id, "cancelled")?;
            DomainEvent::AppointmentCancelled(AppointmentCancelled { appointment_id, cancelled_by })
        }
        Command::CompleteAppointment { appointment_id } => {
            scheduled(chart, appointment_id, "completed")?;
            DomainEvent::AppointmentCompleted(AppointmentCompleted { appointment_id })
        }
    })
}

/// Ids of new things (patients, entries, amendments, consents, appointments) are chosen
/// by the client and must be UUIDv7 (RFC 9562): nil, v4 and the rest are refused.
fn new_id(id: Uuid, field: &'static str) -> Result<(), DomainError> {
    if id.get_version_num() != 7 || id.get_variant() != uuid::Variant::RFC4122 {
        return Err(DomainError::MalformedValue { field });
    }
    Ok(())
}

/// The original entry of `id`, which may name the entry or one of its amendments.
fn resolve_entry(chart: &Chart, id: Uuid) -> Result<Uuid, DomainError> {
    if chart.entries.contains_key(&id) {
        return Ok(id);
    }
    chart
        .entries
        .values()
        .find(|e| {
            e.versions.iter().any(
                |v| matches!(&v.change, crate::chart::VersionChange::Amended { amendment_id, .. } if *amendment_id == id),
            )
        })
        .map(|e| e.entry_id)
        .ok_or(DomainError::UnknownEntry)
}

fn scheduled(chart: &Chart, id: Uuid, action: &'static str) -> Result<(), DomainError> {
    let a = chart.appointments.get(&id).ok_or(DomainError::UnknownAppointment)?;
    match a.status {
        AppointmentStatus::Scheduled => Ok(()),
        other => Err(DomainError::AppointmentState { state: other.as_str(), action }),
    }
}

fn validate_slot(start: Timestamp, end: Timestamp, now: Timestamp) -> Result<(), DomainError> {
    if start <= now {
        return Err(DomainError::AppointmentInPast);
    }
    if start.as_micros() > now.as_micros().saturating_add(BOOKING_HORIZON_MICROS) {
        return Err(DomainError::MalformedValue { field: "start" });
    }
    let len = end.as_micros().saturating_sub(start.as_micros());
    if len <= 0 || len > DAY_MICROS {
        return Err(DomainError::AppointmentBadInterval);
    }
    Ok(())
}

/// 1880-01-01T00:00:00Z: no clinical time lies before it.
const EARLIEST_MICROS: i64 = -2_840_140_800_000_000;
/// Appointments are booked at most this far ahead (about two years).
const BOOKING_HORIZON_MICROS: i64 = 731 * DAY_MICROS;

fn validate_effective(at: Timestamp, now: Timestamp) -> Result<(), DomainError> {
    if at.as_micros() < EARLIEST_MICROS {
        return Err(DomainError::MalformedValue { field: "effective_at" });
    }
    if at.as_micros() > now.as_micros().saturating_add(EFFECTIVE_SKEW_MICROS) {
        return Err(DomainError::EffectiveInFuture);
    }
    Ok(())
}

fn validate_name(n: &HumanName) -> Result<(), DomainError> {
    text(&n.family, 200, "name.family")?;
    if n.given.len() > 10 {
        return Err(DomainError::TooLong { field: "name.given", max: 10 });
    }
    for g in &n.given {
        text(g, 200, "name.given")?;
    }
    Ok(())
}

fn validate_birth_date(b: time::Date, now: Timestamp) -> Result<(), DomainError> {
    // The latest calendar date anywhere on Earth (UTC+14), so a newborn registered east
    // of UTC before UTC midnight is not refused.
    let today = time::OffsetDateTime::from_unix_timestamp(now.as_micros().div_euclid(1_000_000) + 14 * 3600)
        .map(|t| t.date())
        .map_err(|_| DomainError::MalformedValue { field: "now" })?;
    if b > today || b.year() < 1880 {
        return Err(DomainError::MalformedValue { field: "birth_date" });
    }
    Ok(())
}

fn validate_contact(c: &Contact) -> Result<(), DomainError> {
    if let Some(p) = &c.phone {
        text(p, 40, "contact.phone")?;
        if !p.chars().all(|ch| ch.is_ascii_digit() || " +-().".contains(ch)) {
            return Err(DomainError::MalformedValue { field: "contact.phone" });
        }
    }
    if let Some(e) = &c.email {
        text(e, 254, "contact.email")?;
        let ok = e.split_once('@').is_some_and(|(l, d)| !l.is_empty() && d.contains('.') && !e.contains(' '));
        if !ok {
            return Err(DomainError::MalformedValue { field: "contact.email" });
        }
    }
    if let Some(a) = &c.address {
        if a.lines.len() > 5 {
            return Err(DomainError::TooLong { field: "contact.address.lines", max: 5 });
        }
        for l in &a.lines {
            text(l, 200, "contact.address.lines")?;
        }
        for (v, f) in [
            (&a.city, "contact.address.city"),
            (&a.postal_code, "contact.address.postal_code"),
            (&a.country, "contact.address.country"),
        ] {
            if let Some(v) = v {
                text(v, 100, f)?;
            }
        }
    }
    Ok(())
}

fn validate_registration(p: &PatientRegistered, now: Timestamp) -> Result<(), DomainError> {
    text(&p.mrn, 64, "mrn")?;
    if !p.mrn.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(DomainError::MalformedValue { field: "mrn" });
    }
    validate_name(&p.name)?;
    validate_birth_date(p.birth_date, now)?;
    validate_contact(&p.contact)
}

/// Check an entry's content: codes in their allowed systems, quantities in UCUM, texts
/// within limits.
pub fn validate_content(c: &EntryContent) -> Result<(), DomainError> {
    use CodeSystem::*;
    match c {
        EntryContent::SoapNote { subjective, objective, assessment, plan } => {
            let parts = [subjective, objective, assessment, plan];
            if parts.iter().all(|p| p.trim().is_empty()) {
                return Err(DomainError::MissingField { field: "soap_note" });
            }
            for p in parts.into_iter().filter(|p| !p.trim().is_empty()) {
                text(p, 20_000, "soap_note")?;
            }
        }
        EntryContent::Prescription { medication, dosage, quantity, refills: _ } => {
            medication.validate(&[RxNorm, SnomedCt], "medication")?;
            text(dosage, 500, "dosage")?;
            if let Some(q) = quantity {
                q.validate("quantity")?;
            }
        }
        EntryContent::LabResult(m) | EntryContent::Observation(m) => {
            m.code.validate(&[Loinc], "code")?;
            m.value.validate("value")?;
            if let Some(r) = &m.reference_range {
                r.validate(&m.value.unit, "reference_range")?;
            }
            if let Some(n) = &m.note {
                text(n, 2000, "note")?;
            }
        }
        EntryContent::Assessment { text: t, codes } => {
            text(t, 20_000, "assessment")?;
            for code in codes {
                code.validate(&[SnomedCt, Icd10, Loinc], "codes")?;
            }
        }
        EntryContent::Condition { code, .. } => code.validate(&[SnomedCt, Icd10], "code")?,
        EntryContent::Allergy { substance, reaction, .. } => {
            substance.validate(&[SnomedCt, RxNorm], "substance")?;
            if let Some(r) = reaction {
                text(r, 500, "reaction")?;
            }
        }
    }
    Ok(())
}

impl RecordAccessed {
    /// Access events are facts, not requests, but a break-glass access must say why and
    /// free-text fields are bounded.
    pub fn validate(&self) -> Result<(), DomainError> {
        if self.purpose == PurposeOfUse::Emergency && self.break_glass_reason.is_none() {
            return Err(DomainError::BreakGlassReasonMissing);
        }
        if let Some(r) = &self.break_glass_reason {
            text(r, 1000, "break_glass_reason")?;
        }
        if self.resources.is_empty() {
            return Err(DomainError::MissingField { field: "resources" });
        }
        for (v, f, max) in [(&self.client_addr, "client_addr", 64), (&self.user_agent, "user_agent", 512)] {
            if let Some(v) = v {
                text(v, max, f)?;
            }
        }
        if let Some(c) = &self.case_ref {
            crate::staff::validate_case_ref(c)?;
        }
        Ok(())
    }
}

impl UserCreated {
    /// User names are lowercase tokens; display names are bounded text. `roles` may be
    /// empty: roles that need a second administrator's approval are not in it but
    /// proposed beside it (`crate::staff`).
    pub fn validate(&self) -> Result<(), DomainError> {
        let u = &self.username;
        if u.is_empty()
            || u.len() > 64
            || !u.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-@".contains(&b))
        {
            return Err(DomainError::MalformedValue { field: "username" });
        }
        text(&self.display_name, 200, "display_name")?;
        Ok(())
    }
}

impl AccessDenied {
    /// Operation and reason are stable codes (lowercase tokens), never free text.
    pub fn validate(&self) -> Result<(), DomainError> {
        let token = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._".contains(&b))
        };
        if !token(&self.operation) {
            return Err(DomainError::MalformedValue { field: "operation" });
        }
        if !token(&self.reason) {
            return Err(DomainError::MalformedValue { field: "reason" });
        }
        if let Some(a) = &self.client_addr {
            text(a, 64, "client_addr")?;
        }
        Ok(())
    }
}
