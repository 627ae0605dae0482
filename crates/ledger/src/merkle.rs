//! RFC 9162 section 2.1 (identical to RFC 6962 section 2.1) Merkle tree hashing, proofs and
//! verification for the Chartledger global event log.
//!
//! * Leaf hash: `SHA-256(0x00 || data)`; node hash: `SHA-256(0x01 || left || right)`;
//!   the root of the empty tree is `SHA-256("")`. In Chartledger the leaf data is the 32-byte
//!   event hash, in global log order.
//! * The tree of `n` leaves is the RFC's `MTH(D[n])`: for `n > 1` the left child covers the
//!   largest power of two `k < n` leaves, the right child the remaining `n - k`.
//!
//! # Storage model
//!
//! The log grows to millions of leaves held in PostgreSQL, so nothing here needs the whole tree.
//! The unit of storage is the *perfect subtree* [`NodeId`] `{ level, index }`, covering leaves
//! `[index << level, (index + 1) << level)`. Such a node never changes once its last leaf has
//! been appended, so it can be written once ([`Frontier::append`] reports every node that became
//! complete) and read at any later tree size.
//!
//! Proof generation is split in two so that an async store can do its own IO:
//! [`inclusion_plan`], [`consistency_plan`] and [`root_plan`] return a [`ProofPlan`] that says
//! which nodes are needed ([`ProofPlan::nodes`], deduplicated and sorted, for one batched
//! query), and [`ProofPlan::assemble`] turns the fetched hashes into the proof. Each proof
//! element is the root of a leaf range; when the range is not a perfect subtree (only on the
//! right edge of the tree) it is stored as several perfect subtrees, left to right, in
//! decreasing size, which `assemble` combines from the right (this is the RFC's `MTH` of the
//! range). A plan is a pure function of the sizes, so it can also be cached or tested alone.
//!
//! [`MemoryTree`] keeps every complete node in memory (tests, benchmarks, small ledgers) and
//! generates proofs with a direct transcription of the RFC's recursive `PATH` / `SUBPROOF`
//! definitions, independently of the plans; the tests check that both agree.
//!
//! # Verification and edge cases
//!
//! [`verify_inclusion`] / [`root_from_inclusion_proof`] and [`verify_consistency`] are the
//! RFC 9162 section 2.1.3.2 and 2.1.4.2 algorithms, step by step. Before running them, the
//! proof length is compared with the exact length the sizes imply (the same formula as
//! transparency-dev/merkle), so any missing or extra element is reported as
//! [`MerkleError::WrongProofLength`]; the RFC's own `sn == 0` checks remain in place.
//!
//! Consistency proofs follow the RFC's domain `0 < old_size < new_size`, extended exactly as
//! the current transparency-dev/merkle `proof.VerifyConsistency` does:
//!
//! * `old_size > new_size` is [`MerkleError::InvalidSizes`];
//! * `old_size == 0` is always rejected with [`MerkleError::EmptyOldTree`] (even `0 -> 0`):
//!   RFC 9162 defines no proof from the empty tree and transparency-dev calls it
//!   "meaningless". Every tree is an extension of the empty tree, so a caller that holds no
//!   previous checkpoint (or a checkpoint of size 0) has nothing to verify and must handle
//!   that case itself, without calling [`verify_consistency`];
//! * `old_size == new_size > 0` requires an empty proof and `old_root == new_root`;
//! * otherwise the proof must be non-empty, of the exact length, and both roots must match.
//!
//! Inclusion requires `leaf_index < tree_size` ([`MerkleError::IndexOutOfRange`]); the empty
//! tree therefore has no inclusion proofs, and a tree of size 1 has the empty proof.
//!
//! No function panics or overflows on any input, including sizes up to `u64::MAX`.
//!
//! # API notes (deviations from the original sketch)
//!
//! * [`Frontier::append`] returns a `Result`, failing with [`MerkleError::TreeFull`] once the
//!   size is `u64::MAX` (reachable only through [`Frontier::from_parts`]), instead of
//!   panicking.
//! * [`MemoryTree::root_at`], [`MemoryTree::inclusion_proof`] and
//!   [`MemoryTree::consistency_proof`] fail with [`MerkleError::SizeOutOfRange`] for sizes the
//!   tree does not have yet.
//! * Additions: [`ProofPlan::len`], [`ProofPlan::is_empty`], [`ProofPlan::elements`],
//!   [`Frontier::node_ids`] (which nodes to fetch to rebuild a frontier with
//!   [`Frontier::from_parts`]), [`MemoryTree::root`], [`MemoryTree::with_capacity`], and the
//!   error variants [`MerkleError::EmptyOldTree`], [`MerkleError::SizeOutOfRange`],
//!   [`MerkleError::InvalidFrontier`] and [`MerkleError::TreeFull`].

