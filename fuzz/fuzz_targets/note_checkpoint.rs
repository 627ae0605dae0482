//! Signed notes and checkpoints: `Note::parse` and `Note::verify` against fixed keys,
//! `Checkpoint::open` (signature, then the checkpoint text), `Checkpoint::parse` with its
//! extensions on any UTF-8 input, and the verifier/signer key-text parsers.
//!
//! Properties beyond "no panic" (both documented in crates/ledger): a parsed note
//! re-encodes to exactly its bytes, and `to_note_text(parse(t)) == t` for every accepted
//! checkpoint text.
#![no_main]

use std::sync::LazyLock;

use ledger::checkpoint::Checkpoint;
use ledger::note::{Note, NoteSigner, NoteVerifier};
use libfuzzer_sys::fuzz_target;

/// The checkpoint key of schema/vectors/ledger-v1.json and the first key of
/// schema/vectors/signed-note-external.json: the seeds carry their valid signatures.
const VKEYS: [&str; 2] = [
    "chartledger.example/ledger/test-vectors+a9a97a18+AVw+I3fuFMFRLeucSZtT2MI814UgsgQZerROrjLU9PpZ",
    "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
];

static VERIFIERS: LazyLock<Vec<NoteVerifier>> =
    LazyLock::new(|| VKEYS.iter().filter_map(|k| NoteVerifier::from_vkey(k).ok()).collect());

fn checkpoint_text(text: &str) {
    if let Ok(cp) = Checkpoint::parse(text) {
        assert_eq!(cp.to_note_text().ok().as_deref(), Some(text), "checkpoint text round trip");
        let _ = cp.timestamp_micros();
        let _ = cp.keys_head();
    }
}

fuzz_target!(|data: &[u8]| {
    let verifiers = VERIFIERS.as_slice();
    assert_eq!(verifiers.len(), VKEYS.len(), "the fixed keys parse");
    if let Ok(note) = Note::parse(data) {
        assert_eq!(note.to_bytes(), data, "a parsed note re-encodes to its input");
        let _ = note.verify(verifiers);
        checkpoint_text(note.text());
    }
    if let Ok((cp, verified)) = Checkpoint::open(data, verifiers) {
        assert!(!verified.verified_by.is_empty());
        assert_eq!(cp.to_note_text().ok(), Some(verified.text));
    }
    if let Ok(text) = std::str::from_utf8(data) {
        checkpoint_text(text);
        if let Ok(v) = NoteVerifier::from_vkey(text) {
            assert_eq!(v.to_vkey(), text, "a verifier key text round trip");
        }
        if let Ok(s) = NoteSigner::from_skey(text) {
            assert_eq!(s.to_skey().as_str(), text, "a signer key text round trip");
        }
    }
});
