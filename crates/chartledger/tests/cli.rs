//! The binary, driven as a user would.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

fn chartledger(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chartledger")).args(args).output().unwrap()
}

fn vectors() -> serde_json::Value {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../schema/vectors/ledger-v1.json"))
            .unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn keys_generate_writes_a_private_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.key");
    let out = chartledger(&["keys", "generate", "--out", path.to_str().unwrap(), "--name", "example.org/cl"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("key id:"));
    let vkey = stdout.lines().find_map(|l| l.strip_prefix("verifier:")).unwrap().trim().to_owned();
    assert!(vkey.starts_with("example.org/cl+"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let skey = std::fs::read_to_string(&path).unwrap();
    let signer = ledger::note::NoteSigner::from_skey(skey.trim()).unwrap();
    assert_eq!(signer.verifier().to_vkey(), vkey);
    // Never overwrite an existing key.
    let again = chartledger(&["keys", "generate", "--out", path.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(2));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), skey);
}

#[test]
fn checkpoint_verify_accepts_the_vector_and_rejects_alterations() {
    let v = vectors();
    let note = v["checkpoint"]["signed_note"].as_str().unwrap().to_owned();
    let vkey = v["signing_key"]["note_vkey"].as_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cp.txt");
    let check = |text: &str| {
        std::fs::write(&file, text).unwrap();
        chartledger(&["checkpoint", "verify", file.to_str().unwrap(), "--key", vkey])
    };
    let ok = check(&note);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let stdout = String::from_utf8(ok.stdout).unwrap();
    assert!(stdout.contains("tree size:   4"), "{stdout}");
    assert!(stdout.contains("taken at:    2026-11-23T12:00:03.000000Z"), "{stdout}");

    // Altered text: another tree size.
    let altered = note.replacen("\n4\n", "\n5\n", 1);
    let out = check(&altered);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("REJECTED"));
    // Altered signature: change one base64 character of the signature.
    let sig_at = note.rfind(' ').unwrap() + 10;
    let mut bytes = note.clone().into_bytes();
    bytes[sig_at] = if bytes[sig_at] == b'A' { b'B' } else { b'A' };
    let out = check(&String::from_utf8(bytes).unwrap());
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("note.invalid_signature"));
    // A key that did not sign it: nothing verifies.
    let other = ledger::note::NoteSigner::generate("other.example/log", &mut rand_core::OsRng).unwrap();
    std::fs::write(&file, &note).unwrap();
    let out =
        chartledger(&["checkpoint", "verify", file.to_str().unwrap(), "--key", &other.verifier().to_vkey()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("note.unverified"));
    // A malformed key is a usage error.
    let out = chartledger(&["checkpoint", "verify", file.to_str().unwrap(), "--key", "nonsense"]);
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_verify_reports_the_first_tampered_position() {
    use store::{EventStore, ExpectedRevision, ProposedEvent, StoreConfig};
    let db = testdb::TestDb::new().await.unwrap();
    let key =
        ledger::LedgerSigningKey::new("cli.example/ledger", ed25519_dalek::SigningKey::from_bytes(&[5; 32]))
            .unwrap();
    let vkey = key.note_signer().unwrap().verifier().to_vkey();
    let store = EventStore::open(db.pool().clone(), key, StoreConfig::default()).await.unwrap();
    let stream = ledger::StreamId::new("patient-cli").unwrap();
    for i in 0..12u8 {
        let e = ProposedEvent {
            event_id: uuid::Uuid::now_v7(),
            event_type: ledger::EventType::new("a.e").unwrap(),
            schema_version: 1,
            actor: ledger::Actor::system(),
            payload: vec![i; 8],
        };
        store.append(&stream, ExpectedRevision::Any, vec![e]).await.unwrap();
    }
    store.checkpoint_now().await.unwrap();
    drop(store);
    let url = db.url().to_owned();
    let run = move |vkey: String| {
        let url = url.clone();
        std::thread::spawn(move || {
            Command::new(env!("CARGO_BIN_EXE_chartledger"))
                .args(["ledger", "verify", "--trusted-key", &vkey])
                .env("DATABASE_URL", url)
                .output()
                .unwrap()
        })
        .join()
        .unwrap()
    };
    let ok = run(vkey.clone());
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("ledger OK"));
    sqlx::raw_sql(
        "ALTER TABLE ledger_payloads DISABLE TRIGGER USER; \
         UPDATE ledger_payloads SET payload = set_byte(payload, 2, 255) WHERE position = 7; \
         ALTER TABLE ledger_payloads ENABLE TRIGGER USER;",
    )
    .execute(db.pool())
    .await
    .unwrap();
    let bad = run(vkey);
    assert_eq!(bad.status.code(), Some(1));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("FAILED at position 7") && err.contains("verify.payload_mismatch"), "{err}");
}
