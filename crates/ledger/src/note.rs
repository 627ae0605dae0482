//! C2SP signed notes (<https://c2sp.org/signed-note>) with Ed25519 keys.
//!
//! A signed note is a text followed by one or more signature lines. This is the
//! envelope Chartledger uses for signed checkpoints (see [`crate::checkpoint`]);
//! it is byte-compatible with Go's `golang.org/x/mod/sumdb/note` package.
//!
//! # Format and the exact byte rules enforced
//!
//! ```text
//! <text, ending in "\n">
//! "\n"
//! "— " <key name> " " base64(4-byte key hash || 64-byte Ed25519 signature) "\n"   (one or more)
//! ```
//!
//! [`Note::parse`] (and so [`open`]) enforces, in this order:
//!
//! * the whole note is at most [`MAX_NOTE_SIZE`] bytes ([`NoteError::TooLarge`]);
//! * it is valid UTF-8 and contains no byte below `0x20` other than `\n`
//!   (so no `\r`, no tab; `0x7F` is allowed, as in the spec);
//! * the text is everything up to and including the `\n` that starts the
//!   *last* `"\n\n"` of the note (the text may contain empty lines); the rest is
//!   the signature block, which must be non-empty and end in `\n`;
//! * there are at most [`MAX_SIGNATURES`] signature lines
//!   ([`NoteError::TooManySignatures`]);
//! * every signature line is U+2014 EM DASH, one space, a valid key name, one
//!   space, then standard base64 *with canonical padding and zero trailing
//!   bits* (RFC 4648 §4; non-canonical encodings are rejected, so a signature
//!   line has exactly one spelling) decoding to at least 5 bytes: a 4-byte key
//!   hash and the signature bytes.
//!
//! A key name is non-empty and contains no Unicode white space, no `+` and no
//! ASCII control character (see [`is_valid_key_name`]).
//!
//! [`open`] / [`Note::verify`] then applies the spec's signature rules:
//!
//! * a signature line whose (key name, key hash) pair matches no given
//!   verifier is **ignored** (witness cosignatures, key rotation);
//! * every signature line that matches a known verifier must be a valid
//!   Ed25519 signature of the exact text bytes under `verify_strict` (64 bytes,
//!   canonical encodings, no small-order keys), otherwise the whole note is
//!   rejected with [`NoteError::InvalidSignature`] (also when another known
//!   key signed validly);
//! * at least one known signature must verify, otherwise
//!   [`NoteError::UnverifiedNote`];
//! * two *different* verifiers with the same (name, key hash) that a
//!   signature line refers to make the note [`NoteError::AmbiguousVerifier`]
//!   (identical duplicates in the verifier list are harmless).
//!
//! [`sign`] only produces notes that [`Note::parse`] accepts: the text must end
//! with `\n`, contain no control character other than `\n`, and the result must
//! fit in [`MAX_NOTE_SIZE`]; it needs at least one signer and rejects the same
//! key twice.
//!
//! # Keys
//!
//! * key hash (key ID) = `SHA-256(key name || 0x0A || 0x01 || 32-byte public key)[..4]`
//!   ([`key_hash`]);
//! * verifier key text ("vkey"): `<name>+<8 lowercase hex key hash>+<base64(0x01 || public key)>`;
//! * signer key text ("skey"): `PRIVATE+KEY+<name>+<8 lowercase hex key hash>+<base64(0x01 || 32-byte seed)>`.
//!
//! Key texts are parsed strictly: exactly that shape, lowercase hex, canonical
//! base64, algorithm byte `0x01`, a key hash that matches the (derived) public
//! key, and at most [`MAX_KEY_TEXT_SIZE`] bytes. Verifier keys that are weak
//! (small order) are refused.
//!
//! # Errors
//!
//! [`NoteError`] values carry a stable machine-readable code ([`NoteError::code`],
//! e.g. `"note.malformed"`) and never echo untrusted input: the only strings they
//! carry are names of the caller's own verifiers.

use std::fmt;

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Largest signed note (text plus signature lines) accepted or produced, in bytes.
pub const MAX_NOTE_SIZE: usize = 256 * 1024;

/// Largest number of signature lines accepted or produced (as Go's `note` package).
/// The spec requires accepting at least 16.
pub const MAX_SIGNATURES: usize = 100;

/// Largest verifier or signer key text accepted, in bytes.
pub const MAX_KEY_TEXT_SIZE: usize = 4096;

/// Signature type identifier byte of Ed25519 keys (c2sp.org/signed-note).
pub const ALG_ED25519: u8 = 0x01;

/// Start of every signature line: U+2014 EM DASH and a space.
const SIG_PREFIX: &str = "\u{2014} ";

/// Start of every signer key text.
const SKEY_PREFIX: &str = "PRIVATE+KEY+";

/// Standard base64 (RFC 4648 §4) that only decodes the canonical encoding:
/// padding required, non-zero trailing bits rejected, so every byte string has exactly
/// one spelling. The one engine for base64 in signed or exported formats.
pub const STRICT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_allow_trailing_bits(false)
        .with_decode_padding_mode(DecodePaddingMode::RequireCanonical),
);

