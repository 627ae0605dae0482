//! Reads from the active read models (the `rm.*` views). Every function takes ids and
//! returns domain values; access control and access logging are the caller's (the API's)
//! job, so that nothing here can be reached without them by mistake... and nothing here
//! logs clinical values.

use std::collections::BTreeSet;
use std::sync::Arc;

use domain::chart::{AccessLogEntry, Appointment, CareTeamMember, Chart, ConsentVersion, EntryVersion};
use domain::events::Role;
use ledger::Timestamp;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::current::{CurrentCharts, DEFAULT_CAPACITY};
use crate::error::ProjectionError;
use crate::probe::Prober;
use crate::records;
use crate::sqlmap::*;

/// The read models' query side.
#[derive(Clone, Debug)]
pub struct ReadModels {
    pool: PgPool,
    charts: Arc<CurrentCharts>,
    prober: Arc<Prober>,
}

/// A patient-index search. Every given criterion must match.
#[derive(Clone, Debug, Default)]
pub struct PatientSearch {
    /// Prefix of the family name, case-insensitive.
    pub family_prefix: Option<String>,
    pub birth_date: Option<time::Date>,
    pub mrn: Option<String>,
}

/// A line of the patient index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatientSummary {
    pub patient_id: Uuid,
    pub mrn: String,
    pub family: String,
    pub given: Vec<String>,
    pub birth_date: time::Date,
    pub sex: String,
    pub merged_into: Option<Uuid>,
}

/// An access-log query: by patient, by user, by time range, or any mix.
#[derive(Clone, Debug, Default)]
pub struct AccessQuery {
    pub patient_id: Option<Uuid>,
    pub user_id: Option<Uuid>,
    pub from: Option<Timestamp>,
    pub to: Option<Timestamp>,
    /// A paging cursor: only events at `$all` positions strictly below this one (pass the
    /// last position of the previous page; results are newest first).
    pub before_position: Option<u64>,
    pub limit: u32,
}

/// A staff (or patient) user account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRow {
    pub user_id: Uuid,
    pub username: String,
    pub display_name: String,
    pub roles: BTreeSet<Role>,
    pub patient_id: Option<Uuid>,
    pub active: bool,
}

const MAX_LIMIT: u32 = 1000;

// ------------------------------------------------------------------ the chart in one statement

/// Which table a row of [`chart_sql`] comes from (column `k`; rows sort by it).
const K_PATIENT: i16 = 0;
const K_VERSION: i16 = 1;
const K_CONSENT: i16 = 2;
const K_CARE: i16 = 3;
const K_APPOINTMENT: i16 = 4;

/// Every column of the chart's tables, by name, with its SQL type and the expression
/// that reads it (JSON documents as text, as `records` decodes them). A column shared by
/// several tables (`position`, `version`, `recorded_at`...) has one type in all of them.
const CHART_COLS: &[(&str, &str, &str)] = &[
    ("patient_id", "uuid", "patient_id"),
    ("registered", "boolean", "registered"),
    ("mrn", "text", "mrn"),
    ("family", "text", "family"),
    ("given", "text[]", "given"),
    ("birth_date", "date", "birth_date"),
    ("sex", "text", "sex"),
    ("contact", "text", "contact::text"),
    ("registered_at", "timestamptz", "registered_at"),
    ("updated_at", "timestamptz", "updated_at"),
    ("demographics_version", "integer", "demographics_version"),
    ("merged_into", "uuid", "merged_into"),
    ("revision", "bigint", "revision"),
    ("position", "bigint", "position"),
    ("anomalies", "bigint", "anomalies"),
    ("generation", "integer", "generation"),
    ("entry_id", "uuid", "entry_id"),
    ("version", "integer", "version"),
    ("change", "text", "change"),
    ("amendment_id", "uuid", "amendment_id"),
    ("reason", "text", "reason"),
    ("content", "text", "content::text"),
    ("effective_at", "timestamptz", "effective_at"),
    ("author_id", "uuid", "author_id"),
    ("author_role", "text", "author_role"),
    ("recorded_at", "timestamptz", "recorded_at"),
    ("event_id", "uuid", "event_id"),
    ("consent_id", "uuid", "consent_id"),
    ("method", "text", "method"),
    ("supersedes", "uuid", "supersedes"),
    ("withdrawn", "text[]", "withdrawn"),
    ("granted", "text[]", "granted"),
    ("witness_id", "uuid", "witness_id"),
    ("recorded_by", "uuid", "recorded_by"),
    ("clinician_id", "uuid", "clinician_id"),
    ("care_role", "text", "care_role"),
    ("assigned_at", "timestamptz", "assigned_at"),
    ("assigned_by", "uuid", "assigned_by"),
    ("appointment_id", "uuid", "appointment_id"),
    ("visit_type", "text", "visit_type"),
    ("start_at", "timestamptz", "start_at"),
    ("end_at", "timestamptz", "end_at"),
    ("status", "text", "status"),
    ("backed", "boolean", crate::backed::CARE_BACKED),
];

