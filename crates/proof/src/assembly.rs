//! Pure helpers to assemble a bundle from data the caller fetched: event items with
//! their openings and renderings, the checkpoint member, audit paths as bundles spell
//! them, and which events of a stream a subject needs ([`Selection`]).
//!
//! Fetching is the caller's: `store::proofs` reads the events, payloads, proofs and the
//! checkpoint (read-only, so it works beside a running server) and calls these helpers.
//! `chartledger proof export` and the API's `entryProof` / `eventProof` (legal, auditors,
//! a patient's own record) return the same bundle; the API writes a checkpoint first when
//! the events are newer than the last one.
//! An entry bundle proves its last version by one inclusion proof; the earlier versions,
//! and the envelopes of the stream linking them (the `chain`), are bound to it by their
//! hash links.
//! The rule for which events are versions of an entry ([`is_entry_version`]) is the one
//! the verifier applies (section 4, step 7).

use base64::Engine as _;
use ledger::{Hash, Payload, SignedEvent};
use serde_json::Value;
use uuid::Uuid;

use crate::error::err;
use crate::render::{render_checkpoint, render_event};
use crate::verify::decode::parse_checkpoint;
use crate::{CheckpointItem, ErrorKind, EventItem, Inclusion, Location, ProofError, B64};

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
pub(crate) fn entry_id_member(event_type: &str) -> Option<&'static str> {
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

pub(crate) fn payload_names_entry(bytes: &[u8], member: &str, entry_id: Uuid) -> bool {
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
