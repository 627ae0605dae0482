//! `chartledger keys generate`.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use base64::Engine;
use ledger::keys::LedgerSigningKey;

use crate::cli::GenerateArgs;

pub fn generate(args: &GenerateArgs) -> anyhow::Result<ExitCode> {
    let key = LedgerSigningKey::generate(&args.name, &mut rand_core::OsRng)
        .context("invalid key name: use printable characters without spaces or '+'")?;
    let signer = key.note_signer()?;
    let skey = signer.to_skey();
    write_private(&args.out, skey.as_bytes())
        .with_context(|| format!("cannot create key file {}", args.out.display()))?;
    let vk = key.verifying_key();
    println!("key file:    {}", args.out.display());
    println!("key id:      {}", key.key_id());
    println!("public key:  {}", base64::engine::general_purpose::STANDARD.encode(vk.as_bytes()));
    println!("verifier:    {}", signer.verifier().to_vkey());
    Ok(ExitCode::SUCCESS)
}

/// Create `path` with mode 0600 (refusing to overwrite) and write `bytes` and a newline.
pub(crate) fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.write_all(b"\n")?;
    f.sync_all()
}
