//! Runs a PostgreSQL cluster from the PostgreSQL server binaries installed on the machine.
//!
//! - [`Embedded`]: a **persistent** cluster in a data directory of the caller's choosing, with
//!   durable settings, for `chartledger serve` without `DATABASE_URL`. Created on first start,
//!   restarted on the same port when it is free, adopted when a crashed process left it running,
//!   started afresh when its postmaster died (a stale `postmaster.pid`). Every role, the
//!   superuser `postgres` included, logs in with a SCRAM-SHA-256 password generated into the
//!   data directory (mode 0600); `pg_hba.conf` has no `trust` entry, and a cluster of an earlier
//!   version that had one is upgraded at its next start ([`Embedded::login_role`] gives the
//!   caller roles that are not superusers).
//! - [`throwaway::start_throwaway_cluster`]: a **throwaway** cluster for tests, in a temp dir,
//!   with fast unsafe settings, removed when stopped or when the test process dies. It keeps
//!   superuser `postgres` with trust authentication (tests only, never data worth protecting).
//!
//! Both listen on 127.0.0.1 only (no Unix socket). `initdb` and `postgres` refuse to run as
//! root, so when this process is root they run as the `postgres` OS user, and the directories
//! and files they use are handed to it.
//! Binaries are found as [`BinSearch`] says: `PG_BIN_DIR` if set, else `PATH`, else the newest
//! `/usr/lib/postgresql/<version>/bin`; none is [`ClusterError::BinariesNotFound`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), pgcluster::ClusterError> {
//! use pgcluster::{Embedded, EmbeddedOptions};
//! let pg = Embedded::start(EmbeddedOptions { data_dir: "/var/lib/chartledger/pg".into(), port: None }).await?;
//! pg.ensure_database("chartledger").await?;
//! let app = pg.login_role("app").await?; // not a superuser; its password is kept in data_dir
//! let url = pg.url_as(&app, "chartledger"); // a secret: it holds the password
//! // ... serve, until Ctrl-C ...
//! pg.stop().await?;
//! # Ok(()) }
//! ```

mod auth;
mod bin_dir;
mod datadir;
mod embedded;
mod error;
mod pidfile;
mod sql;
pub mod throwaway;
mod tools;
mod user;

pub use bin_dir::{find_bin_dir, BinSearch};
pub use embedded::{Embedded, EmbeddedOptions, LoginRole};
pub use error::ClusterError;

/// Runs blocking work (processes, files) off the async runtime.
async fn blocking<T: Send + 'static>(
    what: &'static str,
    work: impl FnOnce() -> Result<T, ClusterError> + Send + 'static,
) -> Result<T, ClusterError> {
    tokio::task::spawn_blocking(work).await.map_err(|_| ClusterError::Task(what))?
}
