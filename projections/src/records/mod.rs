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
use domain::events::DomainEvent;
use domain::Recorded;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::ProjectionError;

mod load;
mod table;
mod tables;
mod write;

pub use load::load_chart;
pub(crate) use load::{
    appointment_from, care_from, consent_from, entry_version_from, patient_into, push_entry_version,
};
pub(crate) use table::Table;
pub(crate) use tables::{ACCESS_LOG, APPOINTMENTS, CARE_TEAM, CONSENTS, ENTRIES, ENTRY_VERSIONS, PATIENTS};
pub(crate) use write::Prepared;

use load::load_missing;

/// The SQL that creates one generation's tables.
pub const TABLES_SQL: &str = include_str!("../../sql/records.sql");
/// The SQL that creates a generation's secondary indexes (idempotent).
pub const INDEXES_SQL: &str = include_str!("../../sql/records_indexes.sql");
/// Idempotent additions since generations were first made (run after `TABLES_SQL`, and
/// on existing generations at start).
pub const UPGRADE_SQL: &str = include_str!("../../sql/records_upgrade.sql");
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
    let mut prepared = Prepared::new(cache.content_jsonb, batch.staff);
    if let Some(first_position) = batch.first_position {
        prepared.charts(cache, &batch.touched_patients, &batch.touched, first_position)?;
    }
    for r in &batch.access {
        prepared.access(r)?;
    }
    Ok(prepared)
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
