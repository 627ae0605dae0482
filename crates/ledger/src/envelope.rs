//! The signed event envelope and its canonical encoding (`schema/ledger-format.md`).
//!
//! ```text
//! canonical envelope = body || signature            (bincode 1.3.3, fixint, little endian)
//! signature          = Ed25519(EVENT_SIGNATURE_CONTEXT || body)
//! event hash         = SHA-256(EVENT_HASH_TAG || body || signature)
//! payload commitment = SHA-256(PAYLOAD_COMMITMENT_TAG || salt || u64le(len) || payload)
//! ```
//! The clinical payload is *not* in the signed bytes: only its salted commitment is, so a
//! payload can be destroyed (erasure) while every signature, hash link and proof still
//! verifies.

use std::fmt;

use bincode::Options;
use ed25519_dalek::{Signature, Signer};
use rand_core::CryptoRngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::LedgerError;
use crate::ids::{validate_event_id, Actor, EventType, RoleName, StreamId};
use crate::keys::{KeyId, LedgerSigningKey};
use crate::time::Timestamp;
use crate::Hash;

/// Envelope format version written in the first two bytes of every body.
pub const FORMAT_VERSION: u16 = 1;
/// The largest canonical envelope accepted by the decoder. The validated fields bound a
/// real envelope to 460 bytes (a 396-byte body and the 64-byte signature,
/// see schema/ledger-format.md 3.1-3.2); anything bigger is rejected before it is parsed.
pub const MAX_ENVELOPE_LEN: usize = 1024;
/// The largest payload, in bytes (attachments are not payloads).
pub const MAX_PAYLOAD_LEN: usize = 1 << 20;
/// Salt length of a payload commitment.
pub const SALT_LEN: usize = 32;
/// `prev_hash` of revision 0 of every stream.
pub const GENESIS_PREV_HASH: Hash = [0u8; 32];

/// Domain separation tags: each ends with NUL, none is a prefix of another, and none can
/// begin a signed note (note text has no control characters), so an event signature can
/// never be taken for a checkpoint signature or the other way round.
pub const EVENT_SIGNATURE_CONTEXT: &[u8] = b"chartledger:v1:event-signature\0";
pub const EVENT_HASH_TAG: &[u8] = b"chartledger:v1:event-hash\0";
pub const PAYLOAD_COMMITMENT_TAG: &[u8] = b"chartledger:v1:payload-commitment\0";

/// The bincode 1.3.3 configuration of the format: fixed-width little-endian integers,
/// u64 length prefixes. Identical to `bincode::serialize`; decoding adds a size limit and
/// rejects trailing bytes.
fn wire_options() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_little_endian()
        .with_limit(MAX_ENVELOPE_LEN as u64)
        .reject_trailing_bytes()
}

/// Encode a value with the canonical options (no limit needed when encoding our own
/// validated values, but the limit is kept so we never produce what we would not accept).
pub(crate) fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, LedgerError> {
    wire_options().serialize(v).map_err(|_| LedgerError::EnvelopeTooLarge { max: MAX_ENVELOPE_LEN })
}

pub(crate) fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, LedgerError> {
    if bytes.len() > MAX_ENVELOPE_LEN {
        return Err(LedgerError::EnvelopeTooLarge { max: MAX_ENVELOPE_LEN });
    }
    wire_options().deserialize(bytes).map_err(|_| LedgerError::MalformedEnvelope)
}

/// The body as it is laid out on the wire. Field order is the format: never reorder.
#[derive(Serialize, Deserialize)]
struct WireBody {
    format: u16,
    stream_id: String,
    stream_revision: u64,
    event_id: [u8; 16],
    event_type: String,
    schema_version: u16,
    recorded_at_micros: i64,
    actor_user_id: [u8; 16],
    actor_role: String,
    payload_commitment: [u8; 32],
    prev_hash: [u8; 32],
    key_id: [u8; 32],
}

/// Everything that is signed. See `schema/ledger-format.md` for the byte layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventBody {
    pub stream_id: StreamId,
    pub stream_revision: u64,
    pub event_id: Uuid,
    pub event_type: EventType,
    pub schema_version: u16,
    pub recorded_at: Timestamp,
    pub actor: Actor,
    pub payload_commitment: Hash,
    pub prev_hash: Hash,
    pub key_id: KeyId,
}

