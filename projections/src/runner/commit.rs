//! One batch's transaction: the position check that makes application exactly once,
//! the rows, the position moved past the batch; run in the runner's task, or in a task
//! of its own ([`Writing`]) while the runner prepares the next batch.
//!
//! A transaction abandoned mid-statement closes its connection rather than return it to
//! the pool ([`CloseUnlessReleased`]); after any failure the cache, which may be ahead of
//! the tables, is dropped ([`committed`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use domain::Recorded;
use sqlx::{PgPool, Row};

use super::reading::{AbortOnDrop, Decoded};
use super::{Inner, PROJECTION};
use crate::error::ProjectionError;
use crate::records::{self, ChartCache};
use crate::sqlmap::{pos, upos};

/// Publish the active generation's position; it only moves forwards.
pub(super) fn publish(inner: &Inner, position: u64) {
    inner.active_position.send_if_modified(|p| {
        let moved = position > *p;
        if moved {
            *p = position;
        }
        moved
    });
}

/// What one batch's transaction writes.
enum Rows<'a> {
    /// Events to fold into the cache (loading its misses) and write.
    Fold { cache: &'a mut ChartCache, events: &'a [Recorded] },
    /// Rows a fresh cache prepared ahead (`records::prepare_fresh`).
    Prepared(Box<records::Prepared>),
}

/// One batch's transaction: lock the generation's row and check that its position is
/// `from`, write the rows, move the position to `to`. Returns the generation's status,
/// or `None` when it has been retired (nothing is written then).
async fn transact(
    pool: &PgPool,
    generation: i32,
    schema: &str,
    span: (u64, u64, u64),
    rows: Rows<'_>,
) -> Result<Option<String>, ProjectionError> {
    let mut conn = CloseUnlessReleased(Some(pool.acquire().await?));
    let result = match conn.0.as_mut() {
        Some(c) => transact_on(c, generation, schema, span, rows).await,
        None => Err(ProjectionError::Stopped),
    };
    // A refusal before anything was written leaves the connection between statements.
    if matches!(result, Ok(_) | Err(ProjectionError::PositionMoved)) {
        conn.release();
    }
    result
}

/// A pooled connection that is closed instead of returned to the pool when it is dropped
/// before `release`. A transaction abandoned mid-statement (its task aborted by a
/// shutdown, or an error) can leave the connection inside the protocol, a COPY begun but
/// not finished, where the pool's on-release check could wait forever while the server's
/// transaction keeps the generation's row locked. Closing the connection ends that
/// transaction.
struct CloseUnlessReleased(Option<sqlx::pool::PoolConnection<sqlx::Postgres>>);

impl CloseUnlessReleased {
    fn release(mut self) {
        // Dropped here, with its transaction finished: back to the pool.
        self.0.take();
    }
}

impl Drop for CloseUnlessReleased {
    fn drop(&mut self) {
        if let Some(conn) = self.0.as_mut() {
            conn.close_on_drop();
        }
    }
}

async fn transact_on(
    conn: &mut sqlx::PgConnection,
    generation: i32,
    schema: &str,
    (from, to, skipped): (u64, u64, u64),
    rows: Rows<'_>,
) -> Result<Option<String>, ProjectionError> {
    let mut tx = sqlx::Connection::begin(conn).await?;
    let row = sqlx::query(
        "SELECT position, status FROM projection_generations WHERE projection = $1 AND generation = $2 FOR UPDATE",
    )
    .bind(PROJECTION)
    .bind(generation)
    .fetch_one(&mut *tx)
    .await?;
    let status: String = row.try_get("status")?;
    if status == "retired" {
        return Ok(None);
    }
    if upos(row.try_get("position")?) != from {
        return Err(ProjectionError::PositionMoved);
    }
    match rows {
        Rows::Fold { cache, events } => records::apply_batch(&mut tx, schema, cache, events).await?,
        Rows::Prepared(prepared) => prepared.write(&mut tx, schema).await?,
    }
    sqlx::query(
        "UPDATE projection_generations SET position = $3, skipped = skipped + $4, updated_at = now() \
         WHERE projection = $1 AND generation = $2",
    )
    .bind(PROJECTION)
    .bind(generation)
    .bind(pos(to))
    .bind(i64::try_from(skipped).unwrap_or(i64::MAX))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(status))
}

/// After a batch's transaction: publish the position, bound the cache. On an error the
/// cache may be ahead of the tables: it is dropped.
fn committed(
    inner: &Inner,
    generation: i32,
    cache: &mut ChartCache,
    (to, skipped): (u64, u64),
    result: Result<Option<String>, ProjectionError>,
) -> Result<Option<u64>, ProjectionError> {
    match result {
        Ok(Some(status)) => {
            if cache.len() > inner.config.cache_charts {
                cache.clear();
            }
            if status == "active" || inner.active_generation.load(Ordering::Acquire) == generation {
                inner.skipped.fetch_add(skipped, Ordering::Relaxed);
                publish(inner, to);
            }
            Ok(Some(to))
        }
        Ok(None) => Ok(None),
        Err(e) => {
            cache.clear();
            Err(e)
        }
    }
}

/// Apply `count` raw events starting at `from` in one transaction; returns the new
/// position, or `None` when the generation has been retired.
pub(super) async fn commit(
    inner: &Arc<Inner>,
    generation: i32,
    schema: &str,
    cache: &mut ChartCache,
    from: u64,
    page: &Decoded,
) -> Result<Option<u64>, ProjectionError> {
    let to = from + page.count as u64;
    let rows = Rows::Fold { cache: &mut *cache, events: &page.events };
    let result = transact(&inner.pool, generation, schema, (from, to, page.skipped), rows).await;
    committed(inner, generation, cache, (to, page.skipped), result)
}

/// Finish the batch being written, if any: the position after it (`position` when none
/// was), or `None` when the generation has been retired.
pub(super) async fn settle(
    writing: &mut Option<Writing>,
    inner: &Inner,
    generation: i32,
    cache: &mut ChartCache,
    position: u64,
) -> Result<Option<u64>, ProjectionError> {
    match writing.take() {
        Some(w) => w.finish(inner, generation, cache).await,
        None => Ok(Some(position)),
    }
}

/// A batch being written in the background while the runner prepares the next one.
pub(super) struct Writing {
    task: AbortOnDrop<Result<Option<String>, ProjectionError>>,
    to: u64,
    skipped: u64,
}

impl Writing {
    pub(super) fn start(
        inner: &Arc<Inner>,
        generation: i32,
        schema: &str,
        from: u64,
        page: &Decoded,
        rows: records::Prepared,
    ) -> Self {
        let (to, skipped) = (from + page.count as u64, page.skipped);
        let (pool, schema) = (inner.pool.clone(), schema.to_owned());
        let task = tokio::spawn(async move {
            transact(&pool, generation, &schema, (from, to, skipped), Rows::Prepared(Box::new(rows))).await
        });
        Self { task: AbortOnDrop(task), to, skipped }
    }

    /// Wait for the write; returns the new position, or `None` when retired.
    async fn finish(
        mut self,
        inner: &Inner,
        generation: i32,
        cache: &mut ChartCache,
    ) -> Result<Option<u64>, ProjectionError> {
        let result = (&mut self.task.0).await.unwrap_or(Err(ProjectionError::Stopped));
        committed(inner, generation, cache, (self.to, self.skipped), result)
    }
}
