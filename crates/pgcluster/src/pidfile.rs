//! A `postmaster.pid` left behind by a server that is no longer running.
//!
//! `pg_ctl status` and the server itself take the file's pid for a running postmaster
//! whenever `kill(pid, 0)` succeeds. After the postmaster was killed (SIGKILL, OOM killer)
//! that is wrong in two cases: the process is a **zombie** nobody reaps (a container whose
//! init does not reap orphans), or the pid now belongs to an **unrelated** process of the
//! same OS user. Then `pg_ctl start` refuses ("lock file already exists") and adopting waits
//! for a server that will never answer.
//!
//! [`holder`] tells them apart through `/proc` (Linux): the process is gone, a zombie
//! (state `Z` or `X`), or alive; a live one is this cluster's postmaster only if its working
//! directory is the data directory (the postmaster `chdir`s there). Anything this process
//! cannot see into counts as the postmaster, so a doubt never starts a second server on the
//! same data. Without `/proc` (macOS) everything counts as the postmaster, as before.
//!
//! [`clear_stale`] then waits until no process of the dead server is still attached to its
//! System V shared memory segment (the key and id on the file's seventh line, as the server
//! itself checks at start; backends exit soon after their postmaster dies) and only then
//! removes the file and the segment, since a new postmaster must never start while old
//! backends can still write to the data files.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::ClusterError;
use crate::tools::PgTools;

/// How long the processes of a dead postmaster may take to detach from its shared memory.
const DETACH_WAIT: Duration = Duration::from_secs(30);

/// What the pid of a `postmaster.pid` is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Holder {
    /// This cluster's postmaster, or a process this check cannot see into.
    Postmaster,
    /// No such process.
    Gone,
    /// Killed, not yet reaped.
    Zombie,
    /// A live process that is not this cluster's postmaster: the pid was reused.
    Unrelated,
}

impl Holder {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Holder::Postmaster => "the postmaster",
            Holder::Gone => "gone",
            Holder::Zombie => "a zombie (killed, not reaped)",
            Holder::Unrelated => "an unrelated process (the pid was reused)",
        }
    }
}

/// What process `pid`, named by the `postmaster.pid` of `data_dir`, is (see the module docs).
pub(crate) fn holder(pid: u32, data_dir: &Path) -> Holder {
    holder_in(Path::new("/proc"), pid, data_dir)
}

fn holder_in(proc_root: &Path, pid: u32, data_dir: &Path) -> Holder {
    if !proc_root.join("self/stat").exists() {
        return Holder::Postmaster;
    }
    let dir = proc_root.join(pid.to_string());
    let stat = match fs::read_to_string(dir.join("stat")) {
        Ok(stat) => stat,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Holder::Gone,
        Err(_) => return Holder::Postmaster,
    };
    match process_state(&stat) {
        Some('Z' | 'X') => return Holder::Zombie,
        Some(_) => {}
        None => return Holder::Postmaster,
    }
    let (Ok(cwd), Ok(data)) = (fs::read_link(dir.join("cwd")), fs::canonicalize(data_dir)) else {
        return Holder::Postmaster;
    };
    if cwd == data {
        Holder::Postmaster
    } else {
        Holder::Unrelated
    }
}

/// The state letter of `/proc/<pid>/stat` (`pid (comm) S ...`; `comm` may hold `)`).
fn process_state(stat: &str) -> Option<char> {
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// The System V shared memory key and id of a `postmaster.pid` (its seventh line).
fn shared_memory(pid_file: &str) -> Option<(u64, u64)> {
    let mut words = pid_file.lines().nth(6)?.split_whitespace();
    Some((words.next()?.parse().ok()?, words.next()?.parse().ok()?))
}

/// How many processes are attached to segment `shmid` with key `key`, from
/// `/proc/sysvipc/shm` (`key shmid perms size cpid lpid nattch ...`); `None` when it is gone or
/// cannot be seen.
fn attached(sysvipc_shm: &str, key: u64, shmid: u64) -> Option<u64> {
    sysvipc_shm.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (k, id) = (cols.first()?.parse::<u64>().ok()?, cols.get(1)?.parse::<u64>().ok()?);
        (k == key && id == shmid).then(|| cols.get(6)?.parse().ok())?
    })
}