/// Errors from parsing, signing and verifying notes and note keys.
///
/// Messages are fixed strings; the only data they carry is the name of one of
/// the caller's own verifiers. Use [`NoteError::code`] for a stable identifier.
#[non_exhaustive]
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum NoteError {
    /// The note (or the text given to [`sign`]) breaks the format; the string
    /// is a fixed description of which rule.
    #[error("malformed note: {0}")]
    Malformed(&'static str),
    /// The note is larger than [`MAX_NOTE_SIZE`].
    #[error("note exceeds the size limit")]
    TooLarge,
    /// The note has more than [`MAX_SIGNATURES`] signature lines.
    #[error("note has too many signatures")]
    TooManySignatures,
    /// A key name is empty or contains white space, `+` or a control character.
    #[error("invalid key name")]
    InvalidKeyName,
    /// A verifier key text or public key is not acceptable.
    #[error("invalid verifier key")]
    InvalidVerifierKey,
    /// A signer key text is not acceptable.
    #[error("invalid signer key")]
    InvalidSignerKey,
    /// Two different verifiers share the name and key hash a signature refers to.
    #[error("ambiguous verifier key {name}")]
    AmbiguousVerifier {
        /// The verifiers' key name.
        name: String,
    },
    /// No signature from a known key: the note must not be trusted.
    #[error("note has no verifiable signature from a known key")]
    UnverifiedNote,
    /// A signature by a known key does not verify.
    #[error("invalid signature for key {name}")]
    InvalidSignature {
        /// The name of the (known) key.
        name: String,
    },
}

impl NoteError {
    /// Stable, machine-readable identifier of the error kind.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            NoteError::Malformed(_) => "note.malformed",
            NoteError::TooLarge => "note.too_large",
            NoteError::TooManySignatures => "note.too_many_signatures",
            NoteError::InvalidKeyName => "note.invalid_key_name",
            NoteError::InvalidVerifierKey => "note.invalid_verifier_key",
            NoteError::InvalidSignerKey => "note.invalid_signer_key",
            NoteError::AmbiguousVerifier { .. } => "note.ambiguous_verifier",
            NoteError::UnverifiedNote => "note.unverified",
            NoteError::InvalidSignature { .. } => "note.invalid_signature",
        }
    }
}

/// Whether `name` is a valid key name: non-empty, no Unicode white space, no
/// `+` (U+002B) and no ASCII control character.
#[must_use]
pub fn is_valid_key_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c == '+' || c < '\u{20}')
}

/// The Ed25519 key hash (key ID):
/// `SHA-256(name || 0x0A || 0x01 || public_key)[..4]`.
#[must_use]
pub fn key_hash(name: &str, public_key: &[u8; 32]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', ALG_ED25519]);
    h.update(public_key);
    let digest = h.finalize();
    [digest[0], digest[1], digest[2], digest[3]]
}

fn hex_key_hash(hash: [u8; 4]) -> String {
    format!("{:02x}{:02x}{:02x}{:02x}", hash[0], hash[1], hash[2], hash[3])
}

/// Parses exactly 8 lowercase hex digits.
fn parse_hex_key_hash(s: &str) -> Option<[u8; 4]> {
    fn nibble(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            _ => None,
        }
    }
    let b = s.as_bytes();
    if b.len() != 8 {
        return None;
    }
    let mut out = [0u8; 4];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (nibble(b[2 * i])? << 4) | nibble(b[2 * i + 1])?;
    }
    Some(out)
}

/// Splits `<name>+<hash>+<base64>`; the base64 part may itself contain `+`.
fn split_key_text(s: &str) -> Option<(&str, [u8; 4], &str)> {
    let (name, rest) = s.split_once('+')?;
    let (hash, key64) = rest.split_once('+')?;
    Some((name, parse_hex_key_hash(hash)?, key64))
}

/// An Ed25519 note signing key with its key name.
///
/// `Debug` shows the name and key hash only, never the secret key.
#[derive(Clone)]
pub struct NoteSigner {
    name: String,
    key_hash: [u8; 4],
    key: SigningKey,
}

impl fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NoteSigner")
            .field("name", &self.name)
            .field("key_hash", &hex_key_hash(self.key_hash))
            .finish_non_exhaustive()
    }
}

impl NoteSigner {
    /// A signer for `key` under the key name `name`.
    pub fn new(name: &str, key: SigningKey) -> Result<Self, NoteError> {
        if !is_valid_key_name(name) {
            return Err(NoteError::InvalidKeyName);
        }
        let key_hash = key_hash(name, key.verifying_key().as_bytes());
        Ok(NoteSigner { name: name.to_owned(), key_hash, key })
    }

    /// A signer with a fresh random key.
    pub fn generate<R: CryptoRngCore + ?Sized>(name: &str, rng: &mut R) -> Result<Self, NoteError> {
        NoteSigner::new(name, SigningKey::generate(rng))
    }

    /// Parses a signer key text
    /// `PRIVATE+KEY+<name>+<hash>+<base64(0x01 || seed)>` (Go's `note.NewSigner`
    /// format). Every failure is [`NoteError::InvalidSignerKey`].
    pub fn from_skey(skey: &str) -> Result<Self, NoteError> {
        let err = NoteError::InvalidSignerKey;
        if skey.len() > MAX_KEY_TEXT_SIZE {
            return Err(err);
        }
        let rest = skey.strip_prefix(SKEY_PREFIX).ok_or(err.clone())?;
        let (name, hash, key64) = split_key_text(rest).ok_or(err.clone())?;
        if !is_valid_key_name(name) {
            return Err(err);
        }
        let raw = Zeroizing::new(STRICT_BASE64.decode(key64).map_err(|_| err.clone())?);
        if raw.len() != 33 || raw[0] != ALG_ED25519 {
            return Err(err);
        }
        let mut seed = Zeroizing::new([0u8; 32]);
        seed.copy_from_slice(&raw[1..]);
        let signer = NoteSigner::new(name, SigningKey::from_bytes(&seed)).map_err(|_| err.clone())?;
        if signer.key_hash != hash {
            return Err(err);
        }
        Ok(signer)
    }

