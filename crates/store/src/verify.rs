//! Ledger verification: re-check everything the database holds against the signatures,
//! hash links, key registry, Merkle tree and signed checkpoints, and report the first
//! position where something is wrong.
//!
//! The work per event (decode, hash, payload commitment, strict Ed25519 verification) runs
//! in parallel on all cores; the order-dependent checks (gaplessness, stream links, Merkle
//! frontier, checkpoint roots) run sequentially over each chunk. Strict single verification
//! is used throughout: the sound batch path was measured slower (see `ledger::verify`).

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use ed25519_dalek::VerifyingKey;
use ledger::checkpoint::Checkpoint;
use ledger::envelope::GENESIS_PREV_HASH;
use ledger::keys::KeyRegistry;
use ledger::merkle::{self, Frontier};
use ledger::note::NoteVerifier;
use ledger::{Hash, Payload, SignedEvent, StreamId};
use rayon::prelude::*;
use sqlx::{PgPool, Row};

use crate::error::StoreError;
use crate::nodes::fetch_nodes;
use crate::types::StoredCheckpoint;

/// What went wrong at a position.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureKind {
    /// No row at this position (deleted), though later positions or a checkpoint exist.
    MissingEvent,
    /// The stored envelope does not decode.
    MalformedEnvelope,
    /// A column (stream, revision, event id, type, time) disagrees with the signed envelope.
    ColumnMismatch(&'static str),
    /// The stored event hash is not the hash of the envelope.
    HashMismatch,
    /// The signature does not verify (strictly).
    InvalidSignature,
    /// The signing key is not in the registry.
    UnknownKey,
    /// The signing key was not valid at the event's recorded time.
    KeyNotValidAt,
    /// `recorded_at` goes backwards along the log (the writer never lets it).
    TimeOrder,
    /// The event does not link to the previous event of its stream.
    BrokenHashLink,
    /// The payload row is missing.
    PayloadMissing,
    /// The payload (or salt) does not open the commitment.
    PayloadMismatch,
    /// A stored Merkle node differs from the recomputed one.
    MerkleNodeMismatch,
    /// The key registry (`$keys`) breaks a rule or does not verify.
    KeyRegistry(String),
    /// Neither the registry's anchor nor any checkpoint's signer is trusted by the caller.
    UntrustedKeys,
    /// A checkpoint's signature does not verify against the registry's keys.
    CheckpointSignature { tree_size: u64 },
    /// A checkpoint's root differs from the root recomputed from the events.
    CheckpointRootMismatch { tree_size: u64 },
    /// A checkpoint's `chartledger-keys` extension is not the last `$keys` event before it.
    CheckpointKeysHead { tree_size: u64 },
}

impl FailureKind {
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingEvent => "verify.missing_event",
            Self::MalformedEnvelope => "verify.malformed_envelope",
            Self::ColumnMismatch(_) => "verify.column_mismatch",
            Self::HashMismatch => "verify.hash_mismatch",
            Self::InvalidSignature => "verify.invalid_signature",
            Self::UnknownKey => "verify.unknown_key",
            Self::KeyNotValidAt => "verify.key_not_valid_at",
            Self::TimeOrder => "verify.time_order",
            Self::BrokenHashLink => "verify.broken_hash_link",
            Self::PayloadMissing => "verify.payload_missing",
            Self::PayloadMismatch => "verify.payload_mismatch",
            Self::MerkleNodeMismatch => "verify.merkle_node_mismatch",
            Self::KeyRegistry(_) => "verify.key_registry",
            Self::UntrustedKeys => "verify.untrusted_keys",
            Self::CheckpointSignature { .. } => "verify.checkpoint_signature",
            Self::CheckpointRootMismatch { .. } => "verify.checkpoint_root_mismatch",
            Self::CheckpointKeysHead { .. } => "verify.checkpoint_keys_head",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingEvent => write!(f, "event missing (row deleted)"),
            Self::MalformedEnvelope => write!(f, "envelope does not decode"),
            Self::ColumnMismatch(c) => write!(f, "column {c} does not match the signed envelope"),
            Self::HashMismatch => write!(f, "stored event hash is wrong"),
            Self::InvalidSignature => write!(f, "signature does not verify"),
            Self::UnknownKey => write!(f, "signing key not in the key registry"),
            Self::KeyNotValidAt => write!(f, "signing key not valid at the recorded time"),
            Self::TimeOrder => write!(f, "recorded time goes backwards along the log"),
            Self::BrokenHashLink => write!(f, "hash link to the previous event of the stream is broken"),
            Self::PayloadMissing => write!(f, "payload missing"),
            Self::PayloadMismatch => write!(f, "payload does not open the signed commitment"),
            Self::MerkleNodeMismatch => write!(f, "stored Merkle node is wrong"),
            Self::KeyRegistry(r) => write!(f, "key registry invalid: {r}"),
            Self::UntrustedKeys => write!(f, "neither the anchor key nor any checkpoint signer is trusted"),
            Self::CheckpointSignature { tree_size } => {
                write!(f, "checkpoint of size {tree_size}: signature invalid")
            }
            Self::CheckpointRootMismatch { tree_size } => {
                write!(f, "checkpoint of size {tree_size}: root differs from the events")
            }
            Self::CheckpointKeysHead { tree_size } => {
                write!(f, "checkpoint of size {tree_size}: names another key registry head")
            }
        }
    }
}

