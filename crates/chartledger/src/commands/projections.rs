//! `chartledger projections verify`.

use std::process::ExitCode;

use anyhow::Context;
use projections::verify::verify_read_models;

use crate::cli::ProjectionsVerifyArgs;

pub fn verify(args: &ProjectionsVerifyArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let (report, elapsed) = rt.block_on(async {
        // One connection holds the snapshot and the rebuilt tables; one reads the ledger ahead.
        let pool = super::connect(&args.database_url, 2).await?;
        let started = std::time::Instant::now();
        let report = verify_read_models(&pool)
            .await
            .map_err(|e| anyhow::anyhow!("{e} [{}]", e.code()))
            .context("the read-model check could not run")?;
        anyhow::Ok((report, started.elapsed()))
    })?;
    println!(
        "generation:     {} (position {}; ledger head {}, {} not applied yet)",
        report.generation,
        report.position,
        report.head,
        report.head.saturating_sub(report.position)
    );
    println!("events folded:  {} ({} skipped: erased or undecodable)", report.position, report.skipped);
    for (table, rows) in &report.rows {
        println!("rows {table:<15} {rows}");
    }
    println!("elapsed:        {:.2} s", elapsed.as_secs_f64());
    match report.first_difference {
        None => {
            println!("read models OK");
            Ok(ExitCode::SUCCESS)
        }
        Some(d) => {
            eprintln!("read models DIFFER from the ledger: {d} [{}]", d.code());
            Ok(ExitCode::FAILURE)
        }
    }
}
