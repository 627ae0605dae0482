//! The single writer: group commit of concurrent appends, gapless positions in commit
//! order, hash links, Merkle nodes, and recovery after connection loss.
//!
//! One task owns one dedicated connection that holds the ledger's session advisory lock,
//! so it is the only writer of the ledger (across processes too). Requests queue on a
//! channel; the task drains everything queued (up to `max_batch_events`), validates each
//! request against the in-memory stream heads, signs the new events (in parallel across
//! streams), and inserts the whole batch in one transaction: one COMMIT, one WAL flush.
//! Callers are answered only after COMMIT returned (synchronous_commit on).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ledger::envelope::{EventBody, Payload, GENESIS_PREV_HASH};
use ledger::merkle::{self, Frontier};
use ledger::{Hash, KeyId, LedgerSigningKey, SignedEvent, StreamId, Timestamp};
use rayon::prelude::*;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{Connection, Row};
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use crate::error::StoreError;
use crate::nodes::fetch_nodes;
use crate::types::{AppendResult, ExpectedRevision, KeyRotation, ProposedEvent};
use crate::{Head, StoreConfig};

/// Advisory lock key held by the ledger's writer ("CHLEDGER").
pub(crate) const WRITER_LOCK: i64 = 0x4348_4c45_4447_4552;
/// Batches with at least this many new events, planned while nothing is in flight and
/// nothing else waits, are signed and inserted chunk by chunk (`Writer::stream_commit`).
/// Smaller ones, and any when other requests wait, go through the pipeline, which signs
/// the next batch while this one commits.
const STREAM_MIN_EVENTS: usize = 64;
/// Up to this many events are signed on the writer's task itself, one after the other,
/// without `block_in_place` or rayon.
const SIGN_INLINE_EVENTS: usize = 4;
/// NOTIFY channel carrying the new head after each commit.
pub(crate) const NOTIFY_CHANNEL: &str = "chartledger_events";

pub(crate) struct AppendRequest {
    pub stream: StreamId,
    pub expected: ExpectedRevision,
    pub events: Vec<ProposedEvent>,
    pub reply: oneshot::Sender<Result<AppendResult, StoreError>>,
    /// Look this request's event ids up when planning it, whatever its expected revision:
    /// set when it was held back for touching an uncommitted event, or re-queued after an
    /// event-id conflict (a retry of something that may now be stored).
    pub look_up: bool,
}

/// The writer's counters, shared with the store's handles.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    batches: AtomicU64,
    merged_parts: AtomicU64,
    streamed_batches: AtomicU64,
    streamed_chunks: AtomicU64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> crate::WriterStats {
        crate::WriterStats {
            batches: self.batches.load(Ordering::Relaxed),
            merged_parts: self.merged_parts.load(Ordering::Relaxed),
            streamed_batches: self.streamed_batches.load(Ordering::Relaxed),
            streamed_chunks: self.streamed_chunks.load(Ordering::Relaxed),
        }
    }
}

/// Queue `batch` before everything in `carry`, in order; with `look_up`, to be planned
/// with its event ids looked up.
fn requeue_front(carry: &mut VecDeque<AppendRequest>, batch: Vec<AppendRequest>, look_up: bool) {
    for mut r in batch.into_iter().rev() {
        r.look_up |= look_up;
        carry.push_front(r);
    }
}

/// What the writer's queue carries.
pub(crate) enum Request {
    Append(AppendRequest),
    /// Rotate the ledger key: runs once everything queued before it has committed, and
    /// everything queued after it is signed with the new key.
    Rotate(RotateRequest),
}

pub(crate) struct RotateRequest {
    pub key: Arc<LedgerSigningKey>,
    pub reply: oneshot::Sender<Result<KeyRotation, StoreError>>,
}

impl AppendRequest {
    fn payload_bytes(&self) -> usize {
        self.events.iter().map(|e| e.payload.len()).sum()
    }
}

/// What the writer knows about the ledger. Reloaded from the database after any doubt.
pub(crate) struct LedgerState {
    pub head: u64,
    pub frontier: Frontier,
    pub last_micros: i64,
}

pub(crate) struct Writer {
    /// The connection holding the writer lock; every COMMIT goes through it.
    pub conn: Option<PgConnection>,
    pub connect: PgConnectOptions,
    pub rx: mpsc::Receiver<Request>,
    pub head_tx: watch::Sender<Head>,
    /// The current signing key, for the store's readers and the checkpointer.
    pub key_tx: watch::Sender<Arc<LedgerSigningKey>>,
    /// A rotation whose commit outcome is unknown: adopted at the next reconnect if the
    /// registry holds it.
    pub unsettled_key: Option<Arc<LedgerSigningKey>>,
    pub planner: Planner,
}

/// Plans batches against the ledger state as it will be once everything planned so far
/// has committed. Owns a second connection for look-ups, so the next batch can be
/// planned (and signed) while the previous one commits.
pub(crate) struct Planner {
    pub lookup: Option<PgConnection>,
    pub connect: PgConnectOptions,
    pub key: Arc<LedgerSigningKey>,
    pub state: LedgerState,
    /// Last revision and hash of recently written streams (including planned ones).
    pub heads: HashMap<StreamId, (u64, Hash)>,
    pub config: StoreConfig,
    /// The writer's counters.
    pub stats: Arc<Counters>,
}

/// A planned, signed batch waiting for (or in) its commit.
struct Prepared {
    batch: Vec<AppendRequest>,
    plans: Vec<Plan>,
    rows: Vec<NewRow>,
    head: Head,
    ids: HashSet<Uuid>,
}

impl Prepared {
    /// `ids`: every event id of the batch's requests.
    fn new(batch: Vec<AppendRequest>, plans: Vec<Plan>, rows: Vec<NewRow>, head: Head) -> Self {
        let ids = batch.iter().flat_map(|r| r.events.iter().map(|e| e.event_id)).collect();
        Self { batch, plans, rows, head, ids }
    }
}

/// Connect, take the writer lock (waiting for another writer to go away; with
/// `lock_timeout`, at most that long), load the state.
pub(crate) async fn connect_writer(
    opts: &PgConnectOptions,
    lock_timeout: Option<Duration>,
) -> Result<(PgConnection, LedgerState), StoreError> {
    let mut conn = connect_session(opts).await?;
    if let Some(t) = lock_timeout {
        sqlx::query(&format!("SET lock_timeout = {}", t.as_millis().max(1))).execute(&mut conn).await?;
    }
    sqlx::query("SELECT pg_advisory_lock($1)").bind(WRITER_LOCK).execute(&mut conn).await?;
    sqlx::query("SET lock_timeout = 0").execute(&mut conn).await?;
    let state = load_state(&mut conn).await?;
    Ok((conn, state))
}

/// A writer-side session: durable commits, and index access only. Every statement the
/// writer runs (and the gapless trigger's probes, planned in this session) finds its rows
/// through an index; with sequential scans off, the generic plans PostgreSQL caches after
/// a few runs use those indexes even when they were made while the table was small, and
/// stay right as the ledger grows without waiting for an ANALYZE. Planning every run anew
/// (`force_custom_plan`) would cost about 0.3 ms per commit.
async fn connect_session(opts: &PgConnectOptions) -> Result<PgConnection, StoreError> {
    let mut conn = PgConnection::connect_with(opts).await?;
    sqlx::query("SET synchronous_commit = on").execute(&mut conn).await?;
    sqlx::query("SET enable_seqscan = off").execute(&mut conn).await?;
    Ok(conn)
}

