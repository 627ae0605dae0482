//! Finding the PostgreSQL server binaries (`initdb`, `pg_ctl`, `postgres`).
//!
//! The search takes an explicit [`BinSearch`] ([`BinSearch::from_env`] reads `PG_BIN_DIR` and
//! `PATH`), so tests can search elsewhere without touching the process environment. Order:
//! `PG_BIN_DIR` alone when set; else each `PATH` entry holding `initdb` (symlinks resolved, so
//! `/usr/local/bin/initdb -> /usr/lib/postgresql/15/bin/initdb` counts as the latter); else the
//! newest `/usr/lib/postgresql/<version>/bin`.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::ClusterError;

/// The programs a directory must hold to run a cluster.
const TOOLS: [&str; 3] = ["initdb", "pg_ctl", "postgres"];

/// Where to look for the PostgreSQL binaries. `Default` searches nowhere; see
/// [`BinSearch::from_env`].
#[derive(Debug, Clone, Default)]
pub struct BinSearch {
    /// When set, the only directory searched (`PG_BIN_DIR`).
    pub pg_bin_dir: Option<PathBuf>,
    /// A `PATH`-style list of directories.
    pub path: Option<OsString>,
    /// Directories with one `<version>/bin` per installed version, searched newest first
    /// (`/usr/lib/postgresql`).
    pub versioned_roots: Vec<PathBuf>,
}

impl BinSearch {
    /// `PG_BIN_DIR` (if set and not empty), `PATH`, then `/usr/lib/postgresql/*/bin`.
    pub fn from_env() -> BinSearch {
        BinSearch {
            pg_bin_dir: std::env::var_os("PG_BIN_DIR").filter(|v| !v.is_empty()).map(PathBuf::from),
            path: std::env::var_os("PATH"),
            versioned_roots: vec![PathBuf::from("/usr/lib/postgresql")],
        }
    }

    /// The directories holding all [`TOOLS`], in search order, without duplicates.
    fn candidates(&self) -> Vec<PathBuf> {
        if let Some(dir) = &self.pg_bin_dir {
            return if has_tools(dir) { vec![dir.clone()] } else { Vec::new() };
        }
        let mut found: Vec<PathBuf> = Vec::new();
        let from_path = self.path.iter().flat_map(std::env::split_paths).filter_map(|dir| {
            let real = fs::canonicalize(dir.join("initdb")).ok()?;
            real.parent().filter(|d| has_tools(d)).map(Path::to_owned)
        });
        for dir in from_path.chain(self.versioned_roots.iter().flat_map(|root| versioned_bins(root))) {
            if !found.contains(&dir) {
                found.push(dir);
            }
        }
        found
    }

    /// Where the search looks, for messages.
    fn describe(&self) -> String {
        if let Some(dir) = &self.pg_bin_dir {
            return format!("PG_BIN_DIR ({})", dir.display());
        }
        let mut places = vec!["PATH".to_owned()];
        places.extend(self.versioned_roots.iter().map(|root| format!("{}/*/bin", root.display())));
        places.join(", ")
    }
}

/// The first directory of `search` holding `initdb`, `pg_ctl` and `postgres`.
pub fn find_bin_dir(search: &BinSearch) -> Result<PathBuf, ClusterError> {
    search.candidates().into_iter().next().ok_or_else(|| not_found(search))
}

/// Like [`find_bin_dir`], but the first directory whose binaries are of the major version
/// `cluster_version` (the content of the cluster's `PG_VERSION`) that created `data_dir`.
pub(crate) fn find_bin_dir_for(
    search: &BinSearch,
    cluster_version: &str,
    data_dir: &Path,
) -> Result<PathBuf, ClusterError> {
    let candidates = search.candidates();
    if candidates.is_empty() {
        return Err(not_found(search));
    }
    choose_version(candidates, cluster_version, binary_version).map_err(|found| {
        ClusterError::VersionMismatch {
            data_dir: data_dir.to_owned(),
            cluster_version: cluster_version.to_owned(),
            found,
        }
    })
}

/// The first candidate whose version (by `version_of`) matches `wanted`, else a description of
/// what was found.
fn choose_version(
    candidates: Vec<PathBuf>,
    wanted: &str,
    version_of: impl Fn(&Path) -> Option<String>,
) -> Result<PathBuf, String> {
    let mut found = Vec::new();
    for dir in candidates {
        match version_of(&dir) {
            Some(version) if version_matches(&version, wanted) => return Ok(dir),
            Some(version) => found.push(format!("{version} in {}", dir.display())),
            None => found.push(format!("an unknown version in {}", dir.display())),
        }
    }
    Err(found.join(", "))
}

fn not_found(search: &BinSearch) -> ClusterError {
    ClusterError::BinariesNotFound { searched: search.describe() }
}

fn has_tools(dir: &Path) -> bool {
    TOOLS.iter().all(|tool| dir.join(tool).is_file())
}

/// `<root>/<version>/bin` holding the tools, newest version first.
fn versioned_bins(root: &Path) -> Vec<PathBuf> {
    let mut versions: Vec<(Vec<u32>, PathBuf)> = fs::read_dir(root)
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
    versions.into_iter().rev().map(|(_, bin)| bin).collect()
}

