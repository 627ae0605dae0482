//! The command line, as clap types.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "chartledger",
    version,
    about = "Event-sourced clinical record with signed, verifiable history"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (GraphQL API, projections, checkpoints). With no DATABASE_URL it
    /// runs its own PostgreSQL in the data folder.
    Serve(ServeArgs),
    /// Manage ledger signing keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Work with signed checkpoints (C2SP tlog-checkpoint notes).
    Checkpoint {
        #[command(subcommand)]
        command: CheckpointCommand,
    },
    /// Work with the ledger in PostgreSQL.
    Ledger {
        #[command(subcommand)]
        command: LedgerCommand,
    },
    /// Work with the read models (projections) in PostgreSQL.
    Projections {
        #[command(subcommand)]
        command: ProjectionsCommand,
    },
    /// Record proofs for third parties (schema/proof-format.md).
    Proof {
        #[command(subcommand)]
        command: ProofCommand,
    },
    /// Verify a record proof bundle offline (no database, no network): print what it proves
    /// and exit 0, or name the first failure and exit 1.
    Verify(ProofVerifyArgs),
}

#[derive(Debug, Subcommand)]
pub enum ProofCommand {
    /// Print the proof bundle (JSON) of a clinical entry (all its versions) or of one event,
    /// against the latest signed checkpoint.
    Export(ProofExportArgs),
}

#[derive(Debug, Args)]
pub struct ProofExportArgs {
    /// PostgreSQL connection URL of the ledger database (read only).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// The entry id (of its `entry.recorded`); needs --patient.
    #[arg(long, requires = "patient", conflicts_with = "event", required_unless_present = "event")]
    pub entry: Option<uuid::Uuid>,
    /// The patient whose record holds the entry.
    #[arg(long)]
    pub patient: Option<uuid::Uuid>,
    /// Prove one event instead of an entry.
    #[arg(long, conflicts_with_all = ["entry", "patient"])]
    pub event: Option<uuid::Uuid>,
    /// Add a consistency proof from the stored checkpoint of this tree size.
    #[arg(long)]
    pub consistent_from: Option<u64>,
}

#[derive(Debug, Args)]
pub struct ProofVerifyArgs {
    /// The proof bundle (`-` for standard input).
    pub file: PathBuf,
    /// A trusted key (verifier key `name+hash+base64`, as `keys generate` prints). Repeatable.
    #[arg(long = "trusted-key")]
    pub trusted_keys: Vec<String>,
    /// A file of trusted keys, one per line (`#` comments and blank lines ignored).
    #[arg(long = "trusted-keys")]
    pub trusted_keys_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// Re-check every signature, hash link, payload commitment, key validity, Merkle node
    /// and signed checkpoint; exit non-zero at the first bad position.
    Verify(LedgerVerifyArgs),
}

#[derive(Debug, Args)]
pub struct LedgerVerifyArgs {
    /// PostgreSQL connection URL of the ledger database.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// A trusted ledger key (verifier key `name+hash+base64`); the registry must contain one. Repeatable.
    #[arg(long = "trusted-key")]
    pub trusted_keys: Vec<String>,
    /// Start after this trusted checkpoint (tree size) instead of position 0.
    #[arg(long)]
    pub from_checkpoint: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum ProjectionsCommand {
    /// Fold the ledger again and compare every read-model table of the active generation
    /// with the result, as of the generation's position: print OK with counts and exit 0,
    /// or name the first difference (table, key, column; never a value) and exit 1.
    Verify(ProjectionsVerifyArgs),
}

#[derive(Debug, Args)]
pub struct ProjectionsVerifyArgs {
    /// PostgreSQL connection URL of the database (needs read access and temporary tables).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Generate an Ed25519 ledger signing key and write it to a file readable only by you.
    Generate(GenerateArgs),
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Where to write the private key (created with mode 0600; never overwritten).
    #[arg(long, short = 'o', default_value = "chartledger-ledger.key")]
    pub out: PathBuf,
    /// Key name, used in checkpoint signature lines: conventionally the log origin.
    #[arg(long, default_value = "chartledger.local/ledger")]
    pub name: String,
}

#[derive(Debug, Subcommand)]
pub enum CheckpointCommand {
    /// Verify a signed checkpoint note against one or more trusted verifier keys.
    Verify(VerifyArgs),
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The signed checkpoint note (`-` for standard input).
    pub file: PathBuf,
    /// A trusted verifier key (`name+hash+base64`, as printed by `keys generate`). Repeatable.
    #[arg(long = "key", required = true)]
    pub keys: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Configuration file (TOML); `CHARTLEDGER_*` variables override it.
    #[arg(long, env = "CHARTLEDGER_CONFIG")]
    pub config: Option<PathBuf>,
    /// An existing PostgreSQL database; unset: an embedded cluster in the data folder.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Seed synthetic demo data on the first start of a new installation: staff of every
    /// role and a patient account (passwords shown once), ~50 synthetic patients with
    /// their history. Never real patients; never into an installation already in use.
    #[arg(long)]
    pub demo: bool,
}