use sha2::{Digest, Sha256};

/// A SHA-256 digest: a leaf hash, a node hash or a tree root.
pub type Hash = [u8; 32];

/// RFC 9162 leaf hash: `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0x00]);
    hasher.update(data);
    hasher.finalize().into()
}

/// RFC 9162 interior node hash: `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0x01]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// Root of the empty tree: `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// A perfect subtree: covers leaves `[index << level, (index + 1) << level)`.
///
/// Level 0 nodes are leaf hashes. The derived order (level first, then index) is the order
/// of [`ProofPlan::nodes`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId {
    /// Height above the leaves (0 = leaf). At most 63 for trees of up to `u64::MAX` leaves.
    pub level: u8,
    /// Position among the nodes of this level, from the left.
    pub index: u64,
}

impl NodeId {
    /// The node at `level` and `index`.
    pub const fn new(level: u8, index: u64) -> Self {
        Self { level, index }
    }
}

/// Errors of tree construction, proof planning and proof verification.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum MerkleError {
    /// An inclusion proof was requested or checked for `index >= size`.
    #[error("leaf index {index} is out of range for tree size {size}")]
    IndexOutOfRange {
        /// The leaf index.
        index: u64,
        /// The tree size.
        size: u64,
    },
    /// A consistency proof was requested or checked with `old > new`.
    #[error("invalid tree sizes: old size {old} is greater than new size {new}")]
    InvalidSizes {
        /// The old (smaller) tree size.
        old: u64,
        /// The new (larger) tree size.
        new: u64,
    },
    /// A consistency proof from the empty tree: not defined by RFC 9162 (`0 < old_size`),
    /// rejected like transparency-dev/merkle does. See the module documentation.
    #[error("consistency proofs from the empty tree are not defined (RFC 9162 requires 0 < old size)")]
    EmptyOldTree,
    /// A [`MemoryTree`] was asked about a tree size it has not reached.
    #[error("tree size {requested} exceeds the {available} leaves available")]
    SizeOutOfRange {
        /// The requested tree size.
        requested: u64,
        /// The number of leaves in the tree.
        available: u64,
    },
    /// The proof does not have exactly the number of hashes the sizes imply.
    #[error("wrong proof length: expected {expected} hashes, got {actual}")]
    WrongProofLength {
        /// The length implied by the index and sizes.
        expected: usize,
        /// The length given.
        actual: usize,
    },
    /// The root computed from the proof differs from the expected root (for consistency
    /// proofs: either the old or the new root).
    #[error("computed root hash does not match the expected root")]
    RootMismatch,
    /// [`ProofPlan::assemble`]'s lookup (or a [`MemoryTree`]) did not have a required node.
    #[error("node at level {} index {} is not available", .0.level, .0.index)]
    MissingNode(NodeId),
    /// [`Frontier::from_parts`] got a number of hashes that does not match the size.
    #[error("invalid frontier: a tree of size {size} has {expected} perfect subtrees, got {actual} hashes")]
    InvalidFrontier {
        /// The tree size.
        size: u64,
        /// `size.count_ones()`.
        expected: usize,
        /// The number of hashes given.
        actual: usize,
    },
    /// The tree already has `u64::MAX` leaves.
    #[error("tree is full: it cannot grow beyond u64::MAX leaves")]
    TreeFull,
}

