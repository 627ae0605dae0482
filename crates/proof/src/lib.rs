//! # Chartledger record proofs
//!
//! The proof bundle of `schema/proof-format.md`: one JSON document proving what a clinical
//! entry (all its versions) or one event said, who signed it and when, and that a signed
//! checkpoint commits to it. This crate holds the bundle types ([`ProofBundle`]), pure
//! helpers to assemble one from data the caller fetched ([`event_item`],
//! [`checkpoint_item`], [`is_entry_version`]), and the offline verifier ([`verify`]).
//!
//! Pure like `ledger`: no IO, no async, no database. Every check reuses the ledger core
//! (envelope decoding, payload commitments, strict signatures, the key registry fold,
//! RFC 9162 proofs, C2SP notes); this crate only says what must be checked, in which
//! order, and names the first failure ([`ProofError`], with stable codes).

use std::fmt;

use base64::engine::GeneralPurpose;
use base64::Engine as _;
use ledger::checkpoint::{Checkpoint, CheckpointError};
use ledger::keys::{
    KeyIntroduced, KeyRecord, KeyRegistry, KeyRetired, RetireReason, KEY_INTRODUCED, KEY_RETIRED,
};
use ledger::merkle::{self, MerkleError};
use ledger::note::{Note, NoteError, NoteVerifier};
use ledger::{Hash, KeyId, LedgerError, Payload, SignedEvent, StreamId, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

/// The `format` string of version 1 (still verified; no longer produced).
pub const FORMAT_V1: &str = "chartledger-proof/v1";
/// The `format` string of version 2, the one [`ProofBundle`] and the assembly helpers
/// produce.
pub const FORMAT_V2: &str = "chartledger-proof/v2";
/// The largest bundle [`verify_json`] parses.
pub const MAX_BUNDLE_LEN: usize = 16 << 20;

/// Base64 in bundles: the ledger's strict engine (one spelling per byte string).
const B64: GeneralPurpose = ledger::STRICT_BASE64;

// ------------------------------------------------------------------ the document

/// The bundle document (`schema/proof-format.md` section 1), over the checkpoint member
/// `C` and event item `I` of its version. Byte fields are kept as their base64 text:
/// [`verify`] decodes them strictly.
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

/// A proof bundle, version 2. Version 1 bundles are parsed by [`parse_json`] into
/// [`v1::ProofBundle`] (section 8).
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

/// Version 1 documents (`schema/proof-format.md` section 8): parsed and verified, never
/// produced.
pub mod v1 {
    use serde::{Deserialize, Serialize};
    use serde_json::Value;

    /// A version 1 bundle: the same document with the v1 checkpoint member and items.
    pub type ProofBundle = super::Bundle<CheckpointItem, EventItem>;

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

// ------------------------------------------------------------------ errors

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

fn err(location: Location, kind: ErrorKind) -> ProofError {
    ProofError { location, kind }
}

// ------------------------------------------------------------------ renderings

/// Times in renderings: RFC 3339 with six digits for years 1..9999, else `@<micros>us`.
pub fn render_time(t: Timestamp) -> String {
    const MIN: i64 = -62_135_596_800_000_000; // 0001-01-01T00:00:00Z
    const END: i64 = 253_402_300_800_000_000; // 10000-01-01T00:00:00Z
    let m = t.as_micros();
    if (MIN..END).contains(&m) {
        t.to_rfc3339()
    } else {
        format!("@{m}us")
    }
}

fn render_payload(event: &SignedEvent, payload: Option<&Payload>) -> Value {
    let Some(p) = payload else { return Value::Null };
    let body = event.body();
    if body.stream_id.as_str() == StreamId::KEYS {
        match body.event_type.as_str() {
            KEY_INTRODUCED => {
                if let Ok(k) = KeyIntroduced::from_bytes(p.bytes()) {
                    return json!({
                        "algorithm": 1,
                        "public_key": B64.encode(k.public_key.as_bytes()),
                        "name": k.name,
                        "valid_from": render_time(k.valid_from),
                    });
                }
            }
            KEY_RETIRED => {
                if let Ok(r) = KeyRetired::from_bytes(p.bytes()) {
                    let reason = match r.reason {
                        RetireReason::Rotation => "rotation",
                        RetireReason::Compromise => "compromise",
                    };
                    return json!({
                        "key_id": r.key_id.to_hex(),
                        "valid_until": render_time(r.valid_until),
                        "reason": reason,
                    });
                }
            }
            _ => {}
        }
    } else if let Ok(v) = serde_json::from_slice::<Value>(p.bytes()) {
        return v;
    }
    json!({ "undecodable_bytes": p.bytes().len() })
}

/// The format version a document follows (they differ in renderings and in which items
/// carry inclusion proofs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// The `decoded` rendering of an event (`schema/proof-format.md` section 3).
pub fn render_event(event: &SignedEvent, payload: Option<&Payload>) -> Value {
    render_event_as(event, payload, Version::V2)
}

fn render_event_as(event: &SignedEvent, payload: Option<&Payload>, version: Version) -> Value {
    let b = event.body();
    let mut v = json!({
        "stream_id": b.stream_id.as_str(),
        "stream_revision": b.stream_revision,
        "event_id": b.event_id.hyphenated().to_string(),
        "event_type": b.event_type.as_str(),
        "schema_version": b.schema_version,
        "recorded_at": render_time(b.recorded_at),
        "actor_user_id": b.actor.user_id.hyphenated().to_string(),
        "actor_role": b.actor.role.as_str(),
        "key_id": b.key_id.to_hex(),
        "event_hash": hex::encode(event.hash()),
        "payload": render_payload(event, payload),
    });
    if let (Version::V1, Some(m)) = (version, v.as_object_mut()) {
        m.insert("recorded_at_micros".into(), b.recorded_at.as_micros().into());
        m.insert("payload_commitment".into(), hex::encode(b.payload_commitment).into());
        m.insert("prev_hash".into(), hex::encode(b.prev_hash).into());
    }
    v
}

fn render_checkpoint(note: &str, cp: &Checkpoint) -> Result<CheckpointItem, CheckpointError> {
    Ok(CheckpointItem {
        note: note.to_owned(),
        origin: cp.origin.clone(),
        size: cp.size,
        root_hash: B64.encode(cp.root_hash),
        time: cp.timestamp_micros()?.map(|t| render_time(Timestamp::from_micros(t))),
        keys_head: cp.keys_head()?.map(|(revision, h)| KeysHead { revision, event_hash: hex::encode(h) }),
    })
}

// ------------------------------------------------------------------ assembly helpers

/// The bundle item of an event, with its inclusion proof (leaf index and audit path) when
/// it is the one item of its list that carries one (section 1).
pub fn event_item(
    event: &SignedEvent,
    payload: Option<&Payload>,
    inclusion: Option<(u64, &[Hash])>,
) -> EventItem {
    EventItem {
        envelope: B64.encode(event.to_bytes()),
        payload: payload.map(|p| B64.encode(p.bytes())),
        salt: payload.map(|p| B64.encode(p.salt())),
        inclusion: inclusion.map(|(position, path)| Inclusion { position, proof: encode_path(path) }),
        decoded: render_event(event, payload),
    }
}

/// An audit path as bundles carry it: the hashes concatenated, in base64.
pub fn encode_path(hashes: &[Hash]) -> String {
    B64.encode(hashes.concat())
}

/// The checkpoint member for a signed checkpoint note (not verified here).
pub fn checkpoint_item(note: &str) -> Result<CheckpointItem, ProofError> {
    let cp = parse_checkpoint(note, Location::Checkpoint)?;
    render_checkpoint(note, &cp).map_err(|e| err(Location::Checkpoint, ErrorKind::Checkpoint(e)))
}

/// The base64 of each hash, as bundles carry consistency proofs.
pub fn encode_hashes(hashes: &[Hash]) -> Vec<String> {
    hashes.iter().map(|h| B64.encode(h)).collect()
}

/// Base64 as bundles spell bytes.
pub fn encode_bytes(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// The id member a version of `entry_id` carries, by event type (`None`: not an entry event).
fn entry_id_member(event_type: &str) -> Option<&'static str> {
    match event_type {
        "entry.recorded" | "entry.entered_in_error" => Some("entry_id"),
        "entry.amended" => Some("amendment_of_id"),
        _ => None,
    }
}

/// Is this event a version of `entry_id` (`entry.recorded`, `entry.amended` or
/// `entry.entered_in_error` whose payload names it)? Erased payloads cannot be matched
/// and answer false. The same rule the verifier applies (section 4, step 7).
pub fn is_entry_version(event: &SignedEvent, payload: Option<&Payload>, entry_id: Uuid) -> bool {
    let (Some(member), Some(p)) = (entry_id_member(event.body().event_type.as_str()), payload) else {
        return false;
    };
    payload_names_entry(p.bytes(), member, entry_id)
}

fn payload_names_entry(bytes: &[u8], member: &str, entry_id: Uuid) -> bool {
    serde_json::from_slice::<Value>(bytes)
        .ok()
        .as_ref()
        .and_then(|v| v.get(member))
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok())
        == Some(entry_id)
}

/// Which events of a stream go into a bundle: the subject's (`events`) and the ones
/// linking them (`chain`), as indices into the stream slice given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    pub events: Vec<usize>,
    pub chain: Vec<usize>,
}

