//! Real clusters from the installed binaries: the persistent one keeps its data across a
//! restart, reuses its port, adopts a server left running; typed errors for missing binaries,
//! a taken port and unusable directories; a dead postmaster (killed, a zombie, its pid
//! reused) is replaced on the first start; the throwaway one serves and leaves nothing behind.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsString;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use pgcluster::{BinSearch, Embedded, EmbeddedOptions};
use sqlx::{Connection, PgConnection};
use tempfile::TempDir;

/// A temp dir with mode `mode`, owned by this process's user.
fn tempdir_with_mode(mode: u32) -> TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(mode)).unwrap();
    tmp
}

/// A temp dir the `postgres` OS user can enter.
fn workdir() -> TempDir {
    tempdir_with_mode(0o755)
}

fn options(data_dir: &Path, port: Option<u16>) -> EmbeddedOptions {
    EmbeddedOptions { data_dir: data_dir.to_owned(), port }
}

fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500)).is_ok()
}

fn port_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn running_as_root() -> bool {
    std::fs::metadata(workdir().path()).unwrap().uid() == 0
}

async fn setting(conn: &mut PgConnection, name: &str) -> String {
    sqlx::query_scalar("SELECT current_setting($1)").bind(name).fetch_one(conn).await.unwrap()
}

#[tokio::test]
async fn persistent_cluster_keeps_its_data_across_a_restart() {
    let tmp = workdir();
    let data_dir = tmp.path().join("nested/dirs/pgdata");

    let pg = Embedded::start(options(&data_dir, None)).await.unwrap();
    let port = pg.port();
    assert!(!pg.adopted());
    assert_ne!(port, 5432);
    let password = std::fs::read_to_string(data_dir.join("pgcluster.postgres.password")).unwrap();
    assert_eq!(pg.admin_url(), format!("postgres://postgres:{}@127.0.0.1:{port}/postgres", password.trim()));
    assert!(data_dir.join("PG_VERSION").is_file());
    if running_as_root() {
        assert_ne!(std::fs::metadata(&data_dir).unwrap().uid(), 0, "data dir not handed to postgres");
    }
    pg.ensure_database("cl_app").await.unwrap();
    pg.ensure_database("cl_app").await.unwrap(); // already there: fine

    let mut conn = PgConnection::connect(&pg.url("cl_app")).await.unwrap();
    for (name, want) in [
        ("fsync", "on"),
        ("synchronous_commit", "on"),
        ("full_page_writes", "on"),
        ("listen_addresses", "127.0.0.1"),
        ("unix_socket_directories", ""),
        ("server_encoding", "UTF8"),
    ] {
        assert_eq!(setting(&mut conn, name).await, want, "{name}");
    }
    sqlx::query("CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL)")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("INSERT INTO notes VALUES (1, 'kept')").execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();

    pg.stop().await.unwrap();
    assert!(!port_open(port), "server still listening");
    assert!(!data_dir.join("postmaster.pid").exists());

    let port_was_free = port_free(port);
    let pg = Embedded::start(options(&data_dir, None)).await.unwrap();
    assert!(!pg.adopted());
    if port_was_free {
        assert_eq!(pg.port(), port, "the remembered port was not reused");
    }
    pg.ensure_database("cl_app").await.unwrap();
    let mut conn = PgConnection::connect(&pg.url("cl_app")).await.unwrap();
    let body: String =
        sqlx::query_scalar("SELECT body FROM notes WHERE id = 1").fetch_one(&mut conn).await.unwrap();
    assert_eq!(body, "kept");
    conn.close().await.unwrap();
    let port = pg.port();
    pg.stop().await.unwrap();
    assert!(!port_open(port));
}