/// The whole chart of patient `$1` in one statement (a single statement reads one
/// snapshot, so the tables agree without a transaction): a `UNION ALL` of the patient's
/// rows of each table, each branch filling the columns its table has (by name, so the
/// row decoders of [`records`] apply unchanged) and `NULL` in the others. The patient's
/// row comes first, then entry versions by entry and version, then consents by version.
fn chart_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        let tables: [(i16, &str, &[&str]); 5] = [
            (
                K_PATIENT,
                "patients",
                &[
                    "patient_id",
                    "registered",
                    "mrn",
                    "family",
                    "given",
                    "birth_date",
                    "sex",
                    "contact",
                    "registered_at",
                    "updated_at",
                    "demographics_version",
                    "merged_into",
                    "revision",
                    "position",
                    "anomalies",
                    "generation",
                ],
            ),
            (
                K_VERSION,
                "entry_versions",
                &[
                    "patient_id",
                    "entry_id",
                    "version",
                    "change",
                    "amendment_id",
                    "reason",
                    "content",
                    "effective_at",
                    "author_id",
                    "author_role",
                    "recorded_at",
                    "event_id",
                    "position",
                ],
            ),
            (
                K_CONSENT,
                "consents",
                &[
                    "patient_id",
                    "version",
                    "consent_id",
                    "change",
                    "method",
                    "supersedes",
                    "withdrawn",
                    "granted",
                    "witness_id",
                    "effective_at",
                    "recorded_at",
                    "recorded_by",
                    "position",
                ],
            ),
            (
                K_CARE,
                "care_team",
                &["patient_id", "clinician_id", "care_role", "assigned_at", "assigned_by", "backed"],
            ),
            (
                K_APPOINTMENT,
                "appointments",
                &[
                    "appointment_id",
                    "patient_id",
                    "clinician_id",
                    "visit_type",
                    "start_at",
                    "end_at",
                    "status",
                    "version",
                    "updated_at",
                ],
            ),
        ];
        let branches: Vec<String> = tables
            .iter()
            .map(|(k, table, has)| {
                let cols: Vec<String> = CHART_COLS
                    .iter()
                    .map(|(name, ty, expr)| {
                        if has.contains(name) {
                            format!("{expr} AS {name}")
                        } else {
                            format!("NULL::{ty} AS {name}")
                        }
                    })
                    .collect();
                format!(
                    "SELECT {k}::smallint AS k, {} FROM rm.{table} AS c WHERE patient_id = $1",
                    cols.join(", ")
                )
            })
            .collect();
        format!("{} ORDER BY k, entry_id, version", branches.join(" UNION ALL "))
    })
}

impl ReadModels {
    pub fn new(pool: PgPool) -> Self {
        Self::with_chart_cache(pool, DEFAULT_CAPACITY)
    }

    /// With a cache of about `capacity` bytes of current charts (see [`CurrentCharts`]; 0
    /// keeps none).
    pub fn with_chart_cache(pool: PgPool, capacity: u64) -> Self {
        let prober = Arc::new(Prober::new(pool.clone()));
        Self { pool, charts: Arc::new(CurrentCharts::new(capacity)), prober }
    }

    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The cache behind [`ReadModels::current_chart`].
    pub fn chart_cache(&self) -> &CurrentCharts {
        &self.charts
    }

    /// What answers [`ReadModels::current_chart`]'s probes.
    pub fn prober(&self) -> &Prober {
        &self.prober
    }

