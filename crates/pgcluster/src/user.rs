//! Who runs the server: this process's user, or the `postgres` OS user when this process is root
//! (`initdb` and `postgres` refuse to run as root). Found without `unsafe`: the effective uid from
//! `/proc/self/status` (else `id -u`), the `postgres` user's ids from `id`.

use std::process::{Command, Stdio};

use crate::error::ClusterError;
use crate::tools::run;

/// The OS user the server runs as when this process is root.
const SERVER_USER: &str = "postgres";

/// The uid and gid to run PostgreSQL programs as: `None` for this process's own user, the
/// `postgres` user's when this process is root.
pub(crate) fn server_user() -> Result<Option<(u32, u32)>, ClusterError> {
    if effective_uid()? != 0 {
        return Ok(None);
    }
    let id = |flag: &str| -> Result<u32, ClusterError> {
        let mut cmd = Command::new("id");
        cmd.args([flag, SERVER_USER]).stdin(Stdio::null());
        let out = run(&mut cmd, "id").map_err(|detail| ClusterError::NoPostgresUser { detail })?;
        parse_id(&String::from_utf8_lossy(&out.stdout))
            .ok_or_else(|| ClusterError::NoPostgresUser { detail: "unexpected output of id".into() })
    };
    Ok(Some((id("-u")?, id("-g")?)))
}

fn effective_uid() -> Result<u32, ClusterError> {
    if let Some(uid) =
        std::fs::read_to_string("/proc/self/status").ok().as_deref().and_then(parse_status_euid)
    {
        return Ok(uid);
    }
    let mut cmd = Command::new("id");
    cmd.arg("-u").stdin(Stdio::null());
    let out =
        run(&mut cmd, "id -u").map_err(|output| ClusterError::Command { what: "id -u".into(), output })?;
    parse_id(&String::from_utf8_lossy(&out.stdout))
        .ok_or_else(|| ClusterError::Command { what: "id -u".into(), output: "unexpected output".into() })
}

/// The effective uid from `/proc/self/status` (`Uid:\treal\teffective\tsaved\tfs`).
fn parse_status_euid(status: &str) -> Option<u32> {
    let line = status.lines().find_map(|line| line.strip_prefix("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn parse_id(output: &str) -> Option<u32> {
    output.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_effective_uid() {
        let status = "Name:\tx\nUmask:\t0022\nUid:\t1000\t0\t0\t0\nGid:\t5\t5\t5\t5\n";
        assert_eq!(parse_status_euid(status), Some(0));
        assert_eq!(parse_status_euid("Name:\tx\n"), None);
        assert_eq!(parse_id(" 101\n"), Some(101));
        assert_eq!(parse_id("no"), None);
    }

    #[test]
    fn finds_this_process_user() {
        // Root runs the server as `postgres`, anyone else as themselves.
        let uid = effective_uid().unwrap();
        match server_user() {
            Ok(Some((postgres, _))) => assert!(uid == 0 && postgres != 0),
            Ok(None) => assert_ne!(uid, 0),
            Err(e) => assert_eq!(e.code(), "pgcluster.no_postgres_user"),
        }
    }
}