impl Selection {
    /// The versions of `entry_id` in `stream` (a contiguous run of one stream's events in
    /// revision order, with their payloads): its `entry.recorded` first, then every
    /// `entry.amended` and `entry.entered_in_error` of it; the chain is every other event
    /// between the first and the last. Empty when the entry is not there.
    pub fn entry_versions(stream: &[(&SignedEvent, Option<&Payload>)], entry_id: Uuid) -> Self {
        let Some(first) = stream.iter().position(|(e, p)| {
            e.body().event_type.as_str() == "entry.recorded" && is_entry_version(e, *p, entry_id)
        }) else {
            return Self::default();
        };
        let events: Vec<usize> = std::iter::once(first)
            .chain((first + 1..stream.len()).filter(|&i| {
                let (e, p) = stream[i];
                e.body().event_type.as_str() != "entry.recorded" && is_entry_version(e, p, entry_id)
            }))
            .collect();
        Self::linking(events)
    }

    /// The given subject indices (ascending) and every index between them as the chain.
    pub fn linking(events: Vec<usize>) -> Self {
        let chain = match (events.first(), events.last()) {
            (Some(&lo), Some(&hi)) => (lo + 1..hi).filter(|i| events.binary_search(i).is_err()).collect(),
            _ => Vec::new(),
        };
        Self { events, chain }
    }
}

