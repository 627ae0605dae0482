//! Signing keys, key ids and the key registry.
//!
//! Keys are introduced and retired by events in the `$keys` stream. Each key has a
//! validity period `[valid_from, valid_until)`; an event is valid only if its signing key
//! was valid at the event's `recorded_at`. Rotating a key therefore never invalidates an
//! old signature or proof: the old key stays in the registry, retired.
//!
//! Registry rules (checked by [`KeyRegistry::apply`]):
//! 1. The first event of `$keys` introduces the anchor key and is signed by that key itself.
//!    Trust in the anchor comes from outside (a verifier's trusted key).
//! 2. Every later registry event is signed by a key valid at the event's time.
//! 3. A key's `valid_from` is never before the time its introduction was recorded: no new
//!    key can sign history written before it existed.
//! 4. A retirement for `rotation` cannot be backdated; one for `compromise` may be (events
//!    signed after the compromise time then fail verification, as they should).
//! 5. Key ids are unique; a key is retired at most once.

use std::collections::BTreeMap;
use std::fmt;

use curve25519_dalek::edwards::CompressedEdwardsY;
use ed25519_dalek::{SigningKey, VerifyingKey};
use rand_core::CryptoRngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::envelope::{decode, encode, Payload, SignedEvent};
use crate::error::LedgerError;
use crate::ids::StreamId;
use crate::time::Timestamp;

/// Domain tag of key ids.
pub const KEY_ID_TAG: &[u8] = b"chartledger:v1:key-id\0";
/// Algorithm byte of Ed25519 (the same as C2SP signed-note's).
pub const ALG_ED25519: u8 = 0x01;
/// Event type introducing a key.
pub const KEY_INTRODUCED: &str = "key.introduced";
/// Event type retiring a key.
pub const KEY_RETIRED: &str = "key.retired";

/// SHA-256(KEY_ID_TAG || 0x01 || public key): names a signing key inside every envelope.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId([u8; 32]);

impl KeyId {
    pub fn of(key: &VerifyingKey) -> Self {
        Self(
            Sha256::new()
                .chain_update(KEY_ID_TAG)
                .chain_update([ALG_ED25519])
                .chain_update(key.as_bytes())
                .finalize()
                .into(),
        )
    }
    pub const fn from_bytes(b: [u8; 32]) -> Self {
        Self(b)
    }
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut b = [0u8; 32];
        hex::decode_to_slice(s, &mut b).ok()?;
        Some(Self(b))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", &self.to_hex()[..16])
    }
}

/// Parse and vet a public key: canonical encoding, not of small order, torsion-free.
/// Every key Chartledger accepts passes this, which is what lets batch verification agree
/// with strict single verification (see [`crate::verify`]).
pub fn parse_public_key(bytes: &[u8; 32]) -> Result<VerifyingKey, LedgerError> {
    let point = CompressedEdwardsY(*bytes).decompress().ok_or(LedgerError::InvalidPublicKey)?;
    if point.compress().to_bytes() != *bytes || point.is_small_order() || !point.is_torsion_free() {
        return Err(LedgerError::InvalidPublicKey);
    }
    VerifyingKey::from_bytes(bytes).map_err(|_| LedgerError::InvalidPublicKey)
}

/// Is `name` a valid signed-note key name: non-empty, at most 128 bytes, printable
/// Unicode without whitespace or `+`.
pub fn valid_key_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.chars().all(|c| !c.is_whitespace() && !c.is_control() && c != '+')
}

/// The ledger's signing key: signs events, and (as a signed-note key under `name`)
/// checkpoints. Never printed.
#[derive(Clone)]
pub struct LedgerSigningKey {
    name: String,
    key: SigningKey,
    key_id: KeyId,
}

