//! Golden vectors: `schema/vectors/ledger-v1.json` is re-derived from fixed inputs and must
//! match byte for byte, so any change to the signed format fails CI. Run with
//! `CHARTLEDGER_BLESS=1` to rewrite the file after an intended, documented format change.
//! The committed bytes are also decoded and verified on their own, independently of the
//! derivation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ed25519_dalek::SigningKey;
use ledger::checkpoint::Checkpoint;
use ledger::envelope::{EventBody, Payload, SignedEvent, GENESIS_PREV_HASH};
use ledger::keys::{KeyIntroduced, KeyRegistry, LedgerSigningKey, KEY_INTRODUCED};
use ledger::merkle::{self, MemoryTree};
use ledger::note::NoteVerifier;
use ledger::{Actor, EventType, RoleName, StreamId, Timestamp};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

const VECTORS: &str = "../../schema/vectors/ledger-v1.json";
const SEED: [u8; 32] = *b"chartledger test vector key seed";
const ORIGIN: &str = "chartledger.example/ledger/test-vectors";

fn key() -> LedgerSigningKey {
    LedgerSigningKey::new(ORIGIN, SigningKey::from_bytes(&SEED)).unwrap()
}

fn salt(i: u8) -> [u8; 32] {
    Sha256::digest([b"chartledger test vector salt ".as_slice(), &[i]].concat()).into()
}

struct Case {
    description: &'static str,
    body: EventBody,
    payload: Payload,
}

fn uuid(s: &str) -> Uuid {
    Uuid::parse_str(s).unwrap()
}

