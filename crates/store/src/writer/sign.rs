//! Signing a batch: each stream's new events form a chain (each `prev_hash` is the hash of
//! the event signed before it), so a chain is signed in order; different streams' chains
//! are signed in parallel (rayon), unless the batch is small. Each signed event becomes a
//! row with the Merkle nodes its leaf completes.

use std::collections::HashMap;

use ledger::envelope::{EventBody, GENESIS_PREV_HASH};
use ledger::merkle::{self, Frontier};
use ledger::{Hash, KeyId, LedgerSigningKey, SignedEvent, StreamId, Timestamp};
use rayon::prelude::*;

use super::{Draft, NewRow};
use crate::error::StoreError;

/// Up to this many events are signed on the writer's task itself, one after the other,
/// without `block_in_place` or rayon.
pub(super) const SIGN_INLINE_EVENTS: usize = 4;

/// Sign `drafts` (in position order) and build their rows: chains per stream, in parallel
/// across streams. `bases` holds each stream's link to the event before (None: a new
/// stream) and is moved to the last hash signed; `frontier` takes the new leaves.
pub(super) fn sign_drafts(
    drafts: Vec<Draft>,
    key: &LedgerSigningKey,
    now: Timestamp,
    bases: &mut HashMap<StreamId, Option<Hash>>,
    frontier: &mut Frontier,
) -> Result<Vec<NewRow>, StoreError> {
    let mut chains: HashMap<&StreamId, Vec<usize>> = HashMap::new();
    for (i, d) in drafts.iter().enumerate() {
        chains.entry(&d.stream).or_default().push(i);
    }
    let chains: Vec<(Option<Hash>, Vec<usize>)> =
        chains.into_iter().map(|(s, v)| (bases.get(s).copied().flatten(), v)).collect();
    let key_id = key.key_id();
    let sign_chain =
        |(base, idxs): &(Option<Hash>, Vec<usize>)| sign_chain(&drafts, *base, idxs, key, key_id, now);
    // One chain, or a few events: nothing to gain from rayon's threads.
    let signed: Vec<Vec<(usize, Result<SignedEvent, ledger::LedgerError>)>> =
        if chains.len() <= 1 || drafts.len() <= SIGN_INLINE_EVENTS {
            chains.iter().map(sign_chain).collect()
        } else {
            chains.par_iter().map(sign_chain).collect()
        };
    let mut events: Vec<Option<SignedEvent>> = vec![None; drafts.len()];
    for (i, r) in signed.into_iter().flatten() {
        // Signing only fails on invalid input, which validation already excluded.
        events[i] = Some(r?);
    }
    let mut rows = Vec::with_capacity(drafts.len());
    for (d, ev) in drafts.into_iter().zip(events) {
        let ev = ev.ok_or(StoreError::Closed)?;
        bases.insert(d.stream.clone(), Some(*ev.hash()));
        let nodes = frontier
            .append(merkle::leaf_hash(ev.hash()))
            .map_err(|_| StoreError::Corrupt { position: d.position, reason: "Merkle tree full" })?;
        let mut merkle_nodes = Vec::with_capacity(32 * nodes.len());
        for (id, h) in nodes.iter().filter(|(id, _)| id.level > 0) {
            debug_assert_eq!(((id.index + 1) << id.level) - 1, d.position);
            merkle_nodes.extend_from_slice(h);
        }
        rows.push(NewRow { position: d.position, event: ev, payload: d.payload, merkle_nodes });
    }
    Ok(rows)
}

/// Sign the drafts at `idxs` (one stream's, in order), the first linking to `base`.
fn sign_chain(
    drafts: &[Draft],
    base: Option<Hash>,
    idxs: &[usize],
    key: &LedgerSigningKey,
    key_id: KeyId,
    now: Timestamp,
) -> Vec<(usize, Result<SignedEvent, ledger::LedgerError>)> {
    let mut prev = base;
    idxs.iter()
        .map(|&i| {
            let d = &drafts[i];
            let body = EventBody {
                stream_id: d.stream.clone(),
                stream_revision: d.revision,
                event_id: d.event_id,
                event_type: d.event_type.clone(),
                schema_version: d.schema_version,
                recorded_at: now,
                actor: d.actor.clone(),
                payload_commitment: d.payload.commitment(),
                prev_hash: if d.revision == 0 {
                    GENESIS_PREV_HASH
                } else {
                    prev.unwrap_or(GENESIS_PREV_HASH)
                },
                key_id,
            };
            let r = sign_body(body, key, key_id);
            if let Ok(ev) = &r {
                prev = Some(*ev.hash());
            }
            (i, r)
        })
        .collect()
}

