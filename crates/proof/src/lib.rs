//! # Chartledger record proofs
//!
//! The proof bundle of `schema/proof-format.md`, the one a legal team hands to a third
//! party: one JSON document proving what a clinical entry (all its versions) or one event
//! said, who signed it and when, and that a signed checkpoint commits to it.
//! This crate holds the bundle types ([`ProofBundle`]), pure helpers to assemble one from
//! data the caller fetched ([`event_item`], [`checkpoint_item`], [`is_entry_version`]),
//! and the offline verifier ([`verify()`]).
//!
//! Pure like `ledger`: no IO, no async, no database. Every check reuses the ledger core
//! (envelope decoding, payload commitments, strict signatures, the key registry fold,
//! RFC 9162 proofs, C2SP notes); this crate only says what must be checked, in which
//! order, and names the first failure ([`ProofError`], with stable codes).
//!
//! Trust is direct (a trusted key signed the checkpoint) or anchored (a trusted key is
//! the first in `$keys`); version 1 bundles (every item proven, no registry head) keep
//! verifying ([`v1`], `schema/vectors/proof-v1.json`).
//!
//! The modules follow the format document: `document` (section 1), `render` (section 3),
//! `assembly` (the helpers `store::proofs` uses), `verify` (section 4), `error` (section 5)
//! and [`v1`] (section 8).

mod assembly;
mod document;
mod error;
mod render;
pub mod v1;
mod verify;

use base64::engine::GeneralPurpose;

pub use assembly::{
    checkpoint_item, encode_bytes, encode_hashes, encode_path, event_item, is_entry_version, Selection,
};
pub use document::{
    AnyBundle, Bundle, CheckpointItem, ConsistencyItem, EventItem, Inclusion, KeysHead, ProofBundle, Subject,
};
pub use error::{ErrorKind, Location, ProofError};
pub use render::{render_event, render_time};
pub use verify::{
    parse_json, parse_trusted_keys, verify, verify_any, verify_json, Trust, Verified, VerifiedEvent,
};

/// The `format` string of version 1 (still verified; no longer produced).
pub const FORMAT_V1: &str = "chartledger-proof/v1";
/// The `format` string of version 2, the one [`ProofBundle`] and the assembly helpers
/// produce.
pub const FORMAT_V2: &str = "chartledger-proof/v2";
/// The largest bundle [`verify_json`] parses.
pub const MAX_BUNDLE_LEN: usize = 16 << 20;

/// Base64 in bundles: the ledger's strict engine (one spelling per byte string).
const B64: GeneralPurpose = ledger::STRICT_BASE64;

#[cfg(test)]
mod tests;
