//! Micro-benchmarks of the ledger core, with raw ed25519-dalek sign/verify as the
//! baseline measured in the same run. `cargo bench -p ledger`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ed25519_dalek::{Signer, SigningKey, Verifier};
use ledger::envelope::{EventBody, Payload, GENESIS_PREV_HASH};
use ledger::merkle::{self, MemoryTree};
use ledger::verify::{verify_batch, SignatureCheck};
use ledger::{Actor, EventType, LedgerSigningKey, RoleName, SignedEvent, StreamId, Timestamp};
use uuid::Uuid;

fn key() -> LedgerSigningKey {
    LedgerSigningKey::new("bench.example/log", SigningKey::from_bytes(&[3u8; 32])).unwrap()
}

fn body(k: &LedgerSigningKey, i: u64) -> EventBody {
    EventBody {
        stream_id: StreamId::patient(Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 | i as u128)),
        stream_revision: i,
        event_id: Uuid::now_v7(),
        event_type: EventType::new("clinical.entry_recorded").unwrap(),
        schema_version: 1,
        recorded_at: Timestamp::from_micros(1_795_435_200_000_000),
        actor: Actor { user_id: Uuid::now_v7(), role: RoleName::new("physician").unwrap() },
        payload_commitment: [7; 32],
        prev_hash: if i == 0 { GENESIS_PREV_HASH } else { [9; 32] },
        key_id: k.key_id(),
    }
}

fn envelope(c: &mut Criterion) {
    let k = key();
    let b = body(&k, 1);
    let ev = b.clone().sign(&k).unwrap();
    let bytes = ev.to_bytes();
    let msg = ev.signature_message();
    let vk = k.verifying_key();
    let mut g = c.benchmark_group("envelope");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode_body", |x| x.iter(|| b.to_bytes().unwrap()));
    g.bench_function("decode_envelope", |x| x.iter(|| SignedEvent::from_bytes(&bytes).unwrap()));
    g.bench_function("hash_event", |x| {
        x.iter(|| {
            use sha2::Digest;
            sha2::Sha256::new().chain_update(ledger::envelope::EVENT_HASH_TAG).chain_update(&bytes).finalize()
        })
    });
    let p = Payload::with_salt([1; 32], vec![0x5a; 512]).unwrap();
    g.bench_function("payload_commitment_512B", |x| x.iter(|| p.commitment()));
    g.bench_function("sign_event", |x| {
        x.iter_batched(|| b.clone(), |b| b.sign(&k).unwrap(), BatchSize::SmallInput)
    });
    g.bench_function("verify_event_strict", |x| x.iter(|| ev.verify(&vk).unwrap()));
    // Baseline: raw ed25519-dalek on the same message.
    g.bench_function("baseline_raw_ed25519_sign", |x| x.iter(|| k.signing_key().sign(&msg)));
    g.bench_function("baseline_raw_ed25519_verify", |x| x.iter(|| vk.verify(&msg, ev.signature()).unwrap()));
    g.bench_function("baseline_raw_ed25519_verify_strict", |x| {
        x.iter(|| vk.verify_strict(&msg, ev.signature()).unwrap())
    });
    g.finish();

    let mut g = c.benchmark_group("batch_verify_64");
    let evs: Vec<SignedEvent> = (0..64).map(|i| body(&k, i).sign(&k).unwrap()).collect();
    let msgs: Vec<Vec<u8>> = evs.iter().map(|e| e.signature_message()).collect();
    let items: Vec<SignatureCheck<'_>> = evs
        .iter()
        .zip(&msgs)
        .map(|(e, m)| SignatureCheck { key: &vk, message: m, signature: e.signature() })
        .collect();
    g.throughput(Throughput::Elements(64));
    g.bench_function("ledger_verify_batch", |x| x.iter(|| verify_batch(&items).unwrap()));
    let sigs: Vec<ed25519_dalek::Signature> = evs.iter().map(|e| *e.signature()).collect();
    let ms: Vec<&[u8]> = msgs.iter().map(|m| m.as_slice()).collect();
    let vks = vec![vk; 64];
    g.bench_function("baseline_raw_dalek_verify_batch", |x| {
        x.iter(|| ed25519_dalek::verify_batch(&ms, &sigs, &vks).unwrap())
    });
    g.finish();
}

fn merkle_1m(c: &mut Criterion) {
    const N: u64 = 1_000_000;
    let tree: MemoryTree = (0..N).map(|i| merkle::leaf_hash(&i.to_le_bytes())).collect();
    let root = tree.root_at(N).unwrap();
    let old = 700_001;
    let old_root = tree.root_at(old).unwrap();
    let mut g = c.benchmark_group("merkle_1e6");
    g.throughput(Throughput::Elements(1));
    let i: u64 = 123_457;
    let leaf = merkle::leaf_hash(&i.to_le_bytes());
    let proof = tree.inclusion_proof(i, N).unwrap();
    g.bench_function("inclusion_proof_generate", |x| x.iter(|| tree.inclusion_proof(i, N).unwrap()));
    g.bench_function("inclusion_proof_generate_from_plan", |x| {
        x.iter(|| merkle::inclusion_plan(i, N).unwrap().assemble(|n| tree.node(n)).unwrap())
    });
    g.bench_function("inclusion_proof_verify", |x| {
        x.iter(|| merkle::verify_inclusion(&leaf, i, N, &proof, &root).unwrap())
    });
    let cproof = tree.consistency_proof(old, N).unwrap();
    g.bench_function("consistency_proof_generate", |x| x.iter(|| tree.consistency_proof(old, N).unwrap()));
    g.bench_function("consistency_proof_verify", |x| {
        x.iter(|| merkle::verify_consistency(old, N, &old_root, &root, &cproof).unwrap())
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(std::time::Duration::from_millis(300)).measurement_time(std::time::Duration::from_secs(1));
    targets = envelope, merkle_1m
}
criterion_main!(benches);
