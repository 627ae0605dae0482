use super::*;
use proptest::prelude::*;
use serde::Deserialize;
use std::collections::BTreeSet;
use std::sync::OnceLock;

// ---------------------------------------------------------------- helpers

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len() % 2 == 0, "odd hex length: {s}");
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn h(s: &str) -> Hash {
    unhex(s).try_into().expect("32-byte hash")
}

fn test_leaf(i: u64) -> Hash {
    leaf_hash(&i.to_be_bytes())
}

fn tree_of(n: u64) -> MemoryTree {
    (0..n).map(test_leaf).collect()
}

/// A tree of 128 distinct leaves (so that sizes up to 2 * 64 have real roots).
fn small_tree() -> &'static MemoryTree {
    static TREE: OnceLock<MemoryTree> = OnceLock::new();
    TREE.get_or_init(|| tree_of(128))
}

/// A tree of 2048 distinct leaves, for random sizes above the exhaustive range.
fn medium_tree() -> &'static MemoryTree {
    static TREE: OnceLock<MemoryTree> = OnceLock::new();
    TREE.get_or_init(|| tree_of(2048))
}

fn flip(proof: &[Hash], element: usize, bit: usize) -> Vec<Hash> {
    let mut p = proof.to_vec();
    p[element][bit / 8] ^= 1 << (bit % 8);
    p
}

/// The bits of a proof element to flip in the exhaustive tests: all 256 in optimized
/// builds (about 2 s); in debug builds, where hashing is slow, one bit of every byte (so
/// every byte of every proof is altered; which bit varies with `seed` and the byte),
/// and the proptests flip random bits.
fn flip_bits(seed: u64) -> Vec<usize> {
    if cfg!(debug_assertions) {
        (0..32).map(|b| b * 8 + (seed as usize * 3 + b * 5) % 8).collect()
    } else {
        (0..256).collect()
    }
}

fn node_in_range(id: NodeId, size: u64) -> bool {
    id.level < 64 && (u128::from(id.index) + 1) << id.level <= u128::from(size)
}

/// For each inclusion proof element, bottom-up: is it left of the leaf?
fn inclusion_shape(index: u64, size: u64) -> Option<Vec<bool>> {
    let plan = inclusion_plan(index, size).ok()?;
    Some(plan.elements().map(|e| (u128::from(e[0].index) << e[0].level) < u128::from(index)).collect())
}

// ---------------------------------------------------------------- published vectors

#[derive(Deserialize)]
struct Vectors {
    source: String,
    leaves: Vec<String>,
    roots: Vec<RootVector>,
    nodes: Vec<NodeVector>,
    compact_ranges: Vec<CompactVector>,
    inclusion: Vec<InclusionVector>,
    consistency: Vec<ConsistencyVector>,
    inclusion_plans: Vec<InclusionPlanVector>,
    consistency_plans: Vec<ConsistencyPlanVector>,
}
#[derive(Deserialize)]
struct RootVector {
    size: u64,
    root: String,
}
#[derive(Deserialize)]
struct NodeVector {
    level: u8,
    index: u64,
    hash: String,
}
#[derive(Deserialize)]
struct CompactVector {
    size: u64,
    nodes: Vec<(u8, u64)>,
}
#[derive(Deserialize)]
struct InclusionVector {
    index: u64,
    size: u64,
    path: Vec<String>,
}
#[derive(Deserialize)]
struct ConsistencyVector {
    old: u64,
    new: u64,
    path: Vec<String>,
}
#[derive(Deserialize)]
struct InclusionPlanVector {
    index: u64,
    size: u64,
    elements: Vec<Vec<(u8, u64)>>,
}
#[derive(Deserialize)]
struct ConsistencyPlanVector {
    old: u64,
    new: u64,
    elements: Vec<Vec<(u8, u64)>>,
}

fn vectors() -> Vectors {
    serde_json::from_str(include_str!("../../../../schema/vectors/merkle-rfc6962.json")).unwrap()
}

fn vector_tree(v: &Vectors) -> MemoryTree {
    v.leaves.iter().map(|l| leaf_hash(&unhex(l))).collect()
}

fn plan_ids(plan: &ProofPlan) -> Vec<Vec<(u8, u64)>> {
    plan.elements().map(|e| e.iter().map(|id| (id.level, id.index)).collect()).collect()
}