    /// The signer key text (secret!), in the format [`NoteSigner::from_skey`] reads.
    #[must_use]
    pub fn to_skey(&self) -> Zeroizing<String> {
        let mut raw = Zeroizing::new([0u8; 33]);
        raw[0] = ALG_ED25519;
        raw[1..].copy_from_slice(self.key.as_bytes());
        let key64 = Zeroizing::new(STRICT_BASE64.encode(&raw[..]));
        let mut out =
            Zeroizing::new(String::with_capacity(SKEY_PREFIX.len() + self.name.len() + 10 + key64.len()));
        out.push_str(SKEY_PREFIX);
        out.push_str(&self.name);
        out.push('+');
        out.push_str(&hex_key_hash(self.key_hash));
        out.push('+');
        out.push_str(&key64);
        out
    }

    /// The key name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key hash (key ID).
    #[must_use]
    pub fn key_hash(&self) -> [u8; 4] {
        self.key_hash
    }

    /// The Ed25519 key itself (to sign ledger events with the same identity).
    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    /// The Ed25519 public key.
    #[must_use]
    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The matching verifier.
    #[must_use]
    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier { name: self.name.clone(), key_hash: self.key_hash, key: self.key.verifying_key() }
    }

    fn signature_line(&self, text: &[u8]) -> String {
        let sig = self.key.sign(text).to_bytes();
        let mut raw = [0u8; 4 + 64];
        raw[..4].copy_from_slice(&self.key_hash);
        raw[4..].copy_from_slice(&sig);
        format!("{SIG_PREFIX}{} {}\n", self.name, STRICT_BASE64.encode(raw))
    }
}

/// An Ed25519 note verifier key with its key name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    key_hash: [u8; 4],
    key: VerifyingKey,
}

impl NoteVerifier {
    /// A verifier for `key` under the key name `name`. Weak (small-order) keys
    /// are refused with [`NoteError::InvalidVerifierKey`].
    pub fn new(name: &str, key: VerifyingKey) -> Result<Self, NoteError> {
        if !is_valid_key_name(name) {
            return Err(NoteError::InvalidKeyName);
        }
        if key.is_weak() {
            return Err(NoteError::InvalidVerifierKey);
        }
        Ok(NoteVerifier { name: name.to_owned(), key_hash: key_hash(name, key.as_bytes()), key })
    }

    /// Parses a verifier key text `<name>+<hash>+<base64(0x01 || public key)>`
    /// (Go's `note.NewVerifier` format). Every failure is
    /// [`NoteError::InvalidVerifierKey`].
    pub fn from_vkey(vkey: &str) -> Result<Self, NoteError> {
        let err = NoteError::InvalidVerifierKey;
        if vkey.len() > MAX_KEY_TEXT_SIZE {
            return Err(err);
        }
        let (name, hash, key64) = split_key_text(vkey).ok_or(err.clone())?;
        if !is_valid_key_name(name) {
            return Err(err);
        }
        let raw = STRICT_BASE64.decode(key64).map_err(|_| err.clone())?;
        let Some((&ALG_ED25519, key)) = raw.split_first() else {
            return Err(err);
        };
        let key: &[u8; 32] = key.try_into().map_err(|_| err.clone())?;
        if key_hash(name, key) != hash {
            return Err(err);
        }
        let key = VerifyingKey::from_bytes(key).map_err(|_| err.clone())?;
        NoteVerifier::new(name, key).map_err(|_| err)
    }

    /// The verifier key text, in the format [`NoteVerifier::from_vkey`] reads.
    #[must_use]
    pub fn to_vkey(&self) -> String {
        let mut raw = [0u8; 33];
        raw[0] = ALG_ED25519;
        raw[1..].copy_from_slice(self.key.as_bytes());
        format!("{}+{}+{}", self.name, hex_key_hash(self.key_hash), STRICT_BASE64.encode(raw))
    }

    /// The key name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key hash (key ID).
    #[must_use]
    pub fn key_hash(&self) -> [u8; 4] {
        self.key_hash
    }

    /// The Ed25519 public key.
    #[must_use]
    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.key
    }

    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        match Signature::from_slice(sig) {
            Ok(sig) => self.key.verify_strict(msg, &sig).is_ok(),
            Err(_) => false,
        }
    }
}

impl fmt::Display for NoteVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_vkey())
    }
}

impl std::str::FromStr for NoteVerifier {
    type Err = NoteError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NoteVerifier::from_vkey(s)
    }
}

/// One signature line of a note, verified or not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoteSignature {
    /// Key name.
    pub name: String,
    /// Key hash (key ID): the first 4 decoded bytes.
    pub key_hash: [u8; 4],
    /// The signature bytes after the key hash (64 bytes for Ed25519).
    pub signature: Vec<u8>,
}

/// A parsed, **unverified** signed note. Only [`Note::parse`] builds one, so
/// it always satisfies the format rules and [`Note::to_bytes`] reproduces the
/// parsed bytes exactly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    text: String,
    signatures: Vec<NoteSignature>,
}

/// The text of a note with at least one verified signature from a known key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedNote {
    /// The note text, including its final newline.
    pub text: String,
    /// Names of the known keys whose signatures verified, once per distinct
    /// (name, key hash), in the order of their first signature line.
    pub verified_by: Vec<String>,
}

fn has_forbidden_control(s: &str) -> bool {
    s.bytes().any(|b| b < 0x20 && b != b'\n')
}

