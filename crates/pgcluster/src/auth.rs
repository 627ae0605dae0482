//! Authentication of the persistent cluster: SCRAM-SHA-256 passwords, generated and kept in
//! the data directory, and a `pg_hba.conf` without any `trust` entry.
//!
//! - **Password files.** Each role's password is 32 random bytes (from `/dev/urandom`) in hex,
//!   in `<data_dir>/pgcluster.<role>.password`, mode 0600, written to a temporary file that is
//!   synced and renamed into place, so a crash never leaves half a password. The data
//!   directory itself is 0700 (initdb's rule), and whoever can read these files can read the
//!   data files beside them anyway: they add no access that the directory does not give.
//! - **The superuser** (`postgres`) gets its password before the server first listens: when
//!   the password file is missing or `pg_hba.conf` still trusts anything (a cluster created by
//!   an earlier version, or by `initdb` just now), [`secure`] sets the password in single-user
//!   mode (`postgres --single`, no listener) and only then writes [`PG_HBA`]. A crash in between
//!   is repaired by the next start, which sees the file still trusting and does it again.
//! - **Other roles** ([`crate::Embedded::login_role`]) are created or updated by the superuser
//!   at every start: `LOGIN`, never `SUPERUSER`, `CREATEDB`, `CREATEROLE`, `REPLICATION` or
//!   `BYPASSRLS`, with the password of their file. Statements carrying a password run with
//!   `log_min_error_statement = panic`, so a failure never writes one to the server log.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::error::{ClusterError, IoContext};
use crate::tools::{describe, PgTools};

/// The cluster's `pg_hba.conf`: the server listens on 127.0.0.1 only and has no Unix
/// socket, so this is the only way in.
pub(crate) const PG_HBA: &str = "\
# Written by pgcluster. The server listens on 127.0.0.1 only, without a Unix socket:
# every role logs in with its SCRAM-SHA-256 password (kept in pgcluster.<role>.password).
# TYPE  DATABASE  USER  ADDRESS       METHOD
host    all       all   127.0.0.1/32  scram-sha-256
";

/// The bootstrap superuser.
pub(crate) const SUPERUSER: &str = "postgres";

/// Longest role name accepted (PostgreSQL's identifier limit).
const MAX_ROLE_BYTES: usize = 63;

/// A role name usable in file names and SQL without quoting: `[a-z_][a-z0-9_]*`.
pub(crate) fn validate_role(role: &str) -> Result<(), ClusterError> {
    let mut bytes = role.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_lowercase() || b == b'_');
    if !first_ok
        || role.len() > MAX_ROLE_BYTES
        || !role.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(ClusterError::InvalidRoleName { name: role.to_owned() });
    }
    Ok(())
}

/// Where `role`'s password is kept.
pub(crate) fn password_file(data_dir: &Path, role: &str) -> PathBuf {
    data_dir.join(format!("pgcluster.{role}.password"))
}

/// The password of `role` from its file, if there is one (its mode put back to 0600 if
/// something widened it).
pub(crate) fn read_password(data_dir: &Path, role: &str) -> Result<Option<String>, ClusterError> {
    let file = password_file(data_dir, role);
    let text = match fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ClusterError::io(format!("reading {}", file.display()), e)),
    };
    let password = text.trim();
    if password.len() < 32 || !password.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ClusterError::BadPasswordFile { file });
    }
    let mode = fs::metadata(&file).context_io(|| format!("reading {}", file.display()))?.permissions().mode();
    if mode & 0o077 != 0 {
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600))
            .context_io(|| format!("restricting {} to mode 0600", file.display()))?;
    }
    Ok(Some(password.to_owned()))
}

/// The password of `role`: from its file, else a new one written to it. `true` when new.
pub(crate) fn password(tools: &PgTools, data_dir: &Path, role: &str) -> Result<(String, bool), ClusterError> {
    validate_role(role)?;
    if let Some(password) = read_password(data_dir, role)? {
        return Ok((password, false));
    }
    let password = generate()?;
    let tmp = data_dir.join(format!("pgcluster.{role}.password.tmp"));
    write_private(tools, data_dir, &tmp, &password_file(data_dir, role), format!("{password}\n").as_bytes())?;
    Ok((password, true))
}

/// Write `bytes` durably to `file` in `dir`: through `tmp` (created afresh, mode 0600, owned
/// by the server's user), synced, renamed into place, and the directory synced.
fn write_private(
    tools: &PgTools,
    dir: &Path,
    tmp: &Path,
    file: &Path,
    bytes: &[u8],
) -> Result<(), ClusterError> {
    let _ = fs::remove_file(tmp);
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        })
        .context_io(|| format!("writing {}", tmp.display()))?;
    tools.hand_over(tmp)?;
    fs::rename(tmp, file)
        .and_then(|()| fs::File::open(dir)?.sync_all())
        .context_io(|| format!("writing {}", file.display()))
}

