//! The `records` projection in SQL: charts (patients, entries and their versions,
//! consents, care teams, appointments), the access log and the staff directory.
//!
//! The runner keeps partial charts in a [`ChartCache`]. Before a batch it loads from
//! PostgreSQL exactly the entities the batch's events touch (the fold's locality
//! invariant, see `domain::chart`), applies `Chart::apply` to them, and writes those
//! entities back. History rows (entry versions, consent versions, access log) are
//! insert-only, so a version is written once: when its position is in the batch.

use std::collections::{BTreeSet, HashMap, HashSet};

use domain::chart::*;
use domain::events::{DomainEvent, EntryContent};
use domain::Recorded;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::error::ProjectionError;
use crate::sqlmap::*;

/// The SQL that creates one generation's tables.
pub const TABLES_SQL: &str = include_str!("../sql/records.sql");
/// The SQL that creates a generation's secondary indexes (idempotent).
pub const INDEXES_SQL: &str = include_str!("../sql/records_indexes.sql");
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
}

impl ChartCache {
    pub fn fresh() -> Self {
        Self { fresh: true, ..Self::default() }
    }
    pub fn clear(&mut self) {
        self.charts.clear();
        self.loaded.clear();
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

/// Apply a batch of decoded events to the tables of `schema`, inside `conn`'s transaction.
pub async fn apply_batch(
    conn: &mut PgConnection,
    schema: &str,
    cache: &mut ChartCache,
    events: &[Recorded],
) -> Result<(), ProjectionError> {
    let Some(first_position) = events.first().map(|e| e.position) else { return Ok(()) };
    let mut touched: BTreeSet<(Uuid, EntityKey)> = BTreeSet::new();
    let mut touched_patients: BTreeSet<Uuid> = BTreeSet::new();
    let mut access = Vec::new();
    let mut staff = Vec::new();
    let mut chart_events = Vec::new();
    for r in events {
        match &r.event {
            DomainEvent::RecordAccessed(_) => access.extend(AccessLogEntry::of(r)),
            DomainEvent::UserCreated(_)
            | DomainEvent::RoleGranted(_)
            | DomainEvent::RoleRevoked(_)
            | DomainEvent::UserDeactivated(_) => staff.push(r),
            e => {
                if let (Some(key), Some(patient)) = (EntityKey::of(e), domain::streams::patient_of(&r.stream))
                {
                    touched.insert((patient, key));
                    touched_patients.insert(patient);
                    chart_events.push((patient, r));
                }
            }
        }
    }
    if !cache.fresh {
        load_missing(conn, schema, cache, &touched_patients, &touched).await?;
    }
    for (patient, r) in chart_events {
        cache.chart_mut(patient).apply(r);
    }
    for k in &touched {
        cache.loaded.insert(*k);
    }
    write_charts(conn, schema, cache, &touched_patients, &touched, first_position).await?;
    write_access(conn, schema, &access).await?;
    for r in staff {
        write_staff(conn, schema, r).await?;
    }
    Ok(())
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
        registered_at: ts(row
            .try_get::<Option<time::OffsetDateTime>, _>("registered_at")?
            .ok_or(corrupt("registered_at"))?),
        updated_at: ts(row
            .try_get::<Option<time::OffsetDateTime>, _>("updated_at")?
            .ok_or(corrupt("updated_at"))?),
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
        effective_at: ts(row.try_get("effective_at")?),
        author: actor(row.try_get("author_id")?, &role)?,
        recorded_at: ts(row.try_get("recorded_at")?),
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
        effective_at: ts(row.try_get("effective_at")?),
        recorded_at: ts(row.try_get("recorded_at")?),
        recorded_by: row.try_get("recorded_by")?,
        position: upos(row.try_get("position")?),
    })
}

pub(crate) fn care_from(row: &PgRow) -> Result<CareTeamMember, ProjectionError> {
    Ok(CareTeamMember {
        clinician_id: row.try_get("clinician_id")?,
        care_role: parse(&row.try_get::<String, _>("care_role")?, "care_role")?,
        assigned_at: ts(row.try_get("assigned_at")?),
        assigned_by: row.try_get("assigned_by")?,
    })
}

