//! Record proof benchmark (issue #6): `cargo bench -p store --bench proof`.
//!
//! Fills a fresh ledger to 10^4, 10^5 and 10^6 events (`PROOF_BENCH_MAX` caps the largest
//! size) with a 3-version entry spread over the log, then measures, against the latest
//! checkpoint: the bundle size (compact JSON), its generation from PostgreSQL
//! (`store::proofs::entry_bundle`: stream, `$keys`, Merkle nodes, checkpoint) and its
//! offline verification (`proof::verify_json`); medians of 50 runs. `PROOF_BENCH_DUMP=<dir>`
//! writes each bundle there.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, missing_docs)]

use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use ledger::{Actor, EventType, LedgerSigningKey, RoleName, StreamId};
use store::{EventStore, ExpectedRevision, ProposedEvent, StoreConfig};
use testdb::TestDb;
use uuid::Uuid;

fn event(ty: &str, payload: Vec<u8>) -> ProposedEvent {
    ProposedEvent {
        event_id: Uuid::now_v7(),
        event_type: EventType::new(ty).unwrap(),
        schema_version: 1,
        actor: Actor { user_id: Uuid::from_u128(7), role: RoleName::new("physician").unwrap() },
        payload,
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn fill_to(store: &EventStore, target: u64, filler: &mut u128) {
    while store.head().size < target {
        let n = (target - store.head().size).min(1000) as usize;
        *filler += 1;
        let s = StreamId::patient(Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 | *filler));
        let events = (0..n).map(|_| event("vital_signs.recorded", vec![0x5a; 200])).collect();
        store.append(&s, ExpectedRevision::Any, events).await.unwrap();
    }
}

fn main() {
    let max: u64 = std::env::var("PROOF_BENCH_MAX").ok().and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let db = TestDb::new().await.unwrap();
        let key = LedgerSigningKey::new("bench.example/ledger", SigningKey::from_bytes(&[4; 32])).unwrap();
        let trusted = [key.note_signer().unwrap().verifier()];
        let config = StoreConfig { checkpoint_every_events: u64::MAX, ..StoreConfig::default() };
        let store = EventStore::open(db.pool().clone(), key, config).await.unwrap();
        let mut filler = 0u128;
        for size in [10_000u64, 100_000, 1_000_000].into_iter().filter(|&s| s <= max) {
            // The entry's versions at 1/2, 3/4 and the end of this size's log.
            let patient = Uuid::now_v7();
            let entry = Uuid::now_v7();
            let stream = StreamId::patient(patient);
            let content = r#"{"kind":"vital_signs","code":{"system":"loinc","code":"8867-4","display":"Heart rate"},"value":{"value":"72","unit":"/min"}}"#;
            let versions = [
                ("entry.recorded", format!(r#"{{"entry_id":"{entry}","content":{content},"effective_at":"2026-11-23T08:15:00.000000Z"}}"#)),
                ("entry.amended", format!(r#"{{"amendment_id":"{}","amendment_of_id":"{entry}","content":{content},"reason":"device re-read","effective_at":"2026-11-23T08:15:00.000000Z"}}"#, Uuid::now_v7())),
                ("entry.entered_in_error", format!(r#"{{"entry_id":"{entry}","reason":"wrong patient"}}"#)),
            ];
            for ((ty, payload), at) in versions.into_iter().zip([size / 2, 3 * size / 4, size - 1]) {
                fill_to(&store, at, &mut filler).await;
                store.append(&stream, ExpectedRevision::Any, vec![event(ty, payload.into_bytes())]).await.unwrap();
            }
            store.checkpoint_now().await.unwrap();
            let bundle = store::proofs::entry_bundle(store.pool(), patient, entry).await.unwrap();
            let json = serde_json::to_vec(&bundle).unwrap();
            proof::verify_json(&json, &trusted).unwrap();
            if let Ok(dir) = std::env::var("PROOF_BENCH_DUMP") {
                std::fs::write(format!("{dir}/bundle-{size}.json"), &json).unwrap();
            }
            let mut gen = Vec::new();
            let mut ver = Vec::new();
            for _ in 0..50 {
                let t = Instant::now();
                std::hint::black_box(store::proofs::entry_bundle(store.pool(), patient, entry).await.unwrap());
                gen.push(t.elapsed());
                let t = Instant::now();
                std::hint::black_box(proof::verify_json(&json, &trusted).unwrap());
                ver.push(t.elapsed());
            }
            println!(
                "ledger {:>9} events: bundle {} bytes (3 versions, {} key event(s)); generated in {:?}, verified in {:?} (medians of 50)",
                store.head().size,
                json.len(),
                bundle.keys.len(),
                median(gen),
                median(ver),
            );
        }
    });
}