// ------------------------------------------------------------------ verification

/// One verified event of the subject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedEvent {
    /// Its global position, when the bundle proves its inclusion directly; `None` for the
    /// earlier versions, proven by the hash links to the last one.
    pub position: Option<u64>,
    pub event_id: Uuid,
    pub stream_id: String,
    pub stream_revision: u64,
    pub event_type: String,
    pub schema_version: u16,
    pub recorded_at: Timestamp,
    pub actor_user_id: Uuid,
    pub actor_role: String,
    pub key_id: KeyId,
    /// The signing key's registry name.
    pub key_name: String,
    /// The payload bytes, `None` when erased.
    pub payload: Option<Vec<u8>>,
}

/// How the checkpoint's signature was trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trust {
    /// Signed by a trusted key.
    Direct,
    /// A trusted key is the registry's anchor; signed by a key of that registry valid at
    /// the checkpoint's time.
    Anchored,
}

/// What a bundle proves.
#[derive(Clone, Debug)]
pub struct Verified {
    /// The bundle's `format`.
    pub format: &'static str,
    pub subject: Subject,
    pub origin: String,
    pub checkpoint_size: u64,
    pub checkpoint_root: Hash,
    pub checkpoint_time: Option<Timestamp>,
    /// Names of the keys whose checkpoint signatures verified.
    pub signed_by: Vec<String>,
    pub trust: Trust,
    /// The subject's events, in stream order.
    pub events: Vec<VerifiedEvent>,
    /// Number of stream envelopes linking them.
    pub chain_len: usize,
    /// The key registry the bundle proves.
    pub keys: Vec<KeyRecord>,
    /// The checkpoint names the registry's head, so `keys` is the whole registry as of
    /// the checkpoint (section 4, step 3).
    pub keys_complete: bool,
    /// Size and root of the older checkpoint this one is proven consistent with.
    pub consistent_with: Option<(u64, Hash)>,
}

/// Parse a bundle from JSON (at most [`MAX_BUNDLE_LEN`] bytes) and verify it.
pub fn verify_json(bytes: &[u8], trusted: &[NoteVerifier]) -> Result<Verified, ProofError> {
    verify_any(&parse_json(bytes)?, trusted)
}

/// Parse a bundle of either version (step 1's JSON shape; base64 is checked by
/// [`verify`]). The `format` member chooses the version.
pub fn parse_json(bytes: &[u8]) -> Result<AnyBundle, ProofError> {
    #[derive(Deserialize)]
    struct Format {
        format: String,
    }
    if bytes.len() > MAX_BUNDLE_LEN {
        return Err(err(Location::Bundle, ErrorKind::TooLarge));
    }
    let malformed = |e: serde_json::Error| {
        err(Location::Bundle, ErrorKind::Malformed { line: e.line(), column: e.column() })
    };
    let Format { format } = serde_json::from_slice(bytes).map_err(malformed)?;
    match format.as_str() {
        FORMAT_V2 => serde_json::from_slice(bytes).map(AnyBundle::V2).map_err(malformed),
        FORMAT_V1 => serde_json::from_slice(bytes).map(AnyBundle::V1).map_err(malformed),
        _ => Err(err(Location::Bundle, ErrorKind::UnsupportedFormat)),
    }
}

