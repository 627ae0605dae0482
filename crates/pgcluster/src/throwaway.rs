//! A throwaway cluster for tests: `initdb` + `pg_ctl start` in a temp dir, on a free port, with
//! fast settings that are unsafe on a crash (no fsync).
//!
//! A small `sh` watchdog, in its own process group, stops the cluster and removes the temp dir
//! once this process is gone, since statics are never dropped.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::bin_dir::{find_bin_dir, BinSearch};
use crate::blocking;
use crate::error::{ClusterError, IoContext};
use crate::tools::{free_port, InitSync, PgTools};

/// Settings for a disposable test server: fast and unsafe on crash.
const SERVER_SETTINGS: &[(&str, &str)] = &[
    ("listen_addresses", "127.0.0.1"),
    ("unix_socket_directories", ""),
    ("max_connections", "200"),
    ("fsync", "off"),
    ("synchronous_commit", "off"),
    ("full_page_writes", "off"),
];

/// The watchdog: waits for the process `$1` to end, then stops the cluster and removes `$4`.
/// `kill -0` fails with EPERM when the watchdog runs as `postgres` and the process as root, hence
/// the `/proc` check.
const WATCHDOG: &str = r#"
while kill -0 "$1" 2>/dev/null || [ -d "/proc/$1" ]; do sleep 1; done
"$2/pg_ctl" -D "$3" stop -m fast -w -t 30 >/dev/null 2>&1
rm -rf "$4"
"#;

/// A running throwaway cluster; stopped and removed by [`Cluster::stop`] or on `Drop`.
#[derive(Debug)]
pub struct Cluster {
    root: PathBuf,
    data: PathBuf,
    tools: PgTools,
    port: u16,
    admin_url: String,
    watchdog: Option<Child>,
    stopped: bool,
}

/// Starts a throwaway cluster (a new one on every call). Binaries as [`BinSearch::from_env`]
/// finds them.
pub async fn start_throwaway_cluster() -> Result<Cluster, ClusterError> {
    blocking("cluster start", start_blocking).await
}

impl Cluster {
    /// `postgres://postgres@127.0.0.1:<port>/postgres` (trust auth).
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory (inside the temp dir removed on stop).
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// Stops the server (`pg_ctl stop -m fast`) and removes its temp dir.
    pub async fn stop(self) -> Result<(), ClusterError> {
        let mut this = self;
        blocking("cluster stop", move || this.shutdown()).await
    }

    fn shutdown(&mut self) -> Result<(), ClusterError> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        let result = self.tools.stop(&self.data);
        match fs::remove_dir_all(&self.root) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound && result.is_ok() => {
                Err(ClusterError::io(format!("removing {}", self.root.display()), e))
            }
            _ => result,
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!("pgcluster: stopping the throwaway cluster: {e}");
        }
    }
}

fn start_blocking() -> Result<Cluster, ClusterError> {
    let tools = PgTools::new(find_bin_dir(&BinSearch::from_env())?)?;
    let root = std::env::temp_dir().join(format!("cl-testdb-{}", uuid::Uuid::now_v7().simple()));
    fs::create_dir(&root).context_io(|| format!("creating {}", root.display()))?;
    // From here on, dropping `cluster` (on any error) stops whatever runs and removes `root`.
    let mut cluster = Cluster {
        data: root.join("data"),
        root,
        tools,
        port: 0,
        admin_url: String::new(),
        watchdog: None,
        stopped: false,
    };
    cluster.tools.hand_over(&cluster.root)?;

    // Started before initdb, so that a process killed mid-start leaves nothing behind either.
    cluster.watchdog = Some(spawn_watchdog(&cluster)?);
    cluster.tools.initdb(&cluster.data, InitSync::NoSync)?;

    let log = cluster.root.join("postgres.log");
    let mut attempts = 0;
    // The free port can be taken between probing and binding: retry with another.
    let port = loop {
        let port = free_port()?;
        match cluster.tools.start(&cluster.data, &log, port, SERVER_SETTINGS, 60) {
            Ok(()) => break port,
            Err(e) if attempts < 2 => {
                tracing::debug!("pgcluster: starting the throwaway cluster on port {port}: {e}");
                attempts += 1;
            }
            Err(e) => return Err(e),
        }
    };
    cluster.port = port;
    cluster.admin_url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    tracing::info!("pgcluster: started a throwaway cluster in {} on port {port}", cluster.root.display());
    Ok(cluster)
}

fn spawn_watchdog(cluster: &Cluster) -> Result<Child, ClusterError> {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(WATCHDOG)
        .arg("pgcluster-watchdog")
        .arg(std::process::id().to_string())
        .arg(cluster.tools.bin())
        .arg(&cluster.data)
        .arg(&cluster.root);
    cluster.tools.as_server_user(&mut cmd);
    cmd.current_dir(&cluster.root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group: a Ctrl-C to the test run must not kill it.
        .process_group(0);
    cmd.spawn().context_io(|| "starting the cluster watchdog (sh)".into())
}
