//! C2SP transparency log checkpoints (<https://c2sp.org/tlog-checkpoint>).
//!
//! A checkpoint is a signed note ([`crate::note`]) whose text is:
//!
//! ```text
//! <origin>\n
//! <tree size, decimal>\n
//! <root hash, standard base64 of 32 bytes>\n
//! <extension line>\n        (zero or more)
//! ```
//!
//! # Exact rules enforced by [`Checkpoint::parse`] (and by [`Checkpoint::to_note_text`])
//!
//! * the text is at most [`MAX_NOTE_SIZE`] bytes and ends with `\n`; lines are
//!   separated by `\n` only and contain no character below U+0020;
//! * origin: non-empty. The spec only RECOMMENDS a schema-less URL without
//!   spaces or `+` and says clients MUST NOT assume that, so any other non-empty
//!   control-free line is accepted;
//! * tree size: `0`, or ASCII digits `1-9` followed by digits, fitting in a
//!   `u64` (no sign, no leading zero, no white space, at most 20 digits);
//! * root hash: exactly 44 characters of standard base64 with canonical
//!   padding and zero trailing bits, decoding to exactly 32 bytes;
//! * extension lines: each non-empty (so no blank line may follow the root
//!   hash); their content is otherwise opaque.
//!
//! Parsing and formatting are exact inverses: `parse(to_note_text(c)) == c`, and
//! `to_note_text(parse(t)) == t` for every accepted `t`.
//!
//! Signing and opening go through [`crate::note::sign`] and
//! [`crate::note::open`], so the signed-note rules apply too (unknown signature
//! lines, e.g. witness cosignatures, are ignored; at least one known valid
//! signature is required). Neither checks that a key name equals the origin
//! (the spec only says SHOULD): callers that care compare
//! [`VerifiedNote::verified_by`] with [`Checkpoint::origin`].
//!
//! # Chartledger timestamp extension
//!
//! Chartledger records when a checkpoint was taken in one extension line
//! `chartledger-time <unix microseconds>` where the number is a canonical
//! decimal `i64` (optional `-`, no leading zeros, no `+`, no `-0`). Any line
//! that is exactly `chartledger-time` or starts with `chartledger-time ` is
//! this extension; at most one may be present
//! ([`Checkpoint::timestamp_micros`]).
//!
//! # Chartledger key-registry head extension
//!
//! `chartledger-keys <revision> <event hash>` names the last event of the `$keys` stream
//! among the checkpoint's `size` events: its stream revision (canonical decimal `u64`, as
//! the tree size) and its event hash (44 characters of canonical standard base64, as the
//! root hash). It lets a proof bundle show that its key registry is complete as of the
//! checkpoint, and spares the registry events an inclusion proof each (they hash-link to
//! that head). Any line that is exactly `chartledger-keys` or starts with
//! `chartledger-keys ` is this extension; at most one may be present
//! ([`Checkpoint::keys_head`]).

use base64::Engine as _;

use crate::note::{self, NoteError, NoteSigner, NoteVerifier, VerifiedNote, MAX_NOTE_SIZE, STRICT_BASE64};

/// Key word of the Chartledger timestamp extension line.
pub const TIMESTAMP_EXTENSION: &str = "chartledger-time";
/// Key word of the Chartledger key-registry head extension line.
pub const KEYS_HEAD_EXTENSION: &str = "chartledger-keys";