#[test]
fn vectors_roots_nodes_and_frontiers() {
    let v = vectors();
    assert!(v.source.contains("transparency-dev/merkle"));
    assert_eq!(v.leaves.len(), 8);
    assert_eq!(v.roots.len(), 9);
    let tree = vector_tree(&v);
    assert_eq!(v.roots[0].size, 0);
    assert_eq!(empty_root(), h(&v.roots[0].root));

    let mut frontier = Frontier::new();
    for r in &v.roots {
        let want = h(&r.root);
        assert_eq!(tree.root_at(r.size).unwrap(), want, "root {}", r.size);
        let plan = root_plan(r.size);
        assert_eq!(plan.assemble(|id| tree.node(id)).unwrap(), vec![want]);
        while frontier.size() < r.size {
            let leaf = leaf_hash(&unhex(&v.leaves[frontier.size() as usize]));
            frontier.append(leaf).unwrap();
        }
        assert_eq!(frontier.root(), want, "frontier root {}", r.size);
    }
    assert_eq!(tree.root(), h(&v.roots[8].root));

    let mut stored = 0;
    for n in &v.nodes {
        let id = NodeId::new(n.level, n.index);
        assert_eq!(tree.node(id), Some(h(&n.hash)), "node {id:?}");
        if n.level == 0 {
            assert_eq!(leaf_hash(&unhex(&v.leaves[n.index as usize])), h(&n.hash));
        }
        stored += 1;
    }
    assert_eq!(stored, 15);
    assert_eq!(tree.node(NodeId::new(0, 8)), None);
    assert_eq!(tree.node(NodeId::new(4, 0)), None);

    let node = |level: u8, index: u64| {
        let n = v.nodes.iter().find(|n| n.level == level && n.index == index).unwrap();
        h(&n.hash)
    };
    let mut frontier = Frontier::new();
    for c in &v.compact_ranges {
        while frontier.size() < c.size {
            let leaf = leaf_hash(&unhex(&v.leaves[frontier.size() as usize]));
            frontier.append(leaf).unwrap();
        }
        let want: Vec<Hash> = c.nodes.iter().map(|&(l, i)| node(l, i)).collect();
        assert_eq!(frontier.parts(), &want[..], "compact range {}", c.size);
        let ids: Vec<(u8, u64)> = Frontier::node_ids(c.size).iter().map(|id| (id.level, id.index)).collect();
        assert_eq!(ids, c.nodes);
        assert_eq!(Frontier::from_parts(c.size, want).unwrap(), frontier);
    }
}

#[test]
fn vectors_inclusion() {
    let v = vectors();
    let tree = vector_tree(&v);
    let some_hash = h("abacaba000000000000000000000000000000000000000000060061e00123456");
    assert_eq!(v.inclusion.len(), 7);
    for p in &v.inclusion {
        let (i, n) = (p.index, p.size);
        let want: Vec<Hash> = p.path.iter().map(|s| h(s)).collect();
        let root = h(&v.roots[n as usize].root);
        let leaf = leaf_hash(&unhex(&v.leaves[i as usize]));
        let ctx = format!("inclusion {i}/{n}");

        // Generated proofs equal the published ones.
        assert_eq!(tree.inclusion_proof(i, n).unwrap(), want, "{ctx}");
        let plan = inclusion_plan(i, n).unwrap();
        assert_eq!(plan.assemble(|id| tree.node(id)).unwrap(), want, "{ctx}");

        // The published proof verifies.
        assert_eq!(root_from_inclusion_proof(&leaf, i, n, &want), Ok(root));
        assert_eq!(verify_inclusion(&leaf, i, n, &want, &root), Ok(()), "{ctx}");

        // Altered ones fail (the probes of transparency-dev's corruptInclusionProof).
        let bad = |index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash| {
            verify_inclusion(leaf, index, size, proof, root).is_err()
        };
        assert!(bad(i.wrapping_sub(1), n, &leaf, &want, &root), "{ctx}");
        assert!(bad(i + 1, n, &leaf, &want, &root), "{ctx}");
        assert!(bad(i ^ 2, n, &leaf, &want, &root), "{ctx}");
        assert!(bad(i, n * 2, &leaf, &want, &root), "{ctx}");
        assert!(bad(i, n / 2, &leaf, &want, &root), "{ctx}");
        assert!(bad(i, n, &leaf_hash(b"WrongLeaf"), &want, &root), "{ctx}");
        assert!(bad(i, n, &leaf, &want, &empty_root()), "{ctx}");
        assert!(bad(i, n, &leaf, &want, &some_hash), "{ctx}");
        for extra in [[0u8; 32], root] {
            let mut longer = want.clone();
            longer.push(extra);
            assert!(bad(i, n, &leaf, &longer, &root), "{ctx}");
            longer.pop();
            longer.insert(0, extra);
            assert!(bad(i, n, &leaf, &longer, &root), "{ctx}");
        }
        for e in 0..want.len() {
            assert_eq!(
                verify_inclusion(&leaf, i, n, &flip(&want, e, 3), &root),
                Err(MerkleError::RootMismatch),
                "{ctx}"
            );
        }
        if !want.is_empty() {
            assert!(bad(i, n, &leaf, &want[..want.len() - 1], &root), "{ctx}");
        }
        if want.len() > 1 {
            let mut inserted = vec![want[0], some_hash];
            inserted.extend_from_slice(&want[1..]);
            assert!(bad(i, n, &leaf, &inserted, &root), "{ctx}");
        }
    }
}

