//! Errors of the read side. Codes are stable (`projection.*`); messages carry no PHI.

use store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error("the read models did not reach position {position} within the timeout")]
    Timeout { position: u64 },
    #[error("the projection runner has stopped")]
    Stopped,
    #[error("a read-model row is inconsistent: {what}")]
    Corrupt { what: &'static str },
    /// `subject` is the row's id (a consent or user id: ids, never names).
    #[error("a read-model row of {table} ({subject}) is not accounted for by the ledger")]
    Unbacked { table: &'static str, subject: uuid::Uuid },
    #[error("another runner moved the projection's position")]
    PositionMoved,
    #[error("the event at position {position} was written by a newer build; upgrade to project it")]
    NewerEvent { position: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Shows the SQLSTATE and its class, never the server's message.
    #[error("database error{}", store::error::database_detail(.0))]
    Database(#[from] sqlx::Error),
}

impl ProjectionError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Timeout { .. } => "projection.timeout",
            Self::Stopped => "projection.stopped",
            Self::Corrupt { .. } => "projection.corrupt",
            Self::Unbacked { .. } => "projection.unbacked",
            Self::PositionMoved => "projection.position_moved",
            Self::NewerEvent { .. } => "projection.newer_event",
            Self::Store(e) => e.code(),
            Self::Database(_) => "projection.database",
        }
    }
}
