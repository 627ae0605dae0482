//! The persistent cluster of `chartledger serve` without `DATABASE_URL`.
//!
//! [`Embedded::start`] creates the cluster on first use (`initdb`: superuser `postgres`, UTF8, C
//! locale), makes it password-only ([`crate::auth`]: SCRAM-SHA-256 over TCP from 127.0.0.1
//! only, no Unix socket, no `trust`), then starts it with durable settings on the given port,
//! else the port of its last start if free, else a free one. A cluster made by an earlier
//! version (trusting 127.0.0.1) is upgraded the same way at its next start, data kept.
//!
//! A server already running on the data directory (left by a process that crashed) is adopted
//! if it answers; one still trusting is stopped and started again, upgraded. A
//! `postmaster.pid` whose postmaster is dead (gone, a zombie, its pid reused) is cleared
//! ([`crate::pidfile`]) and the cluster started afresh, on the first try. The server runs in
//! its own session, so a Ctrl-C to the terminal does not reach it: [`Embedded::stop`] (or
//! `Drop`) stops it.
//!
//! [`Embedded::login_role`] gives the caller roles of its own (not superusers), each with a
//! generated password kept in the data directory.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};

use crate::auth::{self, SUPERUSER};
use crate::bin_dir::{find_bin_dir, find_bin_dir_for, BinSearch};
use crate::datadir::{cluster_version, init_cluster, remember_port, remembered_port, server_log};
use crate::error::ClusterError;
use crate::pidfile::{clear_stale, holder, Holder};
use crate::tools::{free_port, port_is_free, postmaster_port, PgTools};
use crate::{blocking, sql};

/// Settings given on the server's command line at every start, over any configuration file.
const DURABLE_SETTINGS: &[(&str, &str)] = &[
    ("listen_addresses", "127.0.0.1"),
    ("unix_socket_directories", ""),
    ("password_encryption", "scram-sha-256"),
    ("fsync", "on"),
    ("synchronous_commit", "on"),
    ("full_page_writes", "on"),
];
/// How long `pg_ctl start` waits: crash recovery after an unclean stop can take a while.
const START_TIMEOUT_SECS: u32 = 300;
/// How long a server found running may take to answer.
const ADOPT_WAIT: Duration = Duration::from_secs(15);
/// How long a server found running may say it is starting up (recovering after a crash).
const START_WAIT: Duration = Duration::from_secs(START_TIMEOUT_SECS as u64);
/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Where and how to run the persistent cluster.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// The cluster's data directory; created with its parents (and the cluster) if absent.
    pub data_dir: PathBuf,
    /// The port on 127.0.0.1; `None`: the port of the last start if free, else a free one.
    pub port: Option<u16>,
}

/// A running persistent cluster; stopped by [`Embedded::stop`], or (best effort) on `Drop`.
#[derive(Debug)]
pub struct Embedded {
    tools: PgTools,
    data_dir: PathBuf,
    port: u16,
    /// The superuser's password (secret).
    password: String,
    admin_url: String,
    adopted: bool,
    stopped: bool,
}

/// A login role of the cluster and its password ([`Embedded::login_role`]). `Debug` does not
/// show the password.
#[derive(Clone)]
pub struct LoginRole {
    name: String,
    password: String,
}

impl LoginRole {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The password (secret: never log it).
    pub fn password(&self) -> &str {
        &self.password
    }
}

impl std::fmt::Debug for LoginRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRole").field("name", &self.name).finish_non_exhaustive()
    }
}

/// The outcome of the blocking first half of a start.
#[derive(Debug)]
struct Prepared {
    tools: PgTools,
    data_dir: PathBuf,
    port: Option<u16>,
    /// The pid of a server already running on the data directory.
    running: Option<u32>,
}

impl Embedded {
    /// Creates the cluster if needed and starts it (or adopts the one running); binaries from
    /// [`BinSearch::from_env`].
    pub async fn start(opts: EmbeddedOptions) -> Result<Embedded, ClusterError> {
        Self::start_with(opts, BinSearch::from_env()).await
    }

