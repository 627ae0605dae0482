//! Read-side integration tests on a real PostgreSQL (one fresh database per test).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use domain::chart::{AccessLogEntry, Chart, VersionChange};
use domain::commands::Command;
use domain::events::*;
use domain::sim::{Sim, Step};
use domain::{DomainError, Recorded};
use ed25519_dalek::SigningKey;
use ledger::{Actor, LedgerSigningKey, Timestamp};
use projections::pit::{chart_as_of, chart_at_head, entry_history_as_of};
use projections::queries::{AccessQuery, PatientSearch};
use projections::{Executed, Projections, ReadModels, Records, RecordsError, RunnerConfig};
use proptest::prelude::*;
use store::{EventStore, StoreConfig};
use testdb::TestDb;
use uuid::Uuid;

#[path = "projections/verify.rs"]
mod verify;

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
        commit_events: 30,
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

use store::now;

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

/// Sleep after every step.
struct Pace(Duration);
impl AsyncStep for Pace {
    async fn call(&mut self, _: &Env, _: usize, _: &[Uuid], _: Executed) {
        tokio::time::sleep(self.0).await;
    }
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
        let current = env.read.current_chart(*id).await.unwrap().expect("current chart");
        assert_eq!(*current, fold.chart, "the current chart (cached or not) differs from the fold");
    }
}

/// One access-log row per access event in the ledger (no event applied twice or lost).
async fn assert_access_log_rows_match_the_ledger(env: &Env) {
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM rm.access_log").fetch_one(env.store.pool()).await.unwrap();
    let appended: i64 =
        sqlx::query_scalar("SELECT count(*) FROM ledger_events WHERE event_type = 'access.recorded'")
            .fetch_one(env.store.pool())
            .await
            .unwrap();
    assert_eq!(rows, appended);
}

/// The read models (chart and access log of every patient), read while the store's head
/// was the event at `position`, recorded at `at`.
struct Snap {
    at: Timestamp,
    position: u64,
    patients: Vec<(Uuid, Chart, Vec<AccessLogEntry>)>,
}

/// Snapshots taken every `every` steps, starting at step `offset`.
struct Snapshots {
    snaps: Vec<Snap>,
    every: usize,
    offset: usize,
}

