//! A bundle of either version as the verifier reads it, and strict decoding of its
//! byte fields.
//!
//! Base64 is the ledger's strict engine: one spelling per byte string, so a bundle
//! cannot carry the same bytes two ways.
//! A decoded item has its envelope parsed, its payload opened and its rendering
//! compared; its signature and inclusion are checked by the steps in `verify`.

use base64::Engine as _;
use ledger::checkpoint::{Checkpoint, CheckpointError};
use ledger::note::Note;
use ledger::{Hash, Payload, SignedEvent};
use serde_json::Value;

use crate::error::err;
use crate::render::{render_event_as, Version};
use crate::{
    v1, Bundle, CheckpointItem, ConsistencyItem, ErrorKind, EventItem, Location, ProofError, Subject, B64,
};

pub(crate) fn b64(s: &str, field: &'static str, at: Location) -> Result<Vec<u8>, ProofError> {
    B64.decode(s).map_err(|_| err(at, ErrorKind::InvalidBase64(field)))
}

pub(crate) fn b64_32(s: &str, field: &'static str, at: Location) -> Result<[u8; 32], ProofError> {
    b64(s, field, at)?.try_into().map_err(|_| err(at, ErrorKind::InvalidBase64(field)))
}

pub(crate) fn decode_hashes(
    v: &[String],
    field: &'static str,
    at: Location,
) -> Result<Vec<Hash>, ProofError> {
    v.iter().map(|s| b64_32(s, field, at)).collect()
}

pub(crate) fn parse_checkpoint(note: &str, at: Location) -> Result<Checkpoint, ProofError> {
    let parsed =
        Note::parse(note.as_bytes()).map_err(|e| err(at, ErrorKind::Checkpoint(CheckpointError::Note(e))))?;
    Checkpoint::parse(parsed.text()).map_err(|e| err(at, ErrorKind::Checkpoint(e)))
}

/// An audit path as a document spells it.
#[derive(Clone, Copy)]
pub(crate) enum PathRef<'a> {
    /// Version 1: one base64 string per hash.
    List(&'a [String]),
    /// Version 2: the hashes concatenated, one base64 string.
    Packed(&'a str),
}

/// An event item of either version.
pub(crate) struct ItemRef<'a> {
    pub(crate) envelope: &'a str,
    pub(crate) payload: Option<&'a str>,
    pub(crate) salt: Option<&'a str>,
    pub(crate) inclusion: Option<(u64, PathRef<'a>)>,
    pub(crate) decoded: &'a Value,
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
pub(crate) enum CheckpointRef<'a> {
    V1(&'a v1::CheckpointItem),
    V2(&'a CheckpointItem),
}

impl<'a> CheckpointRef<'a> {
    pub(crate) fn note(self) -> &'a str {
        match self {
            Self::V1(c) => &c.note,
            Self::V2(c) => &c.note,
        }
    }

    /// Does the member equal the checkpoint's rendering? (Version 1 renders no registry
    /// head.)
    pub(crate) fn matches(self, r: &CheckpointItem) -> bool {
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
pub(crate) struct Doc<'a> {
    pub(crate) version: Version,
    pub(crate) format: &'a str,
    pub(crate) subject: &'a Subject,
    pub(crate) checkpoint: CheckpointRef<'a>,
    pub(crate) keys: Vec<ItemRef<'a>>,
    pub(crate) events: Vec<ItemRef<'a>>,
    pub(crate) chain: &'a [String],
    pub(crate) consistency: Option<&'a ConsistencyItem>,
}

impl<'a> Doc<'a> {
    pub(crate) fn new<C, I>(b: &'a Bundle<C, I>, checkpoint: CheckpointRef<'a>) -> Self
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
pub(crate) struct Decoded {
    pub(crate) event: SignedEvent,
    pub(crate) payload: Option<Payload>,
    pub(crate) inclusion: Option<(u64, Vec<Hash>)>,
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

pub(crate) fn decode_item(item: &ItemRef<'_>, version: Version, at: Location) -> Result<Decoded, ProofError> {
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
