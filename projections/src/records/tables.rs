//! The descriptors of the tables the chart fold writes (see `table.rs`), column by
//! column in the order of `sql/records.sql`. The staff tables (`users`, `role_grants`)
//! are written statement by statement (`crate::staff`), and `chart_snapshots` by replays.

use std::borrow::Cow;

use domain::chart::*;
use uuid::Uuid;

use super::table::{Column, Table};
use crate::sqlmap::{json, name, names, pos};

fn demographics(c: &Chart) -> Option<&Demographics> {
    c.demographics.as_ref()
}

const PATIENT_ID: Column<(), Chart> = Column::uuid("patient_id", |_, c| Some(c.patient_id));
const REVISION: Column<(), Chart> = Column::bigint("revision", |_, c| Some(c.revision.map(pos).unwrap_or(0)));
const POSITION: Column<(), Chart> = Column::bigint("position", |_, c| Some(c.position.map(pos).unwrap_or(0)));
const ANOMALIES: Column<(), Chart> = Column::bigint("anomalies", |_, c| Some(pos(c.anomalies)));

/// Patient index and demographics, with the fold's counters: a chart's row.
pub(crate) static PATIENTS: Table<(), Chart> = Table {
    name: "patients",
    key: &["patient_id"],
    columns: &[
        PATIENT_ID,
        Column::boolean("registered", |_, c| c.demographics.is_some()),
        Column::text("mrn", |_, c| demographics(c).map(|d| d.mrn.as_str().into())),
        Column::text("family", |_, c| demographics(c).map(|d| d.name.family.as_str().into())),
        Column::texts("given", |_, c| demographics(c).map(|d| d.name.given.as_slice().into())),
        Column::date("birth_date", |_, c| demographics(c).map(|d| d.birth_date)),
        Column::text("sex", |_, c| demographics(c).map(|d| name(&d.sex).into())),
        Column::jsonb("contact", |_, c| demographics(c).map(|d| json(&d.contact))),
        Column::time("registered_at", |_, c| demographics(c).map(|d| d.registered_at.to_datetime())),
        Column::time("updated_at", |_, c| demographics(c).map(|d| d.updated_at.to_datetime())),
        Column::int("demographics_version", |_, c| demographics(c).map(|d| d.version as i32)),
        Column::uuid("merged_into", |_, c| demographics(c).and_then(|d| d.merged_into)),
        REVISION,
        POSITION,
        ANOMALIES,
    ],
};

/// A patient row's fold counters only: inserted as an unregistered patient, and leaving
/// the demographics of a registered one as they are.
pub(crate) static PATIENT_COUNTERS: Table<(), Chart> = Table {
    name: "patients",
    key: &["patient_id"],
    columns: &[PATIENT_ID, Column::boolean("registered", |_, _| false).kept(), REVISION, POSITION, ANOMALIES],
};

/// Clinical entries at their current version, under their patient's id. Only entries
/// with a version are written.
pub(crate) static ENTRIES: Table<Uuid, Entry> = Table {
    name: "entries",
    key: &["patient_id", "entry_id"],
    columns: &[
        Column::uuid("entry_id", |_, e| Some(e.entry_id)),
        Column::uuid("patient_id", |p, _| Some(*p)),
        Column::<Uuid, Entry>::text("kind", |_, e| Some(e.kind.as_str().into())).kept(),
        Column::text("status", |_, e| Some(e.status.as_str().into())),
        Column::int("current_version", |_, e| e.current().map(|v| v.version as i32)),
        Column::time("effective_at", |_, e| e.current().map(|v| v.effective_at.to_datetime())),
        Column::time("recorded_at", |_, e| e.current().map(|v| v.recorded_at.to_datetime())),
        Column::bigint("position", |_, e| e.current().map(|v| pos(v.position))),
    ],
};

/// Every version of every entry, under (patient id, entry id). Insert-only.
pub(crate) static ENTRY_VERSIONS: Table<(Uuid, Uuid), EntryVersion> = Table {
    name: "entry_versions",
    key: &["patient_id", "entry_id", "version"],
    columns: &[
        Column::uuid("entry_id", |(_, e), _| Some(*e)),
        Column::int("version", |_, v| Some(v.version as i32)),
        Column::uuid("patient_id", |(p, _), _| Some(*p)),
        Column::text("change", |_, v| Some(v.change.as_str().into())),
        Column::uuid("amendment_id", |_, v| match &v.change {
            VersionChange::Amended { amendment_id, .. } => Some(*amendment_id),
            _ => None,
        }),
        Column::text("reason", |_, v| v.change.reason().map(Cow::from)),
        Column::content("content", |_, v| json(&v.content)),
        Column::time("effective_at", |_, v| Some(v.effective_at.to_datetime())),
        Column::uuid("author_id", |_, v| Some(v.author.user_id)),
        Column::text("author_role", |_, v| Some(v.author.role.as_str().into())),
        Column::time("recorded_at", |_, v| Some(v.recorded_at.to_datetime())),
        Column::uuid("event_id", |_, v| Some(v.event_id)),
        Column::bigint("position", |_, v| Some(pos(v.position))),
    ],
};

