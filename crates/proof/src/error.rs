//! Verification failures: where ([`Location`]) and what ([`ErrorKind`]), with the stable
//! codes of `schema/proof-format.md` section 5.
//!
//! Messages are fixed text and never quote bundle content: a bundle carries clinical
//! payloads, and an error may end up in a log or a terminal the patient never sees.
//! Failures of the ledger core keep the ledger's own codes (`ledger.*`, `checkpoint.*`,
//! `note.*`), except an unverified checkpoint note, which is
//! `proof.untrusted_checkpoint` like a checkpoint signed by no trusted key.

use std::fmt;

use ledger::checkpoint::CheckpointError;
use ledger::merkle::MerkleError;
use ledger::note::NoteError;
use ledger::LedgerError;

/// Where a failure was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Location {
    Bundle,
    Checkpoint,
    Keys(usize),
    Events(usize),
    Chain(usize),
    Consistency,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bundle => f.write_str("bundle"),
            Self::Checkpoint => f.write_str("checkpoint"),
            Self::Keys(i) => write!(f, "keys[{i}]"),
            Self::Events(i) => write!(f, "events[{i}]"),
            Self::Chain(i) => write!(f, "chain[{i}]"),
            Self::Consistency => f.write_str("consistency"),
        }
    }
}

/// What failed. Messages are fixed text: they never quote bundle content.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    #[error("not a well-formed bundle (JSON line {line}, column {column})")]
    Malformed { line: usize, column: usize },
    #[error("bundle too large")]
    TooLarge,
    #[error("a bundle needs at least one $keys event and one subject event")]
    Empty,
    #[error("unsupported bundle format")]
    UnsupportedFormat,
    #[error("{0} is not canonical base64 of the right length")]
    InvalidBase64(&'static str),
    #[error("the readable rendering does not match the bytes")]
    RenderingMismatch,
    #[error("payload and salt must both be present (or both null for an erased payload)")]
    PayloadOpening,
    #[error("event is not in the expected stream or revision")]
    WrongStream,
    #[error("position out of range or out of order")]
    Position,
    #[error("inclusion proof does not lead to the checkpoint: {0}")]
    Inclusion(MerkleError),
    #[error("an inclusion proof is missing, or present where none belongs")]
    InclusionPlacement,
    #[error("the key registry does not end at the checkpoint's registry head")]
    KeysHead,
    #[error("checkpoint is not signed by a trusted key")]
    UntrustedCheckpoint,
    #[error("checkpoint: {0}")]
    Checkpoint(CheckpointError),
    #[error("stream chain: {0}")]
    Chain(&'static str),
    #[error("events do not match the subject: {0}")]
    Subject(&'static str),
    #[error("consistency: {0}")]
    Consistency(&'static str),
    #[error("consistency proof: {0}")]
    ConsistencyProof(MerkleError),
    #[error("{0}")]
    Ledger(LedgerError),
}

impl ErrorKind {
    /// The stable code (`schema/proof-format.md` section 5).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed { .. } | Self::TooLarge | Self::Empty => "proof.malformed",
            Self::UnsupportedFormat => "proof.unsupported_format",
            Self::InvalidBase64(_) => "proof.invalid_base64",
            Self::RenderingMismatch => "proof.rendering_mismatch",
            Self::PayloadOpening => "proof.payload_opening",
            Self::WrongStream => "proof.wrong_stream",
            Self::Position => "proof.position",
            Self::Inclusion(_) | Self::InclusionPlacement => "proof.inclusion",
            Self::KeysHead => "proof.keys_head",
            Self::UntrustedCheckpoint => "proof.untrusted_checkpoint",
            Self::Checkpoint(CheckpointError::Note(NoteError::UnverifiedNote)) => {
                "proof.untrusted_checkpoint"
            }
            Self::Checkpoint(e) => e.code(),
            Self::Chain(_) => "proof.chain",
            Self::Subject(_) => "proof.subject",
            Self::Consistency(_) | Self::ConsistencyProof(_) => "proof.consistency",
            Self::Ledger(e) => e.code(),
        }
    }
}

/// The first failure of a bundle: where and what.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {kind} [{}]", kind.code())]
pub struct ProofError {
    pub location: Location,
    pub kind: ErrorKind,
}

impl ProofError {
    pub fn code(&self) -> &'static str {
        self.kind.code()
    }
}

pub(crate) fn err(location: Location, kind: ErrorKind) -> ProofError {
    ProofError { location, kind }
}
