//! Who runs the server: this process's user, or the `postgres` OS user when this process is root
//! (`initdb` and `postgres` refuse to run as root). Both are read with `nix` (`geteuid`, and
//! `getpwnam_r` for the user database, NSS included), without `unsafe` here and without
//! running another program.

use nix::unistd::{Uid, User};

use crate::error::ClusterError;

/// The OS user the server runs as when this process is root.
const SERVER_USER: &str = "postgres";

/// The uid and gid to run PostgreSQL programs as: `None` for this process's own user, the
/// `postgres` user's when this process is root.
pub(crate) fn server_user() -> Result<Option<(u32, u32)>, ClusterError> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    match User::from_name(SERVER_USER) {
        Ok(Some(user)) => Ok(Some((user.uid.as_raw(), user.gid.as_raw()))),
        Ok(None) => Err(ClusterError::NoPostgresUser { detail: format!("no OS user named {SERVER_USER}") }),
        Err(errno) => Err(ClusterError::NoPostgresUser { detail: format!("user database: {errno}") }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_this_process_user() {
        // Root runs the server as `postgres`, anyone else as themselves.
        let root = Uid::effective().is_root();
        match server_user() {
            Ok(Some((postgres, _))) => assert!(root && postgres != 0),
            Ok(None) => assert!(!root),
            Err(e) => assert_eq!(e.code(), "pgcluster.no_postgres_user"),
        }
    }
}