#[tokio::test]
async fn a_server_left_running_is_adopted() {
    let tmp = workdir();
    let data_dir = tmp.path().join("pgdata");
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();

    let first = Embedded::start(options(&data_dir, Some(port))).await.unwrap();
    assert_eq!(first.port(), port);
    std::mem::forget(first); // as if this process had crashed: the server keeps running

    let pg = Embedded::start(options(&data_dir, None)).await.unwrap();
    assert!(pg.adopted());
    assert_eq!(pg.port(), port);
    let mut conn = PgConnection::connect(pg.admin_url()).await.unwrap();
    let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&mut conn).await.unwrap();
    assert_eq!(one, 1);
    conn.close().await.unwrap();
    pg.stop().await.unwrap();
    assert!(!port_open(port));
}

#[tokio::test]
async fn missing_binaries_are_a_typed_error() {
    let tmp = workdir();
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let data_dir = tmp.path().join("pgdata");

    // PG_BIN_DIR pointing at an empty directory, PATH without postgres.
    let search = BinSearch {
        pg_bin_dir: Some(empty.clone()),
        path: Some(OsString::from(&empty)),
        versioned_roots: vec![empty.clone()],
    };
    let e = Embedded::start_with(options(&data_dir, None), search.clone()).await.unwrap_err();
    assert_eq!(e.code(), "pgcluster.binaries_not_found");
    let text = e.to_string();
    for needle in ["apt-get install postgresql", "DATABASE_URL", "PG_BIN_DIR"] {
        assert!(text.contains(needle), "{needle} missing from: {text}");
    }
    assert!(!data_dir.exists(), "nothing may be created without binaries");

    // No PG_BIN_DIR: PATH and the versioned roots are searched, in vain.
    let search = BinSearch { pg_bin_dir: None, ..search };
    let e = pgcluster::find_bin_dir(&search).unwrap_err();
    assert_eq!(e.code(), "pgcluster.binaries_not_found");
    assert!(e.to_string().contains("PATH"), "{e}");
}

#[tokio::test]
async fn a_port_in_use_is_refused_before_anything_is_created() {
    let tmp = workdir();
    let data_dir = tmp.path().join("pgdata");
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let e = Embedded::start(options(&data_dir, Some(port))).await.unwrap_err();
    assert_eq!(e.code(), "pgcluster.port_in_use", "{e}");
    assert!(!data_dir.exists());
}

#[tokio::test]
async fn a_non_empty_directory_without_a_cluster_is_refused() {
    let tmp = workdir();
    std::fs::write(tmp.path().join("precious.txt"), "mine").unwrap();
    let e = Embedded::start(options(tmp.path(), None)).await.unwrap_err();
    assert_eq!(e.code(), "pgcluster.not_a_cluster", "{e}");
    assert_eq!(std::fs::read_to_string(tmp.path().join("precious.txt")).unwrap(), "mine");
}

#[tokio::test]
async fn as_root_a_directory_postgres_cannot_reach_is_refused() {
    if !running_as_root() {
        return;
    }
    let tmp = tempdir_with_mode(0o700);
    let e = Embedded::start(options(&tmp.path().join("pgdata"), None)).await.unwrap_err();
    assert_eq!(e.code(), "pgcluster.data_dir_inaccessible", "{e}");
    assert!(e.to_string().contains(&tmp.path().display().to_string()), "{e}");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "staging dir left behind");
}

#[tokio::test]
async fn throwaway_cluster_serves_and_leaves_nothing() {
    let cluster = pgcluster::throwaway::start_throwaway_cluster().await.unwrap();
    let (port, data) = (cluster.port(), cluster.data_dir().to_owned());
    let mut conn = PgConnection::connect(cluster.admin_url()).await.unwrap();
    assert_eq!(setting(&mut conn, "fsync").await, "off");
    conn.close().await.unwrap();
    cluster.stop().await.unwrap();
    assert!(!data.exists());
    assert!(!port_open(port));
}

#[tokio::test]
async fn a_failed_start_reports_the_server_log() {
    let tmp = workdir();
    let data_dir = tmp.path().join("pgdata");
    Embedded::start(options(&data_dir, None)).await.unwrap().stop().await.unwrap();
    let conf = data_dir.join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str("\nshared_buffers = 'lots'\n");
    std::fs::write(&conf, text).unwrap();

    let e = Embedded::start(options(&data_dir, None)).await.unwrap_err();
    assert_eq!(e.code(), "pgcluster.start_failed", "{e}");
    let text = e.to_string();
    assert!(text.contains("server log:") && text.contains("shared_buffers"), "{text}");
}