/// Errors from building, parsing, signing and opening checkpoints.
///
/// Messages are fixed strings and never echo the input. Use
/// [`CheckpointError::code`] for a stable identifier.
#[non_exhaustive]
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum CheckpointError {
    /// The signed-note layer failed (format, size or signatures).
    #[error(transparent)]
    Note(#[from] NoteError),
    /// The text breaks the line structure; the string says which rule.
    #[error("malformed checkpoint: {0}")]
    Malformed(&'static str),
    /// The checkpoint text is larger than [`MAX_NOTE_SIZE`].
    #[error("checkpoint exceeds the size limit")]
    TooLarge,
    /// The origin line is empty or contains a control character.
    #[error("invalid checkpoint origin")]
    InvalidOrigin,
    /// The tree size line is not a canonical decimal `u64`.
    #[error("invalid checkpoint tree size")]
    InvalidSize,
    /// The root hash line is not canonical base64 of 32 bytes.
    #[error("invalid checkpoint root hash")]
    InvalidRootHash,
    /// An extension line is empty or contains a control character.
    #[error("invalid checkpoint extension line")]
    InvalidExtension,
    /// The `chartledger-time` extension is malformed or repeated.
    #[error("invalid chartledger-time extension")]
    InvalidTimestamp,
    /// The `chartledger-keys` extension is malformed or repeated.
    #[error("invalid chartledger-keys extension")]
    InvalidKeysHead,
}

impl CheckpointError {
    /// Stable, machine-readable identifier of the error kind (the note
    /// layer's codes, such as `"note.unverified"`, pass through).
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            CheckpointError::Note(e) => e.code(),
            CheckpointError::Malformed(_) => "checkpoint.malformed",
            CheckpointError::TooLarge => "checkpoint.too_large",
            CheckpointError::InvalidOrigin => "checkpoint.invalid_origin",
            CheckpointError::InvalidSize => "checkpoint.invalid_size",
            CheckpointError::InvalidRootHash => "checkpoint.invalid_root_hash",
            CheckpointError::InvalidExtension => "checkpoint.invalid_extension",
            CheckpointError::InvalidTimestamp => "checkpoint.invalid_timestamp",
            CheckpointError::InvalidKeysHead => "checkpoint.invalid_keys_head",
        }
    }
}

/// A transparency log checkpoint: the log's identity and its Merkle tree head.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Checkpoint {
    /// Log identity (first line).
    pub origin: String,
    /// Number of leaves in the tree.
    pub size: u64,
    /// RFC 6962 / RFC 9162 Merkle tree root hash at `size`.
    pub root_hash: [u8; 32],
    /// Extension lines, in order, without their newlines.
    pub extensions: Vec<String>,
}

fn has_control(line: &str) -> bool {
    line.bytes().any(|b| b < 0x20)
}

fn check_origin(origin: &str) -> Result<(), CheckpointError> {
    if origin.is_empty() || has_control(origin) {
        return Err(CheckpointError::InvalidOrigin);
    }
    Ok(())
}

fn check_extension(line: &str) -> Result<(), CheckpointError> {
    if line.is_empty() || has_control(line) {
        return Err(CheckpointError::InvalidExtension);
    }
    Ok(())
}

fn parse_size(line: &str) -> Result<u64, CheckpointError> {
    let b = line.as_bytes();
    let canonical =
        !b.is_empty() && b.len() <= 20 && b.iter().all(u8::is_ascii_digit) && (b.len() == 1 || b[0] != b'0');
    if !canonical {
        return Err(CheckpointError::InvalidSize);
    }
    line.parse::<u64>().map_err(|_| CheckpointError::InvalidSize)
}

fn parse_root_hash(line: &str) -> Result<[u8; 32], CheckpointError> {
    if line.len() != 44 {
        return Err(CheckpointError::InvalidRootHash);
    }
    let raw = STRICT_BASE64.decode(line).map_err(|_| CheckpointError::InvalidRootHash)?;
    raw.as_slice().try_into().map_err(|_| CheckpointError::InvalidRootHash)
}

fn is_extension(line: &str, word: &str) -> bool {
    line == word || line.strip_prefix(word).is_some_and(|rest| rest.starts_with(' '))
}

fn is_timestamp_line(line: &str) -> bool {
    is_extension(line, TIMESTAMP_EXTENSION)
}

fn is_keys_head_line(line: &str) -> bool {
    is_extension(line, KEYS_HEAD_EXTENSION)
}

fn parse_canonical_i64(s: &str) -> Option<i64> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    let d = digits.as_bytes();
    let canonical = !d.is_empty()
        && d.len() <= 19
        && d.iter().all(u8::is_ascii_digit)
        && (d.len() == 1 || d[0] != b'0')
        && s != "-0";
    if !canonical {
        return None;
    }
    s.parse::<i64>().ok()
}

impl Checkpoint {
    /// A checkpoint without extension lines.
    #[must_use]
    pub fn new(origin: impl Into<String>, size: u64, root_hash: [u8; 32]) -> Self {
        Checkpoint { origin: origin.into(), size, root_hash, extensions: Vec::new() }
    }