/// Consent versions, under the patient's id. Insert-only.
pub(crate) static CONSENTS: Table<Uuid, ConsentVersion> = Table {
    name: "consents",
    key: &["patient_id", "version"],
    columns: &[
        Column::uuid("patient_id", |p, _| Some(*p)),
        Column::int("version", |_, v| Some(v.version as i32)),
        Column::uuid("consent_id", |_, v| Some(v.consent_id)),
        Column::text("change", |_, v| Some(v.change.as_str().into())),
        Column::text("method", |_, v| match &v.change {
            ConsentChange::Recorded { method, .. } => Some(name(method).into()),
            ConsentChange::Withdrawn { .. } => None,
        }),
        Column::uuid("supersedes", |_, v| match &v.change {
            ConsentChange::Recorded { supersedes, .. } => *supersedes,
            ConsentChange::Withdrawn { .. } => None,
        }),
        Column::texts("withdrawn", |_, v| match &v.change {
            ConsentChange::Recorded { .. } => None,
            ConsentChange::Withdrawn { purposes } => Some(names(purposes).into()),
        }),
        Column::texts("granted", |_, v| Some(names(&v.granted).into())),
        Column::uuid("witness_id", |_, v| v.witness_id),
        Column::time("effective_at", |_, v| Some(v.effective_at.to_datetime())),
        Column::time("recorded_at", |_, v| Some(v.recorded_at.to_datetime())),
        Column::uuid("recorded_by", |_, v| Some(v.recorded_by)),
        Column::bigint("position", |_, v| Some(pos(v.position))),
    ],
};

/// Current care-team members, under the patient's id.
pub(crate) static CARE_TEAM: Table<Uuid, CareTeamMember> = Table {
    name: "care_team",
    key: &["patient_id", "clinician_id"],
    columns: &[
        Column::uuid("patient_id", |p, _| Some(*p)),
        Column::uuid("clinician_id", |_, m| Some(m.clinician_id)),
        Column::text("care_role", |_, m| Some(m.care_role.as_str().into())),
        Column::time("assigned_at", |_, m| Some(m.assigned_at.to_datetime())),
        Column::uuid("assigned_by", |_, m| Some(m.assigned_by)),
    ],
};

/// Appointments, under the patient's id.
pub(crate) static APPOINTMENTS: Table<Uuid, Appointment> = Table {
    name: "appointments",
    key: &["patient_id", "appointment_id"],
    columns: &[
        Column::uuid("appointment_id", |_, a| Some(a.appointment_id)),
        Column::uuid("patient_id", |p, _| Some(*p)),
        Column::<Uuid, Appointment>::uuid("clinician_id", |_, a| Some(a.clinician_id)).kept(),
        Column::<Uuid, Appointment>::text("visit_type", |_, a| Some(a.visit_type.as_str().into())).kept(),
        Column::time("start_at", |_, a| Some(a.start.to_datetime())),
        Column::time("end_at", |_, a| Some(a.end.to_datetime())),
        Column::text("status", |_, a| Some(a.status.as_str().into())),
        Column::int("version", |_, a| Some(a.version as i32)),
        Column::time("updated_at", |_, a| Some(a.updated_at.to_datetime())),
    ],
};

/// The access log: one row per access event. Insert-only.
pub(crate) static ACCESS_LOG: Table<(), AccessLogEntry> = Table {
    name: "access_log",
    key: &["position"],
    columns: &[
        Column::bigint("position", |_, r| Some(pos(r.position))),
        Column::uuid("event_id", |_, r| Some(r.event_id)),
        Column::uuid("patient_id", |_, r| Some(r.patient_id)),
        Column::uuid("user_id", |_, r| Some(r.user_id)),
        Column::text("role", |_, r| Some(r.role.as_str().into())),
        Column::time("accessed_at", |_, r| Some(r.accessed_at.to_datetime())),
        Column::texts("resources", |_, r| Some(names(&r.resources).into())),
        Column::text("action", |_, r| Some(r.action.as_str().into())),
        Column::text("purpose", |_, r| Some(r.purpose.as_str().into())),
        Column::text("break_glass_reason", |_, r| r.break_glass_reason.as_deref().map(Cow::from)),
        Column::text("client_addr", |_, r| r.client_addr.as_deref().map(Cow::from)),
        Column::text("user_agent", |_, r| r.user_agent.as_deref().map(Cow::from)),
        Column::uuid("session_id", |_, r| r.session_id),
        Column::text("case_ref", |_, r| r.case_ref.as_deref().map(Cow::from)),
    ],
};
