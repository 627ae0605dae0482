//! Strict and batch Ed25519 verification that never disagree.
//!
//! `verify_strict` (cofactorless, canonical `R`, no small-order `R` or `A`) is the
//! definition of a valid signature here. ed25519-dalek's batch equation decompresses `R`
//! (so it would accept a non-canonical encoding of `R`) and is cofactorless over a random
//! linear combination (so a torsion component in `R` or `A` can cancel out with
//! probability up to 1/2). Therefore a signature enters the batch only if its `R` is
//! canonically encoded and torsion-free and its key is canonical and torsion-free; every
//! other item, and every item of a batch that fails, is checked with `verify_strict`.
//! Batch acceptance then implies strict acceptance, up to the batch's 2^-128 soundness
//! error.
//!
//! Measured cost (see the closing notes of issue #2 and `benches/ledger.rs`): screening `R`
//! needs a scalar multiplication per signature, which makes this sound batch path slower
//! than strict single verification. Bulk verification (the ledger verifier) therefore runs
//! strict single verification in parallel on all cores; this batch API is kept, tested and
//! benchmarked so the trade-off stays visible.

use curve25519_dalek::edwards::CompressedEdwardsY;
use ed25519_dalek::{Signature, VerifyingKey};

/// One signature to check.
#[derive(Clone, Copy, Debug)]
pub struct SignatureCheck<'a> {
    pub key: &'a VerifyingKey,
    pub message: &'a [u8],
    pub signature: &'a Signature,
}

/// Strict single verification.
pub fn verify_one(c: &SignatureCheck<'_>) -> bool {
    c.key.verify_strict(c.message, c.signature).is_ok()
}

fn canonical_torsion_free(bytes: &[u8; 32]) -> bool {
    match CompressedEdwardsY(*bytes).decompress() {
        Some(p) => p.compress().as_bytes() == bytes && p.is_torsion_free() && !p.is_small_order(),
        None => false,
    }
}

/// Can this item be batched without the batch ever accepting what strict rejects?
/// (`R` and the key canonical and torsion-free; each distinct key screened once.)
fn batchable_cached(c: &SignatureCheck<'_>, good_keys: &mut Vec<[u8; 32]>) -> bool {
    if !canonical_torsion_free(c.signature.r_bytes()) {
        return false;
    }
    let k = c.key.as_bytes();
    if good_keys.contains(k) {
        return true;
    }
    let ok = canonical_torsion_free(k);
    if ok {
        good_keys.push(*k);
    }
    ok
}

/// Verify every item; returns the index of the first item (in input order) that strict
/// verification rejects, or `Ok(())` when all are valid.
pub fn verify_batch(items: &[SignatureCheck<'_>]) -> Result<(), usize> {
    let mut idx = Vec::with_capacity(items.len());
    let mut good_keys = Vec::new();
    for (i, c) in items.iter().enumerate() {
        if batchable_cached(c, &mut good_keys) {
            idx.push(i);
        } else if !verify_one(c) {
            // Strict rejects it; but an earlier batchable item might also be bad, and the
            // caller wants the first bad index, so fall back to checking all in order.
            return first_bad(items);
        }
    }
    if idx.len() < 2 {
        return first_bad(items);
    }
    let msgs: Vec<&[u8]> = idx.iter().map(|&i| items[i].message).collect();
    let sigs: Vec<Signature> = idx.iter().map(|&i| *items[i].signature).collect();
    let keys: Vec<VerifyingKey> = idx.iter().map(|&i| *items[i].key).collect();
    match ed25519_dalek::verify_batch(&msgs, &sigs, &keys) {
        Ok(()) => Ok(()),
        Err(_) => first_bad(items),
    }
}

fn first_bad(items: &[SignatureCheck<'_>]) -> Result<(), usize> {
    match items.iter().position(|c| !verify_one(c)) {
        Some(i) => Err(i),
        None => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use curve25519_dalek::constants::EIGHT_TORSION;
    use ed25519_dalek::{Signer, SigningKey};
    use proptest::prelude::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn torsion_in_r_goes_to_strict_and_is_rejected() {
        // Add each 8-torsion point to R: strict must reject, and so must the batch, even
        // though the cofactorless batch equation would accept some of them by chance.
        let sk = key(7);
        let vk = sk.verifying_key();
        let msg = b"message";
        let good = sk.sign(msg);
        for t in EIGHT_TORSION.iter().skip(1) {
            let r = CompressedEdwardsY(*good.r_bytes()).decompress().unwrap() + t;
            let mut bytes = good.to_bytes();
            bytes[..32].copy_from_slice(r.compress().as_bytes());
            let bad = Signature::from_bytes(&bytes);
            let bad_check = SignatureCheck { key: &vk, message: msg, signature: &bad };
            assert!(!verify_one(&bad_check));
            let others: Vec<(SigningKey, Signature)> = (1..5u8).map(|s| (key(s), key(s).sign(msg))).collect();
            let vks: Vec<VerifyingKey> = others.iter().map(|(k, _)| k.verifying_key()).collect();
            let mut items: Vec<SignatureCheck<'_>> = others
                .iter()
                .zip(&vks)
                .map(|((_, s), k)| SignatureCheck { key: k, message: msg, signature: s })
                .collect();
            items.insert(2, bad_check);
            assert_eq!(verify_batch(&items), Err(2));
        }
    }

    #[test]
    fn non_canonical_r_is_rejected() {
        // y >= p encodings: take R bytes and add p where representable. The identity point
        // (y = 1) has the non-canonical encoding y = p + 1.
        let sk = key(9);
        let vk = sk.verifying_key();
        let sig = sk.sign(b"m");
        let mut bytes = sig.to_bytes();
        let mut noncanon = [0u8; 32];
        noncanon[0] = 0xee; // p + 1 = 2^255 - 18 = 0x7fff..ffee
        noncanon[1..31].fill(0xff);
        noncanon[31] = 0x7f;
        bytes[..32].copy_from_slice(&noncanon);
        let bad = Signature::from_bytes(&bytes);
        let items = [
            SignatureCheck { key: &vk, message: b"m", signature: &sig },
            SignatureCheck { key: &vk, message: b"m", signature: &bad },
        ];
        assert!(!batchable_cached(&items[1], &mut Vec::new()));
        assert_eq!(verify_batch(&items), Err(1));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Batch and strict single verification agree on random corruptions.
        #[test]
        fn batch_agrees_with_strict(n in 1usize..12, corrupt in proptest::collection::vec((0usize..12, 0usize..64, 0u8..8), 0..3)) {
            let keys: Vec<SigningKey> = (0..n).map(|i| key(i as u8 + 1)).collect();
            let vks: Vec<VerifyingKey> = keys.iter().map(|k| k.verifying_key()).collect();
            let msgs: Vec<Vec<u8>> = (0..n).map(|i| vec![i as u8; 40]).collect();
            let mut sigs: Vec<Signature> = keys.iter().zip(&msgs).map(|(k, m)| k.sign(m)).collect();
            for (i, byte, bit) in corrupt {
                if i < n {
                    let mut b = sigs[i].to_bytes();
                    b[byte] ^= 1 << bit;
                    sigs[i] = Signature::from_bytes(&b);
                }
            }
            let items: Vec<SignatureCheck<'_>> = (0..n)
                .map(|i| SignatureCheck { key: &vks[i], message: &msgs[i], signature: &sigs[i] })
                .collect();
            let strict = items.iter().position(|c| !verify_one(c));
            prop_assert_eq!(verify_batch(&items).err(), strict);
        }
    }
}
