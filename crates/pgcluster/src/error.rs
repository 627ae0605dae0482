//! Cluster errors. Callers match on variants (or [`ClusterError::code`]); messages say what to
//! do about it. They carry paths, ports and the output of the PostgreSQL tools, never data.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// No directory with `initdb`, `pg_ctl` and `postgres` was found.
    #[error(
        "no PostgreSQL server binaries (initdb, pg_ctl, postgres) found in {searched}. Install the \
         PostgreSQL server, e.g. `apt-get install postgresql` (Debian, Ubuntu), `dnf install \
         postgresql-server` (Fedora, RHEL) or `brew install postgresql` (macOS), or set PG_BIN_DIR \
         to the directory holding them, or set DATABASE_URL to use an existing server"
    )]
    BinariesNotFound { searched: String },
    /// Binaries were found, but none of the major version that created the cluster.
    #[error(
        "the cluster in {} was created by PostgreSQL {cluster_version}, but the binaries found are \
         {found}. Install PostgreSQL {cluster_version} (e.g. `apt-get install \
         postgresql-{cluster_version}`) or set PG_BIN_DIR to its binaries, or upgrade the cluster \
         with pg_upgrade",
        data_dir.display()
    )]
    VersionMismatch { data_dir: PathBuf, cluster_version: String, found: String },
    /// This process is root and there is no `postgres` OS user to run the server as.
    #[error(
        "running as root, but PostgreSQL refuses to run as root and there is no OS user `postgres` \
         to run it as ({detail}); create one (e.g. `useradd --system postgres`), run as another \
         user, or set DATABASE_URL to use an existing server"
    )]
    NoPostgresUser { detail: String },
    /// The `postgres` OS user cannot enter or write the directory the cluster goes to.
    #[error(
        "the OS user `postgres` (which runs the server, since this process is root) cannot enter \
         or write {}: give it search permission on every parent directory, or choose a data \
         directory elsewhere (e.g. under /var/lib)",
        dir.display()
    )]
    DataDirInaccessible { dir: PathBuf },
    /// The data directory exists, is not empty and holds no cluster.
    #[error(
        "{} is not empty and holds no PostgreSQL cluster (no PG_VERSION): choose a new or empty \
         directory",
        data_dir.display()
    )]
    NotACluster { data_dir: PathBuf },
    #[error("initdb failed: {output}")]
    InitdbFailed { output: String },
    /// A port given explicitly is taken.
    #[error("port {port} on 127.0.0.1 is already in use: choose another port, or none to get a free one")]
    PortInUse { port: u16 },
    /// `pg_ctl start` failed; `log_tail` is what the server logged during this attempt.
    #[error("starting PostgreSQL in {} on port {port} failed: {output}\nserver log:\n{log_tail}", data_dir.display())]
    StartFailed { data_dir: PathBuf, port: u16, output: String, log_tail: String },
    /// A server already runs on the data directory (by its `postmaster.pid`) but does not answer.
    #[error(
        "a PostgreSQL server (pid {pid}) seems to run on {} but does not answer on 127.0.0.1 \
         ({detail}). If it is PostgreSQL, stop it (`pg_ctl -D {} stop -m fast`, as the user owning \
         the directory) and try again; if process {pid} is something else, remove {}/postmaster.pid",
        data_dir.display(),
        data_dir.display(),
        data_dir.display()
    )]
    AlreadyRunning { data_dir: PathBuf, pid: u32, detail: String },
    #[error("stopping PostgreSQL in {} failed: {output}", data_dir.display())]
    StopFailed { data_dir: PathBuf, output: String },
    /// A helper program (`id`, `pg_ctl status`, ...) failed.
    #[error("{what} failed: {output}")]
    Command { what: String, output: String },
    #[error("invalid database name {name:?}: it must have 1 to 63 bytes and no NUL")]
    InvalidDatabaseName { name: String },
    #[error(
        "invalid role name {name:?}: it must have 1 to 63 of a-z, 0-9 and _, and not start with a digit"
    )]
    InvalidRoleName { name: String },
    /// A password file holds something other than a generated password.
    #[error(
        "{} does not hold a password written by pgcluster (64 hexadecimal digits): restore it, or \
         remove it to have a new password generated and set at the next start",
        file.display()
    )]
    BadPasswordFile { file: PathBuf },
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{context}")]
    Database {
        context: String,
        #[source]
        source: sqlx::Error,
    },
    /// A blocking task panicked or was cancelled.
    #[error("the {0} task did not complete")]
    Task(&'static str),
}

impl ClusterError {
    /// A stable code for logs and callers.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BinariesNotFound { .. } => "pgcluster.binaries_not_found",
            Self::VersionMismatch { .. } => "pgcluster.version_mismatch",
            Self::NoPostgresUser { .. } => "pgcluster.no_postgres_user",
            Self::DataDirInaccessible { .. } => "pgcluster.data_dir_inaccessible",
            Self::NotACluster { .. } => "pgcluster.not_a_cluster",
            Self::InitdbFailed { .. } => "pgcluster.initdb_failed",
            Self::PortInUse { .. } => "pgcluster.port_in_use",
            Self::StartFailed { .. } => "pgcluster.start_failed",
            Self::AlreadyRunning { .. } => "pgcluster.already_running",
            Self::StopFailed { .. } => "pgcluster.stop_failed",
            Self::Command { .. } => "pgcluster.command_failed",
            Self::InvalidDatabaseName { .. } => "pgcluster.invalid_database_name",
            Self::InvalidRoleName { .. } => "pgcluster.invalid_role_name",
            Self::BadPasswordFile { .. } => "pgcluster.bad_password_file",
            Self::Io { .. } => "pgcluster.io",
            Self::Database { .. } => "pgcluster.database",
            Self::Task(_) => "pgcluster.task",
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> ClusterError {
        ClusterError::Io { context: context.into(), source }
    }
}

/// Adds context to `std::io` results.
pub(crate) trait IoContext<T> {
    fn context_io(self, context: impl FnOnce() -> String) -> Result<T, ClusterError>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn context_io(self, context: impl FnOnce() -> String) -> Result<T, ClusterError> {
        self.map_err(|source| ClusterError::io(context(), source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binaries_not_found_says_what_to_install() {
        let e = ClusterError::BinariesNotFound { searched: "PATH".into() };
        assert_eq!(e.code(), "pgcluster.binaries_not_found");
        let text = e.to_string();
        for needle in ["apt-get install postgresql", "PG_BIN_DIR", "DATABASE_URL", "PATH"] {
            assert!(text.contains(needle), "{needle} missing from: {text}");
        }
    }

    #[test]
    fn io_errors_keep_their_source() {
        let e: Result<(), _> = Err::<(), _>(std::io::Error::other("boom")).context_io(|| "reading x".into());
        let e = e.unwrap_err();
        assert_eq!(e.code(), "pgcluster.io");
        assert_eq!(e.to_string(), "reading x");
        assert_eq!(std::error::Error::source(&e).map(ToString::to_string).as_deref(), Some("boom"));
    }
}
