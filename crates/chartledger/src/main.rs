//! `chartledger`: the one binary. Parses the command line and hands off to a command.

mod cli;
mod commands;
mod serve;

use std::process::ExitCode;

use clap::Parser;

/// mimalloc rather than the system allocator: a GraphQL response is hundreds of small
/// allocations, and glibc's malloc was a tenth of the server's CPU (ARCHITECTURE.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let result = match cli.command {
        cli::Command::Serve(args) => serve::run(&args),
        cli::Command::Keys { command: cli::KeysCommand::Generate(args) } => commands::keys::generate(&args),
        cli::Command::Checkpoint { command: cli::CheckpointCommand::Verify(args) } => {
            commands::checkpoint::verify(&args)
        }
        cli::Command::Ledger { command: cli::LedgerCommand::Verify(args) } => commands::ledger::verify(&args),
        cli::Command::Projections { command: cli::ProjectionsCommand::Verify(args) } => {
            commands::projections::verify(&args)
        }
        cli::Command::Proof { command: cli::ProofCommand::Export(args) } => commands::proof::export(&args),
        cli::Command::Verify(args) => commands::proof::verify(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // Errors here are about files and arguments, never record content.
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