/// The first failure found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub position: u64,
    pub kind: FailureKind,
}

/// What a verification run found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Events whose signature, links and payload were checked.
    pub events_checked: u64,
    /// Position verification started from (0, or a trusted checkpoint's size).
    pub from: u64,
    /// Rows found in the ledger.
    pub head: u64,
    /// Checkpoints whose signature and root were checked.
    pub checkpoints_checked: u64,
    /// Size of the newest checkpoint (events after it are not yet covered by one).
    pub latest_checkpoint: Option<u64>,
    /// Payloads absent (erased); none can be, until erasure exists.
    pub first_failure: Option<Failure>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.first_failure.is_none()
    }
}

/// Options of a verification run.
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// Keys the caller trusts. When not empty, the registry's anchor key must be one of
    /// them, or a checkpoint must be signed by one of them (a trusted signer then vouches
    /// for the whole tree it commits to, `$keys` included). Merely appearing in the
    /// registry proves nothing: any anchor can "introduce" someone else's public key.
    pub trusted_keys: Vec<VerifyingKey>,
    /// Start after this trusted checkpoint (tree size) instead of position 0. The checkpoint
    /// must exist, verify, and its root must match the stored tree.
    pub from_checkpoint: Option<u64>,
    /// Rows per chunk (default 8192).
    pub chunk: Option<usize>,
}

struct RowData {
    position: u64,
    stream_id: String,
    revision: i64,
    event_id: uuid::Uuid,
    event_type: String,
    recorded_at: time::OffsetDateTime,
    envelope: Vec<u8>,
    event_hash: Vec<u8>,
    merkle_nodes: Vec<u8>,
    salt: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
}

/// Per-row result of the parallel checks.
type Checked = Result<(SignedEvent, Hash), FailureKind>;

/// Verify the whole ledger (or from a trusted checkpoint), in four steps: the key
/// registry, the checkpoints, the starting point, then every event in order.
pub async fn verify_ledger(pool: &PgPool, opts: &VerifyOptions) -> Result<VerifyReport, StoreError> {
    let mut found = Findings::default();
    let mut keys = Keys::load(pool, opts, &mut found).await?;
    let checkpoints = check_checkpoints(pool, &mut keys, &mut found).await?;
    if !keys.trust_established {
        found.fail(0, FailureKind::UntrustedKeys);
    }
    let start = opts.from_checkpoint.unwrap_or(0);
    found.report.from = start;
    let Some(frontier) = starting_frontier(pool, start, &checkpoints, &mut found).await? else {
        return Ok(found.finish());
    };
    let mut walk = Walk {
        pool,
        start,
        expected: start,
        frontier,
        heads: HashMap::new(),
        last_time: i64::MIN,
        checkpoints: &checkpoints,
    };
    if let Some(f) = walk.all_events(&keys.registry, opts.chunk.unwrap_or(8192).max(1)).await? {
        found.failures.push(f);
    }
    let expected = walk.expected;
    found.report.events_checked = expected - start;
    found.report.head = expected;
    // A checkpoint beyond the last row means rows were removed from the end.
    if checkpoints.range(expected + 1..).next().is_some()
        && found.failures.iter().all(|f| f.position >= expected)
    {
        found.fail(expected, FailureKind::MissingEvent);
    }
    Ok(found.finish())
}

