//! Read-side benchmark: `cargo bench -p projections --bench projections`.
//!
//! In one run:
//! 1. a realistic ledger is written through the store (registrations, entries of every
//!    kind, amendments, retractions, consents, care-team changes, appointments and ~40%
//!    record accesses over many patients): `BENCH_EVENTS` events (default 1,000,000)
//!    over `BENCH_PATIENTS` patients (default 20,000), plus two patients with 1,000 and
//!    10,000 chart events. On a fresh database by default; with `BENCH_DB_URL` (a
//!    database you created, e.g. `postgres://postgres@127.0.0.1:5432/clbench`) the ledger
//!    is written once and reused by later runs (their projection generations are dropped
//!    first), which saves minutes per run;
//! 2. baseline: a plain scan of `$all` in the runner's pages (read and decode the rows,
//!    no projection work);
//! 3. projection rebuild rate: a fresh runner from position 0 to the head (including its
//!    secondary-index build), then a blue/green rebuild into a second generation while the
//!    first serves (until the switch);
//! 4. point-in-time chart reconstruction for the patients with 1,000 and 10,000 events:
//!    the first call (no chart snapshot yet; it stores one), then `BENCH_PIT_RUNS`
//!    (default 100) calls as of the head, p50/p99, against a plain fetch of the same rows
//!    and the read-model chart; then as of the recorded times of events spread over the
//!    stream.
//!
//! `BENCH_PHASES` (default `scan,rebuild,pit`) picks the phases; without `rebuild`, a
//! reused database keeps its generations. `BENCH_EXPLAIN=1` prints the plan of the
//! point-in-time fetch. The machine is shared: compare ratios measured in the same run,
//! and note the load average.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, missing_docs)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use domain::events::{DomainEvent, Role};
use domain::sim::{decide_and_apply, Sim, Step};
use domain::streams;
use ed25519_dalek::SigningKey;
use ledger::{Actor, LedgerSigningKey, StreamId};
use projections::pit::chart_as_of;
use projections::{Projections, RunnerConfig};
use store::{AllFilter, EventStore, ExpectedRevision, ProposedEvent, StoreConfig};
use testdb::TestDb;
use uuid::Uuid;

/// The allocator `chartledger serve` (which runs the projections) runs with.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

use store::now;

fn proposed(event: &DomainEvent, role: Role, user: Uuid) -> ProposedEvent {
    ProposedEvent {
        event_id: Uuid::now_v7(),
        event_type: event.event_type(),
        schema_version: event.schema_version(),
        actor: Actor { user_id: user, role: role.role_name() },
        payload: event.to_payload(),
    }
}

async fn append_all(store: &EventStore, batch: HashMap<StreamId, Vec<ProposedEvent>>) {
    let mut jobs = Vec::new();
    for (stream, events) in batch {
        for chunk in events.chunks(1000) {
            jobs.push((stream.clone(), chunk.to_vec()));
        }
    }
    // Bounded concurrency: at most 64 appends in flight.
    let mut inflight = Vec::new();
    for (s, evs) in jobs {
        let store = store.clone();
        inflight.push(tokio::spawn(async move { store.append(&s, ExpectedRevision::Any, evs).await }));
        if inflight.len() >= 64 {
            for h in inflight.drain(..) {
                h.await.unwrap().unwrap();
            }
        }
    }
    for h in inflight {
        h.await.unwrap().unwrap();
    }
}

/// Write the realistic ledger; returns (events written, clinical events, accesses).
async fn populate(store: &EventStore, events: usize, patients: usize) -> (usize, usize) {
    let mut sim = Sim::new(2026);
    let user = Uuid::now_v7();
    let mut charts = Vec::with_capacity(patients);
    let mut written = 0;
    let mut accesses = 0;
    let mut batch: HashMap<StreamId, Vec<ProposedEvent>> = HashMap::new();
    let t = now();
    for _ in 0..patients {
        let (chart, _, event) = sim.new_patient(t).unwrap();
        batch.entry(streams::patient(chart.patient_id)).or_default().push(proposed(
            &event,
            Role::Receptionist,
            user,
        ));
        charts.push(chart);
        written += 1;
    }
    while written < events {
        let t = now();
        for _ in 0..50_000.min(events - written) {
            let i = sim.rng.below(charts.len() as u64) as usize;
            let chart = &mut charts[i];
            match sim.step(chart, t) {
                Step::Command { command, author_role, patient_id } => {
                    let event = decide_and_apply(chart, command, t).unwrap();
                    batch.entry(streams::patient(patient_id)).or_default().push(proposed(
                        &event,
                        author_role,
                        user,
                    ));
                }
                Step::Access { event, role } => {
                    let stream = streams::access(event.patient_id);
                    let event = DomainEvent::RecordAccessed(event);
                    batch.entry(stream).or_default().push(proposed(&event, role, user));
                    accesses += 1;
                }
            }
            written += 1;
        }
        append_all(store, std::mem::take(&mut batch)).await;
        if written % 200_000 < 50_000 {
            println!("  written {written} events");
        }
    }
    append_all(store, batch).await;
    (written, accesses)
}