fn b64(s: &str, field: &'static str, at: Location) -> Result<Vec<u8>, ProofError> {
    B64.decode(s).map_err(|_| err(at, ErrorKind::InvalidBase64(field)))
}

fn b64_32(s: &str, field: &'static str, at: Location) -> Result<[u8; 32], ProofError> {
    b64(s, field, at)?.try_into().map_err(|_| err(at, ErrorKind::InvalidBase64(field)))
}

fn decode_hashes(v: &[String], field: &'static str, at: Location) -> Result<Vec<Hash>, ProofError> {
    v.iter().map(|s| b64_32(s, field, at)).collect()
}

fn parse_checkpoint(note: &str, at: Location) -> Result<Checkpoint, ProofError> {
    let parsed =
        Note::parse(note.as_bytes()).map_err(|e| err(at, ErrorKind::Checkpoint(CheckpointError::Note(e))))?;
    Checkpoint::parse(parsed.text()).map_err(|e| err(at, ErrorKind::Checkpoint(e)))
}

/// An audit path as a document spells it.
#[derive(Clone, Copy)]
enum PathRef<'a> {
    /// Version 1: one base64 string per hash.
    List(&'a [String]),
    /// Version 2: the hashes concatenated, one base64 string.
    Packed(&'a str),
}

/// An event item of either version.
struct ItemRef<'a> {
    envelope: &'a str,
    payload: Option<&'a str>,
    salt: Option<&'a str>,
    inclusion: Option<(u64, PathRef<'a>)>,
    decoded: &'a Value,
}

impl<'a> From<&'a EventItem> for ItemRef<'a> {
    fn from(i: &'a EventItem) -> Self {
        ItemRef {
            envelope: &i.envelope,
            payload: i.payload.as_deref(),
            salt: i.salt.as_deref(),
            inclusion: i.inclusion.as_ref().map(|c| (c.position, PathRef::Packed(&c.proof))),
            decoded: &i.decoded,
        }
    }
}

impl<'a> From<&'a v1::EventItem> for ItemRef<'a> {
    fn from(i: &'a v1::EventItem) -> Self {
        ItemRef {
            envelope: &i.envelope,
            payload: i.payload.as_deref(),
            salt: i.salt.as_deref(),
            inclusion: Some((i.position, PathRef::List(&i.inclusion_proof))),
            decoded: &i.decoded,
        }
    }
}

/// The checkpoint member of either version.
#[derive(Clone, Copy)]
enum CheckpointRef<'a> {
    V1(&'a v1::CheckpointItem),
    V2(&'a CheckpointItem),
}

impl<'a> CheckpointRef<'a> {
    fn note(self) -> &'a str {
        match self {
            Self::V1(c) => &c.note,
            Self::V2(c) => &c.note,
        }
    }

    /// Does the member equal the checkpoint's rendering? (Version 1 renders no registry
    /// head.)
    fn matches(self, r: &CheckpointItem) -> bool {
        match self {
            Self::V1(c) => {
                r.note == c.note
                    && r.origin == c.origin
                    && r.size == c.size
                    && r.root_hash == c.root_hash
                    && r.time == c.time
            }
            Self::V2(c) => r == c,
        }
    }
}

/// A document of either version, as the verifier reads it.
struct Doc<'a> {
    version: Version,
    format: &'a str,
    subject: &'a Subject,
    checkpoint: CheckpointRef<'a>,
    keys: Vec<ItemRef<'a>>,
    events: Vec<ItemRef<'a>>,
    chain: &'a [String],
    consistency: Option<&'a ConsistencyItem>,
}

impl<'a> Doc<'a> {
    fn new<C, I>(b: &'a Bundle<C, I>, checkpoint: CheckpointRef<'a>) -> Self
    where
        ItemRef<'a>: From<&'a I>,
    {
        Doc {
            version: match checkpoint {
                CheckpointRef::V1(_) => Version::V1,
                CheckpointRef::V2(_) => Version::V2,
            },
            format: &b.format,
            subject: &b.subject,
            checkpoint,
            keys: b.keys.iter().map(ItemRef::from).collect(),
            events: b.events.iter().map(ItemRef::from).collect(),
            chain: &b.chain,
            consistency: b.consistency.as_ref(),
        }
    }
}

/// A decoded, opened, rendering-checked event item (signature and inclusion not yet checked).
struct Decoded {
    event: SignedEvent,
    payload: Option<Payload>,
    inclusion: Option<(u64, Vec<Hash>)>,
}