#[tokio::test]
async fn a_cluster_of_another_version_is_refused() {
    let tmp = workdir();
    std::fs::write(tmp.path().join("PG_VERSION"), "99\n").unwrap();
    let e = Embedded::start(options(tmp.path(), None)).await.unwrap_err();
    assert_eq!(e.code(), "pgcluster.version_mismatch", "{e}");
    assert!(e.to_string().contains("PostgreSQL 99"), "{e}");
}

#[tokio::test]
async fn a_running_server_that_does_not_answer_is_reported() {
    let tmp = workdir();
    let data_dir = tmp.path().join("pgdata");
    let hba = data_dir.join("pg_hba.conf");
    let first = Embedded::start(options(&data_dir, None)).await.unwrap();
    let trusting = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(&hba, "host all all 127.0.0.1/32 reject\n").unwrap();
    let mut conn = PgConnection::connect(first.admin_url()).await.unwrap();
    sqlx::query("SELECT pg_reload_conf()").execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    std::mem::forget(first); // left running, now refusing every connection

    let e = Embedded::start(options(&data_dir, None)).await.unwrap_err();
    assert_eq!(e.code(), "pgcluster.already_running", "{e}");
    assert!(e.to_string().contains("does not answer"), "{e}");

    // Let it answer again (SIGHUP reloads pg_hba.conf), adopt it and stop it.
    std::fs::write(&hba, trusting).unwrap();
    let pid = std::fs::read_to_string(data_dir.join("postmaster.pid")).unwrap();
    let pid = pid.lines().next().unwrap();
    assert!(std::process::Command::new("kill").args(["-HUP", pid]).status().unwrap().success());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pg = Embedded::start(options(&data_dir, None)).await.unwrap();
    assert!(pg.adopted());
    pg.stop().await.unwrap();
}

/// The pid on the first line of the data directory's `postmaster.pid`.
fn postmaster_pid(data_dir: &Path) -> u32 {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).unwrap();
    text.lines().next().unwrap().trim().parse().unwrap()
}

