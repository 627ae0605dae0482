//! The embedded cluster's roles, end to end: `serve` connects as a role that can neither
//! alter the ledger nor write the read models, every role needs its password, and a cluster
//! made by the earlier version (superuser, trust) is upgraded at the next start with its data.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use sqlx::postgres::{PgConnectOptions, PgSslMode};
use sqlx::{Connection, PgConnection};

use super::{data_dir, get, sign_in, start, Secrets};

const BOOTSTRAP: &str = "a bootstrap password for tests";

/// The password `serve` generated for `role`, from the data folder.
fn password_of(pg_dir: &Path, role: &str) -> String {
    std::fs::read_to_string(pg_dir.join(format!("pgcluster.{role}.password"))).unwrap().trim().to_owned()
}

/// The port of the embedded cluster's last start.
fn port_of(pg_dir: &Path) -> u16 {
    std::fs::read_to_string(pg_dir.join("pgcluster.port")).unwrap().trim().parse().unwrap()
}

fn options(port: u16, user: &str, password: Option<&str>) -> PgConnectOptions {
    let options = PgConnectOptions::new()
        .host("127.0.0.1")
        .port(port)
        .username(user)
        .database("chartledger")
        .ssl_mode(PgSslMode::Disable);
    match password {
        Some(password) => options.password(password),
        None => options,
    }
}

/// `sql` fails on `conn` with SQLSTATE 42501 (insufficient privilege).
async fn denied(conn: &mut PgConnection, sql: &str) {
    match sqlx::raw_sql(sql).execute(&mut *conn).await {
        Ok(_) => panic!("the server's connection could run: {sql}"),
        Err(sqlx::Error::Database(e)) => {
            assert_eq!(e.code().as_deref(), Some("42501"), "{sql}: {e}");
        }
        Err(e) => panic!("{sql}: {e}"),
    }
}

/// The cluster on `port` refuses `user` without its password, and with a wrong one.
async fn refuses_without_the_password(port: u16, user: &str) {
    for password in [None, Some("not the password")] {
        let e = PgConnection::connect_with(&options(port, user, password)).await.err();
        let e = e.unwrap_or_else(|| panic!("{user} got in with {password:?}"));
        assert!(e.to_string().contains("password"), "{user}: {e}");
    }
}