    /// [`Embedded::start`] with the binaries searched as `search` says.
    pub async fn start_with(opts: EmbeddedOptions, search: BinSearch) -> Result<Embedded, ClusterError> {
        let prepared = blocking("cluster start", move || prepare(opts, &search)).await?;
        match prepared.running {
            Some(pid) => adopt(prepared, pid).await,
            None => blocking("cluster start", move || launch(prepared)).await,
        }
    }

    /// `postgres://postgres:<password>@127.0.0.1:<port>/<dbname>`: the superuser's URL, with
    /// its password (secret: never log it).
    pub fn url(&self, dbname: &str) -> String {
        url(SUPERUSER, &self.password, self.port, dbname)
    }

    /// The superuser's URL of the `postgres` maintenance database (secret, like [`Self::url`]).
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }

    /// The URL of database `dbname` as `role` (secret: it holds the password).
    pub fn url_as(&self, role: &LoginRole, dbname: &str) -> String {
        url(&role.name, &role.password, self.port, dbname)
    }

    /// Connection options for database `dbname` as `role`.
    pub fn connect_options(&self, role: &LoginRole, dbname: &str) -> PgConnectOptions {
        options(&role.name, &role.password, self.port, dbname)
    }

    /// Creates login role `name` (`[a-z_][a-z0-9_]*`) unless it exists, with the password of
    /// `<data_dir>/pgcluster.<name>.password` (generated on first use, mode 0600); an existing
    /// role gets that password again and loses any of `SUPERUSER`, `CREATEDB`, `CREATEROLE`,
    /// `REPLICATION` and `BYPASSRLS`. Memberships and grants are the caller's.
    pub async fn login_role(&self, name: &str) -> Result<LoginRole, ClusterError> {
        auth::validate_role(name)?;
        if name == SUPERUSER {
            return Err(ClusterError::InvalidRoleName { name: name.to_owned() });
        }
        let (tools, data_dir, role) = (self.tools.clone(), self.data_dir.clone(), name.to_owned());
        let (password, _) = blocking("password", move || auth::password(&tools, &data_dir, &role)).await?;
        let mut conn =
            connect(&options(SUPERUSER, &self.password, self.port, "postgres"), CONNECT_TIMEOUT).await?;
        let result = sql::ensure_login_role(&mut conn, name, &password).await;
        let _ = conn.close().await;
        result
            .map_err(|source| ClusterError::Database { context: format!("creating role {name}"), source })?;
        Ok(LoginRole { name: name.to_owned(), password })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory (absolute).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Whether the server was already running when [`Embedded::start`] was called (and adopted).
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// Creates database `name` (from `template0`) unless it exists.
    pub async fn ensure_database(&self, name: &str) -> Result<(), ClusterError> {
        sql::validate_database_name(name)?;
        let mut conn =
            connect(&options(SUPERUSER, &self.password, self.port, "postgres"), CONNECT_TIMEOUT).await?;
        let result = sql::create_database_if_missing(&mut conn, name).await;
        let _ = conn.close().await;
        result.map_err(|source| ClusterError::Database {
            context: format!("creating database {name:?}"),
            source,
        })
    }

    /// Stops the server (`pg_ctl stop -m fast`, waiting for it).
    pub async fn stop(mut self) -> Result<(), ClusterError> {
        self.stopped = true;
        let (tools, data_dir) = (self.tools.clone(), self.data_dir.clone());
        blocking("cluster stop", move || tools.stop(&data_dir)).await?;
        tracing::info!("pgcluster: stopped PostgreSQL in {}", self.data_dir.display());
        Ok(())
    }

    fn new(tools: PgTools, data_dir: PathBuf, port: u16, password: String, adopted: bool) -> Embedded {
        let admin_url = url(SUPERUSER, &password, port, "postgres");
        Embedded { tools, data_dir, port, password, admin_url, adopted, stopped: false }
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        match self.tools.stop(&self.data_dir) {
            Ok(()) => tracing::info!("pgcluster: stopped PostgreSQL in {}", self.data_dir.display()),
            Err(e) => tracing::warn!("pgcluster: stopping PostgreSQL on drop: {e}"),
        }
    }
}

