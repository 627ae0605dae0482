//! A fresh, empty, real PostgreSQL database for every test.
//!
//! [`TestDb::new`] creates a uniquely named database (`cl_test_<uuid v7 hex>`) on the first
//! server that works, chosen once per process:
//!
//! 1. `DATABASE_URL` when set (connected to as given; the new database is created on that server),
//! 2. else a server answering on `127.0.0.1:5432` as user `postgres` (trust auth),
//! 3. else a throwaway cluster this process starts once ([`start_throwaway_cluster`], from
//!    `pgcluster`) and shares between all its tests; a watchdog stops it and removes its directory
//!    when the process exits.
//!
//! Only the chosen server's URL (and the cluster) is shared: every [`TestDb`] has its own small
//! pool, created in the runtime of the test that made it, so `#[tokio::test]`s running in
//! parallel never share a pool across runtimes.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let db = testdb::TestDb::new().await?;
//! sqlx::query("CREATE TABLE t (id int)").execute(db.pool()).await?;
//! db.drop_db().await?; // or just let it drop
//! # Ok(()) }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection};
use tokio::sync::OnceCell;

pub use pgcluster::throwaway::{start_throwaway_cluster, Cluster};

/// The server on 127.0.0.1:5432 tried when `DATABASE_URL` is not set.
pub const LOCAL_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Connections per test database: tests run in parallel against one server.
const MAX_CONNECTIONS: u32 = 8;
/// How long the probe of 127.0.0.1:5432 may take.
const LOCAL_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the probe of `DATABASE_URL` may take.
const URL_PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an admin connection (create/drop database) may take.
const ADMIN_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `Drop` waits for the best-effort `DROP DATABASE`.
const DROP_WAIT: Duration = Duration::from_secs(30);

/// The server chosen for this process.
#[derive(Debug)]
enum Server {
    Url(String),
    Cluster(Cluster),
}

impl Server {
    fn admin_url(&self) -> &str {
        match self {
            Server::Url(url) => url,
            Server::Cluster(cluster) => cluster.admin_url(),
        }
    }
}

static SERVER: OnceCell<Server> = OnceCell::const_new();

/// The admin URL of the server every [`TestDb::new`] of this process uses (chosen on first call).
pub async fn server_admin_url() -> anyhow::Result<&'static str> {
    Ok(SERVER.get_or_try_init(choose_server).await?.admin_url())
}

async fn choose_server() -> anyhow::Result<Server> {
    let mut tried = Vec::new();
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => match probe(&url, URL_PROBE_TIMEOUT).await {
            Ok(()) => {
                tracing::info!("testdb: using the server of DATABASE_URL");
                return Ok(Server::Url(url));
            }
            Err(e) => {
                tracing::warn!("testdb: DATABASE_URL is set but unusable ({e:#}); trying 127.0.0.1:5432");
                tried.push(format!("DATABASE_URL: {e:#}"));
            }
        },
        _ => {}
    }
    match probe(LOCAL_ADMIN_URL, LOCAL_PROBE_TIMEOUT).await {
        Ok(()) => {
            tracing::info!("testdb: using the server on 127.0.0.1:5432");
            return Ok(Server::Url(LOCAL_ADMIN_URL.to_owned()));
        }
        Err(e) => {
            tracing::debug!("testdb: no usable server on 127.0.0.1:5432 ({e:#})");
            tried.push(format!("127.0.0.1:5432: {e:#}"));
        }
    }
    match start_throwaway_cluster().await {
        Ok(cluster) => {
            tracing::info!("testdb: using a throwaway cluster at {}", cluster.admin_url());
            Ok(Server::Cluster(cluster))
        }
        Err(e) => {
            tried.push(format!("throwaway cluster: {e:#}"));
            bail!("testdb: no PostgreSQL server available; tried:\n  {}", tried.join("\n  "))
        }
    }
}

/// Connects and checks that the role may create databases.
async fn probe(url: &str, timeout: Duration) -> anyhow::Result<()> {
    let mut conn = admin_connect(url, timeout).await?;
    let may_create = may_create_databases(&mut conn).await?;
    // Best effort: the probe connection is not needed any more.
    let _ = conn.close().await;
    if !may_create {
        bail!("the role may not create databases");
    }
    Ok(())
}

async fn admin_connect(url: &str, timeout: Duration) -> anyhow::Result<PgConnection> {
    let options = PgConnectOptions::from_str(url)
        .with_context(|| format!("invalid PostgreSQL URL {}", redact(url)))?
        .disable_statement_logging();
    tokio::time::timeout(timeout, PgConnection::connect_with(&options))
        .await
        .map_err(|_| anyhow::anyhow!("connecting to {} timed out after {timeout:?}", redact(url)))?
        .with_context(|| format!("connecting to {}", redact(url)))
}

/// A fresh, empty database for one test, with a superuser pool to it.
///
/// Dropped (`DROP DATABASE ... WITH (FORCE)`) by [`TestDb::drop_db`], or best-effort on `Drop`.
#[derive(Debug)]
pub struct TestDb {
    pool: PgPool,
    url: String,
    admin_url: String,
    name: String,
    dropped: bool,
}

impl TestDb {
    /// A fresh, empty database on the server chosen for this process (see the crate docs).
    pub async fn new() -> anyhow::Result<TestDb> {
        let admin_url = server_admin_url().await?;
        Self::new_on(admin_url).await
    }

