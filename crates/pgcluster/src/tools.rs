//! Running the PostgreSQL programs of one bin directory as the right OS user: `initdb`,
//! `pg_ctl start/stop/status`, plus the small helpers both cluster kinds share (free ports, the
//! server log).

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::error::{ClusterError, IoContext};
use crate::user::server_user;

/// How many lines of the server log a start failure reports.
const LOG_TAIL_LINES: usize = 20;

/// The PostgreSQL programs of one bin directory, run as the server's OS user.
#[derive(Debug, Clone)]
pub(crate) struct PgTools {
    bin: PathBuf,
    /// uid and gid to run as, when not this process's own (this process is root).
    run_as: Option<(u32, u32)>,
}

/// Whether `initdb` syncs the new cluster to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InitSync {
    Durable,
    NoSync,
}

impl PgTools {
    /// The tools of `bin`, run as `postgres` when this process is root.
    pub(crate) fn new(bin: PathBuf) -> Result<PgTools, ClusterError> {
        Ok(PgTools { bin, run_as: server_user()? })
    }

    /// The tools of `bin`, run as this process's user.
    #[cfg(test)]
    pub(crate) fn as_this_user(bin: PathBuf) -> PgTools {
        PgTools { bin, run_as: None }
    }

    pub(crate) fn bin(&self) -> &Path {
        &self.bin
    }

    /// `program` of the bin dir, as the server's user, in `/`, without stdin.
    pub(crate) fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        self.as_server_user(&mut cmd);
        cmd
    }

    /// Makes `cmd` run as the server's user, in `/` (which that user can always enter).
    pub(crate) fn as_server_user(&self, cmd: &mut Command) {
        cmd.current_dir("/").stdin(Stdio::null());
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
    }

    /// Gives `path` to the server's user (no-op unless this process is root).
    pub(crate) fn hand_over(&self, path: &Path) -> Result<(), ClusterError> {
        match self.run_as {
            Some((uid, gid)) => std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .context_io(|| format!("handing {} to the postgres OS user", path.display())),
            None => Ok(()),
        }
    }

    /// Whether the server's user can enter and write `dir` (always true when it is this user).
    pub(crate) fn can_use_dir(&self, dir: &Path) -> bool {
        if self.run_as.is_none() {
            return true;
        }
        let mut cmd = Command::new("sh");
        cmd.args(["-c", r#"cd -- "$1" && test -w ."#, "pgcluster-check"]).arg(dir);
        self.as_server_user(&mut cmd);
        run(&mut cmd, "sh").is_ok()
    }

    /// `initdb` into `data` (absent or empty): superuser `postgres`, trust auth, UTF8, C locale.
    pub(crate) fn initdb(&self, data: &Path, sync: InitSync) -> Result<(), ClusterError> {
        let mut cmd = self.command("initdb");
        cmd.arg("-D").arg(data).args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"]);
        if sync == InitSync::NoSync {
            cmd.arg("--no-sync");
        }
        run(&mut cmd, "initdb").map(drop).map_err(|output| ClusterError::InitdbFailed { output })
    }

    /// `pg_ctl start -w` on `port` with `settings` (as `-c name=value`, overriding the config
    /// files), the server's output appended to `log`. A failure carries what the server logged
    /// during this attempt.
    pub(crate) fn start(
        &self,
        data: &Path,
        log: &Path,
        port: u16,
        settings: &[(&str, &str)],
        timeout_secs: u32,
    ) -> Result<(), ClusterError> {
        let log_start = fs::metadata(log).map(|m| m.len()).unwrap_or(0);
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D").arg(data).arg("-l").arg(log).args([
            "-w",
            "-t",
            &timeout_secs.to_string(),
            "-o",
            &server_options(port, settings),
            "start",
        ]);
        run(&mut cmd, "pg_ctl start").map(drop).map_err(|output| ClusterError::StartFailed {
            data_dir: data.to_owned(),
            port,
            output,
            log_tail: log_tail(log, log_start),
        })
    }

    /// `pg_ctl stop -m fast -w`, if a server may be running (`postmaster.pid` exists). A
    /// server that is already gone (a stale `postmaster.pid`) counts as stopped.
    pub(crate) fn stop(&self, data: &Path) -> Result<(), ClusterError> {
        if !data.join("postmaster.pid").exists() {
            return Ok(());
        }
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D").arg(data).args(["stop", "-m", "fast", "-w", "-t", "60"]);
        match run(&mut cmd, "pg_ctl stop") {
            Ok(_) => Ok(()),
            Err(_) if matches!(self.running_pid(data), Ok(None)) => Ok(()),
            Err(output) => Err(ClusterError::StopFailed { data_dir: data.to_owned(), output }),
        }
    }

    /// The pid of the server running on `data`, if any (`pg_ctl status`).
    pub(crate) fn running_pid(&self, data: &Path) -> Result<Option<u32>, ClusterError> {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D").arg(data).arg("status");
        let out = cmd.output().context_io(|| "running pg_ctl status".into())?;
        match out.status.code() {
            Some(0) => Ok(parse_status_pid(&String::from_utf8_lossy(&out.stdout))),
            Some(3) => Ok(None),
            _ => Err(ClusterError::Command { what: "pg_ctl status".into(), output: describe(&out) }),
        }
    }
}