impl AsyncStep for &mut Snapshots {
    async fn call(&mut self, env: &Env, step: usize, ids: &[Uuid], done: Executed) {
        if (step + self.offset) % self.every != 0 {
            return;
        }
        env.projections.wait_for(done.position, Duration::from_secs(20)).await.unwrap();
        let at = env.store.event_by_id(done.event_id).await.unwrap().unwrap().event.body().recorded_at;
        let mut patients = Vec::new();
        for id in ids {
            let chart = env.read.chart(*id).await.unwrap().unwrap();
            let access = env.read.access_log(&by_patient(*id)).await.unwrap();
            patients.push((*id, chart, access));
        }
        self.snaps.push(Snap { at, position: done.position, patients });
        // The next event must be recorded strictly after `at` (and leave room between).
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A view of one kind of a patient's record, for treatment, with no client details.
fn viewed(patient_id: Uuid, resource: ResourceKind) -> RecordAccessed {
    RecordAccessed {
        patient_id,
        resources: BTreeSet::from([resource]),
        action: AccessAction::View,
        purpose: PurposeOfUse::Treatment,
        break_glass_reason: None,
        client_addr: None,
        user_agent: None,
        session_id: None,
        case_ref: None,
    }
}

fn by_patient(id: Uuid) -> AccessQuery {
    AccessQuery { patient_id: Some(id), limit: 1000, ..AccessQuery::default() }
}

fn micros(t: Timestamp, d: i64) -> Timestamp {
    Timestamp::from_micros(t.as_micros() + d)
}

/// A patient's access log as the ledger holds it (newest first, as the query answers),
/// through `at` (or all of it).
async fn ledger_access_log(store: &EventStore, id: Uuid, at: Option<Timestamp>) -> Vec<AccessLogEntry> {
    let stream = domain::streams::access(id);
    let raw = match at {
        Some(at) => store.read_stream_as_of(&stream, at).await.unwrap(),
        None => store.read_whole_stream(&stream).await.unwrap(),
    };
    let mut rows: Vec<AccessLogEntry> = raw
        .iter()
        .map(|r| Recorded::decode(r.position, &r.event, r.payload.as_ref()).unwrap())
        .filter_map(|r| AccessLogEntry::of(&r))
        .collect();
    rows.reverse();
    rows
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    /// The SQL read model at head equals the in-memory fold (charts, and each patient's
    /// access log equals what the ledger holds); replay to any time T equals the read
    /// model as it was when the store's head was at T, for T at an event and strictly
    /// between two events; and the access log queried up to T equals the access log read
    /// at T.
    #[test]
    fn read_model_equals_fold_and_replay_equals_the_past(
        seed in any::<u64>(),
        patients in 2usize..6,
        steps in 30usize..110,
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let env = env().await;
            let mut snaps = Snapshots { snaps: Vec::new(), every: 3, offset: (seed % 3) as usize };
            let ids = drive(&env, seed, patients, steps, &mut snaps).await;
            assert_read_models_equal_fold(&env, &ids).await;
            assert!(snaps.snaps.len() >= steps / 3);
            let mut between = 0;
            for (i, snap) in snaps.snaps.iter().enumerate() {
                // The head stayed at `position` from `at` until the next event was recorded:
                // replay at `at`, and at a time strictly between the two events (just
                // after `at`, halfway, or just before the next event).
                let next_at = env
                    .store
                    .read_all(snap.position + 1, 1, &store::AllFilter::default())
                    .await
                    .unwrap()
                    .first()
                    .map(|r| r.event.body().recorded_at);
                let mut t = snap.at;
                if let Some(next) = next_at.filter(|n| n.as_micros() > snap.at.as_micros() + 2) {
                    t = match i % 3 {
                        0 => micros(snap.at, 1),
                        1 => Timestamp::from_micros((snap.at.as_micros() + next.as_micros()) / 2),
                        _ => micros(next, -1),
                    };
                    between += 1;
                }
                for (id, chart, access) in &snap.patients {
                    for t in [snap.at, t] {
                        let replay = chart_as_of(&env.store, *id, t).await.unwrap();
                        assert_eq!(replay.skipped, 0);
                        assert_eq!(&replay.chart, chart, "replay to T differs from the read model at T");
                    }
                    assert_eq!(
                        &ledger_access_log(&env.store, *id, Some(t)).await,
                        access,
                        "the ledger's access log through T differs from the read model at T"
                    );
                    let upto = AccessQuery { to: Some(micros(t, 1)), ..by_patient(*id) };
                    assert_eq!(&env.read.access_log(&upto).await.unwrap(), access);
                }
            }
            assert!(between > 0, "no snapshot was followed by a later event");
            for id in &ids {
                // The access log at head, row for row.
                let sql = env.read.access_log(&by_patient(*id)).await.unwrap();
                assert_eq!(sql, ledger_access_log(&env.store, *id, None).await);
                // Before the patient's first event, the record did not exist.
                let first = env.store.read_whole_stream(&domain::streams::patient(*id)).await.unwrap();
                let before = micros(first[0].event.body().recorded_at, -1);
                let replay = chart_as_of(&env.store, *id, before).await.unwrap();
                assert_eq!((replay.events, replay.chart), (0, Chart::new(*id)));
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
    assert_access_log_rows_match_the_ledger(&env).await;
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

/// Current charts come from memory only while the patient row's position is the one
/// they were loaded at: any change to the chart (an entry, a care-team change) is seen
/// at once, an access (kept apart) is not a change, and a blue/green rebuild keeps
/// serving the same charts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_charts_are_served_from_memory_only_while_unchanged() {
    let env = env().await;
    let ids = drive(&env, 31, 2, 40, NoOp).await;
    caught_up(&env).await;
    let id = ids[0];
    assert!(env.read.current_chart(Uuid::now_v7()).await.unwrap().is_none(), "unknown patient");
    let first = env.read.current_chart(id).await.unwrap().unwrap();
    let again = env.read.current_chart(id).await.unwrap().unwrap();
    assert!(std::sync::Arc::ptr_eq(&first, &again), "an unchanged chart is served from memory");
    // Without a cache, every read is a full load of the same chart.
    let uncached = ReadModels::with_chart_cache(env.store.pool().clone(), 0);
    let (a, b) = (
        uncached.current_chart(id).await.unwrap().unwrap(),
        uncached.current_chart(id).await.unwrap().unwrap(),
    );
    assert!(!std::sync::Arc::ptr_eq(&a, &b));
    assert_eq!((a.position, a.entries.len()), (first.position, first.entries.len()));
    assert!(uncached.current_chart(Uuid::now_v7()).await.unwrap().is_none());
    assert_eq!(uncached.prober().counts(), (0, 0, 0), "nothing probed");

    // An access is not a change to the chart.
    let access = viewed(id, ResourceKind::ClinicalEntries);
    env.records.record_access(actor(Role::Physician), Uuid::now_v7(), access).await.unwrap();
    caught_up(&env).await;
    assert!(std::sync::Arc::ptr_eq(&first, &env.read.current_chart(id).await.unwrap().unwrap()));

    // A care-team change is seen by the next read, and so is its undoing.
    let clinician = Uuid::now_v7();
    let assign = Command::AssignCareTeamMember { clinician_id: clinician, care_role: CareRole::Consultant };
    let done = env.records.execute(id, actor(Role::Administrator), Uuid::now_v7(), assign).await.unwrap();
    env.projections.wait_for(done.position, Duration::from_secs(20)).await.unwrap();
    let assigned = env.read.current_chart(id).await.unwrap().unwrap();
    assert!(assigned.care_team.contains_key(&clinician));
    assert_eq!(assigned.position, Some(done.position));
    let remove = Command::RemoveCareTeamMember { clinician_id: clinician };
    let done = env.records.execute(id, actor(Role::Administrator), Uuid::now_v7(), remove).await.unwrap();
    env.projections.wait_for(done.position, Duration::from_secs(20)).await.unwrap();
    let removed = env.read.current_chart(id).await.unwrap().unwrap();
    assert!(!removed.care_team.contains_key(&clinician));
    assert_read_models_equal_fold(&env, &ids).await;

    // After a rebuild the chart is read again from the new generation, even at the same
    // position: a rebuild may fold differently (a newer build, payloads erased since).
    // Here the new generation's row is altered behind the runner's back to stand for that.
    let before = env.read.current_chart(ids[1]).await.unwrap().unwrap();
    let generation = env.projections.rebuild(Duration::from_secs(60)).await.unwrap();
    sqlx::query(&format!(
        "UPDATE rm_records_g{generation}.patients SET family = 'Refolded' WHERE patient_id = $1"
    ))
    .bind(ids[1])
    .execute(env.store.pool())
    .await
    .unwrap();
    let after = env.read.current_chart(ids[1]).await.unwrap().unwrap();
    assert_eq!(after.position, before.position);
    assert_eq!(
        after.demographics.as_ref().unwrap().name.family,
        "Refolded",
        "not the other generation's chart"
    );
    let again = env.read.current_chart(ids[1]).await.unwrap().unwrap();
    assert!(std::sync::Arc::ptr_eq(&after, &again), "and kept for the new generation");

    // Views made before `rm.patients` named its generation are upgraded at start-up.
    let schema = format!("rm_records_g{generation}");
    sqlx::raw_sql(&format!(
        "DROP VIEW rm.patients; CREATE VIEW rm.patients AS SELECT * FROM {schema}.patients"
    ))
    .execute(env.store.pool())
    .await
    .unwrap();
    assert!(env.read.current_chart(ids[0]).await.is_err(), "the probe needs the column");
    let restarted = Projections::start(env.store.clone(), runner_config()).await.unwrap();
    env.read.chart_cache().clear();
    assert!(env.read.current_chart(ids[0]).await.unwrap().is_some());
    restarted.shutdown().await;
}

/// Probes made together are answered together, each with its own patient's row (or
/// none); a read that begins after a write has been projected sees it; and when the
/// prober's connection is killed, reads go on: alone on the pool, then on a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_probes_answer_each_read_with_its_own_row_and_survive_a_lost_connection() {
    let env = env().await;
    let mut ids = drive(&env, 33, 6, 20, NoOp).await;
    caught_up(&env).await;
    ids.push(Uuid::now_v7()); // no such patient
    let prober = env.read.prober();
    let mut truth = std::collections::HashMap::new();
    for id in &ids {
        truth.insert(*id, prober.alone(*id).await.unwrap().map(|(p, _)| p as u64));
    }
    let reads = |n: usize, ids: Vec<Uuid>| {
        let read = env.read.clone();
        async move {
            let all = (0..n).map(|i| {
                let (read, id) = (read.clone(), ids[i % ids.len()]);
                async move { (id, read.current_chart(id).await.map(|c| c.map(|c| c.position))) }
            });
            futures::future::join_all(all).await
        }
    };
    for (id, position) in reads(200, ids.clone()).await {
        assert_eq!(position.unwrap().flatten(), truth[&id]);
    }
    let (statements, batched, failed) = prober.counts();
    assert_eq!(failed, 0);
    assert!(batched >= 200 && statements < batched, "{statements} statements for {batched} probes");

    // Read-your-writes under concurrent reads, with batches in flight while each write
    // lands (a read must not join a batch whose statement was sent before it began).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let background = {
        let (read, stop, id) = (env.read.clone(), stop.clone(), ids[0]);
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                read.current_chart(id).await.unwrap();
                n += 1;
            }
            n
        })
    };
    for round in 0..5 {
        let clinician = Uuid::now_v7();
        let assign =
            Command::AssignCareTeamMember { clinician_id: clinician, care_role: CareRole::Consultant };
        let done =
            env.records.execute(ids[0], actor(Role::Administrator), Uuid::now_v7(), assign).await.unwrap();
        env.projections.wait_for(done.position, Duration::from_secs(20)).await.unwrap();
        let read = env.read.clone();
        let mine = reads(64, ids[..2].to_vec());
        let (others, own) = tokio::join!(mine, read.current_chart(ids[0]));
        let own = own.unwrap().unwrap();
        assert!(own.care_team.contains_key(&clinician), "round {round}");
        assert_eq!(own.position, Some(done.position));
        for (id, position) in others {
            if id == ids[0] {
                assert_eq!(position.unwrap().flatten(), Some(done.position), "round {round}");
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(background.await.unwrap() > 0);

    // The prober's connection is killed: the reads in flight run alone, the next batch
    // opens a new connection.
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity \
         WHERE application_name = 'chartledger-probe' AND datname = current_database()",
    )
    .fetch_all(env.store.pool())
    .await
    .unwrap();
    assert_eq!(killed, vec![true], "one prober connection");
    let truth0 = prober.alone(ids[0]).await.unwrap().map(|(p, _)| p as u64);
    for (id, position) in reads(50, ids[..1].to_vec()).await {
        assert_eq!(position.unwrap().flatten(), truth0, "{id}");
    }
    assert!(prober.counts().2 >= 1, "the batch on the dead connection failed");
    tokio::time::sleep(Duration::from_millis(300)).await; // past the pause after a failure
    let before = prober.counts().0;
    for (_, position) in reads(50, ids[..1].to_vec()).await {
        assert_eq!(position.unwrap().flatten(), truth0);
    }
    assert!(prober.counts().0 > before, "batches run again, on a new connection");
}

/// The bulk path: a runner that starts on empty tables at position 0 with a cache large
/// enough to keep every chart writes rows it has not written before by COPY (and upserts
/// the others), preparing each catch-up batch while the previous one is written, then
/// follows live, then rebuilds blue/green. With a small cache, the cache is dropped after
/// a batch while the next one is already prepared. The read models equal the fold at
/// every stage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_runner_with_every_chart_cached_builds_the_same_read_models() {
    for cache_charts in [100_000, 4] {
        let mut env = env().await;
        env.projections.shutdown().await;
        assert_eq!(env.projections.generations().await.unwrap()[0].position, 0);
        let ids = drive(&env, 31, 6, 260, NoOp).await;
        let bulk = RunnerConfig { cache_charts, commit_events: 40, ..runner_config() };
        env.projections = Projections::start(env.store.clone(), bulk).await.unwrap();
        assert_read_models_equal_fold(&env, &ids).await;
        // Live batches on the same cache: care-team removals and reassignments,
        // amendments and rescheduling update rows it wrote by COPY.
        let more = drive(&env, 32, 2, 200, NoOp).await;
        let all: Vec<Uuid> = ids.iter().chain(&more).copied().collect();
        assert_read_models_equal_fold(&env, &all).await;
        let generation = env.projections.rebuild(Duration::from_secs(60)).await.unwrap();
        assert_eq!(generation, 2);
        assert_read_models_equal_fold(&env, &all).await;
        assert_access_log_rows_match_the_ledger(&env).await;
        env.projections.shutdown().await;
    }
}

