//! A throwaway PostgreSQL cluster: `initdb` + `pg_ctl start` in a temp dir, on a free port.
//!
//! `initdb` and `postgres` refuse to run as root, so when this process is root they run as the
//! `postgres` OS user (set with `CommandExt::uid`/`gid`, no `runuser` needed) and the temp dir is
//! handed to that user. A small `sh` watchdog, in its own process group, stops the cluster and
//! removes the temp dir once this process is gone, since statics are never dropped.

use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use anyhow::{bail, Context};

/// Settings for a disposable test server: fast and unsafe on crash.
const SERVER_SETTINGS: &str = "
# added by testdb
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
";

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
    bin: PathBuf,
    port: u16,
    admin_url: String,
    /// uid and gid the server runs as, when not this process's own.
    run_as: Option<(u32, u32)>,
    watchdog: Option<Child>,
    stopped: bool,
}

/// Starts a throwaway cluster (a new one on every call; [`crate::TestDb::new`] starts at most one
/// per process). Binaries come from `PATH` or `/usr/lib/postgresql/*/bin` (newest first).
pub async fn start_throwaway_cluster() -> anyhow::Result<Cluster> {
    tokio::task::spawn_blocking(start_blocking).await.context("cluster start task failed")?
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
    pub async fn stop(self) -> anyhow::Result<()> {
        let mut this = self;
        tokio::task::spawn_blocking(move || this.shutdown()).await.context("cluster stop task failed")?
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        cmd.current_dir(&self.root).stdin(Stdio::null());
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    fn shutdown(&mut self) -> anyhow::Result<()> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        let mut result = Ok(());
        if self.data.join("postmaster.pid").exists() {
            let mut cmd = self.command("pg_ctl");
            cmd.arg("-D").arg(&self.data).args(["stop", "-m", "fast", "-w", "-t", "30"]);
            result = run(&mut cmd, "pg_ctl stop").map(drop);
        }
        match fs::remove_dir_all(&self.root) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound && result.is_ok() => {
                result = Err(anyhow::Error::new(e).context(format!("removing {}", self.root.display())));
            }
            _ => {}
        }
        result
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!("testdb: stopping the throwaway cluster: {e:#}");
        }
    }
}

fn start_blocking() -> anyhow::Result<Cluster> {
    let bin = find_bin_dir()?;
    let root = std::env::temp_dir().join(format!("cl-testdb-{}", uuid::Uuid::now_v7().simple()));
    fs::create_dir(&root).with_context(|| format!("creating {}", root.display()))?;
    // From here on, dropping `cluster` (on any error) stops whatever runs and removes `root`.
    let mut cluster = Cluster {
        data: root.join("data"),
        root,
        bin,
        port: 0,
        admin_url: String::new(),
        run_as: None,
        watchdog: None,
        stopped: false,
    };

    // The temp dir's owner is our effective uid: no unsafe geteuid needed.
    let uid = fs::metadata(&cluster.root)?.uid();
    if uid == 0 {
        let (uid, gid) = lookup_user("postgres").context(
            "running as root: initdb needs an unprivileged OS user `postgres` (or set DATABASE_URL)",
        )?;
        std::os::unix::fs::chown(&cluster.root, Some(uid), Some(gid))
            .with_context(|| format!("handing {} to the postgres user", cluster.root.display()))?;
        cluster.run_as = Some((uid, gid));
    }

    // Started before initdb, so that a process killed mid-start leaves nothing behind either.
    cluster.watchdog = Some(spawn_watchdog(&cluster)?);

    let mut initdb = cluster.command("initdb");
    initdb.arg("-D").arg(&cluster.data).args([
        "-U",
        "postgres",
        "-A",
        "trust",
        "-E",
        "UTF8",
        "--locale=C",
        "--no-sync",
    ]);
    run(&mut initdb, "initdb")?;
    // Appending keeps the file's owner (postgres) even when we are root.
    fs::OpenOptions::new()
        .append(true)
        .open(cluster.data.join("postgresql.conf"))
        .and_then(|mut f| f.write_all(SERVER_SETTINGS.as_bytes()))
        .context("writing postgresql.conf")?;

    let log = cluster.root.join("postgres.log");
    let mut last_error = None;
    // The free port can be taken between probing and binding: retry with another.
    for _ in 0..3 {
        let port = free_port()?;
        let mut start = cluster.command("pg_ctl");
        start.arg("-D").arg(&cluster.data).arg("-l").arg(&log).args([
            "-w",
            "-t",
            "60",
            "-o",
            &format!("-p {port}"),
            "start",
        ]);
        match run(&mut start, "pg_ctl start") {
            Ok(_) => {
                cluster.port = port;
                cluster.admin_url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
                last_error = None;
                break;
            }
            Err(e) => {
                let tail = fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(10).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                last_error = Some(e.context(format!("server log:\n{}", tail.join("\n"))));
            }
        }
    }
    if let Some(e) = last_error {
        return Err(e);
    }

    tracing::info!(
        "testdb: started a throwaway cluster in {} on port {}",
        cluster.root.display(),
        cluster.port
    );
    Ok(cluster)
}

fn spawn_watchdog(cluster: &Cluster) -> anyhow::Result<Child> {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(WATCHDOG)
        .arg("testdb-watchdog")
        .arg(std::process::id().to_string())
        .arg(&cluster.bin)
        .arg(&cluster.data)
        .arg(&cluster.root)
        .current_dir(&cluster.root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group: a Ctrl-C to the test run must not kill it.
        .process_group(0);
    if let Some((uid, gid)) = cluster.run_as {
        cmd.uid(uid).gid(gid);
    }
    cmd.spawn().context("starting the cluster watchdog (sh)")
}

/// The directory holding `initdb` and `pg_ctl`: from `PATH` (symlinks resolved), else the newest
/// `/usr/lib/postgresql/<version>/bin`.
fn find_bin_dir() -> anyhow::Result<PathBuf> {
    let has_tools = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if let Ok(real) = fs::canonicalize(dir.join("initdb")) {
                if let Some(real_dir) = real.parent() {
                    if has_tools(real_dir) {
                        return Ok(real_dir.to_owned());
                    }
                }
            }
        }
    }
    let mut versions: Vec<(Vec<u32>, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version =
                entry.file_name().to_str()?.split('.').map(str::parse).collect::<Result<_, _>>().ok()?;
            let bin = entry.path().join("bin");
            has_tools(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => Ok(bin),
        None => bail!("no PostgreSQL binaries (initdb, pg_ctl) on PATH or in /usr/lib/postgresql/*/bin"),
    }
}

fn lookup_user(name: &str) -> anyhow::Result<(u32, u32)> {
    let id = |flag: &str| -> anyhow::Result<u32> {
        let out = run(Command::new("id").args([flag, name]), "id")?;
        String::from_utf8_lossy(&out.stdout).trim().parse().context("parsing the output of id")
    };
    Ok((id("-u")?, id("-g")?))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0").context("finding a free port")?.local_addr()?.port())
}

/// Runs `cmd` to completion; an error carries its output.
fn run(cmd: &mut Command, what: &str) -> anyhow::Result<Output> {
    let out = cmd.output().with_context(|| format!("running {what} ({:?})", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}