fn cases() -> Vec<Case> {
    let k = key();
    let mut out: Vec<Case> = Vec::new();
    // 1. The anchor key introduces itself on $keys.
    let intro = KeyIntroduced {
        public_key: k.verifying_key(),
        name: ORIGIN.into(),
        valid_from: Timestamp::from_micros(1_795_435_200_000_000),
    };
    let payload = Payload::with_salt(salt(1), intro.to_bytes().unwrap()).unwrap();
    out.push(Case {
        description: "anchor key introduces itself (first event of $keys)",
        body: EventBody {
            stream_id: StreamId::keys(),
            stream_revision: 0,
            event_id: uuid("019ab0a0-0000-7000-8000-000000000001"),
            event_type: EventType::new(KEY_INTRODUCED).unwrap(),
            schema_version: 1,
            recorded_at: Timestamp::from_micros(1_795_435_200_000_000),
            actor: Actor::system(),
            payload_commitment: payload.commitment(),
            prev_hash: GENESIS_PREV_HASH,
            key_id: k.key_id(),
        },
        payload,
    });
    let patient = StreamId::new("patient-019ab0a0-0000-7000-8000-0000000000aa").unwrap();
    let physician = Actor {
        user_id: uuid("019ab0a0-0000-7000-8000-0000000000d1"),
        role: RoleName::new("physician").unwrap(),
    };
    let payload = Payload::with_salt(salt(2), br#"{"note":"synthetic test payload"}"#.to_vec()).unwrap();
    out.push(Case {
        description: "first event of a patient stream (genesis previous hash)",
        body: EventBody {
            stream_id: patient.clone(),
            stream_revision: 0,
            event_id: uuid("019ab0a0-0000-7000-8000-000000000002"),
            event_type: EventType::new("patient.registered").unwrap(),
            schema_version: 1,
            recorded_at: Timestamp::from_micros(1_795_435_201_000_001),
            actor: physician.clone(),
            payload_commitment: payload.commitment(),
            prev_hash: GENESIS_PREV_HASH,
            key_id: k.key_id(),
        },
        payload,
    });
    let payload = Payload::with_salt(salt(3), Vec::new()).unwrap();
    out.push(Case {
        description: "second event of the same stream, empty payload, linked to the first",
        body: EventBody {
            stream_id: patient,
            stream_revision: 1,
            event_id: uuid("019ab0a0-0000-7000-8000-000000000003"),
            event_type: EventType::new("record.accessed").unwrap(),
            schema_version: 2,
            recorded_at: Timestamp::from_micros(1_795_435_202_500_000),
            actor: physician,
            payload_commitment: payload.commitment(),
            prev_hash: [0; 32], // filled in below from case 2's hash
            key_id: k.key_id(),
        },
        payload,
    });
    let payload = Payload::with_salt(salt(4), vec![0xff; 3]).unwrap();
    out.push(Case {
        description: "longest allowed stream id, event type and role; negative recorded_at (before 1970)",
        body: EventBody {
            stream_id: StreamId::new(format!("$s{}", "z".repeat(126))).unwrap(),
            stream_revision: 0,
            event_id: uuid("019ab0a0-0000-7000-8000-000000000004"),
            event_type: EventType::new(format!("e{}", "v".repeat(63))).unwrap(),
            schema_version: u16::MAX,
            recorded_at: Timestamp::from_micros(-1),
            actor: Actor {
                user_id: Uuid::max(),
                role: RoleName::new(format!("r{}", "o".repeat(31))).unwrap(),
            },
            payload_commitment: payload.commitment(),
            prev_hash: GENESIS_PREV_HASH,
            key_id: k.key_id(),
        },
        payload,
    });
    out
}

fn signed_cases() -> Vec<(Case, SignedEvent)> {
    let k = key();
    let mut out: Vec<(Case, SignedEvent)> = Vec::new();
    for mut c in cases() {
        if c.body.stream_revision == 1 {
            c.body.prev_hash = *out[1].1.hash();
        }
        let ev = c.body.clone().sign(&k).unwrap();
        out.push((c, ev));
    }
    out
}

fn hexs(hs: &[[u8; 32]]) -> Vec<String> {
    hs.iter().map(hex::encode).collect()
}

fn derive() -> Value {
    let k = key();
    let signed = signed_cases();
    let envelopes: Vec<Value> = signed
        .iter()
        .map(|(c, ev)| {
            let b = ev.body();
            json!({
                "description": c.description,
                "fields": {
                    "format": 1,
                    "stream_id": b.stream_id.as_str(),
                    "stream_revision": b.stream_revision,
                    "event_id": b.event_id.to_string(),
                    "event_type": b.event_type.as_str(),
                    "schema_version": b.schema_version,
                    "recorded_at_micros": b.recorded_at.as_micros(),
                    "recorded_at": b.recorded_at.to_rfc3339(),
                    "actor_user_id": b.actor.user_id.to_string(),
                    "actor_role": b.actor.role.as_str(),
                    "payload_commitment_hex": hex::encode(b.payload_commitment),
                    "prev_hash_hex": hex::encode(b.prev_hash),
                    "key_id_hex": b.key_id.to_hex(),
                },
                "payload": { "salt_hex": hex::encode(c.payload.salt()), "bytes_hex": hex::encode(c.payload.bytes()) },
                "body_hex": hex::encode(ev.body_bytes()),
                "signature_hex": hex::encode(ev.signature().to_bytes()),
                "canonical_hex": hex::encode(ev.to_bytes()),
                "event_hash_hex": hex::encode(ev.hash()),
                "merkle_leaf_hash_hex": hex::encode(merkle::leaf_hash(ev.hash())),
            })
        })
        .collect();

    // Negative vectors: each must be rejected with the given code.
    let good = signed[1].1.to_bytes();
    let mut trailing = good.clone();
    trailing.push(0);
    let mut v2 = good.clone();
    v2[0] = 2;
    let mut sig_flip = good.clone();
    let last = sig_flip.len() - 1;
    sig_flip[last - 40] ^= 0x01;
    let mut not_v7 = good.clone();
    let id_at = 2 + 8 + signed[1].1.stream_id().as_str().len() + 8;
    not_v7[id_at + 6] = (not_v7[id_at + 6] & 0x0f) | 0x40;
    let mut bad_genesis = signed[2].1.body().clone();
    bad_genesis.prev_hash = GENESIS_PREV_HASH;
    let mut too_large = good.clone();
    too_large.resize(ledger::envelope::MAX_ENVELOPE_LEN + 1, 0);
    // Offsets of the string contents in the body of envelope 1 (schema/ledger-format.md 3.1).
    let stream_at = 2 + 8;
    let type_at = id_at + 16 + 8;
    let role_at = type_at + signed[1].1.body().event_type.as_str().len() + 2 + 8 + 16 + 8;
    let upper = |at: usize| {
        let mut b = good.clone();
        b[at] = b[at].to_ascii_uppercase();
        assert_ne!(b, good);
        b
    };
    let (bad_stream, bad_type, bad_role) = (upper(stream_at), upper(type_at), upper(role_at));
    let other_key = LedgerSigningKey::new(
        "other.example/key",
        SigningKey::from_bytes(&Sha256::digest(b"another key").into()),
    )
    .unwrap();
    let other_signed = {
        let mut b = signed[1].1.body().clone();
        b.key_id = other_key.key_id();
        b.sign(&other_key).unwrap()
    };
    let bad_genesis_bytes = {
        // Signed bytes of revision 1 carrying the genesis hash: the decoder refuses them.
        let mut b = bad_genesis.to_bytes().unwrap();
        b.extend_from_slice(&[0u8; 64]);
        b
    };
    let invalid = json!([
        { "description": "one trailing byte after the signature", "canonical_hex": hex::encode(&trailing), "error": "ledger.malformed_envelope" },
        { "description": "format version 2", "canonical_hex": hex::encode(&v2), "error": "ledger.unsupported_format" },
        { "description": "one bit of the signature flipped", "canonical_hex": hex::encode(&sig_flip), "error": "ledger.invalid_signature" },
        { "description": "event id is a UUIDv4", "canonical_hex": hex::encode(&not_v7), "error": "ledger.invalid_event_id" },
        { "description": "revision 1 with the genesis previous hash", "canonical_hex": hex::encode(&bad_genesis_bytes), "error": "ledger.bad_genesis" },
        { "description": "truncated (signature cut short)", "canonical_hex": hex::encode(&good[..good.len() - 1]), "error": "ledger.malformed_envelope" },
        { "description": "1025 bytes (a valid envelope followed by zeros): over the 1024-byte limit", "canonical_hex": hex::encode(&too_large), "error": "ledger.envelope_too_large" },
        { "description": "stream id with an upper-case letter", "canonical_hex": hex::encode(&bad_stream), "error": "ledger.invalid_stream_id" },
        { "description": "event type with an upper-case letter", "canonical_hex": hex::encode(&bad_type), "error": "ledger.invalid_event_type" },
        { "description": "actor role with an upper-case letter", "canonical_hex": hex::encode(&bad_role), "error": "ledger.invalid_role" },
        { "description": "validly signed by another key, verified with the vector key", "canonical_hex": hex::encode(other_signed.to_bytes()), "error": "ledger.key_id_mismatch" },
    ]);
    // Payloads that do not open an envelope's commitment (envelope_index into "envelopes").
    let p1 = &signed[1].0.payload;
    let mut altered = p1.bytes().to_vec();
    altered[0] ^= 0x01;
    let mut other_salt = *p1.salt();
    other_salt[31] ^= 0x80;
    let invalid_openings = json!([
        { "description": "payload with one bit flipped", "envelope_index": 1, "payload": { "salt_hex": hex::encode(p1.salt()), "bytes_hex": hex::encode(&altered) }, "error": "ledger.payload_commitment_mismatch" },
        { "description": "salt with one bit flipped", "envelope_index": 1, "payload": { "salt_hex": hex::encode(other_salt), "bytes_hex": hex::encode(p1.bytes()) }, "error": "ledger.payload_commitment_mismatch" },
        { "description": "the empty payload of envelope 2 opened with one zero byte", "envelope_index": 2, "payload": { "salt_hex": hex::encode(signed[2].0.payload.salt()), "bytes_hex": "00" }, "error": "ledger.payload_commitment_mismatch" },
    ]);
    // Validly signed envelopes that do not follow the given previous event of their stream
    // (previous_index into "envelopes").
    let relinked = |revision: u64, prev_hash: [u8; 32], id: &str| {
        let mut b = signed[2].1.body().clone();
        b.stream_revision = revision;
        b.prev_hash = prev_hash;
        b.event_id = uuid(id);
        b.sign(&k).unwrap()
    };
    let mut off_by_one_bit = *signed[1].1.hash();
    off_by_one_bit[0] ^= 0x01;
    let invalid_links = json!([
        { "description": "previous hash with one bit flipped", "previous_index": 1, "canonical_hex": hex::encode(relinked(1, off_by_one_bit, "019ab0a0-0000-7000-8000-0000000000f1").to_bytes()), "error": "ledger.broken_hash_link" },
        { "description": "revision 2 after revision 0 (a revision skipped)", "previous_index": 1, "canonical_hex": hex::encode(relinked(2, *signed[1].1.hash(), "019ab0a0-0000-7000-8000-0000000000f2").to_bytes()), "error": "ledger.broken_hash_link" },
        { "description": "linked to an event of another stream", "previous_index": 3, "canonical_hex": hex::encode(signed[2].1.to_bytes()), "error": "ledger.broken_hash_link" },
    ]);

    // Merkle tree over the event hashes, in the order above.
    let mut tree = MemoryTree::new();
    for (_, ev) in &signed {
        tree.push(merkle::leaf_hash(ev.hash()));
    }
    let n = tree.size();
    let roots: Vec<Value> =
        (0..=n).map(|s| json!({ "size": s, "root_hex": hex::encode(tree.root_at(s).unwrap()) })).collect();
    let mut inclusion = Vec::new();
    let mut consistency = Vec::new();
    for size in 1..=n {
        for i in 0..size {
            inclusion.push(json!({ "leaf_index": i, "tree_size": size, "path_hex": hexs(&tree.inclusion_proof(i, size).unwrap()) }));
        }
        for old in 1..size {
            consistency.push(json!({ "old_size": old, "new_size": size, "path_hex": hexs(&tree.consistency_proof(old, size).unwrap()) }));
        }
    }

    // A signed checkpoint of the whole vector log.
    let cp = Checkpoint {
        origin: ORIGIN.into(),
        size: n,
        root_hash: tree.root_at(n).unwrap(),
        extensions: vec![],
    }
    .with_timestamp_micros(1_795_435_203_000_000);
    let signer = k.note_signer().unwrap();
    let note = cp.sign(&[&signer]).unwrap();

    json!({
        "about": "Chartledger ledger format v1 golden vectors. See schema/ledger-format.md. Derived by crates/ledger/tests/vectors.rs; never edit by hand.",
        "signing_key": {
            "name": ORIGIN,
            "seed_hex": hex::encode(SEED),
            "public_key_hex": hex::encode(k.verifying_key().as_bytes()),
            "key_id_hex": k.key_id().to_hex(),
            "note_vkey": signer.verifier().to_vkey(),
        },
        "envelopes": envelopes,
        "invalid_envelopes": invalid,
        "invalid_openings": invalid_openings,
        "invalid_links": invalid_links,
        "merkle": {
            "leaves": "merkle_leaf_hash_hex of each envelope above, in order",
            "roots": roots,
            "inclusion_proofs": inclusion,
            "consistency_proofs": consistency,
        },
        "checkpoint": {
            "origin": ORIGIN,
            "tree_size": n,
            "root_hex": hex::encode(tree.root_at(n).unwrap()),
            "timestamp_micros": 1_795_435_203_000_000i64,
            "signed_note": note,
        },
    })
}

fn committed() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(VECTORS);
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

#[test]
fn vectors_are_rederived_exactly() {
    let derived = derive();
    if std::env::var_os("CHARTLEDGER_BLESS").is_some() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(VECTORS);
        std::fs::write(path, serde_json::to_string_pretty(&derived).unwrap() + "\n").unwrap();
        return;
    }
    assert!(
        committed() == derived,
        "schema/vectors/ledger-v1.json differs from the derivation: the signed format changed. \
         If intended, document it in schema/ledger-format.md and rerun with CHARTLEDGER_BLESS=1."
    );
}