/// A generation created by an earlier build, whose entry content is `jsonb` (it is `json`
/// now), keeps being projected: COPY sends each generation the form its column has, from
/// position 0, live, and after a restart above 0 with rows already there; a blue/green
/// rebuild then replaces it with a `json` generation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_with_jsonb_content_keeps_working() {
    let mut env = env().await;
    env.projections.shutdown().await;
    sqlx::raw_sql(
        "DROP VIEW rm.entry_versions; \
         ALTER TABLE rm_records_g1.entry_versions ALTER COLUMN content TYPE jsonb USING content::jsonb; \
         CREATE VIEW rm.entry_versions AS SELECT * FROM rm_records_g1.entry_versions; \
         GRANT SELECT ON rm.entry_versions TO chartledger_readonly;",
    )
    .execute(env.store.pool())
    .await
    .unwrap();
    let content_type = |generation: i32| {
        let pool = env.store.pool().clone();
        async move {
            sqlx::query_scalar::<_, String>(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute \
                 WHERE attrelid = to_regclass($1) AND attname = 'content'",
            )
            .bind(format!("rm_records_g{generation}.entry_versions"))
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let ids = drive(&env, 33, 3, 120, NoOp).await;
    let bulk = RunnerConfig { cache_charts: 100_000, ..runner_config() };
    env.projections = Projections::start(env.store.clone(), bulk.clone()).await.unwrap();
    assert_read_models_equal_fold(&env, &ids).await;
    let more = drive(&env, 34, 2, 80, NoOp).await;
    let mut all: Vec<Uuid> = ids.iter().chain(&more).copied().collect();
    assert_read_models_equal_fold(&env, &all).await;
    // Stopped, written to, restarted above position 0 on a table with jsonb rows.
    env.projections.shutdown().await;
    all.extend(drive(&env, 35, 2, 80, NoOp).await);
    env.projections = Projections::start(env.store.clone(), bulk).await.unwrap();
    assert!(env.projections.generations().await.unwrap()[0].position > 0);
    assert_read_models_equal_fold(&env, &all).await;
    assert_eq!(content_type(1).await, "jsonb");
    // A rebuild replaces it with a generation of the current layout.
    assert_eq!(env.projections.rebuild(Duration::from_secs(60)).await.unwrap(), 2);
    assert_read_models_equal_fold(&env, &all).await;
    assert_eq!(content_type(2).await, "json");
    env.projections.shutdown().await;
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
        case_ref: Some("MATTER-7 (subpoena)".into()),
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
    assert_eq!(by_patient[0].case_ref.as_deref(), Some("MATTER-7 (subpoena)"));
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

// ------------------------------------------------------------------ crashes

/// Record every history row the runner *tries* to insert (`access_log`, `entry_versions`,
/// `consents`), in the runner's own transaction: a BEFORE INSERT row trigger fires even
/// when `ON CONFLICT DO NOTHING` then drops the row, so applying a batch twice shows here
/// even where the read model's rows would not; what a crash rolls back is not counted.
async fn install_apply_audit(pool: &sqlx::PgPool, schema: &str) {
    sqlx::raw_sql(
        "CREATE TABLE public.test_apply_audit (tbl text NOT NULL, position bigint NOT NULL); \
         CREATE FUNCTION public.test_apply_audit() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN INSERT INTO public.test_apply_audit VALUES (TG_TABLE_NAME, NEW.position); RETURN NEW; END $$;",
    )
    .execute(pool)
    .await
    .unwrap();
    for t in ["access_log", "entry_versions", "consents"] {
        sqlx::query(&format!(
            "CREATE TRIGGER test_apply_audit BEFORE INSERT ON {schema}.{t} \
             FOR EACH ROW EXECUTE FUNCTION public.test_apply_audit()"
        ))
        .execute(pool)
        .await
        .unwrap();
    }
}

/// Everything that shows an event applied twice (or not at all), as readable lines:
/// history rows attempted more than once for one event, attempts that do not match the
/// ledger, charts (with their per-event counters `revision` and `anomalies`: re-applying
/// a registration, an entry or a care-team change counts an anomaly; re-applying an
/// amendment or a consent adds a version) that differ from the fold, and access logs
/// that differ from the ledger's.
async fn exactly_once_violations(env: &Env, ids: &[Uuid]) -> Vec<String> {
    let pool = env.store.pool();
    let mut out = Vec::new();
    let twice: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT tbl, position, count(*) FROM public.test_apply_audit GROUP BY tbl, position \
         HAVING count(*) > 1 ORDER BY tbl, position",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    for (t, p, n) in twice {
        out.push(format!("{t}: the event at {p} was written {n} times"));
    }
    let (mut versions, mut consents, mut accesses) = (0i64, 0i64, 0i64);
    for id in ids {
        let fold = chart_at_head(&env.store, *id).await.unwrap();
        versions += fold.chart.entries.values().map(|e| e.versions.len() as i64).sum::<i64>();
        consents += fold.chart.consent.versions.len() as i64;
        match env.read.chart(*id).await.unwrap() {
            Some(sql) if sql == fold.chart => {}
            Some(sql) => out.push(format!(
                "chart of {id}: read model (revision {:?}, {} anomalies) differs from the fold (revision {:?}, {} anomalies)",
                sql.revision, sql.anomalies, fold.chart.revision, fold.chart.anomalies
            )),
            None => out.push(format!("chart of {id}: missing from the read model")),
        }
        let ledger = ledger_access_log(&env.store, *id, None).await;
        accesses += ledger.len() as i64;
        if env.read.access_log(&by_patient(*id)).await.unwrap() != ledger {
            out.push(format!("access log of {id}: read model differs from the ledger"));
        }
    }
    let attempts: Vec<(String, i64)> =
        sqlx::query_as("SELECT tbl, count(*) FROM public.test_apply_audit GROUP BY tbl ORDER BY tbl")
            .fetch_all(pool)
            .await
            .unwrap();
    let attempted = |t: &str| attempts.iter().find(|(x, _)| x == t).map_or(0, |(_, n)| *n);
    for (t, expected) in [("access_log", accesses), ("entry_versions", versions), ("consents", consents)] {
        if attempted(t) != expected {
            out.push(format!("{t}: {} rows written, the ledger holds {expected}", attempted(t)));
        }
    }
    out
}

/// Terminate the backend of every runner transaction in progress (one that holds a
/// transaction id and whose statement is the runner's); returns how many were killed.
async fn kill_runner_transactions(killer: &sqlx::PgPool) -> u64 {
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_xid IS NOT NULL \
         AND (query LIKE '%rm_records_g%' OR query LIKE '%projection_generations%')",
    )
    .fetch_one(killer)
    .await
    .unwrap();
    n as u64
}