pub(crate) fn appointment_from(row: &PgRow) -> Result<Appointment, ProjectionError> {
    Ok(Appointment {
        appointment_id: row.try_get("appointment_id")?,
        clinician_id: row.try_get("clinician_id")?,
        visit_type: parse(&row.try_get::<String, _>("visit_type")?, "visit_type")?,
        start: ts(row.try_get("start_at")?),
        end: ts(row.try_get("end_at")?),
        status: AppointmentStatus::parse(&row.try_get::<String, _>("status")?)
            .ok_or(ProjectionError::Corrupt { what: "appointment status" })?,
        version: row.try_get::<i32, _>("version")? as u32,
        updated_at: ts(row.try_get("updated_at")?),
    })
}

// ------------------------------------------------------------------ writing

/// A column of array literals ([`array_literal`]), turned into `text[]` per row in SQL
/// (sqlx binds no two-dimensional arrays).
fn text_array(col: &str) -> String {
    format!("{col}::text[]")
}

async fn write_charts(
    conn: &mut PgConnection,
    schema: &str,
    cache: &ChartCache,
    patients: &BTreeSet<Uuid>,
    touched: &BTreeSet<(Uuid, EntityKey)>,
    first_position: u64,
) -> Result<(), ProjectionError> {
    // Patients: the whole row where the batch touched the demographics, else only the
    // fold's counters. A chart with demographics whose demographics this batch did not
    // touch already has its row (written by the batch that touched them, or loaded from
    // it), so the counters-only upsert inserts only rows of unregistered charts, which
    // are exactly `registered = false` and the counters.
    let mut p = PatientCols::default();
    let mut counters = CounterCols::default();
    for id in patients {
        if let Some(chart) = cache.charts.get(id) {
            if touched.contains(&(*id, EntityKey::Demographics)) {
                p.push(chart);
            } else {
                counters.push(chart);
            }
        }
    }
    p.write(conn, schema).await?;
    counters.write(conn, schema).await?;

    let mut entries = EntryCols::default();
    let mut versions = VersionCols::default();
    let mut consents = ConsentCols::default();
    let (mut care_keep, mut care_gone) = (CareCols::default(), (Vec::new(), Vec::new()));
    let mut appts = AppointmentCols::default();
    for (patient, key) in touched {
        let Some(chart) = cache.charts.get(patient) else { continue };
        match key {
            EntityKey::Demographics => {}
            EntityKey::Entry(id) => {
                if let Some(e) = chart.entries.get(id) {
                    entries.push(*patient, e);
                    for v in e.versions.iter().filter(|v| v.position >= first_position) {
                        versions.push(*patient, e.entry_id, v);
                    }
                }
            }
            EntityKey::Consent => {
                for v in chart.consent.versions.iter().filter(|v| v.position >= first_position) {
                    consents.push(*patient, v);
                }
            }
            EntityKey::CareTeamMember(c) => match chart.care_team.get(c) {
                Some(m) => care_keep.push(*patient, m),
                None => {
                    care_gone.0.push(*patient);
                    care_gone.1.push(*c);
                }
            },
            EntityKey::Appointment(a) => {
                if let Some(a) = chart.appointments.get(a) {
                    appts.push(*patient, a);
                }
            }
        }
    }
    entries.write(conn, schema).await?;
    versions.write(conn, schema).await?;
    consents.write(conn, schema).await?;
    if !care_gone.0.is_empty() {
        let sql = format!(
            "DELETE FROM {schema}.care_team WHERE (patient_id, clinician_id) IN \
             (SELECT * FROM UNNEST($1::uuid[], $2::uuid[]))"
        );
        sqlx::query(&sql).bind(&care_gone.0).bind(&care_gone.1).execute(&mut *conn).await?;
    }
    care_keep.write(conn, schema).await?;
    appts.write(conn, schema).await?;
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
        self.registered_at.push(d.map(|d| odt(d.registered_at)));
        self.updated_at.push(d.map(|d| odt(d.updated_at)));
        self.version.push(d.map(|d| d.version as i32));
        self.merged.push(d.and_then(|d| d.merged_into));
    }
    async fn write(self, conn: &mut PgConnection, schema: &str) -> Result<(), ProjectionError> {
        if self.counters.id.is_empty() {
            return Ok(());
        }
        let given = text_array("g");
        let sql = format!(
            "INSERT INTO {schema}.patients AS t ({cols}) \
             SELECT id, reg, mrn, fam, CASE WHEN g IS NULL THEN NULL ELSE {given} END, bd, sex, ct::jsonb, ra, ua, v, m, rev, pos, an \
             FROM UNNEST($1::uuid[], $2::bool[], $3::text[], $4::text[], $5::text[], $6::date[], $7::text[], $8::text[], \
                         $9::timestamptz[], $10::timestamptz[], $11::int[], $12::uuid[], $13::bigint[], $14::bigint[], $15::bigint[]) \
                  AS u(id, reg, mrn, fam, g, bd, sex, ct, ra, ua, v, m, rev, pos, an) \
             ON CONFLICT (patient_id) DO UPDATE SET registered = EXCLUDED.registered, mrn = EXCLUDED.mrn, \
               family = EXCLUDED.family, given = EXCLUDED.given, birth_date = EXCLUDED.birth_date, sex = EXCLUDED.sex, \
               contact = EXCLUDED.contact, registered_at = EXCLUDED.registered_at, updated_at = EXCLUDED.updated_at, \
               demographics_version = EXCLUDED.demographics_version, merged_into = EXCLUDED.merged_into, \
               revision = EXCLUDED.revision, position = EXCLUDED.position, anomalies = EXCLUDED.anomalies",
            cols = "patient_id, registered, mrn, family, given, birth_date, sex, contact, registered_at, updated_at, \
                    demographics_version, merged_into, revision, position, anomalies"
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
        self.effective.push(odt(cur.effective_at));
        self.recorded.push(odt(cur.recorded_at));
        self.position.push(pos(cur.position));
    }
    async fn write(self, conn: &mut PgConnection, schema: &str) -> Result<(), ProjectionError> {
        if self.id.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "INSERT INTO {schema}.entries (entry_id, patient_id, kind, status, current_version, effective_at, recorded_at, position) \
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

#[derive(Default)]
struct VersionCols {
    entry: Vec<Uuid>,
    version: Vec<i32>,
    patient: Vec<Uuid>,
    change: Vec<String>,
    amendment: Vec<Option<Uuid>>,
    reason: Vec<Option<String>>,
    content: Vec<String>,
    effective: Vec<time::OffsetDateTime>,
    author: Vec<Uuid>,
    role: Vec<String>,
    recorded: Vec<time::OffsetDateTime>,
    event: Vec<Uuid>,
    position: Vec<i64>,
}

impl VersionCols {
    fn push(&mut self, patient: Uuid, entry: Uuid, v: &EntryVersion) {
        self.entry.push(entry);
        self.version.push(v.version as i32);
        self.patient.push(patient);
        self.change.push(v.change.as_str().to_owned());
        self.amendment.push(match &v.change {
            VersionChange::Amended { amendment_id, .. } => Some(*amendment_id),
            _ => None,
        });
        self.reason.push(v.change.reason().map(str::to_owned));
        self.content.push(json(&v.content));
        self.effective.push(odt(v.effective_at));
        self.author.push(v.author.user_id);
        self.role.push(v.author.role.as_str().to_owned());
        self.recorded.push(odt(v.recorded_at));
        self.event.push(v.event_id);
        self.position.push(pos(v.position));
    }
    async fn write(self, conn: &mut PgConnection, schema: &str) -> Result<(), ProjectionError> {
        if self.entry.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "INSERT INTO {schema}.entry_versions (entry_id, version, patient_id, change, amendment_id, reason, content, \
               effective_at, author_id, author_role, recorded_at, event_id, position) \
             SELECT e, v, p, c, a, r, ct::jsonb, ef, au, ro, rc, ev, pos \
             FROM UNNEST($1::uuid[], $2::int[], $3::uuid[], $4::text[], $5::uuid[], $6::text[], $7::text[], \
                         $8::timestamptz[], $9::uuid[], $10::text[], $11::timestamptz[], $12::uuid[], $13::bigint[]) \
                  AS u(e, v, p, c, a, r, ct, ef, au, ro, rc, ev, pos) \
             ON CONFLICT (patient_id, entry_id, version) DO NOTHING"
        );
        sqlx::query(&sql)
            .bind(self.entry)
            .bind(self.version)
            .bind(self.patient)
            .bind(self.change)
            .bind(self.amendment)
            .bind(self.reason)
            .bind(self.content)
            .bind(self.effective)
            .bind(self.author)
            .bind(self.role)
            .bind(self.recorded)
            .bind(self.event)
            .bind(self.position)
            .execute(conn)
            .await?;
        Ok(())
    }
}

#[derive(Default)]
struct ConsentCols {
    patient: Vec<Uuid>,
    version: Vec<i32>,
    consent: Vec<Uuid>,
    change: Vec<String>,
    method: Vec<Option<String>>,
    supersedes: Vec<Option<Uuid>>,
    withdrawn: Vec<Option<String>>,
    granted: Vec<String>,
    witness: Vec<Option<Uuid>>,
    effective: Vec<time::OffsetDateTime>,
    recorded: Vec<time::OffsetDateTime>,
    by: Vec<Uuid>,
    position: Vec<i64>,
}

impl ConsentCols {
    fn push(&mut self, patient: Uuid, v: &ConsentVersion) {
        self.patient.push(patient);
        self.version.push(v.version as i32);
        self.consent.push(v.consent_id);
        self.change.push(v.change.as_str().to_owned());
        match &v.change {
            ConsentChange::Recorded { method, supersedes } => {
                self.method.push(Some(name(method)));
                self.supersedes.push(*supersedes);
                self.withdrawn.push(None);
            }
            ConsentChange::Withdrawn { purposes } => {
                self.method.push(None);
                self.supersedes.push(None);
                self.withdrawn.push(Some(array_literal(names(purposes))));
            }
        }
        self.granted.push(array_literal(names(&v.granted)));
        self.witness.push(v.witness_id);
        self.effective.push(odt(v.effective_at));
        self.recorded.push(odt(v.recorded_at));
        self.by.push(v.recorded_by);
        self.position.push(pos(v.position));
    }
    async fn write(self, conn: &mut PgConnection, schema: &str) -> Result<(), ProjectionError> {
        if self.patient.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "INSERT INTO {schema}.consents (patient_id, version, consent_id, change, method, supersedes, withdrawn, granted, \
               witness_id, effective_at, recorded_at, recorded_by, position) \
             SELECT p, v, c, ch, m, s, CASE WHEN w IS NULL THEN NULL ELSE {w} END, {g}, wi, ef, rc, b, pos \
             FROM UNNEST($1::uuid[], $2::int[], $3::uuid[], $4::text[], $5::text[], $6::uuid[], $7::text[], $8::text[], \
                         $9::uuid[], $10::timestamptz[], $11::timestamptz[], $12::uuid[], $13::bigint[]) \
                  AS u(p, v, c, ch, m, s, w, g, wi, ef, rc, b, pos) \
             ON CONFLICT (patient_id, version) DO NOTHING",
            w = text_array("w"),
            g = text_array("g"),
        );
        sqlx::query(&sql)
            .bind(self.patient)
            .bind(self.version)
            .bind(self.consent)
            .bind(self.change)
            .bind(self.method)
            .bind(self.supersedes)
            .bind(self.withdrawn)
            .bind(self.granted)
            .bind(self.witness)
            .bind(self.effective)
            .bind(self.recorded)
            .bind(self.by)
            .bind(self.position)
            .execute(conn)
            .await?;
        Ok(())
    }
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
        self.at.push(odt(m.assigned_at));
        self.by.push(m.assigned_by);
    }
    async fn write(self, conn: &mut PgConnection, schema: &str) -> Result<(), ProjectionError> {
        if self.patient.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "INSERT INTO {schema}.care_team (patient_id, clinician_id, care_role, assigned_at, assigned_by) \
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
        self.start.push(odt(a.start));
        self.end.push(odt(a.end));
        self.status.push(a.status.as_str().to_owned());
        self.version.push(a.version as i32);
        self.updated.push(odt(a.updated_at));
    }
    async fn write(self, conn: &mut PgConnection, schema: &str) -> Result<(), ProjectionError> {
        if self.id.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "INSERT INTO {schema}.appointments (appointment_id, patient_id, clinician_id, visit_type, start_at, end_at, status, version, updated_at) \
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

async fn write_access(
    conn: &mut PgConnection,
    schema: &str,
    rows: &[AccessLogEntry],
) -> Result<(), ProjectionError> {
    if rows.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "INSERT INTO {schema}.access_log (position, event_id, patient_id, user_id, role, accessed_at, resources, action, \
           purpose, break_glass_reason, client_addr, user_agent, session_id) \
         SELECT pos, ev, p, us, ro, at, {res}, ac, pu, bg, ca, ua, se \
         FROM UNNEST($1::bigint[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[], $6::timestamptz[], $7::text[], \
                     $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::uuid[]) \
              AS u(pos, ev, p, us, ro, at, r, ac, pu, bg, ca, ua, se) \
         ON CONFLICT (position) DO NOTHING",
        res = text_array("r"),
    );
    sqlx::query(&sql)
        .bind(rows.iter().map(|r| pos(r.position)).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.event_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.patient_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.user_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.role.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| odt(r.accessed_at)).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| array_literal(names(&r.resources))).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.action.as_str().to_owned()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.purpose.as_str().to_owned()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.break_glass_reason.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.client_addr.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.user_agent.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.session_id).collect::<Vec<_>>())
        .execute(conn)
        .await?;
    Ok(())
}