/// Head, Merkle frontier and last recorded time, from the database.
pub(crate) async fn load_state(conn: &mut PgConnection) -> Result<LedgerState, StoreError> {
    let row = sqlx::query("SELECT position, recorded_at FROM ledger_events ORDER BY position DESC LIMIT 1")
        .fetch_optional(&mut *conn)
        .await?;
    let (head, last_micros) = match row {
        None => (0, i64::MIN),
        Some(r) => {
            let p: i64 = r.try_get("position")?;
            let t: time::OffsetDateTime = r.try_get("recorded_at")?;
            (p as u64 + 1, Timestamp::from_datetime(t).as_micros())
        }
    };
    let parts = Frontier::node_ids(head);
    let found = fetch_nodes(&mut *conn, &parts).await?;
    let hashes = parts
        .iter()
        .map(|n| {
            found.get(n).copied().ok_or(StoreError::Corrupt { position: head, reason: "missing Merkle node" })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let frontier = Frontier::from_parts(head, hashes)
        .map_err(|_| StoreError::Corrupt { position: head, reason: "inconsistent Merkle frontier" })?;
    Ok(LedgerState { head, frontier, last_micros })
}

/// How the writer settles one request of a batch.
enum Plan {
    /// New events at `rows[range]`.
    Write {
        first_row: usize,
        count: usize,
    },
    /// Every event was stored before: answer with the original result.
    Replay(AppendResult),
    /// Same ids as request `i` of this batch, same content: answer with its result.
    ReplayOf(usize),
    Fail(StoreError),
}

/// A new event before signing (owns what its body needs, so a chunk of drafts can be
/// signed on another thread).
struct Draft {
    position: u64,
    stream: StreamId,
    revision: u64,
    event_id: Uuid,
    event_type: ledger::EventType,
    schema_version: u16,
    actor: ledger::Actor,
    payload: Payload,
}

/// A row ready to insert.
struct NewRow {
    position: u64,
    event: SignedEvent,
    payload: Payload,
    merkle_nodes: Vec<u8>,
}

/// An event already stored, for idempotency checks.
struct Existing {
    position: u64,
    event: SignedEvent,
    payload: Option<Vec<u8>>,
}

impl Writer {
    /// The pipeline: while batch k commits, batch k+1 is looked up and signed.
    pub(crate) async fn run(mut self) {
        let mut carry: VecDeque<AppendRequest> = VecDeque::new();
        let mut in_flight: Option<Prepared> = None;
        // A key rotation waits until nothing planned with the old key is in flight; no new
        // batch is planned meanwhile.
        let mut rotation: Option<RotateRequest> = None;
        loop {
            // Everything queued before the rotation (`carry` included) has committed.
            if in_flight.is_none() && carry.is_empty() {
                if let Some(r) = rotation.take() {
                    let result = self.rotate(&r.key).await;
                    let _ = r.reply.send(result);
                    continue;
                }
            }
            // Gather: block only when there is nothing to do. What waits in `carry` goes
            // first; the channel is read only while no rotation is pending.
            let mut batch: Vec<AppendRequest> = Vec::new();
            if rotation.is_none() && in_flight.is_none() && carry.is_empty() {
                match self.rx.recv().await {
                    Some(Request::Append(r)) => batch.push(r),
                    Some(Request::Rotate(r)) => {
                        rotation = Some(r);
                        continue;
                    }
                    None => break,
                }
            }
            let cfg = &self.planner.config;
            let mut n: usize = batch.iter().map(|r| r.events.len()).sum();
            let mut bytes: usize = batch.iter().map(AppendRequest::payload_bytes).sum();
            while n < cfg.max_batch_events && bytes < cfg.max_batch_bytes {
                match carry.pop_front() {
                    Some(r) => {
                        n += r.events.len();
                        bytes += r.payload_bytes();
                        batch.push(r);
                    }
                    None => break,
                }
            }
            if rotation.is_none() {
                while n < cfg.max_batch_events && bytes < cfg.max_batch_bytes {
                    match self.rx.try_recv() {
                        Ok(Request::Append(r)) => {
                            n += r.events.len();
                            bytes += r.payload_bytes();
                            batch.push(r);
                        }
                        Ok(Request::Rotate(r)) => {
                            rotation = Some(r);
                            break;
                        }
                        Err(_) => break,
                    }
                }
            }
            // After an unknown outcome the state may hold phantom batches: reload it first.
            if self.conn.is_none() && in_flight.is_none() {
                if let Err(e) = self.reconnect().await {
                    tracing::warn!(error = %e, "writer cannot reach the database");
                    fail_all(batch);
                    for r in carry.drain(..) {
                        let _ = r.reply.send(Err(StoreError::Database(sqlx::Error::PoolTimedOut)));
                    }
                    continue;
                }
            }
            // Requests touching an event still in flight wait for its outcome, and then look
            // their ids up (it may be stored by then).
            if let Some(f) = &in_flight {
                let (now, later): (Vec<_>, Vec<_>) =
                    batch.into_iter().partition(|r| r.events.iter().all(|e| !f.ids.contains(&e.event_id)));
                batch = now;
                requeue_front(&mut carry, later, true);
            }
            match in_flight.take() {
                None => {
                    if !batch.is_empty() {
                        in_flight = self.prepare_alone(batch, &mut carry).await;
                    }
                }
                Some(p) => {
                    let (committed, next) = commit_and_plan_next(
                        self.conn.as_mut(),
                        &mut self.planner,
                        &mut self.rx,
                        &p,
                        batch,
                        &mut carry,
                        &mut rotation,
                    )
                    .await;
                    match committed {
                        Ok(()) => {
                            self.publish(&p);
                            self.planner.stats.batches.fetch_add(1, Ordering::Relaxed);
                            settle(p, None);
                            in_flight = next;
                        }
                        Err(e) if is_event_id_conflict(&e) => {
                            // Nothing was written: plan both batches again, with look-ups.
                            if let Some(n) = next {
                                requeue_front(&mut carry, n.batch, true);
                            }
                            self.replan_after_id_conflict(p.batch, &mut carry).await;
                        }
                        Err(e) => {
                            // The next batch was planned on top of this one: plan it again.
                            if let Some(n) = next {
                                requeue_front(&mut carry, n.batch, false);
                            }
                            self.recover(p, e).await;
                        }
                    }
                }
            }
            if self.planner.heads.len() > self.planner.config.stream_cache_size {
                self.planner.trim_heads(in_flight.as_ref());
            }
        }
        if let Some(p) = in_flight {
            match self.conn.as_mut() {
                Some(c) => match commit_rows(c, &p.rows).await {
                    Ok(()) => {
                        self.publish(&p);
                        settle(p, None);
                    }
                    Err(e) => self.recover(p, e).await,
                },
                None => self.recover(p, StoreError::Closed).await,
            }
        }
        tracing::debug!("writer stopped: all store handles dropped");
    }

    /// Nothing is in flight: plan `batch`. A small batch is returned signed, to commit
    /// while the next one is gathered. A large one is signed in chunks, each inserted
    /// (in one transaction) while the next is signed, and committed here: signing a
    /// stream's chain is sequential, so this is what lets one client's big append use the
    /// database and the CPU at the same time.
    async fn prepare_alone(
        &mut self,
        batch: Vec<AppendRequest>,
        carry: &mut VecDeque<AppendRequest>,
    ) -> Option<Prepared> {
        let (batch, plans, drafts) = self.planner.draft_or_fail(batch).await?;
        if drafts.len() < STREAM_MIN_EVENTS || self.conn.is_none() || !carry.is_empty() || !self.rx.is_empty()
        {
            return self.planner.finish(batch, plans, drafts);
        }
        self.stream_commit(batch, plans, drafts, carry).await;
        None
    }

    /// Sign and insert `drafts` chunk by chunk in one transaction, then commit, publish and
    /// answer; failures are handled as for a batch commit.
    async fn stream_commit(
        &mut self,
        batch: Vec<AppendRequest>,
        plans: Vec<Plan>,
        drafts: Vec<Draft>,
        carry: &mut VecDeque<AppendRequest>,
    ) {
        let planner = &mut self.planner;
        let now = planner.next_time();
        let mut bases = planner.chain_bases(&drafts);
        let mut frontier = planner.state.frontier.clone();
        let key = Arc::clone(&planner.key);
        let head = drafts.last().map_or(planner.state.head, |d| d.position + 1);
        // The first chunks are small, so the database starts early; later ones are larger
        // (fewer statements).
        let mut chunks: Vec<Vec<Draft>> = Vec::new();
        let mut size = 32;
        let mut rest = drafts.into_iter().peekable();
        while rest.peek().is_some() {
            chunks.push(rest.by_ref().take(size).collect());
            size = (size * 2).min(256);
        }
        // One thread signs the chunks in order and hands each over as soon as it is signed;
        // this task inserts them as they come. Dropping the receiver stops the signer.
        let (chunk_tx, mut chunk_rx) = mpsc::channel::<Result<Vec<NewRow>, StoreError>>(2);
        let signer = tokio::task::spawn_blocking(move || {
            for drafts in chunks {
                let r = sign_drafts(drafts, &key, now, &mut bases, &mut frontier);
                let failed = r.is_err();
                if chunk_tx.blocking_send(r).is_err() || failed {
                    break;
                }
            }
            frontier
        });
        let mut rows: Vec<NewRow> = Vec::new();
        let mut chunk_count = 0u64;
        // Was COMMIT sent? Before, a failure leaves nothing committed.
        let mut commit_sent = false;
        let conn = self.conn.as_mut();
        let result: Result<Frontier, StoreError> = async {
            let conn = conn.ok_or(StoreError::Closed)?;
            let mut tx = conn.begin().await?;
            while let Some(signed) = chunk_rx.recv().await {
                let signed = signed?;
                insert_rows(&mut tx, &signed, head).await?;
                chunk_count += 1;
                rows.extend(signed);
            }
            let frontier = signer.await.map_err(|_| StoreError::Database(sqlx::Error::WorkerCrashed))?;
            if rows.last().map(|r| r.position + 1) != Some(head) {
                // The signer stopped early without an error: nothing may commit.
                return Err(StoreError::Database(sqlx::Error::WorkerCrashed));
            }
            commit_sent = true;
            tx.commit().await?;
            Ok(frontier)
        }
        .await;
        drop(chunk_rx);
        match result {
            Ok(frontier) => {
                self.planner.state.last_micros = now.as_micros();
                let p = self.planner.prepared(batch, plans, rows, frontier);
                self.publish(&p);
                // Counted before the callers hear of it.
                self.planner.stats.batches.fetch_add(1, Ordering::Relaxed);
                self.planner.stats.streamed_batches.fetch_add(1, Ordering::Relaxed);
                self.planner.stats.streamed_chunks.fetch_add(chunk_count, Ordering::Relaxed);
                settle(p, None);
            }
            Err(e) if is_event_id_conflict(&e) => {
                // Nothing was written (the transaction rolls back).
                self.replan_after_id_conflict(batch, carry).await;
            }
            Err(e) if !commit_sent => {
                // Nothing was committed (the transaction rolls back when the connection is
                // next used). Keep the connection, and the ledger lock, if it still
                // answers, and reload the state from it in case the failure showed that it
                // differs from the database (the state never moved past this batch).
                tracing::warn!(error = %e, events = head - self.planner.state.head, "streamed batch failed before commit");
                let alive = match self.conn.as_mut() {
                    Some(c) => sqlx::query("SELECT 1").execute(c).await.is_ok(),
                    None => false,
                };
                if !alive || self.reload().await.is_err() {
                    self.conn = None;
                }
                answer_unwritten(batch, plans, self.planner.state.head);
            }
            Err(e) => {
                // The COMMIT's outcome is unknown: the recovery finds out.
                let head = Head { size: head, root: self.planner.state.frontier.root() };
                self.recover(Prepared::new(batch, plans, rows, head), e).await;
            }
        }
    }

    /// A commit met an event id already stored, so nothing was written: queue `batch`
    /// first, to plan again with look-ups on the reloaded state.
    async fn replan_after_id_conflict(
        &mut self,
        batch: Vec<AppendRequest>,
        carry: &mut VecDeque<AppendRequest>,
    ) {
        requeue_front(carry, batch, true);
        if let Err(e) = self.reload().await {
            tracing::warn!(error = %e, "reloading the ledger state failed");
            self.conn = None;
        }
    }

    fn publish(&self, p: &Prepared) {
        if !p.rows.is_empty() {
            self.head_tx.send_replace(p.head);
        }
    }

    /// Reload the state from the database on the writer's connection.
    async fn reload(&mut self) -> Result<(), StoreError> {
        let conn = self.conn.as_mut().ok_or(StoreError::Closed)?;
        self.planner.state = load_state(conn).await?;
        self.planner.heads.clear();
        Ok(())
    }

    /// Reconnect (retaking the lock) and reload the state from the database.
    async fn reconnect(&mut self) -> Result<(), StoreError> {
        let (mut conn, state) =
            connect_writer(&self.connect, Some(self.planner.config.recovery_lock_timeout)).await?;
        // A rotation whose outcome was unknown: the registry says whether it committed.
        if let Some(new) = self.unsettled_key.clone() {
            let registry = crate::load_key_registry(&mut conn).await?;
            if registry.get(&new.key_id()).is_some() {
                self.adopt_key(new);
            }
            self.unsettled_key = None;
        }
        self.conn = Some(conn);
        self.planner.state = state;
        self.planner.heads.clear();
        Ok(())
    }

    /// Sign everything from now on (events and checkpoints) with `key`.
    fn adopt_key(&mut self, key: Arc<LedgerSigningKey>) {
        self.planner.key = Arc::clone(&key);
        self.key_tx.send_replace(key);
    }

    /// Rotate the ledger key (nothing is in flight): introduce `new` with a `key.introduced`
    /// signed by the current key and recorded at `t`, valid from `t`; retire the current
    /// key with a `key.retired` (reason rotation) signed by `new` and recorded at `t + 1µs`,
    /// valid until then. Both events commit in one statement; every later event is
    /// recorded at `t + 1µs` or later (recorded times never decrease), so the old key's
    /// period covers exactly the events it signed and the new key's every event after.
    async fn rotate(&mut self, new: &Arc<LedgerSigningKey>) -> Result<KeyRotation, StoreError> {
        use ledger::keys::{KeyIntroduced, KeyRetired, RetireReason, KEY_INTRODUCED, KEY_RETIRED};
        if self.conn.is_none() {
            self.reconnect().await?;
        }
        let conn = self.conn.as_mut().ok_or(StoreError::Closed)?;
        let registry = crate::load_key_registry(&mut *conn).await?;
        let old = Arc::clone(&self.planner.key);
        let t1 = Timestamp::from_micros(crate::now_micros().max(self.planner.state.last_micros));
        let t2 = Timestamp::from_micros(
            t1.as_micros()
                .checked_add(1)
                .ok_or(StoreError::Corrupt { position: self.planner.state.head, reason: "time overflow" })?,
        );
        if registry.key_valid_at(&old.key_id(), t1).is_err() {
            return Err(StoreError::SigningKeyNotRegistered);
        }
        let mut next = registry;
        let mut rng = rand_core::OsRng;
        let intro =
            KeyIntroduced { public_key: new.verifying_key(), name: new.name().to_owned(), valid_from: t1 };
        let (intro_ev, intro_p) =
            next.next_event(KEY_INTRODUCED, intro.to_bytes()?, &old, Uuid::now_v7(), t1, &mut rng)?;
        // Applying checks every registry rule (e.g. a key introduced twice) before writing.
        next.apply(&intro_ev, &intro_p)?;
        let retire = KeyRetired { key_id: old.key_id(), valid_until: t2, reason: RetireReason::Rotation };
        let (retire_ev, retire_p) =
            next.next_event(KEY_RETIRED, retire.to_bytes()?, new, Uuid::now_v7(), t2, &mut rng)?;
        next.apply(&retire_ev, &retire_p)?;
        let introduced_at = self.planner.state.head;
        let rows = self.signed_rows(vec![(intro_ev, intro_p), (retire_ev, retire_p)])?;
        let conn = self.conn.as_mut().ok_or(StoreError::Closed)?;
        // The new key is adopted before the head moves, so the checkpointer signs the
        // rotated tree with it.
        match commit_rows(conn, &rows.0).await {
            Ok(()) => {
                self.adopt_key(Arc::clone(new));
                self.committed_signed(rows);
            }
            Err(e) => {
                tracing::warn!(error = %e, "key rotation commit failed; recovering");
                match self.find_out(&rows.0).await {
                    Some(true) => {
                        self.adopt_key(Arc::clone(new));
                        let st = &self.planner.state;
                        self.head_tx.send_replace(Head { size: st.head, root: st.frontier.root() });
                    }
                    Some(false) => return Err(e),
                    None => {
                        self.unsettled_key = Some(Arc::clone(new));
                        return Err(StoreError::OutcomeUnknown);
                    }
                }
            }
        }
        tracing::info!(old = %old.key_id(), new = %new.key_id(), "ledger key rotated");
        Ok(KeyRotation {
            old_key: old.key_id(),
            new_key: new.key_id(),
            introduced_at,
            retired_at: introduced_at + 1,
            valid_from: t1,
            valid_until: t2,
        })
    }
}

impl Planner {
    /// Plan and sign a batch; on a look-up failure, fail its requests (nothing was written).
    async fn prepare(&mut self, batch: Vec<AppendRequest>) -> Option<Prepared> {
        let (batch, plans, drafts) = self.draft_or_fail(batch).await?;
        self.finish(batch, plans, drafts)
    }

    /// Validate and position `batch`; on a look-up failure, fail its requests (nothing was
    /// written).
    async fn draft_or_fail(
        &mut self,
        batch: Vec<AppendRequest>,
    ) -> Option<(Vec<AppendRequest>, Vec<Plan>, Vec<Draft>)> {
        // A look-up connection that broke since its last use (say, the server restarted)
        // is replaced once before the batch is failed. Drafting twice is harmless: it only
        // reads, and caches the stream heads it read.
        let mut last_error = None;
        for _attempt in 0..2 {
            if self.lookup.is_none() {
                match connect_session(&self.connect).await {
                    Ok(c) => self.lookup = Some(c),
                    Err(e) => {
                        last_error = Some(e);
                        break;
                    }
                }
            }
            match self.draft(&batch).await {
                Ok((plans, drafts)) => return Some((batch, plans, drafts)),
                Err(e) => {
                    self.lookup = None;
                    let broken = matches!(&e, StoreError::Database(d) if is_connection_error(d));
                    last_error = Some(e);
                    if !broken {
                        break;
                    }
                }
            }
        }
        if let Some(e) = last_error {
            tracing::warn!(error = %e, "append planning failed");
        }
        fail_all(batch);
        None
    }

    /// Sign the drafts and move the optimistic state past them, as if they had committed.
    fn finish(
        &mut self,
        batch: Vec<AppendRequest>,
        plans: Vec<Plan>,
        drafts: Vec<Draft>,
    ) -> Option<Prepared> {
        let now = self.next_time();
        let mut bases = self.chain_bases(&drafts);
        let mut frontier = self.state.frontier.clone();
        let key = Arc::clone(&self.key);
        // A few signatures (about 15 µs each) are not worth moving this worker's other
        // tasks away for (`block_in_place`).
        let signed = if drafts.len() <= SIGN_INLINE_EVENTS {
            sign_drafts(drafts, &key, now, &mut bases, &mut frontier)
        } else {
            crate::cpu_bound(|| sign_drafts(drafts, &key, now, &mut bases, &mut frontier))
        };
        match signed {
            Ok(rows) => {
                self.state.last_micros = now.as_micros();
                Some(self.prepared(batch, plans, rows, frontier))
            }
            Err(e) => {
                tracing::warn!(error = %e, "append signing failed");
                fail_all(batch);
                None
            }
        }
    }

    /// A planned batch, with the optimistic state moved past its rows.
    fn prepared(
        &mut self,
        batch: Vec<AppendRequest>,
        plans: Vec<Plan>,
        rows: Vec<NewRow>,
        frontier: Frontier,
    ) -> Prepared {
        self.advance(&rows, frontier);
        let head = Head { size: self.state.head, root: self.state.frontier.root() };
        Prepared::new(batch, plans, rows, head)
    }

    /// Validate every request and assign positions and revisions to the new events.
    async fn draft(&mut self, batch: &[AppendRequest]) -> Result<(Vec<Plan>, Vec<Draft>), StoreError> {
        let conn = self.lookup.as_mut().ok_or(StoreError::Closed)?;
        // Idempotency: which ids already exist?
        // Look ids up where a retry must win over the revision check (non-`Any`
        // expectations), and for requests marked `look_up` (held back for an uncommitted
        // id, or re-queued after an id conflict). Other retries surface as a unique
        // violation at commit, with nothing written, and are planned again.
        let ids: Vec<Uuid> = batch
            .iter()
            .filter(|r| r.look_up || r.expected != ExpectedRevision::Any)
            .flat_map(|r| r.events.iter().map(|e| e.event_id))
            .collect();
        let existing = if ids.is_empty() { HashMap::new() } else { load_existing(conn, &ids).await? };
        // Stream heads not in the cache.
        let missing: Vec<String> = batch
            .iter()
            .filter(|r| !self.heads.contains_key(&r.stream))
            .map(|r| r.stream.as_str().to_owned())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if !missing.is_empty() {
            // One backward probe of the (stream_id, stream_revision) index per stream: never
            // reads a long stream whole, whatever plan is cached.
            let rows = sqlx::query(
                "SELECT s.id AS stream_id, e.stream_revision, e.event_hash FROM UNNEST($1::text[]) AS s(id) \
                 CROSS JOIN LATERAL (SELECT stream_revision, event_hash FROM ledger_events \
                 WHERE stream_id = s.id ORDER BY stream_revision DESC LIMIT 1) e",
            )
            .bind(&missing)
            .fetch_all(&mut *conn)
            .await?;
            for r in rows {
                let s: String = r.try_get("stream_id")?;
                let rev: i64 = r.try_get("stream_revision")?;
                let h: Vec<u8> = r.try_get("event_hash")?;
                let h: Hash =
                    h.try_into().map_err(|_| StoreError::Corrupt { position: 0, reason: "hash length" })?;
                let s = StreamId::new(s)?;
                self.heads.insert(s, (rev as u64, h));
            }
        }

        // Revisions as they will be after the requests planned so far.
        let mut tentative: HashMap<&StreamId, Option<u64>> = HashMap::new();
        let mut seen_in_batch: HashMap<Uuid, usize> = HashMap::new();
        let mut plans = Vec::with_capacity(batch.len());
        let mut drafts: Vec<Draft> = Vec::new();
        let mut next_pos = self.state.head;
        // Payload salts: a ChaCha20 stream seeded from the OS for each batch (one system
        // call per batch instead of one per event; salts stay unpredictable).
        let mut rng = <rand_chacha::ChaCha20Rng as rand_core::SeedableRng>::from_rng(rand_core::OsRng)
            .map_err(|_| StoreError::Database(sqlx::Error::WorkerCrashed))?;
        for (ri, req) in batch.iter().enumerate() {
            let plan = self.plan_one(req, batch, &existing, &mut seen_in_batch, &mut tentative);
            let plan = match plan {
                Some(p) => p,
                None => {
                    // Write: assign positions and revisions.
                    let base = tentative
                        .get(&req.stream)
                        .copied()
                        .unwrap_or_else(|| self.heads.get(&req.stream).map(|h| h.0));
                    let first_row = drafts.len();
                    let mut rev = base.map_or(0, |r| r + 1);
                    let mut payload_err = None;
                    for e in &req.events {
                        match Payload::new(e.payload.clone(), &mut rng) {
                            Ok(payload) => drafts.push(Draft {
                                position: next_pos,
                                stream: req.stream.clone(),
                                revision: rev,
                                event_id: e.event_id,
                                event_type: e.event_type.clone(),
                                schema_version: e.schema_version,
                                actor: e.actor.clone(),
                                payload,
                            }),
                            Err(err) => {
                                payload_err = Some(err);
                                break;
                            }
                        }
                        next_pos += 1;
                        rev += 1;
                    }
                    if let Some(err) = payload_err {
                        next_pos -= (drafts.len() - first_row) as u64;
                        drafts.truncate(first_row);
                        Plan::Fail(err.into())
                    } else {
                        tentative.insert(&req.stream, Some(rev - 1));
                        for e in &req.events {
                            seen_in_batch.insert(e.event_id, ri);
                        }
                        Plan::Write { first_row, count: req.events.len() }
                    }
                }
            };
            plans.push(plan);
        }

        Ok((plans, drafts))
    }

    /// The recorded time of the next batch: now, never before the last one.
    fn next_time(&self) -> Timestamp {
        Timestamp::from_micros(crate::now_micros().max(self.state.last_micros))
    }

    /// The hash each stream of `drafts` links to next (None: not in the cache, so new).
    fn chain_bases(&self, drafts: &[Draft]) -> HashMap<StreamId, Option<Hash>> {
        let mut bases = HashMap::new();
        for d in drafts {
            if !bases.contains_key(&d.stream) {
                bases.insert(d.stream.clone(), self.heads.get(&d.stream).map(|h| h.1));
            }
        }
        bases
    }

    /// Forget cached stream heads, except those of streams written by the batch in flight
    /// (not committed yet, so they could not be looked up).
    fn trim_heads(&mut self, in_flight: Option<&Prepared>) {
        let keep: HashMap<StreamId, (u64, Hash)> = in_flight
            .into_iter()
            .flat_map(|p| p.rows.iter())
            .filter_map(|r| self.heads.get(r.event.stream_id()).map(|h| (r.event.stream_id().clone(), *h)))
            .collect();
        self.heads = keep;
    }

    /// As if `rows` (ending at the frontier given) had committed.
    fn advance(&mut self, rows: &[NewRow], frontier: Frontier) {
        if let Some(last) = rows.last() {
            self.state.head = last.position + 1;
            self.state.frontier = frontier;
            for r in rows {
                self.heads.insert(r.event.stream_id().clone(), (r.event.stream_revision(), *r.event.hash()));
            }
        }
    }

    /// Settle a request without writing (replay, conflict, revision mismatch), or None to write it.
    fn plan_one<'a>(
        &self,
        req: &'a AppendRequest,
        batch: &[AppendRequest],
        existing: &HashMap<Uuid, Existing>,
        seen_in_batch: &mut HashMap<Uuid, usize>,
        tentative: &mut HashMap<&'a StreamId, Option<u64>>,
    ) -> Option<Plan> {
        if req.events.is_empty() {
            return Some(Plan::Fail(StoreError::EmptyAppend));
        }
        if req.events.len() > self.config.max_append_events
            || req.payload_bytes() > self.config.max_batch_bytes
        {
            return Some(Plan::Fail(StoreError::AppendTooLarge {
                events: req.events.len(),
                bytes: req.payload_bytes(),
                max: self.config.max_append_events,
                max_bytes: self.config.max_batch_bytes,
            }));
        }
        let mut ids = HashSet::with_capacity(req.events.len());
        for e in &req.events {
            if !ids.insert(e.event_id) {
                return Some(Plan::Fail(StoreError::DuplicateEventInAppend { event_id: e.event_id }));
            }
            if let Err(err) = ledger::ids::validate_event_id(e.event_id) {
                return Some(Plan::Fail(err.into()));
            }
        }
        // Idempotent retry of something already committed?
        let stored: Vec<Option<&Existing>> = req.events.iter().map(|e| existing.get(&e.event_id)).collect();
        if stored.iter().any(Option::is_some) {
            for (e, s) in req.events.iter().zip(&stored) {
                match s {
                    Some(s) if same_content(&req.stream, e, s) => {}
                    _ => return Some(Plan::Fail(StoreError::IdempotencyConflict { event_id: e.event_id })),
                }
            }
            let positions: Vec<u64> = stored.iter().flatten().map(|s| s.position).collect();
            let last_revision = stored.iter().flatten().map(|s| s.event.stream_revision()).max().unwrap_or(0);
            return Some(Plan::Replay(AppendResult {
                positions,
                last_revision,
                head: self.state.head,
                idempotent_replay: true,
            }));
        }
        // Retry of a request earlier in this same batch?
        if let Some(&earlier) = req.events.first().and_then(|e| seen_in_batch.get(&e.event_id)) {
            let same = batch[earlier].stream == req.stream && batch[earlier].events == req.events;
            return Some(if same {
                Plan::ReplayOf(earlier)
            } else {
                Plan::Fail(StoreError::IdempotencyConflict { event_id: req.events[0].event_id })
            });
        }
        if let Some(e) = req.events.iter().find(|e| seen_in_batch.contains_key(&e.event_id)) {
            return Some(Plan::Fail(StoreError::IdempotencyConflict { event_id: e.event_id }));
        }
        let current =
            tentative.get(&req.stream).copied().unwrap_or_else(|| self.heads.get(&req.stream).map(|h| h.0));
        if !req.expected.admits(current) {
            return Some(Plan::Fail(StoreError::WrongExpectedRevision {
                stream: req.stream.as_str().to_owned(),
                expected: req.expected,
                actual: current,
            }));
        }
        None
    }
}

/// Insert a batch in one transaction and commit (one WAL flush).
async fn commit_rows(conn: &mut PgConnection, rows: &[NewRow]) -> Result<(), StoreError> {
    match rows.last() {
        Some(last) => insert_rows(conn, rows, last.position + 1).await,
        None => Ok(()),
    }
}

/// Insert rows in one statement (in autocommit: one transaction, one WAL flush), with a
/// notification of the head the commit will reach (identical notifications of one
/// transaction are delivered once).
async fn insert_rows(conn: &mut PgConnection, rows: &[NewRow], head: u64) -> Result<(), StoreError> {
    let n = rows.len();
    let mut positions = Vec::with_capacity(n);
    let mut streams = Vec::with_capacity(n);
    let mut revisions = Vec::with_capacity(n);
    let mut ids = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    let mut times = Vec::with_capacity(n);
    let mut envelopes = Vec::with_capacity(n);
    let mut hashes = Vec::with_capacity(n);
    let mut nodes = Vec::with_capacity(n);
    let mut salts = Vec::with_capacity(n);
    let mut payloads = Vec::with_capacity(n);
    for r in rows {
        positions.push(r.position as i64);
        streams.push(r.event.stream_id().as_str().to_owned());
        revisions.push(r.event.stream_revision() as i64);
        ids.push(r.event.event_id());
        types.push(r.event.body().event_type.as_str().to_owned());
        times.push(r.event.recorded_at().to_datetime());
        envelopes.push(r.event.to_bytes());
        hashes.push(r.event.hash().to_vec());
        nodes.push(r.merkle_nodes.clone());
        salts.push(r.payload.salt().to_vec());
        payloads.push(r.payload.bytes().to_vec());
    }
    // One statement in autocommit: one round trip, one transaction, one WAL flush. The
    // gapless trigger runs at the end of the statement; payload positions are the ones
    // just assigned to the events (there is no per-row foreign key, see the migration).
    sqlx::query(
        "WITH e AS (INSERT INTO ledger_events (position, stream_id, stream_revision, event_id, event_type, \
         recorded_at, envelope, event_hash, merkle_nodes) \
         SELECT * FROM UNNEST($1::int8[], $2::text[], $3::int8[], $4::uuid[], $5::text[], $6::timestamptz[], \
         $7::bytea[], $8::bytea[], $9::bytea[]) RETURNING 1), \
         p AS (INSERT INTO ledger_payloads (position, salt, payload) \
         SELECT * FROM UNNEST($1::int8[], $10::bytea[], $11::bytea[]) RETURNING 1) \
         SELECT pg_notify($12, $13), (SELECT count(*) FROM e), (SELECT count(*) FROM p)",
    )
    .bind(&positions)
    .bind(&streams)
    .bind(&revisions)
    .bind(&ids)
    .bind(&types)
    .bind(&times)
    .bind(&envelopes)
    .bind(&hashes)
    .bind(&nodes)
    .bind(&salts)
    .bind(&payloads)
    .bind(NOTIFY_CHANNEL)
    .bind(head.to_string())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Commit `p` and meanwhile plan (and sign) the next batch: `batch` at once, then every
/// request that arrives before the commit returns, so that the next commit starts the
/// moment this one ends. A request then waits for the rest of one commit before its own
/// starts, not for a whole further commit. Requests touching an event id still uncommitted
/// (in `p` or in the next batch) wait in `carry` for its outcome; so do requests beyond the
/// batch limits. A rotation request stops the gathering: it runs once nothing is in flight.
///
/// Planning is never cancelled half-way: the commit is polled while a plan runs, and new
/// requests are taken only between plans.
async fn commit_and_plan_next(
    conn: Option<&mut PgConnection>,
    planner: &mut Planner,
    rx: &mut mpsc::Receiver<Request>,
    p: &Prepared,
    batch: Vec<AppendRequest>,
    carry: &mut VecDeque<AppendRequest>,
    rotation: &mut Option<RotateRequest>,
) -> (Result<(), StoreError>, Option<Prepared>) {
    let commit = async {
        match conn {
            Some(c) => commit_rows(c, &p.rows).await,
            None => Err(StoreError::Closed),
        }
    };
    tokio::pin!(commit);
    let (max_events, max_bytes) = (planner.config.max_batch_events, planner.config.max_batch_bytes);
    let stats = Arc::clone(&planner.stats);
    let mut committed: Option<Result<(), StoreError>> = None;
    let mut next: Option<Prepared> = None;
    let mut taken_events: usize = batch.iter().map(|r| r.events.len()).sum();
    let mut taken_bytes: usize = batch.iter().map(AppendRequest::payload_bytes).sum();
    // Take new requests only while nothing waits in `carry` (order is kept) and no
    // rotation is pending.
    let mut open = rotation.is_none() && carry.is_empty();
    let mut pending = batch;
    loop {
        if !pending.is_empty() {
            let prep = planner.prepare(std::mem::take(&mut pending));
            tokio::pin!(prep);
            // The commit is polled first, so its statement is on its way before this plan
            // signs (on this task).
            let planned = loop {
                tokio::select! {
                    biased;
                    c = &mut commit, if committed.is_none() => committed = Some(c),
                    n = &mut prep => break n,
                }
            };
            if let Some(n) = planned {
                if next.is_some() {
                    stats.merged_parts.fetch_add(1, Ordering::Relaxed);
                }
                merge_prepared(&mut next, n);
            }
        }
        if let Some(c) = committed {
            return (c, next);
        }
        if !open {
            return (commit.await, next);
        }
        let first = tokio::select! {
            biased;
            c = &mut commit => {
                committed = Some(c);
                None
            }
            r = rx.recv() => r,
        };
        let mut incoming = first;
        while let Some(req) = incoming.take() {
            match req {
                Request::Append(r) => {
                    let (n, b) = (r.events.len(), r.payload_bytes());
                    let touches_uncommitted = r.events.iter().any(|e| {
                        p.ids.contains(&e.event_id)
                            || next.as_ref().is_some_and(|x| x.ids.contains(&e.event_id))
                    });
                    if touches_uncommitted || taken_events + n > max_events || taken_bytes + b > max_bytes {
                        // Waits, in order, for the next gathering.
                        let mut r = r;
                        r.look_up |= touches_uncommitted;
                        carry.push_back(r);
                        open = false;
                        break;
                    }
                    taken_events += n;
                    taken_bytes += b;
                    pending.push(r);
                }
                Request::Rotate(r) => {
                    *rotation = Some(r);
                    open = false;
                    break;
                }
            }
            incoming = rx.try_recv().ok();
        }
        if committed.is_none() && pending.is_empty() && !open {
            // Nothing more to plan: only the commit remains.
            return (commit.await, next);
        }
        if rx.is_closed() && rx.is_empty() {
            open = false;
        }
    }
}

/// Append the plan of `b` (planned on top of `a`) to `a`.
fn merge_prepared(a: &mut Option<Prepared>, b: Prepared) {
    let Some(a) = a else {
        *a = Some(b);
        return;
    };
    let (row_base, req_base) = (a.rows.len(), a.batch.len());
    a.plans.extend(b.plans.into_iter().map(|plan| match plan {
        Plan::Write { first_row, count } => Plan::Write { first_row: first_row + row_base, count },
        Plan::ReplayOf(i) => Plan::ReplayOf(i + req_base),
        other => other,
    }));
    a.batch.extend(b.batch);
    a.rows.extend(b.rows);
    a.ids.extend(b.ids);
    a.head = b.head;
}

/// Did the connection itself fail (rather than the statement)? I/O and protocol errors,
/// and the server's own: connection exceptions (SQLSTATE class 08) and operator
/// intervention such as `pg_terminate_backend` or a shutdown (57P01-57P03).
fn is_connection_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::Tls(_) | sqlx::Error::WorkerCrashed => {
            true
        }
        sqlx::Error::Database(d) => d.code().is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
        _ => false,
    }
}

