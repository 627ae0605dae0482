//! The chart: a pure fold over one patient's stream.
//!
//! [`Chart::apply`] is total: it never fails and never panics. An event that does not
//! fit the state (which validated commands never produce, but an erased or hand-written
//! event could) is counted in [`Chart::anomalies`] and otherwise ignored, so a
//! projection can never get stuck on one event.
//!
//! **Locality invariant:** applying an event reads and writes only the entity named by
//! [`EntityKey::of`] (plus the revision counters). This is what lets the projection
//! runner load just the touched entities from PostgreSQL, apply the same fold to them,
//! and write them back, with results equal to folding the whole stream in memory.

use std::collections::{BTreeMap, BTreeSet};

use ledger::{Actor, Timestamp};
use uuid::Uuid;

use crate::events::*;

/// One patient's chart, as of the last event applied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chart {
    pub patient_id: Uuid,
    /// `None` until the patient is registered.
    pub demographics: Option<Demographics>,
    pub entries: BTreeMap<Uuid, Entry>,
    pub consent: ConsentState,
    pub care_team: BTreeMap<Uuid, CareTeamMember>,
    pub appointments: BTreeMap<Uuid, Appointment>,
    /// Revision of the last event applied.
    pub revision: Option<u64>,
    /// Global position of the last event applied.
    pub position: Option<u64>,
    /// Events that did not fit the state and were ignored.
    pub anomalies: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Demographics {
    pub mrn: String,
    pub name: HumanName,
    pub birth_date: time::Date,
    pub sex: Sex,
    pub contact: Contact,
    pub registered_at: Timestamp,
    pub updated_at: Timestamp,
    /// 1 at registration, +1 per update.
    pub version: u32,
    pub merged_into: Option<Uuid>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryStatus {
    Active,
    EnteredInError,
}

impl EntryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::EnteredInError => "entered_in_error",
        }
    }
}

/// A clinical entry with every version it has had; the last one is current.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub entry_id: Uuid,
    pub kind: EntryKind,
    pub status: EntryStatus,
    pub versions: Vec<EntryVersion>,
}

impl Entry {
    /// The current version (entries always have at least one).
    pub fn current(&self) -> Option<&EntryVersion> {
        self.versions.last()
    }
}

/// Why a version exists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VersionChange {
    Recorded,
    Amended { amendment_id: Uuid, reason: String },
    EnteredInError { reason: String },
}