/// The staff directory fold, in SQL: staff events are rare, one statement each.
async fn write_staff(conn: &mut PgConnection, schema: &str, r: &Recorded) -> Result<(), ProjectionError> {
    let at = odt(r.recorded_at);
    let position = pos(r.position);
    match &r.event {
        DomainEvent::UserCreated(u) => {
            let sql = format!(
                "INSERT INTO {schema}.users (user_id, username, display_name, roles, patient_id, active, updated_at, position) \
                 VALUES ($1, $2, $3, $4, $5, true, $6, $7) ON CONFLICT (user_id) DO NOTHING"
            );
            sqlx::query(&sql)
                .bind(u.user_id)
                .bind(&u.username)
                .bind(&u.display_name)
                .bind(names(&u.roles))
                .bind(u.patient_id)
                .bind(at)
                .bind(position)
                .execute(conn)
                .await?;
        }
        DomainEvent::RoleGranted(c) | DomainEvent::RoleRevoked(c) => {
            let op = if matches!(r.event, DomainEvent::RoleGranted(_)) {
                "ARRAY(SELECT DISTINCT x FROM unnest(array_append(roles, $2)) AS x ORDER BY x)"
            } else {
                "array_remove(roles, $2)"
            };
            let sql = format!(
                "UPDATE {schema}.users SET roles = {op}, updated_at = $3, position = $4 WHERE user_id = $1"
            );
            sqlx::query(&sql)
                .bind(c.user_id)
                .bind(name(&c.role))
                .bind(at)
                .bind(position)
                .execute(conn)
                .await?;
        }
        DomainEvent::UserDeactivated(d) => {
            let sql = format!(
                "UPDATE {schema}.users SET active = false, updated_at = $2, position = $3 WHERE user_id = $1"
            );
            sqlx::query(&sql).bind(d.user_id).bind(at).bind(position).execute(conn).await?;
        }
        _ => {}
    }
    Ok(())
}
