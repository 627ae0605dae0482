//! Version 1 documents (`schema/proof-format.md` section 8): parsed and verified, never
//! produced.
//!
//! Version 1 proves every item by its own inclusion proof (each item carries its
//! `position` and an `inclusion_proof` list) and its checkpoint names no `$keys` head.
//! The verifier reads both versions through one view (`verify::decode::Doc`), so the
//! steps of section 4 are written once.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A version 1 bundle: the same document with the v1 checkpoint member and items.
pub type ProofBundle = crate::Bundle<CheckpointItem, EventItem>;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointItem {
    pub note: String,
    pub origin: String,
    pub size: u64,
    pub root_hash: String,
    pub time: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventItem {
    pub position: u64,
    pub envelope: String,
    pub payload: Option<String>,
    pub salt: Option<String>,
    pub inclusion_proof: Vec<String>,
    pub decoded: Value,
}