impl EventBody {
    /// The canonical bytes of the body.
    pub fn to_bytes(&self) -> Result<Vec<u8>, LedgerError> {
        encode(&WireBody {
            format: FORMAT_VERSION,
            stream_id: self.stream_id.as_str().to_owned(),
            stream_revision: self.stream_revision,
            event_id: *self.event_id.as_bytes(),
            event_type: self.event_type.as_str().to_owned(),
            schema_version: self.schema_version,
            recorded_at_micros: self.recorded_at.as_micros(),
            actor_user_id: *self.actor.user_id.as_bytes(),
            actor_role: self.actor.role.as_str().to_owned(),
            payload_commitment: self.payload_commitment,
            prev_hash: self.prev_hash,
            key_id: *self.key_id.as_bytes(),
        })
    }

    fn from_wire(w: WireBody) -> Result<Self, LedgerError> {
        if w.format != FORMAT_VERSION {
            return Err(LedgerError::UnsupportedFormat(w.format));
        }
        let body = Self {
            stream_id: StreamId::new(w.stream_id)?,
            stream_revision: w.stream_revision,
            event_id: validate_event_id(Uuid::from_bytes(w.event_id))?,
            event_type: EventType::new(w.event_type)?,
            schema_version: w.schema_version,
            recorded_at: Timestamp::from_micros(w.recorded_at_micros),
            actor: Actor { user_id: Uuid::from_bytes(w.actor_user_id), role: RoleName::new(w.actor_role)? },
            payload_commitment: w.payload_commitment,
            prev_hash: w.prev_hash,
            key_id: KeyId::from_bytes(w.key_id),
        };
        body.check_genesis()?;
        Ok(body)
    }

    /// Revision 0, and only revision 0, carries the genesis previous hash.
    fn check_genesis(&self) -> Result<(), LedgerError> {
        if (self.stream_revision == 0) == (self.prev_hash == GENESIS_PREV_HASH) {
            Ok(())
        } else {
            Err(LedgerError::BadGenesis)
        }
    }

    /// Sign the body. `key_id` must already name `key` (see [`EventBody::key_id`]).
    pub fn sign(self, key: &LedgerSigningKey) -> Result<SignedEvent, LedgerError> {
        if self.key_id != key.key_id() {
            return Err(LedgerError::KeyIdMismatch(self.event_id));
        }
        self.check_genesis()?;
        validate_event_id(self.event_id)?;
        let body_bytes = self.to_bytes()?;
        let signature = key.signing_key().sign(&signature_message(&body_bytes));
        Ok(SignedEvent::assemble(self, body_bytes, signature))
    }
}

fn signature_message(body_bytes: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(EVENT_SIGNATURE_CONTEXT.len() + body_bytes.len());
    m.extend_from_slice(EVENT_SIGNATURE_CONTEXT);
    m.extend_from_slice(body_bytes);
    m
}

/// A signed envelope, with its canonical bytes and its hash computed once.
#[derive(Clone, PartialEq, Eq)]
pub struct SignedEvent {
    body: EventBody,
    body_bytes: Vec<u8>,
    signature: Signature,
    hash: Hash,
}

impl fmt::Debug for SignedEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedEvent")
            .field("event_id", &self.body.event_id)
            .field("stream_id", &self.body.stream_id)
            .field("stream_revision", &self.body.stream_revision)
            .field("hash", &hex::encode(self.hash))
            .finish_non_exhaustive()
    }
}

impl SignedEvent {
    fn assemble(body: EventBody, body_bytes: Vec<u8>, signature: Signature) -> Self {
        let sig = signature.to_bytes();
        let hash: Hash = Sha256::new()
            .chain_update(EVENT_HASH_TAG)
            .chain_update(&body_bytes)
            .chain_update(sig)
            .finalize()
            .into();
        Self { body, body_bytes, signature, hash }
    }

