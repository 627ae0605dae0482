//! Proof bundles: `proof::verify_json` (parse, then every check of
//! schema/proof-format.md) on untrusted JSON, against fixed trusted keys.
#![no_main]

use std::sync::LazyLock;

use ledger::note::NoteVerifier;
use libfuzzer_sys::fuzz_target;

/// The `trusted_keys` of schema/vectors/proof-v1.json (the keys the proof tests sign
/// with): the seeds made from that vector and from the tests verify.
const TRUSTED_KEYS: &str = "proof.example/key1+bf8824ad+AYqI4910CfGV/VLbLTy6XXLKZwm/HZQSG/N0iAG0D29c
proof.example/key2+6ec96f0c+AYE5dw6ofRdfVqNUZsNMfszLjYqRtO43ol32D1uPybOU
";

static TRUSTED: LazyLock<Vec<NoteVerifier>> =
    LazyLock::new(|| proof::parse_trusted_keys(TRUSTED_KEYS).unwrap_or_default());

fuzz_target!(|data: &[u8]| {
    let trusted = TRUSTED.as_slice();
    assert_eq!(trusted.len(), 2, "the fixed keys parse");
    if let Err(e) = proof::verify_json(data, trusted) {
        // Every refusal has a stable code.
        assert!(!e.code().is_empty());
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = proof::checkpoint_item(text);
    }
});
