//! `chartledger serve`: the product's main job. Database (given, or an embedded cluster
//! in the data folder), migrations, the ledger key (created on first start), the
//! projections, the bootstrap administrator, then the HTTP(S) server until Ctrl-C.

mod config;
mod telemetry;

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use api::AppState;
use ledger::keys::LedgerSigningKey;
use ledger::note::NoteSigner;
use pgcluster::{Embedded, EmbeddedOptions};
use projections::{Projections, RunnerConfig};
use store::{EventStore, StoreConfig};

use crate::cli::ServeArgs;
pub use config::Settings;

pub fn run(args: &ServeArgs) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(args.config.as_deref())?;
    telemetry::init(settings.json_logs);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(serve(settings, args.database_url.clone()))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(settings: Settings, database_url: Option<String>) -> anyhow::Result<()> {
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("cannot create the data folder {}", settings.data_dir.display()))?;
    let (url, embedded) = match database_url {
        Some(url) => (url, None),
        None => {
            let opts = EmbeddedOptions { data_dir: settings.data_dir.join("postgres"), port: None };
            let pg = Embedded::start(opts).await.map_err(|e| anyhow::anyhow!("embedded PostgreSQL: {e}"))?;
            pg.ensure_database("chartledger").await.map_err(|e| anyhow::anyhow!("{e}"))?;
            tracing::info!(port = pg.port(), "embedded PostgreSQL running");
            let url = pg.url("chartledger");
            (url, Some(pg))
        }
    };
    let result = run_server(&settings, &url).await;
    if let Some(pg) = embedded {
        if let Err(e) = pg.stop().await {
            tracing::error!(code = e.code(), "embedded PostgreSQL did not stop cleanly");
        }
    }
    result
}

async fn run_server(settings: &Settings, url: &str) -> anyhow::Result<()> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(24)
        .connect(url)
        .await
        .context("cannot connect to the database")?;
    let key = load_or_create_key(&settings.key_path(), &settings.origin)?;
    let config = StoreConfig { origin: settings.origin.clone(), ..StoreConfig::default() };
    let store = EventStore::open(pool, key, config).await.context("cannot open the ledger")?;
    let projections =
        Projections::start(store.clone(), RunnerConfig::default()).await.context("projections")?;
    let state = AppState::new(store.clone(), projections.clone(), settings.api.clone());
    let password = std::env::var("CHARTLEDGER_BOOTSTRAP_PASSWORD").ok().filter(|p| !p.is_empty());
    match api::bootstrap::ensure_admin(&state, &settings.bootstrap_admin, password).await {
        Ok(Some(b)) => {
            // Printed once, to the terminal, never to the log.
            println!("bootstrap administrator created (shown once; change it by creating real accounts):");
            println!("  user name: {}", b.username);
            println!("  password:  {}", b.password);
        }
        Ok(None) => {}
        Err(e) => anyhow::bail!("cannot create the bootstrap administrator [{}]", e.code()),
    }
    let sweeper = tokio::spawn(sweep(state.clone()));
    let tls = settings.api.tls_cert.is_some();
    let app = api::http::router(state, tls).into_make_service_with_connect_info::<SocketAddr>();
    let listen = settings.api.listen;
    let served = match (&settings.api.tls_cert, &settings.api.tls_key) {
        (Some(cert), Some(key)) => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                .await
                .context("cannot load the TLS certificate and key")?;
            let handle = axum_server::Handle::new();
            let h = handle.clone();
            tokio::spawn(async move {
                shutdown_signal().await;
                h.graceful_shutdown(Some(Duration::from_secs(10)));
            });
            println!("listening on https://{listen}");
            axum_server::bind_rustls(listen, tls).handle(handle).serve(app).await.context("server")
        }
        _ => {
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
            tracing::warn!(code = e.code(), "session sweep failed");
        }
    }
}

async fn shutdown_signal() {
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("shutting down");
}

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
