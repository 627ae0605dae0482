//! Proof size, assembly and verification time for a 3-version entry at ledger sizes 10^4,
//! 10^5 and 10^6 (issue #6). The ledger is in memory: the events a bundle needs are real
//! signed events; the other leaves are stand-in hashes (a proof only sees their subtree
//! hashes). Assembly here is from memory: generation from PostgreSQL adds its queries.
//!
//! `cargo bench -p proof` (release). Prints one line per size; `PROOF_BENCH_DUMP=<dir>`
//! also writes each bundle there.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use ledger::checkpoint::Checkpoint;
use ledger::envelope::EventBody;
use ledger::keys::{KeyIntroduced, KeyRegistry, KEY_INTRODUCED};
use ledger::merkle::{self, MemoryTree};
use ledger::{Actor, EventType, LedgerSigningKey, Payload, RoleName, SignedEvent, StreamId, Timestamp};
use proof::{ProofBundle, Selection, Subject};
use uuid::Uuid;

fn v7(n: u64) -> Uuid {
    uuid::Builder::from_unix_timestamp_millis(1_700_000_000_000 + n, &[n as u8; 10]).into_uuid()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let key = LedgerSigningKey::new("bench.example/ledger", SigningKey::from_bytes(&[4; 32])).unwrap();
    let patient = Uuid::from_u128(0x0193_a4b2_0000_7000_8000_0000_0000_0001);
    let entry = Uuid::from_u128(0x0193_a4b2_0000_7000_8000_0000_0000_0002);
    let content = r#"{"kind":"vital_signs","code":{"system":"loinc","code":"8867-4","display":"Heart rate"},"value":{"value":"72","unit":"/min"}}"#;
    let payloads = [
        format!(
            r#"{{"entry_id":"{entry}","content":{content},"effective_at":"2026-11-23T08:15:00.000000Z"}}"#
        ),
        format!(
            r#"{{"amendment_id":"{}","amendment_of_id":"{entry}","content":{content},"reason":"device re-read","effective_at":"2026-11-23T08:15:00.000000Z"}}"#,
            v7(99)
        ),
        format!(r#"{{"entry_id":"{entry}","reason":"wrong patient"}}"#),
    ];
    let types = ["entry.recorded", "entry.amended", "entry.entered_in_error"];
    let mut rng = rand_core::OsRng;
    for size in [10_000u64, 100_000, 1_000_000] {
        // $keys anchor at 0; the patient's stream: revision 0 at size/4, versions at
        // size/2, 3size/4 and size-1 (revisions 1..3, adjacent in the stream).
        let mut registry = KeyRegistry::new();
        let intro = KeyIntroduced {
            public_key: key.verifying_key(),
            name: key.name().to_owned(),
            valid_from: Timestamp::from_micros(1),
        };
        let (anchor, anchor_payload) = registry
            .next_event(
                KEY_INTRODUCED,
                intro.to_bytes().unwrap(),
                &key,
                v7(0),
                Timestamp::from_micros(1),
                &mut rng,
            )
            .unwrap();
        registry.apply(&anchor, &anchor_payload).unwrap();
        let positions = [size / 4, size / 2, 3 * size / 4, size - 1];
        let mut stream: Vec<(u64, SignedEvent, Payload)> = Vec::new();
        let mut prev = ledger::GENESIS_PREV_HASH;
        for (rev, &pos) in positions.iter().enumerate() {
            let bytes = if rev == 0 {
                br#"{"registered":true}"#.to_vec()
            } else {
                payloads[rev - 1].clone().into_bytes()
            };
            let payload = Payload::new(bytes, &mut rng).unwrap();
            let body = EventBody {
                stream_id: StreamId::patient(patient),
                stream_revision: rev as u64,
                event_id: v7(rev as u64 + 1),
                event_type: EventType::new(if rev == 0 { "patient.registered" } else { types[rev - 1] })
                    .unwrap(),
                schema_version: 1,
                recorded_at: Timestamp::from_micros(1_000 + rev as i64),
                actor: Actor { user_id: v7(50), role: RoleName::new("physician").unwrap() },
                payload_commitment: payload.commitment(),
                prev_hash: prev,
                key_id: key.key_id(),
            };
            let e = body.sign(&key).unwrap();
            prev = *e.hash();
            stream.push((pos, e, payload));
        }
        let mut tree = MemoryTree::with_capacity(size as usize);
        let mut next = 1;
        tree.push(merkle::leaf_hash(anchor.hash()));
        for (pos, e, _) in &stream {
            while tree.size() < *pos {
                tree.push(merkle::leaf_hash(&(next as u64).to_le_bytes()));
                next += 1;
            }
            tree.push(merkle::leaf_hash(e.hash()));
        }
        let note = Checkpoint::new("bench.example/ledger", size, tree.root())
            .with_timestamp_micros(10_000)
            .with_keys_head(0, anchor.hash())
            .sign(&[&key.note_signer().unwrap()])
            .unwrap();
        let trusted = [key.note_signer().unwrap().verifier()];

        let assemble = || {
            let pairs: Vec<_> = stream.iter().map(|(_, e, p)| (e, Some(p))).collect();
            let sel = Selection::entry_versions(&pairs, entry);
            // As the store assembles it: the checkpoint names the `$keys` head, so only the
            // last version carries an inclusion proof.
            let last = sel.events.last().copied();
            let bundle = ProofBundle {
                format: proof::FORMAT_V2.to_owned(),
                subject: Subject::Entry { patient_id: patient, entry_id: entry },
                checkpoint: proof::checkpoint_item(&note).unwrap(),
                keys: vec![proof::event_item(&anchor, Some(&anchor_payload), None)],
                events: sel
                    .events
                    .iter()
                    .map(|&i| {
                        let (pos, e, p) = &stream[i];
                        let path = (Some(i) == last).then(|| tree.inclusion_proof(*pos, size).unwrap());
                        proof::event_item(e, Some(p), path.as_deref().map(|h| (*pos, h)))
                    })
                    .collect(),
                chain: Vec::new(),
                consistency: None,
            };
            serde_json::to_vec(&bundle).unwrap()
        };
        let json = assemble();
        proof::verify_json(&json, &trusted).unwrap();
        if let Ok(dir) = std::env::var("PROOF_BENCH_DUMP") {
            std::fs::write(std::path::Path::new(&dir).join(format!("bundle-{size}.json")), &json).unwrap();
        }
        let runs = 200;
        let gen: Vec<Duration> = (0..runs)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(assemble());
                t.elapsed()
            })
            .collect();
        let ver: Vec<Duration> = (0..runs)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(proof::verify_json(&json, &trusted).unwrap());
                t.elapsed()
            })
            .collect();
        println!(
            "ledger {size:>9} events: bundle {} bytes (3 versions, 1 key event); assembly from memory {:?}; verification {:?} (medians of {runs})",
            json.len(),
            median(gen),
            median(ver),
        );
    }
}