    /// Decode untrusted canonical bytes. Fails on anything that is not exactly the
    /// canonical encoding of a valid envelope (size limit, trailing bytes, bad tokens,
    /// unknown format version). Does not check the signature: see [`SignedEvent::verify`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, LedgerError> {
        #[derive(Deserialize)]
        struct WireEvent {
            body: WireBody,
            signature: ([u8; 32], [u8; 32]),
        }
        let w: WireEvent = decode(bytes)?;
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&w.signature.0);
        sig[32..].copy_from_slice(&w.signature.1);
        let body = EventBody::from_wire(w.body)?;
        let body_len = bytes.len() - 64;
        Ok(Self::assemble(body, bytes[..body_len].to_vec(), Signature::from_bytes(&sig)))
    }

    /// The canonical bytes: body followed by the 64-byte signature.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.body_bytes.len() + 64);
        v.extend_from_slice(&self.body_bytes);
        v.extend_from_slice(&self.signature.to_bytes());
        v
    }

    pub fn body(&self) -> &EventBody {
        &self.body
    }
    pub fn body_bytes(&self) -> &[u8] {
        &self.body_bytes
    }
    pub fn signature(&self) -> &Signature {
        &self.signature
    }
    /// SHA-256(EVENT_HASH_TAG || body || signature): the stream link and the Merkle leaf data.
    pub fn hash(&self) -> &Hash {
        &self.hash
    }
    pub fn event_id(&self) -> Uuid {
        self.body.event_id
    }
    pub fn stream_id(&self) -> &StreamId {
        &self.body.stream_id
    }
    pub fn stream_revision(&self) -> u64 {
        self.body.stream_revision
    }
    pub fn key_id(&self) -> KeyId {
        self.body.key_id
    }
    pub fn recorded_at(&self) -> Timestamp {
        self.body.recorded_at
    }

    /// The message Ed25519 signs: `EVENT_SIGNATURE_CONTEXT || body`.
    pub fn signature_message(&self) -> Vec<u8> {
        signature_message(&self.body_bytes)
    }

    /// Strict Ed25519 verification against `key`, which must be the key the body names.
    pub fn verify(&self, key: &ed25519_dalek::VerifyingKey) -> Result<(), LedgerError> {
        if KeyId::of(key) != self.body.key_id {
            return Err(LedgerError::KeyIdMismatch(self.body.event_id));
        }
        key.verify_strict(&self.signature_message(), &self.signature)
            .map_err(|_| LedgerError::InvalidSignature(self.body.event_id))
    }

    /// This event follows `prev` in the same stream (or is the genesis when `prev` is None).
    pub fn check_link(&self, prev: Option<&SignedEvent>) -> Result<(), LedgerError> {
        match prev {
            None if self.body.stream_revision == 0 && self.body.prev_hash == GENESIS_PREV_HASH => Ok(()),
            None => Err(LedgerError::BadGenesis),
            Some(p)
                if p.body.stream_id == self.body.stream_id
                    && p.body.stream_revision.checked_add(1) == Some(self.body.stream_revision)
                    && p.hash == self.body.prev_hash =>
            {
                Ok(())
            }
            Some(_) => Err(LedgerError::BrokenHashLink),
        }
    }

    /// Check that `payload` opens this event's commitment.
    pub fn check_payload(&self, payload: &Payload) -> Result<(), LedgerError> {
        if payload.commitment() == self.body.payload_commitment {
            Ok(())
        } else {
            Err(LedgerError::PayloadCommitmentMismatch(self.body.event_id))
        }
    }
}

/// A payload and the salt of its commitment. Stored beside the envelope, never inside it.
#[derive(Clone, PartialEq, Eq)]
pub struct Payload {
    salt: [u8; SALT_LEN],
    bytes: Vec<u8>,
}

impl fmt::Debug for Payload {
    // Payloads are clinical content: never print them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Payload({} bytes)", self.bytes.len())
    }
}

impl Payload {
    /// A payload with a fresh random salt.
    pub fn new(bytes: Vec<u8>, rng: &mut impl CryptoRngCore) -> Result<Self, LedgerError> {
        let mut salt = [0u8; SALT_LEN];
        rng.fill_bytes(&mut salt);
        Self::with_salt(salt, bytes)
    }

    /// A payload with a given salt (reading back from storage, or test vectors).
    pub fn with_salt(salt: [u8; SALT_LEN], bytes: Vec<u8>) -> Result<Self, LedgerError> {
        if bytes.len() > MAX_PAYLOAD_LEN {
            return Err(LedgerError::PayloadTooLarge { max: MAX_PAYLOAD_LEN });
        }
        Ok(Self { salt, bytes })
    }

