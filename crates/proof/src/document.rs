//! The bundle document (`schema/proof-format.md` section 1), as serde reads and writes it.
//!
//! The types mirror the JSON one to one (`deny_unknown_fields` everywhere), so parsing
//! checks the document's shape (step 1 of section 4) and nothing more.
//! Byte fields stay base64 text here: the verifier decodes them strictly, and the
//! readable renderings (`decoded`, the checkpoint's members) are compared with what the
//! bytes render to, never trusted.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::v1;

/// The bundle document (`schema/proof-format.md` section 1), over the checkpoint member
/// `C` and event item `I` of its version. Byte fields are kept as their base64 text:
/// [`verify`](fn@crate::verify) decodes them strictly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle<C, I> {
    pub format: String,
    pub subject: Subject,
    pub checkpoint: C,
    pub keys: Vec<I>,
    pub events: Vec<I>,
    pub chain: Vec<String>,
    #[serde(default)]
    pub consistency: Option<ConsistencyItem>,
}

/// A proof bundle, version 2. Version 1 bundles are parsed by [`parse_json`](crate::parse_json)
/// into [`v1::ProofBundle`] (section 8).
pub type ProofBundle = Bundle<CheckpointItem, EventItem>;

/// What a bundle is about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Subject {
    /// A clinical entry and all its versions, in the patient's stream.
    Entry { patient_id: Uuid, entry_id: Uuid },
    /// One event.
    Event { event_id: Uuid },
}

/// The signed checkpoint and its readable rendering.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointItem {
    pub note: String,
    pub origin: String,
    pub size: u64,
    pub root_hash: String,
    pub time: Option<String>,
    /// The `chartledger-keys` extension: the last `$keys` event in the checkpoint's tree.
    pub keys_head: Option<KeysHead>,
}

/// Rendering of the checkpoint's `chartledger-keys` extension.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysHead {
    pub revision: u64,
    /// Hex of the event hash.
    pub event_hash: String,
}

/// One event with its opening, rendering and (for the one event of its list that needs
/// it) inclusion proof.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventItem {
    pub envelope: String,
    pub payload: Option<String>,
    pub salt: Option<String>,
    pub inclusion: Option<Inclusion>,
    pub decoded: Value,
}

/// An RFC 9162 inclusion proof: the leaf index and the audit path, its hashes
/// concatenated into one base64 string.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inclusion {
    pub position: u64,
    pub proof: String,
}

/// A parsed bundle of either version.
#[derive(Clone, Debug, PartialEq)]
pub enum AnyBundle {
    V1(v1::ProofBundle),
    V2(ProofBundle),
}

/// An RFC 9162 consistency proof from an older checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyItem {
    pub old_checkpoint: String,
    pub proof: Vec<String>,
}
