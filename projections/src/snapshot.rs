//! Chart snapshots: the state of the chart fold after a revision of a patient's stream,
//! kept so that point-in-time replay folds only the events after the nearest snapshot.
//!
//! A snapshot is derived data, never a second source of truth:
//! - it is the output of the same `Chart::apply` over the same ledger events (written by
//!   [`crate::pit`] as it folds a stream), in a table of the projection generation
//!   (`chart_snapshots`), so a rebuild (as after a change of the fold) starts without any;
//! - it is bound to the ledger: it records the hash of the event at its revision, which
//!   through the stream's hash links commits to every earlier event of the stream, and a
//!   replay uses it only if the ledger still holds that event (else it folds from 0);
//! - anything can delete snapshots: replays fold from the nearest one left and write them
//!   again; [`crate::pit::check_snapshots`] refolds a stream and compares every snapshot.
//!
//! The encoding is JSON (the clinical content is already JSON in the payloads) with short
//! field names; [`FORMAT`] is stored beside it and a replay ignores other formats.

use std::collections::BTreeMap;

use domain::chart::*;
use domain::events::CancelledBy;
use domain::events::{
    CareRole, ConsentMethod, Contact, EntryContent, EntryKind, HumanName, Purpose, Sex, VisitType,
};
use ledger::{RoleName, Timestamp};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ProjectionError;

/// The encoding's version, stored with each snapshot.
pub const FORMAT: i16 = 1;

/// Where snapshots are taken, by the number `n` of stream events folded: at `first`, then
/// every `max(first, 2^k / per_doubling)` events, where `2^k <= n < 2^(k+1)`. A chart of
/// `n` events has `O(per_doubling · log n)` snapshots holding about `per_doubling · n`
/// event-states in all, and a replay to any time folds at most
/// `max(first, n / per_doubling)` events after the nearest one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotPolicy {
    pub first: u64,
    pub per_doubling: u64,
    /// Write new snapshots before the replay returns (tests), instead of in the background.
    pub write_inline: bool,
}

impl Default for SnapshotPolicy {
    fn default() -> Self {
        Self { first: 128, per_doubling: 8, write_inline: false }
    }
}

impl SnapshotPolicy {
    /// Is the state after `n` events a snapshot point?
    pub fn is_boundary(&self, n: u64) -> bool {
        let first = self.first.max(1);
        if n < first {
            return false;
        }
        let power = 1u64 << (63 - n.leading_zeros());
        let step = first.max(power / self.per_doubling.max(1));
        n % step == 0
    }

    /// The last snapshot point in `(after, upto]`, if any.
    pub fn last_boundary(&self, after: u64, upto: u64) -> Option<u64> {
        let first = self.first.max(1);
        let mut n = upto;
        while n > after && n >= first {
            if self.is_boundary(n) {
                return Some(n);
            }
            n -= 1;
        }
        None
    }
}

#[derive(Serialize, Deserialize)]
struct ChartS {
    p: Uuid,
    d: Option<DemographicsS>,
    e: Vec<EntryS>,
    c: Vec<ConsentS>,
    t: Vec<CareS>,
    a: Vec<AppointmentS>,
    r: Option<u64>,
    pos: Option<u64>,
    an: u64,
}

#[derive(Serialize, Deserialize)]
struct DemographicsS {
    mrn: String,
    name: HumanName,
    /// Birth date as (year, day of the year).
    b: (i32, u16),
    sex: Sex,
    contact: Contact,
    ra: i64,
    ua: i64,
    v: u32,
    m: Option<Uuid>,
}

#[derive(Serialize, Deserialize)]
struct EntryS {
    id: Uuid,
    k: EntryKind,
    /// Entered in error.
    eie: bool,
    v: Vec<VersionS>,
}

#[derive(Serialize, Deserialize)]
struct VersionS {
    n: u32,
    /// 0 recorded, 1 amended, 2 entered in error.
    ch: u8,
    am: Option<Uuid>,
    why: Option<String>,
    c: EntryContent,
    ef: i64,
    au: Uuid,
    ro: String,
    rc: i64,
    ev: Uuid,
    pos: u64,
}

#[derive(Serialize, Deserialize)]
struct ConsentS {
    n: u32,
    id: Uuid,
    /// `Some` for a recorded consent, `None` for a withdrawal.
    m: Option<ConsentMethod>,
    sup: Option<Uuid>,
    w: Vec<Purpose>,
    g: Vec<Purpose>,
    wi: Option<Uuid>,
    ef: i64,
    rc: i64,
    by: Uuid,
    pos: u64,
}