/// The report so far, and every failure found (the first by position is reported).
#[derive(Default)]
struct Findings {
    report: VerifyReport,
    failures: Vec<Failure>,
}

impl Findings {
    fn fail(&mut self, position: u64, kind: FailureKind) {
        self.failures.push(Failure { position, kind });
    }

    fn finish(mut self) -> VerifyReport {
        self.report.first_failure = self.failures.into_iter().min_by_key(|f| f.position);
        self.report
    }
}

/// Step 1: the key registry, folded and verified on its own, and the checkpoint
/// verifiers of its keys.
struct Keys {
    registry: KeyRegistry,
    /// `$keys` events' (position, revision, event hash), in order, as far as they applied.
    heads: KeysHeads,
    /// Every registered key's.
    verifiers: Vec<NoteVerifier>,
    /// The registered keys the caller trusts.
    trusted_verifiers: Vec<NoteVerifier>,
    /// A trusted key vouches for the ledger (always, when the caller names none).
    trust_established: bool,
}

impl Keys {
    async fn load(pool: &PgPool, opts: &VerifyOptions, found: &mut Findings) -> Result<Self, StoreError> {
        let (registry, heads, registry_failure) = fold_registry(pool).await?;
        if let Some(f) = registry_failure {
            found.failures.push(f);
        }
        let trusted = |pk: &VerifyingKey| opts.trusted_keys.iter().any(|t| t.as_bytes() == pk.as_bytes());
        let trust_established =
            opts.trusted_keys.is_empty() || registry.anchor().is_some_and(|a| trusted(&a.public_key));
        let verifiers: Vec<NoteVerifier> =
            registry.keys().filter_map(|k| NoteVerifier::new(&k.name, k.public_key).ok()).collect();
        let trusted_verifiers: Vec<NoteVerifier> = registry
            .keys()
            .filter(|k| trusted(&k.public_key))
            .filter_map(|k| NoteVerifier::new(&k.name, k.public_key).ok())
            .collect();
        Ok(Self { registry, heads, verifiers, trusted_verifiers, trust_established })
    }
}

/// Step 2: checkpoints, their signature and the root they claim. Answers the roots of
/// those whose signature holds, by tree size.
async fn check_checkpoints(
    pool: &PgPool,
    keys: &mut Keys,
    found: &mut Findings,
) -> Result<BTreeMap<u64, Hash>, StoreError> {
    let mut checkpoints: BTreeMap<u64, Hash> = BTreeMap::new();
    for cp in crate::checkpointer::all(pool).await? {
        found.report.checkpoints_checked += 1;
        if let Some(root) = check_checkpoint(&cp, keys, found) {
            checkpoints.insert(cp.tree_size, root);
        }
    }
    found.report.latest_checkpoint = checkpoints.keys().next_back().copied();
    Ok(checkpoints)
}