/// One patient with `n` clinical events (no accesses: those live in another stream).
async fn big_patient(store: &EventStore, n: usize, seed: u64) -> Uuid {
    let mut sim = Sim::new(seed);
    sim.access_percent = 0;
    let user = Uuid::now_v7();
    let t = now();
    let (mut chart, _, event) = sim.new_patient(t).unwrap();
    let id = chart.patient_id;
    let mut events = vec![proposed(&event, Role::Receptionist, user)];
    let history = sim.history(&mut chart, t, |_, written| written + 1 < n).unwrap();
    events.extend(history.iter().map(|(role, _, event)| proposed(event, *role, user)));
    let stream = streams::patient(id);
    for chunk in events.chunks(1000) {
        store.append(&stream, ExpectedRevision::Any, chunk.to_vec()).await.unwrap();
    }
    id
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1000.0
}

async fn wait_until(projections: &Projections, head: u64) -> Duration {
    let start = Instant::now();
    projections.wait_for(head - 1, Duration::from_secs(3600)).await.unwrap();
    start.elapsed()
}

/// With `BENCH_DB_URL`, a ledger written by an earlier run is used again: its two large
/// charts are the patient streams of exactly 1,000 and 10,000 events.
async fn large_charts(pool: &sqlx::PgPool) -> Option<(Uuid, Uuid)> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT stream_id, count(*) FROM ledger_events WHERE stream_id LIKE 'patient-%' \
         GROUP BY stream_id HAVING count(*) IN (1000, 10000)",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let find = |n: i64| {
        rows.iter()
            .find(|(_, c)| *c == n)
            .and_then(|(s, _)| streams::patient_of(&StreamId::new(s.clone()).unwrap()))
    };
    Some((find(1000)?, find(10_000)?))
}

/// Forget every projection generation (a reused database starts like a fresh one).
async fn reset_projections(pool: &sqlx::PgPool) {
    let schemas: Vec<String> =
        sqlx::query_scalar("SELECT schema_name FROM projection_generations").fetch_all(pool).await.unwrap();
    for s in schemas {
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {s} CASCADE")).execute(pool).await.unwrap();
    }
    sqlx::query("DELETE FROM projection_generations").execute(pool).await.unwrap();
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let events = env_usize("BENCH_EVENTS", 1_000_000);
        let patients = env_usize("BENCH_PATIENTS", 20_000);
        let phases = std::env::var("BENCH_PHASES").unwrap_or_else(|_| "scan,rebuild,pit".into());
        let phase = |p: &str| phases.split(',').any(|x| x == p);
        let (pool, _db) = match std::env::var("BENCH_DB_URL") {
            Ok(url) => (sqlx::PgPool::connect(&url).await.unwrap(), None),
            Err(_) => {
                let db = TestDb::new().await.unwrap();
                (db.pool().clone(), Some(db))
            }
        };
        let key = LedgerSigningKey::new("bench.example/ledger", SigningKey::from_bytes(&[9u8; 32])).unwrap();
        let store = EventStore::open(pool.clone(), key, StoreConfig::default()).await.unwrap();

        let (pit_1k, pit_10k) = match large_charts(&pool).await {
            Some(found) => {
                println!("projections bench: reusing the ledger of BENCH_DB_URL (head {})", store.head().size);
                found
            }
            None => {
                println!("projections bench: {events} events over {patients} patients (writing...)");
                let t = Instant::now();
                let (written, accesses) = populate(&store, events, patients).await;
                let pit_1k = big_patient(&store, 1_000, 7).await;
                let pit_10k = big_patient(&store, 10_000, 8).await;
                println!(
                    "  wrote {written} events ({accesses} accesses) + 11,000 for two large charts in {:.1} s; head {}",
                    t.elapsed().as_secs_f64(),
                    store.head().size
                );
                sqlx::query("VACUUM ANALYZE").execute(&pool).await.unwrap();
                (pit_1k, pit_10k)
            }
        };
        let head = store.head().size;
        if phase("rebuild") {
            reset_projections(&pool).await;
        }

        // Baseline: scan $all in the runner's page size, with the store's row decoding.
        let page = RunnerConfig::default().page_events;
        let mut scan_rate = f64::NAN;
        if phase("scan") {
            let t = Instant::now();
            let mut from = 0;
            loop {
                let rows = store.read_all(from, page, &AllFilter::default()).await.unwrap();
                from += rows.len() as u64;
                if rows.len() < page {
                    break;
                }
            }
            let scan = t.elapsed().as_secs_f64();
            scan_rate = head as f64 / scan;
            println!("baseline: scan of $all (read + envelope decode): {scan_rate:.0} ev/s ({scan:.1} s)");
        }

        // Rebuild 1: a fresh runner from position 0 (or the runner of a reused generation).
        let t = Instant::now();
        let projections = Projections::start(store.clone(), RunnerConfig::default()).await.unwrap();
        wait_until(&projections, head).await;
        if phase("rebuild") {
            // The runner builds the secondary indexes after its catch-up by pages: count
            // them in (they appear together, in one transaction).
            let schema = format!("rm_records_g{}", projections.active_generation());
            loop {
                let n: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_indexes WHERE schemaname = $1 AND indexname = 'users_username_idx'")
                    .bind(&schema)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                if n > 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let first = t.elapsed().as_secs_f64();
            let rate1 = head as f64 / first;
            println!(
                "rebuild (fresh runner, generation 1): {rate1:.0} ev/s ({first:.1} s) = {:.2} x scan baseline",
                rate1 / scan_rate
            );

            // Rebuild 2: blue/green into generation 2 while generation 1 serves.
            let t = Instant::now();
            let generation = projections.rebuild(Duration::from_secs(3600)).await.unwrap();
            let second = t.elapsed().as_secs_f64();
            let rate2 = head as f64 / second;
            println!(
                "rebuild (blue/green, generation {generation}): {rate2:.0} ev/s ({second:.1} s) = {:.2} x scan baseline",
                rate2 / scan_rate
            );
        }

        if std::env::var_os("BENCH_EXPLAIN").is_some() {
            let sql = "EXPLAIN (ANALYZE, BUFFERS) SELECT e.position, e.stream_id, e.stream_revision, e.event_id, \
                       e.envelope, e.event_hash, p.salt, p.payload FROM ledger_events e LEFT JOIN ledger_payloads p \
                       USING (position) WHERE stream_id = $1 AND recorded_at <= now() ORDER BY stream_revision";
            let plan: Vec<String> =
                sqlx::query_scalar(sql).bind(streams::patient(pit_10k).as_str()).fetch_all(&pool).await.unwrap();
            println!("{}", plan.join("\n"));
        }
        // Point-in-time reconstruction, as of now (the head) and as of the recorded times
        // of events spread over the stream.
        if phase("pit") {
            let runs = env_usize("BENCH_PIT_RUNS", 100);
            for (label, id) in [("1,000", pit_1k), ("10,000", pit_10k)] {
                pit_phase(&store, &pool, label, id, runs).await;
            }
        }
        projections.shutdown().await;
    });
}