/// The version `pg_ctl --version` reports (`15.8`), if it runs.
fn binary_version(dir: &Path) -> Option<String> {
    let out = Command::new(dir.join("pg_ctl"))
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status.success().then(|| parse_version(&String::from_utf8_lossy(&out.stdout))).flatten()
}

/// `pg_ctl (PostgreSQL) 15.8 (Debian 15.8-1)` -> `15.8`.
fn parse_version(output: &str) -> Option<String> {
    let rest = output.split_once("(PostgreSQL) ")?.1;
    let version = rest.split_whitespace().next()?;
    version.starts_with(|c: char| c.is_ascii_digit()).then(|| version.to_owned())
}

/// Whether binaries of `version` (`15.8`, `9.6.24`, `17devel`) run a cluster whose `PG_VERSION`
/// is `cluster_version` (`15`, `9.6`).
fn version_matches(version: &str, cluster_version: &str) -> bool {
    let cluster_version = cluster_version.trim();
    !cluster_version.is_empty()
        && version
            .strip_prefix(cluster_version)
            .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_bin(dir: &Path) {
        fs::create_dir_all(dir).unwrap();
        for tool in TOOLS {
            fs::write(dir.join(tool), "").unwrap();
        }
    }

    #[test]
    fn versions_parse_and_match() {
        assert_eq!(parse_version("pg_ctl (PostgreSQL) 15.8 (Debian 15.8-1.pgdg120+1)\n").unwrap(), "15.8");
        assert_eq!(parse_version("pg_ctl (PostgreSQL) 17devel\n").unwrap(), "17devel");
        assert_eq!(parse_version("something else"), None);
        assert!(version_matches("15.8", "15"));
        assert!(version_matches("15.8", "15\n"));
        assert!(version_matches("9.6.24", "9.6"));
        assert!(version_matches("17devel", "17"));
        assert!(!version_matches("16.1", "15"));
        assert!(!version_matches("150.1", "15"));
        assert!(!version_matches("15.1", ""));
    }

    #[test]
    fn newest_version_first_and_path_resolved() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("lib");
        for version in ["9.6", "15", "16", "notaversion"] {
            fake_bin(&root.join(version).join("bin"));
        }
        fs::create_dir_all(root.join("17")).unwrap(); // no bin: skipped
        let elsewhere = tmp.path().join("opt/pg/bin");
        fake_bin(&elsewhere);
        let on_path = tmp.path().join("usr-local-bin");
        fs::create_dir_all(&on_path).unwrap();
        std::os::unix::fs::symlink(elsewhere.join("initdb"), on_path.join("initdb")).unwrap();
        let empty = tmp.path().join("empty");
        fs::create_dir_all(&empty).unwrap();

        let search = BinSearch {
            pg_bin_dir: None,
            path: Some(std::env::join_paths([&empty, &on_path]).unwrap()),
            versioned_roots: vec![root.clone()],
        };
        let real = |p: PathBuf| fs::canonicalize(p).unwrap();
        let found: Vec<PathBuf> = search.candidates();
        assert_eq!(
            found,
            vec![real(elsewhere.clone()), root.join("16/bin"), root.join("15/bin"), root.join("9.6/bin")]
        );
        assert_eq!(find_bin_dir(&search).unwrap(), real(elsewhere));

        let only_lib = BinSearch { path: None, ..search.clone() };
        assert_eq!(find_bin_dir(&only_lib).unwrap(), root.join("16/bin"));
    }

    #[test]
    fn pg_bin_dir_is_the_only_place_searched() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("lib");
        fake_bin(&root.join("15/bin"));
        let chosen = tmp.path().join("chosen");
        fake_bin(&chosen);
        let mut search =
            BinSearch { pg_bin_dir: Some(chosen.clone()), path: None, versioned_roots: vec![root.clone()] };
        assert_eq!(find_bin_dir(&search).unwrap(), chosen);

        search.pg_bin_dir = Some(tmp.path().join("nothing-here"));
        let e = find_bin_dir(&search).unwrap_err();
        assert_eq!(e.code(), "pgcluster.binaries_not_found");
        assert!(e.to_string().contains("PG_BIN_DIR ("), "{e}");

        search.pg_bin_dir = None;
        search.versioned_roots = vec![tmp.path().join("none")];
        let e = find_bin_dir(&search).unwrap_err();
        assert!(e.to_string().contains("PATH, "), "{e}");
    }

    #[test]
    fn the_cluster_version_picks_the_binaries() {
        let dirs = vec![PathBuf::from("/x/16/bin"), PathBuf::from("/x/15/bin"), PathBuf::from("/y")];
        let version_of = |dir: &Path| match dir.to_str() {
            Some("/x/16/bin") => Some("16.2".to_owned()),
            Some("/x/15/bin") => Some("15.8".to_owned()),
            _ => None,
        };
        assert_eq!(choose_version(dirs.clone(), "15", version_of).unwrap(), PathBuf::from("/x/15/bin"));
        assert_eq!(choose_version(dirs.clone(), "16", version_of).unwrap(), PathBuf::from("/x/16/bin"));
        let found = choose_version(dirs, "14", version_of).unwrap_err();
        assert_eq!(found, "16.2 in /x/16/bin, 15.8 in /x/15/bin, an unknown version in /y");
    }
}