fn sign_body(
    body: EventBody,
    key: &LedgerSigningKey,
    key_id: KeyId,
) -> Result<SignedEvent, ledger::LedgerError> {
    debug_assert_eq!(key.key_id(), key_id);
    body.sign(key)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{key, stream};
    use super::*;
    use ledger::envelope::Payload;
    use ledger::merkle::MemoryTree;
    use ledger::{Actor, EventType, RoleName};
    use rand_core::SeedableRng;
    use uuid::Uuid;

    /// Drafts at positions from `first`, one per (stream, revision).
    fn drafts(first: u64, of: &[(StreamId, u64)]) -> Vec<Draft> {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
        (first..)
            .zip(of)
            .map(|(position, (stream, revision))| Draft {
                position,
                stream: stream.clone(),
                revision: *revision,
                event_id: Uuid::now_v7(),
                event_type: EventType::new("test.event").unwrap(),
                schema_version: 1,
                actor: Actor { user_id: Uuid::from_u128(42), role: RoleName::new("physician").unwrap() },
                payload: Payload::new(position.to_le_bytes().to_vec(), &mut rng).unwrap(),
            })
            .collect()
    }

    fn now() -> Timestamp {
        Timestamp::from_micros(1_800_000_000_000_000)
    }

    #[test]
    fn chains_link_per_stream_from_their_bases_and_the_frontier_takes_every_leaf() {
        let key = key();
        let (a, b) = (stream(1), stream(2));
        let base_b = [9u8; 32];
        let spec: Vec<(StreamId, u64)> = vec![
            (a.clone(), 0),
            (b.clone(), 5),
            (a.clone(), 1),
            (b.clone(), 6),
            (a.clone(), 2),
            (b.clone(), 7),
        ];
        let mut bases: HashMap<StreamId, Option<Hash>> =
            [(a.clone(), None), (b.clone(), Some(base_b))].into();
        let mut frontier = Frontier::new();
        let rows = sign_drafts(drafts(0, &spec), &key, now(), &mut bases, &mut frontier).unwrap();
        assert_eq!(rows.iter().map(|r| r.position).collect::<Vec<_>>(), (0..6).collect::<Vec<_>>());
        let prev = |i: usize| rows[i].event.body().prev_hash;
        assert_eq!(prev(0), GENESIS_PREV_HASH, "a new stream starts at genesis");
        assert_eq!(prev(1), base_b, "an existing stream links to its base");
        assert_eq!(&prev(2), rows[0].event.hash());
        assert_eq!(&prev(3), rows[1].event.hash());
        assert_eq!(&prev(5), rows[3].event.hash());
        assert_eq!(bases[&a], Some(*rows[4].event.hash()), "bases move to the last hash signed");
        assert_eq!(bases[&b], Some(*rows[5].event.hash()));
        let mut tree = MemoryTree::new();
        for r in &rows {
            r.event.verify(&key.verifying_key()).unwrap();
            assert_eq!(r.event.recorded_at(), now());
            tree.push(merkle::leaf_hash(r.event.hash()));
            // Row p holds the nodes its leaf completes, above the leaf.
            assert_eq!(r.merkle_nodes.len(), 32 * (r.position + 1).trailing_zeros() as usize);
        }
        assert_eq!(frontier.size(), 6);
        assert_eq!(frontier.root(), tree.root());
        let node = |level: u8, index: u64| tree.node(merkle::NodeId { level, index }).unwrap();
        assert_eq!(rows[3].merkle_nodes, [node(1, 1), node(2, 0)].concat());
    }

    #[test]
    fn signing_in_chunks_gives_the_rows_of_signing_at_once() {
        let key = key();
        let spec: Vec<(StreamId, u64)> = (0..20u64).map(|i| (stream((i % 3) as u32), i / 3)).collect();
        let whole = drafts(0, &spec);
        let copy = |d: &Draft| Draft {
            stream: d.stream.clone(),
            event_type: d.event_type.clone(),
            actor: d.actor.clone(),
            payload: d.payload.clone(),
            ..*d
        };
        let parts: Vec<Draft> = whole.iter().map(copy).collect();
        let mut bases = HashMap::new();
        let mut frontier = Frontier::new();
        let at_once = sign_drafts(whole, &key, now(), &mut bases, &mut frontier.clone()).unwrap();
        let mut chunked = Vec::new();
        let mut rest = parts.into_iter().peekable();
        for size in [1, 2, 3, 100] {
            let chunk: Vec<Draft> = rest.by_ref().take(size).collect();
            chunked.extend(sign_drafts(chunk, &key, now(), &mut bases, &mut frontier).unwrap());
        }
        assert!(rest.peek().is_none());
        let hashes = |rows: &[NewRow]| rows.iter().map(|r| *r.event.hash()).collect::<Vec<_>>();
        assert_eq!(hashes(&at_once), hashes(&chunked));
        let nodes = |rows: &[NewRow]| rows.iter().map(|r| r.merkle_nodes.clone()).collect::<Vec<_>>();
        assert_eq!(nodes(&at_once), nodes(&chunked));
    }

    #[test]
    fn sign_body_signs_with_the_key_named_in_the_body() {
        let key = key();
        let d = &drafts(0, &[(stream(1), 0)])[0];
        let rows = sign_chain(std::slice::from_ref(d), None, &[0], &key, key.key_id(), now());
        let ev = rows[0].1.as_ref().unwrap();
        assert_eq!(ev.body().key_id, key.key_id());
        ev.verify(&key.verifying_key()).unwrap();
    }
}