/// SIGKILL `pid`, and wait until it no longer runs (gone, or a zombie nobody reaps).
fn kill_hard(pid: u32) {
    assert!(std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
        let running = state.is_some_and(|s| {
            !matches!(s.rsplit(')').next().unwrap().trim_start().chars().next(), Some('Z' | 'X'))
        });
        if !running {
            return;
        }
        assert!(Instant::now() < deadline, "pid {pid} still runs after SIGKILL");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Puts `pid` on the first line of `postmaster.pid`, as if the dead postmaster's pid now
/// belonged to that process.
fn name_in_pid_file(data_dir: &Path, pid: u32) {
    let file = data_dir.join("postmaster.pid");
    let text = std::fs::read_to_string(&file).unwrap();
    let rest = text.split_once('\n').unwrap().1;
    std::fs::write(&file, format!("{pid}\n{rest}")).unwrap();
}

/// Starts the cluster again after its postmaster died, and checks it started afresh on the
/// first try, quickly, with the row written before.
async fn restart_after_a_dead_postmaster(data_dir: &Path) {
    let started = Instant::now();
    let pg = Embedded::start(options(data_dir, None)).await.unwrap();
    let took = started.elapsed();
    assert!(!pg.adopted(), "a dead postmaster was adopted");
    eprintln!("restart after a dead postmaster: {took:?}");
    assert!(took < Duration::from_secs(10), "the start took {took:?}");
    let mut conn = PgConnection::connect(&pg.url("postgres")).await.unwrap();
    let body: String =
        sqlx::query_scalar("SELECT body FROM notes WHERE id = 1").fetch_one(&mut conn).await.unwrap();
    assert_eq!(body, "kept");
    conn.close().await.unwrap();
    std::mem::forget(pg); // left running for the caller to kill
}

async fn start_with_a_row(data_dir: &Path) {
    let pg = Embedded::start(options(data_dir, None)).await.unwrap();
    let mut conn = PgConnection::connect(&pg.url("postgres")).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL); INSERT INTO notes VALUES (1, 'kept')",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    std::mem::forget(pg);
}

#[tokio::test]
async fn a_killed_postmaster_is_replaced_on_the_first_start() {
    let tmp = workdir();
    let data_dir = tmp.path().join("pgdata");
    start_with_a_row(&data_dir).await;
    kill_hard(postmaster_pid(&data_dir));
    restart_after_a_dead_postmaster(&data_dir).await;
    Embedded::start(options(&data_dir, None)).await.unwrap().stop().await.unwrap();
}

#[tokio::test]
async fn a_postmaster_pid_naming_a_zombie_or_an_unrelated_process_is_cleared() {
    let tmp = workdir();
    let data_dir = tmp.path().join("pgdata");
    start_with_a_row(&data_dir).await;

    // The dead postmaster's pid is a zombie (this process is its parent and does not reap it).
    kill_hard(postmaster_pid(&data_dir));
    let mut zombie = std::process::Command::new("true").spawn().unwrap();
    kill_hard(zombie.id()); // already exited: waits until it is a zombie
    name_in_pid_file(&data_dir, zombie.id());
    restart_after_a_dead_postmaster(&data_dir).await;
    zombie.wait().unwrap();

    // The pid now belongs to a live, unrelated process of the server's OS user (which
    // `kill(pid, 0)` finds alive).
    kill_hard(postmaster_pid(&data_dir));
    let owner = std::fs::metadata(&data_dir).unwrap();
    let mut unrelated = std::process::Command::new("sleep");
    unrelated.arg("120").current_dir("/");
    if running_as_root() {
        use std::os::unix::process::CommandExt;
        unrelated.uid(owner.uid()).gid(owner.gid());
    }
    let mut unrelated = unrelated.spawn().unwrap();
    name_in_pid_file(&data_dir, unrelated.id());
    restart_after_a_dead_postmaster(&data_dir).await;
    assert!(unrelated.try_wait().unwrap().is_none(), "the unrelated process was touched");
    unrelated.kill().unwrap();
    unrelated.wait().unwrap();

    let pg = Embedded::start(options(&data_dir, None)).await.unwrap();
    assert!(pg.adopted(), "the live postmaster is adopted as before");
    pg.stop().await.unwrap();
}

/// The pg_hba.conf of a cluster made by an earlier version.
const TRUSTING_HBA: &str = "host    all       all   127.0.0.1/32  trust\n";

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Connecting to `port` as `user` with `password` (none: without) fails authentication.
async fn refused(port: u16, user: &str, password: Option<&str>) {
    let mut options = sqlx::postgres::PgConnectOptions::new()
        .host("127.0.0.1")
        .port(port)
        .username(user)
        .database("postgres")
        .ssl_mode(sqlx::postgres::PgSslMode::Disable);
    if let Some(password) = password {
        options = options.password(password);
    }
    let e = PgConnection::connect_with(&options).await.err().unwrap_or_else(|| panic!("{user} got in"));
    let text = e.to_string();
    assert!(
        text.contains("password authentication failed")
            || text.contains("password")
            || text.contains("28P01"),
        "{user}: {text}"
    );
}

#[tokio::test]
async fn every_role_needs_its_password_and_a_trusting_cluster_is_upgraded() {
    let tmp = workdir();
    let data_dir = tmp.path().join("pgdata");
    let pg = Embedded::start(options(&data_dir, None)).await.unwrap();
    let port = pg.port();
    let hba = std::fs::read_to_string(data_dir.join("pg_hba.conf")).unwrap();
    assert!(hba.contains("scram-sha-256") && !hba.contains("trust"), "{hba}");
    let superuser_file = data_dir.join("pgcluster.postgres.password");
    assert_eq!(mode(&superuser_file), 0o600);
    refused(port, "postgres", None).await;
    refused(port, "postgres", Some("guess")).await;

    // A role of the caller's: a password of its own, kept, no privileged attribute.
    let app = pg.login_role("cl_app").await.unwrap();
    assert!(format!("{app:?}").find(app.password()).is_none(), "Debug shows the password");
    assert_eq!(mode(&data_dir.join("pgcluster.cl_app.password")), 0o600);
    assert_eq!(pg.login_role("cl_app").await.unwrap().password(), app.password(), "the password is kept");
    let mut conn = PgConnection::connect(&pg.url_as(&app, "postgres")).await.unwrap();
    let (user, superuser, createrole): (String, bool, bool) = sqlx::query_as(
        "SELECT current_user::text, rolsuper, rolcreaterole FROM pg_roles WHERE rolname = current_user",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!((user.as_str(), superuser, createrole), ("cl_app", false, false));
    conn.close().await.unwrap();
    refused(port, "cl_app", None).await;
    let superuser_password = std::fs::read_to_string(&superuser_file).unwrap();
    refused(port, "cl_app", Some(superuser_password.trim())).await; // another role's password
    for bad in ["postgres", "Bad", "a;b", ""] {
        assert_eq!(pg.login_role(bad).await.unwrap_err().code(), "pgcluster.invalid_role_name", "{bad}");
    }
    // Made privileged behind its back: the next call takes it back.
    let mut admin = PgConnection::connect(pg.admin_url()).await.unwrap();
    sqlx::query("ALTER ROLE cl_app SUPERUSER CREATEROLE").execute(&mut admin).await.unwrap();
    pg.login_role("cl_app").await.unwrap();
    let superuser: bool =
        sqlx::query_scalar("SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = 'cl_app'")
            .fetch_one(&mut admin)
            .await
            .unwrap();
    assert!(!superuser);

    // Turn it into a cluster of an earlier version, left running: a superuser without a
    // password, trust authentication, no password files.
    sqlx::raw_sql("CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL); INSERT INTO notes VALUES (1, 'kept'); ALTER ROLE postgres PASSWORD NULL")
        .execute(&mut admin)
        .await
        .unwrap();
    std::fs::write(data_dir.join("pg_hba.conf"), TRUSTING_HBA).unwrap();
    sqlx::query("SELECT pg_reload_conf()").execute(&mut admin).await.unwrap();
    admin.close().await.unwrap();
    std::fs::remove_file(&superuser_file).unwrap();
    std::mem::forget(pg);
    let old = PgConnection::connect(&format!("postgres://postgres@127.0.0.1:{port}/postgres")).await;
    old.unwrap().close().await.unwrap(); // trusting, as before

    let pg = Embedded::start(options(&data_dir, None)).await.unwrap();
    assert!(!pg.adopted(), "a trusting server must be restarted, upgraded");
    let hba = std::fs::read_to_string(data_dir.join("pg_hba.conf")).unwrap();
    assert!(!hba.contains("trust"), "{hba}");
    assert_eq!(mode(&superuser_file), 0o600);
    refused(pg.port(), "postgres", None).await;
    let mut conn = PgConnection::connect(pg.admin_url()).await.unwrap();
    let body: String =
        sqlx::query_scalar("SELECT body FROM notes WHERE id = 1").fetch_one(&mut conn).await.unwrap();
    assert_eq!(body, "kept");
    conn.close().await.unwrap();
    pg.stop().await.unwrap();

    // Stopped with a trusting pg_hba.conf (an earlier version's, or a crash mid-upgrade):
    // secured before the server listens.
    std::fs::write(data_dir.join("pg_hba.conf"), TRUSTING_HBA).unwrap();
    let pg = Embedded::start(options(&data_dir, None)).await.unwrap();
    refused(pg.port(), "postgres", None).await;
    PgConnection::connect(pg.admin_url()).await.unwrap().close().await.unwrap();
    pg.stop().await.unwrap();
}