/// Largest power of two strictly less than `n`, for `n >= 2`; 0 for smaller `n`.
fn split_point(n: u64) -> u64 {
    if n < 2 {
        return 0;
    }
    1u64 << (63 - (n - 1).leading_zeros())
}

/// Appends the perfect subtrees covering `[lo, hi)`, left to right in decreasing size.
///
/// `lo` must be a multiple of the power of two at or above `hi - lo`, which holds for every
/// range of the RFC's recursive decomposition.
fn push_range(mut lo: u64, hi: u64, out: &mut Vec<NodeId>) {
    let size = hi.saturating_sub(lo);
    for level in (0..64u8).rev() {
        if size >> level & 1 == 1 {
            out.push(NodeId::new(level, lo >> level));
            lo = lo.saturating_add(1u64 << level);
        }
    }
}

/// Number of hashes in the inclusion proof of `index` in a tree of `size` (requires
/// `index < size`): the path length below the point where the paths to `index` and to
/// `size - 1` meet, plus the left siblings above it (transparency-dev's `decompInclProof`).
fn inclusion_proof_len(index: u64, size: u64) -> usize {
    let (inner, border) = decompose_inclusion(index, size);
    (inner + border) as usize
}

fn decompose_inclusion(index: u64, size: u64) -> (u32, u32) {
    let inner = 64 - (index ^ size.saturating_sub(1)).leading_zeros();
    let border = index.checked_shr(inner).unwrap_or(0).count_ones();
    (inner, border)
}

/// Number of hashes in the consistency proof between sizes `0 < old < new`.
fn consistency_proof_len(old: u64, new: u64) -> usize {
    let (inner, border) = decompose_inclusion(old.saturating_sub(1), new);
    let inner = inner.saturating_sub(old.trailing_zeros());
    let seed = u32::from(!old.is_power_of_two());
    (seed + inner + border) as usize
}

/// Which perfect-subtree hashes a proof needs, and how to combine them.
///
/// Each proof element is the root of a leaf range; a range whose size is not a power of two
/// decomposes into perfect subtrees (left to right, decreasing size) that are combined from
/// the right: `node_hash(a, node_hash(b, c))` for `[a, b, c]`. An element with no nodes (only
/// in `root_plan(0)`) stands for the empty root.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProofPlan {
    /// The nodes of all elements, concatenated in proof order.
    nodes: Vec<NodeId>,
    /// End offset in `nodes` of each element.
    ends: Vec<usize>,
}

impl ProofPlan {
    fn with_capacity(elements: usize) -> Self {
        Self { nodes: Vec::with_capacity(elements + 8), ends: Vec::with_capacity(elements) }
    }

    fn push_element(&mut self, lo: u64, hi: u64) {
        push_range(lo, hi, &mut self.nodes);
        self.ends.push(self.nodes.len());
    }

    /// Number of hashes in the assembled proof.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// True when the assembled proof is empty.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The elements in proof order; each is a list of perfect subtrees, left to right.
    pub fn elements(&self) -> impl ExactSizeIterator<Item = &[NodeId]> + '_ {
        (0..self.ends.len()).map(move |i| {
            let start = if i == 0 { 0 } else { self.ends[i - 1] };
            self.nodes.get(start..self.ends[i]).unwrap_or(&[])
        })
    }

    /// The nodes the storage must fetch: deduplicated and sorted.
    pub fn nodes(&self) -> Vec<NodeId> {
        let mut nodes = self.nodes.clone();
        nodes.sort_unstable();
        nodes.dedup();
        nodes
    }

    /// Builds the proof from node hashes; `lookup` returns `None` for a node it does not have,
    /// which fails with [`MerkleError::MissingNode`].
    pub fn assemble(&self, mut lookup: impl FnMut(NodeId) -> Option<Hash>) -> Result<Vec<Hash>, MerkleError> {
        let mut fetch = |id: NodeId| lookup(id).ok_or(MerkleError::MissingNode(id));
        let mut proof = Vec::with_capacity(self.ends.len());
        for element in self.elements() {
            let mut nodes = element.iter().rev();
            let hash = match nodes.next() {
                None => empty_root(),
                Some(&last) => {
                    let mut acc = fetch(last)?;
                    for &id in nodes {
                        acc = node_hash(&fetch(id)?, &acc);
                    }
                    acc
                }
            };
            proof.push(hash);
        }
        Ok(proof)
    }
}

