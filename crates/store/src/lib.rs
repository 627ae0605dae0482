//! # Chartledger event store
//!
//! PostgreSQL storage of the ledger format (`ledger` crate) with the client semantics of
//! EventStoreDB/Kurrent: streams with expected revisions, idempotent appends by event id,
//! a global `$all` log with gapless positions in commit order, reads, catch-up
//! subscriptions, and on top of it the RFC 9162 Merkle log: inclusion and consistency
//! proofs and signed checkpoints. See `ARCHITECTURE.md` for the design and invariants.

pub mod error;
pub mod proofs;
pub mod types;
pub mod verify;

mod checkpointer;
mod nodes;
mod subscription;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use ledger::keys::{KeyIntroduced, KeyRegistry, KEY_INTRODUCED};
use ledger::merkle::{self};
use ledger::{Hash, LedgerSigningKey, Payload, SignedEvent, StreamId, Timestamp};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use tokio::sync::{mpsc, oneshot, watch};

pub use error::StoreError;
pub use subscription::Subscription;
pub use types::{
    AllFilter, AppendResult, Direction, ExpectedRevision, KeyRotation, ProposedEvent, RecordedEvent,
    StoredCheckpoint, WriterStats,
};

/// The columns `decode_row` reads, from events joined with their payloads; callers
/// append the `WHERE` clause (and may first add `AND ...` to the join condition).
macro_rules! select_events {
    () => {
        "SELECT e.position, e.stream_id, e.stream_revision, e.event_id, e.envelope, e.event_hash, \
         p.salt, p.payload FROM ledger_events e LEFT JOIN ledger_payloads p ON p.position = e.position "
    };
}
pub(crate) use select_events;

/// The migrations of the event store (top-level `migrations/`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// Tuning and identity of a store.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Checkpoint origin line (names this ledger), e.g. `example.org/chartledger/main`.
    pub origin: String,
    /// Write a signed checkpoint at least every this many events...
    pub checkpoint_every_events: u64,
    /// ...and at most this long after the head moved.
    pub checkpoint_interval: Duration,
    /// Group commit: the most events one transaction takes.
    pub max_batch_events: usize,
    /// The most events one append may carry.
    pub max_append_events: usize,
    /// Subscriptions poll this often when no notification arrives.
    pub poll_interval: Duration,
    /// Stream heads kept in the writer's memory.
    pub stream_cache_size: usize,
    /// Reconnection attempts after a failed commit before answering "outcome unknown".
    pub recovery_attempts: u32,
    /// Capacity of the append queue.
    pub queue_capacity: usize,
    /// Group commit: the most payload bytes one transaction takes (PostgreSQL caps a
    /// message at 1 GiB; one append larger than this is refused).
    pub max_batch_bytes: usize,
    /// Apply the migrations when opening. Turn off when the application role is not the
    /// schema owner (see deploy/README.md) and migrations run separately.
    pub run_migrations: bool,
    /// How long the writer waits for the ledger lock when reconnecting after a failure.
    pub recovery_lock_timeout: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            origin: "chartledger.local/ledger".into(),
            checkpoint_every_events: 10_000,
            checkpoint_interval: Duration::from_millis(1000),
            max_batch_events: 4096,
            max_append_events: 10_000,
            poll_interval: Duration::from_millis(500),
            stream_cache_size: 200_000,
            recovery_attempts: 50,
            queue_capacity: 4096,
            max_batch_bytes: 64 << 20,
            run_migrations: true,
            recovery_lock_timeout: Duration::from_secs(5),
        }
    }
}

/// The ledger head: tree size (= next position) and Merkle root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    pub size: u64,
    pub root: Hash,
}

/// A handle on the event store. Cheap to clone; the writer stops when the last handle drops.
#[derive(Clone, Debug)]
pub struct EventStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: PgPool,
    tx: mpsc::Sender<writer::Request>,
    head_rx: watch::Receiver<Head>,
    /// The current signing key (changed by the writer when it rotates the key).
    key_rx: watch::Receiver<Arc<LedgerSigningKey>>,
    config: StoreConfig,
    stats: Arc<writer::Counters>,
    _checkpointer: checkpointer::Handle,
}

