//! Read-side integration tests on a real PostgreSQL (one fresh database per test).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use domain::chart::Chart;
use domain::commands::Command;
use domain::events::*;
use domain::sim::{Sim, Step};
use domain::DomainError;
use ed25519_dalek::SigningKey;
use ledger::{Actor, LedgerSigningKey, Timestamp};
use projections::pit::{chart_as_of, chart_at_head};
use projections::queries::{AccessQuery, PatientSearch};
use projections::{Executed, Projections, ReadModels, Records, RecordsError, RunnerConfig};
use proptest::prelude::*;
use store::{EventStore, StoreConfig};
use testdb::TestDb;
use uuid::Uuid;

struct Env {
    _db: TestDb,
    store: EventStore,
    projections: Projections,
    records: Records,
    read: ReadModels,
}

fn runner_config() -> RunnerConfig {
    // Small pages and batches so that tests cross many batch boundaries.
    RunnerConfig {
        batch_events: 7,
        page_events: 13,
        cache_charts: 3,
        retry_backoff: Duration::from_millis(50),
    }
}

async fn env() -> Env {
    let db = TestDb::new().await.unwrap();
    let key = LedgerSigningKey::new("test.example/ledger", SigningKey::from_bytes(&[5u8; 32])).unwrap();
    let config = StoreConfig {
        origin: "test.example/ledger".into(),
        poll_interval: Duration::from_millis(100),
        checkpoint_interval: Duration::from_millis(200),
        ..StoreConfig::default()
    };
    let store = EventStore::open(db.pool().clone(), key, config).await.unwrap();
    let projections = Projections::start(store.clone(), runner_config()).await.unwrap();
    let records = Records::new(store.clone());
    let read = ReadModels::new(db.pool().clone());
    Env { _db: db, store, projections, records, read }
}

fn actor(role: Role) -> Actor {
    Actor { user_id: Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001), role: role.role_name() }
}

fn now() -> Timestamp {
    Timestamp::from_micros(
        i64::try_from(
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros(),
        )
        .unwrap(),
    )
}

/// Drive the simulator through the command service: `steps` steps over `patients`
/// patients. Calls `at_step` after every step with the last result.
async fn drive(
    env: &Env,
    seed: u64,
    patients: usize,
    steps: usize,
    mut at_step: impl AsyncStep,
) -> Vec<Uuid> {
    let mut sim = Sim::new(seed);
    let mut ids = Vec::new();
    for _ in 0..patients {
        let (id, cmd) = sim.register();
        env.records.execute(id, actor(Role::Receptionist), Uuid::now_v7(), cmd).await.unwrap();
        ids.push(id);
    }
    for i in 0..steps {
        let id = ids[sim.rng.below(ids.len() as u64) as usize];
        let chart = env.records.current_chart(id).await.unwrap();
        let done = match sim.step(&chart, now()) {
            Step::Command { command, author_role, .. } => {
                env.records.execute(id, actor(author_role), Uuid::now_v7(), command).await.unwrap()
            }
            Step::Access { event, role } => {
                env.records.record_access(actor(role), Uuid::now_v7(), event).await.unwrap()
            }
        };
        at_step.call(env, i, &ids, done).await;
    }
    ids
}

trait AsyncStep {
    async fn call(&mut self, env: &Env, step: usize, ids: &[Uuid], done: Executed);
}

struct NoOp;
impl AsyncStep for NoOp {
    async fn call(&mut self, _: &Env, _: usize, _: &[Uuid], _: Executed) {}
}

async fn caught_up(env: &Env) {
    let head = env.store.head().size;
    env.projections.wait_for(head - 1, Duration::from_secs(20)).await.unwrap();
}

async fn assert_read_models_equal_fold(env: &Env, ids: &[Uuid]) {
    caught_up(env).await;
    for id in ids {
        let sql = env.read.chart(*id).await.unwrap().expect("chart in the read model");
        let fold = chart_at_head(&env.store, *id).await.unwrap();
        assert_eq!(fold.skipped, 0);
        assert_eq!(sql, fold.chart, "read model differs from the fold for a patient");
        assert_eq!(sql.anomalies, 0);
    }
}