/// The runner is killed over and over in the middle of batches (its connections
/// terminated mid-transaction, its task aborted and restarted, a rival runner alongside),
/// while catching up on a backlog by pages and while following live appends; it then
/// resumes, and every event is applied exactly once: each history row was written once,
/// the charts' per-event counters equal the fold's, and the access log equals the
/// ledger's. The same checks are then shown to catch a batch applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_killed_mid_batch_applies_every_event_exactly_once() {
    let env = env().await;
    // This test runs its own runners.
    env.projections.shutdown().await;
    install_apply_audit(env.store.pool(), "rm_records_g1").await;
    let killer =
        sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(env._db.url()).await.unwrap();
    // A backlog, applied from position 0 by pages of 13.
    let mut ids = drive(&env, 41, 5, 220, NoOp).await;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let chaos = async {
        let mut rng = domain::sim::Rng::new(7);
        let mut runner = Projections::start(env.store.clone(), runner_config()).await.unwrap();
        // The rival keeps every chart: from position 0 it prepares each batch while the
        // previous one is being written, and those writes are killed and raced too.
        let bulk = RunnerConfig { cache_charts: 100_000, ..runner_config() };
        let rival = Projections::start(env.store.clone(), bulk).await.unwrap();
        let (mut kills, mut aborts, mut after) = (0u64, 0u64, 0u64);
        // Keep killing while the writer writes, then until enough crashes have happened
        // (for a bounded time: an idle runner has no transaction to kill).
        while !stop.load(std::sync::atomic::Ordering::Acquire) || (kills < 12 && after < 40) {
            if stop.load(std::sync::atomic::Ordering::Acquire) {
                after += 1;
            }
            tokio::time::sleep(Duration::from_millis(5 + rng.below(40))).await;
            kills += kill_runner_transactions(&killer).await;
            if rng.below(8) == 0 {
                // A crash of the whole process's runner: the task is dropped wherever it is.
                runner.shutdown().await;
                runner = Projections::start(env.store.clone(), runner_config()).await.unwrap();
                aborts += 1;
            }
        }
        rival.shutdown().await;
        (runner, kills, aborts)
    };
    let writer = async {
        // Live appends at a pace the runners keep up with (both follow them live and race
        // for each batch), while the chaos goes on.
        let more = drive(&env, 42, 3, 150, Pace(Duration::from_millis(4))).await;
        stop.store(true, std::sync::atomic::Ordering::Release);
        more
    };
    let ((runner, kills, aborts), more) = tokio::join!(chaos, writer);
    ids.extend(more);
    eprintln!("runner transactions killed: {kills}, runner tasks aborted: {aborts}");
    assert!(kills >= 5, "too few runner transactions were killed ({kills}) for the test to mean much");
    assert!(aborts >= 1);
    let head = env.store.head().size;
    if runner.wait_for(head - 1, Duration::from_secs(30)).await.is_err() {
        // A stuck runner: show where (a transaction left open holds the generation's row).
        let sessions: Vec<(Option<String>, Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT state, wait_event_type, left(query, 120) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_all(env.store.pool())
        .await
        .unwrap();
        let generations = runner.generations().await.unwrap();
        panic!("runner stuck at {} of {head}: {generations:?}; sessions {sessions:#?}", runner.position());
    }
    assert_eq!(runner.lag().await.unwrap(), 0);
    let g = &runner.generations().await.unwrap()[0];
    assert_eq!((g.generation, g.status.as_str(), g.position, g.skipped), (1, "active", head, 0));
    assert_eq!(exactly_once_violations(&env, &ids).await, Vec::<String>::new());
    runner.shutdown().await;

    // Applying the last 60 events again, as a runner that ignored the stored position
    // would: the history rows (access log, entry and consent versions) are refused by the
    // tables' keys (they are written by COPY, with no ON CONFLICT to hide a repeat), so
    // such a batch changes nothing.
    let raw = env.store.read_all(head - 60, 60, &store::AllFilter::default()).await.unwrap();
    let again: Vec<Recorded> =
        raw.iter().filter_map(|r| Recorded::decode(r.position, &r.event, r.payload.as_ref()).ok()).collect();
    assert!(again.iter().any(|r| matches!(r.event, DomainEvent::RecordAccessed(_))));
    let mut tx = env.store.pool().begin().await.unwrap();
    let mut cache = projections::records::ChartCache::default();
    let refused = projections::records::apply_batch(&mut tx, "rm_records_g1", &mut cache, &again).await;
    match refused {
        Err(projections::ProjectionError::Database(sqlx::Error::Database(e))) => {
            assert_eq!(e.code().as_deref(), Some("23505"))
        }
        other => panic!("a repeated batch was not refused: {other:?}"),
    }
    tx.rollback().await.unwrap();
    assert_eq!(exactly_once_violations(&env, &ids).await, Vec::<String>::new());

    // The checks can fail: apply the same events one by one; those that write no history
    // row (care-team changes, appointments, demographics) go through, and their charts
    // then differ from the fold.
    let mut applied = 0;
    for r in &again {
        let mut tx = env.store.pool().begin().await.unwrap();
        let mut cache = projections::records::ChartCache::default();
        let one = std::slice::from_ref(r);
        if projections::records::apply_batch(&mut tx, "rm_records_g1", &mut cache, one).await.is_ok() {
            tx.commit().await.unwrap();
            applied += 1;
        }
    }
    assert!(applied > 0 && applied < again.len(), "{applied} of {}", again.len());
    let found = exactly_once_violations(&env, &ids).await;
    assert!(found.iter().any(|v| v.starts_with("chart of")), "{found:?}");
    assert_access_log_rows_match_the_ledger(&env).await;
}