fn decode_path(path: PathRef<'_>, at: Location) -> Result<Vec<Hash>, ProofError> {
    const FIELD: &str = "inclusion proof";
    match path {
        PathRef::List(l) => decode_hashes(l, FIELD, at),
        PathRef::Packed(s) => {
            let bytes = b64(s, FIELD, at)?;
            if bytes.len() % 32 != 0 {
                return Err(err(at, ErrorKind::InvalidBase64(FIELD)));
            }
            Ok(bytes.chunks_exact(32).filter_map(|c| c.try_into().ok()).collect())
        }
    }
}

fn decode_item(item: &ItemRef<'_>, version: Version, at: Location) -> Result<Decoded, ProofError> {
    let envelope = b64(item.envelope, "envelope", at)?;
    let payload = match (item.payload, item.salt) {
        (Some(p), Some(s)) => {
            let salt = b64_32(s, "salt", at)?;
            let bytes = b64(p, "payload", at)?;
            Some(Payload::with_salt(salt, bytes).map_err(|e| err(at, ErrorKind::Ledger(e)))?)
        }
        (None, None) => None,
        _ => return Err(err(at, ErrorKind::PayloadOpening)),
    };
    let inclusion = match item.inclusion {
        Some((position, path)) => Some((position, decode_path(path, at)?)),
        None => None,
    };
    let event = SignedEvent::from_bytes(&envelope).map_err(|e| err(at, ErrorKind::Ledger(e)))?;
    if render_event_as(&event, payload.as_ref(), version) != *item.decoded {
        return Err(err(at, ErrorKind::RenderingMismatch));
    }
    if let Some(p) = &payload {
        event.check_payload(p).map_err(|e| err(at, ErrorKind::Ledger(e)))?;
    }
    Ok(Decoded { event, payload, inclusion })
}

fn check_inclusion(d: &Decoded, cp: &Checkpoint, at: Location) -> Result<(), ProofError> {
    let Some((position, path)) = &d.inclusion else { return Ok(()) };
    if *position >= cp.size {
        return Err(err(at, ErrorKind::Position));
    }
    let leaf = merkle::leaf_hash(d.event.hash());
    merkle::verify_inclusion(&leaf, *position, cp.size, path, &cp.root_hash)
        .map_err(|e| err(at, ErrorKind::Inclusion(e)))
}

/// Strict signature with a registry key valid at the event's time.
fn check_signed<'r>(
    event: &SignedEvent,
    registry: &'r KeyRegistry,
    at: Location,
) -> Result<&'r KeyRecord, ProofError> {
    let key = registry
        .key_valid_at(&event.key_id(), event.recorded_at())
        .map_err(|e| err(at, ErrorKind::Ledger(e)))?;
    event.verify(&key.public_key).map_err(|e| err(at, ErrorKind::Ledger(e)))?;
    Ok(key)
}

/// The note verifiers for a checkpoint taken at `time` (step 4).
fn checkpoint_verifiers(
    trusted: &[NoteVerifier],
    registry: &KeyRegistry,
    anchored: bool,
    time: Option<i64>,
) -> Vec<NoteVerifier> {
    let mut set = trusted.to_vec();
    if let (true, Some(t)) = (anchored, time) {
        for k in registry.keys().filter(|k| k.valid_at(Timestamp::from_micros(t))) {
            if let Ok(v) = NoteVerifier::new(&k.name, k.public_key) {
                if !set.contains(&v) {
                    set.push(v);
                }
            }
        }
    }
    set
}

/// Open a signed checkpoint note with the verifiers of step 4.
fn open_checkpoint(
    note: &str,
    trusted: &[NoteVerifier],
    registry: &KeyRegistry,
    anchored: bool,
    at: Location,
) -> Result<(Checkpoint, Vec<String>, Trust), ProofError> {
    let cp = parse_checkpoint(note, at)?;
    let time = cp.timestamp_micros().map_err(|e| err(at, ErrorKind::Checkpoint(e)))?;
    let verifiers = checkpoint_verifiers(trusted, registry, anchored, time);
    let (cp, verified) =
        Checkpoint::open(note.as_bytes(), &verifiers).map_err(|e| err(at, ErrorKind::Checkpoint(e)))?;
    let direct = verified.verified_by.iter().any(|n| trusted.iter().any(|t| t.name() == n));
    Ok((cp, verified.verified_by, if direct { Trust::Direct } else { Trust::Anchored }))
}

/// Verify a version 2 bundle against trusted keys: `schema/proof-format.md` section 4,
/// step by step. Returns what is proven, or the first failure.
pub fn verify(bundle: &ProofBundle, trusted: &[NoteVerifier]) -> Result<Verified, ProofError> {
    verify_doc(&Doc::new(bundle, CheckpointRef::V2(&bundle.checkpoint)), trusted)
}

