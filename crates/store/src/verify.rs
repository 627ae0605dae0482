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

/// Verify the whole ledger (or from a trusted checkpoint).
pub async fn verify_ledger(pool: &PgPool, opts: &VerifyOptions) -> Result<VerifyReport, StoreError> {
    let mut report = VerifyReport::default();
    let mut failures: Vec<Failure> = Vec::new();

    // 1. The key registry, folded and verified on its own.
    let (registry, keys_heads, registry_failure) = fold_registry(pool).await?;
    if let Some(f) = registry_failure {
        failures.push(f);
    }
    let trusted = |pk: &VerifyingKey| opts.trusted_keys.iter().any(|t| t.as_bytes() == pk.as_bytes());
    let mut trust_established =
        opts.trusted_keys.is_empty() || registry.anchor().is_some_and(|a| trusted(&a.public_key));
    let verifiers: Vec<NoteVerifier> =
        registry.keys().filter_map(|k| NoteVerifier::new(&k.name, k.public_key).ok()).collect();
    let trusted_verifiers: Vec<NoteVerifier> = registry
        .keys()
        .filter(|k| trusted(&k.public_key))
        .filter_map(|k| NoteVerifier::new(&k.name, k.public_key).ok())
        .collect();

    // 2. Checkpoints: signature, and the root they claim.
    let mut checkpoints: BTreeMap<u64, Hash> = BTreeMap::new();
    for cp in crate::checkpointer::all(pool).await? {
        report.checkpoints_checked += 1;
        match Checkpoint::open(cp.note.as_bytes(), &verifiers) {
            Ok((c, _)) if c.size == cp.tree_size && c.root_hash == cp.root_hash => {
                checkpoints.insert(cp.tree_size, cp.root_hash);
                // The registry head it names (if any) must be the last `$keys` event below it.
                let actual =
                    keys_heads.iter().rev().find(|(pos, _, _)| *pos < c.size).map(|(_, r, h)| (*r, *h));
                match c.keys_head() {
                    Ok(None) => {}
                    Ok(Some(named)) if Some(named) == actual => {}
                    _ => failures.push(Failure {
                        position: cp.tree_size.saturating_sub(1),
                        kind: FailureKind::CheckpointKeysHead { tree_size: cp.tree_size },
                    }),
                }
                if !trust_established && Checkpoint::open(cp.note.as_bytes(), &trusted_verifiers).is_ok() {
                    trust_established = true;
                }
            }
            _ => failures.push(Failure {
                position: cp.tree_size.saturating_sub(1),
                kind: FailureKind::CheckpointSignature { tree_size: cp.tree_size },
            }),
        }
    }
    report.latest_checkpoint = checkpoints.keys().next_back().copied();
    if !trust_established {
        failures.push(Failure { position: 0, kind: FailureKind::UntrustedKeys });
    }

    // 3. Starting point.
    let start = opts.from_checkpoint.unwrap_or(0);
    report.from = start;
    let mut frontier = if start == 0 {
        Frontier::new()
    } else {
        let Some(root) = checkpoints.get(&start).copied() else {
            return Err(StoreError::BeyondHead(start));
        };
        let ids = Frontier::node_ids(start);
        let found = fetch_nodes(pool, &ids).await?;
        let parts: Option<Vec<Hash>> = ids.iter().map(|i| found.get(i).copied()).collect();
        match parts.and_then(|p| Frontier::from_parts(start, p).ok()) {
            Some(f) if f.root() == root => f,
            _ => {
                failures.push(Failure {
                    position: start.saturating_sub(1),
                    kind: FailureKind::CheckpointRootMismatch { tree_size: start },
                });
                return Ok(finish(report, failures));
            }
        }
    };
    let mut heads: HashMap<String, (u64, Hash)> = HashMap::new();
    let mut last_time = i64::MIN;

    // 4. Every event, in chunks.
    let chunk = opts.chunk.unwrap_or(8192).max(1);
    let mut expected = start;
    // The next chunk is fetched by another task while this one is verified on all cores.
    let mut prefetch = tokio::spawn(fetch_chunk(pool.clone(), expected, chunk));
    'chunks: loop {
        let rows = prefetch.await.map_err(|_| StoreError::TaskFailed)??;
        if rows.is_empty() {
            break;
        }
        let next_from = rows.last().map_or(expected, |r| r.position + 1);
        prefetch = tokio::spawn(fetch_chunk(pool.clone(), next_from, chunk));
        let reg = &registry;
        let checked: Vec<Checked> = crate::cpu_bound(|| rows.par_iter().map(|r| check_row(r, reg)).collect());
        for (row, result) in rows.iter().zip(checked) {
            let fail = |kind| Failure { position: expected, kind };
            if row.position != expected {
                failures.push(fail(FailureKind::MissingEvent));
                break 'chunks;
            }
            let (event, leaf) = match result {
                Ok(v) => v,
                Err(kind) => {
                    failures.push(fail(kind));
                    break 'chunks;
                }
            };
            // Stream hash link.
            let prev = match heads.get(event.stream_id().as_str()) {
                Some(h) => Some(*h),
                None if event.stream_revision() > 0 && start > 0 => predecessor(pool, &event, start).await?,
                None => None,
            };
            let linked = match prev {
                None => event.stream_revision() == 0 && event.body().prev_hash == GENESIS_PREV_HASH,
                Some((rev, hash)) => rev + 1 == event.stream_revision() && hash == event.body().prev_hash,
            };
            if !linked {
                failures.push(fail(FailureKind::BrokenHashLink));
                break 'chunks;
            }
            heads.insert(event.stream_id().as_str().to_owned(), (event.stream_revision(), *event.hash()));
            if event.recorded_at().as_micros() < last_time {
                failures.push(fail(FailureKind::TimeOrder));
                break 'chunks;
            }
            last_time = event.recorded_at().as_micros();
            // Merkle: recompute the nodes this leaf completes and compare with the stored ones.
            let Ok(nodes) = frontier.append(leaf) else {
                failures.push(fail(FailureKind::MerkleNodeMismatch));
                break 'chunks;
            };
            let computed: Vec<u8> =
                nodes.iter().filter(|(id, _)| id.level > 0).flat_map(|(_, h)| *h).collect();
            if computed != row.merkle_nodes {
                failures.push(fail(FailureKind::MerkleNodeMismatch));
                break 'chunks;
            }
            expected += 1;
            report.events_checked += 1;
            if let Some(root) = checkpoints.get(&expected) {
                if *root != frontier.root() {
                    failures.push(Failure {
                        position: expected - 1,
                        kind: FailureKind::CheckpointRootMismatch { tree_size: expected },
                    });
                    break 'chunks;
                }
            }
        }
    }
    report.head = expected;
    // A checkpoint beyond the last row means rows were removed from the end.
    if let Some((&size, _)) = checkpoints.range(expected + 1..).next() {
        if failures.iter().all(|f| f.position >= expected) {
            let _ = size;
            failures.push(Failure { position: expected, kind: FailureKind::MissingEvent });
        }
    }
    Ok(finish(report, failures))
}

fn finish(mut report: VerifyReport, failures: Vec<Failure>) -> VerifyReport {
    report.first_failure = failures.into_iter().min_by_key(|f| f.position);
    report
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