    /// The note text (origin, size, root hash, extension lines; each ending
    /// in `\n`), after checking the origin and extension lines.
    pub fn to_note_text(&self) -> Result<String, CheckpointError> {
        check_origin(&self.origin)?;
        for line in &self.extensions {
            check_extension(line)?;
        }
        let mut out = String::with_capacity(
            self.origin.len() + 70 + self.extensions.iter().map(|l| l.len() + 1).sum::<usize>(),
        );
        out.push_str(&self.origin);
        out.push('\n');
        out.push_str(&self.size.to_string());
        out.push('\n');
        out.push_str(&STRICT_BASE64.encode(self.root_hash));
        out.push('\n');
        for line in &self.extensions {
            out.push_str(line);
            out.push('\n');
        }
        if out.len() > MAX_NOTE_SIZE {
            return Err(CheckpointError::TooLarge);
        }
        Ok(out)
    }

    /// Parses a checkpoint note text strictly (see the module docs). This
    /// checks no signature: use [`Checkpoint::open`] on signed notes.
    pub fn parse(text: &str) -> Result<Checkpoint, CheckpointError> {
        if text.len() > MAX_NOTE_SIZE {
            return Err(CheckpointError::TooLarge);
        }
        let body =
            text.strip_suffix('\n').ok_or(CheckpointError::Malformed("text must end with a newline"))?;
        let mut lines = body.split('\n');
        let origin = lines.next().unwrap_or_default();
        check_origin(origin)?;
        let size = parse_size(lines.next().ok_or(CheckpointError::Malformed("missing tree size line"))?)?;
        let root_hash =
            parse_root_hash(lines.next().ok_or(CheckpointError::Malformed("missing root hash line"))?)?;
        let mut extensions = Vec::new();
        for line in lines {
            check_extension(line)?;
            extensions.push(line.to_owned());
        }
        Ok(Checkpoint { origin: origin.to_owned(), size, root_hash, extensions })
    }

    /// The signed checkpoint note.
    pub fn sign(&self, signers: &[&NoteSigner]) -> Result<String, CheckpointError> {
        Ok(note::sign(&self.to_note_text()?, signers)?)
    }

    /// Opens a signed checkpoint note: verifies the signatures (unknown keys
    /// ignored, at least one known valid signature required), then parses the
    /// text strictly.
    pub fn open(
        note: &[u8],
        verifiers: &[NoteVerifier],
    ) -> Result<(Checkpoint, VerifiedNote), CheckpointError> {
        let verified = note::open(note, verifiers)?;
        let checkpoint = Checkpoint::parse(&verified.text)?;
        Ok((checkpoint, verified))
    }

    /// Sets the `chartledger-time <micros>` extension: removes any existing
    /// `chartledger-time` lines and appends one.
    #[must_use]
    pub fn with_timestamp_micros(mut self, micros: i64) -> Self {
        self.extensions.retain(|l| !is_timestamp_line(l));
        self.extensions.push(format!("{TIMESTAMP_EXTENSION} {micros}"));
        self
    }

    /// The `chartledger-time` extension value: `Ok(None)` if absent, an error
    /// if it is repeated or not a canonical decimal `i64`.
    pub fn timestamp_micros(&self) -> Result<Option<i64>, CheckpointError> {
        let mut found = None;
        for line in self.extensions.iter().filter(|l| is_timestamp_line(l)) {
            if found.is_some() {
                return Err(CheckpointError::InvalidTimestamp);
            }
            let value = line
                .strip_prefix(TIMESTAMP_EXTENSION)
                .and_then(|r| r.strip_prefix(' '))
                .and_then(parse_canonical_i64)
                .ok_or(CheckpointError::InvalidTimestamp)?;
            found = Some(value);
        }
        Ok(found)
    }

    /// Sets the `chartledger-keys <revision> <event hash>` extension: removes any
    /// existing `chartledger-keys` lines and appends one.
    #[must_use]
    pub fn with_keys_head(mut self, revision: u64, event_hash: &[u8; 32]) -> Self {
        self.extensions.retain(|l| !is_keys_head_line(l));
        self.extensions
            .push(format!("{KEYS_HEAD_EXTENSION} {revision} {}", STRICT_BASE64.encode(event_hash)));
        self
    }