/// 32 random bytes from the kernel, in hex.
fn generate() -> Result<String, ClusterError> {
    let mut bytes = [0u8; 32];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context_io(|| "reading /dev/urandom".into())?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Whether `pg_hba.conf` lets anyone in without a password (a `trust` entry), or is missing.
pub(crate) fn hba_trusts(data_dir: &Path) -> Result<bool, ClusterError> {
    let file = data_dir.join("pg_hba.conf");
    let text = match fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(ClusterError::io(format!("reading {}", file.display()), e)),
    };
    Ok(text.lines().any(|line| {
        let line = line.split('#').next().unwrap_or_default();
        line.split_whitespace().any(|word| word.eq_ignore_ascii_case("trust"))
    }))
}

/// Makes the stopped cluster in `data_dir` password-only (see the module docs): the
/// superuser's password is set in single-user mode when it is new or `pg_hba.conf` still
/// trusts, then [`PG_HBA`] is written. Returns the superuser's password.
pub(crate) fn secure(tools: &PgTools, data_dir: &Path) -> Result<String, ClusterError> {
    let (password, new) = password(tools, data_dir, SUPERUSER)?;
    if new || hba_trusts(data_dir)? {
        tracing::info!("pgcluster: setting the superuser's password in {}", data_dir.display());
        set_password_single_user(tools, data_dir, &password)?;
    }
    write_hba(tools, data_dir)?;
    Ok(password)
}

/// `ALTER ROLE postgres PASSWORD ...` in single-user mode (the server must not run).
fn set_password_single_user(tools: &PgTools, data_dir: &Path, password: &str) -> Result<(), ClusterError> {
    let mut cmd = tools.command("postgres");
    cmd.arg("--single")
        .arg("-D")
        .arg(data_dir)
        .args(["-c", "password_encryption=scram-sha-256", "-c", "log_min_error_statement=panic"])
        .arg(SUPERUSER)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let what = || ClusterError::Command { what: "postgres --single".into(), output: String::new() };
    let mut child = cmd.spawn().context_io(|| "running postgres --single".into())?;
    let statement = format!("ALTER ROLE {SUPERUSER} PASSWORD '{password}'\n");
    let written = child.stdin.take().ok_or_else(what)?.write_all(statement.as_bytes());
    let out = child.wait_with_output().context_io(|| "running postgres --single".into())?;
    let text = describe(&out).replace(password, "<password>");
    if written.is_err() || !out.status.success() || text.contains("ERROR:") || text.contains("FATAL:") {
        return Err(ClusterError::Command {
            what: "postgres --single (setting the password)".into(),
            output: text,
        });
    }
    Ok(())
}

/// Writes [`PG_HBA`] unless the file already says exactly that (a temporary file renamed into
/// place, owned by the server's user, mode 0600).
pub(crate) fn write_hba(tools: &PgTools, dir: &Path) -> Result<(), ClusterError> {
    let hba = dir.join("pg_hba.conf");
    if fs::read_to_string(&hba).is_ok_and(|text| text == PG_HBA) {
        return Ok(());
    }
    write_private(tools, dir, &dir.join("pg_hba.conf.pgcluster-tmp"), &hba, PG_HBA.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names() {
        for ok in ["postgres", "chartledger_server", "_x1"] {
            assert!(validate_role(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1x", "Upper", "a-b", "a b", "a'b", "a\"b", &"x".repeat(64)] {
            assert_eq!(validate_role(bad).unwrap_err().code(), "pgcluster.invalid_role_name", "{bad}");
        }
    }

    #[test]
    fn passwords_are_generated_once_and_kept_private() {
        let tmp = tempfile::tempdir().unwrap();
        let tools = PgTools::as_this_user(PathBuf::from("/nonexistent"));
        let (first, new) = password(&tools, tmp.path(), "app").unwrap();
        assert!(new);
        assert_eq!(first.len(), 64);
        let file = password_file(tmp.path(), "app");
        assert_eq!(fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(password(&tools, tmp.path(), "app").unwrap(), (first.clone(), false));
        assert_ne!(password(&tools, tmp.path(), "other").unwrap().0, first);
        // A widened mode is narrowed again; a damaged file is an error, not a new password.
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(read_password(tmp.path(), "app").unwrap(), Some(first));
        assert_eq!(fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        fs::write(&file, "short\n").unwrap();
        assert_eq!(read_password(tmp.path(), "app").unwrap_err().code(), "pgcluster.bad_password_file");
        assert!(password(&tools, tmp.path(), "bad role").is_err());
    }

    #[test]
    fn trust_entries_are_found() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(hba_trusts(tmp.path()).unwrap(), "a missing file must be written");
        let hba = tmp.path().join("pg_hba.conf");
        fs::write(&hba, "# trust in a comment\nhost all all 127.0.0.1/32 scram-sha-256\n").unwrap();
        assert!(!hba_trusts(tmp.path()).unwrap());
        fs::write(&hba, "host    all       all   127.0.0.1/32  trust\n").unwrap();
        assert!(hba_trusts(tmp.path()).unwrap());
        let tools = PgTools::as_this_user(PathBuf::from("/nonexistent"));
        write_hba(&tools, tmp.path()).unwrap();
        assert_eq!(fs::read_to_string(&hba).unwrap(), PG_HBA);
        assert!(!hba_trusts(tmp.path()).unwrap());
    }
}
