//! Proof bundles built from an in-memory ledger (the ledger crate's own types), verified,
//! and altered byte by byte.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use base64::Engine as _;
use ed25519_dalek::SigningKey;
use ledger::checkpoint::Checkpoint;
use ledger::envelope::EventBody;
use ledger::keys::{KeyIntroduced, KeyRegistry, KeyRetired, RetireReason, KEY_INTRODUCED, KEY_RETIRED};
use ledger::merkle::{self, MemoryTree};
use ledger::note::NoteVerifier;
use ledger::{Actor, EventType, Hash, LedgerSigningKey, Payload, RoleName, SignedEvent, StreamId, Timestamp};
use proof::{ConsistencyItem, ProofBundle, Selection, Subject, Trust};
use proptest::prelude::*;
use uuid::Uuid;

const ORIGIN: &str = "proof.example/chartledger/test";

fn key(seed: u8) -> LedgerSigningKey {
    LedgerSigningKey::new(format!("proof.example/key{seed}"), SigningKey::from_bytes(&[seed; 32])).unwrap()
}

fn vkey(k: &LedgerSigningKey) -> NoteVerifier {
    k.note_signer().unwrap().verifier()
}

/// A deterministic RNG for salts.
struct Counter(u64);
impl rand_core::RngCore for Counter {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for b in dest {
            *b = (self.next_u64() >> 56) as u8;
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}
impl rand_core::CryptoRng for Counter {}

/// UUIDv7 ids from a counter (deterministic).
fn v7(n: u64) -> Uuid {
    uuid::Builder::from_unix_timestamp_millis(1_700_000_000_000 + n, &[n as u8; 10]).into_uuid()
}

/// The whole log in memory: events with payloads, the Merkle tree, stream heads, registry.
struct Ledger {
    log: Vec<(SignedEvent, Option<Payload>)>,
    tree: MemoryTree,
    heads: HashMap<String, (u64, Hash)>,
    registry: KeyRegistry,
    rng: Counter,
    ids: u64,
}

impl Ledger {
    fn new(anchor: &LedgerSigningKey, at: i64) -> Self {
        let mut l = Self {
            log: Vec::new(),
            tree: MemoryTree::new(),
            heads: HashMap::new(),
            registry: KeyRegistry::new(),
            rng: Counter(7),
            ids: 0,
        };
        l.introduce(anchor, anchor, at);
        l
    }

    fn next_id(&mut self) -> Uuid {
        self.ids += 1;
        v7(self.ids)
    }

    fn push(&mut self, event: SignedEvent, payload: Option<Payload>) -> u64 {
        self.heads.insert(event.stream_id().as_str().to_owned(), (event.stream_revision(), *event.hash()));
        self.tree.push(merkle::leaf_hash(event.hash()));
        self.log.push((event, payload));
        self.log.len() as u64 - 1
    }

    fn push_keys(&mut self, ty: &str, bytes: Vec<u8>, signer: &LedgerSigningKey, at: i64) {
        let id = self.next_id();
        let (e, p) = self
            .registry
            .next_event(ty, bytes, signer, id, Timestamp::from_micros(at), &mut self.rng)
            .unwrap();
        self.registry.apply(&e, &p).unwrap();
        self.push(e, Some(p));
    }

    fn introduce(&mut self, signer: &LedgerSigningKey, new: &LedgerSigningKey, at: i64) {
        let p = KeyIntroduced {
            public_key: new.verifying_key(),
            name: new.name().to_owned(),
            valid_from: Timestamp::from_micros(at),
        };
        self.push_keys(KEY_INTRODUCED, p.to_bytes().unwrap(), signer, at);
    }

    fn retire(
        &mut self,
        signer: &LedgerSigningKey,
        old: &LedgerSigningKey,
        until: i64,
        at: i64,
        r: RetireReason,
    ) {
        let p = KeyRetired { key_id: old.key_id(), valid_until: Timestamp::from_micros(until), reason: r };
        self.push_keys(KEY_RETIRED, p.to_bytes().unwrap(), signer, at);
    }

    /// Append one event (any key: tests sign with retired keys on purpose).
    fn append(
        &mut self,
        stream: &StreamId,
        ty: &str,
        payload: &[u8],
        signer: &LedgerSigningKey,
        at: i64,
    ) -> u64 {
        let payload = Payload::new(payload.to_vec(), &mut self.rng).unwrap();
        let (rev, prev) = match self.heads.get(stream.as_str()) {
            Some((r, h)) => (r + 1, *h),
            None => (0, ledger::GENESIS_PREV_HASH),
        };
        let body = EventBody {
            stream_id: stream.clone(),
            stream_revision: rev,
            event_id: self.next_id(),
            event_type: EventType::new(ty).unwrap(),
            schema_version: 1,
            recorded_at: Timestamp::from_micros(at),
            actor: Actor { user_id: Uuid::from_u128(0xd0c7), role: RoleName::new("physician").unwrap() },
            payload_commitment: payload.commitment(),
            prev_hash: prev,
            key_id: signer.key_id(),
        };
        let e = body.sign(signer).unwrap();
        self.push(e, Some(payload))
    }

