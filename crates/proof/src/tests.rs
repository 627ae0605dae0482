//! Unit tests of the crate's private helpers; the bundle-level tests and vectors are in
//! `tests/proof.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ledger::{LedgerError, Timestamp};
use proptest::prelude::*;
use uuid::Uuid;

use super::*;
use crate::error::err;
use crate::verify::decode::b64;

#[test]
fn times_render_as_rfc3339_within_years_1_to_9999() {
    assert_eq!(render_time(Timestamp::from_micros(0)), "1970-01-01T00:00:00.000000Z");
    assert_eq!(render_time(Timestamp::from_micros(-62_135_596_800_000_000)), "0001-01-01T00:00:00.000000Z");
    assert_eq!(render_time(Timestamp::from_micros(-62_135_596_800_000_001)), "@-62135596800000001us");
    assert_eq!(render_time(Timestamp::from_micros(253_402_300_799_999_999)), "9999-12-31T23:59:59.999999Z");
    assert_eq!(render_time(Timestamp::from_micros(253_402_300_800_000_000)), "@253402300800000000us");
}

#[test]
fn selections_link_the_gaps() {
    assert_eq!(Selection::linking(vec![2, 5, 6]), Selection { events: vec![2, 5, 6], chain: vec![3, 4] });
    assert_eq!(Selection::linking(vec![3]), Selection { events: vec![3], chain: vec![] });
    assert_eq!(Selection::linking(vec![]), Selection::default());
}

#[test]
fn trusted_key_files_skip_comments_and_blank_lines() {
    let signer =
        ledger::note::NoteSigner::new("a.example/k", ed25519_dalek::SigningKey::from_bytes(&[3; 32]))
            .unwrap();
    let vkey = signer.verifier().to_vkey();
    let keys = parse_trusted_keys(&format!("# ledger\n\n  {vkey}  \n")).unwrap();
    assert_eq!(keys, vec![signer.verifier()]);
    assert!(parse_trusted_keys("not a key").is_err());
}

#[test]
fn errors_name_the_place_and_never_quote_content() {
    let e = parse_json(br#"{"format":"SECRET-DIAGNOSIS"#).unwrap_err();
    assert_eq!(e.code(), "proof.malformed");
    assert!(!e.to_string().contains("SECRET"), "{e}");
    let e = err(Location::Events(2), ErrorKind::Ledger(LedgerError::InvalidSignature(Uuid::nil())));
    assert_eq!(e.code(), "ledger.invalid_signature");
    assert!(e.to_string().starts_with("events[2]: "), "{e}");
}

proptest! {
    /// Arbitrary bytes never panic the parser or the verifier.
    #[test]
    fn arbitrary_input_is_rejected_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        prop_assert!(verify_json(&bytes, &[]).is_err());
    }

    /// Base64 in bundles has exactly one spelling.
    #[test]
    fn base64_is_canonical(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let s = encode_bytes(&bytes);
        prop_assert_eq!(&b64(&s, "x", Location::Bundle).unwrap(), &bytes);
        if s.ends_with('=') {
            // Set an unused low bit of the last data character: the same bytes spelled
            // non-canonically, which must be refused.
            const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
            let i = s.trim_end_matches('=').len() - 1;
            let mut v = s.into_bytes();
            let idx = ALPHABET.iter().position(|&c| c == v[i]).unwrap();
            v[i] = ALPHABET[idx ^ 1];
            let t = String::from_utf8(v).unwrap();
            prop_assert!(b64(&t, "x", Location::Bundle).is_err());
        }
    }
}
