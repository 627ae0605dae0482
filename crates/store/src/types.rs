//! The store's public value types.

use ledger::{Actor, EventType, Payload, SignedEvent};
use uuid::Uuid;

/// What the writer has done since the store opened (for metrics and tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Batches committed (pipelined or streamed), rotations and anchors excluded.
    pub batches: u64,
    /// Parts planned while the batch before committed and merged into a batch after its
    /// first part.
    pub merged_parts: u64,
    /// Batches signed and inserted chunk by chunk (`stream_commit`).
    pub streamed_batches: u64,
    /// Chunk statements of streamed batches.
    pub streamed_chunks: u64,
}

/// Optimistic concurrency for an append (EventStoreDB semantics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpectedRevision {
    /// No check.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must have at least one event.
    StreamExists,
    /// The stream's last revision must be exactly this.
    Exact(u64),
}

impl ExpectedRevision {
    /// Does a stream whose last revision is `actual` satisfy this expectation?
    pub fn admits(self, actual: Option<u64>) -> bool {
        match self {
            Self::Any => true,
            Self::NoStream => actual.is_none(),
            Self::StreamExists => actual.is_some(),
            Self::Exact(r) => actual == Some(r),
        }
    }
}

/// An event a client wants to append. The store adds revision, time, hash link, salt,
/// commitment and signature. Its `Debug` never shows the payload (clinical content).
#[derive(Clone, PartialEq, Eq)]
pub struct ProposedEvent {
    /// A UUIDv7 chosen by the client: retrying with the same id is idempotent.
    pub event_id: Uuid,
    pub event_type: EventType,
    pub schema_version: u16,
    pub actor: Actor,
    pub payload: Vec<u8>,
}

impl std::fmt::Debug for ProposedEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProposedEvent")
            .field("event_id", &self.event_id)
            .field("event_type", &self.event_type)
            .field("schema_version", &self.schema_version)
            .field("payload_len", &self.payload.len())
            .finish_non_exhaustive()
    }
}

/// What an append stored (or, for an idempotent retry, had stored before).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendResult {
    /// Global position of each event, in order.
    pub positions: Vec<u64>,
    /// Stream revision of the last event appended.
    pub last_revision: u64,
    /// The ledger head (next free position) after the append committed.
    pub head: u64,
    /// True when nothing was written because every event was already stored.
    pub idempotent_replay: bool,
}

impl AppendResult {
    pub fn first_position(&self) -> u64 {
        self.positions.first().copied().unwrap_or_default()
    }
    pub fn last_position(&self) -> u64 {
        self.positions.last().copied().unwrap_or_default()
    }
}

/// An event as stored: its global position, the signed envelope and, unless erased, its payload.
#[derive(Clone, Debug)]
pub struct RecordedEvent {
    pub position: u64,
    pub event: SignedEvent,
    pub payload: Option<Payload>,
}

/// Read direction for stream reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Forwards,
    Backwards,
}

/// Filter for reads and subscriptions on `$all`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllFilter {
    /// Only these event types (empty: all).
    pub event_types: Vec<String>,
    /// Only streams whose id starts with this prefix.
    pub stream_prefix: Option<String>,
}

impl AllFilter {
    pub fn matches(&self, e: &SignedEvent) -> bool {
        (self.event_types.is_empty() || self.event_types.iter().any(|t| t == e.body().event_type.as_str()))
            && self.stream_prefix.as_deref().is_none_or(|p| e.stream_id().as_str().starts_with(p))
    }
}

/// A stored, signed checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredCheckpoint {
    pub tree_size: u64,
    pub root_hash: ledger::Hash,
    /// The C2SP signed note, as signed.
    pub note: String,
}

/// What [`crate::EventStore::rotate_key`] wrote to `$keys`: the new key's introduction
/// (signed by the old key) and the old key's retirement for rotation (signed by the new
/// key), committed together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRotation {
    pub old_key: ledger::KeyId,
    pub new_key: ledger::KeyId,
    /// Position of the `key.introduced` event.
    pub introduced_at: u64,
    /// Position of the `key.retired` event (`introduced_at + 1`).
    pub retired_at: u64,
    /// The new key is valid from this time (the introduction's `recorded_at`)...
    pub valid_from: ledger::Timestamp,
    /// ...and the old key until this time, exclusive (the retirement's `recorded_at`,
    /// one microsecond later). Every event the old key signed was recorded before it.
    pub valid_until: ledger::Timestamp,
}
