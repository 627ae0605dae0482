//! One module per command group.

pub mod checkpoint;
pub mod keys;
pub mod ledger;
pub mod projections;
pub mod proof;

use ::ledger::note::NoteVerifier;
use anyhow::Context;

/// A small pool on the ledger database, for the offline tools.
async fn connect(database_url: &str, max_connections: u32) -> anyhow::Result<sqlx::PgPool> {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(max_connections)
        .connect(database_url)
        .await
        .context("cannot connect to the ledger database")
}

/// `--trusted-key` values (C2SP note verifier keys).
fn parse_trusted_keys(keys: &[String]) -> anyhow::Result<Vec<NoteVerifier>> {
    keys.iter()
        .map(|k| NoteVerifier::from_vkey(k.trim()).map_err(|e| anyhow::anyhow!("invalid --trusted-key: {e}")))
        .collect()
}
