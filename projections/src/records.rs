//! The `records` projection in SQL: charts (patients, entries and their versions,
//! consents, care teams, appointments), the access log and the staff directory.
//!
//! The runner keeps partial charts in a [`ChartCache`]. Before a batch it loads from
//! PostgreSQL exactly the entities the batch's events touch (the fold's locality
//! invariant, see `domain::chart`), applies `Chart::apply` to them, and writes those
//! entities back. History rows (entry versions, consent versions, access log) are
//! insert-only, so a version is written once: when its position is in the batch.
//!
//! **Bulk path.** Rows that cannot exist yet go to PostgreSQL by binary COPY
//! ([`crate::copy`]), the rest by `INSERT ... ON CONFLICT` over `UNNEST`ed arrays:
//! - history rows always (a batch's positions were never applied before: the runner's
//!   position check guarantees it; the access log, keyed by position, refuses a repeat,
//!   while a repeated amendment or consent would become a new version);
//! - current-state rows (patients, entries, care-team members, appointments) while the
//!   cache is fresh (the runner started on empty tables and has kept every chart) and
//!   has not written the row yet, as in a rebuild.

use std::collections::{BTreeSet, HashMap, HashSet};

use domain::chart::*;
use domain::events::{DomainEvent, EntryContent};
use domain::Recorded;
use ledger::Timestamp;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::copy::CopyRows;
use crate::error::ProjectionError;
use crate::sqlmap::*;

/// The SQL that creates one generation's tables.
pub const TABLES_SQL: &str = include_str!("../sql/records.sql");
/// The SQL that creates a generation's secondary indexes (idempotent).
pub const INDEXES_SQL: &str = include_str!("../sql/records_indexes.sql");
/// Idempotent additions since generations were first made (run after `TABLES_SQL`, and
/// on existing generations at start).
pub const UPGRADE_SQL: &str = include_str!("../sql/records_upgrade.sql");
/// The statements of an SQL file made of one-line statements ending in `;` and `--`
/// comment lines (as `INDEXES_SQL`).
pub fn statements(sql: &str) -> Vec<&str> {
    sql.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with("--")).collect()
}
/// The tables each generation has; `rm.<table>` views point at the active one.
pub const TABLES: &[&str] = &[
    "patients",
    "entries",
    "entry_versions",
    "consents",
    "care_team",
    "appointments",
    "access_log",
    "users",
    "role_grants",
    "chart_snapshots",
];

/// Partial charts kept between batches. Whatever is marked loaded equals what the
/// read-model tables hold (plus the current batch), so a miss is always safe to load.
#[derive(Debug, Default)]
pub struct ChartCache {
    charts: HashMap<Uuid, Chart>,
    loaded: HashSet<(Uuid, EntityKey)>,
    /// Set when the runner started on empty tables at position 0 and has kept every
    /// entity it wrote since: nothing needs loading. Cleared with the cache (after an
    /// eviction or a failed transaction, including another runner moving the position).
    pub fresh: bool,
    /// While `fresh`: the current-state rows (patient rows under `Demographics`, entries,
    /// care-team members, appointments) written so far. A row not in it does not exist
    /// in the tables yet, so it is written by COPY instead of an upsert.
    written: HashSet<(Uuid, EntityKey)>,
    /// The generation stores entry content as `jsonb` (generations created before it
    /// became `json`): COPY must then send the binary `jsonb` form.
    pub content_jsonb: bool,
}

impl ChartCache {
    pub fn fresh() -> Self {
        Self { fresh: true, ..Self::default() }
    }
    pub fn clear(&mut self) {
        self.charts.clear();
        self.loaded.clear();
        self.written.clear();
        self.fresh = false;
    }
    pub fn len(&self) -> usize {
        self.charts.len()
    }
    pub fn is_empty(&self) -> bool {
        self.charts.is_empty()
    }
    /// The (partial) chart of `patient`, empty if nothing of it is cached yet.
    fn chart_mut(&mut self, patient: Uuid) -> &mut Chart {
        self.charts.entry(patient).or_insert_with(|| Chart::new(patient))
    }
}

/// Whether the generation in `schema` stores entry content as `jsonb` (created before
/// the column became `json`; such a generation keeps working until a rebuild replaces it).
pub async fn content_is_jsonb(conn: &mut PgConnection, schema: &str) -> Result<bool, ProjectionError> {
    let t: Option<String> = sqlx::query_scalar(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute \
         WHERE attrelid = to_regclass($1) AND attname = 'content' AND NOT attisdropped",
    )
    .bind(format!("{schema}.entry_versions"))
    .fetch_optional(&mut *conn)
    .await?;
    Ok(t.as_deref() == Some("jsonb"))
}

/// Apply a batch of decoded events to the tables of `schema`, inside `conn`'s transaction.
/// For a generation whose entry content is `jsonb`, `cache.content_jsonb` must say so
/// ([`content_is_jsonb`]), as the runner sets it.
pub async fn apply_batch(
    conn: &mut PgConnection,
    schema: &str,
    cache: &mut ChartCache,
    events: &[Recorded],
) -> Result<(), ProjectionError> {
    let batch = Batch::of(events);
    if !cache.fresh {
        load_missing(conn, schema, cache, &batch.touched_patients, &batch.touched).await?;
    }
    prepare(cache, batch)?.write(conn, schema).await
}

