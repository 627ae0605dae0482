//! The single writer: group commit of concurrent appends, gapless positions in commit
//! order, hash links, Merkle nodes, and recovery after connection loss.
//!
//! One task owns one dedicated connection that holds the ledger's session advisory lock,
//! so it is the only writer of the ledger (across processes too). Requests queue on a
//! channel; the task drains everything queued (up to `max_batch_events`), validates each
//! request against the in-memory stream heads, signs the new events (in parallel across
//! streams), and inserts the whole batch in one transaction: one COMMIT, one WAL flush.
//! Callers are answered only after COMMIT returned (synchronous_commit on).
//!
//! # Batching
//!
//! The writer drains every queued append (group commit, capped by events and bytes,
//! [`gather`]), checks expected revisions against in-memory stream heads ([`plan`]), signs
//! new events in parallel across streams (chains within a stream are sequential: each
//! `prev_hash` is the previous signed hash, [`sign`]), appends them to the Merkle
//! frontier, and writes the whole batch with **one autocommit statement** ([`commit`]): a
//! CTE whose two `UNNEST` inserts (events, and payloads at the same positions) and
//! `pg_notify` share one round trip, one transaction and one WAL flush.
//!
//! The stream-head look-up is one backward index probe per stream (`LATERAL ... LIMIT 1`).
//! The cache of stream heads is trimmed past `stream_cache_size` to the streams of the
//! batch in flight. Payload salts come from a ChaCha20 stream seeded from the OS for each
//! planned part. `writer_stats()` counts batches, merged parts and streamed batches and
//! chunks.
//!
//! # Idempotency is optimistic
//!
//! Event ids are looked up only where a retry must beat the revision check (requests with
//! an expected revision other than `Any`); any other retry of a stored event fails the
//! statement on the unique index `ledger_events_event_id_key` with nothing written, and the
//! writer then reloads its state and plans the batch (and the one planned on top of it)
//! again, looking up the ids of every request re-queued (a request held back for touching
//! an uncommitted id is looked up too).
//!
//! # Pipelining, streaming, recovery
//!
//! While batch k commits, the [`Planner`] looks up and signs batch k+1 on a second
//! connection ([`pipeline`]). A large batch with nothing else waiting is not pipelined but
//! streamed: signed in chunks, each inserted as soon as it is signed ([`stream`]). After a
//! failed commit the writer reconnects, reloads its state and finds out whether the batch
//! is there before it answers ([`recovery`]). Key rotation runs between batches
//! ([`rotate`]).
//!
//! # Sessions
//!
//! The writer's sessions run with `enable_seqscan = off`: everything the writer reads (and
//! the gapless trigger's two probes) is found through an index, and with sequential scans
//! off the generic plans PostgreSQL caches after a few runs use those indexes even when
//! they were made while the table was small and analysed (a plain session kept a
//! sequential-scan plan for the trigger's probe until the next ANALYZE); forcing custom
//! plans instead cost about 0.3 ms per commit.

mod commit;
mod gather;
mod pipeline;
mod plan;
mod recovery;
mod rotate;
mod sign;
mod stream;
#[cfg(test)]
pub(crate) mod test_support;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ledger::envelope::Payload;
use ledger::merkle::Frontier;
use ledger::{Hash, LedgerSigningKey, SignedEvent, StreamId};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use crate::error::StoreError;
use crate::types::{AppendResult, ExpectedRevision, KeyRotation, ProposedEvent};
use crate::{Head, StoreConfig};

use commit::{commit_rows, fail_all, settle};
use gather::{requeue_front, Gathered};
use pipeline::Pipeline;
pub(crate) use recovery::connect_writer;
use recovery::is_event_id_conflict;
use stream::STREAM_MIN_EVENTS;

/// Advisory lock key held by the ledger's writer ("CHLEDGER").
pub(crate) const WRITER_LOCK: i64 = 0x4348_4c45_4447_4552;
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

/// How the writer settles one request of a batch.
#[derive(Debug)]
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
            let idle = in_flight.is_none();
            let mut batch = match self.gather(idle, &mut carry, &mut rotation).await {
                Gathered::Batch(b) => b,
                Gathered::Rotation => continue,
                Gathered::Closed => break,
            };
            // After an unknown outcome the state may hold phantom batches: reload it first.
            if self.conn.is_none() && in_flight.is_none() {
                if let Err(e) = self.reconnect().await {
                    tracing::warn!(error = %e, "writer cannot reach the database");
                    fail_all(batch);
                    fail_all(carry.drain(..));
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
                Some(p) => in_flight = self.commit_in_flight(p, batch, &mut carry, &mut rotation).await,
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

    /// Commit `p` while `batch` (and what arrives meanwhile) is planned; answer `p`'s
    /// callers, and return the next batch to commit.
    async fn commit_in_flight(
        &mut self,
        p: Prepared,
        batch: Vec<AppendRequest>,
        carry: &mut VecDeque<AppendRequest>,
        rotation: &mut Option<RotateRequest>,
    ) -> Option<Prepared> {
        let pipeline = Pipeline {
            conn: self.conn.as_mut(),
            planner: &mut self.planner,
            rx: &mut self.rx,
            carry: &mut *carry,
            rotation,
        };
        let (committed, next) = pipeline.commit_and_plan_next(&p, batch).await;
        match committed {
            Ok(()) => {
                self.publish(&p);
                self.planner.stats.batches.fetch_add(1, Ordering::Relaxed);
                settle(p, None);
                return next;
            }
            Err(e) if is_event_id_conflict(&e) => {
                // Nothing was written: plan both batches again, with look-ups.
                if let Some(n) = next {
                    requeue_front(carry, n.batch, true);
                }
                self.replan_after_id_conflict(p.batch, carry).await;
            }
            Err(e) => {
                // The next batch was planned on top of this one: plan it again.
                if let Some(n) = next {
                    requeue_front(carry, n.batch, false);
                }
                self.recover(p, e).await;
            }
        }
        None
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

    fn publish(&self, p: &Prepared) {
        if !p.rows.is_empty() {
            self.head_tx.send_replace(p.head);
        }
    }
}
