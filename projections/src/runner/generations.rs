//! A projection's generations: each a schema of its own holding the tables, listed in
//! `projection_generations` with its status (`building`, `active`, `retired`) and
//! position; the `rm.*` views point at the active one.
//!
//! **Indexes after the data.** A generation's tables are created with their primary keys
//! only; the runner creates the secondary indexes when its catch-up by pages ends (so a
//! rebuild builds each B-tree once over the filled table), and a building generation
//! switches only after that.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use sqlx::{PgPool, Row};
use tokio::task::JoinHandle;

use super::{schema_of, Generation, Inner, PROJECTION};
use crate::error::ProjectionError;
use crate::records;
use crate::sqlmap::upos;

/// Create the active generation if there is none (else bring its tables
/// (`records_upgrade.sql`) and `rm.*` views up to date); return every generation.
pub(super) async fn ensure_active(pool: &PgPool) -> Result<Vec<Generation>, ProjectionError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('chartledger.projections'))")
        .execute(&mut *tx)
        .await?;
    let found = sqlx::query(
        "SELECT generation FROM projection_generations WHERE projection = $1 AND status = 'active'",
    )
    .bind(PROJECTION)
    .fetch_optional(&mut *tx)
    .await?;
    match found {
        None => {
            let g = next_generation(&mut tx).await?;
            create_tables(&mut tx, g, "active").await?;
            point_views(&mut tx, g).await?;
        }
        Some(row) => {
            // Views made before `rm.patients` named its generation get the column (at the
            // end, which `CREATE OR REPLACE VIEW` allows).
            let g: i32 = row.try_get("generation")?;
            upgrade(&mut tx, g).await?;
            let named: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM information_schema.columns \
                 WHERE table_schema = 'rm' AND table_name = 'patients' AND column_name = 'generation')",
            )
            .fetch_one(&mut *tx)
            .await?;
            if !named {
                sqlx::query(&patients_view(g)).execute(&mut *tx).await?;
            }
        }
    }
    tx.commit().await?;
    generations(pool).await
}

pub(super) async fn create_generation(pool: &PgPool, status: &str) -> Result<Generation, ProjectionError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('chartledger.projections'))")
        .execute(&mut *tx)
        .await?;
    let g = next_generation(&mut tx).await?;
    create_tables(&mut tx, g, status).await?;
    tx.commit().await?;
    Ok(Generation { generation: g, schema: schema_of(g), status: status.to_owned(), position: 0, skipped: 0 })
}

async fn next_generation(tx: &mut sqlx::PgConnection) -> Result<i32, ProjectionError> {
    let max: Option<i32> =
        sqlx::query_scalar("SELECT max(generation) FROM projection_generations WHERE projection = $1")
            .bind(PROJECTION)
            .fetch_one(&mut *tx)
            .await?;
    Ok(max.unwrap_or(0) + 1)
}

async fn create_tables(
    tx: &mut sqlx::PgConnection,
    generation: i32,
    status: &str,
) -> Result<(), ProjectionError> {
    let schema = schema_of(generation);
    sqlx::raw_sql(&records::TABLES_SQL.replace("__SCHEMA__", &schema)).execute(&mut *tx).await?;
    sqlx::raw_sql(&records::UPGRADE_SQL.replace("__SCHEMA__", &schema)).execute(&mut *tx).await?;
    sqlx::query(
        "INSERT INTO projection_generations (projection, generation, schema_name, status, activated_at) \
         VALUES ($1, $2, $3, $4, CASE WHEN $4 = 'active' THEN now() END)",
    )
    .bind(PROJECTION)
    .bind(generation)
    .bind(&schema)
    .bind(status)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Bring the tables of the active generation `g` and of a building one up to the
/// current layout (`records_upgrade.sql`: additions no earlier event needs), and point
/// the `rm.*` views at `g` again when one lacks a table or column (a view's `*` is
/// expanded when it is made). Inside the caller's transaction.
async fn upgrade(tx: &mut sqlx::PgConnection, g: i32) -> Result<(), ProjectionError> {
    let live: Vec<i32> = sqlx::query_scalar(
        "SELECT generation FROM projection_generations WHERE projection = $1 AND status IN ('active', 'building')",
    )
    .bind(PROJECTION)
    .fetch_all(&mut *tx)
    .await?;
    for generation in live {
        let schema = schema_of(generation);
        // Look first: `ALTER TABLE` locks the table even when it has nothing to do.
        let done: bool = sqlx::query_scalar(
            "SELECT to_regclass($1 || '.role_grants') IS NOT NULL AND EXISTS (SELECT 1 FROM information_schema.columns \
             WHERE table_schema = $1 AND table_name = 'access_log' AND column_name = 'case_ref')",
        )
        .bind(&schema)
        .fetch_one(&mut *tx)
        .await?;
        if !done {
            sqlx::raw_sql(&records::UPGRADE_SQL.replace("__SCHEMA__", &schema)).execute(&mut *tx).await?;
        }
    }
    let current: bool = sqlx::query_scalar(
        "SELECT to_regclass('rm.role_grants') IS NOT NULL AND EXISTS (SELECT 1 FROM information_schema.columns \
         WHERE table_schema = 'rm' AND table_name = 'access_log' AND column_name = 'case_ref')",
    )
    .fetch_one(&mut *tx)
    .await?;
    if !current {
        point_views(tx, g).await?;
    }
    Ok(())
}

/// `rm.patients` over generation `g`, naming the generation in every row: a reader that
/// keeps charts between reads (`crate::current`) tells generations apart by it, in the
/// same statement that reads the row.
fn patients_view(g: i32) -> String {
    format!(
        "CREATE OR REPLACE VIEW rm.patients AS SELECT *, {g}::integer AS generation FROM {}.patients",
        schema_of(g)
    )
}

/// Point the `rm.*` views at generation `g` (inside the caller's transaction).
async fn point_views(tx: &mut sqlx::PgConnection, g: i32) -> Result<(), ProjectionError> {
    let schema = schema_of(g);
    for t in records::TABLES {
        sqlx::query(&format!("DROP VIEW IF EXISTS rm.{t}")).execute(&mut *tx).await?;
        let create = if *t == "patients" {
            patients_view(g)
        } else {
            format!("CREATE VIEW rm.{t} AS SELECT * FROM {schema}.{t}")
        };
        sqlx::query(&create).execute(&mut *tx).await?;
        // Read by the server's requests (chartledger_app) and reporting (readonly).
        sqlx::query(&format!("GRANT SELECT ON rm.{t} TO chartledger_app, chartledger_readonly"))
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

pub(super) async fn generations(pool: &PgPool) -> Result<Vec<Generation>, ProjectionError> {
    let rows = sqlx::query(
        "SELECT generation, schema_name, status, position, skipped FROM projection_generations \
         WHERE projection = $1 ORDER BY generation",
    )
    .bind(PROJECTION)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Generation {
                generation: r.try_get("generation")?,
                schema: r.try_get("schema_name")?,
                status: r.try_get("status")?,
                position: upos(r.try_get("position")?),
                skipped: upos(r.try_get("skipped")?),
            })
        })
        .collect()
}

