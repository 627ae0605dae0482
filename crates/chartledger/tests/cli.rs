//! The binary, driven as a user would.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

mod docs;
mod read_models;

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

// ------------------------------------------------------------------ record proofs

/// Run the binary on a blocking thread (the test runtime keeps serving the database).
fn run_blocking(args: Vec<String>, env: Vec<(String, String)>) -> Output {
    std::thread::spawn(move || {
        Command::new(env!("CARGO_BIN_EXE_chartledger")).args(&args).envs(env).output().unwrap()
    })
    .join()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proof_export_from_a_real_store_verifies_offline() {
    use store::{EventStore, ExpectedRevision, ProposedEvent, StoreConfig};
    let db = testdb::TestDb::new().await.unwrap();
    let signing = |seed: u8| {
        ledger::LedgerSigningKey::new(
            format!("proof.example/key{seed}"),
            ed25519_dalek::SigningKey::from_bytes(&[seed; 32]),
        )
        .unwrap()
    };
    let (a, b) = (signing(11), signing(12));
    let vkey_a = a.note_signer().unwrap().verifier().to_vkey();
    let vkey_b = b.note_signer().unwrap().verifier().to_vkey();
    let store = EventStore::open(db.pool().clone(), a, StoreConfig::default()).await.unwrap();
    let patient = uuid::Uuid::now_v7();
    let entry = uuid::Uuid::now_v7();
    let stream = ledger::StreamId::patient(patient);
    let other = ledger::StreamId::patient(uuid::Uuid::now_v7());
    let append = |stream: ledger::StreamId, ty: &'static str, payload: String| {
        let store = store.clone();
        async move {
            let e = ProposedEvent {
                event_id: uuid::Uuid::now_v7(),
                event_type: ledger::EventType::new(ty).unwrap(),
                schema_version: 1,
                actor: ledger::Actor {
                    user_id: uuid::Uuid::from_u128(0xd0c7),
                    role: ledger::RoleName::new("physician").unwrap(),
                },
                payload: payload.into_bytes(),
            };
            store.append(&stream, ExpectedRevision::Any, vec![e]).await.unwrap();
        }
    };
    let content = r#"{"kind":"soap_note","subjective":"s","objective":"o","assessment":"a","plan":"p"}"#;
    append(stream.clone(), "patient.registered", format!(r#"{{"patient_id":"{patient}"}}"#)).await;
    append(
        stream.clone(),
        "entry.recorded",
        format!(
            r#"{{"entry_id":"{entry}","content":{content},"effective_at":"2026-11-23T08:15:00.000000Z"}}"#
        ),
    )
    .await;
    append(other.clone(), "entry.recorded", format!(r#"{{"entry_id":"{}"}}"#, uuid::Uuid::now_v7())).await;
    let old = store.checkpoint_now().await.unwrap();
    // A key rotation between the versions: the old key stays valid for what it signed.
    store.rotate_key(b).await.unwrap();
    append(stream.clone(), "care_team.member_added", r#"{"x":1}"#.to_owned()).await;
    let amendment = uuid::Uuid::now_v7();
    append(
        stream.clone(),
        "entry.amended",
        format!(
            r#"{{"amendment_id":"{amendment}","amendment_of_id":"{entry}","content":{content},"reason":"typo","effective_at":"2026-11-23T08:15:00.000000Z"}}"#
        ),
    )
    .await;
    append(
        stream.clone(),
        "entry.entered_in_error",
        format!(r#"{{"entry_id":"{entry}","reason":"wrong patient"}}"#),
    )
    .await;

    // In process: the store writes the checkpoint the events need.
    let bundle = store.entry_proof(patient, entry).await.unwrap();
    let trusted_b = [ledger::note::NoteVerifier::from_vkey(&vkey_b).unwrap()];
    let v = proof::verify(&bundle, &trusted_b).unwrap();
    assert_eq!(v.events.len(), 3);
    assert_eq!(v.chain_len, 1);
    let json = serde_json::to_vec(&bundle).unwrap();
    eprintln!("entry bundle: 3 versions, ledger of {} events: {} bytes", v.checkpoint_size, json.len());
    assert!(json.len() < 9_000, "{} bytes", json.len());
    let ev = store.event_proof(v.events[0].event_id).await.unwrap();
    proof::verify(&ev, &trusted_b).unwrap();

    // Out of process, from the database only, then verified with no database at all.
    let url = db.url().to_owned();
    let env = vec![("DATABASE_URL".to_owned(), url.clone())];
    let args = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let out = run_blocking(
        args(&[
            "proof",
            "export",
            "--entry",
            &entry.to_string(),
            "--patient",
            &patient.to_string(),
            "--consistent-from",
            &old.tree_size.to_string(),
        ]),
        env.clone(),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("proof.json");
    std::fs::write(&file, &out.stdout).unwrap();
    let path = file.to_str().unwrap().to_owned();
    let verify = |extra: &[&str]| {
        let mut a = args(&["verify", &path]);
        a.extend(args(extra));
        // No DATABASE_URL: verification needs no database.
        run_blocking(a, vec![("DATABASE_URL".to_owned(), "postgres://unused.invalid/none".to_owned())])
    };
    // Trusting the anchor (the retired key a): the registry carries the trust to b.
    let ok = verify(&["--trusted-key", &vkey_a]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(stdout.contains("proof VERIFIED"), "{stdout}");
    assert!(
        stdout.contains(&format!("subject:     entry {entry} of patient {patient}, 3 version(s)")),
        "{stdout}"
    );
    assert!(stdout.contains("version 3:   entry.entered_in_error"), "{stdout}");
    assert!(stdout.contains("author:    00000000-0000-0000-0000-00000000d0c7 (physician)"), "{stdout}");
    assert!(stdout.contains(&format!("extends:     checkpoint of size {}", old.tree_size)), "{stdout}");
    assert!(
        stdout.contains("signed by:   proof.example/key12 (a key of the registry anchored by a trusted key)"),
        "{stdout}"
    );
    assert!(stdout.contains("  signed by: proof.example/key11 (key "), "{stdout}"); // the original, before the rotation
    assert!(
        stdout.contains("keys:        2 registered in $keys (the whole registry as of the checkpoint)"),
        "{stdout}"
    );
    assert!(stdout.contains("format:      chartledger-proof/v2"), "{stdout}");
    // The independent verifier (tests/proof_verifier.py, written from the format document)
    // agrees on the bundle exported from a real store, when python3 and `cryptography` are here.
    let python = |vkey: &str| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/proof_verifier.py");
        Command::new("python3").args([script, "--trusted-key", vkey, path.as_str()]).output().unwrap()
    };
    let has_python = Command::new("python3")
        .args(["-c", "import cryptography"])
        .output()
        .is_ok_and(|o| o.status.success());
    if has_python {
        let out = python(&vkey_a);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    } else {
        eprintln!("SKIPPED the Python verifier: python3 with cryptography is not available");
    }
    // A file of trusted keys.
    let keys = dir.path().join("trusted.txt");
    std::fs::write(&keys, format!("# the current ledger key\n{vkey_b}\n")).unwrap();
    let ok = verify(&["--trusted-keys", keys.to_str().unwrap()]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));

    // One altered byte of the amendment's payload: rejected, named.
    let mut doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let payload = doc["events"][1]["payload"].as_str().unwrap().to_owned();
    let mut raw = base64_decode(&payload);
    raw[10] ^= 1;
    doc["events"][1]["payload"] = base64_encode(&raw).into();
    std::fs::write(&file, serde_json::to_vec(&doc).unwrap()).unwrap();
    let bad = verify(&["--trusted-key", &vkey_b]);
    assert_eq!(bad.status.code(), Some(1));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("REJECTED at events[1]"), "{err}");
    if has_python {
        let out = python(&vkey_b);
        assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
        assert!(String::from_utf8_lossy(&out.stdout).contains("REJECTED events[1]"));
    }
    // An untrusted key: rejected.
    std::fs::write(&file, &out.stdout).unwrap();
    let stranger = ledger::note::NoteSigner::generate("stranger.example/key", &mut rand_core::OsRng).unwrap();
    let bad = verify(&["--trusted-key", &stranger.verifier().to_vkey()]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("proof.untrusted_checkpoint"));
    // No trusted key at all, or an unknown entry: usage error and failure.
    assert_eq!(verify(&[]).status.code(), Some(2));
    let missing = run_blocking(
        args(&[
            "proof",
            "export",
            "--entry",
            &uuid::Uuid::now_v7().to_string(),
            "--patient",
            &patient.to_string(),
        ]),
        env,
    );
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("proof.not_found"));
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

// ------------------------------------------------------------------ serve

mod serve {
    mod database;

    use std::net::SocketAddr;
    use std::path::{Path, PathBuf};
    use std::process::{ExitStatus, Stdio};
    use std::sync::Arc;
    use std::time::Duration;

    use serde_json::{json, Value};
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::process::{Child, ChildStdout};

    /// How long a start may take (the first creates a PostgreSQL cluster; tests run in
    /// parallel on a small machine).
    const START: Duration = Duration::from_secs(90);
    /// How long a stop may take after SIGINT.
    const STOP: Duration = Duration::from_secs(30);

    const LOGIN: &str = "mutation($u: String!, $p: String!) { login(username: $u, password: $p) { token mfaRequired mfaEnrolled passwordChangeRequired } }";

    /// A folder under /tmp that the `postgres` OS user can traverse (the embedded cluster
    /// runs as that user when the tests run as root).
    fn data_dir() -> tempfile::TempDir {
        let dir = tempfile::Builder::new().prefix("chartledger-serve-").tempdir_in("/tmp").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        dir
    }

    /// A running `chartledger serve`.
    struct Served {
        child: Option<Child>,
        /// Everything it printed on stdout up to "listening on".
        stdout: Vec<String>,
        /// `http://ADDR` or `https://ADDR`.
        url: String,
        addr: SocketAddr,
        _rest: tokio::io::Lines<BufReader<ChildStdout>>,
        log: PathBuf,
    }

    /// Start `chartledger serve ARGS` with the environment `env` (and nothing inherited
    /// that would change what it does), logging to `log`; wait for "listening on".
    async fn start(args: &[&str], env: &[(&str, &str)], log: &Path) -> Served {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_chartledger"));
        cmd.arg("serve").args(args);
        for var in [
            "DATABASE_URL",
            "CHARTLEDGER_CONFIG",
            "CHARTLEDGER_TLS_CERT",
            "CHARTLEDGER_TLS_KEY",
            "CHARTLEDGER_BOOTSTRAP_PASSWORD",
            "CHARTLEDGER_KEY_FILE",
            "CHARTLEDGER_JSON_LOGS",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("CHARTLEDGER_LISTEN", "127.0.0.1:0").env("RUST_LOG", "info,sqlx=warn");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let log_file = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let mut child =
            cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log_file).spawn().expect("spawn serve");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut stdout = Vec::new();
        let url = tokio::time::timeout(START, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(url) = line.strip_prefix("listening on ") {
                    return Some(url.trim().to_owned());
                }
                stdout.push(line);
            }
            None
        })
        .await;
        let mut served = Served {
            child: Some(child),
            stdout,
            url: String::new(),
            addr: "0.0.0.0:0".parse().unwrap(),
            _rest: lines,
            log: log.to_owned(),
        };
        match url {
            Ok(Some(url)) => {
                served.addr = url.split("://").nth(1).unwrap().parse().unwrap();
                served.url = url;
                served
            }
            Ok(None) => {
                panic!("serve ended before listening; stdout {:?}; log:\n{}", served.stdout, served.log())
            }
            Err(_) => panic!("serve did not listen within {START:?}; log:\n{}", served.log()),
        }
    }

    impl Served {
        fn log(&self) -> String {
            std::fs::read_to_string(&self.log).unwrap_or_default()
        }

        fn printed(&self, needle: &str) -> bool {
            self.stdout.iter().any(|l| l.contains(needle))
        }

        /// The value printed after `label` (e.g. "password:").
        fn value_after(&self, label: &str) -> String {
            self.stdout
                .iter()
                .find_map(|l| l.trim().strip_prefix(label))
                .unwrap_or_else(|| panic!("{label} not printed: {:?}", self.stdout))
                .trim()
                .to_owned()
        }

        /// SIGINT (as Ctrl-C), then the exit status.
        async fn stop(mut self) -> ExitStatus {
            let mut child = self.child.take().unwrap();
            interrupt(&child);
            match tokio::time::timeout(STOP, child.wait()).await {
                Ok(status) => status.unwrap(),
                Err(_) => {
                    let _ = child.start_kill();
                    panic!("serve did not stop within {STOP:?} of SIGINT; log:\n{}", self.log());
                }
            }
        }
    }

    fn interrupt(child: &Child) {
        let pid = child.id().expect("running").to_string();
        let ok = std::process::Command::new("kill").args(["-INT", &pid]).status().unwrap();
        assert!(ok.success());
    }

    impl Drop for Served {
        /// A failed test still stops the server (and so its embedded PostgreSQL).
        fn drop(&mut self) {
            if let Some(mut child) = self.child.take() {
                if matches!(child.try_wait(), Ok(None)) {
                    interrupt(&child);
                    for _ in 0..200 {
                        if !matches!(child.try_wait(), Ok(None)) {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    let _ = child.start_kill();
                }
            }
        }
    }

    fn http() -> reqwest::Client {
        reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
    }

    /// POST /graphql; the JSON answer.
    async fn gql(url: &str, token: Option<&str>, query: &str, vars: Value) -> Value {
        let mut req = http().post(format!("{url}/graphql")).json(&json!({"query": query, "variables": vars}));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        assert!(resp.status().is_success(), "status {}", resp.status());
        resp.json().await.unwrap()
    }

    fn gql_data(v: &Value) -> &Value {
        assert!(v.get("errors").is_none(), "unexpected errors: {v}");
        &v["data"]
    }

    /// TOTP secrets of the users a test enrolled, by user name.
    type Secrets = std::collections::HashMap<String, Vec<u8>>;

    /// Log in, completing the second factor (enrolling it the first time). Returns the
    /// token, and whether the password must be replaced before anything but `me`.
    async fn sign_in(url: &str, user: &str, password: &str, secrets: &mut Secrets) -> (String, bool) {
        let r = gql(url, None, LOGIN, json!({"u": user, "p": password})).await;
        let login = &gql_data(&r)["login"];
        let token = login["token"].as_str().unwrap().to_owned();
        if login["mfaRequired"] == json!(true) {
            if login["mfaEnrolled"] == json!(false) {
                let e = gql(url, Some(&token), "mutation { enrollMfa { secret } }", json!({})).await;
                let b32 = gql_data(&e)["enrollMfa"]["secret"].as_str().unwrap().to_owned();
                secrets.insert(user.to_owned(), totp_rs::Secret::Encoded(b32).to_bytes().unwrap());
            }
            let secret = secrets.get(user).expect("enrolled earlier in this test").clone();
            let code = next_code(&secret).await;
            let v =
                gql(url, Some(&token), "mutation($c: String!) { verifyMfa(code: $c) }", json!({"c": code}))
                    .await;
            assert_eq!(gql_data(&v)["verifyMfa"], json!(true));
        }
        let me = gql(url, Some(&token), "{ me { userId role } }", json!({})).await;
        assert!(gql_data(&me)["me"]["userId"].is_string());
        (token, login["passwordChangeRequired"] == json!(true))
    }

    /// A code for a TOTP step not yet used with this secret: each step is accepted once,
    /// and only the current one and its neighbours are (so a third login within one step
    /// waits for the clock).
    async fn next_code(secret: &[u8]) -> String {
        static USED: std::sync::Mutex<std::collections::BTreeMap<Vec<u8>, u64>> =
            std::sync::Mutex::new(std::collections::BTreeMap::new());
        loop {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
            let current = now / 30;
            let step = {
                let mut used = USED.lock().unwrap();
                let step = used.get(secret).map_or(current, |last| (last + 1).max(current));
                (step <= current + 1).then(|| used.insert(secret.to_vec(), step)).map(|_| step)
            };
            match step {
                Some(step) => return api::auth::totp::code_at(secret, step * 30),
                None => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }

    async fn get(url: &str, path: &str) -> (u16, String) {
        let resp = http().get(format!("{url}{path}")).send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn embedded_postgres_first_start_and_restart() {
        let dir = data_dir();
        let data = dir.path().join("data");
        let log = dir.path().join("serve.log");
        let env = [("CHARTLEDGER_DATA_DIR", data.to_str().unwrap())];

        // First start: an embedded cluster, a key, a bootstrap administrator shown once.
        let s = start(&[], &env, &log).await;
        assert!(s.url.starts_with("http://127.0.0.1:"), "{}", s.url);
        assert!(s.printed("bootstrap administrator created"), "{:?}", s.stdout);
        assert_eq!(s.value_after("user name:"), "admin");
        let password = s.value_after("password:");
        assert!(password.len() >= 20);
        let pid_file = data.join("postgres").join("postmaster.pid");
        assert!(pid_file.exists(), "the embedded PostgreSQL runs in the data folder");
        let key = std::fs::read(data.join("ledger.key")).unwrap();
        let mut secrets = Secrets::new();
        let (_, must_change) = sign_in(&s.url, "admin", &password, &mut secrets).await;
        assert!(must_change, "the bootstrap password must be replaced at the first login");
        assert_eq!(get(&s.url, "/healthz").await, (200, "ok".to_owned()));
        assert_eq!(get(&s.url, "/readyz").await, (200, "ready".to_owned()));
        let status = s.stop().await;
        assert!(status.success(), "{status:?}; log:\n{}", std::fs::read_to_string(&log).unwrap());
        assert!(!pid_file.exists(), "the embedded PostgreSQL was stopped");

        // Second start on the same folder: nothing new is created.
        let s = start(&[], &env, &log).await;
        assert!(!s.printed("bootstrap"), "{:?}", s.stdout);
        assert!(!s.stdout.iter().any(|l| l.contains(&password)));
        sign_in(&s.url, "admin", &password, &mut secrets).await;
        assert_eq!(std::fs::read(data.join("ledger.key")).unwrap(), key, "the key file is reused");
        assert_eq!(get(&s.url, "/readyz").await.0, 200);
        let status = s.stop().await;
        assert!(status.success(), "{status:?}");
        assert!(!pid_file.exists());
    }

    #[test]
    fn a_config_file_with_an_unknown_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("chartledger.toml");
        std::fs::write(&file, "data_dir = \"/nonexistent\"\nlisten_adress = \"127.0.0.1:1\"\n").unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_chartledger"))
            .args(["serve", "--config", file.to_str().unwrap()])
            .env_remove("DATABASE_URL")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("invalid configuration in") && err.contains("chartledger.toml"), "{err}");
        assert!(err.contains("unknown field `listen_adress`"), "{err}");
        assert!(out.stdout.is_empty(), "nothing started");
        assert!(!Path::new("/nonexistent").exists());

        // The same in the [api] table.
        std::fs::write(&file, "[api]\ngraphiql = false\nmax_body = 1\n").unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_chartledger"))
            .args(["serve", "--config", file.to_str().unwrap()])
            .env_remove("DATABASE_URL")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field `max_body`"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_database_url_no_embedded_cluster_runs() {
        let db = testdb::TestDb::new().await.unwrap();
        let dir = data_dir();
        let data = dir.path().join("data");
        let log = dir.path().join("serve.log");
        let env = [
            ("CHARTLEDGER_DATA_DIR", data.to_str().unwrap()),
            ("DATABASE_URL", db.url()),
            ("CHARTLEDGER_BOOTSTRAP_PASSWORD", "a bootstrap password for tests"),
        ];
        let s = start(&[], &env, &log).await;
        assert!(s.printed("bootstrap administrator created"));
        sign_in(&s.url, "admin", "a bootstrap password for tests", &mut Secrets::new()).await;
        assert_eq!(get(&s.url, "/readyz").await, (200, "ready".to_owned()));
        assert!(!data.join("postgres").exists(), "no embedded cluster");
        assert!(data.join("ledger.key").exists());
        // The ledger is in the given database.
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM ledger_events").fetch_one(db.pool()).await.unwrap();
        assert!(n > 0);
        let status = s.stop().await;
        assert!(status.success(), "{status:?}");
        assert!(!std::fs::read_to_string(&log).unwrap().contains("embedded PostgreSQL"));
    }

    // -------------------------------------------------------------- TLS

    /// A TLS connection to `addr` trusting only `cert`, offering only `versions`.
    async fn tls_connect(
        addr: SocketAddr,
        cert: &rustls::pki_types::CertificateDer<'static>,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await
    }

    /// One HTTP/1.1 request on a TLS stream; the whole answer as text.
    async fn https(
        mut tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
        method: &str,
        path: &str,
        body: &str,
    ) -> String {
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        tls.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        // Read until the server closes (with or without close_notify).
        while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut chunk)).await {
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8_lossy(&buf).into_owned()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tls_1_3_and_1_2_with_hsts_and_no_plain_http() {
        let db = testdb::TestDb::new().await.unwrap();
        let dir = data_dir();
        let data = dir.path().join("data");
        let log = dir.path().join("serve.log");
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert_file, certified.cert.pem()).unwrap();
        std::fs::write(&key_file, certified.key_pair.serialize_pem()).unwrap();
        let cert = certified.cert.der().clone();
        let env = [
            ("CHARTLEDGER_DATA_DIR", data.to_str().unwrap()),
            ("DATABASE_URL", db.url()),
            ("CHARTLEDGER_BOOTSTRAP_PASSWORD", "a bootstrap password for tests"),
            ("CHARTLEDGER_TLS_CERT", cert_file.to_str().unwrap()),
            ("CHARTLEDGER_TLS_KEY", key_file.to_str().unwrap()),
        ];
        let s = start(&[], &env, &log).await;
        assert!(s.url.starts_with("https://127.0.0.1:"), "{}", s.url);

        // A client offering 1.3 and 1.2 gets 1.3.
        let tls = tls_connect(s.addr, &cert, rustls::DEFAULT_VERSIONS).await.unwrap();
        assert_eq!(tls.get_ref().1.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
        let answer = https(tls, "GET", "/healthz", "").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let lower = answer.to_ascii_lowercase();
        assert!(lower.contains("\r\nstrict-transport-security: max-age="), "{answer}");
        assert!(answer.ends_with("ok"), "{answer}");

        // A TLS 1.2-only client still connects (1.2 is the minimum), and the API works.
        let tls = tls_connect(s.addr, &cert, &[&rustls::version::TLS12]).await.unwrap();
        assert_eq!(tls.get_ref().1.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_2));
        let body =
            json!({"query": LOGIN, "variables": {"u": "admin", "p": "a bootstrap password for tests"}})
                .to_string();
        let answer = https(tls, "POST", "/graphql", &body).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.to_ascii_lowercase().contains("\r\nstrict-transport-security:"), "{answer}");
        assert!(answer.contains("\"token\":\""), "{answer}");

        // A client that trusts another certificate is refused.
        let other = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        assert!(tls_connect(s.addr, other.cert.der(), rustls::DEFAULT_VERSIONS).await.is_err());

        // Plain HTTP on the TLS port gets no answer.
        let plain = http().get(format!("http://{}/healthz", s.addr)).send().await;
        assert!(plain.is_err(), "{plain:?}");

        let status = s.stop().await;
        assert!(status.success(), "{status:?}");
    }

    // -------------------------------------------------------------- demo

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn demo_seeds_once_and_the_demo_physician_reads_a_chart() {
        let db = testdb::TestDb::new().await.unwrap();
        let dir = data_dir();
        let data = dir.path().join("data");
        let log = dir.path().join("serve.log");
        // Debug logging everywhere, to check below that no record content reaches the log.
        let env = [
            ("CHARTLEDGER_DATA_DIR", data.to_str().unwrap()),
            ("DATABASE_URL", db.url()),
            ("RUST_LOG", "debug"),
        ];
        let patients = || async {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM rm.patients")
                .fetch_one(db.pool())
                .await
                .unwrap()
        };

        let s = start(&["--demo"], &env, &log).await;
        assert!(s.printed("demo data seeded: 50 synthetic patients"), "{:?}", s.stdout);
        let password = |user: &str| {
            s.stdout
                .iter()
                .find(|l| l.trim().starts_with(&format!("{user} ")))
                .and_then(|l| l.split_whitespace().last())
                .unwrap_or_else(|| panic!("no demo password for {user}: {:?}", s.stdout))
                .to_owned()
        };
        let mut passwords = std::collections::BTreeMap::new();
        for user in [
            "demo.physician",
            "demo.nurse",
            "demo.reception",
            "demo.admin",
            "demo.auditor",
            "demo.legal",
            "demo.patient",
        ] {
            passwords.insert(user, password(user));
        }
        assert_eq!(patients().await, 50);

        // The demo physician enrols a second factor at the first login, then reads the
        // chart of one of their patients.
        let r =
            gql(&s.url, None, LOGIN, json!({"u": "demo.physician", "p": passwords["demo.physician"]})).await;
        let first = &gql_data(&r)["login"];
        assert_eq!((&first["mfaRequired"], &first["mfaEnrolled"]), (&json!(true), &json!(false)));
        assert_eq!(first["passwordChangeRequired"], json!(false), "demo passwords need no change");
        let token = first["token"].as_str().unwrap().to_owned();
        let e = gql(&s.url, Some(&token), "mutation { enrollMfa { secret } }", json!({})).await;
        let b32 = gql_data(&e)["enrollMfa"]["secret"].as_str().unwrap().to_owned();
        let secret = totp_rs::Secret::Encoded(b32).to_bytes().unwrap();
        let code = next_code(&secret).await;
        let v =
            gql(&s.url, Some(&token), "mutation($c: String!) { verifyMfa(code: $c) }", json!({"c": code}))
                .await;
        assert_eq!(gql_data(&v)["verifyMfa"], json!(true));
        let mine = gql(&s.url, Some(&token), "{ myPatients }", json!({})).await;
        let mine: Vec<String> = gql_data(&mine)["myPatients"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().to_owned())
            .collect();
        assert!(mine.len() >= 12, "{mine:?}");
        let mut entries = 0;
        let mut names = Vec::new();
        for patient in &mine[..3] {
            let c = gql(
                &s.url,
                Some(&token),
                "query($p: UUID!) { chart(patientId: $p) { patientId entries { entryId } demographics { mrn name { family } } } }",
                json!({"p": patient}),
            )
            .await;
            assert_eq!(gql_data(&c)["chart"]["patientId"].as_str(), Some(patient.as_str()));
            entries += gql_data(&c)["chart"]["entries"].as_array().unwrap().len();
            let d = &gql_data(&c)["chart"]["demographics"];
            names.push(d["name"]["family"].as_str().unwrap().to_owned());
            names.push(d["mrn"].as_str().unwrap().to_owned());
        }
        assert!(entries > 0, "their patients have a history");

        // The patient account reads its own chart.
        let mut secrets = Secrets::new();
        let (ptoken, _) = sign_in(&s.url, "demo.patient", &passwords["demo.patient"], &mut secrets).await;
        let me = gql(&s.url, Some(&ptoken), "{ me { patientId } }", json!({})).await;
        let own = gql_data(&me)["me"]["patientId"].as_str().unwrap().to_owned();
        assert!(mine.contains(&own), "the patient account is one of the physician's patients");
        let c = gql(
            &s.url,
            Some(&ptoken),
            "query($p: UUID!) { chart(patientId: $p) { patientId } }",
            json!({"p": own}),
        )
        .await;
        assert_eq!(gql_data(&c)["chart"]["patientId"].as_str(), Some(own.as_str()));
        assert!(s.stop().await.success());

        // A second start seeds nothing, and the demo credentials still work.
        let s = start(&["--demo"], &env, &log).await;
        assert!(s.printed("demo: not seeded"), "{:?}", s.stdout);
        assert!(!s.printed("demo accounts") && !s.printed("bootstrap"), "{:?}", s.stdout);
        assert_eq!(patients().await, 50);
        sign_in(&s.url, "demo.admin", &passwords["demo.admin"], &mut secrets).await;
        assert!(s.stop().await.success());
        // Two full runs of the server at debug level, seeding and serving PHI: none of it
        // (names, record numbers) is in the log, nor any password.
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.lines().count() > 20, "the log was written");
        for secret in names.iter().chain(passwords.values()) {
            assert!(!text.contains(secret.as_str()), "found in the server log: {secret}");
        }
    }
}
