//! The read-model check: fold the ledger again and compare the result with every table
//! of the active generation, naming the first difference.
//!
//! The read models are derived data: the runner is their only legitimate writer, and
//! every row must be what folding `$all` produces. A row written by hand (a care-team
//! member nobody assigned, an edited entry version, a deleted access-log row) breaks that,
//! and `ledger verify` cannot see it: the ledger itself is intact. [`verify_read_models`]
//! checks it.
//!
//! **How.** In one `REPEATABLE READ` transaction on one connection:
//! 1. read the active generation and its position `P` (the snapshot is taken here, so
//!    every table of the generation is read as it stood at `P`, while the live runner
//!    goes on writing in other transactions), and lock its tables against a drop (a
//!    blue/green switch in the meantime cannot remove them);
//! 2. create the generation's tables again as temporary tables (`pg_temp`, no WAL, gone
//!    with the transaction) and fill them by folding the ledger's positions `0..P` with
//!    the runner's own code (`records::apply_batch`, the same fold and the same row
//!    encodings as a rebuild). The ledger is read on other connections: it is append-only
//!    and gapless, so positions below `P` read the same at any time;
//! 3. compare each table with its rebuilt twin by a `FULL JOIN` on the primary key, with
//!    `IS DISTINCT FROM` on every other column (entry content as `jsonb`: `json` has no
//!    equality, and generations made before it became `json` store `jsonb`), ordered by
//!    key, first row only: a row only in the read model is *not accounted for* by the
//!    ledger, a row only in the fold is *missing*, a row in both names its first column
//!    that differs. Only keys (ids, versions, positions) and column names are read back,
//!    never values: they are PHI.
//! 4. roll back (the temporary tables go with it).
//!
//! **Behind the head.** The generation is compared as of its own position: events the
//! runner has not applied yet are not expected in it (a lagging projection is not a
//! difference). A generation whose position is beyond the ledger's head, or whose count
//! of skipped events differs from the fold's, is reported on `projection_generations`.
//!
//! **Not covered.** `chart_snapshots` (derived caches bound to the ledger by an event
//! hash and checked on every use, see `pit::check_snapshots`); the ledger itself (run
//! `ledger verify`: this check trusts what the ledger rows decode to); the `auth_*`
//! tables (server state, not derived from the ledger). The check costs a rebuild's fold
//! plus one join per table, and holds one snapshot open for that long.

use std::fmt;
use std::sync::LazyLock;

use sqlx::{Connection, PgPool, Row};
use store::AllFilter;

use crate::error::ProjectionError;
use crate::records::{self, ChartCache};
use crate::runner::{decode_all, schema_of, PROJECTION};
use crate::sqlmap::upos;

/// A read-model table: its primary key and the columns compared.
struct Table {
    name: &'static str,
    key: &'static [&'static str],
    columns: Vec<&'static str>,
}

impl Table {
    /// A table the chart fold writes, as its descriptor has it: every column not in the
    /// key, in the table's order.
    fn of<K, T>(t: &'static records::Table<K, T>) -> Self {
        Self { name: t.name, key: t.key, columns: t.non_key().collect() }
    }
}

/// Every table of a generation that the fold produces, in the order they are checked.
static TABLES: LazyLock<[Table; 9]> = LazyLock::new(|| {
    [
        Table::of(&records::PATIENTS),
        Table::of(&records::ENTRIES),
        Table::of(&records::ENTRY_VERSIONS),
        Table::of(&records::CONSENTS),
        Table::of(&records::CARE_TEAM),
        Table::of(&records::APPOINTMENTS),
        Table::of(&records::ACCESS_LOG),
        // The staff tables, written statement by statement (`crate::staff`).
        Table {
            name: "users",
            key: &["user_id"],
            columns: vec![
                "username",
                "display_name",
                "roles",
                "patient_id",
                "active",
                "updated_at",
                "position",
            ],
        },
        Table {
            name: "role_grants",
            key: &["grant_id"],
            columns: vec![
                "user_id",
                "role",
                "status",
                "proposed_by",
                "proposed_at",
                "decided_by",
                "decided_at",
                "position",
            ],
        },
    ]
});