    /// A patient's current chart, as [`ReadModels::chart`] would load it: one primary-key
    /// probe of the patient row's position and generation (batched with the probes made
    /// at the same time, see [`crate::probe`]), and the cached chart when it was loaded
    /// from that generation at that position (see [`crate::current`]); else the full
    /// load, kept for the next read. Without a cache (capacity 0), the full load alone.
    pub async fn current_chart(&self, patient_id: Uuid) -> Result<Option<Arc<Chart>>, ProjectionError> {
        if !self.charts.keeps_any() {
            return Ok(self.chart(patient_id).await?.map(Arc::new));
        }
        let Some((position, generation)) = self.prober.probe(patient_id).await? else { return Ok(None) };
        if let Some(chart) = self.charts.at(patient_id, generation, upos(position)) {
            return Ok(Some(chart));
        }
        let Some((chart, loaded_from)) = self.load_chart(patient_id).await? else { return Ok(None) };
        let chart = Arc::new(chart);
        self.charts.keep(&chart, loaded_from);
        Ok(Some(chart))
    }

    /// A patient's whole chart (current versions and full history of every entry), in
    /// one statement: one round trip, and one snapshot of all the chart's tables without
    /// a transaction around it (see [`chart_sql`]).
    pub async fn chart(&self, patient_id: Uuid) -> Result<Option<Chart>, ProjectionError> {
        Ok(self.load_chart(patient_id).await?.map(|(chart, _)| chart))
    }

    /// The chart and the generation of the read models it was read from.
    async fn load_chart(&self, patient_id: Uuid) -> Result<Option<(Chart, i32)>, ProjectionError> {
        let rows = sqlx::query(chart_sql()).bind(patient_id).fetch_all(&self.pool).await?;
        let mut rows = rows.iter();
        // The patient's row sorts first; without it there is no chart.
        let Some(first) = rows.next().filter(|r| matches!(r.try_get::<i16, _>("k"), Ok(K_PATIENT))) else {
            return Ok(None);
        };
        let generation: i32 = first.try_get("generation")?;
        let mut chart = Chart::new(patient_id);
        records::patient_into(first, &mut chart)?;
        for row in rows {
            match row.try_get::<i16, _>("k")? {
                K_VERSION => records::push_entry_version(&mut chart, row)?,
                K_CONSENT => chart.consent.versions.push(records::consent_from(row)?),
                K_CARE => {
                    let m = records::care_from(row)?;
                    // A member no ledger event accounts for is not on the care team.
                    if row.try_get::<Option<bool>, _>("backed")? == Some(true) {
                        chart.care_team.insert(m.clinician_id, m);
                    } else {
                        crate::backed::unbacked("care_team", Some(patient_id), m.clinician_id);
                    }
                }
                K_APPOINTMENT => {
                    let a = records::appointment_from(row)?;
                    chart.appointments.insert(a.appointment_id, a);
                }
                _ => return Err(ProjectionError::Corrupt { what: "chart row" }),
            }
        }
        Ok(Some((chart, generation)))
    }