/// Snapshots of read-model charts taken while the store's head was at a known time.
struct Snapshots(Vec<(Timestamp, Uuid, Chart)>, u64);

impl AsyncStep for &mut Snapshots {
    async fn call(&mut self, env: &Env, step: usize, ids: &[Uuid], done: Executed) {
        if (step as u64 + self.1) % 9 != 0 {
            return;
        }
        env.projections.wait_for(done.position, Duration::from_secs(20)).await.unwrap();
        let at = env.store.event_by_id(done.event_id).await.unwrap().unwrap().event.body().recorded_at;
        for id in ids {
            let chart = env.read.chart(*id).await.unwrap().unwrap();
            self.0.push((at, *id, chart));
        }
        // The next event must be recorded strictly after `at`.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4, ..ProptestConfig::default() })]

    /// The SQL read model at head equals the in-memory fold, and replay to any time T
    /// equals the read model as it was when the store's head was at T.
    #[test]
    fn read_model_equals_fold_and_replay_equals_the_past(seed in any::<u64>(), steps in 20usize..90) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let env = env().await;
            let mut snaps = Snapshots(Vec::new(), seed % 9);
            let ids = drive(&env, seed, 3, steps, &mut snaps).await;
            assert_read_models_equal_fold(&env, &ids).await;
            assert!(!snaps.0.is_empty() || steps < 9);
            for (at, id, then) in &snaps.0 {
                let replay = chart_as_of(&env.store, *id, *at).await.unwrap();
                assert_eq!(&replay.chart, then, "replay to T differs from the read model at T");
            }
            env.projections.shutdown().await;
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runners_on_one_generation_apply_each_event_once() {
    let env = env().await;
    // A second process's runner on the same database and generation.
    let rival = Projections::start(env.store.clone(), runner_config()).await.unwrap();
    let ids = drive(&env, 11, 4, 120, NoOp).await;
    assert_read_models_equal_fold(&env, &ids).await;
    let accesses: i64 =
        sqlx::query_scalar("SELECT count(*) FROM rm.access_log").fetch_one(env.store.pool()).await.unwrap();
    let appended: i64 =
        sqlx::query_scalar("SELECT count(*) FROM ledger_events WHERE event_type = 'access.recorded'")
            .fetch_one(env.store.pool())
            .await
            .unwrap();
    assert_eq!(accesses, appended);
    rival.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_from_the_stored_position() {
    let env = env().await;
    let ids = drive(&env, 12, 3, 40, NoOp).await;
    caught_up(&env).await;
    env.projections.shutdown().await;
    // Events appended while no runner runs...
    let more = drive(&env, 13, 2, 40, NoOp).await;
    let restarted = Projections::start(env.store.clone(), runner_config()).await.unwrap();
    let head = env.store.head().size;
    restarted.wait_for(head - 1, Duration::from_secs(20)).await.unwrap();
    assert_eq!(restarted.lag().await.unwrap(), 0);
    for id in ids.iter().chain(&more) {
        let sql = env.read.chart(*id).await.unwrap().unwrap();
        assert_eq!(sql, chart_at_head(&env.store, *id).await.unwrap().chart);
    }
    restarted.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_rebuild_switches_while_writes_continue() {
    let env = env().await;
    let ids = drive(&env, 21, 3, 60, NoOp).await;
    caught_up(&env).await;
    assert_eq!(env.projections.active_generation(), 1);
    // Keep writing while the rebuild runs; reads keep being served by generation 1.
    let writer = {
        let records = env.records.clone();
        let id = ids[0];
        tokio::spawn(async move {
            let mut sim = Sim::new(99);
            for _ in 0..30 {
                let content = sim.content(Some(EntryKind::Observation));
                let cmd = Command::RecordEntry { entry_id: Uuid::now_v7(), content, effective_at: now() };
                records.execute(id, actor(Role::Nurse), Uuid::now_v7(), cmd).await.unwrap();
            }
        })
    };
    let reader = {
        let read = env.read.clone();
        let id = ids[1];
        tokio::spawn(async move {
            for _ in 0..30 {
                assert!(read.chart(id).await.unwrap().is_some());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let generation = env.projections.rebuild(Duration::from_secs(60)).await.unwrap();
    assert_eq!(generation, 2);
    writer.await.unwrap();
    reader.await.unwrap();
    assert_read_models_equal_fold(&env, &ids).await;
    let gens = env.projections.generations().await.unwrap();
    assert_eq!(gens.iter().map(|g| g.status.as_str()).collect::<Vec<_>>(), ["retired", "active"]);
    // The retired generation's schema is dropped once its runner has stopped.
    let mut dropped = false;
    for _ in 0..100 {
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'rm_records_g1')")
                .fetch_one(env.store.pool())
                .await
                .unwrap();
        if !exists {
            dropped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(dropped);
    // A rebuild of an idle ledger switches too (nothing moves the position meanwhile).
    let generation = env.projections.rebuild(Duration::from_secs(20)).await.unwrap();
    assert_eq!(generation, 3);
    assert_read_models_equal_fold(&env, &ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_your_writes_and_timeouts() {
    let env = env().await;
    let mut sim = Sim::new(3);
    let (id, cmd) = sim.register();
    env.records.execute(id, actor(Role::Receptionist), Uuid::now_v7(), cmd).await.unwrap();
    let entry_id = Uuid::now_v7();
    let content = sim.content(Some(EntryKind::Allergy));
    let cmd = Command::RecordEntry { entry_id, content, effective_at: now() };
    let done = env.records.execute(id, actor(Role::Physician), Uuid::now_v7(), cmd).await.unwrap();
    env.projections.wait_for(done.position, Duration::from_secs(10)).await.unwrap();
    let chart = env.read.chart(id).await.unwrap().unwrap();
    assert!(chart.entries.contains_key(&entry_id));
    let err = env.projections.wait_for(done.position + 1000, Duration::from_millis(50)).await.unwrap_err();
    assert_eq!(err.code(), "projection.timeout");
    assert_eq!(env.projections.lag().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_idempotent_refusals_change_nothing_and_races_retry() {
    let env = env().await;
    let mut sim = Sim::new(4);
    let (id, cmd) = sim.register();
    let reg_id = Uuid::now_v7();
    let first = env.records.execute(id, actor(Role::Receptionist), reg_id, cmd.clone()).await.unwrap();
    // A retry with the same event id answers the original result.
    let again = env.records.execute(id, actor(Role::Receptionist), reg_id, cmd.clone()).await.unwrap();
    assert!(again.idempotent_replay);
    assert_eq!((again.position, again.revision), (first.position, first.revision));
    // The same command with a new id is refused, and nothing is written.
    let head = env.store.head().size;
    let err = env.records.execute(id, actor(Role::Receptionist), Uuid::now_v7(), cmd).await.unwrap_err();
    assert_eq!(err.code(), "domain.patient_already_registered");
    let missing = Command::MarkEnteredInError { entry_id: Uuid::now_v7(), reason: "x".into() };
    let err = env.records.execute(id, actor(Role::Physician), Uuid::now_v7(), missing).await.unwrap_err();
    assert!(matches!(err, RecordsError::Domain(DomainError::UnknownEntry)));
    let unknown = Command::CompleteAppointment { appointment_id: Uuid::now_v7() };
    let err = env
        .records
        .execute(Uuid::now_v7(), actor(Role::Receptionist), Uuid::now_v7(), unknown)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "domain.unknown_patient");
    assert_eq!(env.store.head().size, head);
    // Sixteen concurrent writers on one patient: every command lands exactly once, in
    // some order (they queue on the patient's lock instead of failing each other).
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let records = env.records.clone();
        let content = sim.content(Some(EntryKind::SoapNote));
        tasks.push(tokio::spawn(async move {
            let cmd = Command::RecordEntry { entry_id: Uuid::now_v7(), content, effective_at: now() };
            records.execute(id, actor(Role::Physician), Uuid::now_v7(), cmd).await
        }));
    }
    let mut revisions = BTreeSet::new();
    for t in tasks {
        let done = t.await.unwrap().unwrap();
        assert!(revisions.insert(done.revision));
    }
    let chart = env.records.current_chart(id).await.unwrap();
    assert_eq!(chart.entries.len(), 16);
    assert_eq!(revisions.len(), 16);
    // A second `Records` stands for another process: the two race on revisions and
    // the losers retry from a fresh fold.
    let other = Records::new(env.store.clone());
    let mut tasks = Vec::new();
    for i in 0..8 {
        let records = if i % 2 == 0 { env.records.clone() } else { other.clone() };
        let content = sim.content(Some(EntryKind::SoapNote));
        tasks.push(tokio::spawn(async move {
            let cmd = Command::RecordEntry { entry_id: Uuid::now_v7(), content, effective_at: now() };
            records.execute(id, actor(Role::Physician), Uuid::now_v7(), cmd).await
        }));
    }
    for t in tasks {
        let done = t.await.unwrap().unwrap();
        assert!(revisions.insert(done.revision));
    }
    assert_eq!(env.records.current_chart(id).await.unwrap().entries.len(), 24);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_serve_index_history_consents_schedule_access_log_and_staff() {
    let env = env().await;
    let mut sim = Sim::new(5);
    let (id, cmd) = sim.register();
    let Command::RegisterPatient(reg) = &cmd else { unreachable!() };
    let (family, mrn, birth) = (reg.name.family.clone(), reg.mrn.clone(), reg.birth_date);
    env.records.execute(id, actor(Role::Receptionist), Uuid::now_v7(), cmd).await.unwrap();
    let entry_id = Uuid::now_v7();
    let c1 = sim.content(Some(EntryKind::Condition));
    env.records
        .execute(
            id,
            actor(Role::Physician),
            Uuid::now_v7(),
            Command::RecordEntry { entry_id, content: c1, effective_at: now() },
        )
        .await
        .unwrap();
    let amendment_id = Uuid::now_v7();
    let c2 = sim.content(Some(EntryKind::Condition));
    let amend = Command::AmendEntry {
        amendment_id,
        entry_id,
        content: c2.clone(),
        reason: "refined".into(),
        effective_at: now(),
    };
    env.records.execute(id, actor(Role::Physician), Uuid::now_v7(), amend).await.unwrap();
    let clinician = Uuid::now_v7();
    let assign = Command::AssignCareTeamMember { clinician_id: clinician, care_role: CareRole::PrimaryCare };
    env.records.execute(id, actor(Role::Administrator), Uuid::now_v7(), assign).await.unwrap();
    let start = Timestamp::from_micros(now().as_micros() + 86_400_000_000);
    let end = Timestamp::from_micros(start.as_micros() + 1_800_000_000);
    let appointment_id = Uuid::now_v7();
    let schedule = Command::ScheduleAppointment {
        appointment_id,
        clinician_id: clinician,
        visit_type: VisitType::FirstVisit,
        start,
        end,
    };
    env.records.execute(id, actor(Role::Receptionist), Uuid::now_v7(), schedule).await.unwrap();
    let granted: BTreeSet<Purpose> = [Purpose::Treatment, Purpose::Research].into_iter().collect();
    let consent = Command::RecordConsent {
        consent_id: Uuid::now_v7(),
        granted,
        method: ConsentMethod::Written,
        witness_id: Some(clinician),
        given_at: now(),
    };
    env.records.execute(id, actor(Role::Nurse), Uuid::now_v7(), consent).await.unwrap();
    let withdraw = Command::WithdrawConsent {
        purposes: [Purpose::Research].into_iter().collect(),
        witness_id: None,
        withdrawn_at: now(),
    };
    env.records.execute(id, actor(Role::Nurse), Uuid::now_v7(), withdraw).await.unwrap();
    let viewer = Actor { user_id: clinician, role: Role::Physician.role_name() };
    let access = RecordAccessed {
        patient_id: id,
        resources: [ResourceKind::ClinicalEntries].into_iter().collect(),
        action: AccessAction::View,
        purpose: PurposeOfUse::Emergency,
        break_glass_reason: Some("unresponsive".into()),
        client_addr: Some("10.1.2.3".into()),
        user_agent: None,
        session_id: Some(Uuid::now_v7()),
    };
    let mut no_reason = access.clone();
    no_reason.break_glass_reason = None;
    let err = env.records.record_access(viewer.clone(), Uuid::now_v7(), no_reason).await.unwrap_err();
    assert_eq!(err.code(), "domain.break_glass_reason_missing");
    env.records.record_access(viewer, Uuid::now_v7(), access).await.unwrap();
    let staff_user = Uuid::now_v7();
    let created = DomainEvent::UserCreated(UserCreated {
        user_id: staff_user,
        username: "dr.who".into(),
        display_name: "Dr Who".into(),
        roles: [Role::Physician].into_iter().collect(),
        patient_id: None,
    });
    env.records.record_system(actor(Role::Administrator), Uuid::now_v7(), created).await.unwrap();
    let granted = DomainEvent::RoleGranted(RoleChanged { user_id: staff_user, role: Role::Auditor });
    let done = env.records.record_system(actor(Role::Administrator), Uuid::now_v7(), granted).await.unwrap();
    env.projections.wait_for(done.position, Duration::from_secs(10)).await.unwrap();

    // Patient index.
    let prefix = family[..3].to_uppercase();
    let found = env
        .read
        .search_patients(
            &PatientSearch { family_prefix: Some(prefix), birth_date: Some(birth), mrn: None },
            10,
        )
        .await
        .unwrap();
    assert_eq!(found.iter().map(|p| p.patient_id).collect::<Vec<_>>(), vec![id]);
    let by_mrn = env
        .read
        .search_patients(&PatientSearch { mrn: Some(mrn), ..PatientSearch::default() }, 10)
        .await
        .unwrap();
    assert_eq!(by_mrn.len(), 1);
    let none = env
        .read
        .search_patients(&PatientSearch { family_prefix: Some("%".into()), ..PatientSearch::default() }, 10)
        .await
        .unwrap();
    assert!(none.is_empty(), "LIKE wildcards in the search are literal");
    // Entry history, reachable through the amendment's id too.
    let versions = env.read.entry_history(id, amendment_id).await.unwrap().unwrap();
    assert!(env.read.entry_history(Uuid::now_v7(), amendment_id).await.unwrap().is_none());
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[1].content, c2);
    assert_eq!(versions[1].change.reason(), Some("refined"));
    // Consents: the withdrawal is a new version; research is no longer granted.
    let consents = env.read.consent_history(id).await.unwrap();
    assert_eq!(consents.len(), 2);
    assert_eq!(consents[1].granted, [Purpose::Treatment].into_iter().collect());
    // Care team and schedule.
    assert!(env.read.is_on_care_team(id, clinician).await.unwrap());
    assert_eq!(env.read.patients_of(clinician).await.unwrap(), vec![id]);
    let day = env.read.schedule(clinician, now(), Timestamp::from_micros(end.as_micros() + 1)).await.unwrap();
    assert_eq!(day.len(), 1);
    assert_eq!(day[0].0, id);
    assert_eq!(env.read.appointments_of_patient(id).await.unwrap()[0].appointment_id, appointment_id);
    // Access log by patient, by user and by time.
    let by_patient = env
        .read
        .access_log(&AccessQuery { patient_id: Some(id), limit: 10, ..AccessQuery::default() })
        .await
        .unwrap();
    assert_eq!(by_patient.len(), 1);
    assert_eq!(by_patient[0].break_glass_reason.as_deref(), Some("unresponsive"));
    assert_eq!(by_patient[0].purpose, PurposeOfUse::Emergency);
    let by_user = env
        .read
        .access_log(&AccessQuery { user_id: Some(clinician), limit: 10, ..AccessQuery::default() })
        .await
        .unwrap();
    assert_eq!(by_user.len(), 1);
    let later = env
        .read
        .access_log(&AccessQuery { from: Some(now()), limit: 10, ..AccessQuery::default() })
        .await
        .unwrap();
    assert!(later.is_empty());
    // Staff directory.
    let user = env.read.user(staff_user).await.unwrap().unwrap();
    assert_eq!(user.roles, [Role::Physician, Role::Auditor].into_iter().collect());
    assert!(user.active);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_are_scoped_to_their_patient_and_newer_events_stop_the_runner() {
    let env = env().await;
    let mut sim = Sim::new(6);
    let (a, reg_a) = sim.register();
    let (b, reg_b) = sim.register();
    env.records.execute(a, actor(Role::Receptionist), Uuid::now_v7(), reg_a).await.unwrap();
    env.records.execute(b, actor(Role::Receptionist), Uuid::now_v7(), reg_b).await.unwrap();
    // Registering with a body naming another patient is refused.
    let (_, other) = sim.register();
    let err = env
        .records
        .execute(Uuid::now_v7(), actor(Role::Receptionist), Uuid::now_v7(), other)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "domain.malformed_value");
    // B's client reuses A's entry and appointment ids: A's record must not change.
    let shared_entry = Uuid::now_v7();
    let shared_appt = Uuid::now_v7();
    for (patient, kind) in [(a, EntryKind::LabResult), (b, EntryKind::SoapNote)] {
        let content = sim.content(Some(kind));
        let cmd = Command::RecordEntry { entry_id: shared_entry, content, effective_at: now() };
        env.records.execute(patient, actor(Role::Physician), Uuid::now_v7(), cmd).await.unwrap();
        let start = Timestamp::from_micros(now().as_micros() + 86_400_000_000);
        let cmd = Command::ScheduleAppointment {
            appointment_id: shared_appt,
            clinician_id: Uuid::now_v7(),
            visit_type: VisitType::FollowUp,
            start,
            end: Timestamp::from_micros(start.as_micros() + 900_000_000),
        };
        env.records.execute(patient, actor(Role::Receptionist), Uuid::now_v7(), cmd).await.unwrap();
    }
    let content = sim.content(Some(EntryKind::SoapNote));
    let amend = Command::AmendEntry {
        amendment_id: Uuid::now_v7(),
        entry_id: shared_entry,
        content,
        reason: "r".into(),
        effective_at: now(),
    };
    env.records.execute(b, actor(Role::Physician), Uuid::now_v7(), amend).await.unwrap();
    let cancel =
        Command::CancelAppointment { appointment_id: shared_appt, cancelled_by: CancelledBy::Patient };
    env.records.execute(b, actor(Role::Receptionist), Uuid::now_v7(), cancel).await.unwrap();
    assert_read_models_equal_fold(&env, &[a, b]).await;
    assert_eq!(env.read.entry_history(a, shared_entry).await.unwrap().unwrap().len(), 1);
    assert_eq!(env.read.entry_history(b, shared_entry).await.unwrap().unwrap().len(), 2);

    // An event written by a newer build (unknown schema version) is not skipped: the
    // runner stops before it and reports lag.
    let future = ProposedEventBuilder::future();
    let at = env
        .store
        .append(&domain::streams::patient(a), store::ExpectedRevision::Any, vec![future])
        .await
        .unwrap();
    let later =
        Command::RecordEntry { entry_id: Uuid::now_v7(), content: sim.content(None), effective_at: now() };
    // The command side still works on what it can decode (expecting the stream's real
    // last revision, not the last one it understood)...
    env.records.execute(a, actor(Role::Physician), Uuid::now_v7(), later).await.unwrap();
    // ...but the read side holds at the newer event.
    let waited = env.projections.wait_for(at.last_position(), Duration::from_millis(500)).await.unwrap_err();
    assert_eq!(waited.code(), "projection.timeout");
    assert_eq!(env.projections.position(), at.last_position());
    assert_eq!(env.projections.skipped(), 0);
    assert!(env.projections.lag().await.unwrap() >= 2);
}

struct ProposedEventBuilder;

impl ProposedEventBuilder {
    fn future() -> store::ProposedEvent {
        store::ProposedEvent {
            event_id: Uuid::now_v7(),
            event_type: ledger::EventType::new("patient.demographics_updated").unwrap(),
            schema_version: 99,
            actor: actor(Role::Receptionist),
            payload: b"{}".to_vec(),
        }
    }
}
