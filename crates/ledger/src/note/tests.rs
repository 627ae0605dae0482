use super::*;
use serde::Deserialize;

const VECTORS: &str = include_str!("../../../../schema/vectors/signed-note-external.json");

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
    (NoteSigner::from_skey(k.skey.as_deref().unwrap()).unwrap(), NoteVerifier::from_vkey(&k.vkey).unwrap())
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
        let verifiers: Vec<NoteVerifier> =
            n.verifiers.iter().map(|name| NoteVerifier::from_vkey(&key(&v, name).vkey).unwrap()).collect();
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
    check(
        &good.replace(
            "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=",
            "x08gow==",
        ),
        "note.malformed",
    );
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
    let too_many: Vec<NoteSigner> = (0..=MAX_SIGNATURES).map(|i| test_signer(&format!("w{i}"), 1)).collect();
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