/// Did the commit fail only because an event id is already stored (a retry of an event
/// planned without a look-up)? Then nothing was written.
fn is_event_id_conflict(e: &StoreError) -> bool {
    match e {
        StoreError::Database(sqlx::Error::Database(d)) => {
            d.constraint() == Some("ledger_events_event_id_key")
        }
        _ => false,
    }
}

/// Answer every caller of a committed batch. `head` overrides the head reported to
/// replays (after a reload).
fn settle(p: Prepared, head: Option<u64>) {
    let head = head.unwrap_or(p.head.size);
    let mut results: Vec<Result<AppendResult, StoreError>> = Vec::with_capacity(p.plans.len());
    for plan in p.plans {
        results.push(match plan {
            Plan::Write { first_row, count } => {
                let slice = &p.rows[first_row..first_row + count];
                Ok(AppendResult {
                    positions: slice.iter().map(|r| r.position).collect(),
                    last_revision: slice.last().map_or(0, |r| r.event.stream_revision()),
                    head,
                    idempotent_replay: false,
                })
            }
            Plan::Replay(r) => Ok(AppendResult { head: head.max(r.head), ..r }),
            Plan::ReplayOf(i) => match results.get(i) {
                Some(Ok(r)) => Ok(AppendResult { idempotent_replay: true, ..r.clone() }),
                _ => Err(StoreError::OutcomeUnknown),
            },
            Plan::Fail(e) => Err(e),
        });
    }
    for (req, r) in p.batch.into_iter().zip(results) {
        let _ = req.reply.send(r);
    }
}

