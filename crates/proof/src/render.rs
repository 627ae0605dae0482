//! The readable renderings of `schema/proof-format.md` section 3: the `decoded` member of
//! each event item and the checkpoint member.
//!
//! A rendering is a pure function of the bytes, so the verifier checks a bundle's
//! renderings by rendering again and comparing (`proof.rendering_mismatch`): a reader who
//! trusts only the rendering reads what the signed bytes say.
//! Clinical payloads render as their JSON; `$keys` payloads (bincode) render member by
//! member; anything that does not decode renders as its length only.
//! Times are RFC 3339 with six fractional digits inside years 1 to 9999 and
//! `@<micros>us` outside.
//! Version 1 renders three more envelope members (`recorded_at_micros`,
//! `payload_commitment`, `prev_hash`) and no registry head.

use base64::Engine as _;
use ledger::checkpoint::{Checkpoint, CheckpointError};
use ledger::keys::{KeyIntroduced, KeyRetired, RetireReason, KEY_INTRODUCED, KEY_RETIRED};
use ledger::{Payload, SignedEvent, StreamId, Timestamp};
use serde_json::{json, Value};

use crate::{CheckpointItem, KeysHead, B64};

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
pub(crate) enum Version {
    V1,
    V2,
}

/// The `decoded` rendering of an event (`schema/proof-format.md` section 3).
pub fn render_event(event: &SignedEvent, payload: Option<&Payload>) -> Value {
    render_event_as(event, payload, Version::V2)
}

pub(crate) fn render_event_as(event: &SignedEvent, payload: Option<&Payload>, version: Version) -> Value {
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

pub(crate) fn render_checkpoint(note: &str, cp: &Checkpoint) -> Result<CheckpointItem, CheckpointError> {
    Ok(CheckpointItem {
        note: note.to_owned(),
        origin: cp.origin.clone(),
        size: cp.size,
        root_hash: B64.encode(cp.root_hash),
        time: cp.timestamp_micros()?.map(|t| render_time(Timestamp::from_micros(t))),
        keys_head: cp.keys_head()?.map(|(revision, h)| KeysHead { revision, event_hash: hex::encode(h) }),
    })
}
