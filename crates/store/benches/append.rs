//! Event store benchmark: `cargo bench -p store --bench append`.
//!
//! In one run, on a fresh database: appends/s and p50/p99 latency with 1, 16 and 64
//! concurrent single-event clients and with batches of 100 and 1,000 events; the same rows
//! (same byte sizes) inserted raw into identical tables without signing, hashing, Merkle
//! work or triggers, as the baseline; latency at a paced 10,000 events/s; and ledger
//! verification events/s next to the raw strict Ed25519 verification rate on all cores.
//! It also prints the one-core Ed25519 signing rate: a stream's events are signed in chain
//! order, so that rate caps one client's single-stream batches. Every load starts after a
//! CHECKPOINT (see `checkpoint`). Set `BENCH_SCALE` (default 1.0) to lengthen or shorten
//! every phase; `BENCH_SCENARIOS=64x1,1x1000` runs only those rows, `BENCH_SKIP_RAW=1`
//! skips their baselines, `BENCH_ONLY=paced` runs only the paced load (for profiling).
//! It prints the server's `fsync` and `synchronous_commit` and refuses to run when `fsync`
//! is off.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::print_stderr, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::{Signer, SigningKey};
use ledger::{Actor, EventType, LedgerSigningKey, RoleName, StreamId};
use rayon::prelude::*;
use store::verify::{verify_ledger, VerifyOptions};
use store::{EventStore, ExpectedRevision, ProposedEvent, StoreConfig};
use testdb::TestDb;
use uuid::Uuid;

const PAYLOAD: usize = 256;

fn scale() -> f64 {
    std::env::var("BENCH_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1.0)
}

fn proposed() -> ProposedEvent {
    ProposedEvent {
        event_id: Uuid::now_v7(),
        event_type: EventType::new("clinical.entry_recorded").unwrap(),
        schema_version: 1,
        actor: Actor { user_id: Uuid::from_u128(7), role: RoleName::new("physician").unwrap() },
        payload: vec![0x5a; PAYLOAD],
    }
}

fn stream(i: usize) -> StreamId {
    StreamId::patient(Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 | i as u128))
}

struct Stats {
    events: usize,
    secs: f64,
    lat: Vec<Duration>,
}

impl Stats {
    fn rate(&self) -> f64 {
        self.events as f64 / self.secs
    }
    fn pct(&mut self, p: f64) -> f64 {
        if self.lat.is_empty() {
            return 0.0;
        }
        self.lat.sort();
        let i = ((self.lat.len() as f64 - 1.0) * p).round() as usize;
        self.lat[i].as_secs_f64() * 1000.0
    }
}

/// `clients` tasks, each appending `batch`-event appends for `dur`.
async fn run_store(store: &EventStore, clients: usize, batch: usize, dur: Duration, offset: usize) -> Stats {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let s = stream(offset + c);
            let mut lat = Vec::new();
            let mut n = 0;
            while start.elapsed() < dur {
                let events: Vec<ProposedEvent> = (0..batch).map(|_| proposed()).collect();
                let t = Instant::now();
                store.append(&s, ExpectedRevision::Any, events).await.unwrap();
                lat.push(t.elapsed());
                n += batch;
            }
            (n, lat)
        }));
    }
    let mut st = Stats { events: 0, secs: 0.0, lat: Vec::new() };
    for t in tasks {
        let (n, lat) = t.await.unwrap();
        st.events += n;
        st.lat.extend(lat);
    }
    st.secs = start.elapsed().as_secs_f64();
    st
}

/// The same rows inserted raw: same columns and byte sizes, no signing, hashing, Merkle
/// nodes computed, or triggers; one transaction per append, as the store's clients see.
async fn run_raw(
    pool: &sqlx::PgPool,
    clients: usize,
    batch: usize,
    dur: Duration,
    sample: &RawRow,
    offset: usize,
) -> Stats {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let pool = pool.clone();
        let row = sample.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut n = 0;
            let s = stream(offset + c).as_str().to_owned();
            let mut rev = 0i64;
            while start.elapsed() < dur {
                let t = Instant::now();
                let ids: Vec<Uuid> = (0..batch).map(|_| Uuid::now_v7()).collect();
                let revs: Vec<i64> = (0..batch as i64).map(|i| rev + i).collect();
                rev += batch as i64;
                sqlx::query(
                    "WITH ins AS (INSERT INTO bench_raw_events (position, stream_id, stream_revision, event_id, event_type, recorded_at, envelope, event_hash, merkle_nodes) \
                     SELECT nextval('bench_raw_pos'), $1, r, i, $2, now(), $3, $4, $5 FROM UNNEST($6::int8[], $7::uuid[]) AS u(r, i) RETURNING position) \
                     INSERT INTO bench_raw_payloads (position, salt, payload) SELECT position, $8, $9 FROM ins",
                )
                .bind(&s)
                .bind("clinical.entry_recorded")
                .bind(&row.envelope)
                .bind(&row.hash)
                .bind(&row.nodes)
                .bind(&revs)
                .bind(&ids)
                .bind(&row.salt)
                .bind(&row.payload)
                .execute(&pool)
                .await
                .unwrap();
                lat.push(t.elapsed());
                n += batch;
            }
            (n, lat)
        }));
    }
    let mut st = Stats { events: 0, secs: 0.0, lat: Vec::new() };
    for t in tasks {
        let (n, lat) = t.await.unwrap();
        st.events += n;
        st.lat.extend(lat);
    }
    st.secs = start.elapsed().as_secs_f64();
    st
}