/// Fold a batch into a fresh cache and encode the rows it changes, without the database:
/// a runner that has kept every chart prepares its next batch while the previous one is
/// being written. `None` when the cache is not fresh (its misses must be loaded first,
/// after the previous batch has committed).
pub(crate) fn prepare_fresh(
    cache: &mut ChartCache,
    events: &[Recorded],
) -> Result<Option<Prepared>, ProjectionError> {
    if !cache.fresh {
        return Ok(None);
    }
    prepare(cache, Batch::of(events)).map(Some)
}

/// A batch's events sorted by what they change.
struct Batch<'a> {
    first_position: Option<u64>,
    touched: BTreeSet<(Uuid, EntityKey)>,
    touched_patients: BTreeSet<Uuid>,
    access: Vec<AccessLogEntry>,
    staff: Vec<Recorded>,
    chart_events: Vec<(Uuid, &'a Recorded)>,
}

impl<'a> Batch<'a> {
    fn of(events: &'a [Recorded]) -> Self {
        let mut b = Batch {
            first_position: events.first().map(|e| e.position),
            touched: BTreeSet::new(),
            touched_patients: BTreeSet::new(),
            access: Vec::new(),
            staff: Vec::new(),
            chart_events: Vec::new(),
        };
        for r in events {
            match &r.event {
                DomainEvent::RecordAccessed(_) => b.access.extend(AccessLogEntry::of(r)),
                e if crate::staff::is_staff(e) => b.staff.push(r.clone()),
                e => {
                    if let (Some(key), Some(patient)) =
                        (EntityKey::of(e), domain::streams::patient_of(&r.stream))
                    {
                        b.touched.insert((patient, key));
                        b.touched_patients.insert(patient);
                        b.chart_events.push((patient, r));
                    }
                }
            }
        }
        b
    }
}

/// Fold the batch into the cache (whose entities the batch touches are all loaded) and
/// encode every row it changes.
fn prepare(cache: &mut ChartCache, batch: Batch<'_>) -> Result<Prepared, ProjectionError> {
    for (patient, r) in &batch.chart_events {
        cache.chart_mut(*patient).apply(r);
    }
    for k in &batch.touched {
        cache.loaded.insert(*k);
    }
    let mut prepared = Prepared { staff: batch.staff, ..Prepared::default() };
    if let Some(first_position) = batch.first_position {
        prepared.charts(cache, &batch.touched_patients, &batch.touched, first_position)?;
    }
    let access = prepared.access.get_or_insert_with(|| CopyRows::new(14));
    for r in &batch.access {
        push_access(access, r)?;
    }
    Ok(prepared)
}

// ------------------------------------------------------------------ loading

const ENTRY_VERSION_COLS: &str =
    "entry_id, version, change, amendment_id, reason, content::text AS content, \
     effective_at, author_id, author_role, recorded_at, event_id, position";
const CONSENT_COLS: &str =
    "patient_id, version, consent_id, change, method, supersedes, withdrawn, granted, \
     witness_id, effective_at, recorded_at, recorded_by, position";
const PATIENT_COLS: &str =
    "patient_id, registered, mrn, family, given, birth_date, sex, contact::text AS contact, \
     registered_at, updated_at, demographics_version, merged_into, revision, position, anomalies";
const APPOINTMENT_COLS: &str =
    "appointment_id, patient_id, clinician_id, visit_type, start_at, end_at, status, version, updated_at";
const CARE_COLS: &str = "patient_id, clinician_id, care_role, assigned_at, assigned_by";