/// What the server's own connection (`chartledger_server`, with the password `serve` uses)
/// may and may not do.
async fn the_server_connection_is_restricted(pg_dir: &Path) {
    let port = port_of(pg_dir);
    let mut conn = PgConnection::connect_with(&options(
        port,
        "chartledger_server",
        Some(&password_of(pg_dir, "chartledger_server")),
    ))
    .await
    .unwrap();
    let (superuser, owns): (bool, i64) = sqlx::query_as(
        "SELECT rolsuper, (SELECT count(*) FROM pg_class WHERE relowner = r.oid) FROM pg_roles r \
         WHERE rolname = current_user",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert!(!superuser && owns == 0, "superuser {superuser}, owns {owns} relations");
    // It reads what it serves.
    let events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM ledger_events").fetch_one(&mut conn).await.unwrap();
    assert!(events > 0);
    sqlx::query("SELECT count(*) FROM rm.users").execute(&mut conn).await.unwrap();

    // The ledger: no trigger to disable, no row to change.
    for sql in [
        "ALTER TABLE ledger_events DISABLE TRIGGER ALL",
        "ALTER TABLE ledger_events DISABLE TRIGGER ledger_events_immutable",
        "ALTER TABLE ledger_payloads DISABLE TRIGGER USER",
        "DROP TRIGGER ledger_events_immutable ON ledger_events",
        "UPDATE ledger_events SET stream_revision = stream_revision",
        "DELETE FROM ledger_events WHERE position = 0",
        "UPDATE ledger_payloads SET payload = payload",
        "DELETE FROM ledger_payloads",
        "DELETE FROM ledger_checkpoints",
        "TRUNCATE ledger_events",
        "CREATE OR REPLACE FUNCTION ledger_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$",
    ] {
        denied(&mut conn, sql).await;
    }
    // The read models: not through the views, not behind them, not their bookkeeping.
    let views: Vec<String> =
        sqlx::query_scalar("SELECT viewname::text FROM pg_views WHERE schemaname = 'rm' ORDER BY 1")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert!(views.len() >= 9, "{views:?}");
    for view in &views {
        denied(&mut conn, &format!("DELETE FROM rm.{view}")).await;
        denied(&mut conn, &format!("INSERT INTO rm.{view} DEFAULT VALUES")).await;
        denied(&mut conn, &format!("DROP VIEW rm.{view}")).await;
        denied(&mut conn, &format!("CREATE OR REPLACE VIEW rm.{view} AS SELECT 1")).await;
    }
    denied(&mut conn, "UPDATE rm.care_team SET patient_id = patient_id").await;
    let schema: String =
        sqlx::query_scalar("SELECT schema_name FROM projection_generations WHERE status = 'active'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    for table in ["care_team", "entry_versions", "users"] {
        denied(&mut conn, &format!("DELETE FROM {schema}.{table}")).await;
    }
    denied(&mut conn, "UPDATE projection_generations SET position = 0").await;
    denied(&mut conn, "INSERT INTO projection_generations (projection, generation, schema_name, status) VALUES ('records', 99, 'x', 'active')").await;
    denied(&mut conn, "CREATE SCHEMA rm_records_g99").await;
    denied(&mut conn, "CREATE VIEW rm.extra AS SELECT 1").await;
    // Nor can it become anyone else.
    for role in ["postgres", "chartledger_owner", "chartledger_projector", "chartledger_projection_runner"] {
        denied(&mut conn, &format!("SET ROLE {role}")).await;
    }
    denied(&mut conn, "ALTER ROLE chartledger_server SUPERUSER").await;
    denied(&mut conn, "ALTER ROLE chartledger_server CREATEROLE").await;
    // The views belong to the projector, which the runner acts as.
    let owners: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT viewowner::text FROM pg_views WHERE schemaname = 'rm'")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(owners, ["chartledger_projector"]);
    conn.close().await.unwrap();

    for role in ["postgres", "chartledger_server", "chartledger_owner", "chartledger_projection_runner"] {
        refuses_without_the_password(port, role).await;
    }
}

/// Every password file is the server's user's alone, and pg_hba.conf trusts nothing.
fn files_are_private(pg_dir: &Path) {
    let mut files = 0;
    for entry in std::fs::read_dir(pg_dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("pgcluster.") && name.ends_with(".password") {
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{name}");
            files += 1;
        }
    }
    assert_eq!(files, 4, "postgres, owner, server, runner");
    let hba = std::fs::read_to_string(pg_dir.join("pg_hba.conf")).unwrap();
    let live: Vec<&str> =
        hba.lines().filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty()).collect();
    assert_eq!(live.len(), 1, "{hba}");
    assert!(live[0].ends_with("scram-sha-256") && !hba.contains("trust"), "{hba}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_server_connects_without_privilege_or_trust() {
    let dir = data_dir();
    let data = dir.path().join("data");
    let log = dir.path().join("serve.log");
    let env =
        [("CHARTLEDGER_DATA_DIR", data.to_str().unwrap()), ("CHARTLEDGER_BOOTSTRAP_PASSWORD", BOOTSTRAP)];
    let s = start(&[], &env, &log).await;
    let mut secrets = Secrets::new();
    sign_in(&s.url, "admin", BOOTSTRAP, &mut secrets).await;
    let pg_dir = data.join("postgres");
    files_are_private(&pg_dir);
    the_server_connection_is_restricted(&pg_dir).await;
    // Still serving after all that.
    assert_eq!(get(&s.url, "/readyz").await, (200, "ready".to_owned()));
    let status = s.stop().await;
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{status:?}; log:\n{log}");
    assert!(!log.contains("permission denied") && !log.contains("42501"), "{log}");
}

/// uid and gid of the `postgres` OS user, when this process is root (it runs the server).
fn server_user() -> Option<(u32, u32)> {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id").args([flag, "postgres"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    let me = Command::new("id").arg("-u").output().unwrap();
    (String::from_utf8_lossy(&me.stdout).trim() == "0").then(|| (id("-u"), id("-g")))
}

/// A PostgreSQL program from the installed binaries, as the server's user.
fn pg_command(bin: &Path, program: &str, user: Option<(u32, u32)>) -> Command {
    let mut cmd = Command::new(bin.join(program));
    cmd.current_dir("/");
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The cluster the earlier version made in `pg_dir`, running on `port`: initdb with
/// superuser `postgres`, `pg_hba.conf` trusting 127.0.0.1, no Unix socket.
fn earlier_cluster(bin: &Path, pg_dir: &Path, port: u16, user: Option<(u32, u32)>) -> PathBuf {
    std::fs::create_dir_all(pg_dir).unwrap();
    std::fs::set_permissions(pg_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(pg_dir, Some(uid), Some(gid)).unwrap();
    }
    run(pg_command(bin, "initdb", user).arg("-D").arg(pg_dir).args([
        "-U",
        "postgres",
        "-A",
        "trust",
        "-E",
        "UTF8",
        "--locale=C",
        "--no-sync",
    ]));
    std::fs::write(pg_dir.join("pg_hba.conf"), "host    all       all   127.0.0.1/32  trust\n").unwrap();
    std::fs::write(pg_dir.join("pgcluster.port"), format!("{port}\n")).unwrap();
    let log = pg_dir.join("pgcluster.log");
    let options = format!("-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''");
    run(pg_command(bin, "pg_ctl", user)
        .arg("-D")
        .arg(pg_dir)
        .arg("-l")
        .arg(&log)
        .args(["-w", "-o", &options, "start"]));
    log
}

/// SQL undoing, in a database migrated by this version, what the earlier one did not have:
/// its last migration (the projector role) and the views' grant to the application.
const AS_BEFORE: &str = r#"
REVOKE SELECT ON ALL TABLES IN SCHEMA rm FROM chartledger_app;
GRANT SELECT, INSERT, UPDATE ON projection_generations TO chartledger_app;
GRANT CREATE ON SCHEMA rm TO chartledger_app;
GRANT CREATE ON DATABASE chartledger TO chartledger_app;
DROP OWNED BY chartledger_projector;
DROP ROLE chartledger_projector;
DELETE FROM _sqlx_migrations WHERE description = 'projector';
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_cluster_of_the_earlier_version_is_upgraded_with_its_data() {
    let dir = data_dir();
    let data = dir.path().join("data");
    let pg_dir = data.join("postgres");
    let log = dir.path().join("serve.log");
    let bin = pgcluster::find_bin_dir(&pgcluster::BinSearch::from_env()).unwrap();
    let user = server_user();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    earlier_cluster(&bin, &pg_dir, port, user);

    // What the earlier version's `serve` did: everything as the superuser, over trust.
    let superuser = options(port, "postgres", None).database("postgres");
    let mut conn = PgConnection::connect_with(&superuser).await.unwrap();
    sqlx::query("CREATE DATABASE chartledger TEMPLATE template0").execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    let url = format!("postgres://postgres@127.0.0.1:{port}/chartledger");
    let env = [
        ("CHARTLEDGER_DATA_DIR", data.to_str().unwrap()),
        ("CHARTLEDGER_BOOTSTRAP_PASSWORD", BOOTSTRAP),
        ("DATABASE_URL", url.as_str()),
    ];
    let s = start(&[], &env, &log).await;
    let mut secrets = Secrets::new();
    sign_in(&s.url, "admin", BOOTSTRAP, &mut secrets).await;
    assert!(s.stop().await.success());
    let mut conn = PgConnection::connect_with(&options(port, "postgres", None)).await.unwrap();
    sqlx::raw_sql(AS_BEFORE).execute(&mut conn).await.unwrap();
    let events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM ledger_events").fetch_one(&mut conn).await.unwrap();
    let owner: String =
        sqlx::query_scalar("SELECT viewowner::text FROM pg_views WHERE schemaname = 'rm' LIMIT 1")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(owner, "postgres");
    conn.close().await.unwrap();
    run(pg_command(&bin, "pg_ctl", user).arg("-D").arg(&pg_dir).args(["-w", "-m", "fast", "stop"]));

    // This version's `serve` on that folder: upgraded on the first start, data kept.
    let env = [("CHARTLEDGER_DATA_DIR", data.to_str().unwrap())];
    let s = start(&[], &env, &log).await;
    assert!(!s.printed("bootstrap administrator created"), "{:?}", s.stdout);
    let (token, _) = sign_in(&s.url, "admin", BOOTSTRAP, &mut secrets).await;
    assert!(!token.is_empty());
    files_are_private(&pg_dir);
    the_server_connection_is_restricted(&pg_dir).await;
    let mut conn = PgConnection::connect_with(&options(
        port_of(&pg_dir),
        "postgres",
        Some(&password_of(&pg_dir, "postgres")),
    ))
    .await
    .unwrap();
    let after: i64 =
        sqlx::query_scalar("SELECT count(*) FROM ledger_events").fetch_one(&mut conn).await.unwrap();
    assert!(after > events, "{after} events after, {events} before (the sign-in appends)");
    let owned_by_postgres: Vec<String> = sqlx::query_scalar(
        "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relowner = 'postgres'::regrole AND (n.nspname IN ('public', 'rm') OR n.nspname LIKE 'rm\\_%')",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert!(owned_by_postgres.is_empty(), "{owned_by_postgres:?}");
    conn.close().await.unwrap();
    assert_eq!(get(&s.url, "/readyz").await, (200, "ready".to_owned()));
    assert!(s.stop().await.success());
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(!log.contains("permission denied") && !log.contains("42501"), "{log}");
}