/// One checkpoint: signed by a registered key, for the size and root stored with it,
/// naming the right registry head; a trusted signer establishes trust. Answers its root
/// when its signature holds.
fn check_checkpoint(cp: &StoredCheckpoint, keys: &mut Keys, found: &mut Findings) -> Option<Hash> {
    let position = cp.tree_size.saturating_sub(1);
    let c = match Checkpoint::open(cp.note.as_bytes(), &keys.verifiers) {
        Ok((c, _)) if c.size == cp.tree_size && c.root_hash == cp.root_hash => c,
        _ => {
            found.fail(position, FailureKind::CheckpointSignature { tree_size: cp.tree_size });
            return None;
        }
    };
    // The registry head it names (if any) must be the last `$keys` event below it.
    let actual = keys.heads.iter().rev().find(|(pos, _, _)| *pos < c.size).map(|(_, r, h)| (*r, *h));
    match c.keys_head() {
        Ok(None) => {}
        Ok(Some(named)) if Some(named) == actual => {}
        _ => found.fail(position, FailureKind::CheckpointKeysHead { tree_size: cp.tree_size }),
    }
    if !keys.trust_established && Checkpoint::open(cp.note.as_bytes(), &keys.trusted_verifiers).is_ok() {
        keys.trust_established = true;
    }
    Some(cp.root_hash)
}

/// Step 3: the starting point. From 0, an empty tree; from a checkpoint, the stored
/// frontier at its size, which must have its root (None: it does not, a failure).
async fn starting_frontier(
    pool: &PgPool,
    start: u64,
    checkpoints: &BTreeMap<u64, Hash>,
    found: &mut Findings,
) -> Result<Option<Frontier>, StoreError> {
    if start == 0 {
        return Ok(Some(Frontier::new()));
    }
    let Some(root) = checkpoints.get(&start).copied() else {
        return Err(StoreError::BeyondHead(start));
    };
    let ids = Frontier::node_ids(start);
    let stored = fetch_nodes(pool, &ids).await?;
    let parts: Option<Vec<Hash>> = ids.iter().map(|i| stored.get(i).copied()).collect();
    match parts.and_then(|p| Frontier::from_parts(start, p).ok()) {
        Some(f) if f.root() == root => Ok(Some(f)),
        _ => {
            found.fail(start.saturating_sub(1), FailureKind::CheckpointRootMismatch { tree_size: start });
            Ok(None)
        }
    }
}

/// Step 4: every event, in chunks, with the order-dependent checks: gaplessness, stream
/// links, recorded-time order, Merkle nodes and checkpoint roots.
struct Walk<'a> {
    pool: &'a PgPool,
    /// Where verification started.
    start: u64,
    /// The next position expected.
    expected: u64,
    frontier: Frontier,
    /// Each stream's last revision and hash seen.
    heads: HashMap<String, (u64, Hash)>,
    last_time: i64,
    checkpoints: &'a BTreeMap<u64, Hash>,
}

impl Walk<'_> {
    /// Check every event from `expected` on, `chunk` rows at a time; the first failure.
    async fn all_events(
        &mut self,
        registry: &KeyRegistry,
        chunk: usize,
    ) -> Result<Option<Failure>, StoreError> {
        // The next chunk is fetched by another task while this one is verified on all cores.
        let mut prefetch = tokio::spawn(fetch_chunk(self.pool.clone(), self.expected, chunk));
        loop {
            let rows = prefetch.await.map_err(|_| StoreError::TaskFailed)??;
            if rows.is_empty() {
                return Ok(None);
            }
            let next_from = rows.last().map_or(self.expected, |r| r.position + 1);
            prefetch = tokio::spawn(fetch_chunk(self.pool.clone(), next_from, chunk));
            let checked: Vec<Checked> =
                crate::cpu_bound(|| rows.par_iter().map(|r| check_row(r, registry)).collect());
            for (row, result) in rows.iter().zip(checked) {
                if let Some(kind) = self.next_event(row, result).await? {
                    return Ok(Some(kind));
                }
            }
        }
    }

    /// The order-dependent checks of one row, after its own (`checked`); the failure, if any.
    async fn next_event(&mut self, row: &RowData, checked: Checked) -> Result<Option<Failure>, StoreError> {
        let position = self.expected;
        let fail = |kind| Ok(Some(Failure { position, kind }));
        if row.position != position {
            return fail(FailureKind::MissingEvent);
        }
        let (event, leaf) = match checked {
            Ok(v) => v,
            Err(kind) => return fail(kind),
        };
        if !self.linked(&event).await? {
            return fail(FailureKind::BrokenHashLink);
        }
        self.heads.insert(event.stream_id().as_str().to_owned(), (event.stream_revision(), *event.hash()));
        if event.recorded_at().as_micros() < self.last_time {
            return fail(FailureKind::TimeOrder);
        }
        self.last_time = event.recorded_at().as_micros();
        if !self.merkle_nodes_match(leaf, &row.merkle_nodes) {
            return fail(FailureKind::MerkleNodeMismatch);
        }
        self.expected += 1;
        match self.checkpoints.get(&self.expected) {
            Some(root) if *root != self.frontier.root() => Ok(Some(Failure {
                position,
                kind: FailureKind::CheckpointRootMismatch { tree_size: self.expected },
            })),
            _ => Ok(None),
        }
    }

    /// Does `event` link to the previous event of its stream (or start it)?
    async fn linked(&self, event: &SignedEvent) -> Result<bool, StoreError> {
        let prev = match self.heads.get(event.stream_id().as_str()) {
            Some(h) => Some(*h),
            None if event.stream_revision() > 0 && self.start > 0 => {
                predecessor(self.pool, event, self.start).await?
            }
            None => None,
        };
        Ok(match prev {
            None => event.stream_revision() == 0 && event.body().prev_hash == GENESIS_PREV_HASH,
            Some((rev, hash)) => rev + 1 == event.stream_revision() && hash == event.body().prev_hash,
        })
    }

    /// Append `leaf` to the tree: are the nodes it completes the ones stored with it?
    fn merkle_nodes_match(&mut self, leaf: Hash, stored: &[u8]) -> bool {
        let Ok(nodes) = self.frontier.append(leaf) else { return false };
        let computed: Vec<u8> = nodes.iter().filter(|(id, _)| id.level > 0).flat_map(|(_, h)| *h).collect();
        computed == stored
    }
}

