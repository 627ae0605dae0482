//! GraphQL read benchmark: `cargo bench -p api --bench graphql`.
//!
//! In one run, on a fresh database (`DATABASE_URL` if set, else 127.0.0.1:5432, via `testdb`):
//!
//! 1. the server as `chartledger serve` wires it (`AppState::new`, `http::router`, a
//!    24-connection pool from `api::pool_options`, the projection runner) on an ephemeral
//!    loopback port, in its own 2-worker runtime (threads `bench-server`); the load clients
//!    run in a second runtime of the same process (threads `bench-client`, so a profile
//!    tells the two apart), each on one keep-alive connection driven by hyper's connection
//!    API with request bodies built beforehand, as a load generator like `wrk` or `oha`
//!    would (the client shares the two cores with the server and PostgreSQL, so whatever
//!    it spends is taken from the server);
//! 2. seeding: `BENCH_PATIENTS` (200) patients with ~`BENCH_ENTRIES` (20) clinical entries
//!    each (realistic commands from `domain::sim`: entries, amendments, consents,
//!    appointments), written through `projections::Records::execute`; one physician account
//!    per client (created, logged in, TOTP enrolled and verified over GraphQL), each on the
//!    care team of 1/16th of the patients; then the projections are waited for;
//! 3. for 16 and 64 concurrent clients (one keep-alive HTTP connection and one session
//!    each), a fixed duration per phase (`BENCH_SECS`, default 5 s, times `BENCH_SCALE`) and
//!    a bounded request count:
//!    - baseline A: `{ __typename }` without a token (no database at all);
//!    - baseline B: `{ idleTimeoutSeconds }` with the bearer token (the session lookup only);
//!    - chart reads: a physician's chart query (demographics and every entry's current
//!      version) for their own patients, auditing on: each read writes its access event
//!      durably before the response is sent;
//! 4. the chart reads once more, open loop: `BENCH_PACED_RATE` (2,000) reads a second on a
//!    fixed schedule, on up to 64 connections, latency counted from each read's scheduled
//!    time; the target (2,000 audited reads/s with p99 under 25 ms) is judged on this
//!    phase, the way a clinic's load arrives (many independent users, not 16 that wait
//!    for each answer);
//! 5. where the time goes: the same pieces called in-process with the same concurrency
//!    (session lookup, full read-model chart load, the cached current chart that a read
//!    uses, access-event append, and the whole request without HTTP), and SQL statements
//!    per request (counted from sqlx's statement events).
//!
//! The server's `fsync` is printed; the run is refused when it is off.
//!
//! What an audited chart read costs (see ARCHITECTURE.md, `crates/api`): the session
//! (looked up at most once a second per session), one probe of the patient row's
//! position and generation (`ReadModels::current_chart`: the chart comes from memory when
//! it has not changed since it was loaded, else in one statement; the care-team decision
//! reads the same chart), and the access event, which waits for a group commit (one WAL
//! flush shared by the events queued with it) before the response is sent. sqlx's pool
//! checks a connection with a round trip when it is given back, and, unless `test_before_acquire` is off (as in
//! `api::pool_options`), again when it is taken: those round trips are not statements
//! and are not counted below. On 2 cores shared by the clients, the server and
//! PostgreSQL the reads are CPU-bound, so compare figures only within one run.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    missing_docs,
    missing_debug_implementations
)]

mod load;

use load::{env_f64, env_usize, run, run_paced, scale, Conn, CountSql, Stats, COUNTING, STATEMENTS};

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use api::access::RequestCtx;
use api::auth::ClientInfo;
use api::{ApiConfig, AppState};
use axum::body::Bytes;
use domain::commands::Command;
use domain::events::{AccessAction, CareRole, PurposeOfUse, RecordAccessed, ResourceKind, Role};
use domain::sim::{decide_and_apply, Sim};
use ed25519_dalek::SigningKey;
use futures::StreamExt;
use hyper::header::HeaderValue;
use ledger::{Actor, LedgerSigningKey};
use projections::{Projections, RunnerConfig};
use serde_json::{json, Value};
use store::{EventStore, StoreConfig};
use testdb::TestDb;
use uuid::Uuid;

