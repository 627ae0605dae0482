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
//! **Catching up.** Pages are read and decoded ahead by a reader task; consecutive pages
//! are applied together up to `commit_events` per transaction. A runner whose cache is
//! fresh (it started on empty tables and has kept every chart) prepares batch k+1 in
//! memory while batch k's transaction runs in a task of its own; each transaction still
//! checks and moves the position, so a failed write drops the cache and the runner
//! resumes from the stored position as after any failure.
//!
//! **Indexes after the data.** A generation's tables are created with their primary keys
//! only; the runner creates the secondary indexes when its catch-up by pages ends (so a
//! rebuild builds each B-tree once over the filled table), and a building generation
//! switches only after that.

use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use domain::{DomainError, Recorded};
use sqlx::{PgPool, Row};
use store::{AllFilter, EventStore, RecordedEvent};
use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;

use crate::error::ProjectionError;
use crate::records::{self, ChartCache};
use crate::sqlmap::{pos, upos};

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

/// Create the active generation if there is none (else bring its tables
/// (`records_upgrade.sql`) and `rm.*` views up to date); return every generation.
async fn ensure_active(pool: &PgPool) -> Result<Vec<Generation>, ProjectionError> {
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

async fn create_generation(pool: &PgPool, status: &str) -> Result<Generation, ProjectionError> {
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

async fn generations(pool: &PgPool) -> Result<Vec<Generation>, ProjectionError> {
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

/// Why a runner stops for good.
enum Exit {
    Retired,
}

async fn run(inner: Arc<Inner>, generation: i32, building: bool) {
    let mut building = building;
    let mut generation = generation;
    loop {
        match run_once(&inner, generation, &mut building).await {
            Ok(Exit::Retired) => {
                // Retired by this process's own switch: its builder is now the active
                // runner. Retired by another process: follow the new active generation.
                if inner.active_generation.load(Ordering::Acquire) != generation {
                    tracing::info!(generation, "projection generation retired; runner stops");
                    return;
                }
                match generations(&inner.pool).await.map(|g| g.into_iter().find(|g| g.status == "active")) {
                    Ok(Some(active)) => {
                        tracing::info!(
                            from = generation,
                            to = active.generation,
                            "following the active generation"
                        );
                        inner.active_generation.store(active.generation, Ordering::Release);
                        generation = active.generation;
                    }
                    Ok(None) => tokio::time::sleep(inner.config.retry_backoff).await,
                    Err(e) => {
                        tracing::warn!(code = e.code(), "projection generations unreadable; retrying");
                        tokio::time::sleep(inner.config.retry_backoff).await;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(generation, code = e.code(), error = %e, "projection runner failed; retrying");
                tokio::time::sleep(inner.config.retry_backoff).await;
            }
        }
    }
}

/// Catch up by pages, then follow live; returns only when retired or on an error.
async fn run_once(inner: &Arc<Inner>, generation: i32, building: &mut bool) -> Result<Exit, ProjectionError> {
    let schema = schema_of(generation);
    let mut position = stored_position(&inner.pool, generation).await?;
    if inner.active_generation.load(Ordering::Acquire) == generation {
        // Another process's runner may have applied events this one has not seen.
        publish(inner, position);
    }
    let mut cache = if position == 0 { ChartCache::fresh() } else { ChartCache::default() };
    cache.content_jsonb = records::content_is_jsonb(&mut *inner.pool.acquire().await?, &schema).await?;
    let page = inner.config.page_events.max(1);

    // Catch up by pages: a reader task keeps `READ_CONCURRENCY` pages being read and
    // decoded at once (positions are gapless, so page k starts at `position + k * page`)
    // and queues up to a transaction's worth of them while the runner applies the ones
    // before, committing once `commit_events` have arrived (or at the end of the backlog).
    let queued = (inner.config.commit_events / page).clamp(1, 64);
    let (pages, mut arriving) = tokio::sync::mpsc::channel(queued);
    let reader = AbortOnDrop(tokio::spawn(read_ahead(inner.store.clone(), position, page, pages)));
    let mut pending = Decoded::default();
    let mut writing: Option<Writing> = None;
    loop {
        let decoded = match arriving.recv().await {
            Some(Ok(decoded)) => decoded,
            failed => {
                // Let the batch being written finish (and count) before giving up.
                let _ = settle(&mut writing, inner, generation, &mut cache, position).await;
                return Err(match failed {
                    Some(Err(e)) => e,
                    _ => ProjectionError::Stopped,
                });
            }
        };
        let more = decoded.count == page && decoded.newer.is_none();
        // A full page means more are coming: make room for a transaction's worth.
        pending.extend(decoded, if more { inner.config.commit_events + page } else { 0 });
        if more && pending.count < inner.config.commit_events {
            continue;
        }
        let mut batch = std::mem::take(&mut pending);
        if batch.count > 0 {
            // A fresh cache folds and encodes this batch while the previous one is being
            // written; otherwise the batch loads what it lacks once the previous one has
            // committed.
            let prepared = match records::prepare_fresh(&mut cache, &batch.events) {
                Ok(Some(rows)) => {
                    // Encoded: the decoded events are not needed any more.
                    batch.events = Vec::new();
                    Some(rows)
                }
                Ok(None) => None,
                Err(e) => {
                    let _ = settle(&mut writing, inner, generation, &mut cache, position).await;
                    return Err(e);
                }
            };
            let Some(p) = settle(&mut writing, inner, generation, &mut cache, position).await? else {
                return Ok(Exit::Retired);
            };
            position = p;
            match prepared {
                Some(rows) => {
                    writing = Some(Writing::start(inner, generation, &schema, position, &batch, rows))
                }
                None => {
                    let Some(p) = commit(inner, generation, &schema, &mut cache, position, &batch).await?
                    else {
                        return Ok(Exit::Retired);
                    };
                    position = p;
                }
            }
        }
        if batch.newer.is_some() || !more {
            let Some(p) = settle(&mut writing, inner, generation, &mut cache, position).await? else {
                return Ok(Exit::Retired);
            };
            position = p;
        }
        if let Some(position) = batch.newer {
            create_indexes(&inner.pool, &schema).await?;
            return Err(ProjectionError::NewerEvent { position });
        }
        if !more {
            break;
        }
    }
    // Pages read past the end of the backlog are not used (live mode reads them again).
    drop(reader);
    create_indexes(&inner.pool, &schema).await?;
    if *building && try_switch(inner, generation).await? {
        *building = false;
    }

    // Live.
    let mut sub = inner.store.subscribe_all(position, AllFilter::default());
    loop {
        let Some(first) = sub.next().await else { return Err(ProjectionError::Stopped) };
        let mut raw = vec![first?];
        while raw.len() < inner.config.batch_events {
            match sub.try_next() {
                Some(e) => raw.push(e?),
                None => break,
            }
        }
        let decoded = decode_all(position, &raw)?;
        if decoded.count > 0 {
            let Some(p) = commit(inner, generation, &schema, &mut cache, position, &decoded).await? else {
                return Ok(Exit::Retired);
            };
            position = p;
        }
        if let Some(position) = decoded.newer {
            return Err(ProjectionError::NewerEvent { position });
        }
        // Switching is safe at any batch boundary: the switch compares positions itself.
        if *building && try_switch(inner, generation).await? {
            *building = false;
        }
    }
}

/// A page of `$all`, decoded: the domain events, how many raw events it covers (the
/// positions `from..from + count`), how many of those were skipped because they could
/// not be decoded, and the position of an event written by a newer build, where the
/// page was cut short.
#[derive(Default)]
pub(crate) struct Decoded {
    pub(crate) events: Vec<Recorded>,
    pub(crate) count: usize,
    pub(crate) skipped: u64,
    pub(crate) newer: Option<u64>,
}

impl Decoded {
    /// Append the page that follows this one (nothing follows a page cut short). The
    /// first page's events are taken as they are, with room for `expected` in all, so a
    /// transaction's worth of pages is not copied again each time the batch grows.
    fn extend(&mut self, next: Decoded, expected: usize) {
        debug_assert!(self.newer.is_none());
        if self.events.is_empty() {
            self.events = next.events;
            self.events.reserve(expected.saturating_sub(self.events.len()));
        } else {
            self.events.extend(next.events);
        }
        self.count += next.count;
        self.skipped += next.skipped;
        self.newer = next.newer;
    }
}

async fn read_page(store: &EventStore, from: u64, max: usize) -> Result<Decoded, ProjectionError> {
    let raw = store.read_all(from, max, &AllFilter::default()).await?;
    decode_all(from, &raw)
}

/// Pages read at once while catching up (each a query and its decoding, on any core).
const READ_CONCURRENCY: usize = 3;

/// Read and decode the pages of `max` events from `from` on, `READ_CONCURRENCY` at a
/// time, into `pages` in order, until a short page (the end of the backlog), a page cut
/// short by a newer event, an error, or the runner hanging up.
async fn read_ahead(
    store: EventStore,
    from: u64,
    max: usize,
    pages: tokio::sync::mpsc::Sender<Result<Decoded, ProjectionError>>,
) {
    use futures::stream::StreamExt;
    let starts = (0u64..).map(move |k| from + k * max as u64);
    let mut reads = futures::stream::iter(starts)
        .map(|at| {
            let store = store.clone();
            let task = AbortOnDrop(tokio::spawn(async move { read_page(&store, at, max).await }));
            async move {
                let mut task = task;
                (&mut task.0).await.map_err(|_| ProjectionError::Stopped)?
            }
        })
        .buffered(READ_CONCURRENCY);
    while let Some(page) = reads.next().await {
        let last = match &page {
            Ok(d) => d.count < max || d.newer.is_some(),
            Err(_) => true,
        };
        if pages.send(page).await.is_err() || last {
            return;
        }
    }
}

/// A task that stops when its owner drops it.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Decode what can be decoded. Key-registry events are not domain events. An erased or
/// malformed payload can never be decoded: it is skipped, counted and logged by position
/// and error code. An event type or schema version this build does not know was written
/// by a newer build: the page is cut short before it, and the runner applies what comes
/// before it and then stops (and retries) rather than leave it out of the read models for
/// good.
///
/// The batch must be exactly the positions `from, from + 1, ...`: the runner moves its
/// stored position by the number of events it applied, so a gap or a repeat here would
/// skip or re-apply events.
pub(crate) fn decode_all(from: u64, raw: &[RecordedEvent]) -> Result<Decoded, ProjectionError> {
    let mut events = Vec::with_capacity(raw.len());
    let mut skipped = 0;
    for (i, r) in raw.iter().enumerate() {
        if Some(r.position) != from.checked_add(i as u64) {
            return Err(ProjectionError::Corrupt {
                what: "batch is not contiguous from the stored position",
            });
        }
        match Recorded::decode(r.position, &r.event, r.payload.as_ref()) {
            Ok(e) => events.push(e),
            Err(DomainError::UnknownEventType) if r.event.stream_id().as_str() == ledger::StreamId::KEYS => {}
            Err(DomainError::UnknownEventType | DomainError::FutureSchemaVersion { .. }) => {
                return Ok(Decoded { events, count: i, skipped, newer: Some(r.position) });
            }
            Err(e) => {
                skipped += 1;
                tracing::warn!(position = r.position, code = e.code(), "event skipped by the projection");
            }
        }
    }
    Ok(Decoded { events, count: raw.len(), skipped, newer: None })
}

/// Create the generation's secondary indexes if they are missing: once the catch-up by
/// pages has filled the tables (one B-tree build instead of row-by-row maintenance), and
/// after every restart (cheap when they exist). Before a building generation can switch.
/// Two at a time, on two connections (index builds on one table share its lock).
async fn create_indexes(pool: &PgPool, schema: &str) -> Result<(), ProjectionError> {
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

/// Publish the active generation's position; it only moves forwards.
fn publish(inner: &Inner, position: u64) {
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
async fn commit(
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
async fn settle(
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
struct Writing {
    task: AbortOnDrop<Result<Option<String>, ProjectionError>>,
    to: u64,
    skipped: u64,
}

impl Writing {
    fn start(
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

async fn stored_position(pool: &PgPool, generation: i32) -> Result<u64, ProjectionError> {
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
async fn try_switch(inner: &Arc<Inner>, generation: i32) -> Result<bool, ProjectionError> {
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