/// Finds the binaries, sees whether a server runs, and creates the cluster if there is none.
fn prepare(opts: EmbeddedOptions, search: &BinSearch) -> Result<Prepared, ClusterError> {
    let data_dir = std::path::absolute(&opts.data_dir)
        .map_err(|e| ClusterError::io(format!("resolving {}", opts.data_dir.display()), e))?;
    let version = cluster_version(&data_dir)?;
    let bin = match &version {
        Some(version) => find_bin_dir_for(search, version, &data_dir)?,
        None => find_bin_dir(search)?,
    };
    let tools = PgTools::new(bin)?;
    if version.is_some() {
        match tools.running_pid(&data_dir)? {
            Some(pid) => match holder(pid, &data_dir) {
                Holder::Postmaster if !needs_securing(&data_dir)? => {
                    return Ok(Prepared { tools, data_dir, port: opts.port, running: Some(pid) })
                }
                Holder::Postmaster => {
                    // Left running by an earlier version, trusting: restarted, upgraded.
                    tracing::info!("pgcluster: stopping the server (pid {pid}) to require passwords");
                    tools.stop(&data_dir)?;
                }
                dead => {
                    tracing::warn!(
                        "pgcluster: postmaster.pid names pid {pid}, which is {}: starting afresh",
                        dead.describe()
                    );
                    clear_stale(&tools, &data_dir, dead != Holder::Gone)?;
                }
            },
            // A file left by a postmaster that is gone: the server replaces it itself, once
            // the dead server's processes have let go of its shared memory.
            None => clear_stale(&tools, &data_dir, false)?,
        }
    }
    if let Some(port) = opts.port.filter(|&port| !port_is_free(port)) {
        return Err(ClusterError::PortInUse { port });
    }
    if version.is_none() {
        tracing::info!("pgcluster: creating a PostgreSQL cluster in {}", data_dir.display());
        init_cluster(&tools, &data_dir)?;
    }
    Ok(Prepared { tools, data_dir, port: opts.port, running: None })
}

/// Starts the server of a prepared cluster.
fn launch(prepared: Prepared) -> Result<Embedded, ClusterError> {
    let Prepared { tools, data_dir, port: requested, .. } = prepared;
    let log = server_log(&data_dir);
    let remembered = remembered_port(&data_dir).filter(|&port| port_is_free(port));
    let mut port = match requested.or(remembered) {
        Some(port) => port,
        None => free_port()?,
    };
    let password = auth::secure(&tools, &data_dir)?;
    let mut retries = if requested.is_some() { 0 } else { 2 };
    loop {
        match tools.start(&data_dir, &log, port, DURABLE_SETTINGS, START_TIMEOUT_SECS) {
            Ok(()) => break,
            // A port chosen here was taken meanwhile: try another.
            Err(e)
                if retries > 0 && !port_is_free(port) && matches!(tools.running_pid(&data_dir), Ok(None)) =>
            {
                tracing::debug!("pgcluster: port {port} was taken ({}); trying another", e.code());
                retries -= 1;
                port = free_port()?;
            }
            Err(e) => return Err(e),
        }
    }
    let embedded = Embedded::new(tools, data_dir, port, password, false);
    if let Err(e) = remember_port(&embedded.tools, &embedded.data_dir, port) {
        tracing::warn!("pgcluster: could not remember the port: {e}");
    }
    tracing::info!("pgcluster: started PostgreSQL in {} on 127.0.0.1:{port}", embedded.data_dir.display());
    Ok(embedded)
}