/// A page that holds an event written by a newer build is applied up to that event: the
/// runner stops right before it, not at the start of the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_applies_a_page_up_to_a_newer_event() {
    let env = env().await;
    env.projections.shutdown().await;
    let mut sim = Sim::new(8);
    let (a, reg) = sim.register();
    env.records.execute(a, actor(Role::Receptionist), Uuid::now_v7(), reg).await.unwrap();
    for _ in 0..4 {
        let cmd = Command::RecordEntry {
            entry_id: Uuid::now_v7(),
            content: sim.content(None),
            effective_at: now(),
        };
        env.records.execute(a, actor(Role::Physician), Uuid::now_v7(), cmd).await.unwrap();
    }
    let future = ProposedEventBuilder::future();
    let at = env
        .store
        .append(&domain::streams::patient(a), store::ExpectedRevision::Any, vec![future])
        .await
        .unwrap();
    // Pages of 13 hold the whole backlog; the newer event is not the first of its page.
    assert!(at.last_position() % 13 != 0);
    let runner = Projections::start(env.store.clone(), runner_config()).await.unwrap();
    let waited = runner.wait_for(at.last_position() - 1, Duration::from_secs(10)).await;
    assert!(waited.is_ok(), "the events before the newer one were held back");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(runner.position(), at.last_position());
    let chart = env.read.chart(a).await.unwrap().unwrap();
    assert_eq!(chart.entries.len(), 4);
    runner.shutdown().await;
}

// ------------------------------------------------------------------ entry history

