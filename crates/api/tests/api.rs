//! End-to-end tests: a real server on an ephemeral port, over HTTP, against a real
//! PostgreSQL (one fresh database per test).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use api::policy::{self, Operation, Rule};
use api::{ApiConfig, AppState};
use domain::events::Role;
use ed25519_dalek::SigningKey;
use ledger::LedgerSigningKey;
use projections::{Projections, RunnerConfig};
use serde_json::{json, Value};
use store::{EventStore, StoreConfig};
use testdb::TestDb;
use uuid::Uuid;

// ------------------------------------------------------------------ log capture

/// Every log line of this test binary, to check that none carries PHI.
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = {
            let buf = buf.clone();
            move || Capture(buf.clone())
        };
        let _ = tracing_subscriber::fmt()
            .with_env_filter("debug,sqlx=debug,hyper=info,h2=info,tower=info")
            .with_writer(writer)
            .try_init();
        buf
    })
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// ------------------------------------------------------------------ the server

struct Server {
    db: TestDb,
    state: AppState,
    url: String,
    http: reqwest::Client,
    admin: String,
    /// A second administrator, who approves the first one's role grants.
    admin2: String,
}

const ADMIN_PASSWORD: &str = "bootstrap admin password";
const PASSWORD: &str = "a long enough password";
/// What an administrator sets; replaced at first login.
const INITIAL: &str = "initial password from the admin";

async fn server(tune: impl FnOnce(&mut ApiConfig, &mut StoreConfig)) -> Server {
    logs();
    let db = TestDb::new().await.unwrap();
    let key = LedgerSigningKey::new("test.example/ledger", SigningKey::from_bytes(&[9u8; 32])).unwrap();
    let mut store_config = StoreConfig {
        origin: "test.example/ledger".into(),
        poll_interval: Duration::from_millis(50),
        checkpoint_interval: Duration::from_millis(200),
        ..StoreConfig::default()
    };
    let mut config = ApiConfig { listen: "127.0.0.1:0".parse().unwrap(), ..ApiConfig::default() };
    tune(&mut config, &mut store_config);
    let store = EventStore::open(db.pool().clone(), key, store_config).await.unwrap();
    let projections = Projections::start(store.clone(), RunnerConfig::default()).await.unwrap();
    let state = AppState::new(store, projections, config);
    let boot =
        api::bootstrap::ensure_admin(&state, "admin", Some(ADMIN_PASSWORD.into())).await.unwrap().unwrap();
    assert_eq!(boot.username, "admin");
    let again = api::bootstrap::ensure_admin(&state, "admin", None).await.unwrap();
    assert!(again.is_none(), "the bootstrap administrator is created once");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = api::http::router(state.clone(), false).into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let http = reqwest::Client::builder().user_agent("api-tests/1").build().unwrap();
    let mut s = Server {
        db,
        state,
        url: format!("http://{addr}"),
        http,
        admin: String::new(),
        admin2: String::new(),
    };
    s.admin = s.login_with("admin", ADMIN_PASSWORD).await;
    // The installation's first administrator grant is the one the bootstrap
    // administrator approves alone (domain::staff); every later one needs two.
    let (_, admin2) = s.user("admin2", "ADMINISTRATOR", None).await;
    s.admin2 = admin2;
    s
}

/// A GraphQL response.
#[derive(Debug)]
struct Resp(Value);

impl Resp {
    fn data(&self) -> &Value {
        assert!(self.0.get("errors").is_none(), "unexpected errors: {}", self.0);
        &self.0["data"]
    }
    fn code(&self) -> Option<&str> {
        self.0["errors"][0]["extensions"]["code"].as_str()
    }
    fn err(&self) -> &str {
        self.code().unwrap_or_else(|| panic!("expected an error: {}", self.0))
    }
}

const RECORD_ENTRY: &str = "mutation($p: UUID!, $i: UUID!, $c: JSON!, $e: UUID!) { recordEntry(patientId: $p, entryId: $i, content: $c, eventId: $e) { position } }";
const AMEND_ENTRY: &str = "mutation($p: UUID!, $i: UUID!, $a: UUID!, $c: JSON!, $e: UUID!) { amendEntry(patientId: $p, entryId: $i, amendmentId: $a, content: $c, reason: \"typo\", eventId: $e) { position } }";
const LOGIN: &str = "mutation($u: String!, $p: String!, $r: Role) { login(username: $u, password: $p, role: $r) { token mfaRequired mfaEnrolled passwordChangeRequired userId } }";

impl Server {
    async fn gql_with(&self, token: Option<&str>, purpose: Option<&str>, query: &str, vars: Value) -> Resp {
        let mut req =
            self.http.post(format!("{}/graphql", self.url)).json(&json!({"query": query, "variables": vars}));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(p) = purpose {
            req = req.header("x-purpose-of-use", p);
        }
        let resp = req.send().await.unwrap();
        assert!(resp.status().is_success(), "status {}", resp.status());
        Resp(resp.json().await.unwrap())
    }

    async fn gql(&self, token: Option<&str>, query: &str, vars: Value) -> Resp {
        self.gql_with(token, None, query, vars).await
    }

    /// Create a user (as the administrator) and log in, completing TOTP enrolment
    /// where the role requires it. Returns (user id, token).
    async fn user(&self, name: &str, role: &str, patient: Option<Uuid>) -> (Uuid, String) {
        let id = Uuid::now_v7();
        let r = self
            .gql(
                Some(&self.admin),
                "mutation($id: UUID!, $u: String!, $r: [Role!]!, $p: UUID, $pw: String!, $e: UUID!) { \
                 createUser(userId: $id, username: $u, displayName: \"Test user\", roles: $r, patientId: $p, initialPassword: $pw, eventId: $e) { position } }",
                json!({"id": id, "u": name, "r": [role], "p": patient, "pw": INITIAL, "e": Uuid::now_v7()}),
            )
            .await;
        r.data();
        self.approve_pending(id).await;
        (id, self.login_with(name, INITIAL).await)
    }

    /// Approve, as the second administrator, every pending role grant of `user` (the
    /// first administrator proposed them). Before `admin2` exists, nothing is pending
    /// (the first administrator grant is approved by its proposer).
    async fn approve_pending(&self, user: Uuid) {
        let list = "query($u: UUID!) { roleGrants(userId: $u, status: PENDING) { grantId } }";
        let pending = self.gql(Some(&self.admin), list, json!({"u": user})).await;
        let approve =
            "mutation($g: UUID!, $e: UUID!) { approveRoleGrant(grantId: $g, eventId: $e) { status } }";
        for g in pending.data()["roleGrants"].as_array().unwrap() {
            let r =
                self.gql(Some(&self.admin2), approve, json!({"g": g["grantId"], "e": Uuid::now_v7()})).await;
            assert_eq!(r.data()["approveRoleGrant"]["status"], "APPROVED");
        }
    }

    /// Log in again (after the first login changed the password).
    async fn login(&self, name: &str, _nth: u64) -> String {
        self.login_with(name, PASSWORD).await
    }

    /// Log in, completing the second factor (enrolling it the first time) and replacing
    /// a password someone else set with `PASSWORD`.
    async fn login_with(&self, name: &str, password: &str) -> String {
        let r = self.gql(None, LOGIN, json!({"u": name, "p": password, "r": null})).await;
        let token = r.data()["login"]["token"].as_str().unwrap().to_owned();
        if r.data()["login"]["mfaRequired"] == json!(true) {
            // Nothing but the second factor works yet.
            let blocked = self.gql(Some(&token), "{ myPatients }", json!({})).await;
            assert_eq!(blocked.err(), "auth.mfa_required");
            let secret = if r.data()["login"]["mfaEnrolled"] == json!(false) {
                let e =
                    self.gql(Some(&token), "mutation { enrollMfa { secret otpauthUrl } }", json!({})).await;
                let b32 = e.data()["enrollMfa"]["secret"].as_str().unwrap().to_owned();
                self.secrets().lock().unwrap().push((self.key(name), b32.clone()));
                b32
            } else {
                self.secrets().lock().unwrap().iter().find(|(n, _)| *n == self.key(name)).unwrap().1.clone()
            };
            let raw = totp_rs::Secret::Encoded(secret).to_bytes().unwrap();
            let code = self.next_code(name, &raw).await;
            let v = self
                .gql(Some(&token), "mutation($c: String!) { verifyMfa(code: $c) }", json!({"c": code}))
                .await;
            assert_eq!(v.data()["verifyMfa"], json!(true));
        }
        if r.data()["login"]["passwordChangeRequired"] == json!(true) {
            let blocked = self.gql(Some(&token), "{ myPatients }", json!({})).await;
            assert_eq!(blocked.err(), "auth.password_change_required");
            let change =
                "mutation($o: String!, $n: String!) { changePassword(oldPassword: $o, newPassword: $n) }";
            let same = self.gql(Some(&token), change, json!({"o": password, "n": password})).await;
            assert_eq!(same.err(), "auth.weak_password");
            let c = self.gql(Some(&token), change, json!({"o": password, "n": PASSWORD})).await;
            assert_eq!(c.data()["changePassword"], json!(true));
        }
        token
    }