impl EventStore {
    /// Apply the migrations.
    pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
        MIGRATOR.run(pool).await?;
        Ok(())
    }

    /// Open the store: migrate, become the ledger's writer (waiting while another process
    /// is), register the signing key as the anchor of an empty ledger (or check that it is
    /// valid in the registry), and start group commit and checkpointing. To change the key
    /// of an existing ledger, open it with the current key and call [`Self::rotate_key`].
    pub async fn open(pool: PgPool, key: LedgerSigningKey, config: StoreConfig) -> Result<Self, StoreError> {
        if config.run_migrations {
            Self::migrate(&pool).await?;
        }
        // Named for operators (`pg_stat_activity.application_name`).
        let writer_connect = pool.connect_options().as_ref().clone().application_name("chartledger-writer");
        let connect = pool.connect_options().as_ref().clone().application_name("chartledger-planner");
        let (conn, state) = writer::connect_writer(&writer_connect, None).await?;
        let key = Arc::new(key);
        let (tx, rx) = mpsc::channel(config.queue_capacity);
        let (head_tx, head_rx) = watch::channel(Head { size: state.head, root: state.frontier.root() });
        let (key_tx, key_rx) = watch::channel(Arc::clone(&key));
        let stats = Arc::new(writer::Counters::default());
        let mut w = writer::Writer {
            conn: Some(conn),
            connect: writer_connect,
            rx,
            head_tx,
            key_tx,
            unsettled_key: None,
            planner: writer::Planner {
                lookup: None,
                connect,
                key: Arc::clone(&key),
                state,
                heads: Default::default(),
                config: config.clone(),
                stats: Arc::clone(&stats),
            },
        };
        let registry = load_key_registry(&pool).await?;
        let registry = if registry.anchor().is_none() {
            w.bootstrap_anchor(&registry).await?;
            load_key_registry(&pool).await?
        } else {
            registry
        };
        // Valid now (the writer never records a time before the last one), and registered
        // under the name it signs checkpoints with.
        let now = Timestamp::from_micros(now_micros().max(w.planner.state.last_micros));
        match registry.key_valid_at(&key.key_id(), now) {
            Ok(r) if r.name == key.name() => {}
            _ => return Err(StoreError::SigningKeyNotRegistered),
        }
        tokio::spawn(w.run());
        let cp = checkpointer::spawn(pool.clone(), key_rx.clone(), config.clone(), head_rx.clone());
        Ok(Self { inner: Arc::new(Inner { pool, tx, head_rx, key_rx, config, stats, _checkpointer: cp }) })
    }

    /// Rotate the ledger key to `new`, live: the writer lets everything queued before this
    /// call commit (signed with the current key), then commits, in one statement, the new
    /// key's `key.introduced` (signed by the current key, valid from its recorded time `t`)
    /// and the current key's `key.retired` for rotation (signed by the new key, so the
    /// registry also holds proof that the new key's holder signed; valid until `t + 1µs`,
    /// its recorded time). Every later event and checkpoint is signed with the new key.
    /// Old events keep verifying: the retired key stays in the registry, valid for the
    /// period in which it signed.
    ///
    /// Processes that open the ledger afterwards must use the new key (the old one is no
    /// longer valid). Fails without writing anything when `new` was ever registered.
    pub async fn rotate_key(&self, new: LedgerSigningKey) -> Result<KeyRotation, StoreError> {
        let (reply, rx) = oneshot::channel();
        let req = writer::RotateRequest { key: Arc::new(new), reply };
        self.inner.tx.send(writer::Request::Rotate(req)).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// What the writer has done since this store opened.
    pub fn writer_stats(&self) -> WriterStats {
        self.inner.stats.snapshot()
    }

    /// The key the store signs with now.
    fn current_key(&self) -> Arc<LedgerSigningKey> {
        Arc::clone(&self.inner.key_rx.borrow())
    }

    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// The ledger's current signing key's public half.
    pub fn verifying_key(&self) -> ed25519_dalek::VerifyingKey {
        self.current_key().verifying_key()
    }

    /// The ledger's current signing key's id.
    pub fn key_id(&self) -> ledger::KeyId {
        self.current_key().key_id()
    }

    /// The C2SP verifier key text for this ledger's checkpoints (of the current key).
    pub fn note_verifier(&self) -> Result<ledger::note::NoteVerifier, StoreError> {
        Ok(self.current_key().note_signer()?.verifier())
    }

    /// Size and root of the tree as last committed by this process's writer.
    pub fn head(&self) -> Head {
        *self.inner.head_rx.borrow()
    }

    /// Append events to one stream, atomically, if it is at the expected revision.
    /// Answers after the events are durably committed.
    pub async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedRevision,
        events: Vec<ProposedEvent>,
    ) -> Result<AppendResult, StoreError> {
        if stream.as_str() == StreamId::KEYS {
            return Err(StoreError::ReservedStream(stream.as_str().to_owned()));
        }
        let (reply, rx) = oneshot::channel();
        let req = writer::AppendRequest { stream: stream.clone(), expected, events, reply, look_up: false };
        self.inner.tx.send(writer::Request::Append(req)).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Up to `max` events of a stream from `from_revision`, forwards or backwards.
    pub async fn read_stream(
        &self,
        stream: &StreamId,
        from_revision: u64,
        direction: Direction,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let sql = match direction {
            Direction::Forwards => {
                concat!(
                    select_events!(),
                    "WHERE stream_id = $1 AND stream_revision >= $2 ORDER BY stream_revision LIMIT $3"
                )
            }
            Direction::Backwards => {
                concat!(
                    select_events!(),
                    "WHERE stream_id = $1 AND stream_revision <= $2 ORDER BY stream_revision DESC LIMIT $3"
                )
            }
        };
        let rows = sqlx::query(sql)
            .bind(stream.as_str())
            .bind(clamp_i64(from_revision))
            .bind(clamp_i64(max as u64))
            .fetch_all(&self.inner.pool)
            .await?;
        rows.iter().map(decode_row).collect()
    }

    /// The stream as it stood at `at`: every event recorded at or before that time.
    ///
    /// Recorded times never decrease along the log (the writer's invariant), so this is a
    /// prefix of the stream: find its last revision, then read the prefix in revision
    /// order along the primary stream index (a time-filtered join made the planner hash
    /// the whole payload table and sort on disk).
    pub async fn read_stream_as_of(
        &self,
        stream: &StreamId,
        at: Timestamp,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let last: Option<i64> = sqlx::query_scalar(
            "SELECT max(stream_revision) FROM ledger_events WHERE stream_id = $1 AND recorded_at <= $2",
        )
        .bind(stream.as_str())
        .bind(at.to_datetime())
        .fetch_one(&self.inner.pool)
        .await?;
        match last.and_then(|l| u64::try_from(l).ok()) {
            Some(last) => self.read_stream_through(stream, Some(last)).await,
            None => Ok(Vec::new()),
        }
    }

    /// Every event of a stream, in revision order.
    pub async fn read_whole_stream(&self, stream: &StreamId) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read_stream_through(stream, None).await
    }

    /// The stream from revision 0 through `last` (or its end), page by page.
    async fn read_stream_through(
        &self,
        stream: &StreamId,
        last: Option<u64>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        const PAGE: usize = 4096;
        let mut out: Vec<RecordedEvent> = Vec::new();
        loop {
            let remaining = last.map_or(u64::MAX, |l| (l + 1).saturating_sub(out.len() as u64));
            let want = usize::try_from(remaining).unwrap_or(PAGE).min(PAGE);
            if want == 0 {
                return Ok(out);
            }
            let page = self.read_stream(stream, out.len() as u64, Direction::Forwards, want).await?;
            let n = page.len();
            out.extend(page);
            if n < want {
                return Ok(out);
            }
        }
    }

    /// The stored event with this id, if any (to answer a client's retry).
    pub async fn event_by_id(&self, event_id: uuid::Uuid) -> Result<Option<RecordedEvent>, StoreError> {
        let row = sqlx::query(concat!(select_events!(), "WHERE event_id = $1"))
            .bind(event_id)
            .fetch_optional(&self.inner.pool)
            .await?;
        row.as_ref().map(decode_row).transpose()
    }

    /// Up to `max` events of `$all` from `from_position`, optionally filtered.
    pub async fn read_all(
        &self,
        from_position: u64,
        max: usize,
        filter: &AllFilter,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        read_all(&self.inner.pool, from_position, max, filter).await
    }

    /// Follow `$all` from `from_position`: history first, then live, in order, without
    /// gaps or duplicates, across reconnections.
    pub fn subscribe_all(&self, from_position: u64, filter: AllFilter) -> Subscription {
        subscription::spawn_all(
            self.inner.pool.clone(),
            from_position,
            filter,
            self.inner.config.poll_interval,
        )
    }

    /// Follow one stream from `from_revision`.
    pub fn subscribe_stream(&self, stream: StreamId, from_revision: u64) -> Subscription {
        subscription::spawn_stream(
            self.inner.pool.clone(),
            stream,
            from_revision,
            self.inner.config.poll_interval,
        )
    }

    /// Sign and store a checkpoint of the current head now (if none exists for it yet).
    pub async fn checkpoint_now(&self) -> Result<StoredCheckpoint, StoreError> {
        let head = self.head();
        let key = self.current_key();
        checkpointer::write(&self.inner.pool, &key, &self.inner.config.origin, head).await
    }

    /// The newest signed checkpoint.
    pub async fn latest_checkpoint(&self) -> Result<Option<StoredCheckpoint>, StoreError> {
        checkpointer::latest(&self.inner.pool).await
    }

    /// All checkpoints, oldest first.
    pub async fn checkpoints(&self) -> Result<Vec<StoredCheckpoint>, StoreError> {
        checkpointer::all(&self.inner.pool).await
    }

    /// Root of the tree of the first `size` events.
    pub async fn root_at(&self, size: u64) -> Result<Hash, StoreError> {
        self.ensure_within_head(size)?;
        let plan = merkle::root_plan(size);
        let nodes = nodes::fetch_nodes(&self.inner.pool, &plan.nodes()).await?;
        let mut v = plan.assemble(|n| nodes.get(&n).copied()).map_err(|_| missing(size))?;
        v.pop().ok_or_else(|| missing(size))
    }

    /// RFC 9162 inclusion proof of the event at `position` in the tree of size `tree_size`.
    pub async fn inclusion_proof(&self, position: u64, tree_size: u64) -> Result<Vec<Hash>, StoreError> {
        self.ensure_within_head(tree_size)?;
        let plan =
            merkle::inclusion_plan(position, tree_size).map_err(|_| StoreError::BeyondHead(position))?;
        let nodes = nodes::fetch_nodes(&self.inner.pool, &plan.nodes()).await?;
        plan.assemble(|n| nodes.get(&n).copied()).map_err(|_| missing(tree_size))
    }

    /// RFC 9162 consistency proof between two tree sizes.
    pub async fn consistency_proof(&self, old_size: u64, new_size: u64) -> Result<Vec<Hash>, StoreError> {
        self.ensure_within_head(new_size)?;
        let plan =
            merkle::consistency_plan(old_size, new_size).map_err(|_| StoreError::BeyondHead(old_size))?;
        let nodes = nodes::fetch_nodes(&self.inner.pool, &plan.nodes()).await?;
        plan.assemble(|n| nodes.get(&n).copied()).map_err(|_| missing(new_size))
    }

    /// The key registry folded from `$keys`.
    pub async fn key_registry(&self) -> Result<KeyRegistry, StoreError> {
        load_key_registry(&self.inner.pool).await
    }

    fn ensure_within_head(&self, size: u64) -> Result<(), StoreError> {
        if size > self.head().size {
            Err(StoreError::BeyondHead(size))
        } else {
            Ok(())
        }
    }
}