/// The tables [`verify_read_models`] compares.
pub fn checked_tables() -> impl Iterator<Item = &'static str> {
    TABLES.iter().map(|t| t.name)
}

/// What is wrong with a row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mismatch {
    /// The read model has the row; folding the ledger does not produce it.
    Unaccounted,
    /// Folding the ledger produces the row; the read model lacks it.
    Missing,
    /// Both have the row; this column differs (the first in the table's order).
    Column(&'static str),
}

/// The first difference between the read models and the fold of the ledger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Difference {
    /// The table (`care_team`, ..., or `projection_generations` for the generation's own
    /// bookkeeping).
    pub table: &'static str,
    /// The row's primary key, column by column: ids, versions and positions, never
    /// record content.
    pub key: Vec<(&'static str, String)>,
    pub mismatch: Mismatch,
}

impl Difference {
    /// A stable code for the kind of difference.
    pub fn code(&self) -> &'static str {
        match self.mismatch {
            Mismatch::Unaccounted => "projection.row_unaccounted",
            Mismatch::Missing => "projection.row_missing",
            Mismatch::Column(_) => "projection.column_differs",
        }
    }
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key: Vec<String> = self.key.iter().map(|(k, v)| format!("{k}={v}")).collect();
        write!(f, "table {}, row ({}): ", self.table, key.join(", "))?;
        match self.mismatch {
            Mismatch::Unaccounted => write!(f, "not accounted for by the ledger (no event produces it)"),
            Mismatch::Missing => write!(f, "missing (the ledger produces it)"),
            Mismatch::Column(c) => write!(f, "column {c} differs from the ledger's fold"),
        }
    }
}

/// What the check compared, and the first difference if any.
#[derive(Clone, Debug)]
pub struct VerifyReport {
    /// The active generation.
    pub generation: i32,
    /// Its position: the `$all` positions below it were folded and compared.
    pub position: u64,
    /// The ledger's head (its event count) when the check began.
    pub head: u64,
    /// Events the fold skipped (erased or undecodable payloads), as the runner does.
    pub skipped: u64,
    /// Rows of each compared table in the active generation.
    pub rows: Vec<(&'static str, u64)>,
    pub first_difference: Option<Difference>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.first_difference.is_none()
    }
}

/// Tuning of [`verify_read_models_with`].
#[derive(Clone, Debug)]
pub struct VerifyOptions {
    /// Events read from the ledger per page.
    pub page_events: usize,
    /// Charts kept in memory while folding before the fold reloads from its own tables.
    pub cache_charts: usize,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self { page_events: 10_000, cache_charts: 100_000 }
    }
}

/// Fold the ledger and compare every table of the active generation with the result,
/// as of the generation's position (see the module documentation).
pub async fn verify_read_models(pool: &PgPool) -> Result<VerifyReport, ProjectionError> {
    verify_read_models_with(pool, &VerifyOptions::default()).await
}

