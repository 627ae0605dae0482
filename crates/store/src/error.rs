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
    /// Shows the SQLSTATE and its class (or the kind of failure), never the server's
    /// message, which can quote values.
    #[error("database error{}", database_detail(.0))]
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
    /// This attempt did not write the append: its batch failed before the commit (the
    /// database connection broke or refused it). Retrying with the same event ids is
    /// safe and needed: an event that an earlier attempt of unknown outcome stored
    /// replays, the rest is written. Giving up or retrying with new ids can lose or
    /// duplicate the change.
    #[error("this attempt did not write the append; retry with the same event ids")]
    NotWritten,
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
            Self::NotWritten => "store.not_written",
            Self::RngUnavailable => "store.rng_unavailable",
            Self::TaskFailed => "store.task_failed",
        }
    }
}

/// What a database error's message may say: the SQLSTATE and its class for an error the
/// server reported, the kind of failure otherwise; never the server's message, which
/// can quote values. Starts with a space when not empty (`"database error{}"`).
pub fn database_detail(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(d) => match d.code() {
            Some(code) if is_sqlstate(&code) => format!(" {code} ({})", sqlstate_class(&code)),
            _ => String::new(),
        },
        other => format!(" ({})", failure_kind(other)),
    }
}

/// Five digits or upper-case letters, as every SQLSTATE.
fn is_sqlstate(code: &str) -> bool {
    code.len() == 5 && code.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
}

/// The class of a SQLSTATE (its first two characters), as PostgreSQL's documentation
/// names it (Appendix A, "PostgreSQL Error Codes").
fn sqlstate_class(code: &str) -> &'static str {
    match code.get(..2).unwrap_or("") {
        "00" => "successful completion",
        "01" => "warning",
        "02" => "no data",
        "03" => "SQL statement not yet complete",
        "08" => "connection exception",
        "09" => "triggered action exception",
        "0A" => "feature not supported",
        "0B" => "invalid transaction initiation",
        "0F" => "locator exception",
        "0L" => "invalid grantor",
        "0P" => "invalid role specification",
        "0Z" => "diagnostics exception",
        "20" => "case not found",
        "21" => "cardinality violation",
        "22" => "data exception",
        "23" => "integrity constraint violation",
        "24" => "invalid cursor state",
        "25" => "invalid transaction state",
        "26" => "invalid SQL statement name",
        "27" => "triggered data change violation",
        "28" => "invalid authorization specification",
        "2B" => "dependent privilege descriptors still exist",
        "2D" => "invalid transaction termination",
        "2F" => "SQL routine exception",
        "34" => "invalid cursor name",
        "38" => "external routine exception",
        "39" => "external routine invocation exception",
        "3B" => "savepoint exception",
        "3D" => "invalid catalog name",
        "3F" => "invalid schema name",
        "40" => "transaction rollback",
        "42" => "syntax error or access rule violation",
        "44" => "WITH CHECK OPTION violation",
        "53" => "insufficient resources",
        "54" => "program limit exceeded",
        "55" => "object not in prerequisite state",
        "57" => "operator intervention",
        "58" => "system error",
        "72" => "snapshot failure",
        "F0" => "configuration file error",
        "HV" => "foreign data wrapper error",
        "P0" => "PL/pgSQL error",
        "XX" => "internal error",
        _ => "unknown class",
    }
}

/// The kind of a failure the server did not report (the error's own text can quote
/// names, values or addresses).
fn failure_kind(e: &sqlx::Error) -> &'static str {
    match e {
        sqlx::Error::Configuration(_) => "configuration",
        sqlx::Error::Io(_) => "I/O",
        sqlx::Error::Tls(_) => "TLS",
        sqlx::Error::Protocol(_) => "protocol",
        sqlx::Error::RowNotFound => "no row",
        sqlx::Error::TypeNotFound { .. } => "type not found",
        sqlx::Error::ColumnIndexOutOfBounds { .. } | sqlx::Error::ColumnNotFound(_) => "column not found",
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => "decoding",
        sqlx::Error::Encode(_) => "encoding",
        sqlx::Error::PoolTimedOut => "pool timed out",
        sqlx::Error::PoolClosed => "pool closed",
        sqlx::Error::WorkerCrashed => "worker crashed",
        sqlx::Error::Migrate(_) => "migration",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writer::test_support::db_error;

    #[test]
    fn database_errors_show_their_sqlstate_and_class_but_no_message() {
        let shown =
            |code| StoreError::Database(db_error(code, Some("ledger_events_event_id_key"))).to_string();
        assert_eq!(shown("23505"), "database error 23505 (integrity constraint violation)");
        assert_eq!(shown("57P01"), "database error 57P01 (operator intervention)");
        assert_eq!(shown("40001"), "database error 40001 (transaction rollback)");
        assert_eq!(shown("ZZ999"), "database error ZZ999 (unknown class)");
        assert_eq!(shown("23505'; x"), "database error", "not a SQLSTATE: left out");
        for code in ["23505", "P0001", "bad"] {
            let s = shown(code);
            assert!(!s.contains("secret") && !s.contains("ledger_events"), "{s}");
        }
    }

    #[test]
    fn other_database_failures_show_their_kind_only() {
        let io = sqlx::Error::Io(std::io::Error::other("10.0.0.7:5432 secret"));
        assert_eq!(StoreError::Database(io).to_string(), "database error (I/O)");
        assert_eq!(
            StoreError::Database(sqlx::Error::PoolTimedOut).to_string(),
            "database error (pool timed out)"
        );
        let decode = sqlx::Error::ColumnNotFound("payload".into());
        assert_eq!(StoreError::Database(decode).to_string(), "database error (column not found)");
        assert_eq!(StoreError::Database(sqlx::Error::Protocol("secret".into())).code(), "store.database");
    }
}