fn missing(size: u64) -> StoreError {
    StoreError::Corrupt { position: size, reason: "missing Merkle node" }
}

/// Up to `max` events of `$all` from `from_position` on any executor (read only: the
/// read-model check folds the ledger without opening a store).
pub async fn read_all<'e>(
    exec: impl sqlx::PgExecutor<'e>,
    from_position: u64,
    max: usize,
    filter: &AllFilter,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let types: Vec<String> = filter.event_types.clone();
    let prefix = filter.stream_prefix.as_deref().map(like_prefix);
    // The payload side of the join gets the lower bound too: the planner does not carry
    // `e.position >= $1` over a LEFT JOIN, and its merge join then walked the payload
    // index from position 0 on every page (a scan of `$all` was quadratic).
    let rows = sqlx::query(concat!(
        select_events!(),
        "AND p.position >= $1 \
         WHERE e.position >= $1 AND (cardinality($2::text[]) = 0 OR e.event_type = ANY($2)) \
         AND ($3::text IS NULL OR e.stream_id LIKE $3) ORDER BY e.position LIMIT $4"
    ))
    .bind(clamp_i64(from_position))
    .bind(&types)
    .bind(prefix)
    .bind(clamp_i64(max as u64))
    .fetch_all(exec)
    .await?;
    rows.iter().map(decode_row).collect()
}