/// [`verify_read_models`] with explicit options.
pub async fn verify_read_models_with(
    pool: &PgPool,
    opts: &VerifyOptions,
) -> Result<VerifyReport, ProjectionError> {
    let mut conn = pool.acquire().await?;
    let mut tx = Connection::begin(&mut *conn).await?;
    // The first statement of the transaction: the snapshot is taken by the next one.
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ").execute(&mut *tx).await?;
    let row = sqlx::query(
        "SELECT generation, schema_name, position, skipped, \
         (SELECT COALESCE(max(position) + 1, 0) FROM ledger_events) AS head \
         FROM projection_generations WHERE projection = $1 AND status = 'active'",
    )
    .bind(PROJECTION)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(ProjectionError::Corrupt { what: "no active generation" })?;
    let generation: i32 = row.try_get("generation")?;
    let schema = schema_of(generation);
    // The name goes into SQL: it must be the one the runner gives the generation.
    if row.try_get::<String, _>("schema_name")? != schema {
        return Err(ProjectionError::Corrupt { what: "generation schema name" });
    }
    let position = upos(row.try_get("position")?);
    let stored_skipped = upos(row.try_get("skipped")?);
    let head = upos(row.try_get("head")?);
    let mut report =
        VerifyReport { generation, position, head, skipped: 0, rows: Vec::new(), first_difference: None };
    let generation_row = |column| Difference {
        table: "projection_generations",
        key: vec![("generation", generation.to_string())],
        mismatch: Mismatch::Column(column),
    };
    if position > head {
        report.first_difference = Some(generation_row("position"));
        return Ok(report);
    }
    let names: Vec<String> = TABLES.iter().map(|t| format!("{schema}.{}", t.name)).collect();
    sqlx::query(&format!("LOCK TABLE {} IN ACCESS SHARE MODE", names.join(", "))).execute(&mut *tx).await?;
    // The tables as a new generation has them: records.sql, then its additions.
    let scratch = format!("{}\n{}", records::TABLES_SQL, records::UPGRADE_SQL)
        .replace("CREATE SCHEMA __SCHEMA__;", "")
        .replace("__SCHEMA__", "pg_temp");
    sqlx::raw_sql(&scratch).execute(&mut *tx).await?;

    report.skipped = fold(pool, &mut tx, position, opts).await?;
    for t in TABLES.iter() {
        sqlx::query(&format!("ANALYZE pg_temp.{}", t.name)).execute(&mut *tx).await?;
    }
    for t in TABLES.iter() {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {schema}.{}", t.name))
            .fetch_one(&mut *tx)
            .await?;
        report.rows.push((t.name, upos(n)));
    }
    for t in TABLES.iter() {
        if let Some(d) = first_difference(&mut tx, &schema, t).await? {
            report.first_difference = Some(d);
            break;
        }
    }
    if report.first_difference.is_none() && report.skipped != stored_skipped {
        report.first_difference = Some(generation_row("skipped"));
    }
    tx.rollback().await?;
    Ok(report)
}

/// Fold `$all` from 0 to `position` into the `pg_temp` tables of `tx`, reading the next
/// page while this one is applied. Returns how many events were skipped.
async fn fold(
    pool: &PgPool,
    tx: &mut sqlx::PgConnection,
    position: u64,
    opts: &VerifyOptions,
) -> Result<u64, ProjectionError> {
    let page = opts.page_events.max(1) as u64;
    let read = |from: u64| {
        let pool = pool.clone();
        let want = usize::try_from(page.min(position - from)).unwrap_or(usize::MAX);
        tokio::spawn(async move {
            let raw = store::read_all(&pool, from, want, &AllFilter::default()).await?;
            if raw.len() != want {
                return Err(ProjectionError::Corrupt {
                    what: "the ledger ends before the generation's position",
                });
            }
            decode_all(from, &raw)
        })
    };
    let mut cache = ChartCache::fresh();
    let mut skipped = 0u64;
    let mut from = 0u64;
    let mut next = (from < position).then(|| read(from));
    while let Some(reading) = next.take() {
        let decoded = reading.await.map_err(|_| ProjectionError::Stopped)??;
        if let Some(newer) = decoded.newer {
            return Err(ProjectionError::NewerEvent { position: newer });
        }
        let after = from + decoded.count as u64;
        if after < position {
            next = Some(read(after));
        }
        records::apply_batch(tx, "pg_temp", &mut cache, &decoded.events).await?;
        if cache.len() > opts.cache_charts {
            cache.clear();
        }
        skipped += decoded.skipped;
        from = after;
    }
    Ok(skipped)
}

/// How a column is compared: entry content as `jsonb` on both sides.
fn expr(side: &str, column: &str) -> String {
    if column == "content" {
        format!("{side}.content::jsonb")
    } else {
        format!("{side}.{column}")
    }
}