#[test]
fn vectors_consistency() {
    let v = vectors();
    let tree = vector_tree(&v);
    assert_eq!(v.consistency.len(), 5);
    for p in &v.consistency {
        let (m, n) = (p.old, p.new);
        let want: Vec<Hash> = p.path.iter().map(|s| h(s)).collect();
        let (r1, r2) = (h(&v.roots[m as usize].root), h(&v.roots[n as usize].root));
        let ctx = format!("consistency {m}->{n}");

        assert_eq!(tree.consistency_proof(m, n).unwrap(), want, "{ctx}");
        let plan = consistency_plan(m, n).unwrap();
        assert_eq!(plan.assemble(|id| tree.node(id)).unwrap(), want, "{ctx}");
        assert_eq!(verify_consistency(m, n, &r1, &r2, &want), Ok(()), "{ctx}");
        if want.is_empty() {
            continue;
        }

        // The probes of transparency-dev's corruptConsistencyProof.
        let bad = |m: u64, n: u64, r1: &Hash, r2: &Hash, proof: &[Hash]| {
            verify_consistency(m, n, r1, r2, proof).is_err()
        };
        let wrong_root = leaf_hash(b"WrongRoot");
        assert!(bad(m - 1, n, &r1, &r2, &want), "{ctx}");
        assert!(bad(m + 1, n, &r1, &r2, &want), "{ctx}");
        assert!(bad(m ^ 2, n, &r1, &r2, &want), "{ctx}");
        assert!(bad(m, n * 2, &r1, &r2, &want), "{ctx}");
        assert!(bad(m, n / 2, &r1, &r2, &want), "{ctx}");
        assert!(bad(m, n, &wrong_root, &r2, &want), "{ctx}");
        assert!(bad(m, n, &r1, &wrong_root, &want), "{ctx}");
        assert!(bad(m, n, &r2, &r1, &want), "{ctx}");
        assert!(bad(m, n, &r1, &r2, &[]), "{ctx}");
        for extra in [[0u8; 32], r1, r2, want[0]] {
            let mut longer = want.clone();
            longer.push(extra);
            assert!(bad(m, n, &r1, &r2, &longer), "{ctx}");
            longer.pop();
            longer.insert(0, extra);
            assert!(bad(m, n, &r1, &r2, &longer), "{ctx}");
        }
        assert!(bad(m, n, &r1, &r2, &want[..want.len() - 1]), "{ctx}");
        for e in 0..want.len() {
            assert_eq!(
                verify_consistency(m, n, &r1, &r2, &flip(&want, e, 4)),
                Err(MerkleError::RootMismatch),
                "{ctx}"
            );
        }
    }
}

#[test]
fn vectors_plan_node_ids() {
    let v = vectors();
    assert_eq!(v.inclusion_plans.len(), 18);
    for p in &v.inclusion_plans {
        let plan = inclusion_plan(p.index, p.size).unwrap();
        assert_eq!(plan_ids(&plan), p.elements, "inclusion {}/{}", p.index, p.size);
    }
    assert_eq!(v.consistency_plans.len(), 25);
    for p in &v.consistency_plans {
        let plan = consistency_plan(p.old, p.new).unwrap();
        assert_eq!(plan_ids(&plan), p.elements, "consistency {}->{}", p.old, p.new);
    }
}

/// transparency-dev/merkle proof/verify_test.go TestVerifyConsistency and
/// TestVerifyInclusion(SingleEntry), with the size-0 verdicts of the current upstream
/// (every old size 0 is rejected). The Go "don't care" roots are not 32 bytes long, so they
/// are replaced by two arbitrary distinct hashes.
#[test]
fn upstream_static_probes() {
    let root1 = leaf_hash(b"don't care 1");
    let root2 = leaf_hash(b"don't care 2");
    let e = empty_root();
    let proof2 = [e];
    type Case<'a> = (u64, u64, Hash, Hash, &'a [Hash], bool);
    let cases: [Case; 13] = [
        (0, 0, root1, root2, &[], false),
        (1, 1, root1, root2, &[], false),
        (0, 0, root1, root1, &[], false),
        (0, 1, root1, root2, &[], false),
        (1, 1, root2, root2, &[], true),
        (1, 0, root1, root2, &[], false),
        (2, 1, root1, root2, &[], false),
        (1, 2, root1, root2, &[], false),
        (0, 0, e, root2, &[], false),
        (1, 1, e, root2, &[], false),
        (0, 0, e, e, &proof2, false),
        (0, 1, e, e, &proof2, false),
        (1, 1, e, e, &proof2, false),
    ];
    for (m, n, r1, r2, proof, ok) in cases {
        assert_eq!(verify_consistency(m, n, &r1, &r2, proof).is_ok(), ok, "{m}->{n}");
    }
    assert_eq!(verify_consistency(0, 5, &e, &root2, &[]), Err(MerkleError::EmptyOldTree));

    let data_hash = leaf_hash(b"data");
    assert_eq!(verify_inclusion(&data_hash, 0, 1, &[], &data_hash), Ok(()));
    assert!(verify_inclusion(&data_hash, 0, 1, &[], &e).is_err());
    let some = h("abacaba000000000000000000000000000000000000000000060061e00123456");
    for (index, size) in [(0, 0), (0, 1), (1, 0), (2, 1)] {
        assert!(verify_inclusion(&some, index, size, &[], &e).is_err());
    }
}

// ---------------------------------------------------------------- exhaustive, n <= 64

