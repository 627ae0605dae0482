//! `chartledger ledger verify`.

use std::process::ExitCode;

use anyhow::Context;
use store::verify::{verify_ledger, VerifyOptions};

use crate::cli::LedgerVerifyArgs;

pub fn verify(args: &LedgerVerifyArgs) -> anyhow::Result<ExitCode> {
    let trusted_keys =
        super::parse_trusted_keys(&args.trusted_keys)?.iter().map(|v| *v.verifying_key()).collect();
    let opts = VerifyOptions { trusted_keys, from_checkpoint: args.from_checkpoint, chunk: None };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = rt.block_on(async {
        let pool = super::connect(&args.database_url, 4).await?;
        let started = std::time::Instant::now();
        let report = verify_ledger(&pool, &opts).await.context("verification could not run")?;
        anyhow::Ok((report, started.elapsed()))
    })?;
    let (report, elapsed) = report;
    let rate = report.events_checked as f64 / elapsed.as_secs_f64().max(1e-9);
    println!("events checked:      {} (from position {})", report.events_checked, report.from);
    println!("checkpoints checked: {}", report.checkpoints_checked);
    match report.latest_checkpoint {
        Some(s) => {
            println!("latest checkpoint:   size {s} ({} events after it)", report.head.saturating_sub(s))
        }
        None => println!("latest checkpoint:   none"),
    }
    println!("elapsed:             {:.2} s ({rate:.0} events/s)", elapsed.as_secs_f64());
    match report.first_failure {
        None => {
            println!("ledger OK");
            Ok(ExitCode::SUCCESS)
        }
        Some(f) => {
            eprintln!("ledger FAILED at position {}: {} [{}]", f.position, f.kind, f.kind.code());
            Ok(ExitCode::FAILURE)
        }
    }
}
