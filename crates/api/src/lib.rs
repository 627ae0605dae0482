//! Chartledger's server: GraphQL (async-graphql) on axum, with authentication (argon2id
//! passwords, TOTP, bearer sessions with idle and absolute timeouts, lock-out), one
//! access policy ([`policy`]) enforced in one place ([`access`]), consent filtering, and
//! an access event for every PHI read, written before the response leaves (fail closed).
//!
//! Dependency direction: `api` uses `projections` (read models, command service),
//! `store` and `domain`; the binary wires it up.

pub mod access;
pub mod auth;
pub mod bootstrap;
pub mod config;
pub mod error;
pub mod graphql;
pub mod http;
pub mod metrics;
pub mod policy;

use std::sync::Arc;

use projections::{Projections, ReadModels, Records};
use store::EventStore;

pub use config::ApiConfig;
pub use error::ApiError;

/// The database pool the server should be given: at most `max_connections`, and no
/// round trip to test a connection each time it is taken from the pool (sqlx's
/// `test_before_acquire`, on by default, doubles the round trips of a one-query read;
/// sqlx still checks each connection when it is given back). A connection that broke
/// while idle fails the one request that takes it (with a database error: fail closed)
/// and is then closed by the pool.
pub fn pool_options(max_connections: u32) -> sqlx::postgres::PgPoolOptions {
    sqlx::postgres::PgPoolOptions::new().max_connections(max_connections).test_before_acquire(false)
}

/// Everything a request handler needs; cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    pub store: EventStore,
    pub records: Records,
    pub read: ReadModels,
    pub projections: Projections,
    pub auth: auth::Auth,
    pub config: Arc<ApiConfig>,
    pub metrics: metrics::Metrics,
}

impl AppState {
    pub fn new(store: EventStore, projections: Projections, config: ApiConfig) -> Self {
        let config = Arc::new(config);
        let records = Records::new(store.clone());
        let read = ReadModels::with_chart_cache(
            store.pool().clone(),
            config.chart_cache_mib.saturating_mul(1 << 20),
        );
        let auth = auth::Auth::new(store.pool().clone(), records.clone(), config.clone());
        Self { store, records, read, projections, auth, config, metrics: metrics::Metrics::new() }
    }
}
