//! The persistent cluster's files: creating the cluster (`initdb` into a staging directory that
//! is renamed into place, so an interrupted first start leaves no half-made cluster), the
//! remembered port and the server log's rotation. `pg_hba.conf` and the passwords are
//! [`crate::auth`]'s: they are put in place before every start.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::error::{ClusterError, IoContext};
use crate::tools::{InitSync, PgTools};

/// The file in the data directory remembering the port of the last start.
const PORT_FILE: &str = "pgcluster.port";
/// The server's output (`pg_ctl start -l`), in the data directory.
pub(crate) const LOG_FILE: &str = "pgcluster.log";
/// The log is moved to `pgcluster.log.1` at start once it is this large.
const LOG_ROTATE_BYTES: u64 = 16 << 20;

/// The major version of the cluster in `data_dir` (its `PG_VERSION`), or `None` if there is none.
pub(crate) fn cluster_version(data_dir: &Path) -> Result<Option<String>, ClusterError> {
    match fs::read_to_string(data_dir.join("PG_VERSION")) {
        Ok(version) => Ok(Some(version.trim().to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ClusterError::io(format!("reading {}/PG_VERSION", data_dir.display()), e)),
    }
}

/// Creates a durable cluster in `data_dir`, which must be absent or an empty directory.
pub(crate) fn init_cluster(tools: &PgTools, data_dir: &Path) -> Result<(), ClusterError> {
    match fs::read_dir(data_dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(ClusterError::NotACluster { data_dir: data_dir.to_owned() });
            }
            // An empty directory (maybe a mount point): initdb right into it.
            tools.hand_over(data_dir)?;
            init_into(tools, data_dir, data_dir)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => init_staged(tools, data_dir),
        Err(e) => Err(ClusterError::io(format!("reading {}", data_dir.display()), e)),
    }
}

fn init_staged(tools: &PgTools, data_dir: &Path) -> Result<(), ClusterError> {
    let (Some(parent), Some(name)) = (data_dir.parent(), data_dir.file_name()) else {
        return Err(ClusterError::NotACluster { data_dir: data_dir.to_owned() });
    };
    fs::create_dir_all(parent).context_io(|| format!("creating {}", parent.display()))?;
    let staging = parent.join(format!(".{}.pgcluster-init", name.to_string_lossy()));
    if staging.exists() {
        // Left by an interrupted first start.
        fs::remove_dir_all(&staging).context_io(|| format!("removing {}", staging.display()))?;
    }
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .context_io(|| format!("creating {}", staging.display()))?;
    let result = tools.hand_over(&staging).and_then(|()| init_into(tools, &staging, parent)).and_then(|()| {
        fs::rename(&staging, data_dir)
            .and_then(|()| fs::File::open(parent)?.sync_all())
            .context_io(|| format!("moving the new cluster to {}", data_dir.display()))
    });
    if result.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    result
}

/// initdb into `dir` (absent or empty, owned by the server's user). Its `pg_hba.conf` trusts
/// local connections until [`crate::auth::secure`] replaces it, before the first start.
/// `shown` is the directory an access error names.
fn init_into(tools: &PgTools, dir: &Path, shown: &Path) -> Result<(), ClusterError> {
    if !tools.can_use_dir(dir) {
        return Err(ClusterError::DataDirInaccessible { dir: shown.to_owned() });
    }
    tools.initdb(dir, InitSync::Durable)
}

/// The port of the last start, if remembered.
pub(crate) fn remembered_port(data_dir: &Path) -> Option<u16> {
    fs::read_to_string(data_dir.join(PORT_FILE)).ok()?.trim().parse().ok().filter(|&port| port != 0)
}

/// Remembers `port` for the next start (written to a temporary file, then renamed).
pub(crate) fn remember_port(tools: &PgTools, data_dir: &Path, port: u16) -> Result<(), ClusterError> {
    let file = data_dir.join(PORT_FILE);
    let tmp = data_dir.join(format!("{PORT_FILE}.tmp"));
    fs::write(&tmp, format!("{port}\n")).context_io(|| format!("writing {}", tmp.display()))?;
    tools.hand_over(&tmp)?;
    fs::rename(&tmp, &file).context_io(|| format!("writing {}", file.display()))
}

/// The server log, moved aside first if it has grown large.
pub(crate) fn server_log(data_dir: &Path) -> PathBuf {
    let log = data_dir.join(LOG_FILE);
    if fs::metadata(&log).is_ok_and(|m| m.len() > LOG_ROTATE_BYTES) {
        if let Err(e) = fs::rename(&log, data_dir.join(format!("{LOG_FILE}.1"))) {
            tracing::warn!("pgcluster: could not rotate {}: {e}", log.display());
        }
    }
    log
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_file_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let tools = PgTools::as_this_user(PathBuf::from("/nonexistent"));
        assert_eq!(remembered_port(tmp.path()), None);
        remember_port(&tools, tmp.path(), 6001).unwrap();
        assert_eq!(remembered_port(tmp.path()), Some(6001));
        fs::write(tmp.path().join(PORT_FILE), "0\n").unwrap();
        assert_eq!(remembered_port(tmp.path()), None);
        fs::write(tmp.path().join(PORT_FILE), "garbage").unwrap();
        assert_eq!(remembered_port(tmp.path()), None);
    }

    #[test]
    fn cluster_version_reads_pg_version() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(cluster_version(tmp.path()).unwrap(), None);
        assert_eq!(cluster_version(&tmp.path().join("absent")).unwrap(), None);
        fs::write(tmp.path().join("PG_VERSION"), "15\n").unwrap();
        assert_eq!(cluster_version(tmp.path()).unwrap().as_deref(), Some("15"));
    }

    #[test]
    fn a_non_empty_directory_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("something"), "").unwrap();
        let tools = PgTools::as_this_user(PathBuf::from("/nonexistent"));
        let e = init_cluster(&tools, tmp.path()).unwrap_err();
        assert_eq!(e.code(), "pgcluster.not_a_cluster");
    }

    #[test]
    fn big_logs_are_rotated() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join(LOG_FILE);
        fs::write(&log, "small").unwrap();
        assert_eq!(server_log(tmp.path()), log);
        assert!(log.exists());
        fs::File::create(&log).unwrap().set_len(LOG_ROTATE_BYTES + 1).unwrap();
        assert_eq!(server_log(tmp.path()), log);
        assert!(!log.exists());
        assert!(tmp.path().join(format!("{LOG_FILE}.1")).exists());
    }
}