/// A planned batch was not written: replays and refusals stand (a replay reports `head`,
/// the committed head, not the optimistic one it was planned at); writes fail, and
/// retrying them is safe.
fn answer_unwritten(batch: Vec<AppendRequest>, plans: Vec<Plan>, head: u64) {
    for (req, plan) in batch.into_iter().zip(plans) {
        let r = match plan {
            Plan::Fail(e) => Err(e),
            Plan::Replay(r) => Ok(AppendResult { head, ..r }),
            _ => Err(StoreError::Database(sqlx::Error::WorkerCrashed)),
        };
        let _ = req.reply.send(r);
    }
}

/// Nothing of this batch was written: tell every caller (retrying is safe).
fn fail_all(batch: Vec<AppendRequest>) {
    for r in batch {
        let _ = r.reply.send(Err(StoreError::Database(sqlx::Error::PoolTimedOut)));
    }
}

impl Writer {
    /// The commit failed or its outcome is unknown: reconnect, reload the state from the
    /// database and find out whether the batch is there, then answer truthfully.
    async fn recover(&mut self, p: Prepared, err: StoreError) {
        tracing::warn!(error = %err, events = p.rows.len(), "batch commit failed; recovering");
        let committed = self.find_out(&p.rows).await;
        match committed {
            Some(true) => {
                let head = Head { size: self.planner.state.head, root: self.planner.state.frontier.root() };
                self.head_tx.send_replace(head);
                self.planner.stats.batches.fetch_add(1, Ordering::Relaxed);
                settle(p, Some(head.size));
            }
            Some(false) => answer_unwritten(p.batch, p.plans, self.planner.state.head),
            None => {
                for req in p.batch {
                    let _ = req.reply.send(Err(StoreError::OutcomeUnknown));
                }
            }
        }
    }