/// Decode, compare columns, hash, open the payload and verify the signature of one row.
fn check_row(r: &RowData, registry: &KeyRegistry) -> Checked {
    let ev = SignedEvent::from_bytes(&r.envelope).map_err(|_| FailureKind::MalformedEnvelope)?;
    let b = ev.body();
    if r.stream_id != b.stream_id.as_str() {
        return Err(FailureKind::ColumnMismatch("stream_id"));
    }
    if r.revision < 0 || r.revision as u64 != b.stream_revision {
        return Err(FailureKind::ColumnMismatch("stream_revision"));
    }
    if r.event_id != b.event_id {
        return Err(FailureKind::ColumnMismatch("event_id"));
    }
    if r.event_type != b.event_type.as_str() {
        return Err(FailureKind::ColumnMismatch("event_type"));
    }
    if ledger::Timestamp::from_datetime(r.recorded_at) != b.recorded_at {
        return Err(FailureKind::ColumnMismatch("recorded_at"));
    }
    let key = match registry.key_valid_at(&b.key_id, b.recorded_at) {
        Ok(k) => k,
        Err(ledger::LedgerError::UnknownKey) => return Err(FailureKind::UnknownKey),
        Err(_) => return Err(FailureKind::KeyNotValidAt),
    };
    ev.verify(&key.public_key).map_err(|_| FailureKind::InvalidSignature)?;
    if r.event_hash != ev.hash() {
        return Err(FailureKind::HashMismatch);
    }
    match (&r.salt, &r.payload) {
        (Some(salt), Some(p)) => {
            let salt: [u8; 32] = salt.as_slice().try_into().map_err(|_| FailureKind::PayloadMismatch)?;
            let payload = Payload::with_salt(salt, p.clone()).map_err(|_| FailureKind::PayloadMismatch)?;
            ev.check_payload(&payload).map_err(|_| FailureKind::PayloadMismatch)?;
        }
        _ => return Err(FailureKind::PayloadMissing),
    }
    let leaf = merkle::leaf_hash(ev.hash());
    Ok((ev, leaf))
}