/// A `LIKE` pattern matching strings that start with `prefix` (its `\`, `%` and `_`
/// taken literally).
pub fn like_prefix(prefix: &str) -> String {
    format!("{}%", prefix.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"))
}

/// Decode a joined events/payloads row, checking the columns against the signed envelope.
pub(crate) fn decode_row(r: &PgRow) -> Result<RecordedEvent, StoreError> {
    let position: i64 = r.try_get("position")?;
    let position = position as u64;
    let corrupt = |reason| StoreError::Corrupt { position, reason };
    let envelope: Vec<u8> = r.try_get("envelope")?;
    let event = SignedEvent::from_bytes(&envelope).map_err(|_| corrupt("envelope does not decode"))?;
    let stream_id: String = r.try_get("stream_id")?;
    let revision: i64 = r.try_get("stream_revision")?;
    let event_id: uuid::Uuid = r.try_get("event_id")?;
    let event_hash: Vec<u8> = r.try_get("event_hash")?;
    if stream_id != event.stream_id().as_str()
        || revision as u64 != event.stream_revision()
        || event_id != event.event_id()
        || event_hash != event.hash()
    {
        return Err(corrupt("columns do not match the signed envelope"));
    }
    let salt: Option<Vec<u8>> = r.try_get("salt")?;
    let payload: Option<Vec<u8>> = r.try_get("payload")?;
    let payload = match (salt, payload) {
        (Some(s), Some(p)) => {
            let salt: [u8; 32] = s.try_into().map_err(|_| corrupt("salt length"))?;
            Some(Payload::with_salt(salt, p).map_err(|_| corrupt("payload too large"))?)
        }
        _ => None,
    };
    Ok(RecordedEvent { position, event, payload })
}

/// Fold `$keys` into a registry (verifying every registry event).
pub(crate) async fn load_key_registry<'e>(
    pool: impl sqlx::PgExecutor<'e>,
) -> Result<KeyRegistry, StoreError> {
    let rows = sqlx::query(concat!(select_events!(), "WHERE stream_id = $1 ORDER BY stream_revision"))
        .bind(StreamId::KEYS)
        .fetch_all(pool)
        .await?;
    let mut reg = KeyRegistry::new();
    for r in &rows {
        let ev = decode_row(r)?;
        let payload =
            ev.payload.ok_or(StoreError::Corrupt { position: ev.position, reason: "key payload missing" })?;
        reg.apply(&ev.event, &payload)?;
    }
    Ok(reg)
}