/// Create the generation's secondary indexes if they are missing: once the catch-up by
/// pages has filled the tables (one B-tree build instead of row-by-row maintenance), and
/// after every restart (cheap when they exist). Before a building generation can switch.
/// Two at a time, on two connections (index builds on one table share its lock).
pub(super) async fn create_indexes(pool: &PgPool, schema: &str) -> Result<(), ProjectionError> {
    let sql = records::INDEXES_SQL.replace("__SCHEMA__", schema);
    let all = records::statements(&sql);
    let half = |odd: usize| {
        let mine: Vec<&str> = all.iter().skip(odd).step_by(2).copied().collect();
        async move {
            for statement in mine {
                sqlx::raw_sql(statement).execute(pool).await?;
            }
            Ok::<_, sqlx::Error>(())
        }
    };
    tokio::try_join!(half(0), half(1))?;
    Ok(())
}

pub(super) async fn stored_position(pool: &PgPool, generation: i32) -> Result<u64, ProjectionError> {
    let p: i64 = sqlx::query_scalar(
        "SELECT position FROM projection_generations WHERE projection = $1 AND generation = $2",
    )
    .bind(PROJECTION)
    .bind(generation)
    .fetch_one(pool)
    .await?;
    Ok(upos(p))
}

/// Make `generation` (building) the active one if it has caught up with the active
/// generation. Returns whether it switched.
pub(super) async fn try_switch(inner: &Arc<Inner>, generation: i32) -> Result<bool, ProjectionError> {
    let mut tx = inner.pool.begin().await?;
    let rows = sqlx::query(
        "SELECT generation, status, position, skipped FROM projection_generations \
         WHERE projection = $1 AND status IN ('active', 'building') ORDER BY generation FOR UPDATE",
    )
    .bind(PROJECTION)
    .fetch_all(&mut *tx)
    .await?;
    let mut mine = None;
    let mut active = None;
    for r in &rows {
        let g: i32 = r.try_get("generation")?;
        let status: String = r.try_get("status")?;
        let p = upos(r.try_get("position")?);
        let skipped = upos(r.try_get("skipped")?);
        if g == generation {
            mine = Some((status, p, skipped));
        } else if status == "active" {
            active = Some((g, p));
        }
    }
    let Some((status, my_position, my_skipped)) = mine else { return Ok(false) };
    if status != "building" {
        return Ok(status == "active");
    }
    if let Some((_, active_position)) = active {
        if my_position < active_position {
            return Ok(false);
        }
    }
    sqlx::query("UPDATE projection_generations SET status = 'retired', updated_at = now() WHERE projection = $1 AND status = 'active'")
        .bind(PROJECTION)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "UPDATE projection_generations SET status = 'active', activated_at = now(), updated_at = now() \
         WHERE projection = $1 AND generation = $2",
    )
    .bind(PROJECTION)
    .bind(generation)
    .execute(&mut *tx)
    .await?;
    point_views(&mut tx, generation).await?;
    tx.commit().await?;
    inner.active_generation.store(generation, Ordering::Release);
    inner.skipped.store(my_skipped, Ordering::Relaxed);
    // Always notify (even when the position did not move): `rebuild` waits for the switch.
    inner.active_position.send_modify(|p| *p = (*p).max(my_position));
    tracing::info!(generation, position = my_position, "projection generation switched to active");
    if let Some((old, _)) = active {
        let inner = inner.clone();
        tokio::spawn(async move { drop_retired(&inner, old).await });
    }
    Ok(true)
}

/// Drop a retired generation's schema once its runner has stopped.
async fn drop_retired(inner: &Arc<Inner>, generation: i32) {
    let handles: Vec<JoinHandle<()>> = {
        let mut tasks = inner.tasks.lock().await;
        let (old, keep): (Vec<_>, Vec<_>) = tasks.drain(..).partition(|(g, _)| *g == generation);
        *tasks = keep;
        old.into_iter().map(|(_, h)| h).collect()
    };
    for h in handles {
        // The old runner stops at its next batch (it finds itself retired); if it is
        // idle, waiting for events, stop it here.
        h.abort();
        let _ = h.await;
    }
    let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", schema_of(generation));
    if let Err(e) = sqlx::query(&sql).execute(&inner.pool).await {
        tracing::warn!(generation, error = %e, "could not drop a retired projection generation");
    }
}