#[derive(Serialize, Deserialize)]
struct CareS {
    id: Uuid,
    role: CareRole,
    at: i64,
    by: Uuid,
}

#[derive(Serialize, Deserialize)]
struct AppointmentS {
    id: Uuid,
    cl: Uuid,
    vt: VisitType,
    s: i64,
    e: i64,
    /// 0 scheduled, 1 cancelled by the patient, 2 by the clinic, 3 completed.
    st: u8,
    n: u32,
    up: i64,
}

/// The snapshot bytes of `chart`.
pub fn encode(chart: &Chart) -> Vec<u8> {
    let s = ChartS {
        p: chart.patient_id,
        d: chart.demographics.as_ref().map(|d| DemographicsS {
            mrn: d.mrn.clone(),
            name: d.name.clone(),
            b: d.birth_date.to_ordinal_date(),
            sex: d.sex,
            contact: d.contact.clone(),
            ra: d.registered_at.as_micros(),
            ua: d.updated_at.as_micros(),
            v: d.version,
            m: d.merged_into,
        }),
        e: chart
            .entries
            .values()
            .map(|e| EntryS {
                id: e.entry_id,
                k: e.kind,
                eie: e.status == EntryStatus::EnteredInError,
                v: e.versions.iter().map(version_s).collect(),
            })
            .collect(),
        c: chart.consent.versions.iter().map(consent_s).collect(),
        t: chart
            .care_team
            .values()
            .map(|m| CareS {
                id: m.clinician_id,
                role: m.care_role,
                at: m.assigned_at.as_micros(),
                by: m.assigned_by,
            })
            .collect(),
        a: chart
            .appointments
            .values()
            .map(|a| AppointmentS {
                id: a.appointment_id,
                cl: a.clinician_id,
                vt: a.visit_type,
                s: a.start.as_micros(),
                e: a.end.as_micros(),
                st: match a.status {
                    AppointmentStatus::Scheduled => 0,
                    AppointmentStatus::Cancelled(CancelledBy::Patient) => 1,
                    AppointmentStatus::Cancelled(CancelledBy::Clinic) => 2,
                    AppointmentStatus::Completed => 3,
                },
                n: a.version,
                up: a.updated_at.as_micros(),
            })
            .collect(),
        r: chart.revision,
        pos: chart.position,
        an: chart.anomalies,
    };
    // Serializing these plain structs cannot fail (string keys, no custom serializers
    // that refuse); an empty vector would be refused by `decode`.
    serde_json::to_vec(&s).unwrap_or_default()
}

fn version_s(v: &EntryVersion) -> VersionS {
    let (ch, am) = match &v.change {
        VersionChange::Recorded => (0, None),
        VersionChange::Amended { amendment_id, .. } => (1, Some(*amendment_id)),
        VersionChange::EnteredInError { .. } => (2, None),
    };
    VersionS {
        n: v.version,
        ch,
        am,
        why: v.change.reason().map(str::to_owned),
        c: v.content.clone(),
        ef: v.effective_at.as_micros(),
        au: v.author.user_id,
        ro: v.author.role.as_str().to_owned(),
        rc: v.recorded_at.as_micros(),
        ev: v.event_id,
        pos: v.position,
    }
}

fn consent_s(v: &ConsentVersion) -> ConsentS {
    let (m, sup, w) = match &v.change {
        ConsentChange::Recorded { method, supersedes } => (Some(*method), *supersedes, Vec::new()),
        ConsentChange::Withdrawn { purposes } => (None, None, purposes.iter().copied().collect()),
    };
    ConsentS {
        n: v.version,
        id: v.consent_id,
        m,
        sup,
        w,
        g: v.granted.iter().copied().collect(),
        wi: v.witness_id,
        ef: v.effective_at.as_micros(),
        rc: v.recorded_at.as_micros(),
        by: v.recorded_by,
        pos: v.position,
    }
}

fn corrupt() -> ProjectionError {
    ProjectionError::Corrupt { what: "chart snapshot" }
}