fn pid_file(data_dir: &Path) -> PathBuf {
    data_dir.join("postmaster.pid")
}

/// Makes way for a new postmaster after the one of `postmaster.pid` died: waits until none of
/// its processes is attached to its shared memory, then (with `remove`, for a zombie or a
/// reused pid, which the server would take for a live postmaster) removes the file and the
/// segment. Without `remove` (the pid is gone) the server clears both itself at start.
pub(crate) fn clear_stale(tools: &PgTools, data_dir: &Path, remove: bool) -> Result<(), ClusterError> {
    let file = pid_file(data_dir);
    let Ok(text) = fs::read_to_string(&file) else {
        return Ok(());
    };
    let segment = shared_memory(&text);
    if let Some((key, shmid)) = segment {
        let started = Instant::now();
        loop {
            let shm = fs::read_to_string("/proc/sysvipc/shm").unwrap_or_default();
            match attached(&shm, key, shmid) {
                Some(n) if n > 0 => {
                    if started.elapsed() >= DETACH_WAIT {
                        return Err(ClusterError::AlreadyRunning {
                            data_dir: data_dir.to_owned(),
                            pid: text.lines().next().and_then(|l| l.trim().parse().ok()).unwrap_or(0),
                            detail: format!(
                                "its postmaster is dead, but {n} of its processes are still attached to \
                                 its shared memory (id {shmid}) after {DETACH_WAIT:?}"
                            ),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                _ => break,
            }
        }
    }
    if !remove {
        return Ok(());
    }
    match fs::remove_file(&file) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ClusterError::io(format!("removing the stale {}", file.display()), e)),
    }
    if let Some((_, shmid)) = segment {
        // Best effort, as the server's user (its owner): what the server would have done.
        let mut cmd = Command::new("ipcrm");
        cmd.args(["-m", &shmid.to_string()]).stdout(Stdio::null()).stderr(Stdio::null());
        tools.as_server_user(&mut cmd);
        let _ = cmd.status();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_state_and_the_segment() {
        assert_eq!(process_state("42 (postgres) S 1 42"), Some('S'));
        assert_eq!(process_state("42 (we) ird) Z 1 42"), Some('Z'));
        assert_eq!(process_state("garbage"), None);
        let file = "77\n/d\n1700000000\n6123\n\n127.0.0.1\n  5432001     32769\nready   \n";
        assert_eq!(shared_memory(file), Some((5432001, 32769)));
        assert_eq!(shared_memory("77\n/d\n"), None);
        let shm = "       key      shmid perms                  size  cpid  lpid nattch   uid   gid\n\
                     5432001      32769   600                    56   100   120      3   101   101\n\
                     5432002      32770   600                    56   100   120      0   101   101\n";
        assert_eq!(attached(shm, 5432001, 32769), Some(3));
        assert_eq!(attached(shm, 5432002, 32770), Some(0));
        assert_eq!(attached(shm, 5432001, 32770), None, "the key must match too");
        assert_eq!(attached(shm, 1, 2), None);
    }

    #[test]
    fn tells_the_postmaster_from_the_dead_and_the_unrelated() {
        let tmp = tempfile::tempdir().unwrap();
        // A process working in the data directory stands for the postmaster.
        let mut sleeper = Command::new("sleep").arg("30").current_dir(tmp.path()).spawn().unwrap();
        assert_eq!(holder(sleeper.id(), tmp.path()), Holder::Postmaster);
        // The same process seen from another data directory: an unrelated process.
        let other = tempfile::tempdir().unwrap();
        assert_eq!(holder(sleeper.id(), other.path()), Holder::Unrelated);
        sleeper.kill().unwrap();
        // Killed but not yet reaped (this process is its parent): a zombie.
        let deadline = Instant::now() + Duration::from_secs(10);
        while holder(sleeper.id(), tmp.path()) != Holder::Zombie {
            assert!(Instant::now() < deadline, "never became a zombie");
            std::thread::sleep(Duration::from_millis(20));
        }
        let pid = sleeper.id();
        sleeper.wait().unwrap();
        assert_eq!(holder(pid, tmp.path()), Holder::Gone);
        // Without /proc nothing can be told: the postmaster, as before.
        assert_eq!(holder_in(tmp.path(), pid, tmp.path()), Holder::Postmaster);
    }
}