/// Verify a bundle of either version.
pub fn verify_any(bundle: &AnyBundle, trusted: &[NoteVerifier]) -> Result<Verified, ProofError> {
    match bundle {
        AnyBundle::V1(b) => verify_doc(&Doc::new(b, CheckpointRef::V1(&b.checkpoint)), trusted),
        AnyBundle::V2(b) => verify(b, trusted),
    }
}

/// Version 2: which item of a list carries the inclusion proof (section 1).
fn check_placement(
    items: &[ItemRef<'_>],
    proven: Option<usize>,
    at: fn(usize) -> Location,
) -> Result<(), ProofError> {
    for (i, item) in items.iter().enumerate() {
        if item.inclusion.is_some() != (Some(i) == proven) {
            return Err(err(at(i), ErrorKind::InclusionPlacement));
        }
    }
    Ok(())
}

fn verify_doc(doc: &Doc<'_>, trusted: &[NoteVerifier]) -> Result<Verified, ProofError> {
    // Step 1 (the JSON shape was checked by the parser).
    let format = match doc.version {
        Version::V1 => FORMAT_V1,
        Version::V2 => FORMAT_V2,
    };
    if doc.format != format {
        return Err(err(Location::Bundle, ErrorKind::UnsupportedFormat));
    }
    if doc.keys.is_empty() || doc.events.is_empty() {
        return Err(err(Location::Bundle, ErrorKind::Empty));
    }

    // Step 2: the checkpoint text and its rendering.
    let cp_at = Location::Checkpoint;
    let note = doc.checkpoint.note();
    let cp = parse_checkpoint(note, cp_at)?;
    let rendering = render_checkpoint(note, &cp).map_err(|e| err(cp_at, ErrorKind::Checkpoint(e)))?;
    if !doc.checkpoint.matches(&rendering) {
        return Err(err(cp_at, ErrorKind::RenderingMismatch));
    }
    // Version 1 ignores the registry head (its bundles predate it).
    let keys_head = match doc.version {
        Version::V1 => None,
        Version::V2 => cp.keys_head().map_err(|e| err(cp_at, ErrorKind::Checkpoint(e)))?,
    };
    if doc.version == Version::V2 {
        let last_key = doc.keys.len() - 1;
        check_placement(&doc.keys, keys_head.is_none().then_some(last_key), Location::Keys)?;
        check_placement(&doc.events, Some(doc.events.len() - 1), Location::Events)?;
    }

    // Step 3: the key registry.
    let mut registry = KeyRegistry::new();
    let mut last_position = None;
    let mut last_key = None;
    for (i, item) in doc.keys.iter().enumerate() {
        let at = Location::Keys(i);
        let d = decode_item(item, doc.version, at)?;
        if d.event.stream_id().as_str() != StreamId::KEYS || d.event.stream_revision() != i as u64 {
            return Err(err(at, ErrorKind::WrongStream));
        }
        let payload = d.payload.as_ref().ok_or(err(at, ErrorKind::PayloadOpening))?;
        registry.apply(&d.event, payload).map_err(|e| err(at, ErrorKind::Ledger(e)))?;
        if let Some((position, _)) = d.inclusion {
            if last_position.is_some_and(|p| position <= p) {
                return Err(err(at, ErrorKind::Position));
            }
            last_position = Some(position);
        }
        check_inclusion(&d, &cp, at)?;
        last_key = Some((d.event.stream_revision(), *d.event.hash()));
    }
    if keys_head.is_some() && last_key != keys_head {
        return Err(err(Location::Keys(doc.keys.len() - 1), ErrorKind::KeysHead));
    }

    // Step 4: the checkpoint signature.
    let anchored =
        registry.anchor().is_some_and(|a| trusted.iter().any(|t| t.verifying_key() == &a.public_key));
    let (_, signed_by, trust) = open_checkpoint(note, trusted, &registry, anchored, cp_at)?;

    // Step 5: the subject's events.
    let mut events: Vec<Decoded> = Vec::with_capacity(doc.events.len());
    let mut verified_events = Vec::with_capacity(doc.events.len());
    for (i, item) in doc.events.iter().enumerate() {
        let at = Location::Events(i);
        let d = decode_item(item, doc.version, at)?;
        if let Some(prev) = events.last() {
            if prev.event.stream_id() != d.event.stream_id() {
                return Err(err(at, ErrorKind::WrongStream));
            }
            if d.event.stream_revision() <= prev.event.stream_revision() {
                return Err(err(at, ErrorKind::Chain("subject events out of revision order")));
            }
        }
        let key = check_signed(&d.event, &registry, at)?;
        check_inclusion(&d, &cp, at)?;
        let b = d.event.body();
        verified_events.push(VerifiedEvent {
            position: d.inclusion.as_ref().map(|(p, _)| *p),
            event_id: b.event_id,
            stream_id: b.stream_id.as_str().to_owned(),
            stream_revision: b.stream_revision,
            event_type: b.event_type.as_str().to_owned(),
            schema_version: b.schema_version,
            recorded_at: b.recorded_at,
            actor_user_id: b.actor.user_id,
            actor_role: b.actor.role.as_str().to_owned(),
            key_id: b.key_id,
            key_name: key.name.clone(),
            payload: d.payload.as_ref().map(|p| p.bytes().to_vec()),
        });
        events.push(d);
    }

    // Step 6: the stream chain.
    check_chain(doc.chain, &events, &registry)?;

    // Step 7: the subject.
    check_subject(doc.subject, &events)?;

    // Step 8: consistency with an older checkpoint.
    let consistent_with = match doc.consistency {
        None => None,
        // The registry is trusted now (step 4 passed): its keys may sign the old checkpoint.
        Some(c) => Some(check_consistency(c, &cp, trusted, &registry)?),
    };

    Ok(Verified {
        format,
        subject: doc.subject.clone(),
        origin: cp.origin.clone(),
        checkpoint_size: cp.size,
        checkpoint_root: cp.root_hash,
        checkpoint_time: cp.timestamp_micros().ok().flatten().map(Timestamp::from_micros),
        signed_by,
        trust,
        events: verified_events,
        chain_len: doc.chain.len(),
        keys: registry.keys().cloned().collect(),
        keys_complete: keys_head.is_some(),
        consistent_with,
    })
}

fn check_chain(chain_items: &[String], events: &[Decoded], registry: &KeyRegistry) -> Result<(), ProofError> {
    let (Some(first), Some(last)) = (events.first(), events.last()) else {
        return Ok(());
    };
    let stream = first.event.stream_id();
    let (lo, hi) = (first.event.stream_revision(), last.event.stream_revision());
    let mut chain = Vec::with_capacity(chain_items.len());
    for (i, b) in chain_items.iter().enumerate() {
        let at = Location::Chain(i);
        let bytes = b64(b, "chain", at)?;
        let e = SignedEvent::from_bytes(&bytes).map_err(|e| err(at, ErrorKind::Ledger(e)))?;
        if e.stream_id() != stream {
            return Err(err(at, ErrorKind::WrongStream));
        }
        if e.stream_revision() <= lo || e.stream_revision() >= hi {
            return Err(err(at, ErrorKind::Chain("revision outside the subject's range")));
        }
        check_signed(&e, registry, at)?;
        chain.push(e);
    }
    // Merge by revision; both lists must be in order and together contiguous.
    let mut merged: Vec<(&SignedEvent, Location)> = events
        .iter()
        .enumerate()
        .map(|(i, d)| (&d.event, Location::Events(i)))
        .chain(chain.iter().enumerate().map(|(i, e)| (e, Location::Chain(i))))
        .collect();
    merged.sort_by_key(|(e, _)| e.stream_revision());
    for w in merged.windows(2) {
        let [(prev, _), (next, at)] = w else { continue };
        if next.stream_revision() == prev.stream_revision() {
            return Err(err(*at, ErrorKind::Chain("two events of the same revision")));
        }
        if prev.stream_revision().checked_add(1) != Some(next.stream_revision()) {
            return Err(err(*at, ErrorKind::Chain("gap in the stream chain")));
        }
        next.check_link(Some(prev)).map_err(|_| err(*at, ErrorKind::Chain("broken hash link")))?;
    }
    Ok(())
}

fn check_subject(subject: &Subject, events: &[Decoded]) -> Result<(), ProofError> {
    match subject {
        Subject::Event { event_id } => {
            let [only] = events else {
                return Err(err(Location::Bundle, ErrorKind::Subject("an event bundle has one event")));
            };
            if only.event.event_id() != *event_id {
                return Err(err(Location::Events(0), ErrorKind::Subject("not the subject event")));
            }
        }
        Subject::Entry { patient_id, entry_id } => {
            let stream = StreamId::patient(*patient_id);
            for (i, d) in events.iter().enumerate() {
                let at = Location::Events(i);
                if *d.event.stream_id() != stream {
                    return Err(err(at, ErrorKind::Subject("not the patient's stream")));
                }
                let ty = d.event.body().event_type.as_str();
                let type_ok = if i == 0 {
                    ty == "entry.recorded"
                } else {
                    ty == "entry.amended" || ty == "entry.entered_in_error"
                };
                let Some(member) = entry_id_member(ty).filter(|_| type_ok) else {
                    return Err(err(at, ErrorKind::Subject("not a version of an entry")));
                };
                if let Some(p) = &d.payload {
                    if !payload_names_entry(p.bytes(), member, *entry_id) {
                        return Err(err(at, ErrorKind::Subject("not a version of this entry")));
                    }
                }
            }
        }
    }
    Ok(())
}

fn check_consistency(
    c: &ConsistencyItem,
    cp: &Checkpoint,
    trusted: &[NoteVerifier],
    registry: &KeyRegistry,
) -> Result<(u64, Hash), ProofError> {
    let at = Location::Consistency;
    let proof = decode_hashes(&c.proof, "consistency proof", at)?;
    let (old, _, _) = open_checkpoint(&c.old_checkpoint, trusted, registry, true, at)?;
    if old.origin != cp.origin {
        return Err(err(at, ErrorKind::Consistency("the checkpoints name different logs")));
    }
    if old.size == 0 || old.size > cp.size {
        return Err(err(at, ErrorKind::Consistency("old checkpoint size out of range")));
    }
    merkle::verify_consistency(old.size, cp.size, &old.root_hash, &cp.root_hash, &proof)
        .map_err(|e| err(at, ErrorKind::ConsistencyProof(e)))?;
    Ok((old.size, old.root_hash))
}

/// Parse trusted keys: verifier key texts, one per line; blank lines and `#` comments
/// are skipped (the `--trusted-keys FILE` format).
pub fn parse_trusted_keys(text: &str) -> Result<Vec<NoteVerifier>, NoteError> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(NoteVerifier::from_vkey)
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn times_render_as_rfc3339_within_years_1_to_9999() {
        assert_eq!(render_time(Timestamp::from_micros(0)), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            render_time(Timestamp::from_micros(-62_135_596_800_000_000)),
            "0001-01-01T00:00:00.000000Z"
        );
        assert_eq!(render_time(Timestamp::from_micros(-62_135_596_800_000_001)), "@-62135596800000001us");
        assert_eq!(
            render_time(Timestamp::from_micros(253_402_300_799_999_999)),
            "9999-12-31T23:59:59.999999Z"
        );
        assert_eq!(render_time(Timestamp::from_micros(253_402_300_800_000_000)), "@253402300800000000us");
    }

    #[test]
    fn selections_link_the_gaps() {
        assert_eq!(Selection::linking(vec![2, 5, 6]), Selection { events: vec![2, 5, 6], chain: vec![3, 4] });
        assert_eq!(Selection::linking(vec![3]), Selection { events: vec![3], chain: vec![] });
        assert_eq!(Selection::linking(vec![]), Selection::default());
    }

    #[test]
    fn trusted_key_files_skip_comments_and_blank_lines() {
        let signer =
            ledger::note::NoteSigner::new("a.example/k", ed25519_dalek::SigningKey::from_bytes(&[3; 32]))
                .unwrap();
        let vkey = signer.verifier().to_vkey();
        let keys = parse_trusted_keys(&format!("# ledger\n\n  {vkey}  \n")).unwrap();
        assert_eq!(keys, vec![signer.verifier()]);
        assert!(parse_trusted_keys("not a key").is_err());
    }

    #[test]
    fn errors_name_the_place_and_never_quote_content() {
        let e = parse_json(br#"{"format":"SECRET-DIAGNOSIS"#).unwrap_err();
        assert_eq!(e.code(), "proof.malformed");
        assert!(!e.to_string().contains("SECRET"), "{e}");
        let e = err(Location::Events(2), ErrorKind::Ledger(LedgerError::InvalidSignature(Uuid::nil())));
        assert_eq!(e.code(), "ledger.invalid_signature");
        assert!(e.to_string().starts_with("events[2]: "), "{e}");
    }

    proptest! {
        /// Arbitrary bytes never panic the parser or the verifier.
        #[test]
        fn arbitrary_input_is_rejected_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            prop_assert!(verify_json(&bytes, &[]).is_err());
        }

        /// Base64 in bundles has exactly one spelling.
        #[test]
        fn base64_is_canonical(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let s = encode_bytes(&bytes);
            prop_assert_eq!(&b64(&s, "x", Location::Bundle).unwrap(), &bytes);
            if s.ends_with('=') {
                // Set an unused low bit of the last data character: the same bytes spelled
                // non-canonically, which must be refused.
                const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
                let i = s.trim_end_matches('=').len() - 1;
                let mut v = s.into_bytes();
                let idx = ALPHABET.iter().position(|&c| c == v[i]).unwrap();
                v[i] = ALPHABET[idx ^ 1];
                let t = String::from_utf8(v).unwrap();
                prop_assert!(b64(&t, "x", Location::Bundle).is_err());
            }
        }
    }
}