    /// After a failed commit of `rows`: reconnect, reload the state from the database and
    /// find out whether the rows are there (None: the database stayed unreachable).
    async fn find_out(&mut self, rows: &[NewRow]) -> Option<bool> {
        self.conn = None;
        // The batch is there iff the rows at its first and last positions are its rows.
        let probe = rows.first().zip(rows.last()).map(|(a, b)| {
            ([a.position as i64, b.position as i64], [a.event.hash().to_vec(), b.event.hash().to_vec()])
        });
        let mut committed = None;
        for attempt in 0..self.planner.config.recovery_attempts {
            match self.reconnect().await {
                Ok(()) => match (self.conn.as_mut(), probe.as_ref()) {
                    (Some(conn), Some((positions, hashes))) => {
                        match sqlx::query_scalar::<_, i64>(
                            "SELECT count(*) FROM ledger_events WHERE (position = $1 AND event_hash = $3) \
                             OR (position = $2 AND event_hash = $4)",
                        )
                        .bind(positions[0])
                        .bind(positions[1])
                        .bind(&hashes[0])
                        .bind(&hashes[1])
                        .fetch_one(conn)
                        .await
                        {
                            Ok(found) => {
                                let want = if positions[0] == positions[1] { 1 } else { 2 };
                                committed = Some(found == want);
                                break;
                            }
                            Err(_) => self.conn = None,
                        }
                    }
                    _ => {
                        committed = Some(false);
                        break;
                    }
                },
                Err(e) => tracing::warn!(error = %e, attempt, "writer reconnect failed"),
            }
            tokio::time::sleep(Duration::from_millis(100 * (u64::from(attempt) + 1))).await;
        }
        committed
    }
}