/// The statement that finds a table's first difference (by key) with its rebuilt twin.
fn compare_sql(schema: &str, t: &Table) -> String {
    let k0 = t.key[0];
    let on: Vec<String> = t.key.iter().map(|k| format!("a.{k} = b.{k}")).collect();
    let keys: Vec<String> = t.key.iter().map(|k| format!("coalesce(a.{k}, b.{k})::text AS k_{k}")).collect();
    let order: Vec<String> = t.key.iter().map(|k| format!("coalesce(a.{k}, b.{k})")).collect();
    let differs: Vec<String> =
        t.columns.iter().map(|c| format!("{} IS DISTINCT FROM {}", expr("a", c), expr("b", c))).collect();
    let flags: Vec<String> = differs.iter().enumerate().map(|(i, d)| format!("({d}) AS d{i}")).collect();
    format!(
        "SELECT {}, a.{k0} IS NULL AS missing, b.{k0} IS NULL AS unaccounted, {} \
         FROM {schema}.{name} a FULL JOIN pg_temp.{name} b ON {} \
         WHERE a.{k0} IS NULL OR b.{k0} IS NULL OR {} ORDER BY {} LIMIT 1",
        keys.join(", "),
        flags.join(", "),
        on.join(" AND "),
        differs.join(" OR "),
        order.join(", "),
        name = t.name,
    )
}

async fn first_difference(
    tx: &mut sqlx::PgConnection,
    schema: &str,
    t: &'static Table,
) -> Result<Option<Difference>, ProjectionError> {
    let Some(row) = sqlx::query(&compare_sql(schema, t)).fetch_optional(&mut *tx).await? else {
        return Ok(None);
    };
    let key = t
        .key
        .iter()
        .map(|k| Ok((*k, row.try_get::<String, _>(format!("k_{k}").as_str())?)))
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    let mismatch = if row.try_get("missing")? {
        Mismatch::Missing
    } else if row.try_get("unaccounted")? {
        Mismatch::Unaccounted
    } else {
        let mut column = None;
        for (i, c) in t.columns.iter().enumerate() {
            if row.try_get::<bool, _>(format!("d{i}").as_str())? {
                column = Some(*c);
                break;
            }
        }
        Mismatch::Column(column.ok_or(ProjectionError::Corrupt { what: "difference without a column" })?)
    };
    Ok(Some(Difference { table: t.name, key, mismatch }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_of_a_generation_but_the_snapshots_is_compared() {
        let mut checked: Vec<&str> = checked_tables().collect();
        checked.push("chart_snapshots");
        checked.sort_unstable();
        let mut all = records::TABLES.to_vec();
        all.sort_unstable();
        assert_eq!(checked, all);
    }

    #[test]
    fn every_column_of_a_table_is_compared_or_a_key() {
        // Columns as records.sql declares them (lines indented by four spaces inside a
        // CREATE TABLE).
        let mut table = None;
        for line in records::TABLES_SQL.lines() {
            if let Some(rest) = line.strip_prefix("CREATE TABLE __SCHEMA__.") {
                table = TABLES.iter().find(|t| rest.starts_with(&format!("{} ", t.name)));
                continue;
            }
            let Some(t) = table else { continue };
            let Some(col) = line.strip_prefix("    ").and_then(|l| l.split_whitespace().next()) else {
                continue;
            };
            if col == "PRIMARY" || col.starts_with(')') {
                continue;
            }
            assert!(
                t.key.contains(&col) || t.columns.contains(&col),
                "{}.{col} is neither a key nor compared",
                t.name
            );
        }
    }

    #[test]
    fn the_comparison_names_keys_and_flags_only() {
        let sql = compare_sql("rm_records_g1", &TABLES[4]);
        assert!(sql.contains("coalesce(a.patient_id, b.patient_id)::text AS k_patient_id"));
        assert!(sql.contains("(a.care_role IS DISTINCT FROM b.care_role) AS d0"));
        assert!(!sql.contains("SELECT a.*"));
        assert!(compare_sql("s", &TABLES[2]).contains("a.content::jsonb IS DISTINCT FROM b.content::jsonb"));
    }
}
