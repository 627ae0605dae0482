//! # Chartledger ledger core
//!
//! The format every Chartledger event is stored, signed and proven in. Pure: no IO, no
//! async, no database; randomness comes in as an argument.
//!
//! - [`envelope`]: the signed, hash-linked event envelope, its canonical bincode 1.3.3
//!   encoding, and the salted payload commitment (`schema/ledger-format.md`).
//! - [`keys`]: key ids, the ledger signing key, and the key registry folded from `$keys`.
//! - [`verify`]: strict Ed25519 verification, and batch verification that agrees with it.
//! - [`merkle`]: the RFC 9162 Merkle tree over event hashes in global order, with
//!   inclusion and consistency proofs planned for storage that fetches nodes itself.
//! - [`note`] and [`checkpoint`]: C2SP signed notes and tlog checkpoints.

pub mod checkpoint;
pub mod envelope;
pub mod error;
pub mod ids;
pub mod keys;
pub mod merkle;
pub mod note;
pub mod time;
pub mod verify;

/// A SHA-256 digest.
pub type Hash = [u8; 32];

pub use envelope::{EventBody, Payload, SignedEvent, GENESIS_PREV_HASH};
pub use error::LedgerError;
pub use ids::{Actor, EventType, RoleName, StreamId};
pub use keys::{KeyId, KeyRecord, KeyRegistry, LedgerSigningKey};
pub use note::STRICT_BASE64;
pub use time::Timestamp;
