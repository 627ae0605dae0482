//! `chartledger checkpoint verify`.

use std::io::Read;
use std::process::ExitCode;

use anyhow::Context;
use ledger::checkpoint::Checkpoint;
use ledger::note::NoteVerifier;
use ledger::Timestamp;

use crate::cli::VerifyArgs;

/// Largest note accepted from a file (a checkpoint is a few hundred bytes).
const MAX_NOTE: u64 = 1 << 20;

pub fn verify(args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let verifiers = args
        .keys
        .iter()
        .map(|k| NoteVerifier::from_vkey(k.trim()).map_err(|e| anyhow::anyhow!("invalid --key: {e}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut note = Vec::new();
    if args.file.as_os_str() == "-" {
        std::io::stdin().take(MAX_NOTE + 1).read_to_end(&mut note)?;
    } else {
        std::fs::File::open(&args.file)
            .and_then(|f| f.take(MAX_NOTE + 1).read_to_end(&mut note))
            .with_context(|| format!("cannot read {}", args.file.display()))?;
    }
    match Checkpoint::open(&note, &verifiers) {
        Ok((cp, verified)) => {
            println!("checkpoint verified");
            println!("origin:      {}", cp.origin);
            println!("tree size:   {}", cp.size);
            println!("root hash:   {}", hex::encode(cp.root_hash));
            if let Ok(Some(t)) = cp.timestamp_micros() {
                println!("taken at:    {}", Timestamp::from_micros(t));
            }
            println!("signed by:   {}", verified.verified_by.join(", "));
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("checkpoint REJECTED: {e} [{}]", e.code());
            Ok(ExitCode::FAILURE)
        }
    }
}