impl VersionChange {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Recorded => "recorded",
            Self::Amended { .. } => "amended",
            Self::EnteredInError { .. } => "entered_in_error",
        }
    }
    pub fn reason(&self) -> Option<&str> {
        match self {
            Self::Recorded => None,
            Self::Amended { reason, .. } | Self::EnteredInError { reason } => Some(reason),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryVersion {
    /// 1-based.
    pub version: u32,
    pub change: VersionChange,
    pub content: EntryContent,
    pub effective_at: Timestamp,
    pub author: Actor,
    pub recorded_at: Timestamp,
    pub event_id: Uuid,
    pub position: u64,
}

/// The consent in force and every version before it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConsentState {
    pub versions: Vec<ConsentVersion>,
}

impl ConsentState {
    pub fn current(&self) -> Option<&ConsentVersion> {
        self.versions.last()
    }
    /// Is `purpose` granted by the consent in force? No consent grants nothing.
    pub fn permits(&self, purpose: Purpose) -> bool {
        self.current().is_some_and(|c| c.granted.contains(&purpose))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsentChange {
    Recorded { method: ConsentMethod, supersedes: Option<Uuid> },
    Withdrawn { purposes: BTreeSet<Purpose> },
}

impl ConsentChange {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Recorded { .. } => "recorded",
            Self::Withdrawn { .. } => "withdrawn",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsentVersion {
    /// 1-based, across every consent of the patient.
    pub version: u32,
    pub consent_id: Uuid,
    pub change: ConsentChange,
    /// What is granted after this change.
    pub granted: BTreeSet<Purpose>,
    pub witness_id: Option<Uuid>,
    /// When the patient gave or withdrew it.
    pub effective_at: Timestamp,
    pub recorded_at: Timestamp,
    pub recorded_by: Uuid,
    pub position: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CareTeamMember {
    pub clinician_id: Uuid,
    pub care_role: CareRole,
    pub assigned_at: Timestamp,
    pub assigned_by: Uuid,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppointmentStatus {
    Scheduled,
    Cancelled(CancelledBy),
    Completed,
}

impl AppointmentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Cancelled(CancelledBy::Patient) => "cancelled_by_patient",
            Self::Cancelled(CancelledBy::Clinic) => "cancelled_by_clinic",
            Self::Completed => "completed",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Scheduled,
            Self::Cancelled(CancelledBy::Patient),
            Self::Cancelled(CancelledBy::Clinic),
            Self::Completed,
        ]
        .into_iter()
        .find(|x| x.as_str() == s)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Appointment {
    pub appointment_id: Uuid,
    pub clinician_id: Uuid,
    pub visit_type: VisitType,
    pub start: Timestamp,
    pub end: Timestamp,
    pub status: AppointmentStatus,
    /// 1 when scheduled, +1 per change.
    pub version: u32,
    pub updated_at: Timestamp,
}

/// The entity of a chart an event touches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EntityKey {
    Demographics,
    Entry(Uuid),
    Consent,
    CareTeamMember(Uuid),
    Appointment(Uuid),
}

impl EntityKey {
    /// The chart entity `event` reads and writes, or `None` if it is not a chart event.
    pub fn of(event: &DomainEvent) -> Option<Self> {
        use DomainEvent as E;
        Some(match event {
            E::PatientRegistered(_) | E::DemographicsUpdated(_) | E::PatientMerged(_) => Self::Demographics,
            E::EntryRecorded(e) => Self::Entry(e.entry_id),
            E::EntryAmended(e) => Self::Entry(e.amendment_of_id),
            E::EntryEnteredInError(e) => Self::Entry(e.entry_id),
            E::ConsentRecorded(_) | E::ConsentWithdrawn(_) => Self::Consent,
            E::CareTeamMemberAssigned(e) => Self::CareTeamMember(e.clinician_id),
            E::CareTeamMemberRemoved(e) => Self::CareTeamMember(e.clinician_id),
            E::AppointmentScheduled(e) => Self::Appointment(e.appointment_id),
            E::AppointmentRescheduled(e) => Self::Appointment(e.appointment_id),
            E::AppointmentCancelled(e) => Self::Appointment(e.appointment_id),
            E::AppointmentCompleted(e) => Self::Appointment(e.appointment_id),
            _ => return None,
        })
    }
}

impl Chart {
    pub fn new(patient_id: Uuid) -> Self {
        Self { patient_id, ..Self::default() }
    }

    /// Fold a whole stream.
    pub fn replay<'a>(patient_id: Uuid, events: impl IntoIterator<Item = &'a Recorded>) -> Self {
        let mut chart = Self::new(patient_id);
        for e in events {
            chart.apply(e);
        }
        chart
    }

    pub fn is_registered(&self) -> bool {
        self.demographics.is_some()
    }

    /// Apply one event of this patient's stream. Total: see the module docs.
    pub fn apply(&mut self, r: &Recorded) {
        self.revision = Some(r.stream_revision);
        self.position = Some(r.position);
        if !self.apply_inner(r) {
            self.anomalies += 1;
        }
    }

    fn apply_inner(&mut self, r: &Recorded) -> bool {
        use DomainEvent as E;
        match &r.event {
            E::PatientRegistered(p) => {
                if self.demographics.is_some() || p.patient_id != self.patient_id {
                    return false;
                }
                self.demographics = Some(Demographics {
                    mrn: p.mrn.clone(),
                    name: p.name.clone(),
                    birth_date: p.birth_date,
                    sex: p.sex,
                    contact: p.contact.clone(),
                    registered_at: r.recorded_at,
                    updated_at: r.recorded_at,
                    version: 1,
                    merged_into: None,
                });
            }
            E::DemographicsUpdated(u) => {
                let Some(d) = &mut self.demographics else { return false };
                if let Some(n) = &u.name {
                    d.name = n.clone();
                }
                if let Some(b) = u.birth_date {
                    d.birth_date = b;
                }
                if let Some(s) = u.sex {
                    d.sex = s;
                }
                if let Some(c) = &u.contact {
                    d.contact = c.clone();
                }
                d.version += 1;
                d.updated_at = r.recorded_at;
            }
            E::PatientMerged(m) => {
                let Some(d) = &mut self.demographics else { return false };
                d.merged_into = Some(m.into_patient_id);
                d.version += 1;
                d.updated_at = r.recorded_at;
            }
            E::EntryRecorded(e) => {
                if self.entries.contains_key(&e.entry_id) {
                    return false;
                }
                let v = self.version_of(r, 1, VersionChange::Recorded, e.content.clone(), e.effective_at);
                self.entries.insert(
                    e.entry_id,
                    Entry {
                        entry_id: e.entry_id,
                        kind: e.content.kind(),
                        status: EntryStatus::Active,
                        versions: vec![v],
                    },
                );
            }
            E::EntryAmended(a) => {
                let next = match self.entries.get(&a.amendment_of_id) {
                    Some(entry) if entry.status == EntryStatus::Active && entry.kind == a.content.kind() => {
                        entry.versions.len() as u32 + 1
                    }
                    _ => return false,
                };
                let change =
                    VersionChange::Amended { amendment_id: a.amendment_id, reason: a.reason.clone() };
                let v = self.version_of(r, next, change, a.content.clone(), a.effective_at);
                if let Some(entry) = self.entries.get_mut(&a.amendment_of_id) {
                    entry.versions.push(v);
                }
            }
            E::EntryEnteredInError(x) => {
                let (next, content, effective_at) = match self.entries.get(&x.entry_id) {
                    Some(entry) if entry.status == EntryStatus::Active => match entry.current() {
                        Some(cur) => (entry.versions.len() as u32 + 1, cur.content.clone(), cur.effective_at),
                        None => return false,
                    },
                    _ => return false,
                };
                let change = VersionChange::EnteredInError { reason: x.reason.clone() };
                let v = self.version_of(r, next, change, content, effective_at);
                if let Some(entry) = self.entries.get_mut(&x.entry_id) {
                    entry.status = EntryStatus::EnteredInError;
                    entry.versions.push(v);
                }
            }
            E::ConsentRecorded(c) => {
                let version = self.consent.versions.len() as u32 + 1;
                self.consent.versions.push(ConsentVersion {
                    version,
                    consent_id: c.consent_id,
                    change: ConsentChange::Recorded { method: c.method, supersedes: c.supersedes },
                    granted: c.granted.clone(),
                    witness_id: c.witness_id,
                    effective_at: c.given_at,
                    recorded_at: r.recorded_at,
                    recorded_by: r.actor.user_id,
                    position: r.position,
                });
            }
            E::ConsentWithdrawn(w) => {
                let Some(cur) = self.consent.current() else { return false };
                if cur.consent_id != w.consent_id {
                    return false;
                }
                let granted = cur.granted.difference(&w.purposes).copied().collect();
                let version = self.consent.versions.len() as u32 + 1;
                self.consent.versions.push(ConsentVersion {
                    version,
                    consent_id: w.consent_id,
                    change: ConsentChange::Withdrawn { purposes: w.purposes.clone() },
                    granted,
                    witness_id: w.witness_id,
                    effective_at: w.withdrawn_at,
                    recorded_at: r.recorded_at,
                    recorded_by: r.actor.user_id,
                    position: r.position,
                });
            }
            E::CareTeamMemberAssigned(a) => {
                if self.care_team.contains_key(&a.clinician_id) {
                    return false;
                }
                self.care_team.insert(
                    a.clinician_id,
                    CareTeamMember {
                        clinician_id: a.clinician_id,
                        care_role: a.care_role,
                        assigned_at: r.recorded_at,
                        assigned_by: r.actor.user_id,
                    },
                );
            }
            E::CareTeamMemberRemoved(m) => {
                if self.care_team.remove(&m.clinician_id).is_none() {
                    return false;
                }
            }
            E::AppointmentScheduled(s) => {
                if self.appointments.contains_key(&s.appointment_id) {
                    return false;
                }
                self.appointments.insert(
                    s.appointment_id,
                    Appointment {
                        appointment_id: s.appointment_id,
                        clinician_id: s.clinician_id,
                        visit_type: s.visit_type,
                        start: s.start,
                        end: s.end,
                        status: AppointmentStatus::Scheduled,
                        version: 1,
                        updated_at: r.recorded_at,
                    },
                );
            }
            E::AppointmentRescheduled(x) => {
                return self.change_appointment(x.appointment_id, r.recorded_at, |a| {
                    a.start = x.start;
                    a.end = x.end;
                })
            }
            E::AppointmentCancelled(x) => {
                return self.change_appointment(x.appointment_id, r.recorded_at, |a| {
                    a.status = AppointmentStatus::Cancelled(x.cancelled_by);
                })
            }
            E::AppointmentCompleted(x) => {
                return self.change_appointment(x.appointment_id, r.recorded_at, |a| {
                    a.status = AppointmentStatus::Completed;
                })
            }
            // Access, security and staff events are not part of the chart.
            _ => return false,
        }
        true
    }

    fn version_of(
        &self,
        r: &Recorded,
        version: u32,
        change: VersionChange,
        content: EntryContent,
        effective_at: Timestamp,
    ) -> EntryVersion {
        EntryVersion {
            version,
            change,
            content,
            effective_at,
            author: r.actor.clone(),
            recorded_at: r.recorded_at,
            event_id: r.event_id,
            position: r.position,
        }
    }

    fn change_appointment(&mut self, id: Uuid, at: Timestamp, f: impl FnOnce(&mut Appointment)) -> bool {
        match self.appointments.get_mut(&id) {
            Some(a) if a.status == AppointmentStatus::Scheduled => {
                f(a);
                a.version += 1;
                a.updated_at = at;
                true
            }
            _ => false,
        }
    }

    /// Active entries of one kind, most recently effective first: the chart's sections
    /// (problems, medications, allergies, observations, lab results, notes).
    pub fn section(&self, kind: EntryKind) -> Vec<&Entry> {
        let mut v: Vec<&Entry> =
            self.entries.values().filter(|e| e.kind == kind && e.status == EntryStatus::Active).collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.current().map(|c| (c.effective_at, c.position))));
        v
    }
}

/// One access to a record, as the access-log read model holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessLogEntry {
    pub position: u64,
    pub event_id: Uuid,
    pub patient_id: Uuid,
    pub user_id: Uuid,
    pub role: String,
    pub accessed_at: Timestamp,
    pub resources: BTreeSet<ResourceKind>,
    pub action: AccessAction,
    pub purpose: PurposeOfUse,
    pub break_glass_reason: Option<String>,
    pub client_addr: Option<String>,
    pub user_agent: Option<String>,
    pub session_id: Option<Uuid>,
    /// The case or matter named for the access (`access.recorded` v2).
    pub case_ref: Option<String>,
}

impl AccessLogEntry {
    /// The access-log fold is a plain map: one row per `access.recorded` event.
    pub fn of(r: &Recorded) -> Option<Self> {
        let DomainEvent::RecordAccessed(a) = &r.event else { return None };
        Some(Self {
            position: r.position,
            event_id: r.event_id,
            patient_id: a.patient_id,
            user_id: r.actor.user_id,
            role: r.actor.role.as_str().to_owned(),
            accessed_at: r.recorded_at,
            resources: a.resources.clone(),
            action: a.action,
            purpose: a.purpose,
            break_glass_reason: a.break_glass_reason.clone(),
            client_addr: a.client_addr.clone(),
            user_agent: a.user_agent.clone(),
            session_id: a.session_id,
            case_ref: a.case_ref.clone(),
        })
    }
}
