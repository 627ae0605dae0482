//! Store errors. Callers match on variants (or `code()`); messages carry ids and numbers,
//! never payload content.

use ledger::LedgerError;
use uuid::Uuid;

use crate::types::ExpectedRevision;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The stream was not at the expected revision. `actual` is None when it has no events.
    #[error("stream {stream}: expected revision {expected:?}, actual {actual:?}")]
    WrongExpectedRevision { stream: String, expected: ExpectedRevision, actual: Option<u64> },
    /// An event id is already stored with different content (or only part of a retried
    /// append matches what is stored).
    #[error("event {event_id} already exists with different content")]
    IdempotencyConflict { event_id: Uuid },
    /// The same event id appears twice in one append.
    #[error("event {event_id} appears more than once in the append")]
    DuplicateEventInAppend { event_id: Uuid },
    #[error("an append needs at least one event")]
    EmptyAppend,
    /// The stream is written only by the store itself (`$keys`).
    #[error("stream {0} is reserved to the store")]
    ReservedStream(String),
    #[error(
        "append too large: {events} events, {bytes} payload bytes (max {max} events, {max_bytes} bytes)"
    )]
    AppendTooLarge { events: usize, bytes: usize, max: usize, max_bytes: usize },
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The stored data does not decode or does not match its columns.
    #[error("stored event at position {position} is corrupt: {reason}")]
    Corrupt { position: u64, reason: &'static str },
    #[error("tree size {0} is beyond the ledger head")]
    BeyondHead(u64),
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("migration error")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The signing key is not (or no longer) valid in the ledger's key registry.
    #[error("the configured signing key is not valid in the key registry")]
    SigningKeyNotRegistered,
    /// The writer task is gone (the store is shutting down).
    #[error("the event store is closed")]
    Closed,
    /// The commit outcome could not be established (the database is unreachable). Retrying
    /// the same append with the same event ids is safe.
    #[error("commit outcome unknown; retry with the same event ids")]
    OutcomeUnknown,
    /// The operating system's random number generator failed (payload salts are drawn
    /// from it); nothing was written.
    #[error("the operating system's random number generator failed")]
    RngUnavailable,
    /// A task of the store (signing a streamed batch, reading rows to verify) panicked,
    /// was cancelled or stopped before its end; nothing was written.
    #[error("a task of the event store failed")]
    TaskFailed,
}

impl StoreError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::WrongExpectedRevision { .. } => "store.wrong_expected_revision",
            Self::IdempotencyConflict { .. } => "store.idempotency_conflict",
            Self::DuplicateEventInAppend { .. } => "store.duplicate_event_in_append",
            Self::EmptyAppend => "store.empty_append",
            Self::ReservedStream(_) => "store.reserved_stream",
            Self::AppendTooLarge { .. } => "store.append_too_large",
            Self::Ledger(e) => e.code(),
            Self::Corrupt { .. } => "store.corrupt",
            Self::BeyondHead(_) => "store.beyond_head",
            Self::Database(_) => "store.database",
            Self::Migrate(_) => "store.migrate",
            Self::SigningKeyNotRegistered => "store.signing_key_not_registered",
            Self::Closed => "store.closed",
            Self::OutcomeUnknown => "store.outcome_unknown",
            Self::RngUnavailable => "store.rng_unavailable",
            Self::TaskFailed => "store.task_failed",
        }
    }
}