async fn load_missing(
    conn: &mut PgConnection,
    schema: &str,
    cache: &mut ChartCache,
    patients: &BTreeSet<Uuid>,
    touched: &BTreeSet<(Uuid, EntityKey)>,
) -> Result<(), ProjectionError> {
    let missing_patients: Vec<Uuid> =
        patients.iter().copied().filter(|p| !cache.loaded.contains(&(*p, EntityKey::Demographics))).collect();
    let mut entries = (Vec::new(), Vec::new());
    let mut consents = Vec::new();
    let mut care = (Vec::new(), Vec::new());
    let mut appointments = (Vec::new(), Vec::new());
    for (p, k) in touched {
        if cache.loaded.contains(&(*p, *k)) {
            continue;
        }
        match k {
            EntityKey::Demographics => {}
            EntityKey::Entry(id) => {
                entries.0.push(*p);
                entries.1.push(*id);
            }
            EntityKey::Consent => consents.push(*p),
            EntityKey::CareTeamMember(c) => {
                care.0.push(*p);
                care.1.push(*c);
            }
            EntityKey::Appointment(a) => {
                appointments.0.push(*p);
                appointments.1.push(*a);
            }
        }
    }
    if !missing_patients.is_empty() {
        let sql = format!("SELECT {PATIENT_COLS} FROM {schema}.patients WHERE patient_id = ANY($1)");
        let rows = sqlx::query(&sql).bind(&missing_patients).fetch_all(&mut *conn).await?;
        for p in &missing_patients {
            cache.chart_mut(*p);
        }
        for row in &rows {
            let id: Uuid = row.try_get("patient_id")?;
            if let Some(chart) = cache.charts.get_mut(&id) {
                patient_into(row, chart)?;
            }
        }
        for p in &missing_patients {
            cache.loaded.insert((*p, EntityKey::Demographics));
        }
    }
    if !entries.0.is_empty() {
        let sql = format!(
            "SELECT patient_id, {ENTRY_VERSION_COLS} FROM {schema}.entry_versions WHERE (patient_id, entry_id) IN \
             (SELECT * FROM UNNEST($1::uuid[], $2::uuid[])) ORDER BY patient_id, entry_id, version"
        );
        let rows = sqlx::query(&sql).bind(&entries.0).bind(&entries.1).fetch_all(&mut *conn).await?;
        for row in &rows {
            let patient: Uuid = row.try_get("patient_id")?;
            let chart = cache.chart_mut(patient);
            push_entry_version(chart, row)?;
        }
    }
    if !consents.is_empty() {
        let sql = format!("SELECT {CONSENT_COLS} FROM {schema}.consents WHERE patient_id = ANY($1) ORDER BY patient_id, version");
        let rows = sqlx::query(&sql).bind(&consents).fetch_all(&mut *conn).await?;
        for row in &rows {
            let patient: Uuid = row.try_get("patient_id")?;
            let chart = cache.chart_mut(patient);
            chart.consent.versions.push(consent_from(row)?);
        }
    }
    if !care.0.is_empty() {
        let sql = format!(
            "SELECT {CARE_COLS} FROM {schema}.care_team WHERE (patient_id, clinician_id) IN \
             (SELECT * FROM UNNEST($1::uuid[], $2::uuid[]))"
        );
        let rows = sqlx::query(&sql).bind(&care.0).bind(&care.1).fetch_all(&mut *conn).await?;
        for row in &rows {
            let patient: Uuid = row.try_get("patient_id")?;
            let m = care_from(row)?;
            cache.chart_mut(patient).care_team.insert(m.clinician_id, m);
        }
    }
    if !appointments.0.is_empty() {
        let sql = format!(
            "SELECT {APPOINTMENT_COLS} FROM {schema}.appointments WHERE (patient_id, appointment_id) IN \
             (SELECT * FROM UNNEST($1::uuid[], $2::uuid[]))"
        );
        let rows =
            sqlx::query(&sql).bind(&appointments.0).bind(&appointments.1).fetch_all(&mut *conn).await?;
        for row in &rows {
            let patient: Uuid = row.try_get("patient_id")?;
            let a = appointment_from(row)?;
            cache.chart_mut(patient).appointments.insert(a.appointment_id, a);
        }
    }
    Ok(())
}

/// A whole chart from the tables of `schema` (`rm` for the active generation).
pub async fn load_chart(
    conn: &mut PgConnection,
    schema: &str,
    patient: Uuid,
) -> Result<Option<Chart>, ProjectionError> {
    let sql = format!("SELECT {PATIENT_COLS} FROM {schema}.patients WHERE patient_id = $1");
    let Some(row) = sqlx::query(&sql).bind(patient).fetch_optional(&mut *conn).await? else {
        return Ok(None);
    };
    let mut chart = Chart::new(patient);
    patient_into(&row, &mut chart)?;
    let sql = format!(
        "SELECT {ENTRY_VERSION_COLS} FROM {schema}.entry_versions WHERE patient_id = $1 ORDER BY entry_id, version"
    );
    for row in sqlx::query(&sql).bind(patient).fetch_all(&mut *conn).await? {
        push_entry_version(&mut chart, &row)?;
    }
    let sql = format!("SELECT {CONSENT_COLS} FROM {schema}.consents WHERE patient_id = $1 ORDER BY version");
    for row in sqlx::query(&sql).bind(patient).fetch_all(&mut *conn).await? {
        chart.consent.versions.push(consent_from(&row)?);
    }
    let sql = format!("SELECT {CARE_COLS} FROM {schema}.care_team WHERE patient_id = $1");
    for row in sqlx::query(&sql).bind(patient).fetch_all(&mut *conn).await? {
        let m = care_from(&row)?;
        chart.care_team.insert(m.clinician_id, m);
    }
    let sql = format!("SELECT {APPOINTMENT_COLS} FROM {schema}.appointments WHERE patient_id = $1");
    for row in sqlx::query(&sql).bind(patient).fetch_all(&mut *conn).await? {
        let a = appointment_from(&row)?;
        chart.appointments.insert(a.appointment_id, a);
    }
    Ok(Some(chart))
}

pub(crate) fn patient_into(row: &PgRow, chart: &mut Chart) -> Result<(), ProjectionError> {
    chart.revision = Some(upos(row.try_get("revision")?));
    chart.position = Some(upos(row.try_get("position")?));
    chart.anomalies = upos(row.try_get("anomalies")?);
    if !row.try_get::<bool, _>("registered")? {
        return Ok(());
    }
    let corrupt = |what| ProjectionError::Corrupt { what };
    let given: Vec<String> = row.try_get::<Option<Vec<String>>, _>("given")?.unwrap_or_default();
    let contact: Option<String> = row.try_get("contact")?;
    chart.demographics = Some(Demographics {
        mrn: row.try_get::<Option<String>, _>("mrn")?.ok_or(corrupt("mrn"))?,
        name: domain::events::HumanName {
            given,
            family: row.try_get::<Option<String>, _>("family")?.ok_or(corrupt("family"))?,
        },
        birth_date: row.try_get::<Option<time::Date>, _>("birth_date")?.ok_or(corrupt("birth_date"))?,
        sex: parse(&row.try_get::<Option<String>, _>("sex")?.unwrap_or_default(), "sex")?,
        contact: from_json(contact.as_deref().unwrap_or("{}"), "contact")?,
        registered_at: Timestamp::from_datetime(
            row.try_get::<Option<time::OffsetDateTime>, _>("registered_at")?
                .ok_or(corrupt("registered_at"))?,
        ),
        updated_at: Timestamp::from_datetime(
            row.try_get::<Option<time::OffsetDateTime>, _>("updated_at")?.ok_or(corrupt("updated_at"))?,
        ),
        version: row.try_get::<Option<i32>, _>("demographics_version")?.unwrap_or(1) as u32,
        merged_into: row.try_get("merged_into")?,
    });
    Ok(())
}