/// `pit::entry_history_as_of` and `ReadModels::entry_history` agree, at head and as of an
/// earlier time, whether an entry is named by its id or by one of its amendments' ids;
/// an entry whose id equals another entry's amendment id is found by its own id (as the
/// command side resolves it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entry_history_as_of_agrees_with_the_read_model() {
    let env = env().await;
    let mut sim = Sim::new(9);
    let (id, reg) = sim.register();
    env.records.execute(id, actor(Role::Receptionist), Uuid::now_v7(), reg).await.unwrap();
    let (other, reg) = sim.register();
    env.records.execute(other, actor(Role::Receptionist), Uuid::now_v7(), reg).await.unwrap();
    let kind = Some(EntryKind::Prescription);
    let entry = Uuid::now_v7();
    let record = Command::RecordEntry { entry_id: entry, content: sim.content(kind), effective_at: now() };
    env.records.execute(id, actor(Role::Physician), Uuid::now_v7(), record).await.unwrap();
    let amend = |amendment_id, entry_id, sim: &mut Sim| Command::AmendEntry {
        amendment_id,
        entry_id,
        content: sim.content(kind),
        reason: "dose".into(),
        effective_at: now(),
    };
    let (a1, a2) = (Uuid::now_v7(), Uuid::now_v7());
    let done = env
        .records
        .execute(id, actor(Role::Physician), Uuid::now_v7(), amend(a1, entry, &mut sim))
        .await
        .unwrap();
    env.projections.wait_for(done.position, Duration::from_secs(10)).await.unwrap();
    let t1 = env.store.event_by_id(done.event_id).await.unwrap().unwrap().event.body().recorded_at;
    let names = [entry, a1, a2, Uuid::now_v7()];
    let mut then = Vec::new();
    for n in names {
        then.push(env.read.entry_history(id, n).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(2)).await;
    // Amend through the first amendment's id, then retract through the second's.
    env.records.execute(id, actor(Role::Physician), Uuid::now_v7(), amend(a2, a1, &mut sim)).await.unwrap();
    let retract = Command::MarkEnteredInError { entry_id: a2, reason: "wrong patient".into() };
    env.records.execute(id, actor(Role::Physician), Uuid::now_v7(), retract).await.unwrap();
    caught_up(&env).await;

    // As of T, the second amendment did not exist.
    assert_eq!(then[0].as_ref().map(Vec::len), Some(2));
    assert_eq!(then[1], then[0]);
    assert_eq!((&then[2], &then[3]), (&None, &None));
    for (n, sql_then) in names.iter().zip(&then) {
        assert_eq!(&entry_history_as_of(&env.store, id, *n, Some(t1)).await.unwrap(), sql_then);
        assert_eq!(&entry_history_as_of(&env.store, id, *n, Some(micros(t1, 1))).await.unwrap(), sql_then);
    }
    // At head: four versions, the same through any of the three ids.
    let head = env.read.entry_history(id, entry).await.unwrap().unwrap();
    assert_eq!(head.len(), 4);
    assert!(matches!(head[2].change, VersionChange::Amended { amendment_id, .. } if amendment_id == a2));
    assert!(matches!(head[3].change, VersionChange::EnteredInError { .. }));
    for n in [entry, a1, a2] {
        assert_eq!(env.read.entry_history(id, n).await.unwrap().as_ref(), Some(&head));
        assert_eq!(entry_history_as_of(&env.store, id, n, None).await.unwrap().as_ref(), Some(&head));
    }
    // Not another patient's, and not an unknown id.
    for (p, n) in [(other, entry), (other, a1), (id, Uuid::now_v7())] {
        assert_eq!(env.read.entry_history(p, n).await.unwrap(), None);
        assert_eq!(entry_history_as_of(&env.store, p, n, None).await.unwrap(), None);
    }
    // A new entry whose (client-chosen) id is the first amendment's id: named by that id,
    // it is the new entry, in both.
    let record = Command::RecordEntry { entry_id: a1, content: sim.content(None), effective_at: now() };
    env.records.execute(id, actor(Role::Physician), Uuid::now_v7(), record).await.unwrap();
    caught_up(&env).await;
    let sql = env.read.entry_history(id, a1).await.unwrap().unwrap();
    assert_eq!(sql.len(), 1);
    assert_eq!(sql[0].change, VersionChange::Recorded);
    assert_eq!(entry_history_as_of(&env.store, id, a1, None).await.unwrap(), Some(sql));
    assert_eq!(entry_history_as_of(&env.store, id, a2, None).await.unwrap(), Some(head));
}

// ------------------------------------------------------------------ access log

/// The access log by time range (from inclusive, to exclusive) with non-empty results,
/// combined with the patient and user filters, and paged newest first with the
/// `before_position` cursor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_time_ranges_and_cursor_paging() {
    let env = env().await;
    let mut sim = Sim::new(10);
    let (a, reg) = sim.register();
    env.records.execute(a, actor(Role::Receptionist), Uuid::now_v7(), reg).await.unwrap();
    let (b, reg) = sim.register();
    env.records.execute(b, actor(Role::Receptionist), Uuid::now_v7(), reg).await.unwrap();
    let (u1, u2) = (Uuid::now_v7(), Uuid::now_v7());
    let access = |patient_id| viewed(patient_id, ResourceKind::Demographics);
    // Seven accesses of A (alternating users) and one of B, each at its own time.
    let mut last = 0;
    for i in 0..8 {
        let (patient, user) = if i == 5 { (b, u1) } else { (a, if i % 2 == 0 { u1 } else { u2 }) };
        let viewer = Actor { user_id: user, role: Role::Physician.role_name() };
        last = env.records.record_access(viewer, Uuid::now_v7(), access(patient)).await.unwrap().position;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    env.projections.wait_for(last, Duration::from_secs(10)).await.unwrap();
    let q = |q: AccessQuery| {
        let read = env.read.clone();
        async move { read.access_log(&q).await.unwrap() }
    };
    let all = q(AccessQuery { limit: 100, ..AccessQuery::default() }).await;
    assert_eq!(all.len(), 8);
    assert!(all.windows(2).all(|w| w[0].position > w[1].position && w[0].accessed_at > w[1].accessed_at));
    let of_a: Vec<_> = all.iter().filter(|r| r.patient_id == a).cloned().collect();
    assert_eq!(q(by_patient(a)).await, of_a);
    // Times, oldest first: t[0] .. t[6] are A's accesses.
    let t: Vec<Timestamp> = of_a.iter().rev().map(|r| r.accessed_at).collect();
    let range = |from, to| AccessQuery { from: Some(from), to: Some(to), ..by_patient(a) };
    // [t1, t4): t3, t2, t1 (newest first); the bound at `to` is excluded.
    assert_eq!(q(range(t[1], t[4])).await, of_a[3..6].to_vec());
    // Just past t1 excludes t1; just past t4 includes t4.
    assert_eq!(q(range(micros(t[1], 1), t[4])).await, of_a[3..5].to_vec());
    assert_eq!(q(range(t[1], micros(t[4], 1))).await, of_a[2..6].to_vec());
    // Just before t1 includes t1 and nothing older.
    assert_eq!(q(range(micros(t[1], -1), micros(t[1], 1))).await, of_a[5..6].to_vec());
    // Open-ended ranges.
    assert_eq!(q(AccessQuery { from: Some(t[5]), ..by_patient(a) }).await, of_a[..2].to_vec());
    assert_eq!(q(AccessQuery { to: Some(t[1]), ..by_patient(a) }).await, of_a[6..].to_vec());
    // A range over every patient includes B's access; with a user filter, only theirs.
    let everyone =
        AccessQuery { from: Some(t[0]), to: Some(micros(t[6], 1)), limit: 100, ..AccessQuery::default() };
    assert_eq!(q(everyone.clone()).await, all);
    let by_u2 = q(AccessQuery { user_id: Some(u2), ..everyone.clone() }).await;
    assert_eq!(by_u2.len(), 3);
    assert!(by_u2.iter().all(|r| r.user_id == u2 && r.patient_id == a));
    // A range holding nothing.
    assert!(q(range(micros(t[6], 1), micros(t[6], 2))).await.is_empty());

    // Paging with the cursor: pages of 3, newest first, each strictly below the last
    // position of the page before, together the whole log without repeats.
    let mut pages = Vec::new();
    let mut cursor = None;
    loop {
        let page = q(AccessQuery { limit: 3, before_position: cursor, ..AccessQuery::default() }).await;
        if page.is_empty() {
            break;
        }
        cursor = page.last().map(|r| r.position);
        pages.push(page);
    }
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 2]);
    assert_eq!(pages.concat(), all);
    // The cursor combines with the other filters; it is exclusive.
    let below =
        q(AccessQuery { before_position: Some(of_a[2].position), ..range(t[1], micros(t[6], 1)) }).await;
    assert_eq!(below, of_a[3..6].to_vec());
    let b_only = q(AccessQuery { before_position: Some(all[0].position), ..by_patient(b) }).await;
    assert_eq!(b_only.len(), 1);
    assert!(q(AccessQuery { before_position: Some(all[7].position), ..AccessQuery::default() })
        .await
        .is_empty());
}