/// Plan of the RFC 9162 inclusion proof (`PATH(m, D[n])`) of leaf `leaf_index` in the tree of
/// `tree_size` leaves, in proof order (from the leaf up).
pub fn inclusion_plan(leaf_index: u64, tree_size: u64) -> Result<ProofPlan, MerkleError> {
    if leaf_index >= tree_size {
        return Err(MerkleError::IndexOutOfRange { index: leaf_index, size: tree_size });
    }
    // Walk down from the root; the sibling ranges come out top-down.
    let mut ranges = Vec::with_capacity(64);
    let (mut lo, mut hi) = (0u64, tree_size);
    while hi - lo > 1 {
        let mid = lo + split_point(hi - lo);
        if leaf_index < mid {
            ranges.push((mid, hi));
            hi = mid;
        } else {
            ranges.push((lo, mid));
            lo = mid;
        }
    }
    let mut plan = ProofPlan::with_capacity(ranges.len());
    for &(lo, hi) in ranges.iter().rev() {
        plan.push_element(lo, hi);
    }
    Ok(plan)
}

/// Plan of the RFC 9162 consistency proof (`PROOF(m, D[n])`) between the trees of `old_size`
/// and `new_size` leaves. `old_size == new_size > 0` gives the empty plan; `old_size == 0` is
/// [`MerkleError::EmptyOldTree`] (see the module documentation).
pub fn consistency_plan(old_size: u64, new_size: u64) -> Result<ProofPlan, MerkleError> {
    if old_size > new_size {
        return Err(MerkleError::InvalidSizes { old: old_size, new: new_size });
    }
    if old_size == 0 {
        return Err(MerkleError::EmptyOldTree);
    }
    // SUBPROOF(m, D[lo:hi], b), unrolled; the ranges come out top-down.
    let mut ranges = Vec::with_capacity(65);
    let (mut lo, mut hi, mut complete) = (0u64, new_size, true);
    loop {
        if old_size == hi {
            if !complete {
                ranges.push((lo, hi));
            }
            break;
        }
        // Here lo < old_size < hi, so hi - lo >= 2.
        let mid = lo + split_point(hi - lo);
        if old_size <= mid {
            ranges.push((mid, hi));
            hi = mid;
        } else {
            ranges.push((lo, mid));
            lo = mid;
            complete = false;
        }
    }
    let mut plan = ProofPlan::with_capacity(ranges.len());
    for &(lo, hi) in ranges.iter().rev() {
        plan.push_element(lo, hi);
    }
    Ok(plan)
}

/// Plan of the root of the tree of `tree_size` leaves: one element, whose assembled hash is
/// the root (`empty_root()` for size 0, which needs no nodes).
pub fn root_plan(tree_size: u64) -> ProofPlan {
    let mut plan = ProofPlan::with_capacity(1);
    plan.push_element(0, tree_size);
    plan
}