/// Takes over the server found running on the data directory, if it answers.
async fn adopt(prepared: Prepared, pid: u32) -> Result<Embedded, ClusterError> {
    let Prepared { tools, data_dir, port: requested, .. } = prepared;
    let already_running =
        |detail: String| ClusterError::AlreadyRunning { data_dir: data_dir.clone(), pid, detail };
    let Some(port) = postmaster_port(&data_dir) else {
        return Err(already_running("its postmaster.pid names no port".into()));
    };
    if requested.is_some_and(|requested| requested != port) {
        tracing::warn!("pgcluster: the server already running uses port {port}, not the one asked for");
    }
    let Some(password) = auth::read_password(&data_dir, SUPERUSER)? else {
        return Err(already_running("the superuser's password file is gone".into()));
    };
    let options = options(SUPERUSER, &password, port, "postgres");
    let started = Instant::now();
    loop {
        match connect(&options, Duration::from_secs(5)).await {
            Ok(conn) => {
                let _ = conn.close().await;
                break;
            }
            Err(e) => {
                // A server still recovering from a crash answers "starting up": wait longer.
                let wait = if starting_up(&e) { START_WAIT } else { ADOPT_WAIT };
                if started.elapsed() >= wait {
                    return Err(already_running(format!("on port {port}: {e}: {}", error_source(&e))));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    tracing::info!(
        "pgcluster: adopted PostgreSQL (pid {pid}) running in {} on 127.0.0.1:{port}",
        data_dir.display()
    );
    Ok(Embedded::new(tools, data_dir, port, password, true))
}

/// Whether the server refused the connection because it is starting up or recovering
/// (SQLSTATE 57P03, `cannot_connect_now`).
fn starting_up(e: &ClusterError) -> bool {
    matches!(e, ClusterError::Database { source: sqlx::Error::Database(db), .. } if db.code().as_deref() == Some("57P03"))
}

fn error_source(e: &ClusterError) -> String {
    std::error::Error::source(e).map(ToString::to_string).unwrap_or_default()
}

/// Whether the cluster still lets anyone in without a password, or its superuser has no
/// password file: [`auth::secure`] must run, with the server stopped.
fn needs_securing(data_dir: &Path) -> Result<bool, ClusterError> {
    Ok(auth::hba_trusts(data_dir)? || auth::read_password(data_dir, SUPERUSER)?.is_none())
}

/// Connects with `options`; errors name the user, port and database, never the password.
async fn connect(options: &PgConnectOptions, timeout: Duration) -> Result<PgConnection, ClusterError> {
    let context = || {
        format!(
            "connecting to 127.0.0.1:{} as {} (database {:?})",
            options.get_port(),
            options.get_username(),
            options.get_database().unwrap_or_default()
        )
    };
    let options = options.clone().disable_statement_logging();
    match tokio::time::timeout(timeout, PgConnection::connect_with(&options)).await {
        Ok(conn) => conn.map_err(|source| ClusterError::Database { context: context(), source }),
        Err(_) => {
            let timed_out =
                std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no answer in {timeout:?}"));
            Err(ClusterError::Database { context: context(), source: sqlx::Error::Io(timed_out) })
        }
    }
}

/// `postgres://<user>:<password>@127.0.0.1:<port>/<dbname>`, the name percent-encoded (user
/// names and passwords need no encoding: [`auth::validate_role`], hex).
fn url(user: &str, password: &str, port: u16, dbname: &str) -> String {
    format!("postgres://{user}:{password}@127.0.0.1:{port}/{}", sql::percent_encode(dbname))
}

fn options(user: &str, password: &str, port: u16, dbname: &str) -> PgConnectOptions {
    PgConnectOptions::new()
        .host("127.0.0.1")
        .port(port)
        .username(user)
        .password(password)
        .database(dbname)
        .ssl_mode(sqlx::postgres::PgSslMode::Disable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn assert_send<T: Send>(_: &T) {}

    #[test]
    fn futures_are_send() {
        let opts = EmbeddedOptions { data_dir: PathBuf::from("/nonexistent"), port: None };
        assert_send(&Embedded::start(opts));
        let embedded = Embedded::new(
            PgTools::as_this_user(PathBuf::from("/x")),
            PathBuf::from("/d"),
            1,
            "pw".into(),
            false,
        );
        assert_send(&embedded.login_role("x"));
        assert_send(&embedded.ensure_database("x"));
        // Nothing runs there: dropping must not fail.
        drop(embedded);
    }

    #[test]
    fn urls() {
        assert_eq!(
            url("postgres", "ab12", 6000, "postgres"),
            "postgres://postgres:ab12@127.0.0.1:6000/postgres"
        );
        let weird = url("app", "ab12", 6000, "a b/é");
        assert_eq!(weird, "postgres://app:ab12@127.0.0.1:6000/a%20b%2F%C3%A9");
        let options = PgConnectOptions::from_str(&weird).unwrap();
        assert_eq!(options.get_database(), Some("a b/é"));
        assert_eq!(options.get_port(), 6000);
        assert_eq!(options.get_username(), "app");
        let role = LoginRole { name: "app".into(), password: "secret-value".into() };
        assert!(!format!("{role:?}").contains("secret-value"));
    }
}