pub(crate) fn entry_version_from(row: &PgRow) -> Result<EntryVersion, ProjectionError> {
    let change: String = row.try_get("change")?;
    let reason: Option<String> = row.try_get("reason")?;
    let change = match change.as_str() {
        "recorded" => VersionChange::Recorded,
        "amended" => VersionChange::Amended {
            amendment_id: row
                .try_get::<Option<Uuid>, _>("amendment_id")?
                .ok_or(ProjectionError::Corrupt { what: "amendment_id" })?,
            reason: reason.unwrap_or_default(),
        },
        "entered_in_error" => VersionChange::EnteredInError { reason: reason.unwrap_or_default() },
        _ => return Err(ProjectionError::Corrupt { what: "change" }),
    };
    let content: String = row.try_get("content")?;
    let role: String = row.try_get("author_role")?;
    Ok(EntryVersion {
        version: row.try_get::<i32, _>("version")? as u32,
        change,
        content: from_json::<EntryContent>(&content, "content")?,
        effective_at: Timestamp::from_datetime(row.try_get("effective_at")?),
        author: actor(row.try_get("author_id")?, &role)?,
        recorded_at: Timestamp::from_datetime(row.try_get("recorded_at")?),
        event_id: row.try_get("event_id")?,
        position: upos(row.try_get("position")?),
    })
}

pub(crate) fn push_entry_version(chart: &mut Chart, row: &PgRow) -> Result<(), ProjectionError> {
    let entry_id: Uuid = row.try_get("entry_id")?;
    let v = entry_version_from(row)?;
    let entry = chart.entries.entry(entry_id).or_insert_with(|| Entry {
        entry_id,
        kind: v.content.kind(),
        status: EntryStatus::Active,
        versions: Vec::new(),
    });
    if matches!(v.change, VersionChange::EnteredInError { .. }) {
        entry.status = EntryStatus::EnteredInError;
    }
    entry.versions.push(v);
    Ok(())
}

pub(crate) fn consent_from(row: &PgRow) -> Result<ConsentVersion, ProjectionError> {
    let change: String = row.try_get("change")?;
    let change = match change.as_str() {
        "recorded" => ConsentChange::Recorded {
            method: parse(&row.try_get::<Option<String>, _>("method")?.unwrap_or_default(), "method")?,
            supersedes: row.try_get("supersedes")?,
        },
        "withdrawn" => ConsentChange::Withdrawn {
            purposes: parse_all(
                &row.try_get::<Option<Vec<String>>, _>("withdrawn")?.unwrap_or_default(),
                "purpose",
            )?,
        },
        _ => return Err(ProjectionError::Corrupt { what: "consent change" }),
    };
    Ok(ConsentVersion {
        version: row.try_get::<i32, _>("version")? as u32,
        consent_id: row.try_get("consent_id")?,
        change,
        granted: parse_all(&row.try_get::<Vec<String>, _>("granted")?, "purpose")?,
        witness_id: row.try_get("witness_id")?,
        effective_at: Timestamp::from_datetime(row.try_get("effective_at")?),
        recorded_at: Timestamp::from_datetime(row.try_get("recorded_at")?),
        recorded_by: row.try_get("recorded_by")?,
        position: upos(row.try_get("position")?),
    })
}

pub(crate) fn care_from(row: &PgRow) -> Result<CareTeamMember, ProjectionError> {
    Ok(CareTeamMember {
        clinician_id: row.try_get("clinician_id")?,
        care_role: parse(&row.try_get::<String, _>("care_role")?, "care_role")?,
        assigned_at: Timestamp::from_datetime(row.try_get("assigned_at")?),
        assigned_by: row.try_get("assigned_by")?,
    })
}

pub(crate) fn appointment_from(row: &PgRow) -> Result<Appointment, ProjectionError> {
    Ok(Appointment {
        appointment_id: row.try_get("appointment_id")?,
        clinician_id: row.try_get("clinician_id")?,
        visit_type: parse(&row.try_get::<String, _>("visit_type")?, "visit_type")?,
        start: Timestamp::from_datetime(row.try_get("start_at")?),
        end: Timestamp::from_datetime(row.try_get("end_at")?),
        status: AppointmentStatus::parse(&row.try_get::<String, _>("status")?)
            .ok_or(ProjectionError::Corrupt { what: "appointment status" })?,
        version: row.try_get::<i32, _>("version")? as u32,
        updated_at: Timestamp::from_datetime(row.try_get("updated_at")?),
    })
}

// ------------------------------------------------------------------ writing

/// A column of array literals ([`array_literal`]), turned into `text[]` per row in SQL
/// (sqlx binds no two-dimensional arrays).
fn text_array(col: &str) -> String {
    format!("{col}::text[]")
}

