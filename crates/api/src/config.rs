//! Server settings, read by the binary from a TOML file and `CHARTLEDGER_*` variables.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use domain::events::Role;
use serde::Deserialize;

/// The API's settings. Every field has a safe default.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    /// Automatic logoff after this much inactivity (HIPAA 164.312(a)(2)(iii)).
    #[serde(with = "secs")]
    pub idle_timeout: Duration,
    /// A session ends this long after login, active or not.
    #[serde(with = "secs")]
    pub absolute_timeout: Duration,
    /// Roles that must pass a second factor (TOTP) before any other operation: by
    /// default every role (administrators see access logs, patients their record).
    pub mfa_required_roles: BTreeSet<Role>,
    /// Failed logins in a row before the account locks...
    pub lockout_threshold: u32,
    /// ...for this long.
    #[serde(with = "secs")]
    pub lockout_duration: Duration,
    /// How long a break-glass grant lasts.
    #[serde(with = "secs")]
    pub break_glass_duration: Duration,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Longest a request may take.
    #[serde(with = "secs")]
    pub request_timeout: Duration,
    /// Longest a read may wait for the projections (`minPosition`).
    #[serde(with = "secs")]
    pub max_wait: Duration,
    pub max_depth: usize,
    pub max_complexity: usize,
    /// TLS certificate chain and private key (PEM). Both or neither.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Trust `X-Forwarded-For` for the client address (behind a reverse proxy only).
    pub trust_forwarded_for: bool,
    /// Serve GraphiQL at `/` (development only: its scripts come from a public CDN, see
    /// the README). Turns introspection on too.
    pub graphiql: bool,
    /// Answer introspection queries (`__schema`, `__type`). Off in production: the
    /// committed SDL is the schema's documentation.
    pub introspection: bool,
    /// Serve `/metrics` (Prometheus). Off by default; where on, reach it only from the
    /// monitoring network (it needs no login and shows request counts and timings).
    pub metrics: bool,
    /// Memory for current charts kept between reads, in MiB (about; 0 keeps none). Each
    /// read still checks its chart against the read model (`ReadModels::current_chart`).
    pub chart_cache_mib: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            idle_timeout: Duration::from_secs(15 * 60),
            absolute_timeout: Duration::from_secs(12 * 3600),
            mfa_required_roles: Role::ALL.into_iter().collect(),
            lockout_threshold: 5,
            lockout_duration: Duration::from_secs(15 * 60),
            break_glass_duration: Duration::from_secs(3600),
            max_body_bytes: 256 * 1024,
            request_timeout: Duration::from_secs(30),
            max_wait: Duration::from_secs(10),
            max_depth: 12,
            max_complexity: 2000,
            tls_cert: None,
            tls_key: None,
            trust_forwarded_for: false,
            graphiql: false,
            introspection: false,
            metrics: false,
            chart_cache_mib: 256,
        }
    }
}

mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_secs(u64::deserialize(d)?))
    }
}
