//! Loading back what the tables hold: the entities a batch touches that the cache lacks,
//! a whole chart, and the row decoders the queries share. The columns read are the
//! tables' descriptors' (`Table::select_list`).

use std::collections::BTreeSet;

use domain::chart::*;
use domain::events::EntryContent;
use ledger::Timestamp;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use super::tables::{APPOINTMENTS, CARE_TEAM, CONSENTS, ENTRY_VERSIONS, PATIENTS};
use super::ChartCache;
use crate::error::ProjectionError;
use crate::sqlmap::*;

pub(super) async fn load_missing(
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
        let sql =
            format!("SELECT {} FROM {schema}.patients WHERE patient_id = ANY($1)", PATIENTS.select_list());
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
            "SELECT {} FROM {schema}.entry_versions WHERE (patient_id, entry_id) IN \
             (SELECT * FROM UNNEST($1::uuid[], $2::uuid[])) ORDER BY patient_id, entry_id, version",
            ENTRY_VERSIONS.select_list()
        );
        let rows = sqlx::query(&sql).bind(&entries.0).bind(&entries.1).fetch_all(&mut *conn).await?;
        for row in &rows {
            let patient: Uuid = row.try_get("patient_id")?;
            let chart = cache.chart_mut(patient);
            push_entry_version(chart, row)?;
        }
    }
    if !consents.is_empty() {
        let sql = format!(
            "SELECT {} FROM {schema}.consents WHERE patient_id = ANY($1) ORDER BY patient_id, version",
            CONSENTS.select_list()
        );
        let rows = sqlx::query(&sql).bind(&consents).fetch_all(&mut *conn).await?;
        for row in &rows {
            let patient: Uuid = row.try_get("patient_id")?;
            let chart = cache.chart_mut(patient);
            chart.consent.versions.push(consent_from(row)?);
        }
    }
    if !care.0.is_empty() {
        let sql = format!(
            "SELECT {} FROM {schema}.care_team WHERE (patient_id, clinician_id) IN \
             (SELECT * FROM UNNEST($1::uuid[], $2::uuid[]))",
            CARE_TEAM.select_list()
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
            "SELECT {} FROM {schema}.appointments WHERE (patient_id, appointment_id) IN \
             (SELECT * FROM UNNEST($1::uuid[], $2::uuid[]))",
            APPOINTMENTS.select_list()
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
    let sql = format!("SELECT {} FROM {schema}.patients WHERE patient_id = $1", PATIENTS.select_list());
    let Some(row) = sqlx::query(&sql).bind(patient).fetch_optional(&mut *conn).await? else {
        return Ok(None);
    };
    let mut chart = Chart::new(patient);
    patient_into(&row, &mut chart)?;
    let sql = format!(
        "SELECT {} FROM {schema}.entry_versions WHERE patient_id = $1 ORDER BY entry_id, version",
        ENTRY_VERSIONS.select_list()
    );
    for row in sqlx::query(&sql).bind(patient).fetch_all(&mut *conn).await? {
        push_entry_version(&mut chart, &row)?;
    }
    let sql = format!(
        "SELECT {} FROM {schema}.consents WHERE patient_id = $1 ORDER BY version",
        CONSENTS.select_list()
    );
    for row in sqlx::query(&sql).bind(patient).fetch_all(&mut *conn).await? {
        chart.consent.versions.push(consent_from(&row)?);
    }
    let sql = format!("SELECT {} FROM {schema}.care_team WHERE patient_id = $1", CARE_TEAM.select_list());
    for row in sqlx::query(&sql).bind(patient).fetch_all(&mut *conn).await? {
        let m = care_from(&row)?;
        chart.care_team.insert(m.clinician_id, m);
    }
    let sql =
        format!("SELECT {} FROM {schema}.appointments WHERE patient_id = $1", APPOINTMENTS.select_list());
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
