//! Lock-out: failed attempts per account, counted in the database **before** a password
//! or code is checked, so the threshold holds under any concurrency (the counting
//! `UPDATE` takes the account's row lock: of 40 parallel guesses, exactly `threshold`
//! are checked and the rest are refused unverified).
//!
//! - Every attempt (password, second factor, old password in `changePassword`) first
//!   [`reserve`]s a slot. The reservation that reaches the threshold sets `locked_until`;
//!   while that is in the future, reservations are refused.
//! - Only a *fully* successful login (password, then second factor where one is
//!   pending) [`reset`]s the count. A correct password with a second factor still to
//!   come only gives its own slot back ([`release`]): wrong codes keep counting across
//!   logins until a code is right.
//! - A lock that has expired starts the count afresh (the first wrong password after it
//!   is attempt 1, not another lock).

use sqlx::{PgPool, Row};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::ApiResult;

/// The outcome of [`reserve`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// The account is locked (or gone): check nothing.
    Refused,
    /// Counted; `locks` when this attempt reached the threshold (it set the lock, which
    /// a fully successful login still lifts).
    Counted { locks: bool },
}

/// Count an attempt for `user_id` unless it is locked at `now`.
pub async fn reserve(
    pool: &PgPool,
    user_id: Uuid,
    now: OffsetDateTime,
    threshold: u32,
    lock_until: OffsetDateTime,
) -> ApiResult<Attempt> {
    let row = sqlx::query(
        "UPDATE auth_credentials SET \
           failed_attempts = CASE WHEN locked_until <= $2 THEN 1 ELSE failed_attempts + 1 END, \
           locked_until = CASE \
             WHEN (CASE WHEN locked_until <= $2 THEN 1 ELSE failed_attempts + 1 END) >= $3 THEN $4 \
             WHEN locked_until <= $2 THEN NULL ELSE locked_until END \
         WHERE user_id = $1 AND (locked_until IS NULL OR locked_until <= $2) \
         RETURNING locked_until IS NOT NULL AS locks",
    )
    .bind(user_id)
    .bind(now)
    .bind(i32::try_from(threshold).unwrap_or(i32::MAX))
    .bind(lock_until)
    .fetch_optional(pool)
    .await?;
    Ok(match row {
        None => Attempt::Refused,
        Some(r) => Attempt::Counted { locks: r.try_get("locks")? },
    })
}

/// Give back one reserved slot (a correct password, second factor still pending). A
/// lock already set stays.
pub async fn release(pool: &PgPool, user_id: Uuid) -> ApiResult<()> {
    sqlx::query(
        "UPDATE auth_credentials SET failed_attempts = GREATEST(failed_attempts - 1, 0) WHERE user_id = $1",
    )
    .bind(user_id)
    .execute(pool)
    .await?;
    Ok(())
}

/// A fully successful login: the count starts again and any lock is lifted.
pub async fn reset(pool: &PgPool, user_id: Uuid) -> ApiResult<()> {
    sqlx::query("UPDATE auth_credentials SET failed_attempts = 0, locked_until = NULL WHERE user_id = $1")
        .bind(user_id)
        .execute(pool)
        .await?;
    Ok(())
}