async fn pit_phase(store: &EventStore, pool: &sqlx::PgPool, label: &str, id: Uuid, runs: usize) {
    // Cold: no snapshot of this chart yet (the call stores one, in the background).
    let _ = sqlx::query("DELETE FROM rm.chart_snapshots WHERE patient_id = $1").bind(id).execute(pool).await;
    let at = now();
    let t = Instant::now();
    let cold = chart_as_of(store, id, at).await.unwrap();
    let cold_ms = t.elapsed().as_secs_f64() * 1000.0;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut times = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let pit = chart_as_of(store, id, at).await.unwrap();
        times.push(t.elapsed());
        assert_eq!(pit, cold);
    }
    let mut fetch = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        store.read_stream_as_of(&streams::patient(id), at).await.unwrap();
        fetch.push(t.elapsed());
    }
    let mut sql = Vec::new();
    let read = projections::ReadModels::new(pool.clone());
    for _ in 0..runs {
        let t = Instant::now();
        read.chart(id).await.unwrap().unwrap();
        sql.push(t.elapsed());
    }
    let (p50, p99, f50, f99) =
        (pct(&mut times, 0.5), pct(&mut times, 0.99), pct(&mut fetch, 0.5), pct(&mut fetch, 0.99));
    println!(
        "point-in-time chart, {label} events ({} folded), as of the head: p50 {p50:.2} ms, p99 {p99:.2} ms \
         (first call {cold_ms:.2} ms); baseline fetch of the same rows p50 {f50:.2} ms, p99 {f99:.2} ms; \
         ratio p50 {:.2}, p99 {:.2}; read-model chart p50 {:.2} ms",
        cold.events,
        p50 / f50,
        p99 / f99,
        pct(&mut sql, 0.5)
    );
    // As of the recorded times of events spread over the stream (each one's prefix).
    let raw = store.read_whole_stream(&streams::patient(id)).await.unwrap();
    let mut times = Vec::new();
    let mut fetch = Vec::new();
    for k in 0..runs {
        let r = &raw[(k * 7919 + 13) % raw.len()];
        let at = r.event.body().recorded_at;
        let t = Instant::now();
        chart_as_of(store, id, at).await.unwrap();
        times.push(t.elapsed());
        let t = Instant::now();
        store.read_stream_as_of(&streams::patient(id), at).await.unwrap();
        fetch.push(t.elapsed());
    }
    let (p50, p99, f50, f99) =
        (pct(&mut times, 0.5), pct(&mut times, 0.99), pct(&mut fetch, 0.5), pct(&mut fetch, 0.99));
    println!(
        "point-in-time chart, {label} events, as of {runs} earlier times: p50 {p50:.2} ms, p99 {p99:.2} ms; \
         fetch p50 {f50:.2} ms, p99 {f99:.2} ms; ratio p50 {:.2}, p99 {:.2}",
        p50 / f50,
        p99 / f99
    );
}