#[derive(Clone)]
struct RawRow {
    envelope: Vec<u8>,
    hash: Vec<u8>,
    nodes: Vec<u8>,
    salt: Vec<u8>,
    payload: Vec<u8>,
}

/// Paced load at `rate` events/s (single-event appends from many tasks).
async fn run_paced(store: &EventStore, rate: f64, dur: Duration) -> Stats {
    let start = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut i = 0usize;
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut issued = 0usize;
    while start.elapsed() < dur {
        ticker.tick().await;
        let due = (start.elapsed().as_secs_f64() / interval.as_secs_f64()) as usize;
        while issued < due {
            let store = store.clone();
            let tx = tx.clone();
            i += 1;
            let s = stream(10_000 + i % 256);
            tokio::spawn(async move {
                let t = Instant::now();
                store.append(&s, ExpectedRevision::Any, vec![proposed()]).await.unwrap();
                let _ = tx.send(t.elapsed());
            });
            issued += 1;
        }
    }
    drop(tx);
    let mut lat = Vec::new();
    while let Some(l) = rx.recv().await {
        lat.push(l);
    }
    Stats { events: lat.len(), secs: start.elapsed().as_secs_f64(), lat }
}

/// A CHECKPOINT before each measured load, so that no load pays for flushing the pages
/// an earlier one dirtied (each batched load writes hundreds of MB of WAL; on a server
/// with the default `max_wal_size` that forces checkpoints, and their flushing stalls
/// commits). Needs superuser or `pg_checkpoint`; skipped with a note otherwise.
async fn checkpoint(pool: &sqlx::PgPool) {
    if let Err(e) = sqlx::query("CHECKPOINT").execute(pool).await {
        eprintln!("note: CHECKPOINT refused ({e}); loads may pay for earlier loads' checkpoints");
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let d = Duration::from_secs_f64(4.0 * scale());
        let db = TestDb::new().await.unwrap();
        if std::env::var_os("BENCH_LOG_SLOW").is_some() {
            sqlx::raw_sql(&format!("ALTER DATABASE {} SET log_min_duration_statement = 5", db.name())).execute(db.pool()).await.unwrap();
        }
        let pool = sqlx::postgres::PgPoolOptions::new().max_connections(70).connect(db.url()).await.unwrap();
        // Durability settings of the server measured: without fsync, commits never wait for
        // the disk and the figures (ours and the baseline's) mean nothing.
        let show = |name: &'static str| {
            let pool = pool.clone();
            async move { sqlx::query_scalar::<_, String>(&format!("SHOW {name}")).fetch_one(&pool).await.unwrap() }
        };
        let (fsync, sync_commit, sync_method) =
            (show("fsync").await, show("synchronous_commit").await, show("wal_sync_method").await);
        println!(
            "server: fsync = {fsync}, synchronous_commit = {sync_commit} (the store's writer sets it on in its \
             sessions; the raw baseline uses this default), wal_sync_method = {sync_method}"
        );
        if fsync != "on" {
            eprintln!(
                "refusing to benchmark: the PostgreSQL server runs with fsync = {fsync}, so commits are not \
                 durable and no figure would mean anything. Point DATABASE_URL at a server with fsync = on."
            );
            db.drop_db().await.ok();
            std::process::exit(2);
        }
        let key = LedgerSigningKey::generate("bench.example/ledger", &mut rand_core::OsRng).unwrap();
        let store = EventStore::open(pool.clone(), key, StoreConfig::default()).await.unwrap();
        // Baseline tables: same columns, no triggers.
        for sql in [
            "CREATE TABLE bench_raw_events (LIKE ledger_events INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES)",
            "CREATE TABLE bench_raw_payloads (LIKE ledger_payloads INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES)",
            "CREATE SEQUENCE bench_raw_pos",
        ] {
            sqlx::query(sql).execute(&pool).await.unwrap();
        }
        // A representative stored row: real sizes.
        store.append(&stream(0), ExpectedRevision::Any, vec![proposed()]).await.unwrap();
        let sample = store.read_all(1, 1, &Default::default()).await.unwrap().remove(0);
        let row = RawRow {
            envelope: sample.event.to_bytes(),
            hash: sample.event.hash().to_vec(),
            nodes: vec![0x11; 32],
            salt: vec![0x22; 32],
            payload: vec![0x5a; PAYLOAD],
        };
        println!("event: envelope {} B, payload {} B, salt 32 B, merkle nodes ~32 B", row.envelope.len(), PAYLOAD);
        println!("{:<26} {:>12} {:>9} {:>9} {:>12} {:>9} {:>9} {:>7}", "scenario", "store ev/s", "p50 ms", "p99 ms", "raw ev/s", "p50 ms", "p99 ms", "ratio");
        let mut offset = 100;
        // BENCH_ONLY=paced skips the throughput table.
        let only_paced = std::env::var("BENCH_ONLY").is_ok_and(|v| v == "paced");
        let scenarios: &[(usize, usize)] =
            if only_paced { &[] } else { &[(1, 1), (16, 1), (64, 1), (1, 100), (4, 100), (1, 1000), (2, 1000)] };
        // BENCH_SCENARIOS=64x1,1x1000 runs only those rows (for profiling one load).
        let picked = std::env::var("BENCH_SCENARIOS").ok();
        // BENCH_SKIP_RAW=1: the store's rows alone (for profiling).
        let skip_raw = std::env::var_os("BENCH_SKIP_RAW").is_some();
        for &(clients, batch) in scenarios {
            if picked.as_ref().is_some_and(|p| !p.split(',').any(|s| s == format!("{clients}x{batch}"))) {
                continue;
            }
            eprintln!("phase: {clients} clients x batch {batch}");
            checkpoint(&pool).await;
            let mut s = run_store(&store, clients, batch, d, offset).await;
            checkpoint(&pool).await;
            let mut r = run_raw(&pool, clients, batch, if skip_raw { Duration::ZERO } else { d }, &row, offset).await;
            offset += clients;
            println!(
                "{:<26} {:>12.0} {:>9.2} {:>9.2} {:>12.0} {:>9.2} {:>9.2} {:>7.2}",
                format!("{clients} clients x batch {batch}"),
                s.rate(),
                s.pct(0.5),
                s.pct(0.99),
                r.rate(),
                r.pct(0.5),
                r.pct(0.99),
                s.rate() / r.rate()
            );
        }
        checkpoint(&pool).await;
        let mut paced = run_paced(&store, 10_000.0, d).await;
        println!(
            "paced 10,000 ev/s target: achieved {:.0} ev/s, p50 {:.2} ms, p99 {:.2} ms",
            paced.rate(),
            paced.pct(0.5),
            paced.pct(0.99)
        );
        store.checkpoint_now().await.unwrap();
        let n = store.head().size;
        let t = Instant::now();
        let report = verify_ledger(&pool, &VerifyOptions::default()).await.unwrap();
        let vsecs = t.elapsed().as_secs_f64();
        assert!(report.ok(), "{report:?}");
        // Raw strict verification on all cores, same message sizes.
        let sk = SigningKey::from_bytes(&[1; 32]);
        let vk = sk.verifying_key();
        let msgs: Vec<Vec<u8>> = (0..20_000u32).map(|i| [sample.event.signature_message(), i.to_le_bytes().to_vec()].concat()).collect();
        let sigs: Vec<_> = msgs.iter().map(|m| sk.sign(m)).collect();
        let t = Instant::now();
        msgs.par_iter().zip(&sigs).for_each(|(m, s)| vk.verify_strict(m, s).unwrap());
        let raw = msgs.len() as f64 / t.elapsed().as_secs_f64();
        println!(
            "ledger verify: {n} events in {vsecs:.2} s = {:.0} ev/s; raw verify_strict on all cores {raw:.0}/s; ratio {:.2}",
            n as f64 / vsecs,
            (n as f64 / vsecs) / raw
        );
        // The signing ceiling: a stream's events are signed in chain order (each links to
        // the hash of the signed event before), so one client's batch on one stream is
        // signed on one core, at most this fast, whatever the database does.
        let t = Instant::now();
        let n_sign = msgs.len().min(10_000);
        for m in &msgs[..n_sign] {
            std::hint::black_box(sk.sign(m));
        }
        let sign_rate = n_sign as f64 / t.elapsed().as_secs_f64();
        println!("raw ed25519 sign on one core: {sign_rate:.0}/s (ceiling for one stream's batch)");
        let _ = Arc::new(());
        drop(store);
        db.drop_db().await.ok();
    });
}
