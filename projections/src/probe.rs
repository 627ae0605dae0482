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
//! Nothing depends on the prober for correctness: when it is not running (no multi-thread
//! runtime, its queue full) or its statement fails or takes longer than [`TIMEOUT`],
//! each probe runs alone on the pool, which reports its own error. After a failure the
//! connection is dropped, probes run alone for a pause that doubles while failures go
//! on (one warning per run of failures), and the next batch opens a new connection
//! (application name `chartledger-probe`). A task that has ended is started again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection, PgPool};
use tokio::runtime::RuntimeFlavor;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::ProjectionError;

/// Most probes one statement answers.
pub const MAX_BATCH: usize = 256;
/// Probes waiting for the prober, at most; the others run alone.
const QUEUE: usize = 4096;
/// A batch (connecting included) that takes longer fails, and so does a probe's wait
/// for its answer: a wedged connection must not hold every chart read up.
const TIMEOUT: Duration = Duration::from_secs(2);
/// After a failed batch, probes run alone for this long, doubling up to [`MAX_PAUSE`]
/// while batches keep failing.
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const MAX_PAUSE: Duration = Duration::from_secs(10);

const ONE: &str = "SELECT position, generation FROM rm.patients WHERE patient_id = $1";
const MANY: &str = "SELECT patient_id, position, generation FROM rm.patients WHERE patient_id = ANY($1)";

/// A patient row's position and generation; `None` when there is no row.
pub type Probed = Option<(i64, i32)>;

/// A probe waiting for its answer; `None` when its batch failed.
type Ask = (Uuid, oneshot::Sender<Option<Probed>>);

/// Answers probes, batched. Cheap to share; the task and its connection start with the
/// first probe made on a multi-thread tokio runtime (again if that task has ended), and
/// end when the last `Prober` is dropped.
#[derive(Debug)]
pub struct Prober {
    pool: PgPool,
    queue: Mutex<Option<mpsc::Sender<Ask>>>,
    shared: Arc<Shared>,
}

/// What the prober's task and the probes share.
#[derive(Debug)]
struct Shared {
    counts: Counts,
    /// Probes run alone until this many milliseconds after `epoch` (after a failure).
    paused_until_ms: AtomicU64,
    epoch: Instant,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
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
        let shared =
            Shared { counts: Counts::default(), paused_until_ms: AtomicU64::new(0), epoch: Instant::now() };
        Self { pool, queue: Mutex::new(None), shared: Arc::new(shared) }
    }

    /// (statements, probes answered by them, failed batches).
    pub fn counts(&self) -> (u64, u64, u64) {
        let c = &self.shared.counts;
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
                if let Ok(Ok(Some(probed))) = tokio::time::timeout(TIMEOUT, rx).await {
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

    /// The task's queue: `None` while paused after a failure, or off a multi-thread
    /// runtime (a current-thread runtime runs the task only while it is driven).
    fn queue(&self) -> Option<mpsc::Sender<Ask>> {
        if self.shared.paused_until_ms.load(Ordering::Relaxed) > self.shared.now_ms() {
            return None;
        }
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(q) = queue.as_ref().filter(|q| !q.is_closed()) {
            return Some(q.clone());
        }
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        if runtime.runtime_flavor() != RuntimeFlavor::MultiThread {
            return None;
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let options = self.pool.connect_options().as_ref().clone().application_name("chartledger-probe");
        runtime.spawn(run(options, rx, self.shared.clone()));
        *queue = Some(tx.clone());
        Some(tx)
    }
}

/// The prober's task: until every sender is gone, take the waiting probes, answer them
/// with one statement, repeat.
async fn run(options: PgConnectOptions, mut queue: mpsc::Receiver<Ask>, shared: Arc<Shared>) {
    let mut conn: Option<PgConnection> = None;
    let mut batch: Vec<Ask> = Vec::with_capacity(MAX_BATCH);
    let mut pause = Duration::ZERO;
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let mut ids: Vec<Uuid> = batch.iter().map(|(id, _)| *id).collect();
        ids.sort_unstable();
        ids.dedup();
        let answered = match tokio::time::timeout(TIMEOUT, answer(&mut conn, &options, &ids)).await {
            Ok(answered) => answered,
            Err(_) => Err(ProjectionError::Timeout { position: 0 }),
        };
        match answered {
            Ok(found) => {
                pause = Duration::ZERO;
                shared.counts.statements.fetch_add(1, Ordering::Relaxed);
                shared.counts.batched.fetch_add(batch.len() as u64, Ordering::Relaxed);
                for (id, tx) in batch.drain(..) {
                    // A reader that gave up has dropped its receiver; nothing to do.
                    let _ = tx.send(Some(found.get(&id).copied()));
                }
            }
            Err(e) => {
                shared.counts.failed.fetch_add(1, Ordering::Relaxed);
                if pause.is_zero() {
                    // Once per run of failures; the probes report their own errors.
                    tracing::warn!(
                        code = e.code(),
                        "current-chart probe batch failed; probing one by one for a while"
                    );
                }
                pause = (pause * 2).clamp(FIRST_PAUSE, MAX_PAUSE);
                let until =
                    shared.now_ms().saturating_add(u64::try_from(pause.as_millis()).unwrap_or(u64::MAX));
                shared.paused_until_ms.store(until, Ordering::Relaxed);
                // A connection in an unknown state (a timed-out statement) is not reused.
                conn = None;
                for (_, tx) in batch.drain(..) {
                    let _ = tx.send(None);
                }
            }
        }
    }
    if let Some(c) = conn.take() {
        // Best effort: a clean goodbye instead of an unexpected EOF in the server's log.
        let _ = c.close().await;
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_a_database_each_probe_reports_its_own_error() {
        // Nothing listens on port 1: the batch fails, and so does the probe alone, with
        // the pool's error, not a hang; then probes run alone without trying a batch.
        let pool = sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(std::time::Duration::from_millis(500))
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .expect("lazy pool");
        let prober = Prober::new(pool);
        let err = prober.probe(Uuid::nil()).await.expect_err("no database");
        assert_eq!(err.code(), "projection.database");
        assert_eq!(prober.counts(), (0, 0, 1), "the batch was tried and failed");
        assert!(prober.shared.paused_until_ms.load(Ordering::Relaxed) > 0, "and batching paused");
        // While paused, probes do not wait for a batch.
        prober.shared.paused_until_ms.store(prober.shared.now_ms() + 60_000, Ordering::Relaxed);
        let err = prober.probe(Uuid::nil()).await.expect_err("no database");
        assert_eq!(err.code(), "projection.database");
        assert_eq!(prober.counts(), (0, 0, 1), "paused: no second batch");
    }
}