/// Sign `drafts` (in position order) and build their rows: chains per stream, in parallel
/// across streams. `bases` holds each stream's link to the event before (None: a new
/// stream) and is moved to the last hash signed; `frontier` takes the new leaves.
fn sign_drafts(
    drafts: Vec<Draft>,
    key: &LedgerSigningKey,
    now: Timestamp,
    bases: &mut HashMap<StreamId, Option<Hash>>,
    frontier: &mut Frontier,
) -> Result<Vec<NewRow>, StoreError> {
    let mut chains: HashMap<&StreamId, Vec<usize>> = HashMap::new();
    for (i, d) in drafts.iter().enumerate() {
        chains.entry(&d.stream).or_default().push(i);
    }
    let chains: Vec<(Option<Hash>, Vec<usize>)> =
        chains.into_iter().map(|(s, v)| (bases.get(s).copied().flatten(), v)).collect();
    let key_id = key.key_id();
    let sign_chain = |(base, idxs): &(Option<Hash>, Vec<usize>)| -> Vec<(usize, Result<SignedEvent, ledger::LedgerError>)> {
            let mut prev = *base;
            idxs.iter()
                .map(|&i| {
                    let d = &drafts[i];
                    let body = EventBody {
                        stream_id: d.stream.clone(),
                        stream_revision: d.revision,
                        event_id: d.event_id,
                        event_type: d.event_type.clone(),
                        schema_version: d.schema_version,
                        recorded_at: now,
                        actor: d.actor.clone(),
                        payload_commitment: d.payload.commitment(),
                        prev_hash: if d.revision == 0 {
                            GENESIS_PREV_HASH
                        } else {
                            prev.unwrap_or(GENESIS_PREV_HASH)
                        },
                        key_id,
                    };
                    let r = sign_body(body, key, key_id);
                    if let Ok(ev) = &r {
                        prev = Some(*ev.hash());
                    }
                    (i, r)
                })
                .collect()
        };
    // One chain, or a few events: nothing to gain from rayon's threads.
    let signed: Vec<Vec<(usize, Result<SignedEvent, ledger::LedgerError>)>> =
        if chains.len() <= 1 || drafts.len() <= SIGN_INLINE_EVENTS {
            chains.iter().map(sign_chain).collect()
        } else {
            chains.par_iter().map(sign_chain).collect()
        };
    let mut events: Vec<Option<SignedEvent>> = vec![None; drafts.len()];
    for (i, r) in signed.into_iter().flatten() {
        // Signing only fails on invalid input, which validation already excluded.
        events[i] = Some(r?);
    }
    let mut rows = Vec::with_capacity(drafts.len());
    for (d, ev) in drafts.into_iter().zip(events) {
        let ev = ev.ok_or(StoreError::Closed)?;
        bases.insert(d.stream.clone(), Some(*ev.hash()));
        let nodes = frontier
            .append(merkle::leaf_hash(ev.hash()))
            .map_err(|_| StoreError::Corrupt { position: d.position, reason: "Merkle tree full" })?;
        let mut merkle_nodes = Vec::with_capacity(32 * nodes.len());
        for (id, h) in nodes.iter().filter(|(id, _)| id.level > 0) {
            debug_assert_eq!(((id.index + 1) << id.level) - 1, d.position);
            merkle_nodes.extend_from_slice(h);
        }
        rows.push(NewRow { position: d.position, event: ev, payload: d.payload, merkle_nodes });
    }
    Ok(rows)
}