fn check_text(text: &str) -> Result<(), NoteError> {
    if text.len() > MAX_NOTE_SIZE {
        return Err(NoteError::TooLarge);
    }
    if !text.ends_with('\n') {
        return Err(NoteError::Malformed("text must end with a newline"));
    }
    if has_forbidden_control(text) {
        return Err(NoteError::Malformed("control character other than newline"));
    }
    Ok(())
}

impl Note {
    /// Parses a signed note without verifying any signature (see the module
    /// docs for the exact rules). Use [`open`] or [`Note::verify`] before
    /// trusting the text.
    pub fn parse(msg: &[u8]) -> Result<Note, NoteError> {
        if msg.len() > MAX_NOTE_SIZE {
            return Err(NoteError::TooLarge);
        }
        let s = std::str::from_utf8(msg).map_err(|_| NoteError::Malformed("not valid UTF-8"))?;
        if has_forbidden_control(s) {
            return Err(NoteError::Malformed("control character other than newline"));
        }
        let split = s.rfind("\n\n").ok_or(NoteError::Malformed("no blank line before the signatures"))?;
        let (text, sigs) = (&s[..split + 1], &s[split + 2..]);
        let body =
            sigs.strip_suffix('\n').ok_or(NoteError::Malformed("missing signature block final newline"))?;
        if body.is_empty() {
            // `sigs` was exactly "\n"; impossible since that would make a later
            // "\n\n", but keep the rule explicit.
            return Err(NoteError::Malformed("no signature line"));
        }
        if body.split('\n').count() > MAX_SIGNATURES {
            return Err(NoteError::TooManySignatures);
        }
        let mut signatures = Vec::new();
        for line in body.split('\n') {
            let line = line
                .strip_prefix(SIG_PREFIX)
                .ok_or(NoteError::Malformed("signature line must start with an em dash and a space"))?;
            let (name, b64) = line
                .split_once(' ')
                .ok_or(NoteError::Malformed("signature line has no space after the key name"))?;
            if !is_valid_key_name(name) {
                return Err(NoteError::Malformed("invalid key name in signature line"));
            }
            let raw = STRICT_BASE64
                .decode(b64)
                .map_err(|_| NoteError::Malformed("signature is not canonical base64"))?;
            if raw.len() < 5 {
                return Err(NoteError::Malformed("signature too short"));
            }
            let (hash, sig) = raw.split_at(4);
            signatures.push(NoteSignature {
                name: name.to_owned(),
                key_hash: [hash[0], hash[1], hash[2], hash[3]],
                signature: sig.to_vec(),
            });
        }
        Ok(Note { text: text.to_owned(), signatures })
    }

    /// The (unverified) note text, including its final newline.
    #[must_use]
    pub fn text(&self) -> &str {
        &self.text
    }

    /// All signature lines, in order, verified or not.
    #[must_use]
    pub fn signatures(&self) -> &[NoteSignature] {
        &self.signatures
    }

    /// The signed note encoding (identical to the bytes it was parsed from).
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_string().into_bytes()
    }

    /// Verifies the signatures against `verifiers` (see the module docs):
    /// unknown keys are ignored, every known key's signature must verify, and
    /// at least one must.
    pub fn verify(&self, verifiers: &[NoteVerifier]) -> Result<VerifiedNote, NoteError> {
        let mut verified: Vec<(&str, [u8; 4])> = Vec::new();
        for sig in &self.signatures {
            let mut matching = verifiers.iter().filter(|v| v.name == sig.name && v.key_hash == sig.key_hash);
            let Some(v) = matching.next() else {
                continue; // unknown key: ignored
            };
            if matching.any(|other| other.key != v.key) {
                return Err(NoteError::AmbiguousVerifier { name: v.name.clone() });
            }
            if !v.verify(self.text.as_bytes(), &sig.signature) {
                return Err(NoteError::InvalidSignature { name: v.name.clone() });
            }
            if !verified.contains(&(v.name.as_str(), v.key_hash)) {
                verified.push((v.name.as_str(), v.key_hash));
            }
        }
        if verified.is_empty() {
            return Err(NoteError::UnverifiedNote);
        }
        Ok(VerifiedNote {
            text: self.text.clone(),
            verified_by: verified.into_iter().map(|(n, _)| n.to_owned()).collect(),
        })
    }
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)?;
        f.write_str("\n")?;
        for sig in &self.signatures {
            let mut raw = Vec::with_capacity(4 + sig.signature.len());
            raw.extend_from_slice(&sig.key_hash);
            raw.extend_from_slice(&sig.signature);
            writeln!(f, "{SIG_PREFIX}{} {}", sig.name, STRICT_BASE64.encode(raw))?;
        }
        Ok(())
    }
}

/// Signs `text` with every signer and returns the full signed note.
///
/// `text` must end with a newline and contain no control character other
/// than newline; at least one signer is required and no key may appear
/// twice. Ed25519 is deterministic, so the output is a function of the input.
pub fn sign(text: &str, signers: &[&NoteSigner]) -> Result<String, NoteError> {
    check_text(text)?;
    if signers.is_empty() {
        return Err(NoteError::Malformed("at least one signer is required"));
    }
    if signers.len() > MAX_SIGNATURES {
        return Err(NoteError::TooManySignatures);
    }
    for (i, s) in signers.iter().enumerate() {
        if signers[..i].iter().any(|o| o.name == s.name && o.key_hash == s.key_hash) {
            return Err(NoteError::Malformed("duplicate signer"));
        }
    }
    let mut out = String::with_capacity(text.len() + 1 + signers.len() * 128);
    out.push_str(text);
    out.push('\n');
    for s in signers {
        out.push_str(&s.signature_line(text.as_bytes()));
        if out.len() > MAX_NOTE_SIZE {
            return Err(NoteError::TooLarge);
        }
    }
    Ok(out)
}