/// The chart `bytes` encode (an error names no content).
pub fn decode(bytes: &[u8]) -> Result<Chart, ProjectionError> {
    let s: ChartS = serde_json::from_slice(bytes).map_err(|_| corrupt())?;
    let ts = Timestamp::from_micros;
    let demographics = match s.d {
        None => None,
        Some(d) => Some(Demographics {
            mrn: d.mrn,
            name: d.name,
            birth_date: time::Date::from_ordinal_date(d.b.0, d.b.1).map_err(|_| corrupt())?,
            sex: d.sex,
            contact: d.contact,
            registered_at: ts(d.ra),
            updated_at: ts(d.ua),
            version: d.v,
            merged_into: d.m,
        }),
    };
    let mut entries = BTreeMap::new();
    for e in s.e {
        let versions = e.v.into_iter().map(version_from).collect::<Result<Vec<_>, _>>()?;
        let status = if e.eie { EntryStatus::EnteredInError } else { EntryStatus::Active };
        entries.insert(e.id, Entry { entry_id: e.id, kind: e.k, status, versions });
    }
    let consent = ConsentState {
        versions: s
            .c
            .into_iter()
            .map(|v| ConsentVersion {
                version: v.n,
                consent_id: v.id,
                change: match v.m {
                    Some(method) => ConsentChange::Recorded { method, supersedes: v.sup },
                    None => ConsentChange::Withdrawn { purposes: v.w.into_iter().collect() },
                },
                granted: v.g.into_iter().collect(),
                witness_id: v.wi,
                effective_at: ts(v.ef),
                recorded_at: ts(v.rc),
                recorded_by: v.by,
                position: v.pos,
            })
            .collect(),
    };
    let care_team =
        s.t.into_iter()
            .map(|m| {
                (
                    m.id,
                    CareTeamMember {
                        clinician_id: m.id,
                        care_role: m.role,
                        assigned_at: ts(m.at),
                        assigned_by: m.by,
                    },
                )
            })
            .collect();
    let mut appointments = BTreeMap::new();
    for a in s.a {
        let status = match a.st {
            0 => AppointmentStatus::Scheduled,
            1 => AppointmentStatus::Cancelled(CancelledBy::Patient),
            2 => AppointmentStatus::Cancelled(CancelledBy::Clinic),
            3 => AppointmentStatus::Completed,
            _ => return Err(corrupt()),
        };
        appointments.insert(
            a.id,
            Appointment {
                appointment_id: a.id,
                clinician_id: a.cl,
                visit_type: a.vt,
                start: ts(a.s),
                end: ts(a.e),
                status,
                version: a.n,
                updated_at: ts(a.up),
            },
        );
    }
    Ok(Chart {
        patient_id: s.p,
        demographics,
        entries,
        consent,
        care_team,
        appointments,
        revision: s.r,
        position: s.pos,
        anomalies: s.an,
    })
}

fn version_from(v: VersionS) -> Result<EntryVersion, ProjectionError> {
    let reason = v.why.unwrap_or_default();
    let change = match v.ch {
        0 => VersionChange::Recorded,
        1 => VersionChange::Amended { amendment_id: v.am.ok_or_else(corrupt)?, reason },
        2 => VersionChange::EnteredInError { reason },
        _ => return Err(corrupt()),
    };
    Ok(EntryVersion {
        version: v.n,
        change,
        content: v.c,
        effective_at: Timestamp::from_micros(v.ef),
        author: ledger::Actor { user_id: v.au, role: RoleName::new(v.ro).map_err(|_| corrupt())? },
        recorded_at: Timestamp::from_micros(v.rc),
        event_id: v.ev,
        position: v.pos,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_follow_the_policy() {
        let p = SnapshotPolicy { first: 256, per_doubling: 8, write_inline: false };
        let points: Vec<u64> = (1..=10_000).filter(|n| p.is_boundary(*n)).collect();
        assert_eq!(&points[..4], &[256, 512, 768, 1024]);
        // Between 8192 and 16384 the step is 1024.
        assert!(points.contains(&9216) && points.contains(&8192) && !points.contains(&8704));
        assert_eq!(p.last_boundary(0, 10_000), Some(9216));
        assert_eq!(p.last_boundary(9216, 10_000), None);
        assert_eq!(p.last_boundary(0, 255), None);
        let small = SnapshotPolicy { first: 3, per_doubling: 2, write_inline: true };
        assert!(
            small.is_boundary(3) && small.is_boundary(6) && !small.is_boundary(7) && small.is_boundary(8)
        );
    }
}