    /// A checkpoint as the store writes it: with the `$keys` head among its events.
    fn checkpoint(&self, size: u64, signer: &LedgerSigningKey, time: i64) -> String {
        let keys = self.stream_positions(StreamId::KEYS);
        let head = keys.iter().rfind(|&&p| p < size).map(|&p| &self.log[p as usize].0);
        let cp = Checkpoint::new(ORIGIN, size, self.tree.root_at(size).unwrap()).with_timestamp_micros(time);
        let cp = match head {
            Some(e) => cp.with_keys_head(e.stream_revision(), e.hash()),
            None => cp,
        };
        cp.sign(&[&signer.note_signer().unwrap()]).unwrap()
    }

    /// A checkpoint without the `$keys` head (as written before it existed).
    fn checkpoint_without_keys_head(&self, size: u64, signer: &LedgerSigningKey, time: i64) -> String {
        Checkpoint::new(ORIGIN, size, self.tree.root_at(size).unwrap())
            .with_timestamp_micros(time)
            .sign(&[&signer.note_signer().unwrap()])
            .unwrap()
    }

    /// The item of the event at `pos`, with its inclusion proof in a tree of `size` when
    /// `proven`.
    fn item(&self, pos: u64, size: u64, proven: bool) -> proof::EventItem {
        let (e, p) = &self.log[pos as usize];
        let path = self.tree.inclusion_proof(pos, size).unwrap();
        proof::event_item(e, p.as_ref(), proven.then_some((pos, path.as_slice())))
    }

    /// Positions of a stream's events, in revision order.
    fn stream_positions(&self, stream: &str) -> Vec<u64> {
        (0..self.log.len() as u64)
            .filter(|&p| self.log[p as usize].0.stream_id().as_str() == stream)
            .collect()
    }

    fn bundle(&self, subject: Subject, note: &str, sel: &Selection, stream: &[u64]) -> ProofBundle {
        let cp = proof::checkpoint_item(note).unwrap();
        let keys: Vec<u64> =
            self.stream_positions(StreamId::KEYS).into_iter().filter(|&p| p < cp.size).collect();
        // Only the last key event needs a proof, and none when the checkpoint names the head.
        let last_key = if cp.keys_head.is_some() { None } else { keys.last().copied() };
        let last_event = sel.events.last().copied();
        ProofBundle {
            format: proof::FORMAT_V2.to_owned(),
            subject,
            events: sel
                .events
                .iter()
                .map(|&i| self.item(stream[i], cp.size, Some(i) == last_event))
                .collect(),
            chain: sel
                .chain
                .iter()
                .map(|&i| proof::encode_bytes(&self.log[stream[i] as usize].0.to_bytes()))
                .collect(),
            keys: keys.iter().map(|&p| self.item(p, cp.size, Some(p) == last_key)).collect(),
            checkpoint: cp,
            consistency: None,
        }
    }

    fn entry_bundle(&self, patient: Uuid, entry: Uuid, note: &str) -> ProofBundle {
        let stream = self.stream_positions(StreamId::patient(patient).as_str());
        let evs: Vec<(&SignedEvent, Option<&Payload>)> =
            stream.iter().map(|&p| (&self.log[p as usize].0, self.log[p as usize].1.as_ref())).collect();
        let sel = Selection::entry_versions(&evs, entry);
        assert!(!sel.events.is_empty());
        self.bundle(Subject::Entry { patient_id: patient, entry_id: entry }, note, &sel, &stream)
    }