/// Parses `note` and verifies it against `verifiers`: signatures from unknown
/// keys are ignored, a known key's invalid signature is an error, and at least
/// one known signature must verify.
pub fn open(note: &[u8], verifiers: &[NoteVerifier]) -> Result<VerifiedNote, NoteError> {
    Note::parse(note)?.verify(verifiers)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde::Deserialize;

    const VECTORS: &str = include_str!("../../../schema/vectors/signed-note-external.json");

    #[derive(Deserialize)]
    struct Vectors {
        keys: Vec<KeyVector>,
        bad_vkeys: Vec<BadVkey>,
        signed_notes: Vec<NoteVector>,
        malformed_notes: Vec<MalformedNote>,
    }

    #[derive(Deserialize)]
    struct KeyVector {
        source: String,
        name: String,
        key_hash: String,
        vkey: String,
        skey: Option<String>,
    }

    #[derive(Deserialize)]
    struct BadVkey {
        vkey: String,
    }

    #[derive(Deserialize)]
    struct SigVector {
        name: String,
        key_hash: String,
    }

    #[derive(Deserialize)]
    struct NoteVector {
        source: String,
        text: String,
        signed_note: String,
        signatures: Vec<SigVector>,
        verifiers: Vec<String>,
        expect: String,
        verified_by: Vec<String>,
        resign_with: Vec<String>,
    }

    #[derive(Deserialize)]
    struct MalformedNote {
        source: String,
        note: String,
    }

    fn vectors() -> Vectors {
        serde_json::from_str(VECTORS).unwrap()
    }

    fn key<'a>(v: &'a Vectors, name: &str) -> &'a KeyVector {
        v.keys.iter().find(|k| k.name == name).unwrap()
    }

    fn peter() -> (NoteSigner, NoteVerifier) {
        let v = vectors();
        let k = key(&v, "PeterNeumann");
        (
            NoteSigner::from_skey(k.skey.as_deref().unwrap()).unwrap(),
            NoteVerifier::from_vkey(&k.vkey).unwrap(),
        )
    }

    fn peter_note() -> String {
        vectors().signed_notes[0].signed_note.clone()
    }

    fn test_signer(name: &str, seed: u8) -> NoteSigner {
        NoteSigner::new(name, SigningKey::from_bytes(&[seed; 32])).unwrap()
    }

    #[test]
    fn external_keys() {
        let v = vectors();
        assert!(v.keys.len() >= 3);
        for k in &v.keys {
            let ver = NoteVerifier::from_vkey(&k.vkey).unwrap_or_else(|e| panic!("{}: {e}", k.source));
            assert_eq!(ver.name(), k.name);
            assert_eq!(hex::encode(ver.key_hash()), k.key_hash, "{}", k.source);
            assert_eq!(key_hash(&k.name, ver.verifying_key().as_bytes()), ver.key_hash());
            assert_eq!(ver.to_vkey(), k.vkey, "vkey must round-trip byte for byte");
            assert_eq!(k.vkey.parse::<NoteVerifier>().unwrap(), ver);
            if let Some(skey) = &k.skey {
                let s = NoteSigner::from_skey(skey).unwrap();
                assert_eq!(s.name(), k.name);
                assert_eq!(hex::encode(s.key_hash()), k.key_hash);
                assert_eq!(s.verifier(), ver);
                assert_eq!(s.to_skey().as_str(), skey.as_str());
            }
        }
        for b in &v.bad_vkeys {
            assert_eq!(NoteVerifier::from_vkey(&b.vkey), Err(NoteError::InvalidVerifierKey));
        }
    }

    /// As Go's TestNewVerifier / TestNewSigner: every proper substring and
    /// every single-byte increment of the key texts is refused.
    #[test]
    fn mangled_key_texts_rejected() {
        let v = vectors();
        let k = key(&v, "PeterNeumann");
        for text in [k.vkey.as_str(), k.skey.as_deref().unwrap()] {
            let b = text.as_bytes();
            let parse = |s: &[u8]| -> bool {
                match std::str::from_utf8(s) {
                    Ok(s) => NoteVerifier::from_vkey(s).is_ok() || NoteSigner::from_skey(s).is_ok(),
                    Err(_) => false,
                }
            };
            assert!(parse(b));
            for i in 0..=b.len() {
                for j in i + 1..=b.len() {
                    if i != 0 || j != b.len() {
                        assert!(!parse(&b[i..j]), "{:?}", &text[i..j]);
                    }
                }
            }
            let mut m = b.to_vec();
            for i in 0..m.len() {
                m[i] = m[i].wrapping_add(1);
                assert!(!parse(&m), "increment at {i}");
                m[i] = m[i].wrapping_sub(1);
            }
        }
        // uppercase hex, trailing newline, whitespace: strict
        let upper = k.vkey.replace("c74f20a3", "C74F20A3");
        assert!(NoteVerifier::from_vkey(&upper).is_err());
        assert!(NoteVerifier::from_vkey(&format!("{}\n", k.vkey)).is_err());
        assert!(NoteVerifier::from_vkey(&format!(" {}", k.vkey)).is_err());
        assert!(NoteVerifier::from_vkey(&"a".repeat(MAX_KEY_TEXT_SIZE + 1)).is_err());
    }

    #[test]
    fn external_signed_notes() {
        let v = vectors();
        for n in &v.signed_notes {
            let verifiers: Vec<NoteVerifier> = n
                .verifiers
                .iter()
                .map(|name| NoteVerifier::from_vkey(&key(&v, name).vkey).unwrap())
                .collect();
            // Parsing is independent of the keys.
            let parsed = Note::parse(n.signed_note.as_bytes()).unwrap();
            assert_eq!(parsed.text(), n.text, "{}", n.source);
            assert_eq!(parsed.to_bytes(), n.signed_note.as_bytes());
            assert_eq!(parsed.signatures().len(), n.signatures.len());
            for (got, want) in parsed.signatures().iter().zip(&n.signatures) {
                assert_eq!(got.name, want.name);
                assert_eq!(hex::encode(got.key_hash), want.key_hash);
                if n.expect != "note.invalid_signature" {
                    assert_eq!(got.signature.len(), 64);
                }
            }
            let res = open(n.signed_note.as_bytes(), &verifiers);
            match n.expect.as_str() {
                "ok" => {
                    let vn = res.unwrap_or_else(|e| panic!("{}: {e}", n.source));
                    assert_eq!(vn.text, n.text);
                    assert_eq!(vn.verified_by, n.verified_by);
                }
                code => assert_eq!(res.unwrap_err().code(), code, "{}", n.source),
            }
            if !n.resign_with.is_empty() {
                let signers: Vec<NoteSigner> = n
                    .resign_with
                    .iter()
                    .map(|name| NoteSigner::from_skey(key(&v, name).skey.as_deref().unwrap()).unwrap())
                    .collect();
                let refs: Vec<&NoteSigner> = signers.iter().collect();
                assert_eq!(sign(&n.text, &refs).unwrap(), n.signed_note, "{}", n.source);
            }
        }
    }

    #[test]
    fn external_malformed_notes() {
        let (_, pv) = peter();
        for m in vectors().malformed_notes {
            let err = open(m.note.as_bytes(), std::slice::from_ref(&pv)).unwrap_err();
            assert_eq!(err.code(), "note.malformed", "{}", m.source);
        }
        // Go's "\xff" + text case (not representable in JSON).
        let mut bad = vec![0xffu8];
        bad.extend_from_slice(peter_note().as_bytes());
        assert_eq!(open(&bad, &[pv]).unwrap_err(), NoteError::Malformed("not valid UTF-8"));
    }

    #[test]
    fn every_single_byte_alteration_rejected() {
        let (_, pv) = peter();
        let good = peter_note().into_bytes();
        assert!(open(&good, std::slice::from_ref(&pv)).is_ok());
        for i in 0..good.len() {
            for bit in 0..8 {
                let mut m = good.clone();
                m[i] ^= 1 << bit;
                match open(&m, std::slice::from_ref(&pv)) {
                    Ok(_) => panic!("flip of bit {bit} at byte {i} accepted"),
                    Err(e) => {
                        // If it still parses, verification must be what failed.
                        if Note::parse(&m).is_ok() {
                            assert!(
                                matches!(e, NoteError::InvalidSignature { .. } | NoteError::UnverifiedNote),
                                "byte {i} bit {bit}: {e:?}"
                            );
                        }
                    }
                }
            }
        }
        // Dropping any single byte is rejected too.
        for i in 0..good.len() {
            let mut m = good.clone();
            m.remove(i);
            assert!(open(&m, std::slice::from_ref(&pv)).is_err(), "removal at {i}");
        }
    }

    #[test]
    fn altered_signature_bytes_rejected() {
        let (ps, pv) = peter();
        let note = Note::parse(peter_note().as_bytes()).unwrap();
        for i in 0..64 {
            let mut n = note.clone();
            n.signatures[0].signature[i] ^= 0x01;
            let bytes = n.to_bytes();
            assert_eq!(
                open(&bytes, std::slice::from_ref(&pv)),
                Err(NoteError::InvalidSignature { name: "PeterNeumann".into() })
            );
        }
        // Truncated / extended signature from a known key: invalid signature.
        for len in [1usize, 63, 65] {
            let mut n = note.clone();
            n.signatures[0].signature.resize(len, 0);
            assert_eq!(
                open(&n.to_bytes(), std::slice::from_ref(&pv)).unwrap_err().code(),
                "note.invalid_signature"
            );
        }
        // A signature over different text.
        let other = sign("some other text\n", &[&ps]).unwrap();
        let other = Note::parse(other.as_bytes()).unwrap();
        let mut n = note.clone();
        n.signatures[0] = other.signatures[0].clone();
        assert_eq!(open(&n.to_bytes(), &[pv]).unwrap_err().code(), "note.invalid_signature");
    }

    #[test]
    fn wrong_key_rejected() {
        let text = "hello\n";
        let a = test_signer("example.com/a", 1);
        // Same name, different key: different key hash, so it is an unknown key.
        let a2 = test_signer("example.com/a", 2);
        let signed = sign(text, &[&a]).unwrap();
        assert_eq!(open(signed.as_bytes(), &[a2.verifier()]), Err(NoteError::UnverifiedNote));
        // Verifier claiming a's name and hash but holding another key (a
        // key-hash collision forged into the config): must fail verification.
        let forged = NoteVerifier { name: a.name.clone(), key_hash: a.key_hash, key: a2.verifying_key() };
        assert_eq!(
            open(signed.as_bytes(), std::slice::from_ref(&forged)),
            Err(NoteError::InvalidSignature { name: "example.com/a".into() })
        );
        // Same (name, hash) with two different keys: ambiguous.
        assert_eq!(
            open(signed.as_bytes(), &[a.verifier(), forged]).unwrap_err().code(),
            "note.ambiguous_verifier"
        );
        // Identical duplicate verifiers are fine.
        assert!(open(signed.as_bytes(), &[a.verifier(), a.verifier()]).is_ok());
    }

    #[test]
    fn unknown_and_known_signatures() {
        let text = "checkpoint\n";
        let log = test_signer("log.example/a", 1);
        let witness = test_signer("witness.example/w", 2);
        let unknown = test_signer("log.example/a", 3); // same name, other key
        let both = sign(text, &[&log, &witness, &unknown]).unwrap();

        // Unknown only.
        let only_unknown = sign(text, &[&witness]).unwrap();
        assert_eq!(open(only_unknown.as_bytes(), &[log.verifier()]), Err(NoteError::UnverifiedNote));
        assert_eq!(open(only_unknown.as_bytes(), &[]), Err(NoteError::UnverifiedNote));

        // Unknown + known valid.
        let vn = open(both.as_bytes(), &[log.verifier()]).unwrap();
        assert_eq!(vn.text, text);
        assert_eq!(vn.verified_by, vec!["log.example/a".to_owned()]);
        let vn = open(both.as_bytes(), &[witness.verifier(), log.verifier()]).unwrap();
        assert_eq!(vn.verified_by, vec!["log.example/a".to_owned(), "witness.example/w".to_owned()]);

        // Known invalid + known valid: error, wherever the invalid one is.
        let mut n = Note::parse(both.as_bytes()).unwrap();
        n.signatures[1].signature[0] ^= 0x80;
        let bad = n.to_bytes();
        assert_eq!(
            open(&bad, &[log.verifier(), witness.verifier()]),
            Err(NoteError::InvalidSignature { name: "witness.example/w".into() })
        );
        // ... while the corrupted one is ignored when its key is not known.
        assert!(open(&bad, &[log.verifier()]).is_ok());

        // Duplicate valid signature lines by one key count once.
        let dup = format!("{both}{}", both.lines().last().unwrap().to_owned() + "\n");
        let vn = open(dup.as_bytes(), &[log.verifier(), unknown.verifier()]).unwrap();
        assert_eq!(vn.verified_by, vec!["log.example/a".to_owned(), "log.example/a".to_owned()]);
    }

    #[test]
    fn structural_rejections() {
        let (_, pv) = peter();
        let good = peter_note();
        let check = |s: &str, code: &str| {
            assert_eq!(open(s.as_bytes(), std::slice::from_ref(&pv)).unwrap_err().code(), code, "{s:?}");
        };
        // Missing blank line.
        check(&good.replacen("\n\n", "\n", 1), "note.malformed");
        // Bad em dash: en dash, hyphen, no space, two spaces.
        check(&good.replace('\u{2014}', "\u{2013}"), "note.malformed");
        check(&good.replace('\u{2014}', "-"), "note.malformed");
        check(&good.replace("\u{2014} ", "\u{2014}"), "note.malformed");
        check(&good.replace("\u{2014} ", "\u{2014}  "), "note.malformed");
        check(&good.replace("PeterNeumann ", "PeterNeumann  "), "note.malformed");
        // No trailing newline.
        check(good.trim_end_matches('\n'), "note.malformed");
        // CRLF line endings.
        check(&good.replace('\n', "\r\n"), "note.malformed");
        // Text without final newline can't exist: the split point defines it,
        // but a text that is *only* the signature block can't either.
        check(&good[good.find('\u{2014}').unwrap()..], "note.malformed");
        // Tab and other controls anywhere.
        check(&good.replacen("If", "If\t", 1), "note.malformed");
        check(&good.replacen("If", "If\u{0}", 1), "note.malformed");
        // Non-canonical base64: missing padding, trailing bits set.
        check(&good.replace("AM=\n", "AM\n"), "note.malformed");
        check(&good.replace("AM=\n", "AN=\n"), "note.malformed");
        // Too short a signature (4 bytes: key hash only).
        check(&good.replace("x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=", "x08gow=="), "note.malformed");
        // Key names: plus sign, empty.
        check(&good.replace("PeterNeumann", "Peter+Neumann"), "note.malformed");
        check(&good.replace("PeterNeumann", ""), "note.malformed");
        // Non-breaking space inside the name is Unicode white space.
        check(&good.replace("PeterNeumann", "Peter\u{a0}Neumann"), "note.malformed");
    }

    #[test]
    fn text_with_empty_lines_round_trips() {
        let s = test_signer("example.com/k", 7);
        for text in ["\n", "a\n\n", "a\n\nb\n", "a\n\n\n\nb\n\n", "\u{2014} x\n\n\u{2014} y\n"] {
            let signed = sign(text, &[&s]).unwrap();
            let vn = open(signed.as_bytes(), &[s.verifier()]).unwrap();
            assert_eq!(vn.text, text);
            assert_eq!(Note::parse(signed.as_bytes()).unwrap().to_string(), signed);
        }
    }

    #[test]
    fn sign_rejections() {
        let s = test_signer("example.com/k", 7);
        assert_eq!(sign("abc", &[&s]).unwrap_err().code(), "note.malformed");
        assert_eq!(sign("", &[&s]).unwrap_err().code(), "note.malformed");
        assert_eq!(sign("a\rb\n", &[&s]).unwrap_err().code(), "note.malformed");
        assert_eq!(sign("a\n", &[]).unwrap_err().code(), "note.malformed");
        assert_eq!(sign("a\n", &[&s, &s]).unwrap_err().code(), "note.malformed");
        let big = "a".repeat(MAX_NOTE_SIZE) + "\n";
        assert_eq!(sign(&big, &[&s]), Err(NoteError::TooLarge));
        let near = "a".repeat(MAX_NOTE_SIZE - 10) + "\n";
        assert_eq!(sign(&near, &[&s]), Err(NoteError::TooLarge));
        // Key names.
        for bad in ["", "a b", "a+b", "a\tb", "a\u{3000}b", "a\u{1}b", "a\nb"] {
            assert_eq!(
                NoteSigner::new(bad, SigningKey::from_bytes(&[1; 32])).unwrap_err(),
                NoteError::InvalidKeyName
            );
            assert_eq!(NoteVerifier::new(bad, s.verifying_key()).unwrap_err(), NoteError::InvalidKeyName);
        }
    }

    #[test]
    fn limits() {
        let (_, pv) = peter();
        let good = peter_note();
        let (text, sigs) = good.split_at(good.find("\n\n").unwrap() + 2);
        let at_limit = format!("{text}{}", sigs.repeat(MAX_SIGNATURES));
        assert!(open(at_limit.as_bytes(), std::slice::from_ref(&pv)).is_ok());
        let over = format!("{text}{}", sigs.repeat(MAX_SIGNATURES + 1));
        assert_eq!(open(over.as_bytes(), std::slice::from_ref(&pv)), Err(NoteError::TooManySignatures));
        assert_eq!(open(over.as_bytes(), &[]), Err(NoteError::TooManySignatures));
        let huge = vec![b'a'; MAX_NOTE_SIZE + 1];
        assert_eq!(Note::parse(&huge), Err(NoteError::TooLarge));
        // The spec's minimum: 16 signatures (here from distinct keys) are accepted.
        let signers: Vec<NoteSigner> = (0..16u8).map(|i| test_signer(&format!("w{i}"), i)).collect();
        let refs: Vec<&NoteSigner> = signers.iter().collect();
        let signed = sign("t\n", &refs).unwrap();
        let vs: Vec<NoteVerifier> = signers.iter().map(NoteSigner::verifier).collect();
        assert_eq!(open(signed.as_bytes(), &vs).unwrap().verified_by.len(), 16);
        let too_many: Vec<NoteSigner> =
            (0..=MAX_SIGNATURES).map(|i| test_signer(&format!("w{i}"), 1)).collect();
        let refs: Vec<&NoteSigner> = too_many.iter().collect();
        assert_eq!(sign("t\n", &refs), Err(NoteError::TooManySignatures));
    }

    #[test]
    fn weak_verifier_key_refused() {
        // The identity point (small order) encodes as 0x01 followed by zeros.
        let mut b = [0u8; 32];
        b[0] = 1;
        let weak = VerifyingKey::from_bytes(&b).unwrap();
        assert_eq!(NoteVerifier::new("x", weak), Err(NoteError::InvalidVerifierKey));
        let mut raw = vec![ALG_ED25519];
        raw.extend_from_slice(&b);
        let vkey = format!("x+{}+{}", hex_key_hash(key_hash("x", &b)), STRICT_BASE64.encode(raw));
        assert_eq!(NoteVerifier::from_vkey(&vkey), Err(NoteError::InvalidVerifierKey));
    }

    #[test]
    fn skey_round_trip_and_debug_redacts() {
        let s = NoteSigner::generate("example.com/gen", &mut rand_core::OsRng).unwrap();
        let s2 = NoteSigner::from_skey(&s.to_skey()).unwrap();
        assert_eq!(s.verifier(), s2.verifier());
        assert_eq!(NoteVerifier::from_vkey(&s.verifier().to_vkey()).unwrap(), s.verifier());
        let dbg = format!("{s:?}");
        // "PRIVATE+KEY+<name>+<hash>+<base64>": the base64 may itself contain '+', so
        // take everything after the fourth separator, not after the last.
        let key64 = s.to_skey().splitn(5, '+').nth(4).unwrap().to_owned();
        assert_eq!(key64.len(), 44, "33 bytes in base64");
        assert!(!dbg.contains(&key64));
        assert!(dbg.contains("example.com/gen"));
        // A skey whose hash does not match the derived public key is refused.
        let other = test_signer("example.com/gen", 9);
        let forged = other.to_skey().replace(&hex_key_hash(other.key_hash()), &hex_key_hash(s.key_hash()));
        assert_eq!(NoteSigner::from_skey(&forged).unwrap_err(), NoteError::InvalidSignerKey);
    }

    #[test]
    fn error_codes_are_stable_and_do_not_echo_input() {
        let long_name = "n".repeat(10_000);
        let s = test_signer(&long_name, 1);
        let signed = sign("x\n", &[&s]).unwrap();
        let err = open(signed.as_bytes(), &[]).unwrap_err();
        assert_eq!(err.code(), "note.unverified");
        assert!(err.to_string().len() < 100);
        let err = open(format!("{signed}junk\n").as_bytes(), &[]).unwrap_err();
        assert!(err.to_string().len() < 100);
        for (e, c) in [
            (NoteError::Malformed("x"), "note.malformed"),
            (NoteError::TooLarge, "note.too_large"),
            (NoteError::TooManySignatures, "note.too_many_signatures"),
            (NoteError::InvalidKeyName, "note.invalid_key_name"),
            (NoteError::InvalidVerifierKey, "note.invalid_verifier_key"),
            (NoteError::InvalidSignerKey, "note.invalid_signer_key"),
            (NoteError::AmbiguousVerifier { name: "a".into() }, "note.ambiguous_verifier"),
            (NoteError::UnverifiedNote, "note.unverified"),
            (NoteError::InvalidSignature { name: "a".into() }, "note.invalid_signature"),
        ] {
            assert_eq!(e.code(), c);
        }
    }
}