/// The `-o` options of `pg_ctl start`. `pg_ctl` hands them to `/bin/sh`, hence the quoting.
fn server_options(port: u16, settings: &[(&str, &str)]) -> String {
    let mut options = format!("-p {port}");
    for (name, value) in settings {
        options.push_str(&format!(" -c {name}={}", shell_quote(value)));
    }
    options
}

fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// `pg_ctl: server is running (PID: 1234)` -> 1234.
fn parse_status_pid(output: &str) -> Option<u32> {
    let rest = output.split_once("(PID: ")?.1;
    rest.split(')').next()?.trim().parse().ok()
}

/// The port in a `postmaster.pid` (its fourth line), if the file is there and complete.
pub(crate) fn postmaster_port(data: &Path) -> Option<u16> {
    fs::read_to_string(data.join("postmaster.pid")).ok()?.lines().nth(3)?.trim().parse().ok()
}

/// The last lines `log` got after byte `from`: only this attempt's output, never older lines.
pub(crate) fn log_tail(log: &Path, from: u64) -> String {
    let mut text = String::new();
    let read = fs::File::open(log).and_then(|mut f| {
        f.seek(SeekFrom::Start(from))?;
        f.take(1 << 20).read_to_string(&mut text)
    });
    if let Err(e) = read {
        return format!("(could not read {}: {e})", log.display());
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

/// A port on 127.0.0.1 that was free a moment ago.
pub(crate) fn free_port() -> Result<u16, ClusterError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .context_io(|| "finding a free port on 127.0.0.1".into())
}

/// Whether nothing listens on `port` of 127.0.0.1 (port 0 is never free).
pub(crate) fn port_is_free(port: u16) -> bool {
    port != 0 && TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Runs `cmd` to completion; on failure, a description with its output.
pub(crate) fn run(cmd: &mut Command, what: &str) -> Result<Output, String> {
    let out = cmd.output().map_err(|e| format!("could not run {what} ({:?}): {e}", cmd.get_program()))?;
    if !out.status.success() {
        return Err(describe(&out));
    }
    Ok(out)
}

pub(crate) fn describe(out: &Output) -> String {
    format!(
        "{}:\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
    .trim_end()
    .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_options_are_quoted_for_the_shell() {
        let options = server_options(5999, &[("unix_socket_directories", ""), ("x", "it's")]);
        assert_eq!(options, r"-p 5999 -c unix_socket_directories='' -c x='it'\''s'");
    }

    #[test]
    fn parses_pg_ctl_status() {
        let out =
            "pg_ctl: server is running (PID: 4242)\n/usr/lib/postgresql/15/bin/postgres \"-D\" \"/d\"\n";
        assert_eq!(parse_status_pid(out), Some(4242));
        assert_eq!(parse_status_pid("pg_ctl: no server running"), None);
    }

    #[test]
    fn postmaster_port_is_the_fourth_line() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(postmaster_port(tmp.path()), None);
        fs::write(tmp.path().join("postmaster.pid"), "77\n/d\n1700000000\n6123\n\n127.0.0.1\n").unwrap();
        assert_eq!(postmaster_port(tmp.path()), Some(6123));
        fs::write(tmp.path().join("postmaster.pid"), "77\n/d\n").unwrap();
        assert_eq!(postmaster_port(tmp.path()), None);
    }

    #[test]
    fn log_tail_reads_only_this_attempt() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("log");
        fs::write(&log, "old secret line\n").unwrap();
        let from = fs::metadata(&log).unwrap().len();
        let new: String = (1..=30).map(|i| format!("line {i}\n")).collect();
        fs::write(&log, format!("old secret line\n{new}")).unwrap();
        let tail = log_tail(&log, from);
        assert!(!tail.contains("secret"));
        assert!(tail.starts_with("line 11\n") && tail.ends_with("line 30"), "{tail}");
        assert!(log_tail(&tmp.path().join("missing"), 0).contains("could not read"));
    }

    #[test]
    fn ports() {
        let port = free_port().unwrap();
        assert!(port_is_free(port));
        let held = TcpListener::bind(("127.0.0.1", port)).unwrap();
        assert!(!port_is_free(port));
        drop(held);
        assert!(!port_is_free(0));
    }

    #[test]
    fn run_reports_output() {
        let err = run(Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]), "sh").unwrap_err();
        assert!(err.contains("out") && err.contains("err") && err.contains('3'), "{err}");
        assert!(run(&mut Command::new("/nonexistent/program"), "nothing")
            .unwrap_err()
            .contains("could not run"));
    }
}
