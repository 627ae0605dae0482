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
mod tests;