impl fmt::Debug for LedgerSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LedgerSigningKey")
            .field("name", &self.name)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl LedgerSigningKey {
    pub fn new(name: impl Into<String>, key: SigningKey) -> Result<Self, LedgerError> {
        let name = name.into();
        if !valid_key_name(&name) {
            return Err(LedgerError::KeyRegistry("invalid key name"));
        }
        let key_id = KeyId::of(&key.verifying_key());
        Ok(Self { name, key, key_id })
    }
    pub fn generate(name: impl Into<String>, rng: &mut impl CryptoRngCore) -> Result<Self, LedgerError> {
        Self::new(name, SigningKey::generate(rng))
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }
    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }
    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }
    /// The same key as a C2SP signed-note signer, for checkpoints.
    pub fn note_signer(&self) -> Result<crate::note::NoteSigner, LedgerError> {
        crate::note::NoteSigner::new(&self.name, self.key.clone())
            .map_err(|_| LedgerError::KeyRegistry("invalid key name"))
    }
}

/// Why a key was retired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetireReason {
    /// Routine rotation: cannot be backdated.
    Rotation = 1,
    /// The key leaked: `valid_until` may lie before the retirement was recorded.
    Compromise = 2,
}

/// Payload of `key.introduced` (schema version 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyIntroduced {
    pub public_key: VerifyingKey,
    /// The key's signed-note name (used in checkpoint signature lines).
    pub name: String,
    pub valid_from: Timestamp,
}

/// Payload of `key.retired` (schema version 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRetired {
    pub key_id: KeyId,
    pub valid_until: Timestamp,
    pub reason: RetireReason,
}

#[derive(Serialize, Deserialize)]
struct WireKeyIntroduced {
    algorithm: u8,
    public_key: [u8; 32],
    name: String,
    valid_from_micros: i64,
}

#[derive(Serialize, Deserialize)]
struct WireKeyRetired {
    key_id: [u8; 32],
    valid_until_micros: i64,
    reason: u8,
}

impl KeyIntroduced {
    pub fn to_bytes(&self) -> Result<Vec<u8>, LedgerError> {
        encode(&WireKeyIntroduced {
            algorithm: ALG_ED25519,
            public_key: self.public_key.to_bytes(),
            name: self.name.clone(),
            valid_from_micros: self.valid_from.as_micros(),
        })
    }
    pub fn from_bytes(b: &[u8]) -> Result<Self, LedgerError> {
        let w: WireKeyIntroduced = decode(b).map_err(|_| LedgerError::MalformedKeyPayload)?;
        if w.algorithm != ALG_ED25519 || !valid_key_name(&w.name) {
            return Err(LedgerError::MalformedKeyPayload);
        }
        Ok(Self {
            public_key: parse_public_key(&w.public_key)?,
            name: w.name,
            valid_from: Timestamp::from_micros(w.valid_from_micros),
        })
    }
}

impl KeyRetired {
    pub fn to_bytes(&self) -> Result<Vec<u8>, LedgerError> {
        encode(&WireKeyRetired {
            key_id: *self.key_id.as_bytes(),
            valid_until_micros: self.valid_until.as_micros(),
            reason: self.reason as u8,
        })
    }
    pub fn from_bytes(b: &[u8]) -> Result<Self, LedgerError> {
        let w: WireKeyRetired = decode(b).map_err(|_| LedgerError::MalformedKeyPayload)?;
        let reason = match w.reason {
            1 => RetireReason::Rotation,
            2 => RetireReason::Compromise,
            _ => return Err(LedgerError::MalformedKeyPayload),
        };
        Ok(Self {
            key_id: KeyId::from_bytes(w.key_id),
            valid_until: Timestamp::from_micros(w.valid_until_micros),
            reason,
        })
    }
}

/// One key as the registry knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRecord {
    pub key_id: KeyId,
    pub public_key: VerifyingKey,
    pub name: String,
    pub valid_from: Timestamp,
    pub valid_until: Option<Timestamp>,
    pub retire_reason: Option<RetireReason>,
    /// Event id of the introduction, so proofs can cite it.
    pub introduced_by: uuid::Uuid,
}

impl KeyRecord {
    pub fn valid_at(&self, t: Timestamp) -> bool {
        self.valid_from <= t && self.valid_until.is_none_or(|u| t < u)
    }
}

