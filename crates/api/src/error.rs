//! API errors: a stable code and a generic message, never record content. The code goes
//! to the client in the GraphQL error's `extensions.code`; the message is fixed per code.
//!
//! Logging follows one rule (ARCHITECTURE.md, cross-cutting concerns): an error is
//! logged where it is handled, not where it is passed on. Converting a store, read-model
//! or database error into [`ApiError::Internal`] keeps its PHI-free detail (codes,
//! positions, SQLSTATE) and logs nothing; the error is logged once, by [`ApiError::report`],
//! where it becomes the client's answer.

use std::sync::Arc;

use async_graphql::ErrorExtensions as _;
use projections::RecordsError;

/// Errors a client can tell apart by `extensions.code`. Deliberately not `Display`:
/// async-graphql turns any `Display` error into a client message, and this type must
/// reach the client only through its fixed message and code.
#[derive(Clone, Debug)]
pub enum ApiError {
    Unauthenticated,
    SessionExpired,
    MfaRequired,
    PasswordChangeRequired,
    InvalidCredentials,
    Locked,
    Forbidden,
    ConsentRequired,
    /// Purpose `emergency` declared without a live break-glass grant for the record.
    BreakGlassRequired,
    NotFound,
    InvalidInput {
        code: &'static str,
    },
    Refused {
        code: &'static str,
    },
    NotCaughtUp,
    AuditUnavailable,
    /// A failure of ours. `detail` is what the operator's log gets (codes, positions,
    /// SQLSTATE: never values); the client gets the code and a generic message.
    Internal {
        code: &'static str,
        detail: Option<Arc<str>>,
        /// Already logged where it was handled once for many answers ([`ApiError::reported`]).
        logged: bool,
    },
    /// An error async-graphql itself raised (bad cursor, limits), passed through.
    Graphql(async_graphql::Error),
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthenticated => "auth.unauthenticated",
            Self::SessionExpired => "auth.session_expired",
            Self::MfaRequired => "auth.mfa_required",
            Self::PasswordChangeRequired => "auth.password_change_required",
            Self::InvalidCredentials => "auth.invalid_credentials",
            Self::Locked => "auth.locked",
            Self::Forbidden => "authz.forbidden",
            Self::ConsentRequired => "authz.consent_required",
            Self::BreakGlassRequired => "authz.break_glass_required",
            Self::NotFound => "not_found",
            Self::InvalidInput { code } | Self::Refused { code } | Self::Internal { code, .. } => code,
            Self::NotCaughtUp => "projection.timeout",
            Self::AuditUnavailable => "audit.unavailable",
            Self::Graphql(_) => "graphql.error",
        }
    }

    /// The fixed message for the code: never a value from the request or the record.
    pub fn message(&self) -> &'static str {
        match self {
            Self::Unauthenticated => "authentication required",
            Self::SessionExpired => "the session has ended; log in again",
            Self::MfaRequired => "a second factor is required",
            Self::PasswordChangeRequired => "the password must be changed first",
            Self::InvalidCredentials => "invalid credentials",
            Self::Locked => "the account is locked; try again later",
            Self::Forbidden => "not allowed",
            Self::ConsentRequired => "the patient's consent does not cover this purpose of use",
            Self::BreakGlassRequired => "emergency access needs a break-glass grant for this record first",
            Self::NotFound => "not found",
            Self::InvalidInput { .. } => "invalid input",
            Self::Refused { .. } => "the command was refused",
            Self::NotCaughtUp => "the read models did not catch up in time",
            Self::AuditUnavailable => "the access could not be recorded; nothing was returned",
            Self::Internal { .. } => "internal error",
            Self::Graphql(_) => "request error",
        }
    }

    /// An internal failure caused by `err`, whose display is kept as the detail.
    /// Only for errors whose display carries no PHI (the store's, the read models',
    /// hashing's: codes, ids, positions and SQLSTATEs, never a server's message). Not logged here: see [`ApiError::report`].
    pub fn internal(code: &'static str, err: &dyn std::fmt::Display) -> Self {
        Self::Internal { code, detail: Some(err.to_string().into()), logged: false }
    }

    /// An internal failure with nothing more to say than its code.
    pub const fn unexpected(code: &'static str) -> Self {
        Self::Internal { code, detail: None, logged: false }
    }

    /// What the operator's log gets of an internal failure (PHI-free), if anything.
    pub fn detail(&self) -> Option<&str> {
        match self {
            Self::Internal { detail, .. } => detail.as_deref(),
            _ => None,
        }
    }

    /// Log an internal failure: called once, where the error becomes an answer to the
    /// client (a GraphQL error, an HTTP response, a refused WebSocket connection).
    /// Errors the client caused are not logged (metrics count them by code).
    pub fn report(&self) {
        if let Self::Internal { code, detail, logged: false } = self {
            tracing::error!(code, detail = detail.as_deref().unwrap_or("-"), "internal error");
        }
    }

    /// Log now and hand on a copy that is not logged again: for a failure handled once
    /// for many answers (a batched loader's error reaches every field that asked).
    pub fn reported(self) -> Self {
        self.report();
        match self {
            Self::Internal { code, detail, .. } => Self::Internal { code, detail, logged: true },
            other => other,
        }
    }
}

impl From<RecordsError> for ApiError {
    fn from(e: RecordsError) -> Self {
        match e {
            RecordsError::Domain(d) => Self::Refused { code: d.code() },
            RecordsError::Contention => Self::Refused { code: "records.contention" },
            RecordsError::IdempotencyConflict => Self::Refused { code: "records.idempotency_conflict" },
            RecordsError::Projection(p) if p.code() == "projection.timeout" => Self::NotCaughtUp,
            other => Self::internal(other.code(), &other),
        }
    }
}

impl From<projections::ProjectionError> for ApiError {
    fn from(e: projections::ProjectionError) -> Self {
        if e.code() == "projection.timeout" {
            return Self::NotCaughtUp;
        }
        Self::internal(e.code(), &e)
    }
}

impl From<store::StoreError> for ApiError {
    fn from(e: store::StoreError) -> Self {
        Self::internal(e.code(), &e)
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        // A database error's message can quote row values: keep its SQLSTATE only.
        let state = e.as_database_error().and_then(|d| d.code()).map(|c| c.into_owned());
        let detail = format!("database error, SQLSTATE {}", state.as_deref().unwrap_or("-"));
        Self::Internal { code: "db.error", detail: Some(detail.into()), logged: false }
    }
}

impl From<async_graphql::Error> for ApiError {
    fn from(e: async_graphql::Error) -> Self {
        Self::Graphql(e)
    }
}

impl From<ApiError> for async_graphql::Error {
    fn from(e: ApiError) -> Self {
        if let ApiError::Graphql(inner) = e {
            return inner;
        }
        e.report();
        let code = e.code();
        async_graphql::Error::new(e.message()).extend_with(|_, ext| ext.set("code", code))
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
