//! The harness itself: distinct databases, dropping, and the throwaway cluster.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpStream;
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};
use testdb::{start_throwaway_cluster, TestDb};

async fn database_exists(admin_url: &str, name: &str) -> bool {
    let mut conn = PgConnection::connect(admin_url).await.unwrap();
    let exists = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    exists
}

async fn has_table(db: &TestDb, table: &str) -> bool {
    sqlx::query_scalar::<_, bool>("SELECT to_regclass($1) IS NOT NULL")
        .bind(table)
        .fetch_one(db.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn two_test_dbs_are_distinct_databases() {
    let a = TestDb::new().await.unwrap();
    let b = TestDb::new().await.unwrap();
    assert_ne!(a.name(), b.name());
    assert_ne!(a.url(), b.url());
    assert!(a.name().starts_with("cl_test_"));
    assert_eq!(a.admin_url(), b.admin_url());

    let current: String = sqlx::query_scalar("SELECT current_database()").fetch_one(a.pool()).await.unwrap();
    assert_eq!(current, a.name());
    let mut via_url = PgConnection::connect(b.url()).await.unwrap();
    let current: String =
        sqlx::query_scalar("SELECT current_database()").fetch_one(&mut via_url).await.unwrap();
    assert_eq!(current, b.name());
    via_url.close().await.unwrap();

    let superuser: bool = sqlx::query_scalar("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        .fetch_one(a.pool())
        .await
        .unwrap();
    assert!(superuser);

    sqlx::query("CREATE TABLE only_in_a (id bigint PRIMARY KEY, note text)").execute(a.pool()).await.unwrap();
    sqlx::query("INSERT INTO only_in_a VALUES (1, 'x')").execute(a.pool()).await.unwrap();
    assert!(has_table(&a, "only_in_a").await);
    assert!(!has_table(&b, "only_in_a").await);
    assert!(!has_table(&b, "public.only_in_a").await);
    b.drop_db().await.unwrap();
    a.drop_db().await.unwrap();
}

#[tokio::test]
async fn drop_db_removes_the_database_even_with_open_connections() {
    let db = TestDb::new().await.unwrap();
    let (admin, name) = (db.admin_url().to_owned(), db.name().to_owned());
    assert!(database_exists(&admin, &name).await);
    // An extra connection that is not part of the pool: FORCE must terminate it.
    let mut other = PgConnection::connect(db.url()).await.unwrap();
    sqlx::query("SELECT 1").execute(&mut other).await.unwrap();
    db.drop_db().await.unwrap();
    assert!(!database_exists(&admin, &name).await);
    drop(other);
}

#[tokio::test]
async fn drop_without_drop_db_removes_the_database() {
    let db = TestDb::new().await.unwrap();
    let (admin, name) = (db.admin_url().to_owned(), db.name().to_owned());
    sqlx::query("CREATE TABLE t (id int)").execute(db.pool()).await.unwrap();
    drop(db); // waits for the best-effort drop
    assert!(!database_exists(&admin, &name).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_databases_in_parallel() {
    let dbs = futures_join_all((0..6).map(|_| TestDb::new())).await;
    let mut names: Vec<String> = dbs.iter().map(|db| db.name().to_owned()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 6);
    for db in dbs {
        db.drop_db().await.unwrap();
    }
}

async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<TestDb>
where
    F: std::future::Future<Output = anyhow::Result<TestDb>> + Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap().unwrap());
    }
    out
}

fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500)).is_ok()
}

#[tokio::test]
async fn throwaway_cluster_starts_serves_and_stops() {
    let cluster = start_throwaway_cluster().await.unwrap();
    let (port, data) = (cluster.port(), cluster.data_dir().to_owned());
    assert!(cluster.admin_url().ends_with(&format!(":{port}/postgres")));
    assert!(data.join("PG_VERSION").is_file());

    let db = TestDb::new_on(cluster.admin_url()).await.unwrap();
    assert!(db.url().contains(&format!(":{port}/cl_test_")));
    let (version, user): (String, String) =
        sqlx::query_as("SELECT version(), current_user::text").fetch_one(db.pool()).await.unwrap();
    assert!(version.starts_with("PostgreSQL"), "{version}");
    assert_eq!(user, "postgres");
    sqlx::query("CREATE TABLE t (id int)").execute(db.pool()).await.unwrap();
    sqlx::query("INSERT INTO t SELECT generate_series(1, 100)").execute(db.pool()).await.unwrap();
    let sum: i64 = sqlx::query_scalar("SELECT sum(id) FROM t").fetch_one(db.pool()).await.unwrap();
    assert_eq!(sum, 5050);
    let (admin, name) = (db.admin_url().to_owned(), db.name().to_owned());
    db.drop_db().await.unwrap();
    assert!(!database_exists(&admin, &name).await);

    cluster.stop().await.unwrap();
    assert!(!data.exists(), "data dir left behind");
    assert!(!port_open(port), "server still listening");
}

/// Runs only as the child of `watchdog_stops_a_leaked_cluster`: starts a cluster, leaks it and
/// exits, leaving the cleanup to the watchdog.
#[tokio::test]
async fn watchdog_child() {
    if std::env::var_os("TESTDB_WATCHDOG_CHILD").is_none() {
        return;
    }
    let cluster = start_throwaway_cluster().await.unwrap();
    println!("CLUSTER {} {}", cluster.port(), cluster.data_dir().display());
    std::mem::forget(cluster);
}

#[test]
fn watchdog_stops_a_leaked_cluster() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "watchdog_child", "--nocapture", "--test-threads=1"])
        .env("TESTDB_WATCHDOG_CHILD", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("CLUSTER ").map(|(_, rest)| rest))
        .expect("child printed no cluster");
    let (port, data) = line.split_once(' ').unwrap();
    let port: u16 = port.parse().unwrap();
    let data = std::path::PathBuf::from(data);

    let deadline = Instant::now() + Duration::from_secs(60);
    while (data.exists() || port_open(port)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(!port_open(port), "leaked cluster still listening on {port}");
    assert!(!data.exists(), "leaked cluster dir {} left behind", data.display());
}

#[tokio::test]
async fn server_choice_is_made_once() {
    let first = testdb::server_admin_url().await.unwrap();
    let db = TestDb::new().await.unwrap();
    assert_eq!(db.admin_url(), first);
    assert!(std::ptr::eq(first, testdb::server_admin_url().await.unwrap()));
    println!("SERVER {first}");
    db.drop_db().await.unwrap();
}
