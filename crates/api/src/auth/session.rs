//! Sessions: bearer tokens (only their SHA-256 is stored), ended after inactivity
//! (automatic logoff) or an absolute lifetime, with a short-lived cache of look-ups so
//! that a burst of requests does not read the session row each time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::Row;
use time::OffsetDateTime;
use uuid::Uuid;

use super::*;

/// How long a session looked up in the database is trusted without looking again. A
/// session this server ends, verifies or changes is forgotten at once; one ended by
/// another server sharing the database is refused here at most this long after.
pub const SESSION_RECHECK: Duration = Duration::from_secs(1);

/// Sessions looked up within the last [`SESSION_RECHECK`], by token hash.
#[derive(Debug, Default)]
pub(super) struct SessionCache {
    map: Mutex<HashMap<Vec<u8>, CachedSession>>,
    /// Bumped by every [`SessionCache::forget`]: a look-up that began before a session
    /// was changed must not put back what it read (it may be the state before the change).
    epoch: AtomicU64,
}

#[derive(Clone, Debug)]
pub(super) struct CachedSession {
    principal: Principal,
    last_seen: OffsetDateTime,
    expires_at: OffsetDateTime,
    checked: Instant,
}

/// More sessions than this are pruned to those still fresh.
const SESSION_CACHE_MAX: usize = 10_000;

impl SessionCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, CachedSession>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fresh(&self, hash: &[u8]) -> Option<CachedSession> {
        self.lock().get(hash).filter(|c| c.checked.elapsed() < SESSION_RECHECK).cloned()
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Keep `session`, read by a look-up that began at `epoch`, unless a session was
    /// changed since.
    fn put(&self, hash: Vec<u8>, session: CachedSession, epoch: u64) {
        let mut map = self.lock();
        if self.epoch() != epoch {
            return;
        }
        if map.len() >= SESSION_CACHE_MAX {
            map.retain(|_, c| c.checked.elapsed() < SESSION_RECHECK);
        }
        if map.len() < SESSION_CACHE_MAX {
            map.insert(hash, session);
        }
    }

    pub(super) fn forget(&self, keep: impl Fn(&Principal) -> bool) {
        let mut map = self.lock();
        self.epoch.fetch_add(1, Ordering::SeqCst);
        map.retain(|_, c| keep(&c.principal));
    }
}

impl Auth {
    /// The principal behind a bearer token, ending the session (and recording why) if
    /// it has been idle too long or outlived its absolute lifetime. A session looked up
    /// less than [`SESSION_RECHECK`] ago is not looked up again (its idle and absolute
    /// limits are still checked against the clock).
    pub async fn authenticate(&self, token: &str) -> ApiResult<Principal> {
        let now = OffsetDateTime::now_utc();
        let hash = token_hash(token);
        if let Some(c) = self.sessions.fresh(&hash) {
            if now < c.expires_at && now - c.last_seen < dur(self.config.idle_timeout) {
                return Ok(c.principal);
            }
        }
        // Taken before the look-up: the entry is trusted from when it was read, and is
        // not kept if any session changed meanwhile.
        let (epoch, checked) = (self.sessions.epoch(), Instant::now());
        let row = sqlx::query(
            "SELECT s.session_id, s.user_id, s.role, s.patient_id, s.mfa_verified, s.last_seen, s.expires_at, s.ended_at, \
             c.must_change_password FROM auth_sessions s JOIN auth_credentials c USING (user_id) WHERE s.token_hash = $1",
        )
        .bind(&hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Err(ApiError::Unauthenticated) };
        let p = principal_from(&row)?;
        if row.try_get::<Option<OffsetDateTime>, _>("ended_at")?.is_some() {
            return Err(ApiError::SessionExpired);
        }
        let mut last_seen: OffsetDateTime = row.try_get("last_seen")?;
        let expires_at: OffsetDateTime = row.try_get("expires_at")?;
        if now >= expires_at {
            self.end_session(&p, SessionEnd::AbsoluteTimeout).await?;
            return Err(ApiError::SessionExpired);
        }
        if now - last_seen >= dur(self.config.idle_timeout) {
            self.end_session(&p, SessionEnd::IdleTimeout).await?;
            return Err(ApiError::SessionExpired);
        }
        // Touch at most once a second: activity within the second changes nothing.
        if now - last_seen >= time::Duration::SECOND {
            let touched = sqlx::query(
                "UPDATE auth_sessions SET last_seen = $2 WHERE session_id = $1 AND ended_at IS NULL",
            )
            .bind(p.session_id)
            .bind(now)
            .execute(&self.pool)
            .await?
            .rows_affected();
            if touched == 0 {
                // Ended since it was read.
                return Err(ApiError::SessionExpired);
            }
            last_seen = now;
        }
        let cached = CachedSession { principal: p.clone(), last_seen, expires_at, checked };
        self.sessions.put(hash, cached, epoch);
        Ok(p)
    }

