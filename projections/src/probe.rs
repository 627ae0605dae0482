//! The probe every current-chart read makes ([`crate::ReadModels::current_chart`]): the
//! patient row's `position` and `generation`, which say whether the chart kept in memory
//! is still the current one.
//!
//! Probes that arrive together are answered by one statement on one connection of the
//! prober's own, the way the store's group commit takes the appends queued while the
//! last transaction ran: a task takes every probe waiting (up to [`MAX_BATCH`]), runs
//! `... WHERE patient_id = ANY($1)`, answers each, and takes the next ones. Under load
//! this turns many round trips into one, and it skips what a pooled connection costs on
//! every use: sqlx sends a round trip of its own each time a connection goes back to
//! its pool.
//!
//! Freshness is unchanged: a probe is queued before the statement that answers it is
//! sent, so that statement's snapshot holds every write committed before the read
//! began (read-your-writes, as with a statement of the read's own).
//!
//! Nothing depends on the prober for correctness: when it is not running (no runtime,
//! its queue full, the task gone) or its statement fails, each probe runs alone on the
//! pool, which reports its own error. After a failure its connection is dropped and the
//! next batch opens a new one (application name `chartledger-probe`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, PgPool};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::ProjectionError;

/// Most probes one statement answers.
pub const MAX_BATCH: usize = 256;
/// Probes waiting for the prober, at most; the others run alone.
const QUEUE: usize = 4096;

const ONE: &str = "SELECT position, generation FROM rm.patients WHERE patient_id = $1";
const MANY: &str = "SELECT patient_id, position, generation FROM rm.patients WHERE patient_id = ANY($1)";

/// A patient row's position and generation; `None` when there is no row.
pub type Probed = Option<(i64, i32)>;

/// A probe waiting for its answer; `None` when its batch failed.
type Ask = (Uuid, oneshot::Sender<Option<Probed>>);

/// Answers probes, batched. Cheap to share; the task and its connection start with the
/// first probe made inside a tokio runtime, and end when the last `Prober` is dropped.
#[derive(Debug)]
pub struct Prober {
    pool: PgPool,
    queue: OnceLock<mpsc::Sender<Ask>>,
    counts: Arc<Counts>,
}

/// What the prober has done since it started.
#[derive(Debug, Default)]
pub struct Counts {
    /// Statements that answered a batch.
    pub statements: AtomicU64,
    /// Probes those statements answered.
    pub batched: AtomicU64,
    /// Batches that failed (their probes then ran alone).
    pub failed: AtomicU64,
}

impl Prober {
    pub fn new(pool: PgPool) -> Self {
        Self { pool, queue: OnceLock::new(), counts: Arc::default() }
    }

    /// (statements, probes answered by them, failed batches).
    pub fn counts(&self) -> (u64, u64, u64) {
        let c = &self.counts;
        (
            c.statements.load(Ordering::Relaxed),
            c.batched.load(Ordering::Relaxed),
            c.failed.load(Ordering::Relaxed),
        )
    }

    /// The row's position and generation.
    pub async fn probe(&self, patient_id: Uuid) -> Result<Probed, ProjectionError> {
        if let Some(queue) = self.queue() {
            let (tx, rx) = oneshot::channel();
            if queue.try_send((patient_id, tx)).is_ok() {
                if let Ok(Some(probed)) = rx.await {
                    return Ok(probed);
                }
            }
        }
        self.alone(patient_id).await
    }

    /// The probe as a statement of its own, on the pool.
    pub async fn alone(&self, patient_id: Uuid) -> Result<Probed, ProjectionError> {
        Ok(sqlx::query_as(ONE).bind(patient_id).fetch_optional(&self.pool).await?)
    }

    fn queue(&self) -> Option<&mpsc::Sender<Ask>> {
        if let Some(q) = self.queue.get() {
            return Some(q);
        }
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        Some(self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            let options = self.pool.connect_options().as_ref().clone().application_name("chartledger-probe");
            runtime.spawn(run(options, rx, self.counts.clone()));
            tx
        }))
    }
}

/// The prober's task: until every sender is gone, take the waiting probes, answer them
/// with one statement, repeat.
async fn run(options: PgConnectOptions, mut queue: mpsc::Receiver<Ask>, counts: Arc<Counts>) {
    let mut conn: Option<PgConnection> = None;
    let mut batch: Vec<Ask> = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let mut ids: Vec<Uuid> = batch.iter().map(|(id, _)| *id).collect();
        ids.sort_unstable();
        ids.dedup();
        match answer(&mut conn, &options, &ids).await {
            Ok(found) => {
                counts.statements.fetch_add(1, Ordering::Relaxed);
                counts.batched.fetch_add(batch.len() as u64, Ordering::Relaxed);
                for (id, tx) in batch.drain(..) {
                    // A reader that gave up has dropped its receiver; nothing to do.
                    let _ = tx.send(Some(found.get(&id).copied()));
                }
            }
            Err(e) => {
                tracing::warn!(code = e.code(), error = %e, "current-chart probe batch failed; probing one by one");
                counts.failed.fetch_add(1, Ordering::Relaxed);
                conn = None;
                for (_, tx) in batch.drain(..) {
                    let _ = tx.send(None);
                }
            }
        }
    }
}

async fn answer(
    conn: &mut Option<PgConnection>,
    options: &PgConnectOptions,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, (i64, i32)>, ProjectionError> {
    let c = match conn {
        Some(c) => c,
        None => conn.insert(options.connect().await?),
    };
    let rows: Vec<(Uuid, i64, i32)> = sqlx::query_as(MANY).bind(ids).fetch_all(&mut *c).await?;
    Ok(rows.into_iter().map(|(id, position, generation)| (id, (position, generation))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_a_database_each_probe_reports_its_own_error() {
        // Nothing listens on port 1: the batch fails, and so does the probe alone, with
        // the pool's error, not a hang.
        let pool = sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(std::time::Duration::from_millis(500))
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .expect("lazy pool");
        let prober = Prober::new(pool);
        let err = prober.probe(Uuid::nil()).await.expect_err("no database");
        assert_eq!(err.code(), "projection.database");
    }
}