    fn event_bundle(&self, pos: u64, note: &str) -> ProofBundle {
        let e = &self.log[pos as usize].0;
        self.bundle(Subject::Event { event_id: e.event_id() }, note, &Selection::linking(vec![0]), &[pos])
    }
}

fn recorded(entry: Uuid, text: &str) -> Vec<u8> {
    format!(r#"{{"entry_id":"{entry}","content":{{"kind":"note","text":"{text}"}},"effective_at":"2026-11-23T08:15:00.000000Z"}}"#)
        .into_bytes()
}
fn amended(amendment: Uuid, entry: Uuid, text: &str) -> Vec<u8> {
    format!(r#"{{"amendment_id":"{amendment}","amendment_of_id":"{entry}","content":{{"kind":"note","text":"{text}"}},"reason":"typo","effective_at":"2026-11-23T08:15:00.000000Z"}}"#)
        .into_bytes()
}
fn retracted(entry: Uuid) -> Vec<u8> {
    format!(r#"{{"entry_id":"{entry}","reason":"wrong patient"}}"#).into_bytes()
}

const PATIENT: Uuid = Uuid::from_u128(0x0193_a4b2_0000_7000_8000_0000_0000_0001);
const ENTRY: Uuid = Uuid::from_u128(0x0193_a4b2_0000_7000_8000_0000_0000_0002);
const OTHER_ENTRY: Uuid = Uuid::from_u128(0x0193_a4b2_0000_7000_8000_0000_0000_0003);

/// A ledger with a 3-version entry interleaved with other events of the same patient and of
/// other patients, a key rotation in the middle, and checkpoints at two sizes.
struct Fixture {
    ledger: Ledger,
    a: LedgerSigningKey,
    b: LedgerSigningKey,
    old_note: String,
    old_size: u64,
    note: String,
}

fn fixture() -> Fixture {
    let (a, b) = (key(1), key(2));
    let mut l = Ledger::new(&a, 1_000);
    let p = StreamId::patient(PATIENT);
    let other = StreamId::patient(Uuid::from_u128(0x0193_a4b2_0000_7000_8000_0000_0000_0099));
    l.append(&p, "patient.registered", br#"{"patient_id":"x"}"#, &a, 2_000);
    l.append(&p, "entry.recorded", &recorded(ENTRY, "first"), &a, 3_000);
    l.append(&other, "entry.recorded", &recorded(OTHER_ENTRY, "elsewhere"), &a, 3_500);
    l.append(&p, "entry.recorded", &recorded(OTHER_ENTRY, "unrelated"), &a, 4_000);
    let old_size = l.tree.size();
    let old_note = l.checkpoint(old_size, &a, 4_100);
    // Rotation: b introduced by a, a retired (rotation) by b.
    l.introduce(&a, &b, 5_000);
    l.retire(&b, &a, 5_001, 5_001, RetireReason::Rotation);
    l.append(&p, "entry.amended", &amended(Uuid::from_u128(0xa1), ENTRY, "second"), &b, 6_000);
    l.append(&p, "care_team.member_added", br#"{"x":1}"#, &b, 6_500);
    l.append(&p, "entry.entered_in_error", &retracted(ENTRY), &b, 7_000);
    l.append(&other, "entry.amended", &amended(Uuid::from_u128(0xa2), OTHER_ENTRY, "x"), &b, 7_500);
    let note = l.checkpoint(l.tree.size(), &b, 8_000);
    Fixture { ledger: l, a, b, old_note, old_size, note }
}

fn with_consistency(f: &Fixture, mut bundle: ProofBundle) -> ProofBundle {
    let size = bundle.checkpoint.size;
    bundle.consistency = Some(ConsistencyItem {
        old_checkpoint: f.old_note.clone(),
        proof: proof::encode_hashes(&f.ledger.tree.consistency_proof(f.old_size, size).unwrap()),
    });
    bundle
}

#[test]
fn an_entry_bundle_verifies_and_reports_its_versions() {
    let f = fixture();
    let bundle = with_consistency(&f, f.ledger.entry_bundle(PATIENT, ENTRY, &f.note));
    assert_eq!(bundle.events.len(), 3);
    assert_eq!(bundle.chain.len(), 2); // the unrelated entry and the care-team event link them
                                       // Through JSON, as a third party receives it.
    let json = serde_json::to_vec(&bundle).unwrap();
    // The old checkpoint is signed by a, the new one by b: trust both.
    let v = proof::verify_json(&json, &[vkey(&f.a), vkey(&f.b)]).unwrap();
    assert_eq!(v.trust, Trust::Direct);
    assert_eq!(v.checkpoint_size, f.ledger.tree.size());
    assert_eq!(v.checkpoint_time, Some(Timestamp::from_micros(8_000)));
    assert_eq!(v.consistent_with.map(|c| c.0), Some(f.old_size));
    let types: Vec<&str> = v.events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["entry.recorded", "entry.amended", "entry.entered_in_error"]);
    assert_eq!(v.events[0].key_name, f.a.name());
    assert_eq!(v.events[1].key_name, f.b.name());
    assert_eq!(v.events[0].actor_role, "physician");
    assert_eq!(v.keys.len(), 2);
    // Size: a few kilobytes (2 key events, 3 versions, 2 linking envelopes, a consistency
    // proof).
    assert!(json.len() < 10_000, "{} bytes", json.len());
}

#[test]
fn trust_in_the_anchor_carries_over_a_rotation() {
    let f = fixture();
    let bundle = f.ledger.entry_bundle(PATIENT, ENTRY, &f.note);
    // The checkpoint is signed by b only; a is the anchor of $keys.
    let v = proof::verify(&bundle, &[vkey(&f.a)]).unwrap();
    assert_eq!(v.trust, Trust::Anchored);
    // A key that is neither: nothing is trusted.
    let e = proof::verify(&bundle, &[vkey(&key(9))]).unwrap_err();
    assert_eq!(e.code(), "proof.untrusted_checkpoint", "{e}");
}

#[test]
fn one_event_bundles_verify() {
    let f = fixture();
    for pos in 0..f.ledger.tree.size() {
        let bundle = f.ledger.event_bundle(pos, &f.note);
        proof::verify(&bundle, &[vkey(&f.b)]).unwrap_or_else(|e| panic!("position {pos}: {e}"));
    }
}

#[test]
fn an_erased_payload_is_reported_not_rejected() {
    let f = fixture();
    let mut bundle = f.ledger.entry_bundle(PATIENT, ENTRY, &f.note);
    bundle.events[1].payload = None;
    bundle.events[1].salt = None;
    bundle.events[1].decoded["payload"] = serde_json::Value::Null;
    let v = proof::verify(&bundle, &[vkey(&f.b)]).unwrap();
    assert!(v.events[1].payload.is_none());
    // Only one of the two: an error.
    bundle.events[1].salt = f.ledger.entry_bundle(PATIENT, ENTRY, &f.note).events[1].salt.clone();
    assert_eq!(proof::verify(&bundle, &[vkey(&f.b)]).unwrap_err().code(), "proof.payload_opening");
}

#[test]
fn wrong_subjects_and_missing_links_are_rejected() {
    let f = fixture();
    let good = f.ledger.entry_bundle(PATIENT, ENTRY, &f.note);
    let t = [vkey(&f.b)];
    // Another entry claimed.
    let mut b = good.clone();
    b.subject = Subject::Entry { patient_id: PATIENT, entry_id: OTHER_ENTRY };
    assert_eq!(proof::verify(&b, &t).unwrap_err().code(), "proof.subject");
    // Another patient claimed.
    let mut b = good.clone();
    b.subject = Subject::Entry { patient_id: Uuid::from_u128(5), entry_id: ENTRY };
    assert_eq!(proof::verify(&b, &t).unwrap_err().code(), "proof.subject");
    // A chain envelope left out.
    let mut b = good.clone();
    b.chain.remove(1);
    assert_eq!(proof::verify(&b, &t).unwrap_err().code(), "proof.chain");
    // A version left out is fine for the chain only if its envelope links: put it in the
    // chain instead and the bundle still verifies (it no longer claims that version)...
    // ...but dropping a version without its envelope breaks the chain.
    let mut b = good.clone();
    b.events.remove(1);
    assert_eq!(proof::verify(&b, &t).unwrap_err().code(), "proof.chain");
    // Keys must start at the anchor.
    let mut b = good.clone();
    b.keys.remove(0);
    assert_eq!(proof::verify(&b, &t).unwrap_err().code(), "proof.wrong_stream");
    // An event bundle with the wrong event id.
    let mut b = f.ledger.event_bundle(3, &f.note);
    b.subject = Subject::Event { event_id: Uuid::from_u128(1) };
    assert_eq!(proof::verify(&b, &t).unwrap_err().code(), "proof.subject");
    // Unknown format, unknown member.
    let mut b = good.clone();
    b.format = "chartledger-proof/v3".into();
    assert_eq!(proof::verify(&b, &t).unwrap_err().code(), "proof.unsupported_format");
    let e = proof::verify_json(&serde_json::to_vec(&b).unwrap(), &t).unwrap_err();
    assert_eq!(e.code(), "proof.unsupported_format");
    // A v2 document labelled v1 is not a v1 document.
    b.format = proof::FORMAT_V1.into();
    assert_eq!(proof::verify(&b, &t).unwrap_err().code(), "proof.unsupported_format");
    assert_eq!(
        proof::verify_json(&serde_json::to_vec(&b).unwrap(), &t).unwrap_err().code(),
        "proof.malformed"
    );
    let mut json: serde_json::Value = serde_json::to_value(&good).unwrap();
    json["extra"] = 1.into();
    let e = proof::verify_json(&serde_json::to_vec(&json).unwrap(), &t).unwrap_err();
    assert_eq!(e.code(), "proof.malformed");
}

// ------------------------------------------------------------------ key validity

#[test]
fn a_retired_key_signs_only_while_it_was_valid() {
    let f = fixture();
    let mut l = f.ledger;
    let p = StreamId::patient(PATIENT);
    // a was retired at 5_001 (rotation). An event signed by a afterwards is not valid.
    let late = l.append(&p, "entry.amended", &amended(Uuid::from_u128(0xa3), ENTRY, "late"), &f.a, 9_000);
    let note = l.checkpoint(l.tree.size(), &f.b, 9_500);
    let t = [vkey(&f.b)];
    // Events a signed while valid still verify under the new checkpoint.
    proof::verify(&l.event_bundle(1, &note), &t).unwrap();
    let e = proof::verify(&l.event_bundle(late, &note), &t).unwrap_err();
    assert_eq!(e.code(), "ledger.key_not_valid_at", "{e}");
    // The entry bundle now includes the late version, and fails on it.
    let e = proof::verify(&l.entry_bundle(PATIENT, ENTRY, &note), &t).unwrap_err();
    assert_eq!((e.code(), e.location), ("ledger.key_not_valid_at", proof::Location::Events(3)), "{e}");
}

#[test]
fn a_compromise_retirement_invalidates_later_signatures_of_the_leaked_key() {
    let (a, b) = (key(1), key(2));
    let mut l = Ledger::new(&a, 1_000);
    let p = StreamId::patient(PATIENT);
    let good = l.append(&p, "entry.recorded", &recorded(ENTRY, "before"), &a, 2_000);
    let forged = l.append(&p, "entry.amended", &amended(Uuid::from_u128(0xa1), ENTRY, "forged"), &a, 3_000);
    l.introduce(&a, &b, 4_000);
    // Backdated: a is known leaked since 2_500.
    l.retire(&b, &a, 2_500, 4_001, RetireReason::Compromise);
    let note = l.checkpoint(l.tree.size(), &b, 5_000);
    let t = [vkey(&b)];
    proof::verify(&l.event_bundle(good, &note), &t).unwrap();
    assert_eq!(
        proof::verify(&l.event_bundle(forged, &note), &t).unwrap_err().code(),
        "ledger.key_not_valid_at"
    );
    let b2 = l.entry_bundle(PATIENT, ENTRY, &note);
    assert_eq!(proof::verify(&b2, &t).unwrap_err().code(), "ledger.key_not_valid_at");

    // Leaving the retirement out of the bundle: the checkpoint names the registry head
    // (revision 2, the retirement), so a registry that ends before it is refused.
    let mut hidden = l.event_bundle(forged, &note);
    hidden.keys.pop();
    let e = proof::verify(&hidden, &t).unwrap_err();
    assert_eq!((e.code(), e.location), ("proof.keys_head", proof::Location::Keys(1)), "{e}");
    // Proving the shortened registry's last event instead does not help: with a head in
    // the checkpoint no key event may carry a proof of its own.
    let old = l.checkpoint_without_keys_head(l.tree.size(), &b, 5_000);
    let size = l.tree.size();
    hidden.keys[1].inclusion = l.item(3, size, true).inclusion;
    assert_eq!(proof::verify(&hidden, &t).unwrap_err().code(), "proof.inclusion");
    // Against a checkpoint without the head (written before it existed), the omission is
    // exactly what a bundle cannot detect (schema/proof-format.md, "What a bundle does not
    // prove").
    hidden.checkpoint = proof::checkpoint_item(&old).unwrap();
    let v = proof::verify(&hidden, &t).unwrap();
    assert!(!v.keys_complete);
    let mut whole = l.event_bundle(forged, &old);
    assert_eq!(proof::verify(&whole, &t).unwrap_err().code(), "ledger.key_not_valid_at");
    whole.keys.pop();
    whole.keys[1].inclusion = l.item(3, size, true).inclusion;
    proof::verify(&whole, &t).unwrap();
}

/// Version 2 puts an inclusion proof on exactly one item per list (none on `keys` when
/// the checkpoint names the registry head); any other placement is refused.
#[test]
fn inclusion_proofs_sit_where_the_format_puts_them() {
    let f = fixture();
    let good = f.ledger.entry_bundle(PATIENT, ENTRY, &f.note);
    let t = [vkey(&f.b)];
    let v = proof::verify(&good, &t).unwrap();
    assert!(v.keys_complete);
    assert_eq!(v.events.iter().map(|e| e.position.is_some()).collect::<Vec<_>>(), [false, false, true]);
    let size = f.ledger.tree.size();
    let stream = f.ledger.stream_positions(StreamId::patient(PATIENT).as_str());
    // A proof on an earlier version (a valid one, even).
    let mut b = good.clone();
    b.events[0].inclusion = f.ledger.item(stream[1], size, true).inclusion;
    let e = proof::verify(&b, &t).unwrap_err();
    assert_eq!((e.code(), e.location), ("proof.inclusion", proof::Location::Events(0)), "{e}");
    // None on the last.
    let mut b = good.clone();
    b.events[2].inclusion = None;
    assert_eq!(proof::verify(&b, &t).unwrap_err().code(), "proof.inclusion");
    // One on a key event although the checkpoint names the head.
    let mut b = good.clone();
    b.keys[0].inclusion = f.ledger.item(0, size, true).inclusion;
    assert_eq!(proof::verify(&b, &t).unwrap_err().code(), "proof.inclusion");
    // Without the head in the checkpoint, the last key event must carry one.
    let old = f.ledger.checkpoint_without_keys_head(size, &f.b, 8_000);
    let plain = f.ledger.entry_bundle(PATIENT, ENTRY, &old);
    assert!(plain.keys.last().unwrap().inclusion.is_some());
    assert!(!proof::verify(&plain, &t).unwrap().keys_complete);
    let mut b = plain.clone();
    b.keys.last_mut().unwrap().inclusion = None;
    assert_eq!(proof::verify(&b, &t).unwrap_err().code(), "proof.inclusion");
    // A packed path whose length is not a multiple of 32 bytes.
    let mut b = good.clone();
    let inc = b.events[2].inclusion.as_mut().unwrap();
    let mut path = b64d(&inc.proof);
    path.pop();
    inc.proof = base64::engine::general_purpose::STANDARD.encode(path);
    assert_eq!(proof::verify(&b, &t).unwrap_err().code(), "proof.invalid_base64");
}

// ------------------------------------------------------------------ version 1

/// `schema/vectors/proof-v1.json`: a version 1 bundle kept so that v1 keeps verifying.
fn v1_vector() -> (serde_json::Value, Vec<NoteVerifier>) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schema/vectors/proof-v1.json");
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let keys = doc["trusted_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| NoteVerifier::from_vkey(k.as_str().unwrap()).unwrap())
        .collect();
    (doc["bundle"].clone(), keys)
}

#[test]
fn version_1_bundles_keep_verifying() {
    let (bundle, trusted) = v1_vector();
    let json = serde_json::to_vec(&bundle).unwrap();
    let v = proof::verify_json(&json, &trusted).unwrap();
    assert_eq!(v.format, proof::FORMAT_V1);
    assert!(!v.keys_complete);
    assert_eq!(v.events.len(), 3);
    assert!(v.events.iter().all(|e| e.position.is_some()));
    assert!(v.consistent_with.is_some());
    // Every single-byte change of the document is refused or changes nothing.
    let parsed = proof::parse_json(&json).unwrap();
    let mut refused = 0;
    for at in 0..json.len() {
        let mut bad = json.clone();
        bad[at] ^= 0x01;
        match proof::parse_json(&bad) {
            Err(_) => refused += 1,
            Ok(p) if p == parsed => {}
            Ok(p) => {
                assert!(proof::verify_any(&p, &trusted).is_err(), "v1 byte {at} accepted");
                refused += 1;
            }
        }
    }
    assert!(refused > json.len() / 2, "{refused}");
    // v1 item members in a v2 document (and the reverse) are malformed.
    let mut mixed = bundle.clone();
    mixed["format"] = proof::FORMAT_V2.into();
    assert_eq!(
        proof::verify_json(&serde_json::to_vec(&mixed).unwrap(), &trusted).unwrap_err().code(),
        "proof.malformed"
    );
}

// ------------------------------------------------------------------ consistency

#[test]
fn consistency_from_a_forked_ledger_fails() {
    let f = fixture();
    let good = with_consistency(&f, f.ledger.entry_bundle(PATIENT, ENTRY, &f.note));
    let t = [vkey(&f.a), vkey(&f.b)];
    proof::verify(&good, &t).unwrap();

    // A fork: the same anchor, then a different history of the same size as the old checkpoint.
    let mut fork = Ledger::new(&f.a, 1_000);
    let p = StreamId::patient(PATIENT);
    fork.append(&p, "patient.registered", br#"{"patient_id":"x"}"#, &f.a, 2_000);
    fork.append(&p, "entry.recorded", &recorded(ENTRY, "rewritten"), &f.a, 3_000);
    while fork.tree.size() < f.old_size {
        fork.append(&p, "entry.recorded", &recorded(OTHER_ENTRY, "filler"), &f.a, 4_000);
    }
    let fork_note = fork.checkpoint(f.old_size, &f.a, 4_100);
    assert_ne!(fork.tree.root_at(f.old_size).unwrap(), f.ledger.tree.root_at(f.old_size).unwrap());
    // The holder's old checkpoint is the fork's: the real ledger's proof does not connect.
    let mut b = good.clone();
    b.consistency.as_mut().unwrap().old_checkpoint = fork_note.clone();
    assert_eq!(proof::verify(&b, &t).unwrap_err().code(), "proof.consistency");
    // Nor does a proof computed on the fork extended to the new size.
    while fork.tree.size() < f.ledger.tree.size() {
        fork.append(&p, "entry.recorded", &recorded(OTHER_ENTRY, "filler"), &f.a, 4_500);
    }
    b.consistency.as_mut().unwrap().proof =
        proof::encode_hashes(&fork.tree.consistency_proof(f.old_size, f.ledger.tree.size()).unwrap());
    assert_eq!(proof::verify(&b, &t).unwrap_err().code(), "proof.consistency");
    // The new checkpoint as the old one: trivially consistent (equal sizes, empty proof).
    let mut b = good.clone();
    b.consistency.as_mut().unwrap().old_checkpoint = f.note.clone();
    b.consistency.as_mut().unwrap().proof = vec![];
    proof::verify(&b, &t).unwrap();
}

// ------------------------------------------------------------------ every byte

/// Every byte field of a bundle, as (name, getter of its decoded bytes, setter).
type Field = (String, Vec<u8>, Box<dyn Fn(&mut ProofBundle, &[u8]) -> bool>);

fn b64d(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

fn pick(bb: &mut ProofBundle, list: usize, i: usize) -> &mut proof::EventItem {
    if list == 0 {
        &mut bb.keys[i]
    } else {
        &mut bb.events[i]
    }
}

fn byte_fields(b: &ProofBundle) -> Vec<Field> {
    let enc = |v: &[u8]| base64::engine::general_purpose::STANDARD.encode(v);
    let mut out: Vec<Field> = Vec::new();
    for (list, name) in [(0usize, "keys"), (1, "events")] {
        let items = if list == 0 { &b.keys } else { &b.events };
        for (i, it) in items.iter().enumerate() {
            out.push((
                format!("{name}[{i}].envelope"),
                b64d(&it.envelope),
                Box::new(move |bb: &mut ProofBundle, v: &[u8]| {
                    pick(bb, list, i).envelope = enc(v);
                    true
                }),
            ));
            if let Some(p) = &it.payload {
                out.push((
                    format!("{name}[{i}].payload"),
                    b64d(p),
                    Box::new(move |bb: &mut ProofBundle, v: &[u8]| {
                        pick(bb, list, i).payload = Some(enc(v));
                        true
                    }),
                ));
            }
            if let Some(s) = &it.salt {
                out.push((
                    format!("{name}[{i}].salt"),
                    b64d(s),
                    Box::new(move |bb: &mut ProofBundle, v: &[u8]| {
                        pick(bb, list, i).salt = Some(enc(v));
                        true
                    }),
                ));
            }
            if let Some(inc) = &it.inclusion {
                out.push((
                    format!("{name}[{i}].inclusion.proof"),
                    b64d(&inc.proof),
                    Box::new(move |bb: &mut ProofBundle, v: &[u8]| {
                        if let Some(inc) = pick(bb, list, i).inclusion.as_mut() {
                            inc.proof = enc(v);
                        }
                        true
                    }),
                ));
            }
        }
    }
    for (i, c) in b.chain.iter().enumerate() {
        out.push((
            format!("chain[{i}]"),
            b64d(c),
            Box::new(move |bb: &mut ProofBundle, v: &[u8]| {
                bb.chain[i] = enc(v);
                true
            }),
        ));
    }
    // Text fields: the altered bytes must still be a string to fit in JSON at all.
    out.push((
        "checkpoint.note".into(),
        b.checkpoint.note.clone().into_bytes(),
        Box::new(|bb: &mut ProofBundle, v: &[u8]| match String::from_utf8(v.to_vec()) {
            Ok(s) => {
                bb.checkpoint.note = s;
                true
            }
            Err(_) => false,
        }),
    ));
    if let Some(c) = &b.consistency {
        out.push((
            "consistency.old_checkpoint".into(),
            c.old_checkpoint.clone().into_bytes(),
            Box::new(|bb: &mut ProofBundle, v: &[u8]| match String::from_utf8(v.to_vec()) {
                Ok(s) => {
                    bb.consistency.as_mut().unwrap().old_checkpoint = s;
                    true
                }
                Err(_) => false,
            }),
        ));
        for (j, h) in c.proof.iter().enumerate() {
            out.push((
                format!("consistency.proof[{j}]"),
                b64d(h),
                Box::new(move |bb: &mut ProofBundle, v: &[u8]| {
                    bb.consistency.as_mut().unwrap().proof[j] = enc(v);
                    true
                }),
            ));
        }
    }
    out
}

fn alteration_rejected(
    good: &ProofBundle,
    field: &Field,
    at: usize,
    xor: u8,
    trusted: &[NoteVerifier],
) -> bool {
    let mut bytes = field.1.clone();
    bytes[at] ^= xor;
    let mut b = good.clone();
    if !(field.2)(&mut b, &bytes) {
        return true; // not representable in a bundle
    }
    proof::verify(&b, trusted).is_err()
}

#[test]
fn every_single_byte_alteration_of_every_byte_field_is_rejected() {
    let f = fixture();
    let good = with_consistency(&f, f.ledger.entry_bundle(PATIENT, ENTRY, &f.note));
    // Trust the anchor only: both checkpoints are then checked with registry keys.
    let trusted = [vkey(&f.a)];
    proof::verify(&good, &trusted).unwrap();
    let fields = byte_fields(&good);
    let mut checked = 0;
    for field in &fields {
        for at in 0..field.1.len() {
            for xor in [0x01, 0x80] {
                assert!(
                    alteration_rejected(&good, field, at, xor, &trusted),
                    "{} byte {at} ^ {xor:#x} accepted",
                    field.0
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 5_000, "{checked}");
}

#[test]
fn every_single_byte_alteration_of_a_trusted_key_is_rejected() {
    let f = fixture();
    let good = f.ledger.entry_bundle(PATIENT, ENTRY, &f.note);
    let pk = f.b.verifying_key().to_bytes();
    for at in 0..32 {
        let mut bad = pk;
        bad[at] ^= 0x01;
        let Ok(vk) = ed25519_dalek::VerifyingKey::from_bytes(&bad) else { continue };
        let Ok(v) = NoteVerifier::new(f.b.name(), vk) else { continue };
        assert!(proof::verify(&good, &[v]).is_err(), "key byte {at}");
    }
}

#[test]
fn every_single_byte_alteration_of_the_json_is_rejected_or_changes_nothing() {
    let f = fixture();
    let good = f.ledger.entry_bundle(PATIENT, ENTRY, &f.note);
    let json = serde_json::to_vec(&good).unwrap();
    let trusted = [vkey(&f.b)];
    for at in 0..json.len() {
        let mut bad = json.clone();
        bad[at] ^= 0x20; // case flips, and everything else that bit touches
        match proof::parse_json(&bad) {
            Err(_) => {}
            Ok(proof::AnyBundle::V2(parsed)) if parsed == good => {} // e.g. the case of a hex digit in a UUID
            Ok(parsed) => assert!(proof::verify_any(&parsed, &trusted).is_err(), "JSON byte {at} accepted"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    /// Random single-byte alterations (any non-zero XOR) of any byte field are rejected.
    #[test]
    fn random_single_byte_alterations_are_rejected(pick in any::<prop::sample::Index>(), at in any::<prop::sample::Index>(), xor in 1u8..=255) {
        let f = FIXTURE.with(|f| f.clone());
        let (good, trusted) = &*f;
        let fields = byte_fields(good);
        let field = pick.get(&fields);
        let at = at.index(field.1.len());
        prop_assert!(alteration_rejected(good, field, at, xor, trusted), "{} byte {} ^ {:#x}", field.0, at, xor);
    }
}

thread_local! {
    static FIXTURE: std::rc::Rc<(ProofBundle, Vec<NoteVerifier>)> = {
        let f = fixture();
        std::rc::Rc::new((with_consistency(&f, f.ledger.entry_bundle(PATIENT, ENTRY, &f.note)), vec![vkey(&f.a)]))
    };
}

// ------------------------------------------------------------------ the independent verifier

/// `tests/proof_verifier.py`, written from schema/proof-format.md alone, when python3 and
/// its `cryptography` module are available (skipped otherwise, with a note).
fn python_verifier() -> Option<std::path::PathBuf> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/proof_verifier.py");
    let ok = std::process::Command::new("python3")
        .args(["-c", "import cryptography"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIPPED: python3 with the cryptography module is not available");
        return None;
    }
    Some(script)
}

/// Run the Python verifier on bundles; its verdict (true = verified) for each.
fn python_verdicts(script: &std::path::Path, trusted: &[NoteVerifier], bundles: &[ProofBundle]) -> Vec<bool> {
    let docs: Vec<Vec<u8>> = bundles.iter().map(|b| serde_json::to_vec(b).unwrap()).collect();
    python_verdicts_json(script, trusted, &docs)
}

fn python_verdicts_json(
    script: &std::path::Path,
    trusted: &[NoteVerifier],
    bundles: &[Vec<u8>],
) -> Vec<bool> {
    let dir = std::env::temp_dir().join(format!("proof-py-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut args: Vec<String> = vec![script.to_str().unwrap().to_owned()];
    for t in trusted {
        args.push("--trusted-key".into());
        args.push(t.to_vkey());
    }
    for (i, b) in bundles.iter().enumerate() {
        let path = dir.join(format!("{i}.json"));
        std::fs::write(&path, b).unwrap();
        args.push(path.to_str().unwrap().to_owned());
    }
    let out = std::process::Command::new("python3").args(&args).output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        out.status.code() == Some(0) || out.status.code() == Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), bundles.len(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    lines.iter().map(|l| l.contains(" VERIFIED ")).collect()
}

#[test]
fn the_independent_python_verifier_agrees() {
    let Some(script) = python_verifier() else { return };
    let f = fixture();
    let good = with_consistency(&f, f.ledger.entry_bundle(PATIENT, ENTRY, &f.note));
    let anchored = [vkey(&f.a)];
    let direct = [vkey(&f.b)];

    // Accepted: the entry bundle (both trust paths), every one-event bundle, an erased version.
    let mut accepted = vec![good.clone()];
    accepted.extend((0..f.ledger.tree.size()).map(|p| f.ledger.event_bundle(p, &f.note)));
    let mut erased = good.clone();
    erased.events[2].payload = None;
    erased.events[2].salt = None;
    erased.events[2].decoded["payload"] = serde_json::Value::Null;
    accepted.push(erased);
    for b in &accepted {
        proof::verify(b, &anchored).unwrap();
    }
    assert!(
        python_verdicts(&script, &anchored, &accepted).iter().all(|&v| v),
        "python rejected a good bundle"
    );
    assert_eq!(python_verdicts(&script, &direct, std::slice::from_ref(&good)), [true]);
    assert_eq!(python_verdicts(&script, &[vkey(&key(9))], std::slice::from_ref(&good)), [false]);

    // Rejected: single-byte alterations of every byte field (every 7th byte, two bit
    // patterns), and the structural cases of the Rust tests.
    let mut rejected = Vec::new();
    for field in byte_fields(&good) {
        for at in (0..field.1.len()).step_by(7).chain([field.1.len() - 1]) {
            for xor in [0x01u8, 0x80] {
                let mut bytes = field.1.clone();
                bytes[at] ^= xor;
                let mut b = good.clone();
                if (field.2)(&mut b, &bytes) {
                    assert!(proof::verify(&b, &anchored).is_err());
                    rejected.push(b);
                }
            }
        }
    }
    let mut b = good.clone();
    b.chain.remove(0);
    rejected.push(b);
    let mut b = good.clone();
    b.subject = Subject::Entry { patient_id: PATIENT, entry_id: OTHER_ENTRY };
    rejected.push(b);
    let mut b = good.clone();
    b.events[1].decoded["actor_role"] = "nurse".into();
    rejected.push(b);
    let mut b = good.clone();
    b.keys.remove(1);
    rejected.push(b);
    let mut b = good.clone();
    b.keys.pop(); // the checkpoint names the registry head
    rejected.push(b);
    let mut b = good.clone();
    b.events[2].inclusion = None;
    rejected.push(b);
    let mut b = good.clone();
    b.events[0].inclusion = b.events[2].inclusion.clone();
    rejected.push(b);
    let mut b = good.clone();
    b.keys[0].inclusion = b.events[2].inclusion.clone();
    rejected.push(b);
    for b in &rejected[rejected.len() - 8..] {
        assert!(proof::verify(b, &anchored).is_err());
    }
    let verdicts = python_verdicts(&script, &anchored, &rejected);
    let accepted_by_python: Vec<usize> = (0..verdicts.len()).filter(|&i| verdicts[i]).collect();
    assert!(accepted_by_python.is_empty(), "python accepted altered bundles {accepted_by_python:?}");
    assert!(rejected.len() > 700, "{}", rejected.len());

    // Version 1: the kept bundle verifies; altered copies do not.
    let (v1, v1_keys) = v1_vector();
    let mut docs = vec![serde_json::to_vec(&v1).unwrap()];
    let mut alter = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut d = v1.clone();
        f(&mut d);
        assert!(proof::verify_json(&serde_json::to_vec(&d).unwrap(), &v1_keys).is_err());
        docs.push(serde_json::to_vec(&d).unwrap());
    };
    alter(&|d| d["events"][1]["decoded"]["prev_hash"] = "00".into());
    alter(&|d| d["events"][0]["position"] = 1.into());
    alter(&|d| d["keys"][1]["inclusion_proof"].as_array_mut().unwrap().clear());
    alter(&|d| {
        d["events"][2]["decoded"].as_object_mut().unwrap().remove("recorded_at_micros").map(drop).unwrap()
    });
    alter(&|d| d["format"] = proof::FORMAT_V2.into());
    let verdicts = python_verdicts_json(&script, &v1_keys, &docs);
    assert!(verdicts[0], "python rejected the v1 vector");
    assert!(verdicts[1..].iter().all(|v| !v), "python accepted an altered v1 bundle: {verdicts:?}");
}