    /// A code for a TOTP step this user has not used yet (each is accepted once, and
    /// only the current step and its neighbours are), waiting for the clock if needed.
    async fn next_code(&self, name: &str, secret: &[u8]) -> String {
        static USED: OnceLock<Mutex<std::collections::HashMap<String, u64>>> = OnceLock::new();
        let used = USED.get_or_init(Default::default);
        loop {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
            let current = now / 30;
            let step =
                used.lock().unwrap().get(&self.key(name)).map_or(current, |last| (last + 1).max(current));
            if step <= current + 1 {
                used.lock().unwrap().insert(self.key(name), step);
                return api::auth::totp::code_at(secret, step * 30);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// A user of this server (each test has its own server and database).
    fn key(&self, name: &str) -> String {
        format!("{}/{name}", self.url)
    }

    fn secrets(&self) -> &'static Mutex<Vec<(String, String)>> {
        static S: OnceLock<Mutex<Vec<(String, String)>>> = OnceLock::new();
        S.get_or_init(Default::default)
    }

    async fn register(&self, token: &str, family: &str) -> (Uuid, u64) {
        let id = Uuid::now_v7();
        let r = self
            .gql(
                Some(token),
                "mutation($i: RegisterPatientInput!, $e: UUID!) { registerPatient(input: $i, eventId: $e) { position } }",
                json!({"i": {"patientId": id, "mrn": format!("MRN-{}", &id.simple().to_string()[20..]), "family": family,
                       "given": ["Testgiven"], "birthDate": "1980-02-03", "sex": "FEMALE"}, "e": Uuid::now_v7()}),
            )
            .await;
        (id, r.data()["registerPatient"]["position"].as_u64().unwrap())
    }

    async fn assign(&self, patient: Uuid, clinician: Uuid) -> u64 {
        let r = self
            .gql(
                Some(&self.admin),
                "mutation($p: UUID!, $c: UUID!, $e: UUID!) { assignCareTeamMember(patientId: $p, clinicianId: $c, careRole: ATTENDING, eventId: $e) { position } }",
                json!({"p": patient, "c": clinician, "e": Uuid::now_v7()}),
            )
            .await;
        r.data()["assignCareTeamMember"]["position"].as_u64().unwrap()
    }

    /// Make every write to an access stream fail in the database (the audit store
    /// down), or work again.
    async fn audit_store_down(&self, down: bool) {
        let statements: &[&str] = if down {
            &[
                "CREATE FUNCTION refuse_access() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
                 IF EXISTS (SELECT 1 FROM new_rows WHERE stream_id LIKE 'access-%') THEN RAISE EXCEPTION 'audit store down'; END IF; \
                 RETURN NULL; END $$",
                "CREATE TRIGGER refuse_access AFTER INSERT ON ledger_events REFERENCING NEW TABLE AS new_rows \
                 FOR EACH STATEMENT EXECUTE FUNCTION refuse_access()",
            ]
        } else {
            &["DROP TRIGGER refuse_access ON ledger_events", "DROP FUNCTION refuse_access()"]
        };
        for sql in statements {
            sqlx::query(sql).execute(self.db.pool()).await.unwrap();
        }
    }

    async fn wait(&self, position: u64) {
        self.state.projections.wait_for(position, Duration::from_secs(10)).await.unwrap();
    }

    /// The access events of a patient, from the ledger's read model.
    async fn access_log(&self, patient: Uuid) -> Vec<domain::chart::AccessLogEntry> {
        let head = self.state.store.head().size;
        if head > 0 {
            self.wait(head - 1).await;
        }
        let q = projections::queries::AccessQuery {
            patient_id: Some(patient),
            limit: 1000,
            ..Default::default()
        };
        self.state.read.access_log(&q).await.unwrap()
    }
}

/// A time as clients send it: RFC 3339 with at most microseconds (finer is refused).
fn micros(t: time::OffsetDateTime) -> String {
    let t = t.replace_nanosecond(t.nanosecond() / 1000 * 1000).unwrap();
    t.format(&time::format_description::well_known::Rfc3339).unwrap()
}

fn soap(text: &str) -> Value {
    json!({"kind": "soap_note", "subjective": text})
}

// ------------------------------------------------------------------ the role matrix

/// A request that performs `op` on patient `p` (and entry `e`), fresh ids each time.
fn request(op: Operation, p: Uuid, e: Uuid, clinician: Uuid, someone: Uuid) -> (&'static str, Value) {
    let ev = Uuid::now_v7();
    let tomorrow = micros(time::OffsetDateTime::now_utc() + time::Duration::days(1));
    let later =
        micros(time::OffsetDateTime::now_utc() + time::Duration::days(1) + time::Duration::minutes(30));
    let now = micros(time::OffsetDateTime::now_utc());
    match op {
        Operation::SearchPatients => (
            "{ searchPatients(familyPrefix: \"Matrix\") { edges { node { patientId } } } }",
            json!({}),
        ),
        Operation::ReadDemographics => ("query($p: UUID!) { patient(patientId: $p) { mrn } }", json!({"p": p})),
        Operation::RegisterPatient => {
            let id = Uuid::now_v7();
            (
                "mutation($i: RegisterPatientInput!, $e: UUID!) { registerPatient(input: $i, eventId: $e) { position } }",
                json!({"i": {"patientId": id, "mrn": format!("M-{}", &id.simple().to_string()[16..]), "family": "Matrixnew",
                       "given": [], "birthDate": "1990-01-01", "sex": "MALE"}, "e": ev}),
            )
        }
        Operation::UpdateDemographics => (
            "mutation($p: UUID!, $e: UUID!) { updateDemographics(patientId: $p, input: {sex: FEMALE}, eventId: $e) { position } }",
            json!({"p": p, "e": ev}),
        ),
        Operation::ReadClinical => ("query($p: UUID!) { chart(patientId: $p) { entries { entryId } } }", json!({"p": p})),
        Operation::WriteClinical => (
            RECORD_ENTRY,
            json!({"p": p, "i": Uuid::now_v7(), "c": soap("matrix"), "e": ev}),
        ),
        Operation::ReadHistory => (
            "query($p: UUID!, $i: UUID!) { entry(patientId: $p, entryId: $i, caseRef: \"MATRIX-1\") { versions { version } } }",
            json!({"p": p, "i": e}),
        ),
        Operation::ReadConsents => ("query($p: UUID!) { consents(patientId: $p) { version } }", json!({"p": p})),
        Operation::WriteConsents => (
            "mutation($p: UUID!, $c: UUID!, $e: UUID!) { recordConsent(patientId: $p, consentId: $c, granted: [TREATMENT, INSURANCE], method: WRITTEN, eventId: $e) { position } }",
            json!({"p": p, "c": Uuid::now_v7(), "e": ev}),
        ),
        Operation::ReadCareTeam => ("query($p: UUID!) { careTeam(patientId: $p) { clinicianId } }", json!({"p": p})),
        Operation::ManageCareTeam => (
            "mutation($p: UUID!, $c: UUID!, $e: UUID!) { assignCareTeamMember(patientId: $p, clinicianId: $c, careRole: CONSULTANT, eventId: $e) { position } }",
            json!({"p": p, "c": Uuid::now_v7(), "e": ev}),
        ),
        Operation::ReadAppointments => ("query($p: UUID!) { appointments(patientId: $p) { appointmentId } }", json!({"p": p})),
        Operation::ManageAppointments => (
            "mutation($p: UUID!, $a: UUID!, $c: UUID!, $s: DateTime!, $t: DateTime!, $e: UUID!) { scheduleAppointment(patientId: $p, appointmentId: $a, clinicianId: $c, visitType: FOLLOW_UP, start: $s, end: $t, eventId: $e) { position } }",
            json!({"p": p, "a": Uuid::now_v7(), "c": clinician, "s": tomorrow, "t": later, "e": ev}),
        ),
        Operation::ReadAccessLog => (
            "query($p: UUID!) { accessLog(patientId: $p, first: 5) { edges { node { userId } } } }",
            json!({"p": p}),
        ),
        Operation::ReadAuditTrail => ("{ securityEvents(first: 5) { eventType } }", json!({})),
        Operation::PointInTime => (
            "query($p: UUID!, $t: DateTime!) { chart(patientId: $p, asOf: $t, caseRef: \"MATRIX-1\") { entries { entryId } } }",
            json!({"p": p, "t": now}),
        ),
        Operation::ReadStaff => ("query($u: UUID!) { user(userId: $u) { username } }", json!({"u": someone})),
        Operation::ManageStaff => (
            "mutation($u: UUID!, $e: UUID!) { grantRole(userId: $u, role: NURSE, eventId: $e) { position } }",
            json!({"u": someone, "e": ev}),
        ),
        Operation::BreakGlass => (
            "mutation($p: UUID!) { breakGlass(patientId: $p, reason: \"matrix test emergency access\") { expiresAt } }",
            json!({"p": p}),
        ),
        Operation::ReadProof => (
            "query($p: UUID!, $i: UUID!) { entryProof(patientId: $p, entryId: $i) }",
            json!({"p": p, "i": e}),
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_and_operation_is_allowed_or_denied_as_the_table_says() {
    let s = server(|_, _| {}).await;
    let (reception, rtok) = s.user("front.desk", "RECEPTIONIST", None).await;
    let _ = reception;
    let (p, _) = s.register(&rtok, "Matrixpatient").await;
    let (physician, phtok) = s.user("dr.matrix", "PHYSICIAN", None).await;
    let (nurse, ntok) = s.user("nurse.matrix", "NURSE", None).await;
    s.assign(p, physician).await;
    let pos = s.assign(p, nurse).await;
    s.wait(pos).await;
    let e = Uuid::now_v7();
    let r = s
        .gql(Some(&phtok), RECORD_ENTRY, json!({"p": p, "i": e, "c": soap("baseline"), "e": Uuid::now_v7()}))
        .await;
    s.wait(r.data()["recordEntry"]["position"].as_u64().unwrap()).await;
    let (_, atok) = s.user("auditor.matrix", "AUDITOR", None).await;
    let (_, ltok) = s.user("legal.matrix", "LEGAL", None).await;
    let (_, pttok) = s.user("patient.matrix", "PATIENT", Some(p)).await;
    let (someone, _) = s.user("someone.else", "NURSE", None).await;
    let sessions = [
        (Role::Physician, &phtok),
        (Role::Nurse, &ntok),
        (Role::Receptionist, &rtok),
        (Role::Administrator, &s.admin),
        (Role::Auditor, &atok),
        (Role::Legal, &ltok),
        (Role::Patient, &pttok),
    ];
    let mut cells = 0;
    for (role, token) in sessions {
        for op in Operation::ALL {
            let (query, vars) = request(op, p, e, physician, someone);
            let resp = s.gql(Some(token), query, vars).await;
            let allowed = match policy::rule(role, op) {
                Rule::Deny => false,
                // Everyone here is on P's care team, and the patient is P.
                Rule::Allow | Rule::CareTeam | Rule::OwnRecord => true,
            };
            if allowed {
                assert!(resp.0.get("errors").is_none(), "{role:?} × {op:?} should be allowed: {}", resp.0);
            } else {
                assert_eq!(
                    resp.code(),
                    Some("authz.forbidden"),
                    "{role:?} × {op:?} should be denied: {}",
                    resp.0
                );
                assert!(
                    resp.0["data"].is_null()
                        || resp.0["data"].as_object().is_some_and(|m| m.values().all(Value::is_null))
                );
            }
            cells += 1;
        }
    }
    assert_eq!(cells, 7 * Operation::ALL.len());

    // The conditions: a clinician off the care team, and a patient on another record.
    let (_, other_doc) = s.user("dr.elsewhere", "PHYSICIAN", None).await;
    let (q, v) = request(Operation::ReadClinical, p, e, physician, someone);
    assert_eq!(s.gql(Some(&other_doc), q, v).await.err(), "authz.forbidden");
    let (p2, _) = s.register(&rtok, "Matrixother").await;
    s.wait(s.state.store.head().size - 1).await;
    for op in [Operation::ReadClinical, Operation::ReadConsents, Operation::ReadAccessLog] {
        let (q, v) = request(op, p2, e, physician, someone);
        assert_eq!(s.gql(Some(&pttok), q, v).await.err(), "authz.forbidden", "{op:?}");
    }

    // Every read of P was recorded, with who, the role held and the session.
    let log = s.access_log(p).await;
    assert!(log.iter().any(|a| a.user_id == physician && a.role == "physician"));
    assert!(log.iter().all(|a| a.session_id.is_some() && a.client_addr.is_some()));
    assert!(log.iter().any(|a| a.user_agent.as_deref() == Some("api-tests/1")));
    // Refusals were recorded too.
    let denied =
        s.gql(Some(&s.admin), "{ securityEvents(first: 500) { eventType payload } }", json!({})).await;
    let denied = denied.data()["securityEvents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["eventType"] == "security.access_denied")
        .count();
    assert!(denied >= 20, "refusals recorded: {denied}");
    drop(s.db);
}

// ------------------------------------------------------------------ break-glass, consent

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_glass_grants_flagged_access_and_consent_filters_by_purpose() {
    let s = server(|_, _| {}).await;
    let (_, rtok) = s.user("desk.bg", "RECEPTIONIST", None).await;
    let (p, _) = s.register(&rtok, "Glassfamily").await;
    let (q, _) = s.register(&rtok, "Glassresearch").await;
    let (doc, dtok) = s.user("dr.bg", "PHYSICIAN", None).await;
    let chart = "query($p: UUID!) { chart(patientId: $p) { patientId notes { entryId } } }";
    let pos = s.assign(q, doc).await;
    s.wait(pos).await;
    // Off the care team: refused...
    assert_eq!(s.gql(Some(&dtok), chart, json!({"p": p})).await.err(), "authz.forbidden");
    // ...a reason is required...
    let bg = "mutation($p: UUID!, $r: String!) { breakGlass(patientId: $p, reason: $r) { expiresAt } }";
    assert_eq!(s.gql(Some(&dtok), bg, json!({"p": p, "r": "  "})).await.err(), "break_glass.reason_required");
    // ...then break-glass opens this record, for this session.
    s.gql(Some(&dtok), bg, json!({"p": p, "r": "unconscious patient in the emergency department"}))
        .await
        .data();
    let r = s.gql(Some(&dtok), chart, json!({"p": p})).await;
    assert_eq!(r.data()["chart"]["patientId"], json!(p));
    let log = s.access_log(p).await;
    let flagged: Vec<_> = log.iter().filter(|a| a.user_id == doc).collect();
    assert!(flagged.len() >= 2);
    assert!(flagged
        .iter()
        .all(|a| a.break_glass_reason.as_deref() == Some("unconscious patient in the emergency department")
            && a.purpose == domain::events::PurposeOfUse::Emergency));
    // Another session of the same doctor does not inherit the grant.
    let other = s.login("dr.bg", 1).await;
    assert_eq!(s.gql(Some(&other), chart, json!({"p": p})).await.err(), "authz.forbidden");

    // Consent: q consents to research, p (on the team now) only to treatment.
    let pos = s.assign(p, doc).await;
    s.wait(pos).await;
    let consent = "mutation($p: UUID!, $g: [ConsentPurpose!]!, $e: UUID!) { recordConsent(patientId: $p, consentId: $e, granted: $g, method: WRITTEN, eventId: $e) { position } }";
    // Consent is recorded by the care team (or the patient), not the front desk.
    let front = s.gql(Some(&rtok), consent, json!({"p": p, "g": ["TREATMENT"], "e": Uuid::now_v7()})).await;
    assert_eq!(front.err(), "authz.forbidden");
    s.gql(Some(&other), consent, json!({"p": p, "g": ["TREATMENT"], "e": Uuid::now_v7()})).await.data();
    let r = s
        .gql(Some(&other), consent, json!({"p": q, "g": ["TREATMENT", "RESEARCH"], "e": Uuid::now_v7()}))
        .await;
    s.wait(r.data()["recordConsent"]["position"].as_u64().unwrap()).await;
    let research = |p| s.gql_with(Some(&other), Some("research"), chart, json!({"p": p}));
    assert_eq!(research(p).await.err(), "authz.consent_required");
    assert_eq!(research(q).await.data()["chart"]["patientId"], json!(q));
    assert_eq!(
        s.gql_with(Some(&other), Some("marketing"), chart, json!({"p": q})).await.err(),
        "authz.consent_required"
    );
    assert_eq!(
        s.gql_with(Some(&other), Some("nonsense"), chart, json!({"p": q})).await.err(),
        "request.bad_purpose"
    );
    // Search under a research purpose lists only patients who consented to research.
    let search = "{ searchPatients(familyPrefix: \"Glass\") { edges { node { patientId } } } }";
    let all = s.gql(Some(&other), search, json!({})).await;
    assert_eq!(all.data()["searchPatients"]["edges"].as_array().unwrap().len(), 2);
    let only = s.gql_with(Some(&other), Some("research"), search, json!({})).await;
    let ids: Vec<_> = only.data()["searchPatients"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["patientId"].clone())
        .collect();
    assert_eq!(ids, vec![json!(q)]);
    // Withdrawing research consent closes the record to research at once.
    let w = "mutation($p: UUID!, $e: UUID!) { withdrawConsent(patientId: $p, purposes: [RESEARCH], eventId: $e) { position } }";
    let r = s.gql(Some(&other), w, json!({"p": q, "e": Uuid::now_v7()})).await;
    s.wait(r.data()["withdrawConsent"]["position"].as_u64().unwrap()).await;
    assert_eq!(research(q).await.err(), "authz.consent_required");
}

// ------------------------------------------------------------------ sessions

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_logoff_lockout_logout_and_mfa() {
    let s = server(|c, _| {
        c.idle_timeout = Duration::from_secs(3);
        c.lockout_threshold = 3;
    })
    .await;
    let (nurse, tok) = s.user("nurse.session", "NURSE", None).await;
    let (_, idle) = s.user("nurse.idle", "NURSE", None).await;
    let (_, t2) = s.user("nurse.logout", "NURSE", None).await;
    let me = "{ me { userId role mfaVerified } }";
    assert_eq!(s.gql(Some(&tok), me, json!({})).await.data()["me"]["userId"], json!(nurse));
    s.gql(Some(&idle), me, json!({})).await.data();
    // Logout, refused at once by the server that ended it.
    s.gql(Some(&t2), "mutation { logout }", json!({})).await.data();
    assert_eq!(s.gql(Some(&t2), me, json!({})).await.err(), "auth.session_expired");
    // A session ended by another server sharing the database is refused here at most
    // SESSION_RECHECK later (this server remembers a session it looked up that long).
    let (_, t3) = s.user("nurse.elsewhere", "NURSE", None).await;
    s.gql(Some(&t3), me, json!({})).await.data();
    let other =
        api::auth::Auth::new(s.state.store.pool().clone(), s.state.records.clone(), s.state.config.clone());
    let p3 = other.authenticate(&t3).await.unwrap();
    other.end_session(&p3, domain::events::SessionEnd::Logout).await.unwrap();
    assert_eq!(other.authenticate(&t3).await.unwrap_err().code(), "auth.session_expired");
    tokio::time::sleep(api::auth::SESSION_RECHECK + Duration::from_millis(50)).await;
    assert_eq!(s.gql(Some(&t3), me, json!({})).await.err(), "auth.session_expired");
    // Automatic logoff after inactivity, recorded.
    tokio::time::sleep(Duration::from_millis(3600)).await;
    assert_eq!(s.gql(Some(&tok), me, json!({})).await.err(), "auth.session_expired");
    assert_eq!(s.gql(Some(&tok), me, json!({})).await.err(), "auth.session_expired");
    // The sweeper ends idle sessions nobody comes back to.
    assert!(s.state.auth.sweep().await.unwrap() >= 1);
    assert_eq!(s.gql(Some(&idle), me, json!({})).await.err(), "auth.session_expired");
    // Garbage and missing tokens.
    assert_eq!(s.gql(Some("not-a-token"), me, json!({})).await.err(), "auth.unauthenticated");
    assert_eq!(s.gql(None, me, json!({})).await.err(), "auth.unauthenticated");
    // A wrong TOTP code fails.
    let r = s.gql(None, LOGIN, json!({"u": "nurse.session", "p": PASSWORD, "r": null})).await;
    let pending = r.data()["login"]["token"].as_str().unwrap().to_owned();
    let bad = s.gql(Some(&pending), "mutation { verifyMfa(code: \"000000\") }", json!({})).await;
    assert_eq!(bad.err(), "auth.invalid_credentials");
    // Lock-out: repeated wrong passwords (and the wrong code above) lock the account,
    // even for the right password; the answer is the same as for a wrong password.
    let wrong = json!({"u": "nurse.session", "p": "not the password at all", "r": null});
    assert_eq!(s.gql(None, LOGIN, wrong.clone()).await.err(), "auth.invalid_credentials");
    assert_eq!(s.gql(None, LOGIN, wrong.clone()).await.err(), "auth.invalid_credentials");
    let right = json!({"u": "nurse.session", "p": PASSWORD, "r": null});
    assert_eq!(s.gql(None, LOGIN, right).await.err(), "auth.invalid_credentials");
    // Unknown users get the same answer as wrong passwords.
    let unknown = json!({"u": "nobody.here", "p": PASSWORD, "r": null});
    assert_eq!(s.gql(None, LOGIN, unknown).await.err(), "auth.invalid_credentials");
    // Every step is in the security stream (the administrator's own session has idled out).
    let admin = s.login("admin", 0).await;
    let ev = s.gql(Some(&admin), "{ securityEvents(first: 500) { eventType payload } }", json!({})).await;
    let ev = ev.data()["securityEvents"].as_array().unwrap().clone();
    let has =
        |t: &str, f: &dyn Fn(&Value) -> bool| ev.iter().any(|e| e["eventType"] == t && f(&e["payload"]));
    assert!(has("security.session_ended", &|p| p["end"] == "idle_timeout"));
    assert!(has("security.session_ended", &|p| p["end"] == "logout"));
    assert!(has("security.login_failed", &|p| p["failure"] == "bad_password"));
    assert!(has("security.login_failed", &|p| p["failure"] == "bad_mfa_code"));
    assert!(has("security.login_failed", &|p| p["failure"] == "locked"));
    assert!(has("security.login_failed", &|p| p["failure"] == "unknown_user" && p["user_id"].is_null()));
    assert!(has("security.mfa_challenged", &|_| true));
    assert!(has("security.mfa_enrolled", &|_| true));
    assert!(has("security.login_succeeded", &|p| p["mfa"] == json!(true)));
    assert!(has("security.password_changed", &|_| true));
}

// ------------------------------------------------------------------ fail closed, no PHI

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phi_is_withheld_when_the_access_cannot_be_recorded() {
    let s = server(|_, st| st.recovery_attempts = 1).await;
    let (_, rtok) = s.user("desk.fc", "RECEPTIONIST", None).await;
    let (p, pos) = s.register(&rtok, "Failclosedfamily").await;
    s.wait(pos).await;
    let q = "query($p: UUID!) { patient(patientId: $p) { name { family } } }";
    assert_eq!(
        s.gql(Some(&rtok), q, json!({"p": p})).await.data()["patient"]["name"]["family"],
        "Failclosedfamily"
    );
    // Make every write to an access stream fail in the database.
    s.audit_store_down(true).await;
    let raw = s
        .http
        .post(format!("{}/graphql", s.url))
        .bearer_auth(&rtok)
        .json(&json!({"query": q, "variables": {"p": p}}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!raw.contains("Failclosedfamily"), "PHI returned without an access record: {raw}");
    let v: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(v["errors"][0]["extensions"]["code"], "audit.unavailable");
    assert!(v["data"].is_null());
    // Writes that are not accesses still work, and once the audit store is back, reads do.
    s.audit_store_down(false).await;
    let r = s.gql(Some(&rtok), q, json!({"p": p})).await;
    assert_eq!(r.data()["patient"]["name"]["family"], "Failclosedfamily");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_logs_and_urls_carry_no_phi() {
    let s = server(|c, _| c.metrics = true).await;
    let (_, rtok) = s.user("desk.phi", "RECEPTIONIST", None).await;
    let (doc, dtok) = s.user("dr.phi", "PHYSICIAN", None).await;
    let (p, _) = s.register(&rtok, "Qwertyphiname").await;
    s.wait(s.assign(p, doc).await).await;
    // A refused command, malformed content, a bad code and a denied read, all carrying PHI.
    let bad = s.gql(Some(&dtok), RECORD_ENTRY, json!({"p": p, "i": Uuid::now_v7(), "c": {"kind": "soap_note", "subjective": 17, "x": "Qwertyphinote"}, "e": Uuid::now_v7()})).await;
    assert_eq!(bad.err(), "input.malformed");
    let code = json!({"kind": "condition", "code": {"system": "icd10", "code": "Qwertyphicode", "display": "Qwertyphidisplay"}, "clinical_status": "active"});
    let refused = s
        .gql(Some(&dtok), RECORD_ENTRY, json!({"p": p, "i": Uuid::now_v7(), "c": code, "e": Uuid::now_v7()}))
        .await;
    assert!(refused.err().starts_with("domain."), "{:?}", refused.0);
    let ok = s
        .gql(
            Some(&dtok),
            RECORD_ENTRY,
            json!({"p": p, "i": Uuid::now_v7(), "c": soap("Qwertyphinote secret"), "e": Uuid::now_v7()}),
        )
        .await;
    ok.data();
    let denied = s
        .gql(
            Some(&rtok),
            "query($p: UUID!) { chart(patientId: $p) { entries { entryId } } }",
            json!({"p": p}),
        )
        .await;
    assert_eq!(denied.err(), "authz.forbidden");
    // A malformed query quoting a name: the library's own error must not echo it.
    let parse =
        s.gql(Some(&dtok), "{ searchPatients(familyPrefix: \"Qwertyphiparse\" { edges } }", json!({})).await;
    assert_eq!(parse.err(), "graphql.invalid_request");
    let unknown =
        s.gql(Some(&dtok), "{ searchPatients(familyPrefix: \"Qwertyphifield\") { nope } }", json!({})).await;
    assert_eq!(unknown.err(), "graphql.invalid_request");
    for r in [&bad, &refused, &denied, &parse, &unknown] {
        assert!(!r.0.to_string().contains("Qwertyphi"), "PHI in an error: {}", r.0);
    }
    // GET (which would put a query in the URL) is refused.
    let get = s.http.get(format!("{}/graphql?query=%7Bme%7Bid%7D%7D", s.url)).send().await.unwrap();
    assert_eq!(get.status(), reqwest::StatusCode::METHOD_NOT_ALLOWED);
    // Metrics carry no patient data.
    let metrics = s.http.get(format!("{}/metrics", s.url)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("chartledger_graphql_requests_total"));
    let batches = metrics
        .lines()
        .find_map(|l| l.strip_prefix("chartledger_store_writer{counter=\"batches\"} "))
        .and_then(|v| v.trim().parse::<i64>().ok());
    assert!(batches.is_some_and(|b| b > 0), "the writer's batches are counted: {batches:?}");
    assert!(!metrics.contains("Qwertyphi") && !metrics.contains(&p.to_string()));
    assert_eq!(s.http.get(format!("{}/healthz", s.url)).send().await.unwrap().text().await.unwrap(), "ok");
    assert_eq!(s.http.get(format!("{}/readyz", s.url)).send().await.unwrap().text().await.unwrap(), "ready");
    // And nothing in the logs of this whole test binary (debug level, sqlx included).
    let text = String::from_utf8_lossy(&logs().lock().unwrap()).to_string();
    assert!(!text.is_empty(), "logs were captured");
    for marker in ["Qwertyphi", "Glassfamily", "Matrixpatient", "Failclosedfamily", "Testgiven"] {
        assert!(!text.contains(marker), "PHI marker {marker} found in the logs");
    }
}

// ------------------------------------------------------------------ read your writes, history, limits

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_history_point_in_time_and_read_your_writes() {
    let s = server(|_, _| {}).await;
    let (_, rtok) = s.user("desk.ryw", "RECEPTIONIST", None).await;
    let (doc, dtok) = s.user("dr.ryw", "PHYSICIAN", None).await;
    let (_, atok) = s.user("auditor.ryw", "AUDITOR", None).await;
    let (p, _) = s.register(&rtok, "Historyfamily").await;
    s.wait(s.assign(p, doc).await).await;
    let rec = "mutation($p: UUID!, $i: UUID!, $c: JSON!, $e: UUID!) { recordEntry(patientId: $p, entryId: $i, content: $c, eventId: $e) { position eventId replayed } }";
    let entry = Uuid::now_v7();
    let ev = Uuid::now_v7();
    let first =
        s.gql(Some(&dtok), rec, json!({"p": p, "i": entry, "c": soap("first version"), "e": ev})).await;
    let pos1 = first.data()["recordEntry"]["position"].as_u64().unwrap();
    // A retry is answered with the original result.
    let retry =
        s.gql(Some(&dtok), rec, json!({"p": p, "i": entry, "c": soap("first version"), "e": ev})).await;
    assert_eq!(retry.data()["recordEntry"]["replayed"], json!(true));
    assert_eq!(retry.data()["recordEntry"]["position"].as_u64().unwrap(), pos1);
    let t1 = micros(time::OffsetDateTime::now_utc());
    tokio::time::sleep(Duration::from_millis(20)).await;
    let a = s.gql(Some(&dtok), AMEND_ENTRY, json!({"p": p, "i": entry, "a": Uuid::now_v7(), "c": soap("second version"), "e": Uuid::now_v7()})).await;
    let pos2 = a.data()["amendEntry"]["position"].as_u64().unwrap();
    // Read your write: minPosition waits for the projections.
    let chart = "query($p: UUID!, $m: Int) { chart(patientId: $p, minPosition: $m) { notes { current { content version } versions { version change reason authorId authorName } } } }";
    let c = s.gql(Some(&dtok), chart, json!({"p": p, "m": pos2})).await;
    let notes = &c.data()["chart"]["notes"];
    assert_eq!(notes[0]["current"]["version"], json!(2));
    assert_eq!(notes[0]["current"]["content"]["subjective"], "second version");
    assert_eq!(notes[0]["versions"][1]["reason"], "typo");
    assert_eq!(notes[0]["versions"][0]["authorId"], json!(doc));
    assert_eq!(notes[0]["versions"][1]["authorName"], "Test user");
    // The auditor sees the chart as it stood at t1.
    let pit = "query($p: UUID!, $t: DateTime!) { chart(patientId: $p, asOf: $t, caseRef: \"CASE-RYW\") { asOf notes { current { content version } } demographics { name { family } } } }";
    let old = s.gql(Some(&atok), pit, json!({"p": p, "t": t1})).await;
    assert_eq!(old.data()["chart"]["notes"][0]["current"]["content"]["subjective"], "first version");
    assert_eq!(old.data()["chart"]["demographics"]["name"]["family"], "Historyfamily");
    // Entered in error: gone from the section, kept in the history.
    let eie = "mutation($p: UUID!, $i: UUID!, $e: UUID!) { markEnteredInError(patientId: $p, entryId: $i, reason: \"wrong patient\", eventId: $e) { position } }";
    let r = s.gql(Some(&dtok), eie, json!({"p": p, "i": entry, "e": Uuid::now_v7()})).await;
    let pos3 = r.data()["markEnteredInError"]["position"].as_u64().unwrap();
    let hist = "query($p: UUID!, $i: UUID!, $m: Int) { entry(patientId: $p, entryId: $i, minPosition: $m) { status versions { change } } }";
    let h = s.gql(Some(&dtok), hist, json!({"p": p, "i": entry, "m": pos3})).await;
    assert_eq!(h.data()["entry"]["status"], "entered_in_error");
    assert_eq!(h.data()["entry"]["versions"].as_array().unwrap().len(), 3);
    let c = s.gql(Some(&dtok), chart, json!({"p": p, "m": pos3})).await;
    assert_eq!(c.data()["chart"]["notes"].as_array().unwrap().len(), 0);
    // A legal team's proof of the entry: three versions, checkable offline with the
    // ledger's public key only; asking for it is an audited export.
    let (legal, ltok) = s.user("legal.ryw", "LEGAL", None).await;
    let pr = s
        .gql(
            Some(&ltok),
            "query($p: UUID!, $i: UUID!) { entryProof(patientId: $p, entryId: $i) }",
            json!({"p": p, "i": entry}),
        )
        .await;
    let bundle = serde_json::to_vec(&pr.data()["entryProof"]).unwrap();
    let trusted = [s.state.store.note_verifier().unwrap()];
    let verified = proof::verify_json(&bundle, &trusted).unwrap();
    assert_eq!(verified.events.len(), 3);
    let mut tampered = pr.data()["entryProof"].clone();
    tampered["events"][0]["payload"] = json!("dGFtcGVyZWQ=");
    assert!(proof::verify_json(&serde_json::to_vec(&tampered).unwrap(), &trusted).is_err());
    // One event's proof: the amendment's event.
    let ev_id = pr.data()["entryProof"]["events"][1]["decoded"]["event_id"].clone();
    let one = s.gql(Some(&ltok), "query($e: UUID!) { eventProof(eventId: $e) }", json!({"e": ev_id})).await;
    let one = proof::verify_json(&serde_json::to_vec(&one.data()["eventProof"]).unwrap(), &trusted).unwrap();
    assert_eq!(one.events.len(), 1);
    let (_, rtok2) = s.user("desk.proof", "RECEPTIONIST", None).await;
    let denied =
        s.gql(Some(&rtok2), "query($e: UUID!) { eventProof(eventId: $e) }", json!({"e": ev_id})).await;
    assert_eq!(denied.err(), "authz.forbidden");
    let log = s.access_log(p).await;
    assert!(log.iter().any(|a| a.user_id == legal
        && a.action == domain::events::AccessAction::Export
        && a.resources.contains(&domain::events::ResourceKind::Proof)));
    // A refused command changes nothing and says why.
    let head = s.state.store.head().size;
    let r = s
        .gql(
            Some(&dtok),
            AMEND_ENTRY,
            json!({"p": p, "i": Uuid::now_v7(), "a": Uuid::now_v7(), "c": soap("x"), "e": Uuid::now_v7()}),
        )
        .await;
    assert_eq!(r.err(), "domain.unknown_entry");
    // (only the access event of the refused attempt may follow)
    assert!(s.state.store.head().size <= head + 1);
    // The patient's access log pages by cursor, newest first.
    let log = "query($p: UUID!, $a: String) { accessLog(patientId: $p, first: 2, after: $a) { pageInfo { hasNextPage endCursor } edges { node { position } } } }";
    let page1 = s.gql(Some(&s.admin), log, json!({"p": p, "a": null})).await;
    let info = &page1.data()["accessLog"]["pageInfo"];
    assert_eq!(info["hasNextPage"], json!(true));
    let page2 = s.gql(Some(&s.admin), log, json!({"p": p, "a": info["endCursor"]})).await;
    let p1 = page1.data()["accessLog"]["edges"][1]["node"]["position"].as_u64().unwrap();
    let p2 = page2.data()["accessLog"]["edges"][0]["node"]["position"].as_u64().unwrap();
    assert!(p2 < p1);
}

/// Entry lists of a current chart are resolved once per chart and selection and reused
/// (`graphql/exec/resolved.rs`): a reused list equals a fresh resolution, is never another
/// patient's or another field's or alias's, a changed chart is read anew, an earlier
/// version stays visible as of its time, and reuse never lets through a role the chart
/// is refused to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_entry_lists_equal_fresh_ones_and_follow_the_chart() {
    let s = server(|c, _| c.metrics = true).await;
    let (_, rtok) = s.user("desk.reuse", "RECEPTIONIST", None).await;
    let (doc, dtok) = s.user("dr.reuse", "PHYSICIAN", None).await;
    let (nurse, ntok) = s.user("rn.reuse", "NURSE", None).await;
    let (_, atok) = s.user("auditor.reuse", "AUDITOR", None).await;
    let mut patients = Vec::new();
    for family in ["Reusefamily", "Otherfamily"] {
        let (p, _) = s.register(&rtok, family).await;
        s.wait(s.assign(p, doc).await).await;
        s.wait(s.assign(p, nurse).await).await;
        let entry = Uuid::now_v7();
        let text = format!("note of {family}");
        let r = s
            .gql(
                Some(&dtok),
                RECORD_ENTRY,
                json!({"p": p, "i": entry, "c": soap(&text), "e": Uuid::now_v7()}),
            )
            .await;
        s.wait(r.data()["recordEntry"]["position"].as_u64().unwrap()).await;
        patients.push((p, entry, text));
    }
    let (p, entry, _) = patients[0].clone();
    let reused = || async {
        let m = s.http.get(format!("{}/metrics", s.url)).send().await.unwrap().text().await.unwrap();
        m.lines()
            .find(|l| l.starts_with("chartledger_entry_lists_total{result=\"reused\"}"))
            .and_then(|l| l.split_whitespace().last()?.parse::<u64>().ok())
            .unwrap_or(0)
    };

    // Kept (every field pure) and fresh (a fragment is never kept): the same data.
    let kept = "query($p: UUID!) { chart(patientId: $p) { entries { entryId status current { version content } } \
                notes { entryId status current { version content } } a: entries { entryId } b: entries { status } } }";
    let fresh =
        "query($p: UUID!) { chart(patientId: $p) { entries { ...E } notes { ...E } a: entries { entryId } \
                 b: entries { ...S } } } fragment E on Entry { entryId status current { version content } } \
                 fragment S on Entry { status }";
    let read = |tok: String, q: &'static str, p: Uuid| {
        let s = &s;
        async move { s.gql(Some(&tok), q, json!({"p": p})).await.data()["chart"].clone() }
    };
    let before = reused().await;
    for (p, entry, text) in &patients {
        let first = read(dtok.clone(), kept, *p).await;
        assert_eq!(first["entries"][0]["current"]["content"]["subjective"], json!(text));
        assert_eq!(first["entries"][0]["entryId"], json!(entry));
        assert_eq!(first["notes"], first["entries"], "a SOAP note is in both lists");
        assert_eq!(first["a"], json!([{ "entryId": entry }]), "each alias its own selection");
        assert_eq!(first["b"], json!([{ "status": "active" }]));
        assert_eq!(read(dtok.clone(), kept, *p).await, first, "reused");
        assert_eq!(read(ntok.clone(), kept, *p).await, first, "reused for another clinician");
        assert_eq!(read(dtok.clone(), fresh, *p).await, first, "equal to a fresh resolution");
    }
    assert!(reused().await >= before + 2 * 2 * 4, "lists were reused");
    // Reuse does not let a refused role through.
    let denied = s.gql(Some(&rtok), kept, json!({"p": p})).await;
    assert_eq!(denied.err(), "authz.forbidden");

    // A changed chart is read anew; the earlier version is still there as of its time.
    let t1 = micros(time::OffsetDateTime::now_utc());
    tokio::time::sleep(Duration::from_millis(20)).await;
    let a = s
        .gql(
            Some(&dtok),
            AMEND_ENTRY,
            json!({"p": p, "i": entry, "a": Uuid::now_v7(), "c": soap("amended"), "e": Uuid::now_v7()}),
        )
        .await;
    s.wait(a.data()["amendEntry"]["position"].as_u64().unwrap()).await;
    let after = read(dtok.clone(), kept, p).await;
    assert_eq!(after["entries"][0]["current"]["version"], json!(2));
    assert_eq!(after["entries"][0]["current"]["content"]["subjective"], "amended");
    assert_eq!(read(ntok.clone(), fresh, p).await, after);
    let pit = "query($p: UUID!, $t: DateTime!) { chart(patientId: $p, asOf: $t, caseRef: \"CASE-REUSE\") { entries { current { version content } } } }";
    let old = s.gql(Some(&atok), pit, json!({"p": p, "t": t1})).await;
    assert_eq!(old.data()["chart"]["entries"][0]["current"]["version"], json!(1));
    assert_eq!(old.data()["chart"]["entries"][0]["current"]["content"]["subjective"], "note of Reusefamily");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn depth_complexity_and_body_limits() {
    let s = server(|c, _| {
        c.max_depth = 3;
        c.max_complexity = 40;
        c.max_body_bytes = 4096;
    })
    .await;
    let deep =
        "{ chart(patientId: \"0190a000-0000-7000-8000-000000000001\") { notes { versions { version } } } }";
    let r = s.gql(Some(&s.admin), deep, json!({})).await;
    assert!(r.0["errors"][0]["message"].as_str().unwrap().contains("deep"), "{}", r.0);
    let wide: String = (0..60).map(|i| format!("a{i}: idleTimeoutSeconds ")).collect();
    let r = s.gql(Some(&s.admin), &format!("{{ {wide} }}"), json!({})).await;
    assert!(r.0["errors"][0]["message"].as_str().unwrap().contains("complex"), "{}", r.0);
    let big = "x".repeat(8192);
    let resp = s
        .http
        .post(format!("{}/graphql", s.url))
        .json(&json!({"query": "{ me { userId } }", "variables": {"pad": big}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::PAYLOAD_TOO_LARGE);
}

#[test]
fn the_committed_sdl_matches_the_code() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schema/chartledger.graphql");
    let sdl = api::graphql::sdl();
    if std::env::var_os("CHARTLEDGER_BLESS").is_some() {
        std::fs::write(&path, &sdl).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == sdl,
        "schema/chartledger.graphql is out of date: run the test with CHARTLEDGER_BLESS=1 and commit it"
    );
}

// ------------------------------------------------------------------ hostile input, credentials, privilege

mod hardening;

// ------------------------------------------------------------------ subscriptions

mod ws {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;

    use super::*;

    pub type Socket =
        tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

    /// Open a graphql-transport-ws connection with `token` in the init payload.
    pub async fn connect(s: &Server, token: Option<&str>) -> (Socket, Value) {
        let mut req =
            format!("{}/graphql/ws", s.url.replace("http://", "ws://")).into_client_request().unwrap();
        req.headers_mut().insert("sec-websocket-protocol", "graphql-transport-ws".parse().unwrap());
        let (mut socket, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        let payload = token.map_or(json!({}), |t| json!({"authorization": format!("Bearer {t}")}));
        socket
            .send(Message::text(json!({"type": "connection_init", "payload": payload}).to_string()))
            .await
            .unwrap();
        let first = next(&mut socket).await;
        (socket, first)
    }

    pub async fn next(socket: &mut Socket) -> Value {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), socket.next())
                .await
                .expect("a message in time");
            match msg {
                Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).unwrap(),
                Some(Ok(Message::Close(frame))) => {
                    return json!({"type": "closed", "frame": frame.map(|f| f.reason.to_string())})
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return json!({"type": "error", "error": e.to_string()}),
                None => return json!({"type": "closed"}),
            }
        }
    }

    pub async fn subscribe(socket: &mut Socket, patient: Uuid) {
        let msg = json!({"id": "1", "type": "subscribe", "payload": {
            "query": "subscription($p: UUID!) { chartUpdates(patientId: $p) { patientId position eventType } }",
            "variables": {"p": patient}}});
        socket.send(Message::text(msg.to_string())).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_updates_arrive_over_websocket_for_those_who_may_see_them() {
    let s = server(|_, _| {}).await;
    let (_, rtok) = s.user("desk.ws", "RECEPTIONIST", None).await;
    let (doc, dtok) = s.user("dr.ws", "PHYSICIAN", None).await;
    let (p, _) = s.register(&rtok, "Socketfamily").await;
    s.wait(s.assign(p, doc).await).await;
    // A malformed subscription quoting a name: the library's error must not echo it.
    let (mut bad, _) = ws::connect(&s, Some(&dtok)).await;
    let msg = json!({"id": "9", "type": "subscribe", "payload": {"query": "subscription { chartUpdates(patientId: \"Socketphiname\" { position }"}});
    futures::SinkExt::send(&mut bad, tokio_tungstenite::tungstenite::Message::text(msg.to_string()))
        .await
        .unwrap();
    let err = ws::next(&mut bad).await;
    assert!(!err.to_string().contains("Socketphiname"), "{err}");
    assert!(err.to_string().contains("graphql.invalid_request"), "{err}");
    // Queries and mutations are refused over the socket (only the HTTP path writes the
    // access events before PHI leaves), named or not.
    for (id, payload) in [
        (
            "10",
            json!({"query": "query($p: UUID!) { chart(patientId: $p) { patientId } }", "variables": {"p": p}}),
        ),
        (
            "11",
            json!({"query": "query A { me { userId } } subscription B { chartUpdates(patientId: \"00000000-0000-0000-0000-000000000000\") { position } }", "operationName": "A"}),
        ),
        ("12", json!({"query": "mutation { logout }"})),
    ] {
        let msg = json!({"id": id, "type": "subscribe", "payload": payload});
        futures::SinkExt::send(&mut bad, tokio_tungstenite::tungstenite::Message::text(msg.to_string()))
            .await
            .unwrap();
        let refused = loop {
            let m = ws::next(&mut bad).await;
            if m["id"] == id && m["type"] != "complete" {
                break m;
            }
        };
        let e = if refused["type"] == "error" {
            &refused["payload"][0]
        } else {
            &refused["payload"]["errors"][0]
        };
        assert_eq!(e["extensions"]["code"], "graphql.subscriptions_only", "{refused}");
        assert!(refused["payload"]["data"].is_null(), "{refused}");
    }
    // An unknown purpose of use is refused at the upgrade, not replaced by a default.
    let url = format!("{}/graphql/ws", s.url.replace("http://", "ws://"));
    let mut req =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url).unwrap();
    req.headers_mut().insert("sec-websocket-protocol", "graphql-transport-ws".parse().unwrap());
    req.headers_mut().insert("x-purpose-of-use", "researh".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(req).await.is_err());
    // No session, no connection.
    let (_, first) = ws::connect(&s, None).await;
    assert_ne!(first["type"], "connection_ack", "{first}");
    // A receptionist may not follow clinical changes: the subscription is refused.
    let (mut rsock, ack) = ws::connect(&s, Some(&rtok)).await;
    assert_eq!(ack["type"], "connection_ack");
    ws::subscribe(&mut rsock, p).await;
    let refused = ws::next(&mut rsock).await;
    let code =
        if refused["type"] == "error" { &refused["payload"][0] } else { &refused["payload"]["errors"][0] };
    assert_eq!(code["extensions"]["code"], "authz.forbidden", "{refused}");
    assert!(refused["payload"]["data"].is_null());
    // The physician on the care team gets a notification per change, without content.
    let (mut sock, ack) = ws::connect(&s, Some(&dtok)).await;
    assert_eq!(ack["type"], "connection_ack");
    ws::subscribe(&mut sock, p).await;
    // A second session of the same doctor, to log out of later.
    let dtok2 = s.login("dr.ws", 1).await;
    let (mut sock2, _) = ws::connect(&s, Some(&dtok2)).await;
    ws::subscribe(&mut sock2, p).await;
    // Both subscriptions are live once their (audited) starts are in the access log.
    for _ in 0..100 {
        let starts = s.access_log(p).await.iter().filter(|a| a.user_id == doc).count();
        if starts >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = s
        .gql(
            Some(&dtok),
            RECORD_ENTRY,
            json!({"p": p, "i": Uuid::now_v7(), "c": soap("Socketsecret note"), "e": Uuid::now_v7()}),
        )
        .await;
    let pos = r.data()["recordEntry"]["position"].as_u64().unwrap();
    let update = ws::next(&mut sock).await;
    assert_eq!(update["type"], "next", "{update}");
    let data = &update["payload"]["data"]["chartUpdates"];
    assert_eq!(data["eventType"], "entry.recorded");
    assert_eq!(data["position"].as_u64().unwrap(), pos);
    assert!(!update.to_string().contains("Socketsecret"));
    // Subscribing was an audited access.
    let log = s.access_log(p).await;
    assert!(log
        .iter()
        .any(|a| a.user_id == doc && a.resources.contains(&domain::events::ResourceKind::ClinicalEntries)));
    assert_eq!(
        ws::next(&mut sock2).await["payload"]["data"]["chartUpdates"]["position"].as_u64().unwrap(),
        pos
    );
    // Logging out ends that session's stream at the next change; the other goes on.
    s.gql(Some(&dtok2), "mutation { logout }", json!({})).await.data();
    let demo = "mutation($p: UUID!, $e: UUID!) { updateDemographics(patientId: $p, input: {sex: OTHER}, eventId: $e) { position } }";
    s.gql(Some(&rtok), demo, json!({"p": p, "e": Uuid::now_v7()})).await.data();
    let ended = ws::next(&mut sock2).await;
    assert_eq!(ended["payload"]["errors"][0]["extensions"]["code"], "auth.session_expired", "{ended}");
    let still = ws::next(&mut sock).await;
    assert_eq!(
        still["payload"]["data"]["chartUpdates"]["eventType"], "patient.demographics_updated",
        "{still}"
    );
    // Leaving the care team ends the stream: the removal itself is the change that is
    // no longer shown.
    let rm = "mutation($p: UUID!, $c: UUID!, $e: UUID!) { removeCareTeamMember(patientId: $p, clinicianId: $c, eventId: $e) { position } }";
    s.gql(Some(&s.admin), rm, json!({"p": p, "c": doc, "e": Uuid::now_v7()})).await.data();
    let gone = ws::next(&mut sock).await;
    assert_eq!(gone["payload"]["errors"][0]["extensions"]["code"], "authz.forbidden", "{gone}");
    assert!(gone["payload"]["data"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_lifetime_unique_names_and_deactivation() {
    let s = server(|c, _| c.absolute_timeout = Duration::from_secs(12)).await;
    let (_, tok) = s.user("nurse.abs", "NURSE", None).await;
    // User names are unique.
    let create = "mutation($id: UUID!, $u: String!, $e: UUID!) { createUser(userId: $id, username: $u, displayName: \"Dup\", roles: [NURSE], initialPassword: \"another initial password\", eventId: $e) { position } }";
    let dup = s
        .gql(Some(&s.admin), create, json!({"id": Uuid::now_v7(), "u": "nurse.abs", "e": Uuid::now_v7()}))
        .await;
    assert_eq!(dup.err(), "staff.username_taken");
    // An existing account cannot be re-created (which would reset its password); a
    // retry of the same creation is answered with its result.
    let nurse_id = s.gql(Some(&tok), "{ me { userId } }", json!({})).await.data()["me"]["userId"].clone();
    let again =
        s.gql(Some(&s.admin), create, json!({"id": nurse_id, "u": "nurse.other", "e": Uuid::now_v7()})).await;
    assert_eq!(again.err(), "staff.user_exists");
    let (rid, rev) = (Uuid::now_v7(), Uuid::now_v7());
    let first = s.gql(Some(&s.admin), create, json!({"id": rid, "u": "nurse.retry", "e": rev})).await;
    let retry = s.gql(Some(&s.admin), create, json!({"id": rid, "u": "nurse.retry", "e": rev})).await;
    assert_eq!(first.data()["createUser"]["position"], retry.data()["createUser"]["position"]);
    // Deactivation ends the user's sessions now and refuses later logins.
    let (victim, vtok) = s.user("nurse.leaving", "NURSE", None).await;
    let me = "{ me { userId } }";
    s.gql(Some(&vtok), me, json!({})).await.data();
    let deactivate =
        "mutation($u: UUID!, $e: UUID!) { deactivateUser(userId: $u, eventId: $e) { position } }";
    s.gql(Some(&s.admin), deactivate, json!({"u": victim, "e": Uuid::now_v7()})).await.data();
    assert_eq!(s.gql(Some(&vtok), me, json!({})).await.err(), "auth.session_expired");
    let again = s.gql(None, LOGIN, json!({"u": "nurse.leaving", "p": PASSWORD, "r": null})).await;
    assert_eq!(again.err(), "auth.invalid_credentials");
    let admin_id = s.gql(Some(&s.admin), me, json!({})).await.data()["me"]["userId"].clone();
    let own = s.gql(Some(&s.admin), deactivate, json!({"u": admin_id, "e": Uuid::now_v7()})).await;
    assert_eq!(own.err(), "staff.cannot_deactivate_self");
    // A session ends after its absolute lifetime, however active it was.
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if s.gql(Some(&tok), me, json!({})).await.code().is_some() {
            break;
        }
    }
    assert_eq!(s.gql(Some(&tok), me, json!({})).await.err(), "auth.session_expired");
    let admin = s.login("admin", 0).await;
    let ev = s.gql(Some(&admin), "{ securityEvents(first: 500) { eventType payload } }", json!({})).await;
    let ev = ev.data()["securityEvents"].as_array().unwrap().clone();
    let ended = |end: &str| {
        ev.iter().any(|e| e["eventType"] == "security.session_ended" && e["payload"]["end"] == end)
    };
    assert!(ended("absolute_timeout") && ended("revoked"));
    assert!(ev
        .iter()
        .any(|e| e["eventType"] == "security.login_failed" && e["payload"]["failure"] == "deactivated"));
}

// ------------------------------------------------------------------ separation of duties

const GRANT: &str = "mutation($u: UUID!, $r: Role!, $e: UUID!) { grantRole(userId: $u, role: $r, eventId: $e) { grantId userId role status proposedBy decidedBy position } }";
const APPROVE: &str =
    "mutation($g: UUID!, $e: UUID!) { approveRoleGrant(grantId: $g, eventId: $e) { grantId status decidedBy } }";
const CANCEL: &str =
    "mutation($g: UUID!, $e: UUID!) { cancelRoleGrant(grantId: $g, eventId: $e) { grantId status decidedBy } }";
const ASSIGN: &str = "mutation($p: UUID!, $c: UUID!, $e: UUID!) { assignCareTeamMember(patientId: $p, clinicianId: $c, careRole: ATTENDING, eventId: $e) { position } }";

impl Server {
    async fn my_id(&self, token: &str) -> Uuid {
        let me = self.gql(Some(token), "{ me { userId } }", json!({})).await;
        serde_json::from_value(me.data()["me"]["userId"].clone()).unwrap()
    }

    async fn roles_of(&self, user: Uuid) -> Value {
        let r = self
            .gql(Some(&self.admin), "query($u: UUID!) { user(userId: $u) { roles } }", json!({"u": user}))
            .await;
        r.data()["user"]["roles"].clone()
    }

    async fn grants_of(&self, user: Uuid) -> Vec<Value> {
        let q = "query($u: UUID!) { roleGrants(userId: $u) { grantId role status proposedBy decidedBy } }";
        self.gql(Some(&self.admin2), q, json!({"u": user})).await.data()["roleGrants"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// The reasons of the `security.access_denied` events so far.
    async fn denial_reasons(&self) -> Vec<String> {
        let ev = self
            .gql(Some(&self.admin2), "{ securityEvents(first: 500) { eventType payload } }", json!({}))
            .await;
        ev.data()["securityEvents"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["eventType"] == "security.access_denied")
            .map(|e| e["payload"]["reason"].as_str().unwrap().to_owned())
            .collect()
    }
}

/// Issue 15, item 8: the escalation path `grantRole(self, PHYSICIAN)`,
/// `assignCareTeamMember(P, self)`, log in as physician, read the chart, is closed at
/// every step, and a clinical role takes effect only with a second administrator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_administrator_cannot_give_themselves_clinical_access() {
    let s = server(|_, _| {}).await;
    let admin_id = s.my_id(&s.admin).await;
    let admin2_id = s.my_id(&s.admin2).await;
    let (_, rtok) = s.user("desk.sod", "RECEPTIONIST", None).await;
    let (doc, dtok) = s.user("dr.sod", "PHYSICIAN", None).await;
    let (p, _) = s.register(&rtok, "Separationfamily").await;
    s.wait(s.assign(p, doc).await).await;
    let rec = s
        .gql(
            Some(&dtok),
            RECORD_ENTRY,
            json!({"p": p, "i": Uuid::now_v7(), "c": soap("sod note"), "e": Uuid::now_v7()}),
        )
        .await;
    s.wait(rec.data()["recordEntry"]["position"].as_u64().unwrap()).await;

    // 1. Nobody grants a role to themselves: not a clinical one, not any.
    for role in ["PHYSICIAN", "NURSE", "AUDITOR", "RECEPTIONIST", "ADMINISTRATOR"] {
        let r = s.gql(Some(&s.admin), GRANT, json!({"u": admin_id, "r": role, "e": Uuid::now_v7()})).await;
        assert_eq!(r.err(), "domain.self_grant", "{role}");
    }
    assert_eq!(s.roles_of(admin_id).await, json!(["ADMINISTRATOR"]));
    // 2. Nor assigns themselves to a care team.
    let r = s.gql(Some(&s.admin), ASSIGN, json!({"p": p, "c": admin_id, "e": Uuid::now_v7()})).await;
    assert_eq!(r.err(), "domain.self_assignment");
    let team = s
        .gql(Some(&dtok), "query($p: UUID!) { careTeam(patientId: $p) { clinicianId } }", json!({"p": p}))
        .await;
    assert!(!team.data()["careTeam"].as_array().unwrap().iter().any(|m| m["clinicianId"] == json!(admin_id)));
    // 3. So the administrator cannot log in as a physician, nor read the chart.
    let login = s.gql(None, LOGIN, json!({"u": "admin", "p": PASSWORD, "r": "PHYSICIAN"})).await;
    assert_eq!(login.err(), "auth.invalid_credentials");
    let chart = "query($p: UUID!) { chart(patientId: $p) { entries { entryId } } }";
    assert_eq!(s.gql(Some(&s.admin), chart, json!({"p": p})).await.err(), "authz.forbidden");
    // 4. A grant to them proposed by the other administrator is theirs to approve
    //    neither: approving a grant to oneself is granting oneself the role.
    let g =
        s.gql(Some(&s.admin2), GRANT, json!({"u": admin_id, "r": "PHYSICIAN", "e": Uuid::now_v7()})).await;
    assert_eq!(g.data()["grantRole"]["status"], "PENDING");
    let gid = g.data()["grantRole"]["grantId"].clone();
    assert_eq!(
        s.gql(Some(&s.admin), APPROVE, json!({"g": gid, "e": Uuid::now_v7()})).await.err(),
        "domain.self_grant"
    );
    assert_eq!(s.roles_of(admin_id).await, json!(["ADMINISTRATOR"]));
    let c = s.gql(Some(&s.admin2), CANCEL, json!({"g": gid, "e": Uuid::now_v7()})).await;
    assert_eq!(c.data()["cancelRoleGrant"]["status"], "CANCELLED");

    // 5. A sock puppet: created with a clinical role by one administrator, the account
    //    exists without it; the grant is pending and cannot be approved by its proposer.
    let puppet = Uuid::now_v7();
    let create = "mutation($id: UUID!, $e: UUID!) { createUser(userId: $id, username: \"sock.puppet\", displayName: \"Puppet\", roles: [PHYSICIAN], initialPassword: \"initial password from the admin\", eventId: $e) { position } }";
    s.gql(Some(&s.admin), create, json!({"id": puppet, "e": Uuid::now_v7()})).await.data();
    assert_eq!(s.roles_of(puppet).await, json!([]));
    let grants = s.grants_of(puppet).await;
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0]["status"], "PENDING");
    assert_eq!(grants[0]["role"], "PHYSICIAN");
    assert_eq!(grants[0]["proposedBy"], json!(admin_id));
    let pending = s.gql(Some(&s.admin2), "{ roleGrants(status: PENDING) { grantId } }", json!({})).await;
    assert!(pending.data()["roleGrants"]
        .as_array()
        .unwrap()
        .iter()
        .any(|g| g["grantId"] == grants[0]["grantId"]));
    let login = s.gql(None, LOGIN, json!({"u": "sock.puppet", "p": INITIAL, "r": "PHYSICIAN"})).await;
    assert_eq!(login.err(), "auth.invalid_credentials");
    let self_approval =
        s.gql(Some(&s.admin), APPROVE, json!({"g": grants[0]["grantId"], "e": Uuid::now_v7()})).await;
    assert_eq!(self_approval.err(), "domain.self_approval");
    assert_eq!(s.roles_of(puppet).await, json!([]));
    // A second grant by one administrator is just as pending.
    let nurse = s.gql(Some(&s.admin), GRANT, json!({"u": puppet, "r": "NURSE", "e": Uuid::now_v7()})).await;
    assert_eq!(nurse.data()["grantRole"]["status"], "PENDING");
    assert_eq!(nurse.data()["grantRole"]["proposedBy"], json!(admin_id));
    assert_eq!(s.roles_of(puppet).await, json!([]));
    // The receptionist role (no clinical content) needs one administrator only.
    let desk =
        s.gql(Some(&s.admin), GRANT, json!({"u": puppet, "r": "RECEPTIONIST", "e": Uuid::now_v7()})).await;
    assert_eq!(desk.data()["grantRole"]["status"], "APPROVED");
    assert_eq!(s.roles_of(puppet).await, json!(["RECEPTIONIST"]));

    // 6. The second administrator's approval is what makes a clinical role effective;
    //    a grant is decided once.
    let ok = s.gql(Some(&s.admin2), APPROVE, json!({"g": grants[0]["grantId"], "e": Uuid::now_v7()})).await;
    assert_eq!(ok.data()["approveRoleGrant"]["status"], "APPROVED");
    assert_eq!(ok.data()["approveRoleGrant"]["decidedBy"], json!(admin2_id));
    assert_eq!(s.roles_of(puppet).await, json!(["PHYSICIAN", "RECEPTIONIST"]));
    let again =
        s.gql(Some(&s.admin2), APPROVE, json!({"g": grants[0]["grantId"], "e": Uuid::now_v7()})).await;
    assert_eq!(again.err(), "domain.grant_not_pending");
    let nid = nurse.data()["grantRole"]["grantId"].clone();
    let cancel = s.gql(Some(&s.admin), CANCEL, json!({"g": nid, "e": Uuid::now_v7()})).await;
    assert_eq!(cancel.data()["cancelRoleGrant"]["status"], "CANCELLED");
    let late = s.gql(Some(&s.admin2), APPROVE, json!({"g": nid, "e": Uuid::now_v7()})).await;
    assert_eq!(late.err(), "domain.grant_not_pending");
    assert_eq!(s.roles_of(puppet).await, json!(["PHYSICIAN", "RECEPTIONIST"]));
    // An unknown grant is not found; other roles cannot decide grants.
    let unknown = s.gql(Some(&s.admin2), APPROVE, json!({"g": Uuid::now_v7(), "e": Uuid::now_v7()})).await;
    assert_eq!(unknown.err(), "not_found");
    let by_doctor = s.gql(Some(&dtok), APPROVE, json!({"g": nid, "e": Uuid::now_v7()})).await;
    assert_eq!(by_doctor.err(), "authz.forbidden");

    // 7. Every attempt is in the security log, with its reason.
    let reasons = s.denial_reasons().await;
    for code in ["domain.self_grant", "domain.self_approval", "domain.self_assignment"] {
        assert!(reasons.iter().any(|r| r == code), "{code} not recorded: {reasons:?}");
    }
    // The ledger holds the signed proposals and decisions.
    let head = s.state.store.head().size;
    let all = s.state.store.read_all(0, head as usize, &store::AllFilter::default()).await.unwrap();
    let types: Vec<String> = all.iter().map(|r| r.event.body().event_type.as_str().to_owned()).collect();
    for t in ["staff.role_grant_proposed", "staff.role_grant_approved", "staff.role_grant_cancelled"] {
        assert!(types.iter().any(|x| x == t), "{t}");
    }
}

/// Issue 15, item 8: the first-administrator exception happens once. With two
/// administrators, a third needs both; the bootstrap administrator alone cannot mint
/// another approver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_administrator_cannot_mint_a_second_approver_after_the_first() {
    let s = server(|_, _| {}).await;
    let admin_id = s.my_id(&s.admin).await;
    let admin2_id = s.my_id(&s.admin2).await;
    // The one exception, made in `server()`: the bootstrap administrator's first
    // administrator grant, proposed and approved by it, visible as such.
    let first = s.grants_of(admin2_id).await;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0]["status"], "APPROVED");
    assert_eq!(first[0]["proposedBy"], json!(admin_id));
    assert_eq!(first[0]["decidedBy"], json!(admin_id));
    // A third administrator needs a second one's approval.
    let third = Uuid::now_v7();
    let create = "mutation($id: UUID!, $e: UUID!) { createUser(userId: $id, username: \"admin.three\", displayName: \"Third\", roles: [ADMINISTRATOR], initialPassword: \"initial password from the admin\", eventId: $e) { position } }";
    let ev = Uuid::now_v7();
    let made = s.gql(Some(&s.admin), create, json!({"id": third, "e": ev})).await;
    // A retry of the creation writes nothing new.
    let retry = s.gql(Some(&s.admin), create, json!({"id": third, "e": ev})).await;
    assert_eq!(made.data()["createUser"]["position"], retry.data()["createUser"]["position"]);
    assert_eq!(s.roles_of(third).await, json!([]));
    let grants = s.grants_of(third).await;
    assert_eq!(grants.len(), 1, "a retried creation proposes once: {grants:?}");
    assert_eq!(grants[0]["status"], "PENDING");
    // Even with the second administrator deactivated (the first is alone again), the
    // exception stays spent.
    let deactivate =
        "mutation($u: UUID!, $e: UUID!) { deactivateUser(userId: $u, eventId: $e) { position } }";
    s.gql(Some(&s.admin), deactivate, json!({"u": admin2_id, "e": Uuid::now_v7()})).await.data();
    let fourth =
        s.gql(Some(&s.admin), GRANT, json!({"u": third, "r": "ADMINISTRATOR", "e": Uuid::now_v7()})).await;
    assert_eq!(fourth.data()["grantRole"]["status"], "PENDING");
    let own = s.gql(Some(&s.admin), APPROVE, json!({"g": grants[0]["grantId"], "e": Uuid::now_v7()})).await;
    assert_eq!(own.err(), "domain.self_approval");
    assert_eq!(s.roles_of(third).await, json!([]));
}

// ------------------------------------------------------------------ case references

/// Issue 15, item 9: auditors and legal staff read a record's history or the record as
/// of a time only naming a case, which the access event carries; `asOf` in the future
/// is refused for everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn point_in_time_reads_name_a_case_and_never_look_ahead() {
    let s = server(|_, _| {}).await;
    let (_, rtok) = s.user("desk.case", "RECEPTIONIST", None).await;
    let (doc, dtok) = s.user("dr.case", "PHYSICIAN", None).await;
    let (auditor, atok) = s.user("auditor.case", "AUDITOR", None).await;
    let (legal, ltok) = s.user("legal.case", "LEGAL", None).await;
    let (p, _) = s.register(&rtok, "Casefamily").await;
    s.wait(s.assign(p, doc).await).await;
    let entry = Uuid::now_v7();
    let rec = s
        .gql(
            Some(&dtok),
            RECORD_ENTRY,
            json!({"p": p, "i": entry, "c": soap("case note"), "e": Uuid::now_v7()}),
        )
        .await;
    s.wait(rec.data()["recordEntry"]["position"].as_u64().unwrap()).await;
    let fmt = micros;
    let now = fmt(time::OffsetDateTime::now_utc());
    let chart = "query($p: UUID!, $t: DateTime, $c: String) { chart(patientId: $p, asOf: $t, caseRef: $c) { entries { current { content } } } }";
    let entry_q = "query($p: UUID!, $i: UUID!, $c: String) { entry(patientId: $p, entryId: $i, caseRef: $c) { versions { version } } }";
    let patient_q = "query($p: UUID!, $t: DateTime, $c: String) { patient(patientId: $p, asOf: $t, caseRef: $c) { mrn } }";
    let before = s.access_log(p).await.len();

    // Without a case: refused with a stable code, for every history and point-in-time
    // field, and nothing is read or recorded as an access.
    for tok in [&atok, &ltok] {
        let r = s.gql(Some(tok), chart, json!({"p": p, "t": now, "c": null})).await;
        assert_eq!(r.err(), "access.case_ref_required");
        assert!(r.0["data"]["chart"].is_null());
        let r = s.gql(Some(tok), patient_q, json!({"p": p, "t": now, "c": null})).await;
        assert_eq!(r.err(), "access.case_ref_required");
    }
    let r = s.gql(Some(&atok), entry_q, json!({"p": p, "i": entry, "c": null})).await;
    assert_eq!(r.err(), "access.case_ref_required");
    assert_eq!(s.access_log(p).await.len(), before);
    assert!(s.denial_reasons().await.iter().any(|r| r == "access.case_ref_required"));
    // A malformed case reference is refused as such.
    for (bad, code) in [
        ("CASE\u{202E}1-ESAC".to_owned(), "domain.malformed_value"),
        ("CASE\n1".to_owned(), "domain.malformed_value"),
        ("x".repeat(129), "domain.too_long"),
        ("   ".to_owned(), "domain.missing_field"),
    ] {
        let r = s.gql(Some(&atok), chart, json!({"p": p, "t": now, "c": bad})).await;
        assert_eq!(r.err(), code, "{bad:?}");
    }
    assert_eq!(s.access_log(p).await.len(), before);

    // With a case: allowed, and the access event carries it.
    let r = s.gql(Some(&atok), chart, json!({"p": p, "t": now, "c": "AUDIT-2026/17"})).await;
    assert_eq!(r.data()["chart"]["entries"][0]["current"]["content"]["subjective"], "case note");
    let r =
        s.gql(Some(&ltok), entry_q, json!({"p": p, "i": entry, "c": "Matter 4711 – Müller v. Clinic"})).await;
    assert_eq!(r.data()["entry"]["versions"][0]["version"], json!(1));
    let log = s.access_log(p).await;
    let by = |u: Uuid| log.iter().find(|a| a.user_id == u).unwrap();
    assert_eq!(by(auditor).case_ref.as_deref(), Some("AUDIT-2026/17"));
    assert_eq!(by(legal).case_ref.as_deref(), Some("Matter 4711 – Müller v. Clinic"));
    // ... and reviewers see it in the access log.
    let q = "query($p: UUID!) { accessLog(patientId: $p, first: 50) { edges { node { userId caseRef } } } }";
    let r = s.gql(Some(&s.admin), q, json!({"p": p})).await;
    let edges = r.data()["accessLog"]["edges"].as_array().unwrap().clone();
    assert!(edges
        .iter()
        .any(|e| e["node"]["userId"] == json!(auditor) && e["node"]["caseRef"] == "AUDIT-2026/17"));
    // Reads of the present need none; a case given is recorded all the same.
    s.gql(Some(&dtok), chart, json!({"p": p, "t": null, "c": null})).await.data();
    s.gql(Some(&dtok), chart, json!({"p": p, "t": null, "c": "REVIEW-9"})).await.data();
    assert!(s
        .access_log(p)
        .await
        .iter()
        .any(|a| a.user_id == doc && a.case_ref.as_deref() == Some("REVIEW-9")));
    // Two different cases for one record in one request are refused.
    let two = "query($p: UUID!, $t: DateTime) { a: chart(patientId: $p, asOf: $t, caseRef: \"A-1\") { revision } b: chart(patientId: $p, asOf: $t, caseRef: \"B-2\") { revision } }";
    let r = s.gql(Some(&atok), two, json!({"p": p, "t": now})).await;
    assert_eq!(r.err(), "access.case_ref_conflict");

    // asOf in the future is refused for everyone, beyond a small clock skew.
    let future = "2099-01-01T00:00:00Z";
    for tok in [&atok, &ltok] {
        let r = s.gql(Some(tok), chart, json!({"p": p, "t": future, "c": "AUDIT-2099"})).await;
        assert_eq!(r.err(), "access.as_of_in_future");
    }
    // (for clinicians too, whom the policy refuses point-in-time reads anyway)
    let r = s.gql(Some(&dtok), chart, json!({"p": p, "t": future, "c": null})).await;
    assert_eq!(r.err(), "access.as_of_in_future");
    let soon = fmt(time::OffsetDateTime::now_utc() + time::Duration::minutes(1));
    let r = s.gql(Some(&dtok), patient_q, json!({"p": p, "t": soon, "c": null})).await;
    assert_eq!(r.err(), "access.as_of_in_future");
    let skew = fmt(time::OffsetDateTime::now_utc() + time::Duration::seconds(2));
    s.gql(Some(&atok), patient_q, json!({"p": p, "t": skew, "c": "AUDIT-2026/17"})).await.data();
}

// ------------------------------------------------------------------ read-model tampering

/// Issue 15, item 14: rows written into the read models by hand, without a ledger
/// event, are not honoured by access decisions: a care-team row does not let a nurse
/// write or read a record (nor does a removed member's row put back with its old
/// assignment time), a consent version edited to grant research does not open the record
/// to research, and a role added to a user row does not log anyone in with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_model_rows_without_a_ledger_event_are_not_honoured() {
    let s = server(|_, _| {}).await;
    let pool = s.db.pool();
    let (_, rtok) = s.user("desk.rm", "RECEPTIONIST", None).await;
    let (p, pos) = s.register(&rtok, "Tamperfamily").await;
    s.wait(pos).await;
    let (nurse, ntok) = s.user("nurse.rm", "NURSE", None).await;
    let write = |t: &str| {
        let (t, s) = (t.to_owned(), &s);
        let vars = json!({"p": p, "i": Uuid::now_v7(), "c": soap("vitals taken"), "e": Uuid::now_v7()});
        async move { s.gql(Some(&t), RECORD_ENTRY, vars).await }
    };
    let chart = "query($p: UUID!) { chart(patientId: $p) { patientId } }";
    assert_eq!(write(&ntok).await.err(), "authz.forbidden");

    // The probe's attack: the nurse inserted into the care team by hand.
    let insert = "INSERT INTO rm.care_team VALUES ($1, $2, 'nurse', $3, $2)";
    sqlx::query(insert)
        .bind(p)
        .bind(nurse)
        .bind(time::OffsetDateTime::now_utc())
        .execute(pool)
        .await
        .unwrap();
    assert_eq!(write(&ntok).await.err(), "authz.forbidden");
    assert_eq!(s.gql(Some(&ntok), chart, json!({"p": p})).await.err(), "authz.forbidden");
    let mine = s.gql(Some(&ntok), "{ myPatients }", json!({})).await;
    assert_eq!(mine.data()["myPatients"], json!([]));
    sqlx::query("DELETE FROM rm.care_team WHERE clinician_id = $1").bind(nurse).execute(pool).await.unwrap();

    // Assigned through the ledger, the nurse writes and reads.
    let pos = s.assign(p, nurse).await;
    s.wait(pos).await;
    write(&ntok).await.data();
    assert_eq!(s.gql(Some(&ntok), chart, json!({"p": p})).await.data()["chart"]["patientId"], json!(p));

    // Removed through the ledger, then the old row put back by hand: not honoured.
    let (role, at, by): (String, time::OffsetDateTime, Uuid) = sqlx::query_as(
        "SELECT care_role, assigned_at, assigned_by FROM rm.care_team WHERE clinician_id = $1",
    )
    .bind(nurse)
    .fetch_one(pool)
    .await
    .unwrap();
    let remove = "mutation($p: UUID!, $c: UUID!, $e: UUID!) { removeCareTeamMember(patientId: $p, clinicianId: $c, eventId: $e) { position } }";
    let r = s.gql(Some(&s.admin), remove, json!({"p": p, "c": nurse, "e": Uuid::now_v7()})).await;
    s.wait(r.data()["removeCareTeamMember"]["position"].as_u64().unwrap()).await;
    sqlx::query("INSERT INTO rm.care_team VALUES ($1, $2, $3, $4, $5)")
        .bind(p)
        .bind(nurse)
        .bind(role)
        .bind(at)
        .bind(by)
        .execute(pool)
        .await
        .unwrap();
    assert_eq!(write(&ntok).await.err(), "authz.forbidden");
    assert_eq!(s.gql(Some(&ntok), chart, json!({"p": p})).await.err(), "authz.forbidden");

    // A consent edited by hand to grant research: refused for research.
    let (doc, dtok) = s.user("dr.rm", "PHYSICIAN", None).await;
    let pos = s.assign(p, doc).await;
    s.wait(pos).await;
    let consent = "mutation($p: UUID!, $g: [ConsentPurpose!]!, $e: UUID!) { recordConsent(patientId: $p, consentId: $e, granted: $g, method: WRITTEN, eventId: $e) { position } }";
    let r = s.gql(Some(&dtok), consent, json!({"p": p, "g": ["TREATMENT"], "e": Uuid::now_v7()})).await;
    s.wait(r.data()["recordConsent"]["position"].as_u64().unwrap()).await;
    let research = || s.gql_with(Some(&dtok), Some("research"), chart, json!({"p": p}));
    assert_eq!(research().await.err(), "authz.consent_required");
    sqlx::query("UPDATE rm.consents SET granted = array_append(granted, 'research') WHERE patient_id = $1")
        .bind(p)
        .execute(pool)
        .await
        .unwrap();
    assert_eq!(research().await.err(), "projection.unbacked");
    // Treatment needs no consent: the care team still works.
    assert_eq!(s.gql(Some(&dtok), chart, json!({"p": p})).await.data()["chart"]["patientId"], json!(p));

    // A role added to the nurse's user row by hand does not log in with it.
    sqlx::query("UPDATE rm.users SET roles = array_append(roles, 'physician') WHERE user_id = $1")
        .bind(nurse)
        .execute(pool)
        .await
        .unwrap();
    let login = s.gql(None, LOGIN, json!({"u": "nurse.rm", "p": PASSWORD, "r": "PHYSICIAN"})).await;
    assert!(login.0["data"]["login"].is_null(), "{}", login.0);
    assert_eq!(login.err(), "projection.unbacked");
}
