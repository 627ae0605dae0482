//! The projection runner: exactly-once application of `$all` to the read models, with
//! blue/green rebuilds and read-your-writes.
//!
//! **Exactly once.** Each batch runs in one transaction that first locks the
//! generation's row in `projection_generations` and checks that its `position` is where
//! the batch starts, then writes the read-model rows, then moves `position` past the
//! batch. A crash loses the whole transaction (and the runner resumes from the stored
//! position); a second runner on the same generation finds the position moved and
//! reloads instead of applying twice.
//!
//! **Blue/green.** [`Projections::rebuild`] creates generation N+1 in its own schema and
//! runs a second runner on it from position 0 while generation N keeps serving. Once the
//! new generation has caught up with the old one, a single transaction marks N retired
//! and N+1 active and points the `rm.*` views at N+1. The old runner sees `retired` in
//! its next batch and stops; its schema is then dropped.
//!
//! The runner in files:
//! - `generations`: making, upgrading, switching and dropping generations, and the
//!   `rm.*` views;
//! - `reading`: reading `$all` ahead by pages and decoding it;
//! - `commit`: one batch's transaction (the position check), in the foreground or in
//!   a task of its own while the next batch is prepared;
//! - `run`: the loop: catch up by pages, then follow live.

use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use store::EventStore;
use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;

use crate::error::ProjectionError;
use crate::sqlmap::upos;

mod commit;
mod generations;
mod reading;
mod run;

pub(crate) use reading::decode_all;

use generations::{create_generation, ensure_active, generations};
use run::run;

/// The name of the one projection this crate runs (charts, index, access log, staff).
pub const PROJECTION: &str = "records";

#[derive(Clone, Debug)]
pub struct RunnerConfig {
    /// Most events per live batch (one transaction).
    pub batch_events: usize,
    /// Events per page read when catching up or rebuilding.
    pub page_events: usize,
    /// Events per transaction when catching up or rebuilding: consecutive pages are
    /// applied together up to this many, so an entity touched by several of them (a
    /// patient's counters, an amended entry) is written once.
    pub commit_events: usize,
    /// Partial charts kept between batches before the cache is dropped.
    pub cache_charts: usize,
    /// Wait before retrying after a database error.
    pub retry_backoff: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            batch_events: 2000,
            page_events: 10_000,
            commit_events: 100_000,
            cache_charts: 100_000,
            retry_backoff: Duration::from_millis(500),
        }
    }
}

/// A generation of the projection's tables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generation {
    pub generation: i32,
    pub schema: String,
    pub status: String,
    pub position: u64,
    pub skipped: u64,
}

pub(crate) fn schema_of(generation: i32) -> String {
    format!("rm_{PROJECTION}_g{generation}")
}

/// The running read side: the active generation's runner, and a builder during a rebuild.
#[derive(Clone, Debug)]
pub struct Projections {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: EventStore,
    pool: PgPool,
    config: RunnerConfig,
    active_generation: AtomicI32,
    /// Position of the active generation (next position to apply).
    active_position: watch::Sender<u64>,
    /// Events skipped (erased or undecodable) by the active generation.
    skipped: AtomicU64,
    tasks: Mutex<Vec<(i32, JoinHandle<()>)>>,
}

impl Projections {
    /// Make sure an active generation exists (creating generation 1 on a fresh database),
    /// and start its runner. A rebuild interrupted by a restart is resumed. The runner
    /// writes through the store's pool; see [`Projections::start_with_pool`].
    pub async fn start(store: EventStore, config: RunnerConfig) -> Result<Self, ProjectionError> {
        let pool = store.pool().clone();
        Self::start_with_pool(store, pool, config).await
    }