    /// Whether a session is still live, without counting as activity; ends it (and
    /// records why) when it has idled out or expired.
    pub async fn check_live(&self, p: &Principal) -> ApiResult<()> {
        let row =
            sqlx::query("SELECT last_seen, expires_at, ended_at FROM auth_sessions WHERE session_id = $1")
                .bind(p.session_id)
                .fetch_optional(&self.pool)
                .await?;
        let Some(row) = row else { return Err(ApiError::SessionExpired) };
        if row.try_get::<Option<OffsetDateTime>, _>("ended_at")?.is_some() {
            return Err(ApiError::SessionExpired);
        }
        let now = OffsetDateTime::now_utc();
        if now >= row.try_get::<OffsetDateTime, _>("expires_at")? {
            self.end_session(p, SessionEnd::AbsoluteTimeout).await?;
            return Err(ApiError::SessionExpired);
        }
        if now - row.try_get::<OffsetDateTime, _>("last_seen")? >= dur(self.config.idle_timeout) {
            self.end_session(p, SessionEnd::IdleTimeout).await?;
            return Err(ApiError::SessionExpired);
        }
        Ok(())
    }

    /// End a session once (the first caller records the event).
    pub async fn end_session(&self, p: &Principal, end: SessionEnd) -> ApiResult<()> {
        let reason = match end {
            SessionEnd::Logout => "logout",
            SessionEnd::IdleTimeout => "idle_timeout",
            SessionEnd::AbsoluteTimeout => "absolute_timeout",
            SessionEnd::Revoked => "revoked",
        };
        let ended = sqlx::query(
            "UPDATE auth_sessions SET ended_at = $2, end_reason = $3 WHERE session_id = $1 AND ended_at IS NULL",
        )
        .bind(p.session_id)
        .bind(OffsetDateTime::now_utc())
        .bind(reason)
        .execute(&self.pool)
        .await?
        .rows_affected();
        self.sessions.forget(|s| s.session_id != p.session_id);
        if ended == 1 {
            let event =
                DomainEvent::SessionEnded(SessionEnded { user_id: p.user_id, session_id: p.session_id, end });
            self.security(p.actor(), event).await?;
        }
        Ok(())
    }

    /// End every live session of a user (deactivation, role revocation).
    pub async fn revoke_user_sessions(&self, user_id: Uuid) -> ApiResult<usize> {
        let rows = sqlx::query(
            "SELECT session_id, user_id, role, patient_id, mfa_verified FROM auth_sessions \
             WHERE user_id = $1 AND ended_at IS NULL",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        for r in &rows {
            self.end_session(&principal_from(r)?, SessionEnd::Revoked).await?;
        }
        Ok(rows.len())
    }

    /// Automatic logoff of sessions nobody came back to: ends every session idle past
    /// the limit (or past its lifetime) and records it. Returns how many ended.
    pub async fn sweep(&self) -> ApiResult<usize> {
        let now = OffsetDateTime::now_utc();
        let rows = sqlx::query(
            "SELECT session_id, user_id, role, patient_id, mfa_verified, expires_at FROM auth_sessions \
             WHERE ended_at IS NULL AND (last_seen <= $1 OR expires_at <= $2)",
        )
        .bind(now - dur(self.config.idle_timeout))
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        for r in &rows {
            let p = principal_from(r)?;
            let expires_at: OffsetDateTime = r.try_get("expires_at")?;
            let end = if expires_at <= now { SessionEnd::AbsoluteTimeout } else { SessionEnd::IdleTimeout };
            self.end_session(&p, end).await?;
        }
        Ok(rows.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(user_id: Uuid) -> CachedSession {
        let now = OffsetDateTime::now_utc();
        CachedSession {
            principal: Principal {
                user_id,
                session_id: Uuid::now_v7(),
                role: Role::Nurse,
                patient_id: None,
                mfa_verified: true,
                must_change_password: false,
            },
            last_seen: now,
            expires_at: now + time::Duration::HOUR,
            checked: Instant::now(),
        }
    }

    #[test]
    fn a_look_up_that_began_before_a_change_is_not_kept() {
        let cache = SessionCache::default();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        // A look-up begins, the session is changed (logout) and forgotten, then the
        // look-up finishes with what it read before the change: not kept.
        let epoch = cache.epoch();
        cache.forget(|p| p.user_id != a);
        cache.put(b"a".to_vec(), session(a), epoch);
        assert!(cache.fresh(b"a").is_none());
        // A look-up after the change is kept, and forgotten by the next change.
        cache.put(b"a".to_vec(), session(a), cache.epoch());
        cache.put(b"b".to_vec(), session(b), cache.epoch());
        assert!(cache.fresh(b"a").is_some());
        cache.forget(|p| p.user_id != a);
        assert!(cache.fresh(b"a").is_none());
        assert!(cache.fresh(b"b").is_some(), "other sessions stay");
    }

    #[test]
    fn an_entry_is_trusted_for_at_most_the_recheck_interval() {
        let cache = SessionCache::default();
        let mut old = session(Uuid::now_v7());
        old.checked = Instant::now() - SESSION_RECHECK;
        cache.put(b"old".to_vec(), old, cache.epoch());
        assert!(cache.fresh(b"old").is_none());
    }
}