    /// A fresh, empty database on the server of `admin_url` (any database on it, typically
    /// `postgres`, as a role that may create databases), bypassing the server choice.
    ///
    /// The database is created from `template0`: pristine, and no contention with sessions
    /// connected to `template1` (which would make `CREATE DATABASE` fail).
    pub async fn new_on(admin_url: &str) -> anyhow::Result<TestDb> {
        let name = format!("cl_test_{}", uuid::Uuid::now_v7().simple());
        let url = with_database(admin_url, &name)?;
        let mut admin = admin_connect(admin_url, ADMIN_CONNECT_TIMEOUT).await?;
        let created = execute(&mut admin, format!("CREATE DATABASE \"{name}\" TEMPLATE template0")).await;
        let _ = admin.close().await;
        created.with_context(|| format!("creating database {name}"))?;

        let options =
            PgConnectOptions::from_str(&url).with_context(|| format!("invalid URL {}", redact(&url)))?;
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .min_connections(0)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await;
        let pool = match pool {
            Ok(pool) => pool,
            Err(e) => {
                let _ = drop_database(admin_url, &name).await;
                return Err(anyhow::Error::new(e).context(format!("connecting to new database {name}")));
            }
        };
        tracing::debug!("testdb: created database {name}");
        Ok(TestDb { pool, url, admin_url: admin_url.to_owned(), name, dropped: false })
    }

    /// The superuser pool to the new database (at most 8 connections).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The connection URL of the new database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL of the server's maintenance database: `DATABASE_URL` as given when that server was
    /// chosen, else `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }

    /// The database's name (`cl_test_<32 hex digits>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Closes the pool and drops the database (`WITH (FORCE)`).
    pub async fn drop_db(mut self) -> anyhow::Result<()> {
        self.pool.close().await;
        drop_database(&self.admin_url, &self.name).await?;
        self.dropped = true;
        Ok(())
    }
}

impl Drop for TestDb {
    /// Best effort: drops the database from a separate thread with its own runtime (so this works
    /// inside or outside a tokio runtime), waiting for it at most 30 s.
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let (tx, rx) = mpsc::channel();
        let spawned = std::thread::Builder::new().name("testdb-drop".into()).spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(drop_database(&admin_url, &name)));
            let _ = tx.send(result);
        });
        let outcome = match spawned {
            Ok(_) => rx.recv_timeout(DROP_WAIT).map_err(anyhow::Error::from).and_then(|r| r),
            Err(e) => Err(e.into()),
        };
        if let Err(e) = outcome {
            tracing::warn!("testdb: could not drop database {}: {e:#}", self.name);
        }
    }
}

async fn drop_database(admin_url: &str, name: &str) -> anyhow::Result<()> {
    let mut admin = admin_connect(admin_url, ADMIN_CONNECT_TIMEOUT).await?;
    let dropped = execute(&mut admin, format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).await;
    let _ = admin.close().await;
    dropped.with_context(|| format!("dropping database {name}"))?;
    tracing::debug!("testdb: dropped database {name}");
    Ok(())
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

// The two queries on a `&mut PgConnection` are boxed: unboxed, rustc cannot prove the futures of
// `TestDb::new` and `drop_db` `Send` ("implementation of `Executor` is not general enough").

fn execute(conn: &mut PgConnection, sql: String) -> BoxFuture<'_, Result<(), sqlx::Error>> {
    Box::pin(async move { sqlx::Executor::execute(conn, sql.as_str()).await.map(drop) })
}

fn may_create_databases(conn: &mut PgConnection) -> BoxFuture<'_, Result<bool, sqlx::Error>> {
    Box::pin(async move {
        let may: Option<bool> =
            sqlx::query_scalar("SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user")
                .fetch_optional(conn)
                .await?;
        Ok(may.unwrap_or(false))
    })
}

/// `url` with its database (the URL path) replaced by `database`; query parameters are kept.
fn with_database(url: &str, database: &str) -> anyhow::Result<String> {
    let scheme_end = url.find("://").map(|i| i + 3).with_context(|| format!("not a URL: {}", redact(url)))?;
    let (prefix, rest) = url.split_at(scheme_end);
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, after) = rest.split_at(authority_end);
    let path_end = after.find(['?', '#']).unwrap_or(after.len());
    Ok(format!("{prefix}{authority}/{database}{}", &after[path_end..]))
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return "<unparsable URL>".to_owned();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => match rest[..at].find(':') {
            Some(colon) => format!("{}{}:***{}", &url[..scheme_end], &rest[..colon], &rest[at..]),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_database_replaces_only_the_path() {
        let cases = [
            ("postgres://u:p@h:5432/postgres", "postgres://u:p@h:5432/db"),
            ("postgres://u@h/app?sslmode=disable&x=1", "postgres://u@h/db?sslmode=disable&x=1"),
            ("postgres://h:1", "postgres://h:1/db"),
            ("postgresql://h?application_name=a", "postgresql://h/db?application_name=a"),
            ("postgres:///app?host=/run/postgresql", "postgres:///db?host=/run/postgresql"),
        ];
        for (input, want) in cases {
            assert_eq!(with_database(input, "db").unwrap(), want, "{input}");
        }
        assert!(with_database("nonsense", "db").is_err());
    }

    #[test]
    fn redact_hides_passwords() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
    }
}
