//! Writing a batch's rows: new rows by binary COPY ([`NewRows`]), the others by upserts
//! over `UNNEST`ed arrays ([`Upserts`]), into the same columns (each table's descriptor,
//! `tables.rs`); see the module documentation of `records` for which rows are new.

use std::collections::{BTreeSet, HashSet};

use domain::chart::*;
use domain::Recorded;
use sqlx::PgConnection;
use uuid::Uuid;

use super::table::{NewRows, Upserts};
use super::tables::*;
use super::ChartCache;
use crate::error::ProjectionError;

/// The rows a batch changes, encoded, ready to be written in one transaction.
pub(crate) struct Prepared {
    new_patients: NewRows<(), Chart>,
    patients: Upserts<(), Chart>,
    counters: Upserts<(), Chart>,
    new_entries: NewRows<Uuid, Entry>,
    entries: Upserts<Uuid, Entry>,
    versions: NewRows<(Uuid, Uuid), EntryVersion>,
    consents: NewRows<Uuid, ConsentVersion>,
    care_gone: (Vec<Uuid>, Vec<Uuid>),
    new_care: NewRows<Uuid, CareTeamMember>,
    care_keep: Upserts<Uuid, CareTeamMember>,
    new_appts: NewRows<Uuid, Appointment>,
    appts: Upserts<Uuid, Appointment>,
    access: NewRows<(), AccessLogEntry>,
    staff: Vec<Recorded>,
}

impl Prepared {
    /// Nothing yet but the batch's staff events; `content_jsonb` as the cache's.
    pub(super) fn new(content_jsonb: bool, staff: Vec<Recorded>) -> Self {
        Self {
            new_patients: NewRows::new(&PATIENTS, content_jsonb),
            patients: Upserts::new(&PATIENTS),
            counters: Upserts::new(&PATIENT_COUNTERS),
            new_entries: NewRows::new(&ENTRIES, content_jsonb),
            entries: Upserts::new(&ENTRIES),
            versions: NewRows::new(&ENTRY_VERSIONS, content_jsonb),
            consents: NewRows::new(&CONSENTS, content_jsonb),
            care_gone: (Vec::new(), Vec::new()),
            new_care: NewRows::new(&CARE_TEAM, content_jsonb),
            care_keep: Upserts::new(&CARE_TEAM),
            new_appts: NewRows::new(&APPOINTMENTS, content_jsonb),
            appts: Upserts::new(&APPOINTMENTS),
            access: NewRows::new(&ACCESS_LOG, content_jsonb),
            staff,
        }
    }

    /// An access-log row: insert-only, one per access event.
    pub(super) fn access(&mut self, r: &AccessLogEntry) -> Result<(), ProjectionError> {
        self.access.push(&(), r)
    }

    pub(super) fn charts(
        &mut self,
        cache: &mut ChartCache,
        patients: &BTreeSet<Uuid>,
        touched: &BTreeSet<(Uuid, EntityKey)>,
        first_position: u64,
    ) -> Result<(), ProjectionError> {
        let ChartCache { charts, written, fresh, .. } = cache;
        let fresh = *fresh;
        // A current-state row is new (COPY) when the runner is fresh and has not written it.
        let new_row = |written: &mut HashSet<_>, key: (Uuid, EntityKey)| fresh && written.insert(key);

        // Patients: the whole row where the batch touched the demographics, else only the
        // fold's counters. A chart with demographics whose demographics this batch did not
        // touch already has its row (written by the batch that touched them, or loaded from
        // it), so the counters-only upsert inserts only rows of unregistered charts, which
        // are exactly `registered = false` and the counters.
        for id in patients {
            if let Some(chart) = charts.get(id) {
                if new_row(written, (*id, EntityKey::Demographics)) {
                    self.new_patients.push(&(), chart)?;
                } else if touched.contains(&(*id, EntityKey::Demographics)) {
                    self.patients.push(&(), chart)?;
                } else {
                    self.counters.push(&(), chart)?;
                }
            }
        }
        for (patient, key) in touched {
            let Some(chart) = charts.get(patient) else { continue };
            match key {
                EntityKey::Demographics => {}
                EntityKey::Entry(id) => {
                    if let Some(e) = chart.entries.get(id) {
                        // An entry's row is its current version's (none without one).
                        let new = new_row(written, (*patient, *key));
                        match e.current() {
                            Some(_) if new => self.new_entries.push(patient, e)?,
                            Some(_) => self.entries.push(patient, e)?,
                            None => {}
                        }
                        // Versions are insert-only and written in the batch that holds
                        // their position, so the row cannot exist yet.
                        for v in e.versions.iter().filter(|v| v.position >= first_position) {
                            self.versions.push(&(*patient, e.entry_id), v)?;
                        }
                    }
                }
                EntityKey::Consent => {
                    // Consent versions are insert-only, like entry versions.
                    for v in chart.consent.versions.iter().filter(|v| v.position >= first_position) {
                        self.consents.push(patient, v)?;
                    }
                }
                EntityKey::CareTeamMember(c) => match chart.care_team.get(c) {
                    Some(m) if new_row(written, (*patient, *key)) => self.new_care.push(patient, m)?,
                    Some(m) => self.care_keep.push(patient, m)?,
                    // Never written (fresh): nothing to delete. Written before: its row goes,
                    // and a later assignment writes a new one.
                    None if fresh && !written.remove(&(*patient, *key)) => {}
                    None => {
                        self.care_gone.0.push(*patient);
                        self.care_gone.1.push(*c);
                    }
                },
                EntityKey::Appointment(a) => {
                    if let Some(a) = chart.appointments.get(a) {
                        if new_row(written, (*patient, *key)) {
                            self.new_appts.push(patient, a)?;
                        } else {
                            self.appts.push(patient, a)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Write the rows in the caller's transaction.
    pub async fn write(self, conn: &mut PgConnection, schema: &str) -> Result<(), ProjectionError> {
        self.new_patients.write(conn, schema).await?;
        self.patients.write(conn, schema).await?;
        self.counters.write(conn, schema).await?;
        self.new_entries.write(conn, schema).await?;
        self.entries.write(conn, schema).await?;
        self.versions.write(conn, schema).await?;
        self.consents.write(conn, schema).await?;
        if !self.care_gone.0.is_empty() {
            let sql = format!(
                "DELETE FROM {schema}.care_team WHERE (patient_id, clinician_id) IN \
                 (SELECT * FROM UNNEST($1::uuid[], $2::uuid[]))"
            );
            sqlx::query(&sql).bind(&self.care_gone.0).bind(&self.care_gone.1).execute(&mut *conn).await?;
        }
        self.new_care.write(conn, schema).await?;
        self.care_keep.write(conn, schema).await?;
        self.new_appts.write(conn, schema).await?;
        self.appts.write(conn, schema).await?;
        self.access.write(conn, schema).await?;
        for r in &self.staff {
            crate::staff::write_staff(conn, schema, r).await?;
        }
        Ok(())
    }
}