// ------------------------------------------------------------------ chart snapshots

/// A patient stream of `n` events made by the simulator (decided against the chart as it
/// grows), as the ledger would record them, without a database.
fn simulated_stream(seed: u64, n: usize) -> (Uuid, Vec<Recorded>) {
    let mut sim = Sim::new(seed);
    sim.access_percent = 0;
    let (id, reg) = sim.register();
    let mut chart = Chart::new(id);
    let mut out = Vec::new();
    let mut command = Some((reg, Role::Receptionist));
    while out.len() < n {
        let at = Timestamp::from_micros(1_800_000_000_000_000 + (out.len() as i64 / 3) * 1000);
        let (cmd, role) = match command.take() {
            Some(c) => c,
            None => match sim.step(&chart, at) {
                Step::Command { command, author_role, .. } => (command, author_role),
                Step::Access { .. } => continue,
            },
        };
        let event = domain::commands::decide(&chart, cmd, at).unwrap();
        let r = Recorded {
            position: 1000 + out.len() as u64 * 2,
            stream: domain::streams::patient(id),
            stream_revision: out.len() as u64,
            event_id: Uuid::now_v7(),
            recorded_at: at,
            actor: actor(role),
            event,
        };
        chart.apply(&r);
        out.push(r);
    }
    (id, out)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Snapshot + tail == full fold: the fold of any prefix, encoded and decoded, is the
    /// same chart, and folding the rest of the events onto it gives the fold of the whole.
    #[test]
    fn snapshot_then_tail_equals_the_full_fold(seed in any::<u64>(), n in 1usize..160, cut in 0.0f64..1.0) {
        let (id, events) = simulated_stream(seed, n);
        let k = ((n as f64) * cut) as usize;
        let prefix = Chart::replay(id, &events[..k]);
        let bytes = projections::snapshot::encode(&prefix);
        let mut restored = projections::snapshot::decode(&bytes).unwrap();
        prop_assert_eq!(&restored, &prefix);
        for e in &events[k..] {
            restored.apply(e);
        }
        prop_assert_eq!(restored, Chart::replay(id, &events));
    }
}

/// A patient stream of `n` events appended in groups of 1 to 6 (a group shares one
/// recorded time); returns the patient and the recorded time of every event.
async fn write_stream(store: &EventStore, seed: u64, n: usize) -> (Uuid, Vec<Timestamp>) {
    let (id, events) = simulated_stream(seed, n);
    let stream = domain::streams::patient(id);
    let mut i = 0;
    let mut group = (seed % 6) as usize;
    while i < events.len() {
        group = group % 6 + 1;
        let chunk: Vec<store::ProposedEvent> = events[i..(i + group).min(events.len())]
            .iter()
            .map(|r| store::ProposedEvent {
                event_id: Uuid::now_v7(),
                event_type: r.event.event_type(),
                schema_version: r.event.schema_version(),
                actor: r.actor.clone(),
                payload: r.event.to_payload(),
            })
            .collect();
        i += chunk.len();
        store.append(&stream, store::ExpectedRevision::Any, chunk).await.unwrap();
    }
    let times =
        store.read_whole_stream(&stream).await.unwrap().iter().map(|r| r.event.body().recorded_at).collect();
    (id, times)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 5, ..ProptestConfig::default() })]

    /// Replay from snapshots equals the fold from revision 0, for random times (at an
    /// event, between events, before the first, after the last) asked in random order,
    /// so that snapshots are written and then used at many points; every stored snapshot
    /// equals the fold at its revision.
    #[test]
    fn replay_from_snapshots_equals_the_fold_from_zero(seed in any::<u64>(), n in 20usize..120, order in any::<u64>()) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let env = env().await;
            let (id, times) = write_stream(&env.store, seed, n).await;
            let policy = projections::snapshot::SnapshotPolicy { first: 3, per_doubling: 4, write_inline: true };
            let mut ts: Vec<Timestamp> = times.iter().flat_map(|t| [*t, micros(*t, 1), micros(*t, -1)]).collect();
            ts.push(micros(times[0], -1000));
            // A deterministic shuffle.
            let mut x = order | 1;
            for i in (1..ts.len()).rev() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ts.swap(i, (x % (i as u64 + 1)) as usize);
            }
            for t in ts.iter().take(60) {
                let full = projections::pit::replay(&env.store, id, Some(*t), None).await.unwrap();
                let fast = projections::pit::replay(&env.store, id, Some(*t), Some(&policy)).await.unwrap();
                assert_eq!(fast, full, "replay from a snapshot differs from the fold from 0");
            }
            let head = projections::pit::replay(&env.store, id, None, Some(&policy)).await.unwrap();
            assert_eq!(head, projections::pit::replay(&env.store, id, None, None).await.unwrap());
            assert_eq!(head.events, n as u64);
            let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM rm.chart_snapshots WHERE patient_id = $1")
                .bind(id)
                .fetch_one(env.store.pool())
                .await
                .unwrap();
            assert!(stored > 0);
            assert_eq!(projections::pit::check_snapshots(&env.store, id).await.unwrap(), Vec::<u64>::new());
            env.projections.shutdown().await;
        });
    }
}