/// The allocator `chartledger serve` runs with.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ADMIN_PASSWORD: &str = "bootstrap admin password";
const PASSWORD: &str = "a long enough password";
/// Patients are split in this many groups; physician `c` cares for group `c % GROUPS`.
const GROUPS: usize = 16;
const CLIENTS: [usize; 2] = [16, 64];
/// Connections of the open-loop phase.
const PACED_CLIENTS: usize = 64;

const Q_TYPENAME: &str = "{ __typename }";
const Q_IDLE: &str = "{ idleTimeoutSeconds }";
const Q_CHART: &str = "query($p: UUID!) { chart(patientId: $p) { patientId revision \
    demographics { mrn name { family given } birthDate sex } \
    entries { entryId kind status current { version change reason content effectiveAt recordedAt authorId authorRole } } } }";

// ------------------------------------------------------------------ the server

struct Server {
    db: TestDb,
    state: AppState,
    addr: SocketAddr,
}

async fn start_server(pool_size: u32) -> Server {
    let db = TestDb::new().await.unwrap();
    let show = |name: &'static str| {
        let pool = db.pool().clone();
        async move { sqlx::query_scalar::<_, String>(&format!("SHOW {name}")).fetch_one(&pool).await.unwrap() }
    };
    let (fsync, sync_commit, version) =
        (show("fsync").await, show("synchronous_commit").await, show("server_version").await);
    println!("server: PostgreSQL {version}, SHOW fsync = {fsync}, synchronous_commit = {sync_commit}");
    if fsync != "on" {
        eprintln!(
            "refusing to benchmark: fsync = {fsync}, so the audit writes are not durable and no figure \
             would mean anything. Point DATABASE_URL at a server with fsync = on."
        );
        db.drop_db().await.ok();
        std::process::exit(2);
    }
    let pool = api::pool_options(pool_size).connect(db.url()).await.unwrap();
    let key = LedgerSigningKey::new("bench.example/ledger", SigningKey::from_bytes(&[9u8; 32])).unwrap();
    let store_config = StoreConfig { origin: "bench.example/ledger".into(), ..StoreConfig::default() };
    let store = EventStore::open(pool, key, store_config).await.unwrap();
    let projections = Projections::start(store.clone(), RunnerConfig::default()).await.unwrap();
    let config = ApiConfig { listen: "127.0.0.1:0".parse().unwrap(), ..ApiConfig::default() };
    let state = AppState::new(store, projections, config);
    api::bootstrap::ensure_admin(&state, "admin", Some(ADMIN_PASSWORD.into())).await.unwrap().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = api::http::router(state.clone(), false).into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Server { db, state, addr }
}

// ------------------------------------------------------------------ GraphQL client

fn client() -> reqwest::Client {
    reqwest::Client::builder().user_agent("graphql-bench/1").pool_max_idle_per_host(1).build().unwrap()
}

async fn gql(http: &reqwest::Client, url: &str, token: Option<&str>, query: &str, vars: Value) -> Value {
    let mut req = http.post(url).json(&json!({"query": query, "variables": vars}));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    assert!(resp.status().is_success(), "status {}", resp.status());
    let v: Value = resp.json().await.unwrap();
    assert!(v.get("errors").is_none(), "unexpected errors: {v}");
    v["data"].clone()
}

const LOGIN: &str = "mutation($u: String!, $p: String!) { login(username: $u, password: $p) { token mfaRequired mfaEnrolled passwordChangeRequired } }";
/// What the administrator sets; replaced at first login.
const INITIAL: &str = "initial password from the admin";

/// Log in with `password`, enrolling and verifying TOTP and replacing the password with
/// `PASSWORD` when the server asks for it. Returns the bearer token.
async fn login(http: &reqwest::Client, url: &str, name: &str, password: &str) -> String {
    let r = gql(http, url, None, LOGIN, json!({"u": name, "p": password})).await;
    let token = r["login"]["token"].as_str().unwrap().to_owned();
    if r["login"]["mfaRequired"] == json!(true) {
        assert_eq!(r["login"]["mfaEnrolled"], json!(false), "fresh accounts only");
        let e = gql(http, url, Some(&token), "mutation { enrollMfa { secret } }", json!({})).await;
        let secret = totp_rs::Secret::Encoded(e["enrollMfa"]["secret"].as_str().unwrap().to_owned())
            .to_bytes()
            .unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let code = api::auth::totp::code_at(&secret, now);
        let v =
            gql(http, url, Some(&token), "mutation($c: String!) { verifyMfa(code: $c) }", json!({"c": code}))
                .await;
        assert_eq!(v["verifyMfa"], json!(true));
    }
    if r["login"]["passwordChangeRequired"] == json!(true) {
        let change =
            "mutation($o: String!, $n: String!) { changePassword(oldPassword: $o, newPassword: $n) }";
        let c = gql(http, url, Some(&token), change, json!({"o": password, "n": PASSWORD})).await;
        assert_eq!(c["changePassword"], json!(true));
    }
    token
}