/// Root implied by an inclusion proof (RFC 9162 section 2.1.3.2, steps 1-5 without the final
/// root comparison). Fails on `leaf_index >= tree_size` and on a proof of the wrong length.
pub fn root_from_inclusion_proof(
    leaf_hash: &Hash,
    leaf_index: u64,
    tree_size: u64,
    proof: &[Hash],
) -> Result<Hash, MerkleError> {
    // Step 1.
    if leaf_index >= tree_size {
        return Err(MerkleError::IndexOutOfRange { index: leaf_index, size: tree_size });
    }
    let expected = inclusion_proof_len(leaf_index, tree_size);
    let wrong_length = MerkleError::WrongProofLength { expected, actual: proof.len() };
    if proof.len() != expected {
        return Err(wrong_length);
    }
    // Steps 2 and 3.
    let mut fn_ = leaf_index;
    let mut sn = tree_size - 1;
    let mut r = *leaf_hash;
    // Step 4.
    for p in proof {
        if sn == 0 {
            return Err(wrong_length);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    // Step 5 (the root comparison is left to the caller).
    if sn != 0 {
        return Err(wrong_length);
    }
    Ok(r)
}

/// Verifies an inclusion proof (RFC 9162 section 2.1.3.2).
pub fn verify_inclusion(
    leaf_hash: &Hash,
    leaf_index: u64,
    tree_size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), MerkleError> {
    let computed = root_from_inclusion_proof(leaf_hash, leaf_index, tree_size, proof)?;
    if computed == *root {
        Ok(())
    } else {
        Err(MerkleError::RootMismatch)
    }
}

/// Verifies a consistency proof (RFC 9162 section 2.1.4.2) between the tree of `old_size`
/// leaves with root `old_root` and the tree of `new_size` leaves with root `new_root`.
///
/// `old_size == 0` is rejected and `old_size == new_size` needs an empty proof and equal
/// roots; see the module documentation.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), MerkleError> {
    if old_size > new_size {
        return Err(MerkleError::InvalidSizes { old: old_size, new: new_size });
    }
    if old_size == 0 {
        return Err(MerkleError::EmptyOldTree);
    }
    if old_size == new_size {
        if !proof.is_empty() {
            return Err(MerkleError::WrongProofLength { expected: 0, actual: proof.len() });
        }
        return if old_root == new_root { Ok(()) } else { Err(MerkleError::RootMismatch) };
    }
    // Now 0 < old_size < new_size, the RFC's domain.
    let expected = consistency_proof_len(old_size, new_size);
    let wrong_length = MerkleError::WrongProofLength { expected, actual: proof.len() };
    // Step 1 (an empty proof), and the exact length.
    if proof.is_empty() || proof.len() != expected {
        return Err(wrong_length);
    }
    // Step 2.
    let prefix = old_size.is_power_of_two().then_some(old_root);
    let mut path = prefix.into_iter().chain(proof);
    // Step 3.
    let mut fn_ = old_size - 1;
    let mut sn = new_size - 1;
    // Step 4.
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    // Step 5.
    let Some(first) = path.next() else {
        return Err(wrong_length);
    };
    let mut fr = *first;
    let mut sr = *first;
    // Step 6.
    for c in path {
        if sn == 0 {
            return Err(wrong_length);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    // Step 7.
    if sn != 0 {
        return Err(wrong_length);
    }
    if fr == *old_root && sr == *new_root {
        Ok(())
    } else {
        Err(MerkleError::RootMismatch)
    }
}

/// Append-only compact range ("frontier") of the tree `[0, size)`: the roots of its perfect
/// subtrees, one per set bit of `size`, left to right (largest first). O(log n) memory; gives
/// the root at any time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    hashes: Vec<Hash>,
}

impl Frontier {
    /// The frontier of the empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Restores a frontier from its size and the hashes of [`Frontier::node_ids`]`(size)`,
    /// in that order (as returned by [`Frontier::parts`]). Only the count can be validated.
    pub fn from_parts(size: u64, parts: Vec<Hash>) -> Result<Self, MerkleError> {
        let expected = size.count_ones() as usize;
        if parts.len() != expected {
            return Err(MerkleError::InvalidFrontier { size, expected, actual: parts.len() });
        }
        Ok(Self { size, hashes: parts })
    }

    /// The perfect subtrees making up the tree of `size` leaves, left to right (largest
    /// first): what a store fetches to call [`Frontier::from_parts`].
    pub fn node_ids(size: u64) -> Vec<NodeId> {
        let mut ids = Vec::with_capacity(size.count_ones() as usize);
        push_range(0, size, &mut ids);
        ids
    }

    /// Number of leaves appended so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The perfect-subtree hashes, left to right (largest first).
    pub fn parts(&self) -> &[Hash] {
        &self.hashes
    }

    /// Root of the tree `[0, size)`.
    pub fn root(&self) -> Hash {
        let mut hashes = self.hashes.iter().rev();
        match hashes.next() {
            None => empty_root(),
            Some(last) => hashes.fold(*last, |acc, left| node_hash(left, &acc)),
        }
    }

    /// Appends a leaf hash and returns the perfect-subtree nodes that became complete: the
    /// leaf itself (level 0, index = its leaf index), then each completed parent, upwards.
    pub fn append(&mut self, leaf_hash: Hash) -> Result<Vec<(NodeId, Hash)>, MerkleError> {
        let new_size = self.size.checked_add(1).ok_or(MerkleError::TreeFull)?;
        // Every trailing one bit of the old size is a left sibling that now gets its parent.
        let merges = self.size.trailing_ones() as usize;
        let keep = self.hashes.len().checked_sub(merges).ok_or_else(|| MerkleError::InvalidFrontier {
            size: self.size,
            expected: self.size.count_ones() as usize,
            actual: self.hashes.len(),
        })?;
        let mut completed = Vec::with_capacity(merges + 1);
        let mut id = NodeId::new(0, self.size);
        let mut hash = leaf_hash;
        completed.push((id, hash));
        for left in self.hashes[keep..].iter().rev() {
            hash = node_hash(left, &hash);
            id = NodeId::new(id.level + 1, id.index >> 1);
            completed.push((id, hash));
        }
        self.hashes.truncate(keep);
        self.hashes.push(hash);
        self.size = new_size;
        Ok(completed)
    }
}

/// Full in-memory tree: stores every complete node of every level (`levels[l][i]` is
/// `NodeId { level: l, index: i }`), about `2 * 32` bytes per leaf.
#[derive(Clone, Default)]
pub struct MemoryTree {
    levels: Vec<Vec<Hash>>,
}

impl std::fmt::Debug for MemoryTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryTree").field("size", &self.size()).field("root", &self.root()).finish()
    }
}