impl writer::Writer {
    /// Register the signing key as the anchor of an empty key registry.
    async fn bootstrap_anchor(&mut self, registry: &KeyRegistry) -> Result<(), StoreError> {
        let now = Timestamp::from_micros(now_micros().max(self.planner.state.last_micros));
        let key = Arc::clone(&self.planner.key);
        let intro =
            KeyIntroduced { public_key: key.verifying_key(), name: key.name().to_owned(), valid_from: now };
        let (event, payload) = registry.next_event(
            KEY_INTRODUCED,
            intro.to_bytes()?,
            &key,
            uuid::Uuid::now_v7(),
            now,
            &mut rand_core::OsRng,
        )?;
        self.append_signed(vec![(event, payload)]).await
    }
}

/// The clock, read once per call: the one `now()` of the crates above the pure core
/// (the core and the domain are given their times).
pub fn now() -> Timestamp {
    Timestamp::from_datetime(time::OffsetDateTime::now_utc())
}

/// Microseconds since the epoch, now.
pub(crate) fn now_micros() -> i64 {
    now().as_micros()
}

/// Run CPU-heavy work without stalling the runtime: `block_in_place` on a multi-thread
/// runtime, inline on a current-thread one (where `block_in_place` would panic).
pub(crate) fn cpu_bound<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
