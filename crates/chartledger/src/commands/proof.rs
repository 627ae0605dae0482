//! `chartledger proof export` and `chartledger verify` (record proofs, schema/proof-format.md).

use std::io::Read;
use std::process::ExitCode;

use anyhow::Context;
use ledger::note::NoteVerifier;

use crate::cli::{ProofExportArgs, ProofVerifyArgs};

/// Largest bundle accepted from a file.
const MAX_BUNDLE: u64 = ::proof::MAX_BUNDLE_LEN as u64;

pub fn export(args: &ProofExportArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = rt.block_on(async {
        let pool = super::connect(&args.database_url, 2).await?;
        let bundle = match (args.event, args.entry, args.patient) {
            (Some(event), _, _) => store::proofs::event_bundle(&pool, event).await,
            (None, Some(entry), Some(patient)) => store::proofs::entry_bundle(&pool, patient, entry).await,
            _ => anyhow::bail!("give --entry with --patient, or --event"),
        };
        let bundle = match (bundle, args.consistent_from) {
            (Ok(mut b), Some(old)) => store::proofs::add_consistency(&pool, &mut b, old).await.map(|()| b),
            (other, _) => other,
        };
        anyhow::Ok(bundle)
    })?;
    match result {
        Ok(bundle) => {
            println!("{}", serde_json::to_string_pretty(&bundle)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("proof export failed: {e} [{}]", e.code());
            Ok(ExitCode::FAILURE)
        }
    }
}

fn read_limited(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    if path.as_os_str() == "-" {
        std::io::stdin().take(MAX_BUNDLE + 1).read_to_end(&mut bytes)?;
    } else {
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_BUNDLE + 1).read_to_end(&mut bytes))
            .with_context(|| format!("cannot read {}", path.display()))?;
    }
    Ok(bytes)
}

fn trusted_keys(args: &ProofVerifyArgs) -> anyhow::Result<Vec<NoteVerifier>> {
    let mut keys = super::parse_trusted_keys(&args.trusted_keys)?;
    if let Some(path) = &args.trusted_keys_file {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        keys.extend(
            ::proof::parse_trusted_keys(&text).map_err(|e| anyhow::anyhow!("invalid --trusted-keys: {e}"))?,
        );
    }
    if keys.is_empty() {
        anyhow::bail!("give at least one --trusted-key or --trusted-keys file");
    }
    Ok(keys)
}

pub fn verify(args: &ProofVerifyArgs) -> anyhow::Result<ExitCode> {
    let trusted = trusted_keys(args)?;
    let bytes = read_limited(&args.file)?;
    let v = match ::proof::verify_json(&bytes, &trusted) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("proof REJECTED at {}: {} [{}]", e.location, e.kind, e.code());
            return Ok(ExitCode::FAILURE);
        }
    };
    println!("proof VERIFIED");
    match &v.subject {
        ::proof::Subject::Entry { patient_id, entry_id } => {
            println!("subject:     entry {entry_id} of patient {patient_id}, {} version(s)", v.events.len())
        }
        ::proof::Subject::Event { event_id } => println!("subject:     event {event_id}"),
    }
    println!("log:         {}", v.origin);
    println!("checkpoint:  size {}, root {}", v.checkpoint_size, hex::encode(v.checkpoint_root));
    if let Some(t) = v.checkpoint_time {
        println!("taken at:    {t}");
    }
    let trust = match v.trust {
        ::proof::Trust::Direct => "a trusted key",
        ::proof::Trust::Anchored => "a key of the registry anchored by a trusted key",
    };
    println!("signed by:   {} ({trust})", v.signed_by.join(", "));
    if let Some((size, root)) = v.consistent_with {
        println!("extends:     checkpoint of size {size}, root {}", hex::encode(root));
    }
    for (i, e) in v.events.iter().enumerate() {
        println!("version {}:   {} (revision {} of {})", i + 1, e.event_type, e.stream_revision, e.stream_id);
        println!("  recorded:  {}", e.recorded_at);
        println!("  author:    {} ({})", e.actor_user_id, e.actor_role);
        match e.position {
            Some(p) => println!("  event:     {} at position {p}", e.event_id),
            None => {
                println!("  event:     {} (in the log through its hash link to the next version)", e.event_id)
            }
        }
        println!("  signed by: {} (key {})", e.key_name, e.key_id);
        match &e.payload {
            None => println!("  content:   (erased)"),
            Some(p) => println!("  content:   {}", String::from_utf8_lossy(p)),
        }
    }
    if v.chain_len > 0 {
        println!(
            "linked by:   {} other event envelope(s) of the stream (content not disclosed)",
            v.chain_len
        );
    }
    let completeness = if v.keys_complete {
        "the whole registry as of the checkpoint"
    } else {
        "the checkpoint does not name the registry head: later retirements cannot be excluded"
    };
    println!("keys:        {} registered in $keys ({completeness})", v.keys.len());
    println!("format:      {}", v.format);
    Ok(ExitCode::SUCCESS)
}