/// A snapshot that is not bound to the ledger (its event hash differs) or does not decode
/// is ignored; one that decodes to another state is found by `check_snapshots`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn altered_snapshots_are_ignored_or_reported() {
    let env = env().await;
    let (id, _) = write_stream(&env.store, 11, 40).await;
    let policy = projections::snapshot::SnapshotPolicy { first: 8, per_doubling: 2, write_inline: true };
    let full = projections::pit::replay(&env.store, id, None, None).await.unwrap();
    assert_eq!(projections::pit::replay(&env.store, id, None, Some(&policy)).await.unwrap(), full);
    let pool = env.store.pool();
    let revision: i64 =
        sqlx::query_scalar("SELECT max(revision) FROM rm.chart_snapshots WHERE patient_id = $1")
            .bind(id)
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(revision, 31);
    // Another state under the right hash: used by replay (it is trusted as derived data),
    // but `check_snapshots` reports it.
    let other = projections::snapshot::encode(&Chart::new(id));
    sqlx::query("UPDATE rm.chart_snapshots SET state = $2 WHERE patient_id = $1 AND revision = 31")
        .bind(id)
        .bind(&other)
        .execute(pool)
        .await
        .unwrap();
    assert_eq!(projections::pit::check_snapshots(&env.store, id).await.unwrap(), vec![31]);
    // Unbound (wrong hash), or undecodable: ignored, the replay is still the fold.
    for alter in [
        "UPDATE rm.chart_snapshots SET event_hash = '\\x00' WHERE patient_id = $1 AND revision = 31",
        "UPDATE rm.chart_snapshots SET state = '\\x7b' WHERE patient_id = $1",
    ] {
        sqlx::query(alter).bind(id).execute(pool).await.unwrap();
        assert_eq!(projections::pit::replay(&env.store, id, None, Some(&policy)).await.unwrap(), full);
        assert_eq!(projections::pit::chart_at_head(&env.store, id).await.unwrap(), full);
    }
    // Deleted: replays fold from 0 and write them again.
    sqlx::query("DELETE FROM rm.chart_snapshots").execute(pool).await.unwrap();
    assert_eq!(projections::pit::replay(&env.store, id, None, Some(&policy)).await.unwrap(), full);
    assert_eq!(projections::pit::check_snapshots(&env.store, id).await.unwrap(), Vec::<u64>::new());
    env.projections.shutdown().await;
}

/// Role grants fold into `role_grants` and `users.roles` (decided once; a decision that
/// does not match its proposal changes nothing), and a generation made before the
/// grants and case references existed is upgraded in place at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_grants_fold_and_older_generations_are_upgraded_in_place() {
    use domain::staff::{GrantStatus, RoleGrant};
    let mut env = env().await;
    env.projections.shutdown().await;
    // A generation of the layout before: no `case_ref`, no `role_grants`.
    sqlx::raw_sql(
        "DROP VIEW rm.role_grants; DROP TABLE rm_records_g1.role_grants; DROP VIEW rm.access_log; \
         ALTER TABLE rm_records_g1.access_log DROP COLUMN case_ref; \
         CREATE VIEW rm.access_log AS SELECT * FROM rm_records_g1.access_log;",
    )
    .execute(env.store.pool())
    .await
    .unwrap();
    env.projections = Projections::start(env.store.clone(), runner_config()).await.unwrap();
    let admin = |id: Uuid| Actor { user_id: id, role: Role::Administrator.role_name() };
    let (a1, a2, user) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let created = DomainEvent::UserCreated(UserCreated {
        user_id: user,
        username: "dr.grant".into(),
        display_name: "Dr Grant".into(),
        roles: BTreeSet::new(),
        patient_id: None,
    });
    env.records.record_system(admin(a1), Uuid::now_v7(), created).await.unwrap();
    let grant = RoleGrant { grant_id: Uuid::now_v7(), user_id: user, role: Role::Physician };
    let proposed = DomainEvent::RoleGrantProposed(grant.clone());
    let done = env.records.record_system(admin(a1), grant.grant_id, proposed).await.unwrap();
    env.projections.wait_for(done.position, Duration::from_secs(10)).await.unwrap();
    let row = env.read.role_grant(grant.grant_id).await.unwrap().unwrap();
    assert_eq!((row.state.status, row.state.proposed_by), (GrantStatus::Pending, a1));
    assert!(env.read.user(user).await.unwrap().unwrap().roles.is_empty());
    // An approval naming another role than the proposal's changes nothing.
    let wrong = DomainEvent::RoleGrantApproved(RoleGrant { role: Role::Auditor, ..grant.clone() });
    env.records.record_system(admin(a2), Uuid::now_v7(), wrong).await.unwrap();
    let approved = DomainEvent::RoleGrantApproved(grant.clone());
    env.records.record_system(admin(a2), Uuid::now_v7(), approved).await.unwrap();
    // A later cancellation of the decided grant changes nothing either.
    let cancelled = DomainEvent::RoleGrantCancelled(grant.clone());
    let done = env.records.record_system(admin(a1), Uuid::now_v7(), cancelled).await.unwrap();
    env.projections.wait_for(done.position, Duration::from_secs(10)).await.unwrap();
    let row = env.read.role_grant(grant.grant_id).await.unwrap().unwrap();
    assert_eq!((row.state.status, row.decided_by), (GrantStatus::Approved, Some(a2)));
    assert_eq!(env.read.user(user).await.unwrap().unwrap().roles, BTreeSet::from([Role::Physician]));
    let pending = env.read.role_grants(Some(GrantStatus::Pending), None, 10).await.unwrap();
    assert!(pending.is_empty());
    assert_eq!(env.read.role_grants(None, Some(user), 10).await.unwrap().len(), 1);
    // The upgraded access log keeps case references.
    let p = Uuid::now_v7();
    let access = RecordAccessed { case_ref: Some("CASE-1".into()), ..viewed(p, ResourceKind::History) };
    let done = env.records.record_access(actor(Role::Auditor), Uuid::now_v7(), access).await.unwrap();
    env.projections.wait_for(done.position, Duration::from_secs(10)).await.unwrap();
    let log = env.read.access_log(&by_patient(p)).await.unwrap();
    assert_eq!(log[0].case_ref.as_deref(), Some("CASE-1"));
    // A rebuild makes the same.
    assert_eq!(env.projections.rebuild(Duration::from_secs(60)).await.unwrap(), 2);
    assert_eq!(env.read.access_log(&by_patient(p)).await.unwrap(), log);
    assert_eq!(
        env.read.role_grant(grant.grant_id).await.unwrap().unwrap().state.status,
        GrantStatus::Approved
    );
    env.projections.shutdown().await;
}