fn sign_body(
    body: EventBody,
    key: &LedgerSigningKey,
    key_id: KeyId,
) -> Result<SignedEvent, ledger::LedgerError> {
    debug_assert_eq!(key.key_id(), key_id);
    body.sign(key)
}

fn same_content(stream: &StreamId, p: &ProposedEvent, s: &Existing) -> bool {
    let b = s.event.body();
    &b.stream_id == stream
        && b.event_type == p.event_type
        && b.schema_version == p.schema_version
        && b.actor == p.actor
        && s.payload.as_deref() == Some(p.payload.as_slice())
}

async fn load_existing(conn: &mut PgConnection, ids: &[Uuid]) -> Result<HashMap<Uuid, Existing>, StoreError> {
    // Ids only (the unique index answers; almost always no row). Payloads are fetched by
    // primary key for the rare hits: joining here made the planner scan all payloads.
    let rows = sqlx::query("SELECT position, envelope FROM ledger_events WHERE event_id = ANY($1)")
        .bind(ids)
        .fetch_all(&mut *conn)
        .await?;
    let mut out = HashMap::with_capacity(rows.len());
    if rows.is_empty() {
        return Ok(out);
    }
    let mut positions = Vec::with_capacity(rows.len());
    for r in rows {
        let position: i64 = r.try_get("position")?;
        let envelope: Vec<u8> = r.try_get("envelope")?;
        let event = SignedEvent::from_bytes(&envelope).map_err(|_| StoreError::Corrupt {
            position: position as u64,
            reason: "envelope does not decode",
        })?;
        positions.push(position);
        out.insert(event.event_id(), Existing { position: position as u64, event, payload: None });
    }
    let payloads = sqlx::query("SELECT position, payload FROM ledger_payloads WHERE position = ANY($1)")
        .bind(&positions)
        .fetch_all(&mut *conn)
        .await?;
    let mut by_pos: HashMap<u64, Vec<u8>> = HashMap::with_capacity(payloads.len());
    for r in payloads {
        let p: i64 = r.try_get("position")?;
        by_pos.insert(p as u64, r.try_get("payload")?);
    }
    for e in out.values_mut() {
        e.payload = by_pos.remove(&e.position);
    }
    Ok(out)
}

