//! The offline verifier: `schema/proof-format.md` section 4, step by step, naming the
//! first failure.
//!
//! Every check reuses the ledger core (envelope decoding, payload commitments, strict
//! signatures, the key registry fold, RFC 9162 proofs, C2SP notes); this module only says
//! what must be checked and in which order:
//!
//! 1. the format and shape (the parser, [`parse_json`]);
//! 2. the checkpoint text and its rendering, and (version 2) which item of each list
//!    carries the inclusion proof;
//! 3. the key registry, folded from the `$keys` events, which must end at the
//!    checkpoint's registry head when it names one (the `chartledger-keys` extension,
//!    written by `store::checkpointer` and checked by `store::verify_ledger`): then the
//!    bundle proves the registry complete as of the checkpoint, and its key events need
//!    no inclusion proofs;
//! 4. the checkpoint signature;
//! 5. the subject's events: openings, renderings, signatures by registry keys valid at
//!    their time, the one inclusion proof;
//! 6. the stream chain: the subject's events and the linking envelopes together form a
//!    contiguous, hash-linked run of one stream;
//! 7. the subject: the events are the versions of the named entry, or the named event;
//! 8. consistency with an older checkpoint, when the bundle carries a proof of it.
//!
//! Trust is [`Trust::Direct`] (a trusted key signed the checkpoint) or
//! [`Trust::Anchored`] (a trusted key is the registry's anchor, the first key in
//! `$keys`, and a key of that registry valid at the checkpoint's time signed it).
//! Both versions are read through one view of the document (`decode::Doc`), so the steps
//! are written once.
//! `tests/proof_verifier.py` is a second verifier written from the format document alone,
//! run by `crates/proof/tests/proof.rs` when `python3` with `cryptography` is present.

pub(crate) mod decode;

use ledger::checkpoint::Checkpoint;
use ledger::keys::{KeyRecord, KeyRegistry};
use ledger::merkle;
use ledger::note::{NoteError, NoteVerifier};
use ledger::{Hash, KeyId, SignedEvent, StreamId, Timestamp};
use serde::Deserialize;
use uuid::Uuid;

use self::decode::{b64, decode_hashes, decode_item, parse_checkpoint, CheckpointRef, Decoded, Doc, ItemRef};
use crate::assembly::{entry_id_member, payload_names_entry};
use crate::error::err;
use crate::render::{render_checkpoint, Version};
use crate::{
    AnyBundle, ConsistencyItem, ErrorKind, Location, ProofBundle, ProofError, Subject, FORMAT_V1, FORMAT_V2,
    MAX_BUNDLE_LEN,
};

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

/// Parse a bundle from JSON (at most [`MAX_BUNDLE_LEN`](crate::MAX_BUNDLE_LEN) bytes) and verify it.
pub fn verify_json(bytes: &[u8], trusted: &[NoteVerifier]) -> Result<Verified, ProofError> {
    verify_any(&parse_json(bytes)?, trusted)
}

/// Parse a bundle of either version (step 1's JSON shape; base64 is checked by
/// [`verify()`]). The `format` member chooses the version.
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