/// The rows a batch changes, encoded, ready to be written in one transaction.
#[derive(Default)]
pub(crate) struct Prepared {
    new_patients: Option<CopyRows>,
    patients: PatientCols,
    counters: CounterCols,
    new_entries: Option<CopyRows>,
    entries: EntryCols,
    versions: Option<CopyRows>,
    consents: Option<CopyRows>,
    care_gone: (Vec<Uuid>, Vec<Uuid>),
    new_care: Option<CopyRows>,
    care_keep: CareCols,
    new_appts: Option<CopyRows>,
    appts: AppointmentCols,
    access: Option<CopyRows>,
    staff: Vec<Recorded>,
}

impl Prepared {
    fn charts(
        &mut self,
        cache: &mut ChartCache,
        patients: &BTreeSet<Uuid>,
        touched: &BTreeSet<(Uuid, EntityKey)>,
        first_position: u64,
    ) -> Result<(), ProjectionError> {
        let ChartCache { charts, written, fresh, content_jsonb, .. } = cache;
        let jsonb = *content_jsonb;
        let fresh = *fresh;
        // A current-state row is new (COPY) when the runner is fresh and has not written it.
        let new_row = |written: &mut HashSet<_>, key: (Uuid, EntityKey)| fresh && written.insert(key);

        // Patients: the whole row where the batch touched the demographics, else only the
        // fold's counters. A chart with demographics whose demographics this batch did not
        // touch already has its row (written by the batch that touched them, or loaded from
        // it), so the counters-only upsert inserts only rows of unregistered charts, which
        // are exactly `registered = false` and the counters.
        let new_patients = self.new_patients.get_or_insert_with(|| CopyRows::new(15));
        for id in patients {
            if let Some(chart) = charts.get(id) {
                if new_row(written, (*id, EntityKey::Demographics)) {
                    copy_patient(new_patients, chart)?;
                } else if touched.contains(&(*id, EntityKey::Demographics)) {
                    self.patients.push(chart);
                } else {
                    self.counters.push(chart);
                }
            }
        }
        let new_entries = self.new_entries.get_or_insert_with(|| CopyRows::new(8));
        let versions = self.versions.get_or_insert_with(|| CopyRows::new(13));
        let consents = self.consents.get_or_insert_with(|| CopyRows::new(13));
        let new_care = self.new_care.get_or_insert_with(|| CopyRows::new(5));
        let new_appts = self.new_appts.get_or_insert_with(|| CopyRows::new(9));
        for (patient, key) in touched {
            let Some(chart) = charts.get(patient) else { continue };
            match key {
                EntityKey::Demographics => {}
                EntityKey::Entry(id) => {
                    if let Some(e) = chart.entries.get(id) {
                        if new_row(written, (*patient, *key)) {
                            copy_entry(new_entries, *patient, e)?;
                        } else {
                            self.entries.push(*patient, e);
                        }
                        for v in e.versions.iter().filter(|v| v.position >= first_position) {
                            push_version(versions, jsonb, *patient, e.entry_id, v)?;
                        }
                    }
                }
                EntityKey::Consent => {
                    for v in chart.consent.versions.iter().filter(|v| v.position >= first_position) {
                        push_consent(consents, *patient, v)?;
                    }
                }
                EntityKey::CareTeamMember(c) => match chart.care_team.get(c) {
                    Some(m) if new_row(written, (*patient, *key)) => copy_care(new_care, *patient, m)?,
                    Some(m) => self.care_keep.push(*patient, m),
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
                            copy_appointment(new_appts, *patient, a)?;
                        } else {
                            self.appts.push(*patient, a);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Write the rows in the caller's transaction.
    pub async fn write(self, conn: &mut PgConnection, schema: &str) -> Result<(), ProjectionError> {
        async fn copy(
            conn: &mut PgConnection,
            rows: Option<CopyRows>,
            schema: &str,
            target: &str,
        ) -> Result<(), ProjectionError> {
            match rows {
                Some(rows) => rows.copy_into(conn, &format!("{schema}.{target}")).await,
                None => Ok(()),
            }
        }
        copy(conn, self.new_patients, schema, PATIENT_TARGET).await?;
        self.patients.write(conn, schema).await?;
        self.counters.write(conn, schema).await?;
        copy(conn, self.new_entries, schema, ENTRY_TARGET).await?;
        self.entries.write(conn, schema).await?;
        copy(conn, self.versions, schema, VERSION_TARGET).await?;
        copy(conn, self.consents, schema, CONSENT_TARGET).await?;
        if !self.care_gone.0.is_empty() {
            let sql = format!(
                "DELETE FROM {schema}.care_team WHERE (patient_id, clinician_id) IN \
                 (SELECT * FROM UNNEST($1::uuid[], $2::uuid[]))"
            );
            sqlx::query(&sql).bind(&self.care_gone.0).bind(&self.care_gone.1).execute(&mut *conn).await?;
        }
        copy(conn, self.new_care, schema, CARE_TARGET).await?;
        self.care_keep.write(conn, schema).await?;
        copy(conn, self.new_appts, schema, APPOINTMENT_TARGET).await?;
        self.appts.write(conn, schema).await?;
        copy(conn, self.access, schema, ACCESS_TARGET).await?;
        for r in &self.staff {
            crate::staff::write_staff(conn, schema, r).await?;
        }
        Ok(())
    }
}

// Current-state rows: new ones by COPY, the others by the upserts below, into the same
// columns (`*_TARGET`).

const PATIENT_TARGET: &str =
    "patients (patient_id, registered, mrn, family, given, birth_date, sex, contact, \
     registered_at, updated_at, demographics_version, merged_into, revision, position, anomalies)";

fn copy_patient(rows: &mut CopyRows, c: &Chart) -> Result<(), ProjectionError> {
    let d = c.demographics.as_ref();
    rows.row()
        .put(c.patient_id)?
        .put(d.is_some())?
        .put(d.map(|d| d.mrn.as_str()))?
        .put(d.map(|d| d.name.family.as_str()))?
        .put(d.map(|d| &d.name.given))?
        .put(d.map(|d| d.birth_date))?
        .put(d.map(|d| name(&d.sex)))?;
    match d {
        Some(d) => rows.put_jsonb(&json(&d.contact))?,
        None => rows.put(None::<&str>)?,
    };
    rows.put(d.map(|d| d.registered_at.to_datetime()))?
        .put(d.map(|d| d.updated_at.to_datetime()))?
        .put(d.map(|d| d.version as i32))?
        .put(d.and_then(|d| d.merged_into))?
        .put(c.revision.map(pos).unwrap_or(0))?
        .put(c.position.map(pos).unwrap_or(0))?
        .put(pos(c.anomalies))?;
    Ok(())
}

const ENTRY_TARGET: &str =
    "entries (entry_id, patient_id, kind, status, current_version, effective_at, recorded_at, position)";

fn copy_entry(rows: &mut CopyRows, patient: Uuid, e: &Entry) -> Result<(), ProjectionError> {
    let Some(cur) = e.current() else { return Ok(()) };
    rows.row()
        .put(e.entry_id)?
        .put(patient)?
        .put(e.kind.as_str())?
        .put(e.status.as_str())?
        .put(cur.version as i32)?
        .put(cur.effective_at.to_datetime())?
        .put(cur.recorded_at.to_datetime())?
        .put(pos(cur.position))?;
    Ok(())
}

const CARE_TARGET: &str = "care_team (patient_id, clinician_id, care_role, assigned_at, assigned_by)";

fn copy_care(rows: &mut CopyRows, patient: Uuid, m: &CareTeamMember) -> Result<(), ProjectionError> {
    rows.row()
        .put(patient)?
        .put(m.clinician_id)?
        .put(m.care_role.as_str())?
        .put(m.assigned_at.to_datetime())?
        .put(m.assigned_by)?;
    Ok(())
}

const APPOINTMENT_TARGET: &str =
    "appointments (appointment_id, patient_id, clinician_id, visit_type, start_at, end_at, status, version, updated_at)";

fn copy_appointment(rows: &mut CopyRows, patient: Uuid, a: &Appointment) -> Result<(), ProjectionError> {
    rows.row()
        .put(a.appointment_id)?
        .put(patient)?
        .put(a.clinician_id)?
        .put(a.visit_type.as_str())?
        .put(a.start.to_datetime())?
        .put(a.end.to_datetime())?
        .put(a.status.as_str())?
        .put(a.version as i32)?
        .put(a.updated_at.to_datetime())?;
    Ok(())
}

#[derive(Default)]
struct PatientCols {
    /// The patient ids and the fold's counters.
    counters: CounterCols,
    registered: Vec<bool>,
    mrn: Vec<Option<String>>,
    family: Vec<Option<String>>,
    given: Vec<Option<String>>,
    birth: Vec<Option<time::Date>>,
    sex: Vec<Option<String>>,
    contact: Vec<Option<String>>,
    registered_at: Vec<Option<time::OffsetDateTime>>,
    updated_at: Vec<Option<time::OffsetDateTime>>,
    version: Vec<Option<i32>>,
    merged: Vec<Option<Uuid>>,
}

impl PatientCols {
    fn push(&mut self, c: &Chart) {
        let d = c.demographics.as_ref();
        self.counters.push(c);
        self.registered.push(d.is_some());
        self.mrn.push(d.map(|d| d.mrn.clone()));
        self.family.push(d.map(|d| d.name.family.clone()));
        self.given.push(d.map(|d| array_literal(&d.name.given)));
        self.birth.push(d.map(|d| d.birth_date));
        self.sex.push(d.map(|d| name(&d.sex)));
        self.contact.push(d.map(|d| json(&d.contact)));
        self.registered_at.push(d.map(|d| d.registered_at.to_datetime()));
        self.updated_at.push(d.map(|d| d.updated_at.to_datetime()));
        self.version.push(d.map(|d| d.version as i32));
        self.merged.push(d.and_then(|d| d.merged_into));
    }
    async fn write(self, conn: &mut PgConnection, schema: &str) -> Result<(), ProjectionError> {
        if self.counters.id.is_empty() {
            return Ok(());
        }
        let given = text_array("g");
        let sql = format!(
            "INSERT INTO {schema}.{PATIENT_TARGET} \
             SELECT id, reg, mrn, fam, CASE WHEN g IS NULL THEN NULL ELSE {given} END, bd, sex, ct::jsonb, ra, ua, v, m, rev, pos, an \
             FROM UNNEST($1::uuid[], $2::bool[], $3::text[], $4::text[], $5::text[], $6::date[], $7::text[], $8::text[], \
                         $9::timestamptz[], $10::timestamptz[], $11::int[], $12::uuid[], $13::bigint[], $14::bigint[], $15::bigint[]) \
                  AS u(id, reg, mrn, fam, g, bd, sex, ct, ra, ua, v, m, rev, pos, an) \
             ON CONFLICT (patient_id) DO UPDATE SET registered = EXCLUDED.registered, mrn = EXCLUDED.mrn, \
               family = EXCLUDED.family, given = EXCLUDED.given, birth_date = EXCLUDED.birth_date, sex = EXCLUDED.sex, \
               contact = EXCLUDED.contact, registered_at = EXCLUDED.registered_at, updated_at = EXCLUDED.updated_at, \
               demographics_version = EXCLUDED.demographics_version, merged_into = EXCLUDED.merged_into, \
               revision = EXCLUDED.revision, position = EXCLUDED.position, anomalies = EXCLUDED.anomalies"
        );
        sqlx::query(&sql)
            .bind(self.counters.id)
            .bind(self.registered)
            .bind(self.mrn)
            .bind(self.family)
            .bind(self.given)
            .bind(self.birth)
            .bind(self.sex)
            .bind(self.contact)
            .bind(self.registered_at)
            .bind(self.updated_at)
            .bind(self.version)
            .bind(self.merged)
            .bind(self.counters.revision)
            .bind(self.counters.position)
            .bind(self.counters.anomalies)
            .execute(conn)
            .await?;
        Ok(())
    }
}

/// A patient row's fold counters (revision, position, anomalies).
#[derive(Default)]
struct CounterCols {
    id: Vec<Uuid>,
    revision: Vec<i64>,
    position: Vec<i64>,
    anomalies: Vec<i64>,
}

impl CounterCols {
    fn push(&mut self, c: &Chart) {
        self.id.push(c.patient_id);
        self.revision.push(c.revision.map(pos).unwrap_or(0));
        self.position.push(c.position.map(pos).unwrap_or(0));
        self.anomalies.push(pos(c.anomalies));
    }
    async fn write(self, conn: &mut PgConnection, schema: &str) -> Result<(), ProjectionError> {
        if self.id.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "INSERT INTO {schema}.patients AS t (patient_id, registered, revision, position, anomalies) \
             SELECT id, false, rev, pos, an FROM UNNEST($1::uuid[], $2::bigint[], $3::bigint[], $4::bigint[]) \
                  AS u(id, rev, pos, an) \
             ON CONFLICT (patient_id) DO UPDATE SET revision = EXCLUDED.revision, position = EXCLUDED.position, \
               anomalies = EXCLUDED.anomalies"
        );
        sqlx::query(&sql)
            .bind(self.id)
            .bind(self.revision)
            .bind(self.position)
            .bind(self.anomalies)
            .execute(conn)
            .await?;
        Ok(())
    }
}

#[derive(Default)]
struct EntryCols {
    id: Vec<Uuid>,
    patient: Vec<Uuid>,
    kind: Vec<String>,
    status: Vec<String>,
    version: Vec<i32>,
    effective: Vec<time::OffsetDateTime>,
    recorded: Vec<time::OffsetDateTime>,
    position: Vec<i64>,
}

impl EntryCols {
    fn push(&mut self, patient: Uuid, e: &Entry) {
        let Some(cur) = e.current() else { return };
        self.id.push(e.entry_id);
        self.patient.push(patient);
        self.kind.push(e.kind.as_str().to_owned());
        self.status.push(e.status.as_str().to_owned());
        self.version.push(cur.version as i32);
        self.effective.push(cur.effective_at.to_datetime());
        self.recorded.push(cur.recorded_at.to_datetime());
        self.position.push(pos(cur.position));
    }
    async fn write(self, conn: &mut PgConnection, schema: &str) -> Result<(), ProjectionError> {
        if self.id.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "INSERT INTO {schema}.{ENTRY_TARGET} \
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::int[], $6::timestamptz[], $7::timestamptz[], $8::bigint[]) \
             ON CONFLICT (patient_id, entry_id) DO UPDATE SET status = EXCLUDED.status, current_version = EXCLUDED.current_version, \
               effective_at = EXCLUDED.effective_at, recorded_at = EXCLUDED.recorded_at, position = EXCLUDED.position"
        );
        sqlx::query(&sql)
            .bind(self.id)
            .bind(self.patient)
            .bind(self.kind)
            .bind(self.status)
            .bind(self.version)
            .bind(self.effective)
            .bind(self.recorded)
            .bind(self.position)
            .execute(conn)
            .await?;
        Ok(())
    }
}

const VERSION_TARGET: &str =
    "entry_versions (entry_id, version, patient_id, change, amendment_id, reason, content, \
     effective_at, author_id, author_role, recorded_at, event_id, position)";

/// An entry version's row; versions are insert-only and written in the batch that holds
/// their position, so the row cannot exist yet.
fn push_version(
    rows: &mut CopyRows,
    jsonb: bool,
    patient: Uuid,
    entry: Uuid,
    v: &EntryVersion,
) -> Result<(), ProjectionError> {
    let amendment = match &v.change {
        VersionChange::Amended { amendment_id, .. } => Some(*amendment_id),
        _ => None,
    };
    rows.row()
        .put(entry)?
        .put(v.version as i32)?
        .put(patient)?
        .put(v.change.as_str())?
        .put(amendment)?
        .put(v.change.reason())?;
    let content = json(&v.content);
    if jsonb {
        rows.put_jsonb(&content)?;
    } else {
        rows.put_json(&content)?;
    }
    rows.put(v.effective_at.to_datetime())?
        .put(v.author.user_id)?
        .put(v.author.role.as_str())?
        .put(v.recorded_at.to_datetime())?
        .put(v.event_id)?
        .put(pos(v.position))?;
    Ok(())
}

const CONSENT_TARGET: &str =
    "consents (patient_id, version, consent_id, change, method, supersedes, withdrawn, granted, \
     witness_id, effective_at, recorded_at, recorded_by, position)";

/// A consent version's row (insert-only, like entry versions).
fn push_consent(rows: &mut CopyRows, patient: Uuid, v: &ConsentVersion) -> Result<(), ProjectionError> {
    let (method, supersedes, withdrawn) = match &v.change {
        ConsentChange::Recorded { method, supersedes } => (Some(name(method)), *supersedes, None),
        ConsentChange::Withdrawn { purposes } => (None, None, Some(names(purposes))),
    };
    rows.row()
        .put(patient)?
        .put(v.version as i32)?
        .put(v.consent_id)?
        .put(v.change.as_str())?
        .put(method)?
        .put(supersedes)?
        .put(withdrawn)?
        .put(names(&v.granted))?
        .put(v.witness_id)?
        .put(v.effective_at.to_datetime())?
        .put(v.recorded_at.to_datetime())?
        .put(v.recorded_by)?
        .put(pos(v.position))?;
    Ok(())
}

#[derive(Default)]
struct CareCols {
    patient: Vec<Uuid>,
    clinician: Vec<Uuid>,
    role: Vec<String>,
    at: Vec<time::OffsetDateTime>,
    by: Vec<Uuid>,
}

impl CareCols {
    fn push(&mut self, patient: Uuid, m: &CareTeamMember) {
        self.patient.push(patient);
        self.clinician.push(m.clinician_id);
        self.role.push(m.care_role.as_str().to_owned());
        self.at.push(m.assigned_at.to_datetime());
        self.by.push(m.assigned_by);
    }
    async fn write(self, conn: &mut PgConnection, schema: &str) -> Result<(), ProjectionError> {
        if self.patient.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "INSERT INTO {schema}.{CARE_TARGET} \
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[], $5::uuid[]) \
             ON CONFLICT (patient_id, clinician_id) DO UPDATE SET care_role = EXCLUDED.care_role, \
               assigned_at = EXCLUDED.assigned_at, assigned_by = EXCLUDED.assigned_by"
        );
        sqlx::query(&sql)
            .bind(self.patient)
            .bind(self.clinician)
            .bind(self.role)
            .bind(self.at)
            .bind(self.by)
            .execute(conn)
            .await?;
        Ok(())
    }
}

#[derive(Default)]
struct AppointmentCols {
    id: Vec<Uuid>,
    patient: Vec<Uuid>,
    clinician: Vec<Uuid>,
    visit: Vec<String>,
    start: Vec<time::OffsetDateTime>,
    end: Vec<time::OffsetDateTime>,
    status: Vec<String>,
    version: Vec<i32>,
    updated: Vec<time::OffsetDateTime>,
}

impl AppointmentCols {
    fn push(&mut self, patient: Uuid, a: &Appointment) {
        self.id.push(a.appointment_id);
        self.patient.push(patient);
        self.clinician.push(a.clinician_id);
        self.visit.push(a.visit_type.as_str().to_owned());
        self.start.push(a.start.to_datetime());
        self.end.push(a.end.to_datetime());
        self.status.push(a.status.as_str().to_owned());
        self.version.push(a.version as i32);
        self.updated.push(a.updated_at.to_datetime());
    }
    async fn write(self, conn: &mut PgConnection, schema: &str) -> Result<(), ProjectionError> {
        if self.id.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "INSERT INTO {schema}.{APPOINTMENT_TARGET} \
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::timestamptz[], $6::timestamptz[], $7::text[], $8::int[], $9::timestamptz[]) \
             ON CONFLICT (patient_id, appointment_id) DO UPDATE SET start_at = EXCLUDED.start_at, end_at = EXCLUDED.end_at, \
               status = EXCLUDED.status, version = EXCLUDED.version, updated_at = EXCLUDED.updated_at"
        );
        sqlx::query(&sql)
            .bind(self.id)
            .bind(self.patient)
            .bind(self.clinician)
            .bind(self.visit)
            .bind(self.start)
            .bind(self.end)
            .bind(self.status)
            .bind(self.version)
            .bind(self.updated)
            .execute(conn)
            .await?;
        Ok(())
    }
}

const ACCESS_TARGET: &str =
    "access_log (position, event_id, patient_id, user_id, role, accessed_at, resources, \
     action, purpose, break_glass_reason, client_addr, user_agent, session_id, case_ref)";

/// An access-log row: insert-only, one per access event.
fn push_access(rows: &mut CopyRows, r: &AccessLogEntry) -> Result<(), ProjectionError> {
    rows.row()
        .put(pos(r.position))?
        .put(r.event_id)?
        .put(r.patient_id)?
        .put(r.user_id)?
        .put(r.role.as_str())?
        .put(r.accessed_at.to_datetime())?
        .put(names(&r.resources))?
        .put(r.action.as_str())?
        .put(r.purpose.as_str())?
        .put(r.break_glass_reason.as_deref())?
        .put(r.client_addr.as_deref())?
        .put(r.user_agent.as_deref())?
        .put(r.session_id)?
        .put(r.case_ref.as_deref())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_file_splits_into_whole_statements() {
        let all = statements(INDEXES_SQL);
        assert_eq!(all.len(), INDEXES_SQL.matches(';').count());
        for s in all {
            assert!(s.starts_with("CREATE INDEX IF NOT EXISTS ") && s.ends_with(';'), "{s}");
        }
    }
}