/// The fold of the `$keys` stream.
#[derive(Clone, Debug, Default)]
pub struct KeyRegistry {
    keys: BTreeMap<KeyId, KeyRecord>,
    anchor: Option<KeyId>,
    last: Option<(u64, crate::Hash)>,
}

impl KeyRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// The key that introduced itself first.
    pub fn anchor(&self) -> Option<&KeyRecord> {
        self.anchor.and_then(|id| self.keys.get(&id))
    }

    pub fn get(&self, id: &KeyId) -> Option<&KeyRecord> {
        self.keys.get(id)
    }

    pub fn keys(&self) -> impl Iterator<Item = &KeyRecord> {
        self.keys.values()
    }

    /// The key `id` if it was valid at `t`.
    pub fn key_valid_at(&self, id: &KeyId, t: Timestamp) -> Result<&KeyRecord, LedgerError> {
        let k = self.keys.get(id).ok_or(LedgerError::UnknownKey)?;
        if k.valid_at(t) {
            Ok(k)
        } else {
            Err(LedgerError::KeyNotValidAt)
        }
    }

    /// Apply the next event of `$keys` (with its payload), checking every rule in the
    /// module docs, the stream hash link, the payload commitment and the signature.
    /// On error the registry is unchanged.
    pub fn apply(&mut self, event: &SignedEvent, payload: &Payload) -> Result<(), LedgerError> {
        let body = event.body();
        if body.stream_id.as_str() != StreamId::KEYS {
            return Err(LedgerError::KeyRegistry("not a $keys event"));
        }
        let expected_rev = self.last.map_or(0, |(r, _)| r + 1);
        let expected_prev = self.last.map_or(crate::envelope::GENESIS_PREV_HASH, |(_, h)| h);
        if body.stream_revision != expected_rev || body.prev_hash != expected_prev {
            return Err(LedgerError::BrokenHashLink);
        }
        event.check_payload(payload)?;
        let at = body.recorded_at;
        match body.event_type.as_str() {
            KEY_INTRODUCED => {
                let k = KeyIntroduced::from_bytes(payload.bytes())?;
                let new_id = KeyId::of(&k.public_key);
                if self.keys.contains_key(&new_id) {
                    return Err(LedgerError::KeyRegistry("key already introduced"));
                }
                if k.valid_from < at {
                    return Err(LedgerError::KeyRegistry("valid_from before the introduction"));
                }
                if self.anchor.is_none() {
                    if body.key_id != new_id {
                        return Err(LedgerError::KeyRegistry("anchor key must sign its own introduction"));
                    }
                    event.verify(&k.public_key)?;
                } else {
                    let signer = self.key_valid_at(&body.key_id, at)?;
                    event.verify(&signer.public_key)?;
                }
                self.keys.insert(
                    new_id,
                    KeyRecord {
                        key_id: new_id,
                        public_key: k.public_key,
                        name: k.name,
                        valid_from: k.valid_from,
                        valid_until: None,
                        retire_reason: None,
                        introduced_by: body.event_id,
                    },
                );
                self.anchor.get_or_insert(new_id);
            }
            KEY_RETIRED => {
                let r = KeyRetired::from_bytes(payload.bytes())?;
                let signer = self.key_valid_at(&body.key_id, at)?;
                event.verify(&signer.public_key)?;
                let target = self.keys.get(&r.key_id).ok_or(LedgerError::UnknownKey)?;
                if target.valid_until.is_some() {
                    return Err(LedgerError::KeyRegistry("key already retired"));
                }
                if r.valid_until < target.valid_from {
                    return Err(LedgerError::KeyRegistry("valid_until before valid_from"));
                }
                if r.reason == RetireReason::Rotation && r.valid_until < at {
                    return Err(LedgerError::KeyRegistry("rotation cannot be backdated"));
                }
                if let Some(t) = self.keys.get_mut(&r.key_id) {
                    t.valid_until = Some(r.valid_until);
                    t.retire_reason = Some(r.reason);
                }
            }
            _ => return Err(LedgerError::KeyRegistry("unknown $keys event type")),
        }
        self.last = Some((body.stream_revision, *event.hash()));
        Ok(())
    }

    /// Revision and hash of the last applied `$keys` event (for appending the next one).
    pub fn head(&self) -> Option<(u64, crate::Hash)> {
        self.last
    }
}