impl MemoryTree {
    /// The empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// The empty tree, with room for `leaves` leaves without reallocation.
    pub fn with_capacity(leaves: usize) -> Self {
        let mut levels = Vec::new();
        let mut n = leaves;
        while n > 0 {
            levels.push(Vec::with_capacity(n));
            n >>= 1;
        }
        Self { levels }
    }

    /// Appends a leaf hash (the caller hashes the data with [`leaf_hash`]).
    pub fn push(&mut self, leaf_hash: Hash) {
        let mut level = 0;
        let mut hash = leaf_hash;
        loop {
            if self.levels.len() == level {
                self.levels.push(Vec::new());
            }
            let Some(row) = self.levels.get_mut(level) else {
                return;
            };
            row.push(hash);
            let len = row.len();
            if len % 2 == 1 {
                return;
            }
            hash = node_hash(&row[len - 2], &row[len - 1]);
            level += 1;
        }
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |leaves| leaves.len() as u64)
    }

    /// Hash of a complete perfect subtree; `None` if it is not (yet) complete.
    pub fn node(&self, id: NodeId) -> Option<Hash> {
        let row = self.levels.get(usize::from(id.level))?;
        row.get(usize::try_from(id.index).ok()?).copied()
    }

    /// Root of the current tree.
    pub fn root(&self) -> Hash {
        self.mth(0, self.size()).unwrap_or_else(|_| empty_root())
    }

    /// Root of the tree of the first `size` leaves.
    pub fn root_at(&self, size: u64) -> Result<Hash, MerkleError> {
        self.check_size(size)?;
        self.mth(0, size)
    }

    /// RFC 9162 inclusion proof `PATH(index, D[size])`.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, MerkleError> {
        self.check_size(size)?;
        if index >= size {
            return Err(MerkleError::IndexOutOfRange { index, size });
        }
        let mut proof = Vec::new();
        self.path(index, 0, size, &mut proof)?;
        Ok(proof)
    }

    /// RFC 9162 consistency proof `PROOF(old, D[new])`; empty for `old == new > 0`, and
    /// [`MerkleError::EmptyOldTree`] for `old == 0`.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, MerkleError> {
        self.check_size(new)?;
        if old > new {
            return Err(MerkleError::InvalidSizes { old, new });
        }
        if old == 0 {
            return Err(MerkleError::EmptyOldTree);
        }
        let mut proof = Vec::new();
        self.subproof(old, 0, new, true, &mut proof)?;
        Ok(proof)
    }

    fn check_size(&self, size: u64) -> Result<(), MerkleError> {
        let available = self.size();
        if size > available {
            return Err(MerkleError::SizeOutOfRange { requested: size, available });
        }
        Ok(())
    }

    fn stored(&self, id: NodeId) -> Result<Hash, MerkleError> {
        self.node(id).ok_or(MerkleError::MissingNode(id))
    }

    /// `MTH(D[lo:hi])`, using stored nodes for aligned perfect ranges.
    fn mth(&self, lo: u64, hi: u64) -> Result<Hash, MerkleError> {
        let n = hi.saturating_sub(lo);
        if n == 0 {
            return Ok(empty_root());
        }
        if n.is_power_of_two() && lo % n == 0 {
            let level = n.trailing_zeros();
            return self.stored(NodeId::new(level as u8, lo >> level));
        }
        let k = split_point(n);
        Ok(node_hash(&self.mth(lo, lo + k)?, &self.mth(lo + k, hi)?))
    }

    /// `PATH(m, D[lo:hi])` with `m` relative to `lo`.
    fn path(&self, m: u64, lo: u64, hi: u64, out: &mut Vec<Hash>) -> Result<(), MerkleError> {
        let n = hi.saturating_sub(lo);
        if n <= 1 {
            return Ok(());
        }
        let k = split_point(n);
        if m < k {
            self.path(m, lo, lo + k, out)?;
            out.push(self.mth(lo + k, hi)?);
        } else {
            self.path(m - k, lo + k, hi, out)?;
            out.push(self.mth(lo, lo + k)?);
        }
        Ok(())
    }

    /// `SUBPROOF(m, D[lo:hi], b)` with `m` relative to `lo`.
    fn subproof(&self, m: u64, lo: u64, hi: u64, b: bool, out: &mut Vec<Hash>) -> Result<(), MerkleError> {
        let n = hi.saturating_sub(lo);
        if m == n {
            if !b {
                out.push(self.mth(lo, hi)?);
            }
            return Ok(());
        }
        let k = split_point(n);
        if k == 0 {
            // m < n <= 1 means m == 0, outside the RFC's domain.
            return Err(MerkleError::EmptyOldTree);
        }
        if m <= k {
            self.subproof(m, lo, lo + k, b, out)?;
            out.push(self.mth(lo + k, hi)?);
        } else {
            self.subproof(m - k, lo + k, hi, false, out)?;
            out.push(self.mth(lo, lo + k)?);
        }
        Ok(())
    }
}

impl Extend<Hash> for MemoryTree {
    fn extend<I: IntoIterator<Item = Hash>>(&mut self, leaf_hashes: I) {
        for leaf in leaf_hashes {
            self.push(leaf);
        }
    }
}

impl FromIterator<Hash> for MemoryTree {
    fn from_iter<I: IntoIterator<Item = Hash>>(leaf_hashes: I) -> Self {
        let mut tree = Self::new();
        tree.extend(leaf_hashes);
        tree
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
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
        serde_json::from_str(include_str!("../../../schema/vectors/merkle-rfc6962.json")).unwrap()
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
            let ids: Vec<(u8, u64)> =
                Frontier::node_ids(c.size).iter().map(|id| (id.level, id.index)).collect();
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
                    matches!(
                        verify_inclusion(&leaf, i, n, p, &root),
                        Err(MerkleError::WrongProofLength { .. })
                    )
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
                        assert!(
                            verify_inclusion(&leaf, i2, n, &proof, &root).is_err(),
                            "{ctx} as index {i2}"
                        );
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
        assert_eq!(
            root_plan(11).assemble(|id| tree.node(id)),
            Err(MerkleError::MissingNode(NodeId::new(0, 10)))
        );
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
}