    /// The `chartledger-keys` extension value (revision and event hash of the last
    /// `$keys` event in the tree): `Ok(None)` if absent, an error if it is repeated or
    /// malformed.
    pub fn keys_head(&self) -> Result<Option<(u64, [u8; 32])>, CheckpointError> {
        let mut found = None;
        for line in self.extensions.iter().filter(|l| is_keys_head_line(l)) {
            if found.is_some() {
                return Err(CheckpointError::InvalidKeysHead);
            }
            let mut parts = line
                .strip_prefix(KEYS_HEAD_EXTENSION)
                .and_then(|r| r.strip_prefix(' '))
                .ok_or(CheckpointError::InvalidKeysHead)?
                .split(' ');
            let (Some(rev), Some(hash), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(CheckpointError::InvalidKeysHead);
            };
            let rev = parse_size(rev).map_err(|_| CheckpointError::InvalidKeysHead)?;
            let hash = parse_root_hash(hash).map_err(|_| CheckpointError::InvalidKeysHead)?;
            found = Some((rev, hash));
        }
        Ok(found)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use proptest::prelude::*;
    use serde::Deserialize;
    use sha2::{Digest, Sha256};

    const VECTORS: &str = include_str!("../../../schema/vectors/signed-note-external.json");

    #[derive(Deserialize)]
    struct Vectors {
        keys: Vec<KeyVector>,
        checkpoints: Vec<SignedCheckpoint>,
        checkpoint_texts: Vec<CheckpointText>,
    }

    #[derive(Deserialize)]
    struct KeyVector {
        name: String,
        vkey: String,
        skey: Option<String>,
    }

    #[derive(Deserialize)]
    struct SignedCheckpoint {
        source: String,
        signed_note: String,
        verifiers: Vec<String>,
        expect: String,
        origin: String,
        size: u64,
        root_hash: String,
        extensions: Vec<String>,
        resign_with: Vec<String>,
    }

    #[derive(Deserialize)]
    struct CheckpointText {
        source: String,
        text: String,
        expect: String,
        origin: Option<String>,
        size: Option<u64>,
        root_hash_leaf_data: Option<String>,
    }

    fn vectors() -> Vectors {
        serde_json::from_str(VECTORS).unwrap()
    }

    fn key<'a>(v: &'a Vectors, name: &str) -> &'a KeyVector {
        v.keys.iter().find(|k| k.name == name).unwrap()
    }

    fn signer(name: &str, seed: u8) -> NoteSigner {
        NoteSigner::new(name, SigningKey::from_bytes(&[seed; 32])).unwrap()
    }

    fn sample() -> Checkpoint {
        Checkpoint::new("example.com/log", 20852163, [7u8; 32])
    }

    #[test]
    fn external_signed_checkpoints() {
        let v = vectors();
        for c in &v.checkpoints {
            let verifiers: Vec<NoteVerifier> =
                c.verifiers.iter().map(|n| NoteVerifier::from_vkey(&key(&v, n).vkey).unwrap()).collect();
            let text = note::Note::parse(c.signed_note.as_bytes()).unwrap().text().to_owned();
            let cp = Checkpoint::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", c.source));
            assert_eq!(cp.origin, c.origin);
            assert_eq!(cp.size, c.size);
            assert_eq!(STRICT_BASE64.encode(cp.root_hash), c.root_hash);
            assert_eq!(cp.extensions, c.extensions);
            assert_eq!(cp.to_note_text().unwrap(), text);
            match c.expect.as_str() {
                "ok" => {
                    let (opened, vn) = Checkpoint::open(c.signed_note.as_bytes(), &verifiers)
                        .unwrap_or_else(|e| panic!("{}: {e}", c.source));
                    assert_eq!(opened, cp);
                    assert_eq!(vn.verified_by, c.verifiers);
                }
                code => assert_eq!(
                    Checkpoint::open(c.signed_note.as_bytes(), &verifiers).unwrap_err().code(),
                    code,
                    "{}",
                    c.source
                ),
            }
            if !c.resign_with.is_empty() {
                let signers: Vec<NoteSigner> = c
                    .resign_with
                    .iter()
                    .map(|n| NoteSigner::from_skey(key(&v, n).skey.as_deref().unwrap()).unwrap())
                    .collect();
                let refs: Vec<&NoteSigner> = signers.iter().collect();
                assert_eq!(cp.sign(&refs).unwrap(), c.signed_note, "{}", c.source);
            }
        }
    }

    #[test]
    fn external_checkpoint_texts() {
        for c in vectors().checkpoint_texts {
            let res = Checkpoint::parse(&c.text);
            match c.expect.as_str() {
                "ok" => {
                    let cp = res.unwrap_or_else(|e| panic!("{}: {e}", c.source));
                    assert_eq!(Some(cp.origin.clone()), c.origin);
                    assert_eq!(Some(cp.size), c.size);
                    if let Some(data) = &c.root_hash_leaf_data {
                        let mut h = Sha256::new();
                        h.update([0u8]);
                        h.update(data.as_bytes());
                        assert_eq!(cp.root_hash, <[u8; 32]>::from(h.finalize()));
                    }
                    assert_eq!(cp.to_note_text().unwrap(), c.text);
                }
                code => assert_eq!(res.unwrap_err().code(), code, "{}", c.source),
            }
        }
    }

    #[test]
    fn parse_rejections() {
        let good = sample().to_note_text().unwrap();
        assert!(Checkpoint::parse(&good).is_ok());
        let root = STRICT_BASE64.encode([7u8; 32]);
        let cases: Vec<(String, &str)> = vec![
            // tree size
            (format!("o\n0123\n{root}\n"), "checkpoint.invalid_size"),
            (format!("o\n00\n{root}\n"), "checkpoint.invalid_size"),
            (format!("o\n-1\n{root}\n"), "checkpoint.invalid_size"),
            (format!("o\n+1\n{root}\n"), "checkpoint.invalid_size"),
            (format!("o\n 1\n{root}\n"), "checkpoint.invalid_size"),
            (format!("o\n1 \n{root}\n"), "checkpoint.invalid_size"),
            (format!("o\n\n{root}\n"), "checkpoint.invalid_size"),
            (format!("o\n1e3\n{root}\n"), "checkpoint.invalid_size"),
            (format!("o\n0x10\n{root}\n"), "checkpoint.invalid_size"),
            (format!("o\n18446744073709551616\n{root}\n"), "checkpoint.invalid_size"),
            (format!("o\n100000000000000000000\n{root}\n"), "checkpoint.invalid_size"),
            (format!("o\n\u{0661}\n{root}\n"), "checkpoint.invalid_size"),
            // root hash
            ("o\n1\nnot base64 at all!!!!!!!!!!!!!!!!!!!!!!!!!!!\n".into(), "checkpoint.invalid_root_hash"),
            (format!("o\n1\n{}\n", STRICT_BASE64.encode([7u8; 31])), "checkpoint.invalid_root_hash"),
            (format!("o\n1\n{}\n", STRICT_BASE64.encode([7u8; 33])), "checkpoint.invalid_root_hash"),
            (format!("o\n1\n{}\n", root.trim_end_matches('=')), "checkpoint.invalid_root_hash"),
            (
                format!("o\n1\n{}\n", STRICT_BASE64.encode([0xfb; 32]).replace('+', "-").replace('/', "_")),
                "checkpoint.invalid_root_hash",
            ),
            // "Bw==" style trailing bits: last char before '=' changed so trailing bits are non-zero
            (format!("o\n1\n{}=\n", &root[..42]), "checkpoint.invalid_root_hash"),
            (format!("o\n1\n{}Bwd=\n", &root[..40]), "checkpoint.invalid_root_hash"),
            ("o\n1\n\n".into(), "checkpoint.invalid_root_hash"),
            // origin
            (format!("\n1\n{root}\n"), "checkpoint.invalid_origin"),
            (format!("o\u{1}\n1\n{root}\n"), "checkpoint.invalid_origin"),
            (format!("o\r\n1\n{root}\n"), "checkpoint.invalid_origin"),
            // extension lines
            (format!("o\n1\n{root}\n\n"), "checkpoint.invalid_extension"),
            (format!("o\n1\n{root}\next\n\n"), "checkpoint.invalid_extension"),
            (format!("o\n1\n{root}\n\next\n"), "checkpoint.invalid_extension"),
            (format!("o\n1\n{root}\next\t1\n"), "checkpoint.invalid_extension"),
            // missing lines / newline
            ("".into(), "checkpoint.malformed"),
            ("o\n".into(), "checkpoint.malformed"),
            ("o\n1\n".into(), "checkpoint.malformed"),
            (format!("o\n1\n{root}"), "checkpoint.malformed"),
        ];
        for (text, code) in cases {
            assert_eq!(Checkpoint::parse(&text).map_err(|e| e.code()), Err(code), "{text:?}");
        }
        assert_eq!(Checkpoint::parse(&"a".repeat(MAX_NOTE_SIZE + 1)), Err(CheckpointError::TooLarge));
        // Size boundaries.
        for n in [0u64, 1, 9, 10, u64::MAX] {
            let t = format!("o\n{n}\n{root}\n");
            assert_eq!(Checkpoint::parse(&t).unwrap().size, n);
        }
    }

    #[test]
    fn to_note_text_validates() {
        let mut c = sample();
        c.origin = String::new();
        assert_eq!(c.to_note_text(), Err(CheckpointError::InvalidOrigin));
        c.origin = "a\nb".into();
        assert_eq!(c.to_note_text(), Err(CheckpointError::InvalidOrigin));
        let mut c = sample();
        c.extensions = vec!["ok".into(), String::new()];
        assert_eq!(c.to_note_text(), Err(CheckpointError::InvalidExtension));
        c.extensions = vec!["a\nb".into()];
        assert_eq!(c.to_note_text(), Err(CheckpointError::InvalidExtension));
        c.extensions = vec!["a".repeat(MAX_NOTE_SIZE)];
        assert_eq!(c.to_note_text(), Err(CheckpointError::TooLarge));
        let s = signer("example.com/log", 1);
        let mut c = sample();
        c.origin = String::new();
        assert_eq!(c.sign(&[&s]).unwrap_err().code(), "checkpoint.invalid_origin");
        assert_eq!(sample().sign(&[]).unwrap_err().code(), "note.malformed");
    }

    #[test]
    fn sign_open_and_signature_rules() {
        let log = signer("example.com/log", 1);
        let witness = signer("witness.example/w", 2);
        let cp = sample().with_timestamp_micros(1_700_000_000_123_456);
        let signed = cp.sign(&[&log, &witness]).unwrap();
        let (got, vn) = Checkpoint::open(signed.as_bytes(), &[log.verifier()]).unwrap();
        assert_eq!(got, cp);
        assert_eq!(vn.verified_by, vec!["example.com/log".to_owned()]);
        assert_eq!(got.timestamp_micros(), Ok(Some(1_700_000_000_123_456)));
        // Only a witness we do not know: unverified.
        assert_eq!(
            Checkpoint::open(signed.as_bytes(), &[signer("other", 3).verifier()]).unwrap_err().code(),
            "note.unverified"
        );
        // Any altered byte of the text is rejected.
        let text_len = cp.to_note_text().unwrap().len();
        for i in 0..text_len {
            let mut m = signed.clone().into_bytes();
            m[i] ^= 0x01;
            assert!(Checkpoint::open(&m, &[log.verifier()]).is_err(), "byte {i}");
        }
        // A validly signed note whose text is not a checkpoint.
        let not_cp = note::sign("hello\n", &[&log]).unwrap();
        assert_eq!(
            Checkpoint::open(not_cp.as_bytes(), &[log.verifier()]).unwrap_err().code(),
            "checkpoint.malformed"
        );
    }

    #[test]
    fn timestamp_extension() {
        let c = sample();
        assert_eq!(c.timestamp_micros(), Ok(None));
        let c = c.with_timestamp_micros(5).with_timestamp_micros(-42);
        assert_eq!(c.extensions, vec!["chartledger-time -42".to_owned()]);
        assert_eq!(c.timestamp_micros(), Ok(Some(-42)));
        for v in [0, 1, i64::MAX, i64::MIN] {
            let c = sample().with_timestamp_micros(v);
            let back = Checkpoint::parse(&c.to_note_text().unwrap()).unwrap();
            assert_eq!(back.timestamp_micros(), Ok(Some(v)));
        }
        // Other extensions are kept, in order; ours is appended.
        let mut c = sample();
        c.extensions = vec!["x 1".into(), "chartledger-time 9".into(), "chartledger-timestamp 3".into()];
        let c = c.with_timestamp_micros(10);
        assert_eq!(
            c.extensions,
            vec!["x 1".to_owned(), "chartledger-timestamp 3".to_owned(), "chartledger-time 10".to_owned()]
        );
        for bad in [
            "chartledger-time",
            "chartledger-time ",
            "chartledger-time 01",
            "chartledger-time -0",
            "chartledger-time +1",
            "chartledger-time 1 ",
            "chartledger-time  1",
            "chartledger-time 1.5",
            "chartledger-time 9223372036854775808",
            "chartledger-time -9223372036854775809",
            "chartledger-time abc",
        ] {
            let mut c = sample();
            c.extensions = vec![bad.into()];
            assert_eq!(c.timestamp_micros(), Err(CheckpointError::InvalidTimestamp), "{bad:?}");
        }
        let mut c = sample();
        c.extensions = vec!["chartledger-time 1".into(), "chartledger-time 1".into()];
        assert_eq!(c.timestamp_micros(), Err(CheckpointError::InvalidTimestamp));
    }

    #[test]
    fn keys_head_extension() {
        let h = [7u8; 32];
        assert_eq!(sample().keys_head(), Ok(None));
        let c = sample().with_timestamp_micros(3).with_keys_head(1, &[1; 32]).with_keys_head(4, &h);
        assert_eq!(c.extensions.len(), 2);
        let back = Checkpoint::parse(&c.to_note_text().unwrap()).unwrap();
        assert_eq!(back.keys_head(), Ok(Some((4, h))));
        assert_eq!(back.timestamp_micros(), Ok(Some(3)));
        let good_hash = STRICT_BASE64.encode(h);
        for bad in [
            "chartledger-keys".to_owned(),
            "chartledger-keys ".to_owned(),
            format!("chartledger-keys 01 {good_hash}"),
            format!("chartledger-keys -1 {good_hash}"),
            format!("chartledger-keys 1  {good_hash}"),
            format!("chartledger-keys 1 {good_hash} "),
            format!("chartledger-keys 1 {good_hash} x"),
            format!("chartledger-keys 1 {}", &good_hash[..43]),
            "chartledger-keys 1 BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwf=".to_owned(),
            "chartledger-keys 1".to_owned(),
        ] {
            let mut c = sample();
            c.extensions = vec![bad.clone()];
            assert_eq!(c.keys_head(), Err(CheckpointError::InvalidKeysHead), "{bad:?}");
        }
        let mut c = sample();
        c.extensions =
            vec![format!("chartledger-keys 1 {good_hash}"), format!("chartledger-keys 1 {good_hash}")];
        assert_eq!(c.keys_head(), Err(CheckpointError::InvalidKeysHead));
        // A different word that merely starts alike is another extension.
        let mut c = sample();
        c.extensions = vec!["chartledger-keyset 1".into()];
        assert_eq!(c.keys_head(), Ok(None));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn sign_open_round_trip(
            origin in "[^\\p{C}]{1,40}",
            size in any::<u64>(),
            root in any::<[u8; 32]>(),
            extensions in proptest::collection::vec("[^\\p{C}]{1,40}", 0..4),
            seed in any::<[u8; 32]>(),
            witness_seed in any::<[u8; 32]>(),
            ts in proptest::option::of(any::<i64>()),
        ) {
            let mut cp = Checkpoint { origin, size, root_hash: root, extensions };
            cp.extensions.retain(|l| !is_timestamp_line(l));
            if let Some(ts) = ts {
                cp = cp.with_timestamp_micros(ts);
            }
            let log = NoteSigner::new("log.example/prop", SigningKey::from_bytes(&seed)).unwrap();
            let witness = NoteSigner::new("witness.example/prop", SigningKey::from_bytes(&witness_seed)).unwrap();
            let text = cp.to_note_text().unwrap();
            prop_assert_eq!(&Checkpoint::parse(&text).unwrap(), &cp);
            let signed = cp.sign(&[&log, &witness]).unwrap();
            let (got, vn) = Checkpoint::open(signed.as_bytes(), &[log.verifier()]).unwrap();
            prop_assert_eq!(&got, &cp);
            prop_assert_eq!(vn.text, text);
            prop_assert_eq!(vn.verified_by, vec!["log.example/prop".to_owned()]);
            prop_assert_eq!(got.timestamp_micros().unwrap(), ts);
            prop_assert_eq!(
                Checkpoint::open(signed.as_bytes(), &[]).unwrap_err().code(),
                "note.unverified"
            );
        }

        #[test]
        fn parse_never_panics_and_round_trips(text in "[\\x00-\\x7f\u{80}-\u{2100}]{0,120}") {
            if let Ok(cp) = Checkpoint::parse(&text) {
                prop_assert_eq!(cp.to_note_text().unwrap(), text);
            }
        }

        #[test]
        fn note_parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(n) = note::Note::parse(&bytes) {
                prop_assert_eq!(n.to_bytes(), bytes);
            }
        }
    }
}
