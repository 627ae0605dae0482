//! The ledger core's error type. Every variant has a stable code (`code()`); messages
//! never contain payload bytes or other untrusted content.

use uuid::Uuid;

/// Errors of the ledger core. Callers tell cases apart by variant or by [`LedgerError::code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    #[error("invalid stream id")]
    InvalidStreamId,
    #[error("invalid event type")]
    InvalidEventType,
    #[error("invalid role name")]
    InvalidRole,
    #[error("event id is not a UUIDv7")]
    InvalidEventId,
    #[error("unsupported envelope format version {0}")]
    UnsupportedFormat(u16),
    #[error("envelope is malformed")]
    MalformedEnvelope,
    #[error("envelope exceeds {max} bytes")]
    EnvelopeTooLarge { max: usize },
    #[error("payload exceeds {max} bytes")]
    PayloadTooLarge { max: usize },
    #[error("payload does not open the commitment of event {0}")]
    PayloadCommitmentMismatch(Uuid),
    #[error("event {0} signature is invalid")]
    InvalidSignature(Uuid),
    #[error("event {0} names a different signing key")]
    KeyIdMismatch(Uuid),
    #[error("invalid public key")]
    InvalidPublicKey,
    #[error("invalid key payload")]
    MalformedKeyPayload,
    #[error("unknown key")]
    UnknownKey,
    #[error("key not valid at the event's time")]
    KeyNotValidAt,
    #[error("key registry rule violated: {0}")]
    KeyRegistry(&'static str),
    #[error("first event of a stream must have revision 0 and the genesis previous hash")]
    BadGenesis,
    #[error("hash link broken")]
    BrokenHashLink,
}

impl LedgerError {
    /// A stable machine-readable code, e.g. `ledger.invalid_signature`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidStreamId => "ledger.invalid_stream_id",
            Self::InvalidEventType => "ledger.invalid_event_type",
            Self::InvalidRole => "ledger.invalid_role",
            Self::InvalidEventId => "ledger.invalid_event_id",
            Self::UnsupportedFormat(_) => "ledger.unsupported_format",
            Self::MalformedEnvelope => "ledger.malformed_envelope",
            Self::EnvelopeTooLarge { .. } => "ledger.envelope_too_large",
            Self::PayloadTooLarge { .. } => "ledger.payload_too_large",
            Self::PayloadCommitmentMismatch(_) => "ledger.payload_commitment_mismatch",
            Self::InvalidSignature(_) => "ledger.invalid_signature",
            Self::KeyIdMismatch(_) => "ledger.key_id_mismatch",
            Self::InvalidPublicKey => "ledger.invalid_public_key",
            Self::MalformedKeyPayload => "ledger.malformed_key_payload",
            Self::UnknownKey => "ledger.unknown_key",
            Self::KeyNotValidAt => "ledger.key_not_valid_at",
            Self::KeyRegistry(_) => "ledger.key_registry",
            Self::BadGenesis => "ledger.bad_genesis",
            Self::BrokenHashLink => "ledger.broken_hash_link",
        }
    }
}