impl KeyRegistry {
    /// Build (but do not apply) the next `$keys` event: `event_type` is
    /// [`KEY_INTRODUCED`] or [`KEY_RETIRED`], `payload` the encoded payload.
    pub fn next_event(
        &self,
        event_type: &str,
        payload: Vec<u8>,
        signer: &LedgerSigningKey,
        event_id: uuid::Uuid,
        recorded_at: Timestamp,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(SignedEvent, Payload), LedgerError> {
        let payload = Payload::new(payload, rng)?;
        let (rev, prev) = match self.last {
            Some((r, h)) => (r.checked_add(1).ok_or(LedgerError::BrokenHashLink)?, h),
            None => (0, crate::envelope::GENESIS_PREV_HASH),
        };
        let body = crate::envelope::EventBody {
            stream_id: StreamId::keys(),
            stream_revision: rev,
            event_id,
            event_type: crate::ids::EventType::new(event_type)?,
            schema_version: 1,
            recorded_at,
            actor: crate::ids::Actor::system(),
            payload_commitment: payload.commitment(),
            prev_hash: prev,
            key_id: signer.key_id(),
        };
        Ok((body.sign(signer)?, payload))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn k(seed: u8) -> LedgerSigningKey {
        LedgerSigningKey::new(format!("key{seed}"), SigningKey::from_bytes(&[seed; 32])).unwrap()
    }
    fn t(us: i64) -> Timestamp {
        Timestamp::from_micros(us)
    }
    fn rng() -> impl CryptoRngCore {
        struct Counter(u8);
        impl rand_core::RngCore for Counter {
            fn next_u32(&mut self) -> u32 {
                rand_core::impls::next_u32_via_fill(self)
            }
            fn next_u64(&mut self) -> u64 {
                rand_core::impls::next_u64_via_fill(self)
            }
            fn fill_bytes(&mut self, d: &mut [u8]) {
                for b in d {
                    self.0 = self.0.wrapping_add(1);
                    *b = self.0;
                }
            }
            fn try_fill_bytes(&mut self, d: &mut [u8]) -> Result<(), rand_core::Error> {
                self.fill_bytes(d);
                Ok(())
            }
        }
        impl rand_core::CryptoRng for Counter {}
        Counter(0)
    }

    fn intro(
        reg: &KeyRegistry,
        signer: &LedgerSigningKey,
        new: &LedgerSigningKey,
        from: i64,
        at: i64,
    ) -> (SignedEvent, Payload) {
        let p =
            KeyIntroduced { public_key: new.verifying_key(), name: new.name().into(), valid_from: t(from) };
        reg.next_event(KEY_INTRODUCED, p.to_bytes().unwrap(), signer, Uuid::now_v7(), t(at), &mut rng())
            .unwrap()
    }
    fn retire(
        reg: &KeyRegistry,
        signer: &LedgerSigningKey,
        old: &LedgerSigningKey,
        until: i64,
        at: i64,
        reason: RetireReason,
    ) -> (SignedEvent, Payload) {
        let p = KeyRetired { key_id: old.key_id(), valid_until: t(until), reason };
        reg.next_event(KEY_RETIRED, p.to_bytes().unwrap(), signer, Uuid::now_v7(), t(at), &mut rng()).unwrap()
    }

    #[test]
    fn rotation_keeps_old_signatures_valid() {
        let (a, b) = (k(1), k(2));
        let mut reg = KeyRegistry::new();
        let (e, p) = intro(&reg, &a, &a, 100, 100);
        reg.apply(&e, &p).unwrap();
        assert_eq!(reg.anchor().map(|r| r.key_id), Some(a.key_id()));
        let (e, p) = intro(&reg, &a, &b, 200, 150);
        reg.apply(&e, &p).unwrap();
        let (e, p) = retire(&reg, &a, &a, 200, 160, RetireReason::Rotation);
        reg.apply(&e, &p).unwrap();
        assert!(reg.key_valid_at(&a.key_id(), t(150)).is_ok());
        assert_eq!(reg.key_valid_at(&a.key_id(), t(200)).err(), Some(LedgerError::KeyNotValidAt));
        assert_eq!(reg.key_valid_at(&b.key_id(), t(199)).err(), Some(LedgerError::KeyNotValidAt));
        assert!(reg.key_valid_at(&b.key_id(), t(200)).is_ok());
        assert_eq!(reg.key_valid_at(&k(3).key_id(), t(200)).err(), Some(LedgerError::UnknownKey));
    }

    #[test]
    fn rules_are_enforced_and_failed_applies_change_nothing() {
        let (a, b, c) = (k(1), k(2), k(3));
        let mut reg = KeyRegistry::new();
        // The anchor must sign itself.
        let (e, p) = intro(&reg, &b, &a, 100, 100);
        assert!(reg.apply(&e, &p).is_err());
        let (e, p) = intro(&reg, &a, &a, 100, 100);
        reg.apply(&e, &p).unwrap();
        // A key unknown to the registry cannot introduce another.
        let (e, p) = intro(&reg, &c, &b, 300, 300);
        assert_eq!(reg.apply(&e, &p), Err(LedgerError::UnknownKey));
        // No backdated validity.
        let (e, p) = intro(&reg, &a, &b, 99, 300);
        assert!(matches!(reg.apply(&e, &p), Err(LedgerError::KeyRegistry(_))));
        // Duplicate introduction.
        let (e, p) = intro(&reg, &a, &a, 300, 300);
        assert!(matches!(reg.apply(&e, &p), Err(LedgerError::KeyRegistry(_))));
        // Wrong payload for the commitment.
        let (e, _) = intro(&reg, &a, &b, 300, 300);
        let other = Payload::with_salt([9; 32], vec![1, 2, 3]).unwrap();
        assert!(matches!(reg.apply(&e, &other), Err(LedgerError::PayloadCommitmentMismatch(_))));
        // Rotation cannot be backdated; compromise can.
        let (e, p) = retire(&reg, &a, &a, 150, 200, RetireReason::Rotation);
        assert!(matches!(reg.apply(&e, &p), Err(LedgerError::KeyRegistry(_))));
        let (e, p) = intro(&reg, &a, &b, 300, 300);
        reg.apply(&e, &p).unwrap();
        let (e, p) = retire(&reg, &b, &a, 150, 400, RetireReason::Compromise);
        reg.apply(&e, &p).unwrap();
        assert!(reg.key_valid_at(&a.key_id(), t(149)).is_ok());
        assert!(reg.key_valid_at(&a.key_id(), t(150)).is_err());
        // Retired once only; a retired key cannot sign.
        let (e, p) = retire(&reg, &b, &a, 150, 500, RetireReason::Compromise);
        assert!(reg.apply(&e, &p).is_err());
        let (e, p) = intro(&reg, &a, &c, 600, 600);
        assert_eq!(reg.apply(&e, &p), Err(LedgerError::KeyNotValidAt));
    }

    #[test]
    fn registry_events_must_chain() {
        let a = k(1);
        let mut reg = KeyRegistry::new();
        let (e, p) = intro(&reg, &a, &a, 100, 100);
        reg.apply(&e, &p).unwrap();
        // Replaying the same event is a broken link (revision 0 again).
        assert_eq!(reg.apply(&e, &p), Err(LedgerError::BrokenHashLink));
    }

    #[test]
    fn small_order_and_torsion_keys_are_refused() {
        use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT, EIGHT_TORSION};
        // identity (small order)
        let mut id = [0u8; 32];
        id[0] = 1;
        assert_eq!(parse_public_key(&id), Err(LedgerError::InvalidPublicKey));
        // a valid point plus a torsion point: mixed order
        let mixed = (ED25519_BASEPOINT_POINT + EIGHT_TORSION[1]).compress().to_bytes();
        assert_eq!(parse_public_key(&mixed), Err(LedgerError::InvalidPublicKey));
        assert!(parse_public_key(k(5).verifying_key().as_bytes()).is_ok());
    }
}
