//! `chartledger serve` settings: a TOML file, then `CHARTLEDGER_*` environment variables.

use std::path::{Path, PathBuf};

use anyhow::Context;
use api::ApiConfig;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Where the embedded PostgreSQL cluster and the key file live.
    pub data_dir: PathBuf,
    /// The ledger signing key (a C2SP note key file); created on first start.
    pub key_file: Option<PathBuf>,
    /// The checkpoint origin line and key name.
    pub origin: String,
    /// The bootstrap administrator's user name.
    pub bootstrap_admin: String,
    /// Log as JSON lines (for log shippers) instead of text.
    pub json_logs: bool,
    /// Apply the migrations at start. Turn off where the server's database role is not
    /// the schema owner and migrations run separately (deploy/README.md).
    pub run_migrations: bool,
    pub api: ApiConfig,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("chartledger-data"),
            key_file: None,
            origin: "chartledger.local/ledger".into(),
            bootstrap_admin: "admin".into(),
            json_logs: false,
            run_migrations: true,
            api: ApiConfig::default(),
        }
    }
}

impl Settings {
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let mut s = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("invalid configuration in {}", path.display()))?
            }
            None => Settings::default(),
        };
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        if let Some(v) = var("CHARTLEDGER_DATA_DIR") {
            s.data_dir = v.into();
        }
        if let Some(v) = var("CHARTLEDGER_KEY_FILE") {
            s.key_file = Some(v.into());
        }
        if let Some(v) = var("CHARTLEDGER_ORIGIN") {
            s.origin = v;
        }
        if let Some(v) = var("CHARTLEDGER_LISTEN") {
            s.api.listen = v.parse().context("CHARTLEDGER_LISTEN must be an address like 127.0.0.1:8080")?;
        }
        if let Some(v) = var("CHARTLEDGER_TLS_CERT") {
            s.api.tls_cert = Some(v.into());
        }
        if let Some(v) = var("CHARTLEDGER_TLS_KEY") {
            s.api.tls_key = Some(v.into());
        }
        if let Some(v) = var("CHARTLEDGER_IDLE_TIMEOUT_SECS") {
            s.api.idle_timeout =
                std::time::Duration::from_secs(v.parse().context("CHARTLEDGER_IDLE_TIMEOUT_SECS")?);
        }
        if let Some(v) = var("CHARTLEDGER_JSON_LOGS") {
            s.json_logs = v == "1" || v == "true";
        }
        if let Some(v) = var("CHARTLEDGER_RUN_MIGRATIONS") {
            s.run_migrations = !(v == "0" || v == "false");
        }
        if s.api.tls_cert.is_some() != s.api.tls_key.is_some() {
            anyhow::bail!("give both tls_cert and tls_key, or neither");
        }
        Ok(s)
    }

    pub fn key_path(&self) -> PathBuf {
        self.key_file.clone().unwrap_or_else(|| self.data_dir.join("ledger.key"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example `chartledger.toml` of the README: the first `toml` block under
    /// `## Configure`.
    fn readme_example() -> String {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
        let (_, section) = readme.split_once("\n## Configure\n").expect("README has a Configure section");
        let (_, block) = section.split_once("```toml\n").expect("Configure has a toml block");
        let (block, _) = block.split_once("```").unwrap();
        block.to_owned()
    }

    /// The settings a line sets or would set (`name = …` or `# name = …`), and tables.
    fn named(line: &str) -> Option<&str> {
        let line = line.strip_prefix("# ").unwrap_or(line).trim();
        if let Some(table) = line.strip_prefix('[') {
            return table.strip_suffix(']');
        }
        let (name, _) = line.split_once(" = ")?;
        name.chars().all(|c| c.is_ascii_lowercase() || c == '_').then_some(name)
    }

    /// The field names in a `{:?}` of nested structs (`name: value` after `{ ` or `, `).
    fn debug_fields(debug: &str) -> Vec<&str> {
        debug
            .split(['{', ','])
            .filter_map(|part| part.strip_prefix(' ')?.split_once(": ").map(|(name, _)| name))
            .filter(|name| !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
            .collect()
    }

    #[test]
    fn the_readme_example_is_the_defaults() {
        let example: Settings = toml::from_str(&readme_example()).unwrap();
        assert_eq!(format!("{example:#?}"), format!("{:#?}", Settings::default()));
    }

    #[test]
    fn the_readme_example_names_every_setting() {
        let block = readme_example();
        let names: Vec<&str> = block.lines().filter_map(named).collect();
        let default = format!("{:?}", Settings::default());
        let fields = debug_fields(&default);
        assert!(fields.len() > 20, "{fields:?}");
        let missing: Vec<&&str> = fields.iter().filter(|f| !names.contains(f)).collect();
        assert!(missing.is_empty(), "settings missing from the README's example: {missing:?}");
        // A commented-out line is an optional setting whose default is none, and it
        // must be a valid setting too.
        let commented: Vec<&str> = block.lines().filter(|l| l.starts_with("# ")).filter_map(named).collect();
        for name in &commented {
            assert!(default.contains(&format!("{name}: None")), "{name} is commented out but has a default");
        }
        let uncommented: String = block
            .lines()
            .map(|l| if l.starts_with("# ") && named(l).is_some() { &l[2..] } else { l })
            .collect::<Vec<_>>()
            .join("\n");
        let all: Result<Settings, _> = toml::from_str(&uncommented);
        assert!(all.is_ok(), "the example with every line uncommented: {all:?}");
    }
}
