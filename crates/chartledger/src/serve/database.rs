//! The database of `serve`: the one `DATABASE_URL` names, used as given, or the embedded
//! cluster in `<data_dir>/postgres` ([`pgcluster::Embedded`]), where the server connects with
//! the least privilege that serves requests.
//!
//! **Roles of the embedded cluster.** Every login has a SCRAM-SHA-256 password generated into
//! `<data_dir>/postgres/pgcluster.<role>.password` (mode 0600); `pg_hba.conf` has no `trust`
//! entry (see `pgcluster`).
//!
//! | login role | member of | used for |
//! |---|---|---|
//! | `postgres` | (superuser) | at start only: the database, the roles, upgrades |
//! | `chartledger_owner` | | owns the database and what the migrations make; runs them |
//! | `chartledger_server` | `chartledger_app` | every request, the ledger's writer |
//! | `chartledger_projection_runner` | `chartledger_projector` | the projection runner |
//!
//! - The server's connections (`chartledger_server`) can read and append the ledger, read the
//!   read models (the `rm.*` views, granted by the runner at each switch) and write the
//!   authentication tables, nothing more: it owns nothing, so it cannot disable a trigger, and
//!   it has no `UPDATE`, `DELETE` or `TRUNCATE` on the ledger and no write access to any read
//!   model, nor `USAGE` on the generation schemas behind the views.
//! - The projection runner has a pool of its own ([`PROJECTOR_CONNECTIONS`]) whose sessions
//!   act as `chartledger_projector` (`-c role=...` at connect), so everything it creates (a
//!   generation's schema, tables and views) belongs to that group role. Point-in-time replays
//!   store their chart snapshots through it too ([`projections::Projections::chart_as_of`]).
//! - The owner gets `CREATEROLE` only while the migrations run (they create the group roles if
//!   missing), and loses it right after, whatever their outcome.
//!
//! **Upgrade.** A cluster made by an earlier version had the server connect as `postgres` with
//! trust authentication, and everything in the database belonged to `postgres`. `pgcluster`
//! makes it password-only; [`PREPARE`] then hands the database to `chartledger_owner` and
//! what the bootstrap superuser owns in its schemas to the owner (`public`, `rm`) or to
//! `chartledger_projector` (the generations `rm_*` and the `rm.*` views), and [`FINISH`] grants
//! the views to `chartledger_app`. Data is never copied or rewritten; both scripts are
//! idempotent and run at every start.
//!
//! With `DATABASE_URL` nothing here happens: the URL's role runs the migrations (unless
//! `run_migrations` is off) and everything else, as before (`deploy/README.md`).

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use pgcluster::{Embedded, EmbeddedOptions};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection};
use store::EventStore;

/// The embedded cluster's database.
pub const DATABASE: &str = "chartledger";
/// Owns the database and runs the migrations.
pub const OWNER: &str = "chartledger_owner";
/// The server's login (member of `chartledger_app`).
pub const SERVER: &str = "chartledger_server";
/// The projection runner's login (member of `chartledger_projector`).
pub const RUNNER: &str = "chartledger_projection_runner";
/// The projection runner's pool size in embedded mode.
pub const PROJECTOR_CONNECTIONS: u32 = 8;

/// As the superuser, in the database, before the migrations.
const PREPARE: &str = r#"
DO $$ BEGIN CREATE ROLE chartledger_app NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
DO $$ BEGIN CREATE ROLE chartledger_readonly NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
DO $$ BEGIN CREATE ROLE chartledger_projector NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
DO $$ BEGIN
    EXECUTE format('ALTER DATABASE %I OWNER TO chartledger_owner', current_database());
END $$;
-- What an earlier version made as the bootstrap superuser: to the owner, or to the projector.
DO $$
DECLARE
    r record;
    boot oid := (SELECT oid FROM pg_roles WHERE rolname = 'postgres');