    /// [`Projections::start`], the runner writing through `pool` (a role of its own, such as
    /// a member of `chartledger_projector`, so that the store's connections, which serve
    /// requests, need no write access to the read models): generations, `rm.*` views,
    /// `projection_generations`, chart snapshots ([`Projections::chart_as_of`]). Events are
    /// read through the store.
    pub async fn start_with_pool(
        store: EventStore,
        pool: PgPool,
        config: RunnerConfig,
    ) -> Result<Self, ProjectionError> {
        let all = ensure_active(&pool).await?;
        let active = all
            .iter()
            .find(|g| g.status == "active")
            .cloned()
            .ok_or(ProjectionError::Corrupt { what: "no active generation" })?;
        let (active_position, _) = watch::channel(active.position);
        let inner = Arc::new(Inner {
            store,
            pool,
            config,
            active_generation: AtomicI32::new(active.generation),
            active_position,
            skipped: AtomicU64::new(active.skipped),
            tasks: Mutex::new(Vec::new()),
        });
        let this = Self { inner };
        this.spawn_runner(active.generation, false).await;
        if let Some(building) = all.iter().find(|g| g.status == "building") {
            this.spawn_runner(building.generation, true).await;
        }
        Ok(this)
    }

    async fn spawn_runner(&self, generation: i32, building: bool) {
        let inner = self.inner.clone();
        let handle = tokio::spawn(async move { run(inner, generation, building).await });
        self.inner.tasks.lock().await.push((generation, handle));
    }

    /// The next `$all` position the active read models will apply: every event before it
    /// is visible to readers.
    pub fn position(&self) -> u64 {
        *self.inner.active_position.borrow()
    }

    pub fn active_generation(&self) -> i32 {
        self.inner.active_generation.load(Ordering::Acquire)
    }

    /// Events the active generation skipped because their payload was erased or did not
    /// decode.
    pub fn skipped(&self) -> u64 {
        self.inner.skipped.load(Ordering::Relaxed)
    }

    /// Read-your-writes: wait until the read models include the event at `position`
    /// (an append's result), or time out.
    pub async fn wait_for(&self, position: u64, timeout: Duration) -> Result<(), ProjectionError> {
        let mut rx = self.inner.active_position.subscribe();
        let outcome =
            tokio::time::timeout(timeout, async { rx.wait_for(|p| *p > position).await.map(|_| ()) }).await;
        match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(ProjectionError::Stopped),
            Err(_) => Err(ProjectionError::Timeout { position }),
        }
    }

    /// How many committed events the active read models have not applied yet.
    pub async fn lag(&self) -> Result<u64, ProjectionError> {
        let head: i64 = sqlx::query_scalar("SELECT COALESCE(max(position) + 1, 0) FROM ledger_events")
            .fetch_one(&self.inner.pool)
            .await?;
        Ok(upos(head).saturating_sub(self.position()))
    }

    /// [`crate::pit::chart_as_of`], storing the snapshots it takes through the runner's pool.
    pub async fn chart_as_of(
        &self,
        patient_id: uuid::Uuid,
        at: ledger::Timestamp,
    ) -> Result<crate::pit::PointInTime, ProjectionError> {
        crate::pit::chart_as_of_writing(&self.inner.store, &self.inner.pool, patient_id, at).await
    }

    /// Every generation and its state.
    pub async fn generations(&self) -> Result<Vec<Generation>, ProjectionError> {
        generations(&self.inner.pool).await
    }

    /// Blue/green rebuild: fill a new generation from position 0 while the active one
    /// keeps serving, switch over once caught up, drop the old one. Returns the new
    /// generation when it has become active, or times out (the rebuild then continues in
    /// the background).
    pub async fn rebuild(&self, timeout: Duration) -> Result<i32, ProjectionError> {
        let generation = create_generation(&self.inner.pool, "building").await?;
        self.spawn_runner(generation.generation, true).await;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.inner.active_position.subscribe();
        while self.active_generation() != generation.generation {
            if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
                return Err(ProjectionError::Timeout { position: self.position() });
            }
        }
        Ok(generation.generation)
    }

    /// Stop every runner (the read models stay as they are).
    pub async fn shutdown(&self) {
        for (_, h) in self.inner.tasks.lock().await.drain(..) {
            h.abort();
        }
    }
}