fn h32(v: &Value) -> [u8; 32] {
    let mut b = [0u8; 32];
    hex::decode_to_slice(v.as_str().unwrap(), &mut b).unwrap();
    b
}

#[test]
fn committed_vectors_verify_on_their_own() {
    let v = committed();
    let pk = h32(&v["signing_key"]["public_key_hex"]);
    let vk = ledger::keys::parse_public_key(&pk).unwrap();
    let mut hashes = Vec::new();
    let mut registry = KeyRegistry::new();
    for e in v["envelopes"].as_array().unwrap() {
        let bytes = hex::decode(e["canonical_hex"].as_str().unwrap()).unwrap();
        let ev = SignedEvent::from_bytes(&bytes).unwrap();
        ev.verify(&vk).unwrap();
        assert_eq!(hex::encode(ev.hash()), e["event_hash_hex"].as_str().unwrap());
        let payload = Payload::with_salt(
            h32(&e["payload"]["salt_hex"]),
            hex::decode(e["payload"]["bytes_hex"].as_str().unwrap()).unwrap(),
        )
        .unwrap();
        ev.check_payload(&payload).unwrap();
        if ev.stream_id().is_system() && ev.stream_id().as_str() == StreamId::KEYS {
            registry.apply(&ev, &payload).unwrap();
        }
        hashes.push(merkle::leaf_hash(ev.hash()));
    }
    assert_eq!(registry.anchor().map(|k| k.public_key.to_bytes()), Some(pk));
    for e in v["invalid_envelopes"].as_array().unwrap() {
        let bytes = hex::decode(e["canonical_hex"].as_str().unwrap()).unwrap();
        let code = match SignedEvent::from_bytes(&bytes) {
            Err(err) => err.code(),
            Ok(ev) => ev.verify(&vk).err().map_or("accepted", |e| e.code()),
        };
        assert_eq!(code, e["error"].as_str().unwrap(), "{}", e["description"]);
    }
    let envelopes: Vec<SignedEvent> = v["envelopes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            SignedEvent::from_bytes(&hex::decode(e["canonical_hex"].as_str().unwrap()).unwrap()).unwrap()
        })
        .collect();
    let openings = v["invalid_openings"].as_array().unwrap();
    assert!(!openings.is_empty());
    for e in openings {
        let ev = &envelopes[e["envelope_index"].as_u64().unwrap() as usize];
        let payload = Payload::with_salt(
            h32(&e["payload"]["salt_hex"]),
            hex::decode(e["payload"]["bytes_hex"].as_str().unwrap()).unwrap(),
        )
        .unwrap();
        let code = ev.check_payload(&payload).err().map_or("accepted", |e| e.code());
        assert_eq!(code, e["error"].as_str().unwrap(), "{}", e["description"]);
    }
    let links = v["invalid_links"].as_array().unwrap();
    assert!(!links.is_empty());
    for e in links {
        let ev =
            SignedEvent::from_bytes(&hex::decode(e["canonical_hex"].as_str().unwrap()).unwrap()).unwrap();
        // Validly signed: only the link is wrong.
        ev.verify(&vk).unwrap();
        let prev = &envelopes[e["previous_index"].as_u64().unwrap() as usize];
        let code = ev.check_link(Some(prev)).err().map_or("accepted", |e| e.code());
        assert_eq!(code, e["error"].as_str().unwrap(), "{}", e["description"]);
    }
    // Every error code schema/ledger-format.md 3.4 lists has a negative vector.
    let codes: std::collections::BTreeSet<&str> = ["invalid_envelopes", "invalid_openings", "invalid_links"]
        .iter()
        .flat_map(|k| v[k].as_array().unwrap().iter().map(|e| e["error"].as_str().unwrap()))
        .collect();
    for code in [
        "ledger.malformed_envelope",
        "ledger.envelope_too_large",
        "ledger.unsupported_format",
        "ledger.invalid_stream_id",
        "ledger.invalid_event_type",
        "ledger.invalid_role",
        "ledger.invalid_event_id",
        "ledger.bad_genesis",
        "ledger.invalid_signature",
        "ledger.key_id_mismatch",
        "ledger.payload_commitment_mismatch",
        "ledger.broken_hash_link",
    ] {
        assert!(codes.contains(code), "no negative vector for {code}");
    }
    let root_of = |size: u64| h32(&v["merkle"]["roots"][size as usize]["root_hex"]);
    for p in v["merkle"]["inclusion_proofs"].as_array().unwrap() {
        let (i, n) = (p["leaf_index"].as_u64().unwrap(), p["tree_size"].as_u64().unwrap());
        let path: Vec<[u8; 32]> = p["path_hex"].as_array().unwrap().iter().map(h32).collect();
        merkle::verify_inclusion(&hashes[i as usize], i, n, &path, &root_of(n)).unwrap();
    }
    for p in v["merkle"]["consistency_proofs"].as_array().unwrap() {
        let (m, n) = (p["old_size"].as_u64().unwrap(), p["new_size"].as_u64().unwrap());
        let path: Vec<[u8; 32]> = p["path_hex"].as_array().unwrap().iter().map(h32).collect();
        merkle::verify_consistency(m, n, &root_of(m), &root_of(n), &path).unwrap();
    }
    let note = v["checkpoint"]["signed_note"].as_str().unwrap();
    let verifier = NoteVerifier::from_vkey(v["signing_key"]["note_vkey"].as_str().unwrap()).unwrap();
    let (cp, _) = Checkpoint::open(note.as_bytes(), &[verifier]).unwrap();
    assert_eq!(cp.size, hashes.len() as u64);
    assert_eq!(cp.root_hash, root_of(cp.size));
    assert_eq!(cp.timestamp_micros().unwrap(), Some(1_795_435_203_000_000));
}

#[test]
fn max_envelope_size_is_what_the_document_says() {
    // schema/ledger-format.md: body at most 396 bytes, envelope at most 460.
    let v = committed();
    let longest = &v["envelopes"][3];
    assert_eq!(longest["body_hex"].as_str().unwrap().len() / 2, 396);
    assert_eq!(longest["canonical_hex"].as_str().unwrap().len() / 2, 460);
}
