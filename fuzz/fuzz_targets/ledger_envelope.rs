//! Ledger envelope decoding: `SignedEvent::from_bytes` on untrusted bytes, then the
//! checks a reader runs on what decoded (strict signature against a fixed key, genesis
//! link), and the `$keys` payload decoders on the same bytes.
//!
//! Properties beyond "no panic": the decoder accepts only canonical bytes, so whatever
//! decodes re-encodes to exactly the input, and its body re-encodes to the body bytes.
#![no_main]

use std::sync::LazyLock;

use ed25519_dalek::VerifyingKey;
use ledger::keys::{parse_public_key, KeyIntroduced, KeyRetired};
use ledger::SignedEvent;
use libfuzzer_sys::fuzz_target;

/// The public key of schema/vectors/ledger-v1.json (`signing_key.public_key_hex`), so
/// seeds made from those vectors carry valid signatures.
const VECTOR_PUBLIC_KEY: [u8; 32] = [
    0x5c, 0x3e, 0x23, 0x77, 0xee, 0x14, 0xc1, 0x51, 0x2d, 0xeb, 0x9c, 0x49, 0x9b, 0x53, 0xd8, 0xc2, 0x3c,
    0xd7, 0x85, 0x20, 0xb2, 0x04, 0x19, 0x7a, 0xb4, 0x4e, 0xae, 0x32, 0xd4, 0xf4, 0xfa, 0x59,
];

static KEY: LazyLock<Option<VerifyingKey>> = LazyLock::new(|| parse_public_key(&VECTOR_PUBLIC_KEY).ok());

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = SignedEvent::from_bytes(data) {
        assert_eq!(event.to_bytes(), data, "a decoded envelope re-encodes to its input");
        let body = event.body().to_bytes();
        assert_eq!(body.as_deref().ok(), Some(event.body_bytes()), "the body re-encodes to its bytes");
        assert_eq!(SignedEvent::from_bytes(&event.to_bytes()).ok().as_ref(), Some(&event));
        if let Some(key) = KEY.as_ref() {
            let _ = event.verify(key);
        }
        let _ = event.check_link(None);
        let _ = event.check_link(Some(&event));
    }
    let _ = KeyIntroduced::from_bytes(data);
    let _ = KeyRetired::from_bytes(data);
});
