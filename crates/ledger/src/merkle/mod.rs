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
mod tests;