/// Create user `name` with `role` (as the administrator `admin`), have `approver` (a
/// second administrator, or `None` for the grant the bootstrap administrator may make
/// alone) approve the role, and log in. Returns (user id, token).
async fn staff(
    http: &reqwest::Client,
    url: &str,
    (admin, approver): (&str, Option<&str>),
    name: &str,
    role: &str,
) -> (Uuid, String) {
    let id = Uuid::now_v7();
    let create = format!(
        "mutation($id: UUID!, $u: String!, $pw: String!, $e: UUID!) {{ createUser(userId: $id, username: $u, \
         displayName: \"Bench user\", roles: [{role}], initialPassword: $pw, eventId: $e) {{ position }} }}"
    );
    gql(http, url, Some(admin), &create, json!({"id": id, "u": name, "pw": INITIAL, "e": Uuid::now_v7()}))
        .await;
    if let Some(approver) = approver {
        // Separation of duties: a clinical role needs a second administrator.
        let list = "query($u: UUID!) { roleGrants(userId: $u, status: PENDING) { grantId } }";
        let pending = gql(http, url, Some(admin), list, json!({"u": id})).await;
        let approve =
            "mutation($g: UUID!, $e: UUID!) { approveRoleGrant(grantId: $g, eventId: $e) { status } }";
        for g in pending["roleGrants"].as_array().unwrap() {
            let r = gql(http, url, Some(approver), approve, json!({"g": g["grantId"], "e": Uuid::now_v7()}))
                .await;
            assert_eq!(r["approveRoleGrant"]["status"], "APPROVED");
        }
    }
    (id, login(http, url, name, INITIAL).await)
}

// ------------------------------------------------------------------ seeding

use store::now;

/// The commands of one patient: registration, realistic clinical history until `entries`
/// entries exist, and the care-team assignments. Returns (patient, commands with roles).
fn patient_commands(
    sim: &mut Sim,
    entries: usize,
    physicians: &[Uuid],
    group: usize,
) -> (Uuid, Vec<(Role, Command)>) {
    let t = now();
    let (mut chart, cmd, _) = sim.new_patient(t).unwrap();
    let id = chart.patient_id;
    let mut out = vec![(Role::Receptionist, cmd)];
    for (c, doc) in physicians.iter().enumerate() {
        if c % GROUPS == group {
            let cmd = Command::AssignCareTeamMember { clinician_id: *doc, care_role: CareRole::Attending };
            decide_and_apply(&mut chart, cmd.clone(), t).unwrap();
            out.push((Role::Administrator, cmd));
        }
    }
    // The simulator may remove its own clinicians, never ours.
    let history = sim.history(&mut chart, t, |c, _| c.entries.len() < entries).unwrap();
    out.extend(history.into_iter().map(|(role, command, _)| (role, command)));
    (id, out)
}

// ------------------------------------------------------------------ main