    pub async fn search_patients(
        &self,
        q: &PatientSearch,
        limit: u32,
    ) -> Result<Vec<PatientSummary>, ProjectionError> {
        let prefix = q.family_prefix.as_ref().map(|p| store::like_prefix(&p.to_lowercase()));
        let rows = sqlx::query(
            "SELECT patient_id, mrn, family, given, birth_date, sex, merged_into FROM rm.patients \
             WHERE registered AND ($1::text IS NULL OR lower(family) LIKE $1) AND ($2::date IS NULL OR birth_date = $2) \
             AND ($3::text IS NULL OR mrn = $3) ORDER BY lower(family), patient_id LIMIT $4",
        )
        .bind(prefix)
        .bind(q.birth_date)
        .bind(&q.mrn)
        .bind(i64::from(limit.clamp(1, MAX_LIMIT)))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let corrupt = |what| ProjectionError::Corrupt { what };
                Ok(PatientSummary {
                    patient_id: r.try_get("patient_id")?,
                    mrn: r.try_get::<Option<String>, _>("mrn")?.ok_or(corrupt("mrn"))?,
                    family: r.try_get::<Option<String>, _>("family")?.ok_or(corrupt("family"))?,
                    given: r.try_get::<Option<Vec<String>>, _>("given")?.unwrap_or_default(),
                    birth_date: r
                        .try_get::<Option<time::Date>, _>("birth_date")?
                        .ok_or(corrupt("birth_date"))?,
                    sex: r.try_get::<Option<String>, _>("sex")?.unwrap_or_default(),
                    merged_into: r.try_get("merged_into")?,
                })
            })
            .collect()
    }

    /// Every version of one of a patient's entries, oldest first. `entry_id` names the
    /// entry or one of its amendments: an entry with that id first, else the entry that
    /// has an amendment with that id (as the command side and
    /// [`pit::entry_history_as_of`](crate::pit::entry_history_as_of) resolve it).
    pub async fn entry_history(
        &self,
        patient_id: Uuid,
        entry_id: Uuid,
    ) -> Result<Option<Vec<EntryVersion>>, ProjectionError> {
        let rows = sqlx::query(
            "SELECT patient_id, entry_id, version, change, amendment_id, reason, content::text AS content, effective_at, \
             author_id, author_role, recorded_at, event_id, position FROM rm.entry_versions \
             WHERE patient_id = $1 AND entry_id = coalesce(\
               (SELECT entry_id FROM rm.entries WHERE patient_id = $1 AND entry_id = $2), \
               (SELECT entry_id FROM rm.entry_versions WHERE patient_id = $1 AND amendment_id = $2 \
                ORDER BY position LIMIT 1), $2) \
             ORDER BY version",
        )
        .bind(patient_id)
        .bind(entry_id)
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() {
            return Ok(None);
        }
        rows.iter().map(records::entry_version_from).collect::<Result<Vec<_>, _>>().map(Some)
    }

    /// Consent versions of a patient, oldest first (the last is in force), each checked
    /// against the ledger event it names (`projection.unbacked` when one is not accounted
    /// for: the consent decision rests on it; see [`crate::backed`]).
    pub async fn consent_history(&self, patient_id: Uuid) -> Result<Vec<ConsentVersion>, ProjectionError> {
        crate::backed::consent_history(&self.pool, patient_id).await
    }

    /// The patient's care team: the members a ledger event accounts for (see
    /// [`crate::backed`]).
    pub async fn care_team(&self, patient_id: Uuid) -> Result<Vec<CareTeamMember>, ProjectionError> {
        let sql = format!(
            "SELECT patient_id, clinician_id, care_role, assigned_at, assigned_by, {} AS backed \
             FROM rm.care_team AS c WHERE patient_id = $1 ORDER BY assigned_at, clinician_id",
            crate::backed::CARE_BACKED
        );
        let rows = sqlx::query(&sql).bind(patient_id).fetch_all(&self.pool).await?;
        let mut members = Vec::with_capacity(rows.len());
        for row in &rows {
            let m = records::care_from(row)?;
            if row.try_get("backed")? {
                members.push(m);
            } else {
                crate::backed::unbacked("care_team", Some(patient_id), m.clinician_id);
            }
        }
        Ok(members)
    }

    /// Is `clinician_id` on the patient's care team (the basis of "their own patients")?
    /// Only a membership a ledger event accounts for counts (see [`crate::backed`]).
    pub async fn is_on_care_team(
        &self,
        patient_id: Uuid,
        clinician_id: Uuid,
    ) -> Result<bool, ProjectionError> {
        let sql = format!(
            "SELECT {} FROM rm.care_team AS c WHERE patient_id = $1 AND clinician_id = $2",
            crate::backed::CARE_BACKED
        );
        let backed: Option<bool> =
            sqlx::query_scalar(&sql).bind(patient_id).bind(clinician_id).fetch_optional(&self.pool).await?;
        if backed == Some(false) {
            crate::backed::unbacked("care_team", Some(patient_id), clinician_id);
        }
        Ok(backed == Some(true))
    }

    /// The patients whose care team includes `clinician_id` (memberships a ledger event
    /// accounts for).
    pub async fn patients_of(&self, clinician_id: Uuid) -> Result<Vec<Uuid>, ProjectionError> {
        let sql = format!(
            "SELECT patient_id FROM rm.care_team AS c WHERE clinician_id = $1 AND {} ORDER BY patient_id",
            crate::backed::CARE_BACKED
        );
        Ok(sqlx::query_scalar(&sql).bind(clinician_id).fetch_all(&self.pool).await?)
    }

    pub async fn appointments_of_patient(
        &self,
        patient_id: Uuid,
    ) -> Result<Vec<Appointment>, ProjectionError> {
        let rows = sqlx::query(
            "SELECT appointment_id, patient_id, clinician_id, visit_type, start_at, end_at, status, version, updated_at \
             FROM rm.appointments WHERE patient_id = $1 ORDER BY start_at",
        )
        .bind(patient_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(records::appointment_from).collect()
    }

    /// A clinician's schedule in `[from, to)`, with each appointment's patient.
    pub async fn schedule(
        &self,
        clinician_id: Uuid,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<(Uuid, Appointment)>, ProjectionError> {
        let rows = sqlx::query(
            "SELECT appointment_id, patient_id, clinician_id, visit_type, start_at, end_at, status, version, updated_at \
             FROM rm.appointments WHERE clinician_id = $1 AND start_at >= $2 AND start_at < $3 ORDER BY start_at",
        )
        .bind(clinician_id)
        .bind(from.to_datetime())
        .bind(to.to_datetime())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok((r.try_get("patient_id")?, records::appointment_from(r)?))).collect()
    }

    /// The access log, newest first (by recorded time, which never decreases along
    /// `$all`, then by position), at most `limit` (1 to 1000) rows. `from` is inclusive,
    /// `to` exclusive. To page, pass the last row's position as the next query's
    /// `before_position`.
    pub async fn access_log(&self, q: &AccessQuery) -> Result<Vec<AccessLogEntry>, ProjectionError> {
        let rows = sqlx::query(
            "SELECT position, event_id, patient_id, user_id, role, accessed_at, resources, action, purpose, break_glass_reason, \
             client_addr, user_agent, session_id, case_ref FROM rm.access_log \
             WHERE ($1::uuid IS NULL OR patient_id = $1) AND ($2::uuid IS NULL OR user_id = $2) \
             AND ($3::timestamptz IS NULL OR accessed_at >= $3) AND ($4::timestamptz IS NULL OR accessed_at < $4) \
             AND ($6::bigint IS NULL OR position < $6) \
             ORDER BY accessed_at DESC, position DESC LIMIT $5",
        )
        .bind(q.patient_id)
        .bind(q.user_id)
        .bind(q.from.map(Timestamp::to_datetime))
        .bind(q.to.map(Timestamp::to_datetime))
        .bind(i64::from(q.limit.clamp(1, MAX_LIMIT)))
        .bind(q.before_position.map(pos))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AccessLogEntry {
                    position: upos(r.try_get("position")?),
                    event_id: r.try_get("event_id")?,
                    patient_id: r.try_get("patient_id")?,
                    user_id: r.try_get("user_id")?,
                    role: r.try_get("role")?,
                    accessed_at: Timestamp::from_datetime(r.try_get("accessed_at")?),
                    resources: parse_all(&r.try_get::<Vec<String>, _>("resources")?, "resource")?,
                    action: parse(&r.try_get::<String, _>("action")?, "action")?,
                    purpose: parse(&r.try_get::<String, _>("purpose")?, "purpose")?,
                    break_glass_reason: r.try_get("break_glass_reason")?,
                    client_addr: r.try_get("client_addr")?,
                    user_agent: r.try_get("user_agent")?,
                    session_id: r.try_get("session_id")?,
                    case_ref: r.try_get("case_ref")?,
                })
            })
            .collect()
    }

    /// Display names of users, in one query (for per-request batching).
    pub async fn display_names(
        &self,
        user_ids: &[Uuid],
    ) -> Result<std::collections::HashMap<Uuid, String>, ProjectionError> {
        let rows = sqlx::query("SELECT user_id, display_name FROM rm.users WHERE user_id = ANY($1)")
            .bind(user_ids)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok((r.try_get("user_id")?, r.try_get("display_name")?))).collect()
    }

    /// A user of the staff directory, checked against the fold of the user's `$staff`
    /// events in the ledger (`projection.unbacked` when they differ: logins rest on the
    /// roles and the active flag; see [`crate::backed`]).
    pub async fn user(&self, user_id: Uuid) -> Result<Option<UserRow>, ProjectionError> {
        let row = sqlx::query(
            "SELECT user_id, username, display_name, roles, patient_id, active, position FROM rm.users WHERE user_id = $1",
        )
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        let user = UserRow {
            user_id: r.try_get("user_id")?,
            username: r.try_get("username")?,
            display_name: r.try_get("display_name")?,
            roles: parse_all(&r.try_get::<Vec<String>, _>("roles")?, "role")?,
            patient_id: r.try_get("patient_id")?,
            active: r.try_get("active")?,
        };
        crate::backed::check_user(&self.pool, &user, upos(r.try_get("position")?)).await?;
        Ok(Some(user))
    }
}