    pub fn salt(&self) -> &[u8; SALT_LEN] {
        &self.salt
    }
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// SHA-256(PAYLOAD_COMMITMENT_TAG || salt || u64le(len) || bytes).
    pub fn commitment(&self) -> Hash {
        Sha256::new()
            .chain_update(PAYLOAD_COMMITMENT_TAG)
            .chain_update(self.salt)
            .chain_update((self.bytes.len() as u64).to_le_bytes())
            .chain_update(&self.bytes)
            .finalize()
            .into()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use proptest::prelude::*;

    fn test_key() -> LedgerSigningKey {
        LedgerSigningKey::new("test.chartledger.local", SigningKey::from_bytes(&[7u8; 32])).unwrap()
    }

    fn arb_token(max: usize) -> impl Strategy<Value = String> {
        proptest::string::string_regex(&format!("[a-z][a-z0-9_]{{0,{}}}", max - 1)).unwrap()
    }

    prop_compose! {
        fn arb_body(key_id: KeyId)(
            stream in proptest::string::string_regex("\\$?[a-z0-9][a-z0-9._:-]{0,100}").unwrap(),
            rev in any::<u64>(),
            id in any::<u128>(),
            ty in arb_token(64),
            schema in any::<u16>(),
            at in any::<i64>(),
            user in any::<u128>(),
            role in arb_token(32),
            commitment in any::<[u8; 32]>(),
            prev in any::<[u8; 32]>(),
        ) -> EventBody {
            // Force UUIDv7 bits.
            let id = (id & !(0xf << 76) & !(0b11 << 62)) | (0x7 << 76) | (0b10 << 62);
            EventBody {
                stream_id: StreamId::new(stream).unwrap(),
                stream_revision: rev,
                event_id: Uuid::from_u128(id),
                event_type: EventType::new(ty).unwrap(),
                schema_version: schema,
                recorded_at: Timestamp::from_micros(at),
                actor: Actor { user_id: Uuid::from_u128(user), role: RoleName::new(role).unwrap() },
                payload_commitment: commitment,
                prev_hash: if rev == 0 { GENESIS_PREV_HASH } else { prev },
                key_id,
            }
        }
    }

    #[test]
    fn encoding_is_bincode_serialize() {
        // Our options must produce exactly what bincode 1.3.3's `serialize` produces.
        let key = test_key();
        let body = EventBody {
            stream_id: StreamId::new("patient-1").unwrap(),
            stream_revision: 3,
            event_id: Uuid::now_v7(),
            event_type: EventType::new("clinical.entry_recorded").unwrap(),
            schema_version: 1,
            recorded_at: Timestamp::from_micros(1),
            actor: Actor::system(),
            payload_commitment: [1; 32],
            prev_hash: [2; 32],
            key_id: key.key_id(),
        };
        let w = WireBody {
            format: FORMAT_VERSION,
            stream_id: "patient-1".into(),
            stream_revision: 3,
            event_id: *body.event_id.as_bytes(),
            event_type: "clinical.entry_recorded".into(),
            schema_version: 1,
            recorded_at_micros: 1,
            actor_user_id: [0; 16],
            actor_role: "system".into(),
            payload_commitment: [1; 32],
            prev_hash: [2; 32],
            key_id: *key.key_id().as_bytes(),
        };
        assert_eq!(body.to_bytes().unwrap(), bincode::serialize(&w).unwrap());
        let ev = body.sign(&key).unwrap();
        let mut expect = bincode::serialize(&w).unwrap();
        expect.extend_from_slice(&ev.signature().to_bytes());
        assert_eq!(ev.to_bytes(), expect);
    }

    #[test]
    fn rejects_trailing_bytes_oversize_and_bad_fields() {
        let key = test_key();
        let ev = EventBody {
            stream_id: StreamId::new("patient-1").unwrap(),
            stream_revision: 0,
            event_id: Uuid::now_v7(),
            event_type: EventType::new("a").unwrap(),
            schema_version: 1,
            recorded_at: Timestamp::from_micros(0),
            actor: Actor::system(),
            payload_commitment: [0; 32],
            prev_hash: GENESIS_PREV_HASH,
            key_id: key.key_id(),
        }
        .sign(&key)
        .unwrap();
        let mut b = ev.to_bytes();
        assert_eq!(SignedEvent::from_bytes(&b).unwrap(), ev);
        b.push(0);
        assert_eq!(SignedEvent::from_bytes(&b), Err(LedgerError::MalformedEnvelope));
        b.pop();
        b.pop();
        assert_eq!(SignedEvent::from_bytes(&b), Err(LedgerError::MalformedEnvelope));
        assert_eq!(
            SignedEvent::from_bytes(&vec![0u8; MAX_ENVELOPE_LEN + 1]),
            Err(LedgerError::EnvelopeTooLarge { max: MAX_ENVELOPE_LEN })
        );
        // A huge length prefix must not allocate or panic.
        let mut huge = ev.to_bytes();
        huge[2..10].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(SignedEvent::from_bytes(&huge).is_err());
        // Format version 2 is refused by name.
        let mut v2 = ev.to_bytes();
        v2[0] = 2;
        assert_eq!(SignedEvent::from_bytes(&v2), Err(LedgerError::UnsupportedFormat(2)));
        // Revision 0 must carry the genesis hash, and only revision 0.
        let mut bad = ev.body().clone();
        bad.stream_revision = 1;
        assert_eq!(bad.sign(&key), Err(LedgerError::BadGenesis));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn round_trip_and_canonical(body in arb_body(test_key().key_id())) {
            let key = test_key();
            let ev = body.clone().sign(&key).unwrap();
            let bytes = ev.to_bytes();
            prop_assert!(bytes.len() <= MAX_ENVELOPE_LEN);
            let back = SignedEvent::from_bytes(&bytes).unwrap();
            prop_assert_eq!(back.body(), &body);
            prop_assert_eq!(back.to_bytes(), bytes);
            prop_assert_eq!(back.hash(), ev.hash());
            back.verify(&key.verifying_key()).unwrap();
        }

        /// Flipping any single bit of the canonical bytes (body or signature) either makes
        /// the bytes undecodable or makes verification fail.
        #[test]
        fn any_bit_flip_fails(body in arb_body(test_key().key_id()), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let key = test_key();
            let ev = body.sign(&key).unwrap();
            let mut bytes = ev.to_bytes();
            let i = pos.index(bytes.len());
            bytes[i] ^= 1 << bit;
            match SignedEvent::from_bytes(&bytes) {
                Err(_) => {}
                Ok(t) => {
                    prop_assert!(t.verify(&key.verifying_key()).is_err());
                    prop_assert_ne!(t.hash(), ev.hash());
                }
            }
        }

        /// A payload altered in any bit (or with another salt) does not open the commitment.
        #[test]
        fn payload_bit_flip_fails(bytes in proptest::collection::vec(any::<u8>(), 1..200), salt in any::<[u8; 32]>(), pos in any::<prop::sample::Index>(), bit in 0u8..8, in_salt in any::<bool>()) {
            let p = Payload::with_salt(salt, bytes.clone()).unwrap();
            let c = p.commitment();
            let altered = if in_salt {
                let mut s = salt;
                s[pos.index(32)] ^= 1 << bit;
                Payload::with_salt(s, bytes).unwrap()
            } else {
                let mut b = bytes;
                let i = pos.index(b.len());
                b[i] ^= 1 << bit;
                Payload::with_salt(salt, b).unwrap()
            };
            prop_assert_ne!(altered.commitment(), c);
        }

        /// A changed prev_hash breaks the link to the previous event.
        #[test]
        fn prev_hash_bit_flip_breaks_link(pos in 0usize..32, bit in 0u8..8) {
            let key = test_key();
            let mk = |rev: u64, prev: Hash| EventBody {
                stream_id: StreamId::new("patient-x").unwrap(),
                stream_revision: rev,
                event_id: Uuid::now_v7(),
                event_type: EventType::new("t").unwrap(),
                schema_version: 1,
                recorded_at: Timestamp::from_micros(rev as i64),
                actor: Actor::system(),
                payload_commitment: [0; 32],
                prev_hash: prev,
                key_id: key.key_id(),
            };
            let first = mk(0, GENESIS_PREV_HASH).sign(&key).unwrap();
            first.check_link(None).unwrap();
            let mut prev = *first.hash();
            let second = mk(1, prev).sign(&key).unwrap();
            second.check_link(Some(&first)).unwrap();
            prev[pos] ^= 1 << bit;
            let forged = mk(1, prev).sign(&key).unwrap();
            prop_assert_eq!(forged.check_link(Some(&first)), Err(LedgerError::BrokenHashLink));
        }
    }

    #[test]
    fn payload_debug_hides_content() {
        let p = Payload::with_salt([0; 32], b"Jane Doe".to_vec()).unwrap();
        assert_eq!(format!("{p:?}"), "Payload(8 bytes)");
        assert!(Payload::with_salt([0; 32], vec![0; MAX_PAYLOAD_LEN + 1]).is_err());
    }
}
