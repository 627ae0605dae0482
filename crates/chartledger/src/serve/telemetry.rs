//! Logging, set up in one place. Spans and events carry ids and codes only; the filter
//! comes from `RUST_LOG` (default `info`).

use tracing_subscriber::EnvFilter;

pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_target(true).with_writer(std::io::stderr);
    // A second initialisation (tests) is not an error worth stopping for.
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}