/// Rows of events signed elsewhere, with the frontier as it will be after them.
struct SignedRows(Vec<NewRow>, Frontier);

impl Writer {
    /// Append events signed elsewhere (system events such as `$keys`), as their own batch
    /// in one statement. The caller built them against the current stream heads.
    pub(crate) async fn append_signed(
        &mut self,
        events: Vec<(SignedEvent, Payload)>,
    ) -> Result<(), StoreError> {
        let rows = self.signed_rows(events)?;
        let conn = self.conn.as_mut().ok_or(StoreError::Closed)?;
        commit_rows(conn, &rows.0).await?;
        self.committed_signed(rows);
        Ok(())
    }

    /// Positions and Merkle nodes for events signed elsewhere, from the current head.
    fn signed_rows(&self, events: Vec<(SignedEvent, Payload)>) -> Result<SignedRows, StoreError> {
        let mut frontier = self.planner.state.frontier.clone();
        let mut rows = Vec::with_capacity(events.len());
        for (position, (event, payload)) in (self.planner.state.head..).zip(events) {
            let nodes = frontier
                .append(merkle::leaf_hash(event.hash()))
                .map_err(|_| StoreError::Corrupt { position, reason: "Merkle tree full" })?;
            let merkle_nodes: Vec<u8> =
                nodes.iter().filter(|(id, _)| id.level > 0).flat_map(|(_, h)| *h).collect();
            rows.push(NewRow { position, event, payload, merkle_nodes });
        }
        Ok(SignedRows(rows, frontier))
    }

    /// The state after `rows` committed.
    fn committed_signed(&mut self, SignedRows(rows, frontier): SignedRows) {
        let Some(last) = rows.last() else { return };
        let st = &mut self.planner.state;
        st.head = last.position + 1;
        st.frontier = frontier;
        for row in &rows {
            st.last_micros = st.last_micros.max(row.event.recorded_at().as_micros());
            self.planner
                .heads
                .insert(row.event.stream_id().clone(), (row.event.stream_revision(), *row.event.hash()));
        }
        self.head_tx.send_replace(Head { size: st.head, root: st.frontier.root() });
    }
}