fn main() {
    tracing::subscriber::set_global_default(tracing_subscriber::layer::SubscriberExt::with(
        tracing_subscriber::registry(),
        CountSql,
    ))
    .unwrap();
    let dur = Duration::from_secs_f64(env_f64("BENCH_SECS", 5.0) * scale());
    let budget = (env_f64("BENCH_MAX_REQUESTS", 60_000.0) * scale()).max(1.0) as i64;
    let n_patients = env_usize("BENCH_PATIENTS", 200);
    let n_entries = env_usize("BENCH_ENTRIES", 20);
    let pool_size = env_usize("BENCH_POOL", 24) as u32;
    let max_clients = *CLIENTS.iter().max().unwrap();

    // The server's runtime (2 workers, as `chartledger serve` gets on this 2-core machine),
    // and the clients' runtime.
    let srt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-server")
        .enable_all()
        .build()
        .unwrap();
    let crt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-client")
        .enable_all()
        .build()
        .unwrap();
    println!(
        "graphql bench: {n_patients} patients x ~{n_entries} entries, clients {CLIENTS:?}, {:.1} s per phase \
         (at most {budget} requests), pool {pool_size}, {} cores",
        dur.as_secs_f64(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let srv = srt.block_on(start_server(pool_size));
    let url = format!("http://{}/graphql", srv.addr);
    let state = srv.state.clone();

    // Accounts: the administrator and one physician per client.
    let t0 = Instant::now();
    let (docs, tokens): (Vec<Uuid>, Vec<String>) = crt.block_on(async {
        let http = client();
        let admin = login(&http, &url, "admin", ADMIN_PASSWORD).await;
        let (_, admin2) = staff(&http, &url, (&admin, None), "admin.bench2", "ADMINISTRATOR").await;
        let out: Vec<(Uuid, String)> = futures::stream::iter(0..max_clients)
            .map(|c| {
                let (http, url, admin, admin2) = (http.clone(), url.clone(), admin.clone(), admin2.clone());
                async move {
                    let name = format!("dr.bench{c:02}");
                    staff(&http, &url, (&admin, Some(&admin2)), &name, "PHYSICIAN").await
                }
            })
            .buffered(4)
            .collect()
            .await;
        out.into_iter().unzip()
    });
    println!(
        "  {max_clients} physicians created (roles approved by a second administrator), logged in with TOTP in {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    // Patients, through the command service, 64 at a time.
    let t0 = Instant::now();
    let mut sim = Sim::new(2026);
    sim.access_percent = 0;
    let plan: Vec<(Uuid, Vec<(Role, Command)>)> =
        (0..n_patients).map(|i| patient_commands(&mut sim, n_entries, &docs, i % GROUPS)).collect();
    let patients: Vec<Uuid> = plan.iter().map(|(p, _)| *p).collect();
    let n_commands: usize = plan.iter().map(|(_, c)| c.len()).sum();
    let seeder = Uuid::now_v7();
    srt.block_on(async {
        futures::stream::iter(plan)
            .map(|(p, cmds)| {
                let records = state.records.clone();
                async move {
                    for (role, cmd) in cmds {
                        let actor = Actor { user_id: seeder, role: role.role_name() };
                        records.execute(p, actor, Uuid::now_v7(), cmd).await.unwrap();
                    }
                }
            })
            .buffer_unordered(64)
            .collect::<Vec<()>>()
            .await;
        let head = state.store.head().size;
        state.projections.wait_for(head - 1, Duration::from_secs(600)).await.unwrap();
        sqlx::query("VACUUM ANALYZE").execute(srv.db.pool()).await.unwrap();
    });
    println!(
        "  seeded {n_patients} patients with {n_commands} commands in {:.1} s; projections caught up",
        t0.elapsed().as_secs_f64()
    );
    // Each physician's own patients.
    let mine: Arc<Vec<Vec<Uuid>>> = Arc::new(
        (0..max_clients)
            .map(|c| {
                patients
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| i % GROUPS == c % GROUPS)
                    .map(|(_, p)| *p)
                    .collect()
            })
            .collect(),
    );
    // One prepared chart request body per patient.
    let bodies: Arc<std::collections::HashMap<Uuid, Bytes>> = Arc::new(
        patients
            .iter()
            .map(|p| {
                (
                    *p,
                    Bytes::from(
                        serde_json::to_vec(&json!({"query": Q_CHART, "variables": {"p": p}})).unwrap(),
                    ),
                )
            })
            .collect(),
    );
    let tokens = Arc::new(tokens);

    // Check one chart: the entries are there, and the read is audited.
    let sample = crt
        .block_on(async { gql(&client(), &url, Some(&tokens[0]), Q_CHART, json!({"p": mine[0][0]})).await });
    let entries = sample["chart"]["entries"].as_array().map_or(0, Vec::len);
    let size = serde_json::to_vec(&json!({ "data": sample })).unwrap().len();
    assert!(entries >= n_entries, "the chart has {entries} entries");
    println!("  a chart response: {entries} entries, {size} bytes of JSON");

    // ---------------------------------------------------------------- HTTP phases
    type Kind = (&'static str, &'static str);
    const TYPENAME: Kind = ("static { __typename }, no token", Q_TYPENAME);
    const IDLE: Kind = ("{ idleTimeoutSeconds }, bearer", Q_IDLE);
    const CHART: Kind = ("chart read, audited", Q_CHART);
    // `paced`: open loop at that rate (`run_paced`), else closed loop (`run`).
    let http_phase_at = |kind: Kind,
                         clients: usize,
                         dur: Duration,
                         budget: i64,
                         paced: Option<f64>|
     -> Stats {
        let conns: Arc<Vec<Conn>> =
            Arc::new(crt.block_on(futures::future::join_all((0..clients).map(|_| Conn::open(srv.addr)))));
        let (tokens, mine, bodies) = (tokens.clone(), mine.clone(), bodies.clone());
        let bearers: Arc<Vec<HeaderValue>> =
            Arc::new(tokens.iter().map(|t| HeaderValue::from_str(&format!("Bearer {t}")).unwrap()).collect());
        let static_body = Bytes::from(serde_json::to_vec(&json!({"query": kind.1})).unwrap());
        let op = move |c: usize, i: usize| {
            let conn = conns.clone();
            let (bearer, body) = match kind.1 {
                Q_TYPENAME => (None, static_body.clone()),
                Q_IDLE => (Some(bearers[c].clone()), static_body.clone()),
                _ => {
                    let own = &mine[c];
                    (Some(bearers[c].clone()), bodies[&own[(c + i) % own.len()]].clone())
                }
            };
            // async-graphql puts "errors" at the top level only when there are any.
            async move {
                conn[c].post(bearer, body).await.is_some_and(|b| !b.windows(9).any(|w| w == b"\"errors\":"))
            }
        };
        match paced {
            Some(rate) => crt.block_on(run_paced(clients, rate, dur, op)),
            None => crt.block_on(run(clients, dur, budget, op)),
        }
    };
    let http_phase = |kind: Kind, clients: usize, dur: Duration, budget: i64| {
        http_phase_at(kind, clients, dur, budget, None)
    };

    // Warm-up (connections, caches, plans): not reported.
    let _ = http_phase(CHART, 16, Duration::from_secs_f64(1.0 * scale().min(1.0)), budget);
    let _ = http_phase(IDLE, 16, Duration::from_secs_f64(0.5 * scale().min(1.0)), budget);

    let mut results = Vec::new();
    for clients in CLIENTS {
        let before = state.store.head().size;
        let mut a = http_phase(TYPENAME, clients, dur, budget);
        let mut b = http_phase(IDLE, clients, dur, budget);
        let mid = state.store.head().size;
        // On stderr as it starts, for profilers to attach to (the table comes at the end).
        eprintln!("phase: {clients} clients, chart reads over HTTP");
        let mut c = http_phase(CHART, clients, dur, budget);
        let after = state.store.head().size;
        results.push((
            clients,
            [
                (a.rate(), a.pct(0.5), a.pct(0.99), a.errors, a.n),
                (b.rate(), b.pct(0.5), b.pct(0.99), b.errors, b.n),
                (c.rate(), c.pct(0.5), c.pct(0.99), c.errors, c.n),
            ],
            (mid - before, after - mid),
        ));
    }

    println!();
    println!("HTTP on loopback (server: 2 workers, pool {pool_size}; clients: 2 workers, same process)");
    println!(
        "{:<9} {:<34} {:>10} {:>9} {:>9} {:>7} {:>12} {:>12}",
        "clients", "request", "req/s", "p50 ms", "p99 ms", "errors", "chart/base A", "chart/base B"
    );
    for (clients, rows, (events_base, events_chart)) in &results {
        let chart_rate = rows[2].0;
        for (k, (name, _)) in [TYPENAME, IDLE, CHART].iter().enumerate() {
            let (rate, p50, p99, errors, _) = rows[k];
            let ratio = |base: f64| if k == 2 { format!("{:.3}", chart_rate / base) } else { String::new() };
            println!(
                "{:<9} {:<34} {:>10.0} {:>9.2} {:>9.2} {:>7} {:>12} {:>12}",
                clients,
                name,
                rate,
                p50,
                p99,
                errors,
                ratio(rows[0].0),
                ratio(rows[1].0)
            );
        }
        println!(
            "{:<9} p50 ratio chart/A {:.1}x, chart/B {:.1}x; p99 ratio chart/A {:.1}x, chart/B {:.1}x; \
             ledger events written: {} during the baselines, {} during {} chart reads{}",
            "",
            rows[2].1 / rows[0].1,
            rows[2].1 / rows[1].1,
            rows[2].2 / rows[0].2,
            rows[2].2 / rows[1].2,
            events_base,
            events_chart,
            rows[2].4,
            if *events_chart as usize >= rows[2].4 {
                " (every read audited)"
            } else {
                " (FEWER events than reads!)"
            }
        );
    }

    // Open loop at the target rate: requests arrive on a fixed schedule whatever the
    // server's latency, as from many independent users, on up to PACED_CLIENTS connections.
    let rate = env_f64("BENCH_PACED_RATE", 2000.0);
    let before = state.store.head().size;
    eprintln!("phase: paced {rate}/s, chart reads over HTTP");
    let mut p = http_phase_at(CHART, PACED_CLIENTS, dur, i64::MAX, Some(rate));
    let audited = state.store.head().size - before;
    let (p50, p99) = (p.pct(0.5), p.pct(0.99));
    println!(
        "paced     chart reads scheduled at {rate:.0}/s on up to {PACED_CLIENTS} connections: {:.0}/s done, \
         p50 {p50:.2} ms, p99 {p99:.2} ms from the scheduled time, {} errors, {audited} access events for {} reads",
        p.rate(),
        p.errors,
        p.n
    );
    let target_ok = p.rate() >= 0.98 * rate && rate >= 2000.0 && p99 < 25.0 && p.errors == 0;
    println!(
        "target (>= 2,000 chart reads/s with p99 < 25 ms, open loop at {rate:.0}/s): {}",
        if target_ok { "met" } else { "NOT met" }
    );

    // ---------------------------------------------------------------- where the time goes
    let comp_dur = Duration::from_secs_f64(env_f64("BENCH_COMPONENT_SECS", 2.0) * scale());
    let schema = api::graphql::executor(state.clone());
    println!();
    println!(
        "in-process pieces of a chart read, same concurrency ({:.1} s each; server runtime, no HTTP)",
        comp_dur.as_secs_f64()
    );
    println!(
        "{:<9} {:<44} {:>10} {:>9} {:>9} {:>7}",
        "clients", "piece", "ops/s", "p50 ms", "p99 ms", "errors"
    );
    for clients in CLIENTS {
        let pieces: Vec<(&str, Stats)> = vec![
            ("authenticate (session remembered up to 1 s)", {
                let (state, tokens) = (state.clone(), tokens.clone());
                srt.block_on(run(clients, comp_dur, budget, move |c, _| {
                    let (state, token) = (state.clone(), tokens[c].clone());
                    async move { state.auth.authenticate(&token).await.is_ok() }
                }))
            }),
            ("read-model chart load (ReadModels::chart)", {
                let (state, mine) = (state.clone(), mine.clone());
                srt.block_on(run(clients, comp_dur, budget, move |c, i| {
                    let (state, p) = (state.clone(), mine[c][(c + i) % mine[c].len()]);
                    async move { matches!(state.read.chart(p).await, Ok(Some(_))) }
                }))
            }),
            ("current chart, cached (ReadModels::current_chart)", {
                let (state, mine) = (state.clone(), mine.clone());
                srt.block_on(run(clients, comp_dur, budget, move |c, i| {
                    let (state, p) = (state.clone(), mine[c][(c + i) % mine[c].len()]);
                    async move { matches!(state.read.current_chart(p).await, Ok(Some(_))) }
                }))
            }),
            ("access-event append (record_access)", {
                let (state, mine, docs) = (state.clone(), mine.clone(), docs.clone());
                srt.block_on(run(clients, comp_dur, budget, move |c, i| {
                    let (state, p, d) = (state.clone(), mine[c][(c + i) % mine[c].len()], docs[c]);
                    async move {
                        let access = RecordAccessed {
                            patient_id: p,
                            resources: BTreeSet::from([
                                ResourceKind::ClinicalEntries,
                                ResourceKind::Demographics,
                            ]),
                            action: AccessAction::View,
                            purpose: PurposeOfUse::Treatment,
                            break_glass_reason: None,
                            client_addr: Some("127.0.0.1".into()),
                            user_agent: Some("graphql-bench/1".into()),
                            session_id: Some(Uuid::now_v7()),
                            case_ref: None,
                        };
                        let actor = Actor { user_id: d, role: Role::Physician.role_name() };
                        state.records.record_access(actor, Uuid::now_v7(), access).await.is_ok()
                    }
                }))
            }),
            ("whole request without HTTP (auth+exec+flush)", {
                let (state, mine, tokens, schema) =
                    (state.clone(), mine.clone(), tokens.clone(), schema.clone());
                srt.block_on(run(clients, comp_dur, budget, move |c, i| {
                    let (state, schema) = (state.clone(), schema.clone());
                    let (p, token) = (mine[c][(c + i) % mine[c].len()], tokens[c].clone());
                    async move {
                        let ctx = Arc::new(RequestCtx::new(
                            state.auth.authenticate(&token).await,
                            ClientInfo {
                                addr: Some("127.0.0.1".into()),
                                user_agent: Some("graphql-bench/1".into()),
                            },
                            None,
                        ));
                        let req = async_graphql::Request::new(Q_CHART)
                            .variables(async_graphql::Variables::from_json(json!({"p": p})))
                            .data(ctx.clone());
                        let resp = async_graphql::Executor::execute(&schema, req).await;
                        let flushed = ctx.collector.flush(&state, &ctx).await;
                        let body = serde_json::to_vec(&resp).unwrap();
                        resp.errors.is_empty() && matches!(flushed, Ok(1)) && !body.is_empty()
                    }
                }))
            }),
        ];
        for (name, mut s) in pieces {
            println!(
                "{:<9} {:<44} {:>10.0} {:>9.2} {:>9.2} {:>7}",
                clients,
                name,
                s.rate(),
                s.pct(0.5),
                s.pct(0.99),
                s.errors
            );
        }
    }

    // ---------------------------------------------------------------- statements per request
    println!();
    let n = 50usize;
    println!(
        "SQL statements per request ({n} sequential requests; counted from sqlx's statement events, \
         including the background work they cause until the projections have caught up)"
    );
    let settle = || {
        let head = state.store.head().size;
        srt.block_on(state.projections.wait_for(head - 1, Duration::from_secs(60))).unwrap();
    };
    let count = |label: &str, work: &dyn Fn() -> Stats| {
        settle();
        std::thread::sleep(Duration::from_millis(1500)); // past the checkpoint interval
        STATEMENTS.store(0, Ordering::Relaxed);
        COUNTING.store(true, Ordering::Relaxed);
        let s = work();
        let during = STATEMENTS.load(Ordering::Relaxed);
        settle();
        let total = STATEMENTS.load(Ordering::Relaxed);
        COUNTING.store(false, Ordering::Relaxed);
        println!(
            "  {label:<46} {:>6.1} during the request, {:>6.1} with background work ({} ok, {} errors)",
            during as f64 / s.n.max(1) as f64,
            total as f64 / s.n.max(1) as f64,
            s.n,
            s.errors
        );
    };
    for kind in [TYPENAME, IDLE, CHART] {
        count(&format!("HTTP {}", kind.0), &|| http_phase(kind, 1, Duration::from_secs(60), n as i64));
    }
    count("in-process authenticate", &|| {
        let (state, tokens) = (state.clone(), tokens.clone());
        srt.block_on(run(1, Duration::from_secs(60), n as i64, move |c, _| {
            let (state, token) = (state.clone(), tokens[c].clone());
            async move { state.auth.authenticate(&token).await.is_ok() }
        }))
    });
    count("in-process ReadModels::current_chart", &|| {
        let (state, mine) = (state.clone(), mine.clone());
        srt.block_on(run(1, Duration::from_secs(60), n as i64, move |c, i| {
            let (state, p) = (state.clone(), mine[c][i % mine[c].len()]);
            async move { matches!(state.read.current_chart(p).await, Ok(Some(_))) }
        }))
    });

    srt.block_on(async {
        srv.state.projections.shutdown().await;
        drop(state);
        drop(srv.state);
        srv.db.drop_db().await.ok();
    });
}
