//! First start: the bootstrap administrator, so that a new installation can be used.

use std::collections::BTreeSet;

use domain::events::{DomainEvent, Role, UserCreated};
use ledger::Actor;
use sqlx::Row;
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};
use crate::AppState;

/// The bootstrap administrator's one-time credentials. (`Debug` leaves the password out.)
pub struct Bootstrap {
    pub user_id: Uuid,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Bootstrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bootstrap")
            .field("user_id", &self.user_id)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// A random password: 24 characters from an unambiguous alphabet (~139 bits).
pub fn random_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut bytes = [0u8; 24];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
    bytes.iter().map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char).collect()
}

/// Create the administrator `username` when no account exists yet. Returns the
/// credentials (to be shown once) or `None` when accounts already exist. The first
/// login must enrol a second factor and replace the password; the account should be
/// deactivated once the clinic's own administrators exist.
pub async fn ensure_admin(
    state: &AppState,
    username: &str,
    password: Option<String>,
) -> ApiResult<Option<Bootstrap>> {
    let row = sqlx::query("SELECT count(*) AS n FROM auth_credentials").fetch_one(state.store.pool()).await?;
    let n: i64 = row.try_get("n")?;
    if n > 0 {
        return Ok(None);
    }
    let password = password.unwrap_or_else(random_password);
    let user_id = Uuid::now_v7();
    let event = UserCreated {
        user_id,
        username: username.to_owned(),
        display_name: "Bootstrap administrator".into(),
        roles: BTreeSet::from([Role::Administrator]),
        patient_id: None,
    };
    event.validate().map_err(|e| ApiError::Refused { code: e.code() })?;
    state.auth.set_credentials(user_id, username, &password, true).await?;
    let done =
        state.records.record_system(Actor::system(), Uuid::now_v7(), DomainEvent::UserCreated(event)).await?;
    state.projections.wait_for(done.position, state.config.max_wait).await?;
    Ok(Some(Bootstrap { user_id, username: username.to_owned(), password }))
}
