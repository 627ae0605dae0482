//! `chartledger serve`: the product's main job. Database (given, or an embedded cluster
//! in the data folder, where the server connects as a role that can neither alter the ledger
//! nor write the read models: [`database`]), migrations, the ledger key (created on first
//! start), the projections, the bootstrap administrator, then the HTTP(S) server until Ctrl-C.

mod config;
mod database;
mod demo;
mod telemetry;

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use api::AppState;
use ledger::keys::LedgerSigningKey;
use ledger::note::NoteSigner;
use projections::{Projections, RunnerConfig};
use store::{EventStore, StoreConfig};

use crate::cli::ServeArgs;
pub use config::Settings;

pub fn run(args: &ServeArgs) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(args.config.as_deref())?;
    telemetry::init(settings.json_logs);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(serve(settings, args.database_url.clone(), args.demo))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(settings: Settings, database_url: Option<String>, demo: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("cannot create the data folder {}", settings.data_dir.display()))?;
    let mut db = match database_url {
        Some(url) => database::Database::from_url(&url, settings.run_migrations)?,
        None => database::Database::embedded(settings.data_dir.join("postgres")).await?,
    };
    let result = run_server(&settings, &db, demo).await;
    if let Some(pg) = db.embedded.take() {
        if let Err(e) = pg.stop().await {
            tracing::error!(code = e.code(), "embedded PostgreSQL did not stop cleanly");
        }
    }
    result
}

async fn run_server(settings: &Settings, db: &database::Database, demo: bool) -> anyhow::Result<()> {
    // A bad certificate or key stops the start before anything is written.
    let tls = match (&settings.api.tls_cert, &settings.api.tls_key) {
        (Some(cert), Some(key)) => Some(tls_config(cert, key)?),
        _ => None,
    };
    let pool = api::pool_options(24)
        .connect_with(db.server.clone())
        .await
        .context("cannot connect to the database")?;
    let key = load_or_create_key(&settings.key_path(), &settings.origin)?;
    let config = StoreConfig {
        origin: settings.origin.clone(),
        run_migrations: db.run_migrations,
        ..StoreConfig::default()
    };
    let store = EventStore::open(pool, key, config).await.context("cannot open the ledger")?;
    let projections = match &db.projector {
        Some(options) => {
            let pool = api::pool_options(database::PROJECTOR_CONNECTIONS)
                .connect_with(options.clone())
                .await
                .context("cannot connect to the database as the projection runner")?;
            Projections::start_with_pool(store.clone(), pool, RunnerConfig::default()).await
        }
        None => Projections::start(store.clone(), RunnerConfig::default()).await,
    }
    .context("projections")?;
    let state = AppState::new(store.clone(), projections.clone(), settings.api.clone());
    let password = std::env::var("CHARTLEDGER_BOOTSTRAP_PASSWORD").ok().filter(|p| !p.is_empty());
    let first_start = match api::bootstrap::ensure_admin(&state, &settings.bootstrap_admin, password).await {
        Ok(Some(b)) => {
            // Printed once, to the terminal, never to the log.
            println!("bootstrap administrator created (shown once; the first login enrols TOTP and replaces the password):");
            println!("  user name: {}", b.username);
            println!("  password:  {}", b.password);
            true
        }
        Ok(None) => false,
        Err(e) => anyhow::bail!(
            "cannot create the bootstrap administrator [{}]: {}",
            e.code(),
            e.detail().unwrap_or("-")
        ),
    };
    if demo {
        if first_start {
            let seeded = demo::seed(&state).await?;
            seeded.print();
        } else {
            // Synthetic data never goes into an installation that is already in use.
            println!("demo: not seeded (demo data is seeded on the first start of a new installation only)");
        }
    }
    let sweeper = tokio::spawn(sweep(state.clone()));
    let app = api::http::router(state, tls.is_some()).into_make_service_with_connect_info::<SocketAddr>();
    let listen = settings.api.listen;
    let served = match tls {
        Some(tls) => {
            let listener =
                std::net::TcpListener::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
            listener.set_nonblocking(true)?;
            let handle = axum_server::Handle::new();
            let h = handle.clone();
            tokio::spawn(async move {
                shutdown_signal().await;
                h.graceful_shutdown(Some(Duration::from_secs(10)));
            });
            println!("listening on https://{}", listener.local_addr()?);
            axum_server::from_tcp_rustls(listener, tls).handle(handle).serve(app).await.context("server")
        }
        None => {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            println!("listening on http://{}", listener.local_addr()?);
            axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await.context("server")
        }
    };
    sweeper.abort();
    projections.shutdown().await;
    tracing::info!("stopped");
    served
}

/// Automatic logoff of sessions nobody comes back to.
async fn sweep(state: AppState) {
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    loop {
        tick.tick().await;
        if let Err(e) = state.auth.sweep().await {
            tracing::warn!(code = e.code(), detail = e.detail().unwrap_or("-"), "session sweep failed");
        }
    }
}

async fn shutdown_signal() {
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("shutting down");
}

/// The TLS settings: TLS 1.3 and 1.2 only (nothing older), the ring provider, HTTP/2 and
/// HTTP/1.1 by ALPN, and the certificate chain and private key from PEM files.
fn tls_config(cert: &Path, key: &Path) -> anyhow::Result<axum_server::tls_rustls::RustlsConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("cannot read the TLS certificate {}: {e}", cert.display()))?;
    if chain.is_empty() {
        anyhow::bail!("no certificate in {}", cert.display());
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| anyhow::anyhow!("cannot read the TLS private key {}: {e}", key.display()))?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(TLS_VERSIONS)
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .context("the TLS certificate and private key do not fit together")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(axum_server::tls_rustls::RustlsConfig::from_config(std::sync::Arc::new(config)))
}

/// TLS 1.3, and 1.2 for older clients; never anything older.
pub const TLS_VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

fn load_or_create_key(path: &Path, origin: &str) -> anyhow::Result<LedgerSigningKey> {
    if path.exists() {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the key file {}", path.display()))?;
        let signer =
            NoteSigner::from_skey(text.trim()).map_err(|e| anyhow::anyhow!("invalid key file: {e}"))?;
        return LedgerSigningKey::new(signer.name(), signer.signing_key().clone())
            .map_err(|e| anyhow::anyhow!("{e}"));
    }
    let key =
        LedgerSigningKey::generate(origin, &mut rand_core::OsRng).map_err(|e| anyhow::anyhow!("{e}"))?;
    let skey = key.note_signer()?.to_skey();
    crate::commands::keys::write_private(path, skey.as_bytes())
        .with_context(|| format!("cannot create the key file {}", path.display()))?;
    tracing::info!(key_id = %key.key_id(), "ledger signing key created");
    Ok(key)
}