/// The exhaustive tests alter every byte of every proof element, in any build.
#[test]
fn flip_bits_alter_every_byte() {
    for seed in 0..300u64 {
        let bits = flip_bits(seed);
        let bytes: BTreeSet<usize> = bits.iter().map(|b| b / 8).collect();
        assert_eq!(bytes, (0..32).collect::<BTreeSet<_>>(), "seed {seed}");
        assert!(bits.iter().all(|&b| b < 256));
    }
    // Across seeds, every bit position of a byte is exercised.
    let positions: BTreeSet<usize> = (0..8u64).map(|s| flip_bits(s)[0] % 8).collect();
    assert_eq!(positions.len(), 8);
}

#[test]
fn exhaustive_inclusion_up_to_64() {
    let tree = small_tree();
    let mut checked = 0usize;
    for n in 1..=64u64 {
        let root = tree.root_at(n).unwrap();
        for i in 0..n {
            let leaf = test_leaf(i);
            let ctx = format!("inclusion {i}/{n}");
            let proof = tree.inclusion_proof(i, n).unwrap();
            let plan = inclusion_plan(i, n).unwrap();
            assert_eq!(plan.len(), proof.len(), "{ctx}");
            assert_eq!(plan.len(), inclusion_proof_len(i, n), "{ctx}");
            assert!(plan.nodes().iter().all(|&id| node_in_range(id, n)), "{ctx}");
            let assembled = plan.assemble(|id| tree.node(id)).unwrap();
            assert_eq!(assembled, proof, "{ctx}");
            assert_eq!(root_from_inclusion_proof(&leaf, i, n, &proof), Ok(root));
            assert_eq!(verify_inclusion(&leaf, i, n, &proof, &root), Ok(()), "{ctx}");

            for e in 0..proof.len() {
                for bit in flip_bits(e as u64 + i + n) {
                    assert_eq!(
                        verify_inclusion(&leaf, i, n, &flip(&proof, e, bit), &root),
                        Err(MerkleError::RootMismatch),
                        "{ctx} element {e} bit {bit}"
                    );
                }
            }
            // Added or removed elements.
            let wrong_len = |p: &[Hash]| {
                matches!(verify_inclusion(&leaf, i, n, p, &root), Err(MerkleError::WrongProofLength { .. }))
            };
            let mut longer = proof.clone();
            longer.push(root);
            assert!(wrong_len(&longer), "{ctx}");
            longer.pop();
            longer.insert(0, leaf);
            assert!(wrong_len(&longer), "{ctx}");
            if !proof.is_empty() {
                assert!(wrong_len(&proof[1..]), "{ctx}");
                assert!(wrong_len(&proof[..proof.len() - 1]), "{ctx}");
            }
            // Wrong leaf, wrong root.
            assert!(verify_inclusion(&test_leaf(i + 1), i, n, &proof, &root).is_err());
            assert!(verify_inclusion(&leaf, i, n, &proof, &empty_root()).is_err());

            // Another index in the same tree never verifies.
            for i2 in [i.wrapping_sub(1), i + 1, i ^ 1, i ^ 2, i ^ 4, n, u64::MAX] {
                if i2 != i {
                    assert!(verify_inclusion(&leaf, i2, n, &proof, &root).is_err(), "{ctx} as index {i2}");
                }
            }
            // Another size: never against that size's real root; against the same root
            // exactly when the RFC combination pattern is the same (inherent to RFC 9162:
            // a proof does not otherwise commit to the tree size).
            for n2 in [0, n - 1, n + 1, n + 2, n * 2, n / 2, u64::MAX] {
                if n2 == n {
                    continue;
                }
                let same_shape = i < n2 && inclusion_shape(i, n2) == inclusion_shape(i, n);
                let r = verify_inclusion(&leaf, i, n2, &proof, &root);
                assert_eq!(r.is_ok(), same_shape, "{ctx} as size {n2}: {r:?}");
                if let Ok(real_root) = tree.root_at(n2) {
                    assert!(
                        verify_inclusion(&leaf, i, n2, &proof, &real_root).is_err(),
                        "{ctx} as size {n2} with its root"
                    );
                }
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 64 * 65 / 2);
}

#[test]
fn exhaustive_consistency_up_to_64() {
    let tree = small_tree();
    let mut checked = 0usize;
    for n in 1..=64u64 {
        let r2 = tree.root_at(n).unwrap();
        for m in 1..=n {
            let r1 = tree.root_at(m).unwrap();
            let ctx = format!("consistency {m}->{n}");
            let proof = tree.consistency_proof(m, n).unwrap();
            let plan = consistency_plan(m, n).unwrap();
            assert!(plan.nodes().iter().all(|&id| node_in_range(id, n)), "{ctx}");
            let assembled = plan.assemble(|id| tree.node(id)).unwrap();
            assert_eq!(assembled, proof, "{ctx}");
            assert_eq!(verify_consistency(m, n, &r1, &r2, &proof), Ok(()), "{ctx}");
            checked += 1;
            if m == n {
                assert!(proof.is_empty());
                assert!(verify_consistency(m, n, &r1, &leaf_hash(b"other"), &[]).is_err());
                assert!(verify_consistency(m, n, &r1, &r1, &[r1]).is_err());
                continue;
            }
            assert_eq!(proof.len(), consistency_proof_len(m, n), "{ctx}");

            for e in 0..proof.len() {
                for bit in flip_bits(e as u64 + m + n) {
                    assert_eq!(
                        verify_consistency(m, n, &r1, &r2, &flip(&proof, e, bit)),
                        Err(MerkleError::RootMismatch),
                        "{ctx} element {e} bit {bit}"
                    );
                }
            }
            let wrong_len = |p: &[Hash]| {
                matches!(verify_consistency(m, n, &r1, &r2, p), Err(MerkleError::WrongProofLength { .. }))
            };
            let mut longer = proof.clone();
            longer.push(r2);
            assert!(wrong_len(&longer), "{ctx}");
            longer.pop();
            longer.insert(0, r1);
            assert!(wrong_len(&longer), "{ctx}");
            assert!(wrong_len(&proof[1..]), "{ctx}");
            assert!(wrong_len(&proof[..proof.len() - 1]), "{ctx}");
            assert!(wrong_len(&[]), "{ctx}");

            assert!(verify_consistency(m, n, &r2, &r1, &proof).is_err(), "{ctx}");
            assert!(verify_consistency(m, n, &r1, &r1, &proof).is_err(), "{ctx}");
            assert!(verify_consistency(m, n, &r2, &r2, &proof).is_err(), "{ctx}");

            // Other sizes, with their real roots: verifies only if it is their proof.
            for (m2, n2) in [
                (m - 1, n),
                (m + 1, n),
                (m ^ 2, n),
                (m, n - 1),
                (m, n + 1),
                (m, n * 2),
                (m, n / 2),
                (m + 1, n + 1),
            ] {
                if (m2, n2) == (m, n) {
                    continue;
                }
                let (Ok(s1), Ok(s2)) = (tree.root_at(m2), tree.root_at(n2)) else {
                    continue;
                };
                let genuine = tree.consistency_proof(m2, n2).ok() == Some(proof.clone());
                assert_eq!(
                    verify_consistency(m2, n2, &s1, &s2, &proof).is_ok(),
                    genuine,
                    "{ctx} as {m2}->{n2}"
                );
            }
        }
    }
    assert_eq!(checked, 64 * 65 / 2);
}

#[test]
fn frontier_matches_memory_tree() {
    let tree = tree_of(300);
    let mut frontier = Frontier::new();
    let mut emitted = BTreeSet::new();
    assert_eq!(frontier.root(), tree.root_at(0).unwrap());
    for s in 0..300u64 {
        let completed = frontier.append(test_leaf(s)).unwrap();
        assert_eq!(frontier.size(), s + 1);
        assert_eq!(completed[0], (NodeId::new(0, s), test_leaf(s)));
        assert_eq!(completed.len() as u32, (s + 1).trailing_zeros() + 1);
        for (k, &(id, hash)) in completed.iter().enumerate() {
            assert_eq!(id.level as usize, k);
            // Completed exactly now: its last leaf is leaf s.
            assert_eq!((id.index + 1) << id.level, s + 1);
            assert_eq!(tree.node(id), Some(hash), "node {id:?}");
            assert!(emitted.insert(id), "emitted twice: {id:?}");
        }
        let size = s + 1;
        assert_eq!(frontier.root(), tree.root_at(size).unwrap(), "size {size}");
        let parts: Vec<Hash> =
            Frontier::node_ids(size).into_iter().map(|id| tree.node(id).unwrap()).collect();
        assert_eq!(frontier.parts(), &parts[..]);
        // Restoring from stored nodes gives the same frontier.
        assert_eq!(Frontier::from_parts(size, parts).unwrap(), frontier);
    }
    // Every stored node was emitted exactly once.
    let all: BTreeSet<NodeId> = (0..64u8)
        .flat_map(|level| (0..(300u64 >> level)).map(move |index| NodeId::new(level, index)))
        .collect();
    assert_eq!(emitted, all);
    assert_eq!(frontier.root(), tree.root());
}

#[test]
fn frontier_validation_and_full_tree() {
    assert_eq!(
        Frontier::from_parts(5, vec![[0; 32]]),
        Err(MerkleError::InvalidFrontier { size: 5, expected: 2, actual: 1 })
    );
    assert!(Frontier::from_parts(0, vec![[0; 32]]).is_err());
    assert_eq!(Frontier::from_parts(0, vec![]).unwrap().root(), empty_root());
    let mut full = Frontier::from_parts(u64::MAX, vec![[7; 32]; 64]).unwrap();
    let root = full.root();
    assert_eq!(full.append([1; 32]), Err(MerkleError::TreeFull));
    assert_eq!(full.size(), u64::MAX);
    assert_eq!(full.root(), root);
    // One below full: the append merges 63 levels.
    let mut almost = Frontier::from_parts(u64::MAX - 1, vec![[7; 32]; 63]).unwrap();
    let completed = almost.append([1; 32]).unwrap();
    assert_eq!(completed.len(), 1);
    assert_eq!(almost.parts().len(), 64);
    let mut half = Frontier::from_parts((1 << 63) - 1, vec![[7; 32]; 63]).unwrap();
    let completed = half.append([1; 32]).unwrap();
    assert_eq!(completed.len(), 64);
    assert_eq!(completed[63].0, NodeId::new(63, 0));
    assert_eq!(half.parts(), &[completed[63].1]);
}

// ---------------------------------------------------------------- edge cases

#[test]
fn empty_tree() {
    assert_eq!(empty_root(), h("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"));
    let tree = MemoryTree::new();
    assert_eq!(tree.size(), 0);
    assert_eq!(tree.root(), empty_root());
    assert_eq!(tree.root_at(0), Ok(empty_root()));
    assert_eq!(Frontier::new().root(), empty_root());
    assert_eq!(root_plan(0).nodes(), vec![]);
    assert_eq!(root_plan(0).assemble(|_| None), Ok(vec![empty_root()]));
    let oob = MerkleError::IndexOutOfRange { index: 0, size: 0 };
    assert_eq!(inclusion_plan(0, 0), Err(oob.clone()));
    assert_eq!(tree.inclusion_proof(0, 0), Err(oob.clone()));
    assert_eq!(verify_inclusion(&empty_root(), 0, 0, &[], &empty_root()), Err(oob));
    assert_eq!(consistency_plan(0, 0), Err(MerkleError::EmptyOldTree));
    assert_eq!(tree.consistency_proof(0, 0), Err(MerkleError::EmptyOldTree));
    assert_eq!(tree.root_at(1), Err(MerkleError::SizeOutOfRange { requested: 1, available: 0 }));
    assert!(format!("{tree:?}").contains("size: 0"));
}

#[test]
fn single_leaf() {
    let leaf = test_leaf(0);
    let tree = tree_of(1);
    assert_eq!(tree.root(), leaf);
    assert_eq!(tree.inclusion_proof(0, 1), Ok(vec![]));
    assert!(inclusion_plan(0, 1).unwrap().is_empty());
    assert_eq!(verify_inclusion(&leaf, 0, 1, &[], &leaf), Ok(()));
    assert_eq!(
        verify_inclusion(&leaf, 0, 1, &[leaf], &leaf),
        Err(MerkleError::WrongProofLength { expected: 0, actual: 1 })
    );
    assert_eq!(verify_inclusion(&leaf, 0, 1, &[], &test_leaf(1)), Err(MerkleError::RootMismatch));
    assert_eq!(verify_consistency(1, 1, &leaf, &leaf, &[]), Ok(()));
    assert_eq!(tree.consistency_proof(1, 1), Ok(vec![]));
    assert_eq!(Frontier::node_ids(1), vec![NodeId::new(0, 0)]);
}

#[test]
fn invalid_indices_and_sizes() {
    let tree = tree_of(10);
    assert_eq!(tree.inclusion_proof(10, 10), Err(MerkleError::IndexOutOfRange { index: 10, size: 10 }));
    assert_eq!(
        tree.inclusion_proof(3, 11),
        Err(MerkleError::SizeOutOfRange { requested: 11, available: 10 })
    );
    assert!(inclusion_plan(u64::MAX, u64::MAX).is_err());
    assert!(inclusion_plan(7, 3).is_err());
    assert_eq!(consistency_plan(5, 4), Err(MerkleError::InvalidSizes { old: 5, new: 4 }));
    assert_eq!(tree.consistency_proof(5, 4), Err(MerkleError::InvalidSizes { old: 5, new: 4 }));
    assert_eq!(
        verify_consistency(u64::MAX, 1, &[0; 32], &[0; 32], &[]),
        Err(MerkleError::InvalidSizes { old: u64::MAX, new: 1 })
    );
    assert_eq!(consistency_plan(0, 7), Err(MerkleError::EmptyOldTree));
    assert_eq!(tree.consistency_proof(0, 7), Err(MerkleError::EmptyOldTree));
    let r = tree.root_at(7).unwrap();
    assert_eq!(verify_consistency(0, 7, &empty_root(), &r, &[]), Err(MerkleError::EmptyOldTree));
    let missing = inclusion_plan(3, 16).unwrap().assemble(|id| tree.node(id));
    assert!(matches!(missing, Err(MerkleError::MissingNode(_))));
    assert_eq!(root_plan(11).assemble(|id| tree.node(id)), Err(MerkleError::MissingNode(NodeId::new(0, 10))));
}

/// A virtual tree of any size whose leaves are all equal, so every perfect subtree hash
/// depends only on its level and proofs for sizes up to u64::MAX can be assembled.
fn uniform_levels() -> &'static [Hash; 64] {
    static LEVELS: OnceLock<[Hash; 64]> = OnceLock::new();
    LEVELS.get_or_init(|| {
        let mut levels = [leaf_hash(b"uniform"); 64];
        for l in 1..64 {
            levels[l] = node_hash(&levels[l - 1], &levels[l - 1]);
        }
        levels
    })
}

fn uniform_lookup(size: u64) -> impl FnMut(NodeId) -> Option<Hash> {
    move |id| {
        assert!(node_in_range(id, size), "{id:?} outside a tree of {size}");
        uniform_levels().get(usize::from(id.level)).copied()
    }
}

fn uniform_root(size: u64) -> Hash {
    let roots = root_plan(size).assemble(uniform_lookup(size)).unwrap();
    assert_eq!(roots.len(), 1);
    roots[0]
}

#[test]
fn huge_sizes() {
    let leaf = uniform_levels()[0];
    for (i, n) in [
        (u64::MAX - 1, u64::MAX),
        (0, u64::MAX),
        (1 << 62, u64::MAX),
        (0, (1 << 63) + 1),
        (1 << 63, (1 << 63) + 1),
        ((1 << 63) - 1, 1 << 63),
    ] {
        let plan = inclusion_plan(i, n).unwrap();
        assert!(plan.len() <= 64);
        assert_eq!(plan.len(), inclusion_proof_len(i, n));
        let proof = plan.assemble(uniform_lookup(n)).unwrap();
        let root = uniform_root(n);
        assert_eq!(verify_inclusion(&leaf, i, n, &proof, &root), Ok(()), "{i}/{n}");
        assert!(verify_inclusion(&leaf, i, n, &flip(&proof, 0, 9), &root).is_err());
        assert!(verify_inclusion(&leaf, i, n, &proof[1..], &root).is_err());
    }
    assert_eq!(inclusion_plan(0, (1 << 63) + 1).unwrap().len(), 64);
    assert_eq!(root_plan(u64::MAX).elements().next().unwrap().len(), 64);
    for (m, n) in [
        (1, u64::MAX),
        (u64::MAX - 1, u64::MAX),
        (1 << 63, u64::MAX),
        ((1 << 63) - 1, 1 << 63),
        (3, (1 << 63) + 1),
    ] {
        let plan = consistency_plan(m, n).unwrap();
        assert_eq!(plan.len(), consistency_proof_len(m, n));
        let proof = plan.assemble(uniform_lookup(n)).unwrap();
        let (r1, r2) = (uniform_root(m), uniform_root(n));
        assert_eq!(verify_consistency(m, n, &r1, &r2, &proof), Ok(()), "{m}->{n}");
        assert!(verify_consistency(m, n, &r1, &r2, &flip(&proof, 0, 200)).is_err());
    }
    assert!(consistency_plan(u64::MAX, u64::MAX).unwrap().is_empty());
    // Garbage of every length near the boundary: errors, no panics.
    let junk = vec![[0xa5; 32]; 70];
    for (a, b) in [(0, u64::MAX), (u64::MAX, u64::MAX), (u64::MAX - 1, u64::MAX)] {
        for len in 0..70 {
            let _ = verify_inclusion(&leaf, a, b, &junk[..len], &leaf);
            let _ = root_from_inclusion_proof(&leaf, a, b, &junk[..len]);
            let _ = verify_consistency(a, b, &leaf, &leaf, &junk[..len]);
            let _ = verify_consistency(b, a, &leaf, &leaf, &junk[..len]);
        }
    }
}

#[test]
fn plan_nodes_are_sorted_and_unique() {
    let plan = inclusion_plan(81, 95).unwrap();
    let nodes = plan.nodes();
    assert_eq!(nodes.len(), 8);
    assert!(nodes.windows(2).all(|w| w[0] < w[1]));
    let plan = consistency_plan(81, 95).unwrap();
    assert_eq!(plan.nodes().len(), 9);
    assert_eq!(plan.elements().len(), 7);
}

/// Not a benchmark, a sanity check of the performance target:
/// `cargo test --release -- --ignored --nocapture million`.
#[test]
#[ignore]
fn million_leaves_timing() {
    let n = 1_000_000u64;
    let leaves: Vec<Hash> = (0..n).map(test_leaf).collect();
    let start = std::time::Instant::now();
    let mut tree = MemoryTree::with_capacity(leaves.len());
    tree.extend(leaves.iter().copied());
    let built = start.elapsed();
    let start = std::time::Instant::now();
    let root = tree.root();
    let mut ok = 0;
    for i in (0..n).step_by(1000) {
        let proof = tree.inclusion_proof(i, n).unwrap();
        verify_inclusion(&leaves[i as usize], i, n, &proof, &root).unwrap();
        ok += 1;
    }
    let per_proof = start.elapsed() / ok;
    let start = std::time::Instant::now();
    for m in (1..n).step_by(1000) {
        let proof = consistency_plan(m, n).unwrap().assemble(|id| tree.node(id)).unwrap();
        assert!(!proof.is_empty());
    }
    let per_plan = start.elapsed() / ok;
    let start = std::time::Instant::now();
    let mut frontier = Frontier::new();
    for leaf in &leaves {
        frontier.append(*leaf).unwrap();
    }
    assert_eq!(frontier.root(), root);
    println!(
        "build {built:?}; inclusion proof+verify {per_proof:?}; consistency plan+assemble \
         {per_plan:?}; frontier {:?}",
        start.elapsed()
    );
}

// ---------------------------------------------------------------- proptest

fn size_strategy() -> impl Strategy<Value = u64> {
    prop_oneof![
        1..=u64::MAX,
        (0u32..64).prop_map(|k| 1u64 << k),
        (0u32..64).prop_map(|k| (1u64 << k) + 1),
        (0u32..64).prop_map(|k| (1u64 << k).saturating_sub(1).max(1)),
        (0u64..4).prop_map(|d| u64::MAX - d),
    ]
}

proptest! {
    #[test]
    fn prop_inclusion_any_bit_flip_fails(
        n in 1u64..=64, i_seed: u64, e_seed: usize, bit in 0usize..256
    ) {
        let tree = small_tree();
        let i = i_seed % n;
        let proof = tree.inclusion_proof(i, n).unwrap();
        let root = tree.root_at(n).unwrap();
        prop_assume!(!proof.is_empty());
        let bad = flip(&proof, e_seed % proof.len(), bit);
        prop_assert_eq!(
            verify_inclusion(&test_leaf(i), i, n, &bad, &root),
            Err(MerkleError::RootMismatch)
        );
        let mut bad_leaf = test_leaf(i);
        bad_leaf[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(verify_inclusion(&bad_leaf, i, n, &proof, &root).is_err());
    }

    #[test]
    fn prop_consistency_any_bit_flip_fails(
        n in 2u64..=64, m_seed: u64, e_seed: usize, bit in 0usize..256
    ) {
        let tree = small_tree();
        let m = 1 + m_seed % (n - 1);
        let proof = tree.consistency_proof(m, n).unwrap();
        let (r1, r2) = (tree.root_at(m).unwrap(), tree.root_at(n).unwrap());
        let bad = flip(&proof, e_seed % proof.len(), bit);
        prop_assert_eq!(
            verify_consistency(m, n, &r1, &r2, &bad),
            Err(MerkleError::RootMismatch)
        );
        let mut bad_root = r1;
        bad_root[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(verify_consistency(m, n, &bad_root, &r2, &proof).is_err());
        prop_assert!(verify_consistency(m, n, &r1, &bad_root, &proof).is_err());
    }

    #[test]
    fn prop_memory_tree_and_plans_agree(n in 65u64..=2048, a: u64, b: u64) {
        let tree = medium_tree();
        let root = tree.root_at(n).unwrap();
        let i = a % n;
        let proof = tree.inclusion_proof(i, n).unwrap();
        let plan = inclusion_plan(i, n).unwrap();
        prop_assert_eq!(&plan.assemble(|id| tree.node(id)).unwrap(), &proof);
        prop_assert_eq!(verify_inclusion(&test_leaf(i), i, n, &proof, &root), Ok(()));
        let m = 1 + b % n;
        let proof = tree.consistency_proof(m, n).unwrap();
        let plan = consistency_plan(m, n).unwrap();
        prop_assert_eq!(&plan.assemble(|id| tree.node(id)).unwrap(), &proof);
        let r1 = tree.root_at(m).unwrap();
        prop_assert_eq!(verify_consistency(m, n, &r1, &root, &proof), Ok(()));
        prop_assert_eq!(
            root_plan(n).assemble(|id| tree.node(id)).unwrap(),
            vec![root]
        );
    }

    #[test]
    fn prop_huge_inclusion(n in size_strategy(), i_seed: u64, bit in 0usize..256) {
        let i = i_seed % n;
        let plan = inclusion_plan(i, n).unwrap();
        prop_assert_eq!(plan.len(), inclusion_proof_len(i, n));
        let proof = plan.assemble(uniform_lookup(n)).unwrap();
        let root = uniform_root(n);
        let leaf = uniform_levels()[0];
        prop_assert_eq!(root_from_inclusion_proof(&leaf, i, n, &proof), Ok(root));
        if !proof.is_empty() {
            let bad = flip(&proof, bit % proof.len(), bit);
            prop_assert!(verify_inclusion(&leaf, i, n, &bad, &root).is_err());
            prop_assert!(verify_inclusion(&leaf, i, n, &proof[1..], &root).is_err());
        }
    }

    #[test]
    fn prop_huge_consistency(n in size_strategy(), m_seed: u64, bit in 0usize..256) {
        let m = 1 + m_seed % n;
        let plan = consistency_plan(m, n).unwrap();
        let proof = plan.assemble(uniform_lookup(n)).unwrap();
        let (r1, r2) = (uniform_root(m), uniform_root(n));
        prop_assert_eq!(verify_consistency(m, n, &r1, &r2, &proof), Ok(()));
        if m < n {
            prop_assert_eq!(plan.len(), consistency_proof_len(m, n));
            let bad = flip(&proof, bit % proof.len(), bit);
            prop_assert!(verify_consistency(m, n, &r1, &r2, &bad).is_err());
            let mut longer = proof.clone();
            longer.push(r2);
            prop_assert!(verify_consistency(m, n, &r1, &r2, &longer).is_err());
        } else {
            prop_assert!(proof.is_empty());
        }
    }

    #[test]
    fn prop_no_panic_on_arbitrary_input(
        a: u64, b: u64, len in 0usize..70, byte: u8
    ) {
        let junk = vec![[byte; 32]; len];
        let x = [byte; 32];
        let _ = verify_inclusion(&x, a, b, &junk, &x);
        let _ = root_from_inclusion_proof(&x, a, b, &junk);
        let _ = verify_consistency(a, b, &x, &x, &junk);
        let _ = inclusion_plan(a, b).map(|p| p.nodes());
        let _ = consistency_plan(a, b).map(|p| p.nodes());
        let _ = root_plan(a).nodes();
        let _ = Frontier::node_ids(b);
    }
}