BEGIN
    FOR r IN SELECT nspname FROM pg_namespace
             WHERE nspowner = boot AND (nspname = 'rm' OR nspname LIKE 'rm\_%') LOOP
        EXECUTE format('ALTER SCHEMA %I OWNER TO %I', r.nspname,
                       CASE WHEN r.nspname = 'rm' THEN 'chartledger_owner' ELSE 'chartledger_projector' END);
    END LOOP;
    FOR r IN SELECT n.nspname, c.relname, c.relkind FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relowner = boot AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
               AND (n.nspname IN ('public', 'rm') OR n.nspname LIKE 'rm\_%')
               -- sequences owned by a column follow their table
               AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                               AND d.objid = c.oid AND c.relkind = 'S' AND d.deptype IN ('a', 'i')) LOOP
        EXECUTE format('ALTER %s %I.%I OWNER TO %I',
                       CASE r.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                                      WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END,
                       r.nspname, r.relname,
                       CASE WHEN r.nspname = 'public' THEN 'chartledger_owner' ELSE 'chartledger_projector' END);
    END LOOP;
    FOR r IN SELECT p.oid::regprocedure AS routine, n.nspname FROM pg_proc p
             JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE p.proowner = boot AND (n.nspname IN ('public', 'rm') OR n.nspname LIKE 'rm\_%') LOOP
        EXECUTE format('ALTER ROUTINE %s OWNER TO %I', r.routine,
                       CASE WHEN r.nspname = 'public' THEN 'chartledger_owner' ELSE 'chartledger_projector' END);
    END LOOP;
    FOR r IN SELECT t.oid::regtype AS type, n.nspname FROM pg_type t
             JOIN pg_namespace n ON n.oid = t.typnamespace
             WHERE t.typowner = boot AND t.typtype IN ('e', 'd', 'r', 'm')
               AND (n.nspname IN ('public', 'rm') OR n.nspname LIKE 'rm\_%') LOOP
        EXECUTE format('ALTER TYPE %s OWNER TO %I', r.type,
                       CASE WHEN r.nspname = 'public' THEN 'chartledger_owner' ELSE 'chartledger_projector' END);
    END LOOP;
END $$;
ALTER ROLE chartledger_owner CREATEROLE;
"#;

/// As the superuser, in the database, after the migrations (whatever their outcome).
const FINISH: &str = r#"
ALTER ROLE chartledger_owner NOCREATEROLE;
GRANT chartledger_app TO chartledger_server;
GRANT chartledger_projector TO chartledger_projection_runner;
DO $$ BEGIN
    IF EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'rm') THEN
        GRANT SELECT ON ALL TABLES IN SCHEMA rm TO chartledger_app;
    END IF;
END $$;
"#;

/// Where `serve` connects, and how.
#[derive(Debug)]
pub struct Database {
    /// The server's connections: requests, the ledger's writer.
    pub server: PgConnectOptions,
    /// The projection runner's, when not the server's.
    pub projector: Option<PgConnectOptions>,
    /// Whether opening the store runs the migrations (they already ran when embedded).
    pub run_migrations: bool,
    /// The embedded cluster, stopped when `serve` ends.
    pub embedded: Option<Embedded>,
}

impl Database {
    /// `DATABASE_URL`, used as given.
    pub fn from_url(url: &str, run_migrations: bool) -> anyhow::Result<Database> {
        // The URL may hold a password: never repeated in the error.
        let server = PgConnectOptions::from_str(url)
            .map_err(|_| anyhow::anyhow!("DATABASE_URL is not a valid PostgreSQL URL"))?;
        Ok(Database { server, projector: None, run_migrations, embedded: None })
    }

    /// The embedded cluster in `dir`: started (created, upgraded), its roles in place, the
    /// migrations run as the owner.
    pub async fn embedded(dir: std::path::PathBuf) -> anyhow::Result<Database> {
        let pg = Embedded::start(EmbeddedOptions { data_dir: dir, port: None })
            .await
            .map_err(|e| anyhow::anyhow!("embedded PostgreSQL: {e}"))?;
        // From here on, an error drops `pg`, which stops the cluster.
        let cluster = |e: pgcluster::ClusterError| anyhow::anyhow!("embedded PostgreSQL [{}]: {e}", e.code());
        pg.ensure_database(DATABASE).await.map_err(cluster)?;
        let owner = pg.login_role(OWNER).await.map_err(cluster)?;
        let server = pg.login_role(SERVER).await.map_err(cluster)?;
        let runner = pg.login_role(RUNNER).await.map_err(cluster)?;

        let admin = PgConnectOptions::from_str(&pg.url(DATABASE))
            .context("the embedded cluster's URL")?
            .disable_statement_logging();
        let mut admin = PgConnection::connect_with(&admin).await.context("connecting as the superuser")?;
        sqlx::raw_sql(PREPARE).execute(&mut admin).await.context("preparing the roles")?;
        let migrated = migrate(pg.connect_options(&owner, DATABASE)).await;
        let finished = sqlx::raw_sql(FINISH).execute(&mut admin).await.context("granting the roles");
        let _ = admin.close().await;
        migrated?;
        finished?;
        tracing::info!(port = pg.port(), "embedded PostgreSQL running");

        let projector = pg.connect_options(&runner, DATABASE).options([("role", "chartledger_projector")]);
        Ok(Database {
            server: pg.connect_options(&server, DATABASE),
            projector: Some(projector),
            run_migrations: false,
            embedded: Some(pg),
        })
    }
}

/// The migrations, as the owner, on a connection of their own.
async fn migrate(owner: PgConnectOptions) -> anyhow::Result<()> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(owner)
        .await
        .context("connecting as the owner")?;
    let result = EventStore::migrate(&pool).await.context("running the migrations");
    pool.close().await;
    result
}