async fn fetch_chunk(pool: PgPool, from: u64, n: usize) -> Result<Vec<RowData>, StoreError> {
    // The payload side carries the lower bound too: the planner does not push `e.position
    // >= $1` through the LEFT JOIN, and a merge join would walk the payload index from 0
    // on every chunk (as `read_all` did).
    let rows = sqlx::query(
        "SELECT e.position, e.stream_id, e.stream_revision, e.event_id, e.event_type, e.recorded_at, e.envelope, \
         e.event_hash, e.merkle_nodes, p.salt, p.payload \
         FROM ledger_events e LEFT JOIN ledger_payloads p ON p.position = e.position AND p.position >= $1 \
         WHERE e.position >= $1 ORDER BY e.position LIMIT $2",
    )
    .bind(from as i64)
    .bind(n as i64)
    .fetch_all(&pool)
    .await?;
    rows.iter()
        .map(|r| {
            let position: i64 = r.try_get("position")?;
            Ok(RowData {
                position: position as u64,
                stream_id: r.try_get("stream_id")?,
                revision: r.try_get("stream_revision")?,
                event_id: r.try_get("event_id")?,
                event_type: r.try_get("event_type")?,
                recorded_at: r.try_get("recorded_at")?,
                envelope: r.try_get("envelope")?,
                event_hash: r.try_get("event_hash")?,
                merkle_nodes: r.try_get("merkle_nodes")?,
                salt: r.try_get("salt")?,
                payload: r.try_get("payload")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()
        .map_err(StoreError::from)
}

/// The previous event of a stream that started before the verification window.
/// Only positions before `start` count: a predecessor cannot come later in the log.
async fn predecessor(pool: &PgPool, ev: &SignedEvent, start: u64) -> Result<Option<(u64, Hash)>, StoreError> {
    let prev_rev = ev.stream_revision() - 1;
    let r = sqlx::query(
        "SELECT envelope FROM ledger_events WHERE stream_id = $1 AND stream_revision = $2 AND position < $3",
    )
    .bind(ev.stream_id().as_str())
    .bind(prev_rev as i64)
    .bind(start as i64)
    .fetch_optional(pool)
    .await?;
    let Some(r) = r else { return Ok(None) };
    let env: Vec<u8> = r.try_get("envelope")?;
    Ok(SignedEvent::from_bytes(&env).ok().map(|p| (p.stream_revision(), *p.hash())))
}

/// Fold `$keys`, reporting (not returning) the first registry failure.
/// `$keys` events' (position, revision, event hash), in order, as far as they applied.
type KeysHeads = Vec<(u64, u64, Hash)>;

async fn fold_registry(pool: &PgPool) -> Result<(KeyRegistry, KeysHeads, Option<Failure>), StoreError> {
    let rows = sqlx::query(
        "SELECT e.position, e.envelope, p.salt, p.payload FROM ledger_events e \
         LEFT JOIN ledger_payloads p ON p.position = e.position WHERE e.stream_id = $1 ORDER BY e.position",
    )
    .bind(StreamId::KEYS)
    .fetch_all(pool)
    .await?;
    let mut reg = KeyRegistry::new();
    let mut heads = KeysHeads::new();
    for r in &rows {
        let position: i64 = r.try_get("position")?;
        let position = position as u64;
        let fail = |why: &str| Some(Failure { position, kind: FailureKind::KeyRegistry(why.into()) });
        let env: Vec<u8> = r.try_get("envelope")?;
        let Ok(ev) = SignedEvent::from_bytes(&env) else {
            return Ok((reg, heads, fail("envelope does not decode")));
        };
        let salt: Option<Vec<u8>> = r.try_get("salt")?;
        let payload: Option<Vec<u8>> = r.try_get("payload")?;
        let Some(payload) = salt
            .and_then(|s| <[u8; 32]>::try_from(s).ok())
            .zip(payload)
            .and_then(|(s, p)| Payload::with_salt(s, p).ok())
        else {
            return Ok((reg, heads, fail("payload missing")));
        };
        if let Err(e) = reg.apply(&ev, &payload) {
            // Keep the keys applied so far, so events before the bad registry event still verify.
            return Ok((reg, heads, fail(e.code())));
        }
        heads.push((position, ev.stream_revision(), *ev.hash()));
    }
    Ok((reg, heads, None))
}
